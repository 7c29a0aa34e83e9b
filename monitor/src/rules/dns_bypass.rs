//! dns_bypass: a workload resolving names past the VPC resolver also gets past its DNS Firewall
//! and its query logs.

use std::path::PathBuf;

use super::Rule;
use crate::classify::{Flow, Path};
use crate::denylist::Denylist;
use crate::finding::{Finding, Severity};

/// DNS to a resolver outside the VPC: plain DNS (53) or DNS over TLS (853) to any address,
/// and DNS over HTTPS (443) to a known public resolver. Route 53 Resolver traffic never
/// appears in flow logs, so this is a workload resolving names past the VPC resolver, its
/// DNS Firewall and its query logs.
pub struct DnsBypass {
    /// Public resolvers that answer DNS over HTTPS on 443.
    pub resolvers: Denylist,
}

/// The public resolvers egresswatch knows without configuration.
pub const PUBLIC_RESOLVERS: &str = include_str!("../../lists/public-resolvers.txt");

impl DnsBypass {
    /// The shipped list plus the files given; a file that does not parse is an error.
    pub fn new(extra: &[PathBuf]) -> Result<Self, String> {
        let mut resolvers = Denylist::default();
        resolvers.add_text(PUBLIC_RESOLVERS, "egresswatch's public resolver list")?;
        for f in extra {
            resolvers.load(f)?;
        }
        Ok(DnsBypass { resolvers })
    }
}

impl Rule for DnsBypass {
    fn name(&self) -> &'static str {
        "dns_bypass"
    }
    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if !matches!(f.path, Path::NatEgress | Path::RejectedEgress) {
            return;
        }
        let remote = f.remote.map(|r| r.to_string()).unwrap_or_default();
        let summary = match f.remote_port {
            Some(53) => format!("DNS to outside resolver {remote} instead of the VPC resolver"),
            Some(853) => {
                format!("DNS over TLS to outside resolver {remote} instead of the VPC resolver")
            }
            Some(443) if f.remote.is_some_and(|r| self.resolvers.lookup(r).is_some()) => format!(
                "HTTPS to public DNS resolver {remote}: DNS over HTTPS past the VPC resolver"
            ),
            _ => return,
        };
        out.push(Finding::from_flow(self.name(), Severity::High, summary, f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(remote: &str, port: u16) -> Flow<'static> {
        Flow {
            path: Path::NatEgress,
            workload: Some("10.0.1.5".parse().unwrap()),
            remote: Some(remote.parse().unwrap()),
            remote_port: Some(port),
            local_port: None,
            protocol: Some(6),
            bytes: 900,
            packets: 3,
            action: Some("ACCEPT"),
            end: 1_764_150_060,
            start: 1_764_150_000,
            interface_id: Some("eni-nat"),
            instance_id: None,
            account_id: None,
            vpc_id: None,
            region: None,
            outbound: true,
            opens_connection: true,
            closes_in_record: false,
        }
    }

    fn fires(d: &mut DnsBypass, remote: &str, port: u16) -> Option<String> {
        let mut out = Vec::new();
        d.observe(&flow(remote, port), &mut out);
        out.pop().map(|f| f.summary)
    }

    #[test]
    fn dns_past_the_vpc_resolver_on_53_853_and_https_to_public_resolvers() {
        let mut d = DnsBypass::new(&[]).unwrap();
        assert!(fires(&mut d, "1.1.1.1", 443)
            .unwrap()
            .contains("DNS over HTTPS"));
        assert!(fires(&mut d, "2001:4860:4860::8888", 443).is_some());
        assert!(
            fires(&mut d, "45.90.28.77", 443).is_some(),
            "NextDNS's range"
        );
        assert!(fires(&mut d, "203.0.113.9", 53)
            .unwrap()
            .starts_with("DNS to"));
        assert!(fires(&mut d, "203.0.113.9", 853)
            .unwrap()
            .starts_with("DNS over TLS"));
        // Ordinary HTTPS, and a resolver's address on another port, are not DNS.
        assert_eq!(fires(&mut d, "203.0.113.9", 443), None);
        assert_eq!(fires(&mut d, "8.8.8.8", 8443), None);
        // A team's own addition.
        let dir = std::env::temp_dir().join(format!("ew-resolvers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let extra = dir.join("resolvers.txt");
        std::fs::write(&extra, "# our list\n203.0.113.0/28\n").unwrap();
        let mut d = DnsBypass::new(std::slice::from_ref(&extra)).unwrap();
        assert!(fires(&mut d, "203.0.113.9", 443).is_some());
        std::fs::write(&extra, "resolver.example\n").unwrap();
        let err = DnsBypass::new(std::slice::from_ref(&extra)).err().unwrap();
        assert!(err.contains("resolvers.txt:1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
