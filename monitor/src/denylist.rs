//! Deny lists of address ranges, loaded from files in three formats (a CIDR or address per
//! line; Spamhaus DROP `CIDR ; SBLnnn`; Tor exit lists `ExitAddress IP date time`) and matched
//! with a sorted interval table: O(log n) per lookup, whatever the number of ranges.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;

#[derive(Clone, Debug, Default)]
pub struct Denylist {
    /// Non-overlapping (start, end, source index), sorted by start; IPv4 mapped into IPv6.
    ranges: Vec<(u128, u128, usize)>,
    sources: Vec<String>,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn net_range(net: IpNet) -> (u128, u128) {
    (to_u128(net.network()), to_u128(net.broadcast()))
}

impl Denylist {
    /// Parses one file's text; errors name the line.
    pub fn add_text(&mut self, text: &str, source: &str) -> Result<usize, String> {
        self.add_list(text, source, source)
    }

    /// Parses a list's text, known to findings as `name`; errors name `origin` (the file) and
    /// the line.
    fn add_list(&mut self, text: &str, name: &str, origin: &str) -> Result<usize, String> {
        let idx = self.sources.len();
        let mut parsed = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split(['#', ';']).next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let token = match line.strip_prefix("ExitAddress ") {
                Some(rest) => rest.split_whitespace().next().unwrap_or(""),
                None if line.contains(' ') => {
                    // Tor's other keywords (ExitNode, Published, LastStatus) carry no address.
                    if line.starts_with("ExitNode")
                        || line.starts_with("Published")
                        || line.starts_with("LastStatus")
                    {
                        continue;
                    }
                    line.split_whitespace().next().unwrap_or("")
                }
                None => line,
            };
            let net = match token.parse::<IpNet>() {
                Ok(n) => n.trunc(),
                Err(_) => match token.parse::<IpAddr>() {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "{origin}:{}: `{token}` is not an address or CIDR",
                            i + 1
                        ))
                    }
                },
            };
            let (s, e) = net_range(net);
            parsed.push((s, e, idx));
        }
        // Only a file that parsed whole changes the list.
        let added = parsed.len();
        self.sources.push(name.to_string());
        self.ranges.extend(parsed);
        self.normalise();
        Ok(added)
    }

    /// Adds the file's ranges under the list's name (the file's name without its directory
    /// and extension: `spamhaus-drop` for /etc/egresswatch/spamhaus-drop.txt): findings name
    /// the list, not where this host keeps it.
    pub fn load(&mut self, path: &Path) -> Result<usize, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        self.add_list(&text, &name, &path.display().to_string())
    }

    fn normalise(&mut self) {
        self.ranges.sort_unstable();
        let mut merged: Vec<(u128, u128, usize)> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if r.0 <= last.1.saturating_add(1) => last.1 = last.1.max(r.1),
                _ => merged.push(r),
            }
        }
        self.ranges = merged;
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The name of the list that has `ip`, if any.
    pub fn lookup(&self, ip: IpAddr) -> Option<&str> {
        let x = to_u128(ip);
        let i = self.ranges.partition_point(|r| r.0 <= x);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (x <= r.1).then(|| self.sources[r.2].as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_known_by_its_list_name_not_its_path() {
        let dir = std::env::temp_dir().join(format!("ew-denylist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("spamhaus-drop.txt");
        std::fs::write(&path, "192.0.2.0/25 ; SBL1\n").unwrap();
        let mut d = Denylist::default();
        assert_eq!(d.load(&path).unwrap(), 1);
        assert_eq!(
            d.lookup("192.0.2.9".parse().unwrap()),
            Some("spamhaus-drop")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn three_formats() {
        let mut d = Denylist::default();
        d.add_text(
            "# plain\n203.0.113.0/24\n198.51.100.7\n2001:db8::/32\n",
            "plain.txt",
        )
        .unwrap();
        d.add_text("; Spamhaus DROP List\n192.0.2.0/25 ; SBL123\n", "drop.txt")
            .unwrap();
        d.add_text("ExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\nPublished 2024-01-01 00:00:00\nExitAddress 185.220.101.1 2024-01-01 00:10:00\n", "tor.txt").unwrap();
        assert_eq!(
            d.lookup("203.0.113.200".parse().unwrap()),
            Some("plain.txt")
        );
        assert_eq!(d.lookup("198.51.100.7".parse().unwrap()), Some("plain.txt"));
        assert_eq!(d.lookup("198.51.100.8".parse().unwrap()), None);
        assert_eq!(d.lookup("192.0.2.127".parse().unwrap()), Some("drop.txt"));
        assert_eq!(d.lookup("192.0.2.128".parse().unwrap()), None);
        assert_eq!(d.lookup("185.220.101.1".parse().unwrap()), Some("tor.txt"));
        assert_eq!(
            d.lookup("2001:db8:5::1".parse().unwrap()),
            Some("plain.txt")
        );
        assert_eq!(d.lookup("8.8.8.8".parse().unwrap()), None);
        let e = d.add_text("10.0.0.0/8\nbanana\n", "bad.txt").unwrap_err();
        assert_eq!(e, "bad.txt:2: `banana` is not an address or CIDR");
    }
}
