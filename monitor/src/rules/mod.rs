//! Detection rules: one type per rule behind the [`Rule`] trait, each in a file of its own. A
//! rule observes Flows in event time and emits [`Finding`]s that explain themselves.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::classify::{Flow, Path};
use crate::config;
use crate::denylist::Denylist;
use crate::finding::Finding;

pub mod denylisted_destination;
pub mod dns_bypass;
pub mod non_https_egress;
pub mod rejected_egress;

// Behavioural rules: they learn what normal egress looks like, per workload and across the
// fleet, and flag what departs from it: a new remote port, unusual volume to one host, uploads
// to never-seen destinations, slow drips, beacons, scans and sweeps. Each keeps its memory in
// bounded tables, works in event time (records arrive late and out of order), and can save and
// restore what it learnt so a restart does not start the learning over.
pub mod beaconing;
pub mod long_connection;
pub mod new_remote_port;
pub mod port_scan;
pub mod rare_destination;
pub mod s3_endpoint_upload;
pub mod slow_drip;
pub mod traffic_volume;
pub mod upload_volume;

use beaconing::Beaconing;
use denylisted_destination::DenylistedDestination;
use dns_bypass::DnsBypass;
use long_connection::LongConnection;
use new_remote_port::NewRemotePort;
use non_https_egress::NonHttpsEgress;
use port_scan::PortScan;
use rare_destination::RareDestination;
use rejected_egress::RejectedEgress;
use s3_endpoint_upload::S3EndpointUpload;
use slow_drip::SlowDrip;
use traffic_volume::TrafficVolume;
use upload_volume::UploadVolume;

/// One detection rule.
pub trait Rule: Send {
    fn name(&self) -> &'static str;
    /// Looks at one flow; pushes what it finds.
    fn observe(&mut self, flow: &Flow, out: &mut Vec<Finding>);
    /// The rule's learnt state, for the snapshot in the state dir; `None` for stateless rules.
    fn state(&self) -> Option<&dyn SavedState> {
        None
    }
    /// Entries the rule's bounded state has forgotten so far.
    fn state_evictions(&self) -> u64 {
        0
    }
    /// For a rule that first learns what the fleet shares: the event time its learning period
    /// ends at (what it saw meanwhile is judged then), once it has seen a record.
    fn learning_ends(&self) -> Option<u64> {
        None
    }
    /// At the end of a finite input: judges what was waiting for more records.
    fn finish(&mut self, _out: &mut Vec<Finding>) {}
    /// Restores what [`SavedState::encode_into`] wrote of `state` in an earlier run.
    fn load_state(&mut self, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Builds the rules the config turns on; deny lists are loaded now, and a bad file is an error.
pub fn build(rules: &config::Rules) -> Result<Vec<Box<dyn Rule>>, String> {
    let mut v: Vec<Box<dyn Rule>> = Vec::new();
    if rules.non_https_egress {
        v.push(Box::new(NonHttpsEgress {
            allowed_ports: rules.allowed_ports.clone(),
        }));
    }
    if rules.rejected_egress {
        v.push(Box::new(RejectedEgress));
    }
    if rules.denylisted_destination && !rules.denylists.is_empty() {
        let mut list = Denylist::default();
        for f in &rules.denylists {
            list.load(f)?;
        }
        v.push(Box::new(DenylistedDestination {
            list,
            files: rules.denylists.clone(),
        }));
    }
    if rules.dns_bypass {
        v.push(Box::new(DnsBypass::new(&rules.resolver_lists)?));
    }
    let entries = rules.state_entries;
    if rules.new_remote_port.enabled {
        v.push(Box::new(NewRemotePort::new(
            rules.new_remote_port.clone(),
            entries,
        )));
    }
    if rules.traffic_volume.enabled {
        v.push(Box::new(TrafficVolume::new(
            rules.traffic_volume.clone(),
            entries,
        )));
    }
    if rules.rare_destination.enabled {
        v.push(Box::new(RareDestination::new(
            rules.rare_destination.clone(),
            entries,
        )));
    }
    if rules.s3_endpoint_upload.enabled {
        v.push(Box::new(S3EndpointUpload::new(
            rules.s3_endpoint_upload.clone(),
            entries,
        )));
    }
    if rules.slow_drip.enabled {
        v.push(Box::new(SlowDrip::new(rules.slow_drip.clone(), entries)));
    }
    if rules.upload_volume.enabled {
        v.push(Box::new(UploadVolume::new(
            rules.upload_volume.clone(),
            entries,
        )));
    }
    if rules.long_connection.enabled {
        v.push(Box::new(LongConnection::new(
            rules.long_connection.clone(),
            entries,
        )));
    }
    if rules.beaconing.enabled {
        v.push(Box::new(Beaconing::new(rules.beaconing.clone(), entries)));
    }
    if rules.port_scan.enabled {
        v.push(Box::new(PortScan::new(rules.port_scan.clone(), entries)));
    }
    Ok(v)
}

/// Ports whose use through the NAT is high severity: remote shells, file shares, databases.
const HIGH_RISK_PORTS: [u16; 12] = [
    21, 22, 23, 445, 1433, 1521, 3306, 3389, 5432, 5900, 6379, 27017,
];

/// Human name of a protocol number for messages.
pub fn proto_name(p: Option<u8>) -> String {
    match p {
        Some(6) => "TCP".into(),
        Some(17) => "UDP".into(),
        Some(1) => "ICMP".into(),
        Some(n) => format!("protocol {n}"),
        None => "unknown protocol".into(),
    }
}

/// A rule's state as the snapshot holds it (postcard). It is sized before it is written, so a
/// snapshot of tens of megabytes is written into one buffer of the right size: each copy a
/// growing buffer makes is that much more memory at its peak.
pub trait SavedState {
    /// The encoded length; `None` when the state cannot be encoded.
    fn encoded_len(&self) -> Option<usize>;
    /// Appends the encoding, `len` bytes as [`SavedState::encoded_len`] said, to `out`;
    /// false (and `out` as it was) when it cannot be encoded.
    fn encode_into(&self, out: &mut Vec<u8>, len: usize) -> bool;
}

impl<T: Serialize> SavedState for T {
    fn encoded_len(&self) -> Option<usize> {
        postcard::experimental::serialized_size(self).ok()
    }

    fn encode_into(&self, out: &mut Vec<u8>, len: usize) -> bool {
        let before = out.len();
        out.resize(before.saturating_add(len), 0);
        match postcard::to_slice(self, &mut out[before..]) {
            Ok(written) => {
                let written = written.len();
                out.truncate(before + written);
                true
            }
            Err(_) => {
                out.truncate(before);
                false
            }
        }
    }
}

/// A rule's state encoded on its own, as [`Rule::load_state`] takes it.
pub fn encoded_state(rule: &dyn Rule) -> Option<Vec<u8>> {
    let state = rule.state()?;
    let len = state.encoded_len()?;
    let mut out = Vec::with_capacity(len);
    state.encode_into(&mut out, len).then_some(out)
}

/// A rule's state as saved in a snapshot. Table limits come from the configuration, not the
/// snapshot, so a restart with a changed `state-entries` takes effect at once.
trait Snapshot: Serialize + for<'de> Deserialize<'de> {
    /// Takes over the configured limits of `configured`, the state the rule was built with;
    /// an error when the saved state cannot serve under this configuration.
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String>;
}

/// Replaces `state` with the one saved in `bytes`, under the limits `state` was configured with.
fn restore<T: Snapshot>(rule: &str, state: &mut T, bytes: &[u8]) -> Result<(), String> {
    let mut saved: T =
        postcard::from_bytes(bytes).map_err(|e| format!("saved state of rule {rule}: {e}"))?;
    saved
        .adopt_limits(state)
        .map_err(|e| format!("saved state of rule {rule}: {e}"))?;
    *state = saved;
    Ok(())
}

/// For a flow through the NAT with both ends known: whether the workload is sending (the
/// NAT-egress leg) or receiving (the return leg), the workload and the remote.
fn through_the_nat(f: &Flow) -> Option<(bool, IpAddr, IpAddr)> {
    let sending = match f.path {
        Path::NatEgress => true,
        Path::NatReturn => false,
        _ => return None,
    };
    Some((sending, f.workload?, f.remote?))
}

/// The NAT-egress flow a finding made with no record at hand is about (a series judged when
/// learning ends, an upload judged after its wait for late records): what the rule kept of
/// who talked to whom, last seen at `end`.
fn kept_flow(
    workload: IpAddr,
    remote: IpAddr,
    remote_port: Option<u16>,
    end: u64,
    interface_id: Option<&str>,
) -> Flow<'_> {
    Flow {
        path: Path::NatEgress,
        workload: Some(workload),
        remote: Some(remote),
        remote_port,
        local_port: None,
        protocol: Some(6),
        bytes: 0,
        packets: 0,
        action: Some("ACCEPT"),
        end,
        start: end.saturating_sub(60),
        interface_id,
        instance_id: None,
        account_id: None,
        vpc_id: None,
        region: None,
        outbound: true,
        opens_connection: false,
        closes_in_record: false,
    }
}

/// Byte counts for messages: 1.2 GB, 35.0 MB, 812 kB.
pub fn human_bytes(b: f64) -> String {
    const UNITS: [(&str, f64); 4] = [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)];
    for (unit, size) in UNITS {
        if b >= size {
            return format!("{:.1} {unit}", b / size);
        }
    }
    format!("{b:.0} B")
}

fn hours(secs: u64) -> String {
    if secs >= 7_200 {
        format!("{:.1} h", secs as f64 / 3_600.0)
    } else {
        format!("{} min", secs / 60)
    }
}

/// Flows and a driver for the rules' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::Rule;
    use crate::classify::{Flow, Path};
    use crate::finding::Finding;

    pub(crate) const W: &str = "10.0.1.5";

    pub(crate) fn flow(
        path: Path,
        remote: &str,
        port: u16,
        bytes: u64,
        start: u64,
    ) -> Flow<'static> {
        Flow {
            path,
            workload: Some(W.parse().unwrap()),
            remote: Some(remote.parse().unwrap()),
            remote_port: Some(port),
            local_port: None,
            protocol: Some(6),
            bytes,
            packets: 1,
            action: Some("ACCEPT"),
            end: start + 59,
            start,
            interface_id: Some("eni-nat"),
            instance_id: None,
            account_id: None,
            vpc_id: None,
            region: None,
            outbound: path != Path::NatReturn,
            opens_connection: true,
            closes_in_record: false,
        }
    }

    pub(crate) fn run(d: &mut dyn Rule, flows: &[Flow]) -> Vec<Finding> {
        let mut out = Vec::new();
        for f in flows {
            d.observe(f, &mut out);
        }
        out
    }

    /// `run`, then the end of the input: what waited for late records is judged too.
    pub(crate) fn run_to_end(d: &mut dyn Rule, flows: &[Flow]) -> Vec<Finding> {
        let mut out = run(d, flows);
        d.finish(&mut out);
        out
    }
}

/// Every rule's state round-trips: a run cut by a snapshot and a restore into a fresh rule
/// finds exactly what an uninterrupted run finds, pending judgements included.
#[cfg(test)]
mod round_trip {
    use proptest::prelude::*;

    use super::testing::flow;
    use super::*;
    use crate::finding::Finding;

    /// (workload, remote, port, path, seconds after the previous record, bytes, size class,
    /// late).
    type Spec = (u8, u8, u8, u8, u32, u64, u8, bool);

    /// A record of a small world (three workloads, a few remotes in two networks, 443 and
    /// two other ports) `step` seconds after the previous one, up to 3 GB.
    fn record() -> impl Strategy<Value = Spec> {
        (
            0u8..3,
            0u8..6,
            0u8..3,
            0u8..5,
            0u32..2_000,
            0u64..3_000_000_000,
            0u8..4,
            any::<bool>(),
        )
    }

    fn flows(spec: &[Spec]) -> Vec<Flow<'static>> {
        let mut t = 1_764_547_200u64;
        spec.iter()
            .map(|&(w, r, port, path, step, bytes, size, late)| {
                t += u64::from(step);
                let path = [
                    Path::NatEgress,
                    Path::NatEgress,
                    Path::NatReturn,
                    Path::S3Endpoint,
                    Path::RejectedEgress,
                ][usize::from(path)];
                let remote = format!(
                    "{}.{}",
                    ["198.51.100", "203.0.113"][usize::from(r % 2)],
                    r + 1
                );
                let port = [443, 22, 8443][usize::from(port)];
                // Most records are small; some carry an upload's bytes.
                let bytes = if size == 0 { bytes } else { bytes % 100_000 };
                // Now and then a record of a minute that has moved on: AWS delivers late.
                let start = if late { t.saturating_sub(900) } else { t };
                let mut f = flow(path, &remote, port, bytes, start);
                f.workload = Some(IpAddr::from([10, 0, 1, 5 + w]));
                f.local_port = Some(40_000 + u16::from(r));
                f
            })
            .collect()
    }

    fn key(f: &Finding) -> String {
        format!(
            "{} {:?} {:?} {:?} {} {} {} {}",
            f.rule,
            f.workload,
            f.remote,
            f.remote_port,
            f.first_seen,
            f.last_seen,
            f.bytes,
            f.summary
        )
    }

    /// Rules with short learning periods, so that a few thousand records reach past them.
    fn rules() -> config::Rules {
        let mut r = config::Rules::default();
        r.new_remote_port.learning_seconds = 600;
        r.traffic_volume.learning_seconds = 600;
        r.traffic_volume.learning_windows = 2;
        r.rare_destination.learning_seconds = 1_800;
        r.beaconing.learning_seconds = 1_800;
        r.slow_drip.learning_seconds = 600;
        r.long_connection.learning_seconds = 600;
        r
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn a_snapshot_and_restore_change_no_finding(
            spec in proptest::collection::vec(record(), 50..1_500),
            cut in 0.0f64..1.0,
        ) {
            let flows = flows(&spec);
            let cut = ((flows.len() as f64) * cut) as usize;
            let config = rules();
            let whole = build(&config).unwrap();
            let first = build(&config).unwrap();
            let fresh = build(&config).unwrap();
            for ((mut whole, mut first), mut fresh) in whole.into_iter().zip(first).zip(fresh) {
                let mut expected = Vec::new();
                for f in &flows {
                    whole.observe(f, &mut expected);
                }
                whole.finish(&mut expected);
                let mut got = Vec::new();
                for f in &flows[..cut] {
                    first.observe(f, &mut got);
                }
                if let Some(bytes) = encoded_state(first.as_ref()) {
                    fresh.load_state(&bytes).map_err(TestCaseError::fail)?;
                } else {
                    fresh = first;
                }
                for f in &flows[cut..] {
                    fresh.observe(f, &mut got);
                }
                fresh.finish(&mut got);
                let mut expected: Vec<String> = expected.iter().map(key).collect();
                let mut got: Vec<String> = got.iter().map(key).collect();
                expected.sort();
                got.sort();
                prop_assert_eq!(expected, got, "rule {} cut at {}", fresh.name(), cut);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{flow, run};
    use super::*;
    use crate::rules::beaconing::BeaconingRule;
    use crate::rules::long_connection::LongConnectionRule;
    use crate::rules::new_remote_port::NewRemotePortRule;
    use crate::rules::port_scan::PortScanRule;
    use crate::rules::rare_destination::RareDestinationRule;
    use crate::rules::slow_drip::SlowDripRule;
    use crate::rules::traffic_volume::TrafficVolumeRule;
    use crate::rules::upload_volume::UploadVolumeRule;

    /// Event times come from the input too: records stamped near the end of u64 go through
    /// every rule without an overflow, with the rules' default periods added to them.
    #[test]
    fn event_times_near_the_end_of_u64_do_not_overflow() {
        let start = u64::MAX - 59;
        let late = |remote: &str, port: u16| {
            let mut f = flow(Path::NatEgress, remote, port, u64::MAX - 1, start);
            f.end = u64::MAX;
            f
        };
        let flows: Vec<Flow> = (0..80)
            .map(|i| late(&format!("203.0.113.{}", i % 3 + 1), 1_000 + i as u16))
            .collect();
        let mut detectors: Vec<Box<dyn Rule>> = vec![
            Box::new(NewRemotePort::new(NewRemotePortRule::default(), 1_000)),
            Box::new(TrafficVolume::new(TrafficVolumeRule::default(), 1_000)),
            Box::new(RareDestination::new(RareDestinationRule::default(), 1_000)),
            Box::new(SlowDrip::new(SlowDripRule::default(), 1_000)),
            Box::new(Beaconing::new(BeaconingRule::default(), 1_000)),
            Box::new(PortScan::new(PortScanRule::default(), 1_000)),
            Box::new(UploadVolume::new(UploadVolumeRule::default(), 1_000)),
            Box::new(LongConnection::new(LongConnectionRule::default(), 1_000)),
        ];
        let mut rules_that_fired = Vec::new();
        for d in &mut detectors {
            rules_that_fired.extend(
                testing::run_to_end(d.as_mut(), &flows)
                    .iter()
                    .map(|f| f.rule),
            );
        }
        // New port and volume are still learning and beaconing needs regular gaps; the rare-
        // destination rule's learning day, added to a start this late, saturates at the end of
        // u64 and so is over. The rest judge as usual: 27 ports on each of three hosts, and
        // near-2^64 uploads to destinations new and private to one workload.
        rules_that_fired.sort_unstable();
        rules_that_fired.dedup();
        // Near-2^64 bytes in an hour pass even a new workload's no-history floor.
        assert_eq!(
            rules_that_fired,
            [
                "port_scan",
                "rare_destination",
                "slow_drip",
                "upload_volume_unusual"
            ]
        );
    }

    /// Providers answer from ever new addresses of a few networks; attackers can spread one
    /// upload over many hosts of one. Both are judged by network.
    #[test]
    fn novelty_and_sharing_are_judged_per_network() {
        let rule = RareDestinationRule {
            learning_seconds: 3_600,
            ..RareDestinationRule::default()
        };
        let mut d = RareDestination::new(rule, 1_000);
        // Learnt: storage at 52.219.40.0/24.
        let learn = [flow(Path::NatReturn, "52.219.40.10", 443, 5_000_000, 0)];
        assert!(run(&mut d, &learn).is_empty());
        let t = 7_200;
        // A checkpoint upload to a fresh address of that network: not new.
        let rotated = [flow(Path::NatEgress, "52.219.40.201", 443, 400_000_000, t)];
        assert!(run(&mut d, &rotated).is_empty());
        // 4 MB to each of four hosts of a network never seen: one new destination, 16 MB.
        let spray: Vec<Flow> = (1..=4)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    &format!("198.18.7.{i}"),
                    443,
                    4_000_000,
                    t + i,
                )
            })
            .collect();
        let found = testing::run_to_end(&mut d, &spray);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            found[0].bytes, 16_000_000,
            "judged after the wait for late records, with every part"
        );
        assert!(
            found[0].summary.contains("network 198.18.7.0"),
            "{}",
            found[0].summary
        );

        // The slow drip counts a network's hosts together, and a network three workloads
        // use is shared even when each used another address of it.
        let rule = SlowDripRule {
            learning_seconds: 0,
            ..SlowDripRule::default()
        };
        let mut s = SlowDrip::new(rule.clone(), 1_000);
        let drips: Vec<Flow> = (0..40)
            .map(|i| {
                let remote = format!("198.18.9.{}", i % 30 + 1);
                flow(Path::NatEgress, &remote, 443, 3_000_000, 100_000 + i * 300)
            })
            .collect();
        assert_eq!(run(&mut s, &drips).len(), 1);
        let mut s = SlowDrip::new(rule, 1_000);
        let mut shared = drips.clone();
        for (i, f) in shared.iter_mut().enumerate() {
            f.workload = Some(format!("10.0.1.{}", 5 + i % 3).parse().unwrap());
        }
        assert!(run(&mut s, &shared).is_empty());
    }
}
