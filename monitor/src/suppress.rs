//! Suppressions: what the team has said is fine. Each names a reason and any of rule, remote
//! network, workload network, interface, workload tag and remote port, with an optional
//! expiry; a finding every given field matches is not alerted on. Suppressed findings are still counted (by
//! rule) and logged with the suppression that matched, so "fine" is never silent.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

use crate::finding::Finding;
use crate::inventory::Workload;

/// One `[[suppress]]` entry of the config.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Suppression {
    /// Why this is fine: shown when it matches.
    pub reason: String,
    #[serde(default)]
    pub rule: Option<String>,
    /// The remote address or network (CIDR).
    #[serde(default, deserialize_with = "crate::net::optional")]
    pub remote: Option<IpNet>,
    /// The workload's address or network (CIDR).
    #[serde(default, deserialize_with = "crate::net::optional")]
    pub workload: Option<IpNet>,
    /// The workload's network interface, or the one the finding was seen on.
    #[serde(default)]
    pub interface: Option<String>,
    /// A tag of the workload's interface or instance: `key=value`, or `key` for any value.
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// RFC 3339 time after which the suppression no longer applies (wall clock, as people
    /// mean "until the migration is done").
    #[serde(default)]
    pub expires: Option<String>,
}

/// The suppressions in force, checked once when loaded.
#[derive(Clone, Debug, Default)]
pub struct Suppressions {
    list: Vec<(Suppression, Option<u64>)>,
}

fn covers(net: &Option<IpNet>, ip: Option<IpAddr>) -> bool {
    match net {
        None => true,
        Some(net) => ip.is_some_and(|ip| net.contains(&ip)),
    }
}

impl Suppressions {
    /// Checks every entry: a reason, at least one field to match on, a known rule and a
    /// readable expiry. The error names the entry (1-based, in config order).
    pub fn new(entries: &[Suppression]) -> Result<Self, String> {
        let mut list = Vec::with_capacity(entries.len());
        for (i, s) in entries.iter().enumerate() {
            let name = format!("suppress #{}", i + 1);
            if s.reason.trim().is_empty() {
                return Err(format!("{name}: `reason` must say why this is fine"));
            }
            if s.rule.is_none()
                && s.remote.is_none()
                && s.workload.is_none()
                && s.interface.is_none()
                && s.tag.is_none()
                && s.port.is_none()
            {
                return Err(format!(
                    "{name} ({}): names nothing to match; give at least one of rule, remote, workload, interface, tag, port",
                    s.reason
                ));
            }
            if let Some(rule) = &s.rule {
                if crate::finding::rule_name(rule).is_none() {
                    return Err(format!(
                        "{name}: rule `{rule}` is not one of {}",
                        crate::finding::RULES.join(", ")
                    ));
                }
            }
            if s.tag
                .as_deref()
                .is_some_and(|t| t.split('=').next().unwrap_or("").trim().is_empty())
            {
                return Err(format!("{name}: tag must be `key=value` or `key`"));
            }
            let expires = match &s.expires {
                None => None,
                Some(t) => Some(
                    humantime::parse_rfc3339_weak(t)
                        .map_err(|e| {
                            format!("{name}: expires = \"{t}\": {e} (e.g. 2026-12-31T00:00:00Z)")
                        })?
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                ),
            };
            list.push((s.clone(), expires));
        }
        Ok(Suppressions { list })
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether any entry needs to know the workload (its tags or its own interface).
    pub fn needs_inventory(&self) -> bool {
        self.list
            .iter()
            .any(|(s, _)| s.tag.is_some() || s.interface.is_some())
    }

    /// The first suppression in force at `now` (Unix seconds) that matches `f`, with its
    /// 1-based number. `workload` is what the inventory knows of the finding's workload.
    pub fn matching(
        &self,
        f: &Finding,
        now: u64,
        workload: Option<&Workload>,
    ) -> Option<(usize, &Suppression)> {
        self.list
            .iter()
            .enumerate()
            .find(|(_, (s, expires))| {
                expires.is_none_or(|e| now < e)
                    && s.rule.as_deref().is_none_or(|r| r == f.rule)
                    && covers(&s.remote, f.remote)
                    && covers(&s.workload, f.workload)
                    && s.port.is_none_or(|p| f.remote_port == Some(p))
                    && s.interface.as_deref().is_none_or(|i| {
                        f.interface_id.as_deref() == Some(i)
                            || workload.and_then(|w| w.interface_id.as_deref()) == Some(i)
                    })
                    && s.tag.as_deref().is_none_or(|t| has_tag(workload, t))
            })
            .map(|(i, (s, _))| (i + 1, s))
    }
}

/// `key=value` or `key` against the workload's tags; a workload nobody described has none.
fn has_tag(workload: Option<&Workload>, tag: &str) -> bool {
    let Some(w) = workload else {
        return false;
    };
    match tag.split_once('=') {
        Some((k, v)) => w.tags.get(k.trim()).is_some_and(|have| have == v.trim()),
        None => w.tags.contains_key(tag.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Severity;

    fn finding(rule: &'static str, remote: &str, port: u16) -> Finding {
        Finding {
            workload: Some("10.0.1.5".parse().unwrap()),
            interface_id: Some("eni-0abc".into()),
            remote: Some(remote.parse().unwrap()),
            remote_port: Some(port),
            protocol: Some(6),
            bytes: 1,
            first_seen: 0,
            last_seen: 0,
            ..Finding::new(rule, Severity::High, String::new())
        }
    }

    fn entries(toml_text: &str) -> Vec<Suppression> {
        #[derive(Deserialize)]
        struct File {
            suppress: Vec<Suppression>,
        }
        toml::from_str::<File>(toml_text).unwrap().suppress
    }

    /// A single address is what the README shows for both fields: it stands for itself.
    #[test]
    fn a_single_address_is_a_network_of_one() {
        let s = Suppressions::new(&entries(
            r#"
[[suppress]]
reason = "the vendor's one host"
remote = "198.51.100.73"
workload = "10.0.1.5"
"#,
        ))
        .unwrap();
        let hit = finding("non_https_egress", "198.51.100.73", 22);
        assert_eq!(s.matching(&hit, 1_764_000_000, None).unwrap().0, 1);
        let next_door = finding("non_https_egress", "198.51.100.74", 22);
        assert!(s.matching(&next_door, 1_764_000_000, None).is_none());
        let bad = toml::from_str::<Suppression>("reason = \"x\"\nremote = \"198.51.100.x\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            bad.contains("`198.51.100.x`") && bad.contains("CIDR"),
            "{bad}"
        );
    }

    #[test]
    fn every_given_field_must_match_and_expired_ones_do_not() {
        let s = Suppressions::new(&entries(
            r#"
[[suppress]]
reason = "partner SFTP drop, ticket SEC-42"
rule = "non_https_egress"
remote = "203.0.113.0/24"
port = 22
expires = "2026-01-01T00:00:00Z"
[[suppress]]
reason = "the build box talks to everything"
workload = "10.0.1.5/32"
interface = "eni-0abc"
"#,
        ))
        .unwrap();
        let before_expiry = 1_764_000_000;
        let sftp = finding("non_https_egress", "203.0.113.9", 22);
        assert_eq!(s.matching(&sftp, before_expiry, None).unwrap().0, 1);
        // Another port: not the first; the second (the workload) still matches.
        let other = finding("non_https_egress", "203.0.113.9", 2222);
        assert_eq!(s.matching(&other, before_expiry, None).unwrap().0, 2);
        // After the expiry only the second applies.
        assert_eq!(s.matching(&sftp, 1_800_000_000, None).unwrap().0, 2);
        let mut elsewhere = finding("non_https_egress", "203.0.113.9", 22);
        elsewhere.workload = Some("10.0.1.6".parse().unwrap());
        assert!(s.matching(&elsewhere, 1_800_000_000, None).is_none());
        assert_eq!(s.matching(&elsewhere, before_expiry, None).unwrap().0, 1);
    }

    #[test]
    fn a_tag_or_the_workloads_own_interface_matches_what_the_inventory_knows() {
        let s = Suppressions::new(&entries(
            r#"
[[suppress]]
reason = "build boxes pull from everywhere"
tag = "role=build"
[[suppress]]
reason = "anything tagged for the migration"
tag = "migration"
rule = "rare_destination"
[[suppress]]
reason = "the notebook of the on-call analyst"
interface = "eni-0workload"
"#,
        ))
        .unwrap();
        assert!(s.needs_inventory());
        let f = finding("non_https_egress", "203.0.113.9", 22);
        let mut w = Workload::default();
        assert!(s.matching(&f, 0, None).is_none());
        assert!(s.matching(&f, 0, Some(&w)).is_none());
        w.tags.insert("role".into(), "build".into());
        assert_eq!(s.matching(&f, 0, Some(&w)).unwrap().0, 1);
        w.tags.insert("role".into(), "notebook".into());
        w.tags.insert("migration".into(), String::new());
        assert!(
            s.matching(&f, 0, Some(&w)).is_none(),
            "the second is for another rule"
        );
        let rare = finding("rare_destination", "203.0.113.9", 443);
        assert_eq!(s.matching(&rare, 0, Some(&w)).unwrap().0, 2);
        // The record was logged on the NAT gateway's interface; the workload's own matches.
        w.interface_id = Some("eni-0workload".into());
        assert_eq!(s.matching(&f, 0, Some(&w)).unwrap().0, 3);
    }

    #[test]
    fn entries_that_could_not_mean_what_was_meant_are_refused_by_number() {
        let err = |t: &str| Suppressions::new(&entries(t)).unwrap_err();
        assert_eq!(
            err("[[suppress]]\nreason = \"x\"\nrule = \"beacons\"\n"),
            format!(
                "suppress #1: rule `beacons` is not one of {}",
                crate::finding::RULES.join(", ")
            )
        );
        assert!(err("[[suppress]]\nreason = \"all of it\"\n")
            .starts_with("suppress #1 (all of it): names nothing to match"));
        assert_eq!(
            err("[[suppress]]\nreason = \"x\"\ntag = \"=build\"\n"),
            "suppress #1: tag must be `key=value` or `key`"
        );
        assert!(err("[[suppress]]\nreason = \"\"\nport = 22\n")
            .starts_with("suppress #1: `reason` must say why"));
        assert!(err(
            "[[suppress]]\nreason = \"a\"\nport = 1\n[[suppress]]\nreason = \"b\"\nport = 2\nexpires = \"friday\"\n"
        )
        .starts_with("suppress #2: expires = \"friday\""));
    }
}
