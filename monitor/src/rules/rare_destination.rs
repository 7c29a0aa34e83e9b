//! rare_destination: exfiltration goes to a destination of the attacker's, which no workload
//! in the fleet had contacted before.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{hours, human_bytes, kept_flow, restore, through_the_nat, Rule, SavedState, Snapshot};
use crate::classify::Flow;
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bloom::Bloom;
use crate::sketch::bounded::BoundedMap;
use crate::sketch::learning::LearningClock;
use crate::sketch::network::{key_of, network_cidr, network_key, network_marker, Audience};

/// Uploads to destinations no workload in the fleet had contacted before.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct RareDestinationRule {
    pub enabled: bool,
    /// Event-time seconds from the first flow during which destinations are only learnt.
    pub learning_seconds: u64,
    /// How long a destination counts as new after it was first contacted.
    pub new_for_seconds: u64,
    /// Bytes sent to a new destination that make a finding.
    pub upload_bytes: u64,
    pub upload_ratio: f64,
    /// Destinations the seen-filter holds per generation (two generations are kept).
    pub filter_capacity: usize,
    /// Event-time seconds an upload waits for the other direction's records before it is
    /// judged: AWS delivers a window's records late and in any order, and the benign profile
    /// is a download of gigabytes whose ACKs (tens of megabytes up) arrive before its data.
    pub late_seconds: u64,
}

impl Default for RareDestinationRule {
    fn default() -> Self {
        RareDestinationRule {
            enabled: true,
            learning_seconds: 86_400,
            new_for_seconds: 86_400,
            upload_bytes: 10_000_000,
            upload_ratio: 2.0,
            filter_capacity: 1_000_000,
            late_seconds: 600,
        }
    }
}

/// Uploads to destinations no workload had contacted before, while they are still new.
pub struct RareDestination {
    rule: RareDestinationRule,
    state: RareState,
}

#[derive(Serialize, Deserialize)]
struct RareState {
    first_flow: LearningClock,
    /// Destinations seen: the current generation and the one before it. When the current
    /// one is full it becomes the old one, so memory stays at two filters.
    current: Bloom,
    previous: Bloom,
    new_destinations: BoundedMap<u64, NewDestination>,
    /// The destinations first contacted while learning have been judged: learning defers
    /// judgement, so an upload in a new install's first hours is found when learning ends.
    learning_judged: bool,
    /// Uploads waiting for late records of either direction: (event time to judge at,
    /// destination), earliest first.
    due: BinaryHeap<Reverse<(u64, u64)>>,
    /// Newest window end seen: event time, by which waiting uploads become due.
    watermark: u64,
}

impl Snapshot for RareState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        if self.current.words() != configured.current.words() {
            return Err(
                "the seen-filter was sized for a different filter-capacity; starting to learn again"
                    .into(),
            );
        }
        self.new_destinations
            .set_capacity(configured.new_destinations.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct NewDestination {
    first_seen: u64,
    /// First contacted while learning: judged when learning ends, then forgotten.
    while_learning: bool,
    /// Who uploaded, where, for a finding made with no flow at hand.
    workload: IpAddr,
    remote: IpAddr,
    port: Option<u16>,
    last_seen: u64,
    /// Hosts of the network that took part (up to four), so a summary about a network
    /// does not read as one host's.
    hosts: Audience,
    workloads: Audience,
    sent: u64,
    received: u64,
    alerted: bool,
    /// Waiting in `due` to be judged.
    due: bool,
    interface_id: Option<compact_str::CompactString>,
}

impl NewDestination {
    /// The upload as a flow, for a finding made with no record at hand.
    fn flow(&self) -> Flow<'_> {
        let mut f = kept_flow(
            self.workload,
            self.remote,
            self.port,
            self.last_seen,
            self.interface_id.as_deref(),
        );
        f.bytes = self.sent;
        f
    }

    fn is_upload(&self, bytes: u64, ratio: f64) -> bool {
        self.sent >= bytes && (self.sent as f64) >= ratio * self.received as f64
    }
}

impl RareDestination {
    pub fn new(rule: RareDestinationRule, entries: usize) -> Self {
        RareDestination {
            state: RareState {
                first_flow: LearningClock::default(),
                current: Bloom::new(rule.filter_capacity),
                previous: Bloom::new(rule.filter_capacity),
                new_destinations: BoundedMap::new(entries),
                learning_judged: false,
                due: BinaryHeap::new(),
                watermark: 0,
            },
            rule,
        }
    }

    /// Judges the destinations first contacted while learning, as uploads to new
    /// destinations, unless more than two workloads used them (a service the team shares),
    /// and forgets them: they are known now.
    fn judge_learnt(&mut self, when: &str, out: &mut Vec<Finding>) {
        let s = &mut self.state;
        s.learning_judged = true;
        let mut judged = Vec::new();
        for (key, d) in s.new_destinations.values_mut() {
            if !d.while_learning {
                continue;
            }
            judged.push(*key);
            // A destination used all through the learning period has had up to a day to add
            // up what a live one adds up within `new-for-seconds`; ten times the bar keeps a
            // service one or two workloads send telemetry to all day (experiment tracking)
            // apart from an upload.
            if d.alerted
                || d.workloads.len() > 2
                || !d.is_upload(
                    self.rule.upload_bytes.saturating_mul(10),
                    self.rule.upload_ratio,
                )
            {
                continue;
            }
            d.alerted = true;
            let mut finding = finding_for(&self.rule, d, &d.flow());
            finding.summary = format!(
                "{}; judged {when}: the destination was first contacted while the fleet's destinations were being learnt",
                finding.summary
            );
            out.push(finding);
        }
        for key in judged {
            s.new_destinations.remove(&key);
        }
    }

    /// Judges the uploads whose wait for late records is over (all of them with `all`), with
    /// both directions as they now stand.
    fn judge_due(&mut self, all: bool, out: &mut Vec<Finding>) {
        let s = &mut self.state;
        while let Some(&Reverse((at, key))) = s.due.peek() {
            if !all && at > s.watermark {
                break;
            }
            s.due.pop();
            let Some(d) = s.new_destinations.get_mut(&key) else {
                continue;
            };
            d.due = false;
            if d.alerted || !d.is_upload(self.rule.upload_bytes, self.rule.upload_ratio) {
                continue;
            }
            d.alerted = true;
            out.push(finding_for(&self.rule, d, &d.flow()));
        }
    }
}

/// The finding for an upload of `d.sent` bytes to new destination `d`, `f` the flow at hand.
fn finding_for(rule: &RareDestinationRule, d: &NewDestination, f: &Flow) -> Finding {
    // Bytes add up over every workload: an upload split between several workloads,
    // each sending little, is one upload to the destination.
    let senders = match d.workloads.len() {
        1 => "this workload alone".to_string(),
        n if n >= 4 => "4 or more workloads together".to_string(),
        n => format!("{n} workloads together"),
    };
    let r = d.remote;
    let summary = format!(
        "{senders} uploaded {} to network {} (received {}; {}, the last {r}), which no workload had contacted before it appeared {} ago; threshold {}",
        human_bytes(d.sent as f64),
        network_cidr(r),
        human_bytes(d.received as f64),
        match d.hosts.len() {
            1 => "one host of it".to_string(),
            n if n >= 4 => "4 or more hosts of it".to_string(),
            n => format!("{n} hosts of it"),
        },
        hours(f.end.saturating_sub(d.first_seen)),
        human_bytes(rule.upload_bytes as f64)
    );
    let mut finding = Finding::from_flow("rare_destination", Severity::High, summary, f);
    finding.bytes = d.sent;
    finding.first_seen = d.first_seen;
    finding.with_evidence(Evidence {
        observed: d.sent as f64,
        baseline: Some(0.0),
        threshold: rule.upload_bytes as f64,
        unit: "bytes sent to a new destination".into(),
    })
}

impl Rule for RareDestination {
    fn state_evictions(&self) -> u64 {
        self.state.new_destinations.evicted
    }

    fn name(&self) -> &'static str {
        "rare_destination"
    }

    fn learning_ends(&self) -> Option<u64> {
        self.state.first_flow.ends(self.rule.learning_seconds)
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.end > self.state.watermark {
            self.state.watermark = f.end;
            self.judge_due(false, out);
        }
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let learning = self
            .state
            .first_flow
            .learning(f.start, f.end, self.rule.learning_seconds);
        if !learning && !self.state.learning_judged {
            self.judge_learnt("when the learning period ended", out);
        }
        let s = &mut self.state;
        // New destinations are tracked by network: parts sent to many hosts of one new
        // network add up, and an address new in a network the fleet already uses is not new.
        let rk = network_key(r);
        if s.new_destinations.get(&rk).is_none() {
            let net = network_marker(r);
            if s.current.contains(net) || s.previous.contains(net) {
                return;
            }
            if s.current.members() >= self.rule.filter_capacity {
                s.previous =
                    std::mem::replace(&mut s.current, Bloom::new(self.rule.filter_capacity));
            }
            s.current.insert(net);
        }
        let d = s.new_destinations.touch(rk, f.end, || NewDestination {
            first_seen: f.start,
            while_learning: learning,
            workload: w,
            remote: r,
            port: f.remote_port,
            last_seen: f.end,
            hosts: Audience::default(),
            workloads: Audience::default(),
            sent: 0,
            received: 0,
            alerted: false,
            due: false,
            interface_id: None,
        });
        if !d.while_learning && f.end > d.first_seen.saturating_add(self.rule.new_for_seconds) {
            // No longer new: it stays in the seen-filter only.
            s.new_destinations.remove(&rk);
            return;
        }
        d.workloads.add(key_of(w));
        d.hosts.add(key_of(r));
        d.last_seen = d.last_seen.max(f.end);
        if sending {
            d.sent = d.sent.saturating_add(f.bytes);
            d.workload = w;
            d.remote = r;
            d.port = f.remote_port;
        } else {
            d.received = d.received.saturating_add(f.bytes);
        }
        if sending && d.interface_id.as_deref() != f.interface_id {
            d.interface_id = f.interface_id.map(compact_str::CompactString::from);
        }
        if d.while_learning
            || !sending
            || d.alerted
            || d.due
            || !d.is_upload(self.rule.upload_bytes, self.rule.upload_ratio)
        {
            return;
        }
        // Judged once the other direction's late records have had time to arrive.
        d.due = true;
        let at = f.end.saturating_add(self.rule.late_seconds);
        s.due.push(Reverse((at, rk)));
    }

    fn finish(&mut self, out: &mut Vec<Finding>) {
        self.judge_due(true, out);
        if !self.state.learning_judged {
            self.judge_learnt("at the end of the input, within the learning period", out);
        }
    }

    fn state(&self) -> Option<&dyn SavedState> {
        Some(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::classify::Path;
    use crate::rules::testing::{flow, run, run_to_end};

    #[test]
    fn rare_destination_uploads() {
        let rule = RareDestinationRule {
            learning_seconds: 3_600,
            ..RareDestinationRule::default()
        };
        let mut d = RareDestination::new(rule, 1_000);
        let learn: Vec<Flow> = (0..50)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    &format!("198.51.100.{i}"),
                    443,
                    1_000,
                    i * 60,
                )
            })
            .collect();
        assert!(run(&mut d, &learn).is_empty());
        let t = 7_200;
        let mut other = flow(Path::NatEgress, "203.0.116.50", 443, 6_000_000, t);
        other.workload = Some("10.0.1.6".parse().unwrap());
        let flows = [
            // Known during learning: never flagged, however much.
            flow(Path::NatEgress, "198.51.100.3", 443, 500_000_000, t),
            // New, uploads 12 MB in two records: flagged when the total crosses 10 MB.
            flow(Path::NatEgress, "203.0.113.9", 443, 6_000_000, t),
            flow(Path::NatEgress, "203.0.113.9", 443, 6_000_000, t + 60),
            flow(Path::NatEgress, "203.0.113.9", 443, 6_000_000, t + 120),
            // New but a download.
            flow(Path::NatReturn, "203.0.114.10", 443, 90_000_000, t),
            flow(Path::NatEgress, "203.0.114.10", 443, 12_000_000, t),
        ];
        // Judged once the other direction has had time to arrive: the whole upload by then.
        let found = run_to_end(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].remote, Some("203.0.113.9".parse().unwrap()));
        assert_eq!(found[0].bytes, 18_000_000);
        // An upload split between three workloads, 4 MB each, is one upload to the new
        // destination: flagged on the part that takes the total over 10 MB.
        let mut split = Vec::new();
        for w in ["10.0.1.7", "10.0.1.8", "10.0.1.9"] {
            let mut f = flow(Path::NatEgress, "203.0.115.60", 443, 4_000_000, t);
            f.workload = Some(w.parse().unwrap());
            split.push(f);
        }
        split.push(other);
        let found = run_to_end(&mut d, &split);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].workload, Some("10.0.1.9".parse().unwrap()));
        assert_eq!(found[0].bytes, 12_000_000);
        assert!(
            found[0]
                .summary
                .starts_with("3 workloads together uploaded 12.0 MB"),
            "{}",
            found[0].summary
        );

        // A snapshot carries what was learnt, but the table limits come from the new
        // configuration; a filter sized differently cannot be reused and says so.
        let saved = crate::rules::encoded_state(&d).unwrap();
        let mut restored = RareDestination::new(RareDestinationRule::default(), 10);
        restored.load_state(&saved).unwrap();
        assert_eq!(restored.state.new_destinations.capacity(), 10);
        assert!(restored
            .state
            .current
            .contains(network_marker("198.51.100.3".parse().unwrap())));
        let resized = RareDestinationRule {
            filter_capacity: 5_000,
            ..RareDestinationRule::default()
        };
        let err = RareDestination::new(resized, 1_000)
            .load_state(&saved)
            .unwrap_err();
        assert!(
            err.starts_with("saved state of rule rare_destination: the seen-filter was sized"),
            "{err}"
        );
    }

    /// Bytes come from the input, and AWS's field is a u64: sums must stop at u64::MAX
    /// rather than wrap (a panic in debug builds, a small number in release builds).
    #[test]
    fn byte_sums_saturate_instead_of_wrapping() {
        const HUGE: u64 = u64::MAX - 1;
        let t = 1_764_150_000;
        let up = |remote: &str| flow(Path::NatEgress, remote, 443, HUGE, t);
        let down = |remote: &str| flow(Path::NatReturn, remote, 443, HUGE, t);

        // A threshold only a saturated sum reaches. Two near-2^64 uploads cross it on the
        // second (a wrapped sum, 2^64 - 4, would never).
        let rule = RareDestinationRule {
            learning_seconds: 0,
            upload_bytes: u64::MAX,
            ..RareDestinationRule::default()
        };
        let mut d = RareDestination::new(rule, 1_000);
        assert!(run(&mut d, &[up("203.0.113.5")]).is_empty());
        let found = run_to_end(&mut d, &[up("203.0.113.5"), up("203.0.113.5")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].bytes, u64::MAX);
        let r: IpAddr = "203.0.113.5".parse().unwrap();
        assert_eq!(
            d.state.new_destinations.get(&network_key(r)).unwrap().sent,
            u64::MAX
        );
        run(&mut d, &[down("203.0.113.5"), down("203.0.113.5")]);
        assert_eq!(
            d.state
                .new_destinations
                .get(&network_key(r))
                .unwrap()
                .received,
            u64::MAX
        );
    }

    /// A download's ACKs arrive before its data (another interface's records, delivered
    /// later): the upload is judged after the wait for late records, with what came back.
    #[test]
    fn acks_of_a_download_are_not_an_upload_once_the_data_arrives() {
        let rule = RareDestinationRule {
            learning_seconds: 0,
            ..RareDestinationRule::default()
        };
        let t = 1_764_150_000;
        let mut d = RareDestination::new(rule, 1_000);
        let mut flows: Vec<Flow> = (0..5)
            .map(|i| flow(Path::NatEgress, "151.101.9.10", 443, 3_000_000, t + i * 60))
            .collect();
        // The data, delivered five minutes after its ACKs.
        flows.extend((0..5).map(|i| {
            flow(
                Path::NatReturn,
                "151.101.9.10",
                443,
                900_000_000,
                t + i * 60,
            )
        }));
        // Time moves on past the wait.
        flows.push(flow(Path::NatEgress, "192.0.2.1", 443, 100, t + 3_600));
        assert!(run(&mut d, &flows).is_empty());
        // The same ACKs with no data: an upload, found when the wait ends, not before.
        let mut d = RareDestination::new(rule_no_learning(), 1_000);
        let acks: Vec<Flow> = (0..5)
            .map(|i| flow(Path::NatEgress, "151.101.9.10", 443, 3_000_000, t + i * 60))
            .collect();
        assert!(run(&mut d, &acks).is_empty());
        let found = run(
            &mut d,
            &[flow(Path::NatEgress, "192.0.2.1", 443, 100, t + 3_600)],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].summary.contains("one host of it"),
            "{}",
            found[0].summary
        );
    }

    fn rule_no_learning() -> RareDestinationRule {
        RareDestinationRule {
            learning_seconds: 0,
            ..RareDestinationRule::default()
        }
    }
}
