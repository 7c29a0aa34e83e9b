//! beaconing: malware calls home on a timer. C2 frameworks jitter the timer (by up to half
//! the sleep) and vary what they send, so the rule judges the rhythm of connection starts
//! over hours, to a network the workload alone talks to, and not their sizes.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{human_bytes, kept_flow, restore, Rule, SavedState, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::beacon::{periodicity, size_regularity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::learning::LearningClock;
use crate::sketch::network::{key_of, network_cidr, network_key, network_pair_key, Audience};

/// Connections from one workload to one remote network and port that start on a timer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct BeaconingRule {
    pub enabled: bool,
    /// Contacts (connection starts more than 5 s apart) needed before a series is judged.
    pub min_connections: usize,
    /// Connection starts kept per series: 24 cover eight hours of a 20-minute beacon.
    pub history: usize,
    /// A median gap below this is a burst, not a beacon.
    pub min_interval_seconds: u64,
    /// Share of gaps within half a period of the median gap at which a series of 12 or more
    /// contacts is a beacon; a shorter series needs every gap there. Jitter of up to 50 %
    /// keeps a timer's gaps there; connections at random times have about a third there.
    pub score: f64,
    /// A remote network (/24, /48) more workloads than this connect to is a shared service
    /// (telemetry, update checks, a popular API one job polls), whose regular check-ins are
    /// expected; RITA discounts prevalent destinations the same way.
    pub max_workloads: usize,
    /// Event-time seconds from the first flow during which which networks the fleet shares
    /// is only learnt: at night a poller of a popular API is the only workload talking to
    /// it. Series are kept meanwhile, so a beacon that began then is found after.
    pub learning_seconds: u64,
}

impl Default for BeaconingRule {
    fn default() -> Self {
        BeaconingRule {
            enabled: true,
            min_connections: 8,
            history: 24,
            min_interval_seconds: 30,
            score: 0.85,
            max_workloads: 2,
            learning_seconds: 86_400,
        }
    }
}

/// Contacts below which every gap must fall within the band.
const STRICT_BELOW_CONTACTS: usize = 12;

/// Periodic connections from one workload to one remote network and port.
pub struct Beaconing {
    rule: BeaconingRule,
    state: BeaconState,
}

#[derive(Serialize, Deserialize)]
struct BeaconState {
    series: BoundedMap<u64, Series>,
    /// Remote network -> the workloads that opened connections to it (up to
    /// max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
    /// Event time of the first flow seen: the learning period runs from it.
    first_flow: LearningClock,
    /// The series kept while learning have been judged: learning defers judgement, so the
    /// moment it ends (or the input does) every series is judged without waiting for its
    /// next connection, which a beacon that stopped would never make.
    learning_judged: bool,
}

impl Snapshot for BeaconState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.series.set_capacity(configured.series.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

/// Connection starts are kept as seconds since this instant (2020-09-13) in 32 bits, which
/// halves the rule's memory and lasts until the 2150s.
const SERIES_EPOCH: u64 = 1_600_000_000;

#[derive(Serialize, Deserialize)]
struct Series {
    /// In arrival order, which late records make differ from time order.
    starts: Vec<u32>,
    /// Bytes sent in each connection's first record, capped at 64 KiB: beacons are small,
    /// and the cap halves the memory.
    sizes: Vec<u16>,
    /// Connections seen and records of connections already open, over the series' life:
    /// more than one such record per connection on average means sessions, not check-ins.
    opened: u32,
    continued: u32,
    alerted: bool,
    /// Who talks to whom, so a series can be judged with no flow at hand (when learning ends).
    workload: IpAddr,
    remote: IpAddr,
    port: u16,
    network: u64,
    interface_id: Option<compact_str::CompactString>,
}

impl Beaconing {
    pub fn new(rule: BeaconingRule, entries: usize) -> Self {
        Beaconing {
            rule,
            state: BeaconState {
                series: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: LearningClock::default(),
                learning_judged: false,
            },
        }
    }

    /// Judges every series kept while learning whose network is still one few workloads use;
    /// `when` says in the finding's summary when that happened.
    fn judge_learnt(&mut self, when: &str, out: &mut Vec<Finding>) {
        self.state.learning_judged = true;
        let audience = &self.state.audience;
        let max_workloads = self.rule.max_workloads;
        for (_, s) in self.state.series.values_mut() {
            let shared = audience
                .get(&s.network)
                .is_some_and(|a| a.len() > max_workloads);
            if shared {
                continue;
            }
            if let Some(mut finding) = judge(&self.rule, s, None) {
                finding.summary = format!(
                    "{}; judged {when}, so it covers the learning period",
                    finding.summary
                );
                out.push(finding);
            }
        }
    }
}

/// "5 min 12 s", "47 s", "1 h 3 min".
fn period_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s} s"),
        60..=3_599 if s.is_multiple_of(60) => format!("{} min", s / 60),
        60..=3_599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3_600, (s % 3_600) / 60),
    }
}

/// A finding when `s` is a beacon: enough contacts, a period above the floor and gaps in band.
/// `at` is the connection that completed the series, when one did.
fn judge(rule: &BeaconingRule, s: &mut Series, at: Option<&Flow>) -> Option<Finding> {
    if s.alerted || s.continued > s.opened || s.starts.len() < rule.min_connections {
        return None;
    }
    let starts: Vec<u64> = s.starts.iter().map(|t| u64::from(*t)).collect();
    let p = periodicity(&starts)?;
    let contacts = p.gaps + 1;
    let needed = if contacts < STRICT_BELOW_CONTACTS {
        1.0
    } else {
        rule.score
    };
    if contacts < rule.min_connections
        || p.period < rule.min_interval_seconds as f64
        || p.in_band < needed
    {
        return None;
    }
    s.alerted = true;
    let sizes: Vec<u64> = s.sizes.iter().map(|b| u64::from(*b)).collect();
    let regular_sizes = size_regularity(&sizes);
    let median_size = {
        let mut v = sizes.clone();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let first = starts.iter().min().map_or(0, |t| t + SERIES_EPOCH);
    let last = starts.iter().max().map_or(0, |t| t + SERIES_EPOCH);
    let (r, port) = (s.remote, s.port);
    let summary = format!(
        "beacon-like connections to {r} port {port} (network {}): {contacts} connections about every {}, {:.0} % of the gaps within half a period of it (needed {:.0} %), about {} sent each",
        network_cidr(r),
        period_text(p.period),
        p.in_band * 100.0,
        needed * 100.0,
        human_bytes(median_size as f64),
    );
    // A tight timer sending the same thing each time is unmistakable; a jittered one
    // is as likely C2 but also what a home-made poller looks like.
    let severity = if p.spread <= 0.1 && regular_sizes >= 0.8 {
        Severity::High
    } else {
        Severity::Medium
    };
    let kept;
    let flow = match at {
        Some(f) => f,
        None => {
            kept = kept_flow(
                s.workload,
                r,
                Some(port),
                last.saturating_add(60),
                s.interface_id.as_deref(),
            );
            &kept
        }
    };
    let mut finding = Finding::from_flow("beaconing", severity, summary, flow);
    finding.first_seen = first;
    finding.records = contacts as u64;
    Some(
        finding.with_evidence(Evidence {
            observed: p.in_band,
            baseline: Some(p.period),
            threshold: needed,
            unit:
                "share of gaps within half a period of the median gap (baseline: the median gap, s)"
                    .into(),
        }),
    )
}

impl Rule for Beaconing {
    fn state_evictions(&self) -> u64 {
        self.state.series.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "beaconing"
    }

    fn learning_ends(&self) -> Option<u64> {
        self.state.first_flow.ends(self.rule.learning_seconds)
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress {
            return;
        }
        let learning = self
            .state
            .first_flow
            .learning(f.start, f.end, self.rule.learning_seconds);
        if !learning && !self.state.learning_judged {
            self.judge_learnt("when the learning period ended", out);
        }
        let (Some(w), Some(r), Some(port)) = (f.workload, f.remote, f.remote_port) else {
            return;
        };
        let key = network_pair_key(w, r) ^ u64::from(port).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        if !f.opens_connection {
            // A later window of a connection still open: check-ins are short, a session
            // that stays open (experiment tracking, a tunnel) is re-established on a timer
            // without being a beacon.
            if let Some(s) = self.state.series.get_mut(&key) {
                s.continued = s.continued.saturating_add(1);
            }
            return;
        }
        let network = network_key(r);
        let shared = self
            .state
            .audience
            .touch(network, f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        if shared {
            // Nothing to judge once the network is shared: the series' memory goes back.
            self.state.series.remove(&key);
            return;
        }
        let s = self.state.series.touch(key, f.end, || Series {
            starts: Vec::new(),
            sizes: Vec::new(),
            opened: 0,
            continued: 0,
            alerted: false,
            workload: w,
            remote: r,
            port,
            network,
            interface_id: None,
        });
        if s.starts.len() >= self.rule.history {
            s.starts.remove(0);
            s.sizes.remove(0);
        }
        s.starts
            .push(u32::try_from(f.start.saturating_sub(SERIES_EPOCH)).unwrap_or(u32::MAX));
        s.sizes.push(u16::try_from(f.bytes).unwrap_or(u16::MAX));
        s.opened = s.opened.saturating_add(1);
        s.remote = r;
        if s.interface_id.as_deref() != f.interface_id {
            s.interface_id = f.interface_id.map(compact_str::CompactString::from);
        }
        if learning {
            return;
        }
        if let Some(finding) = judge(&self.rule, s, Some(f)) {
            out.push(finding);
        }
    }

    fn finish(&mut self, out: &mut Vec<Finding>) {
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
    use super::*;
    use crate::rules::testing::{flow, run};

    fn no_learning() -> BeaconingRule {
        BeaconingRule {
            learning_seconds: 0,
            ..BeaconingRule::default()
        }
    }

    fn beacon(remote: &str, starts: impl Iterator<Item = u64>, size: u64) -> Vec<Flow<'static>> {
        let remote: &'static str = Box::leak(remote.to_string().into_boxed_str());
        starts
            .map(|t| flow(Path::NatEgress, remote, 443, size, t))
            .collect()
    }

    #[test]
    fn a_tight_timer_is_found_at_the_eighth_connection_and_only_on_new_connections() {
        let mut d = Beaconing::new(no_learning(), 1_000);
        let flows = beacon(
            "203.0.113.9",
            (0..12).map(|i| 1_764_000_000 + i * 300 + (i * 7) % 11),
            512,
        );
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].records, 8, "found at the eighth connection");
        assert_eq!(found[0].severity, Severity::High);
        assert!(
            found[0]
                .summary
                .contains("(network 203.0.113.0/24): 8 connections about every 4 min"),
            "{}",
            found[0].summary
        );
        // Records of a connection already open (no SYN) are not new beacons.
        let mut d = Beaconing::new(no_learning(), 1_000);
        let mut flows = flows;
        flows.iter_mut().for_each(|f| f.opens_connection = false);
        assert!(run(&mut d, &flows).is_empty());
    }

    #[test]
    fn jittered_long_period_beacons_arriving_out_of_order_are_found() {
        // 20-minute sleeps shortened by up to 45 %, sizes from 300 B to 3 KB, delivered in
        // batches whose order is shuffled.
        let mut t = 1_764_000_000u64;
        let mut starts = Vec::new();
        for i in 0..16u64 {
            starts.push(t);
            t += 1_200 - (i * 7_919 % 540);
        }
        let mut flows: Vec<Flow> = starts
            .iter()
            .enumerate()
            .map(|(i, s)| {
                flow(
                    Path::NatEgress,
                    "198.51.100.77",
                    443,
                    300 + (i as u64 * 997) % 2_700,
                    *s,
                )
            })
            .collect();
        for chunk in flows.chunks_mut(4) {
            chunk.reverse();
        }
        let mut d = Beaconing::new(no_learning(), 1_000);
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Medium);
        let e = found[0].evidence.as_ref().unwrap();
        assert!(
            e.baseline.unwrap() > 600.0 && e.baseline.unwrap() < 1_200.0,
            "{e:?}"
        );
    }

    #[test]
    fn random_times_bursts_and_shared_networks_are_not_beacons() {
        let mut d = Beaconing::new(no_learning(), 1_000);
        // Connections at pseudo-random times (exponential gaps, mean 5 minutes).
        let mut t = 1_764_000_000.0f64;
        let mut x = 12_345u64;
        let mut random = Vec::new();
        for _ in 0..60 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let u = (x >> 11) as f64 / (1u64 << 53) as f64;
            t += -300.0 * (1.0 - u).ln();
            random.push(t as u64);
        }
        assert!(run(&mut d, &beacon("203.0.113.20", random.into_iter(), 900)).is_empty());
        // Bursts: 8 connections within seconds are one contact, not a timer.
        let bursts = (0..6).flat_map(|b| (0..8).map(move |k| 1_764_100_000 + b * 5_000 + k * 2));
        assert!(run(&mut d, &beacon("203.0.113.21", bursts, 900)).is_empty());
        // A monitoring agent's timer to a network three workloads use is expected.
        let mut flows = Vec::new();
        for (n, w) in ["10.0.1.5", "10.0.1.6", "10.0.1.7"].iter().enumerate() {
            for i in 0..12u64 {
                let mut f = flow(
                    Path::NatEgress,
                    "192.0.2.10",
                    443,
                    2_000,
                    1_764_200_000 + i * 180 + n as u64,
                );
                f.workload = Some(w.parse().unwrap());
                flows.push(f);
            }
        }
        // Another address of that network: shared too.
        flows.extend(beacon(
            "192.0.2.99",
            (0..12).map(|i| 1_764_300_000 + i * 120),
            800,
        ));
        let found = run(&mut d, &flows);
        assert!(
            found.iter().all(|f| f.first_seen < 1_764_200_000 + 3 * 180),
            "only before the network was known to be shared: {found:?}"
        );
    }

    #[test]
    fn sessions_reopened_on_a_timer_are_not_check_ins() {
        // An experiment tracker's connection, reopened every hour and open all hour long.
        let mut flows = Vec::new();
        for i in 0..24u64 {
            let start = 1_764_000_000 + i * 3_600;
            flows.push(flow(Path::NatEgress, "203.0.113.30", 443, 900, start));
            for m in 1..50u64 {
                let mut f = flow(Path::NatEgress, "203.0.113.30", 443, 5_000, start + m * 60);
                f.opens_connection = false;
                flows.push(f);
            }
        }
        let mut d = Beaconing::new(no_learning(), 1_000);
        assert!(run(&mut d, &flows).is_empty());
        // The same timer with short connections (one record now and then crossing a
        // window boundary) is a beacon.
        let short: Vec<Flow> = flows
            .iter()
            .filter(|f| f.opens_connection || (f.start - 1_764_000_000) % 3_600 == 60)
            .filter(|f| f.opens_connection || (f.start / 3_600) % 3 == 0)
            .cloned()
            .collect();
        let mut d = Beaconing::new(no_learning(), 1_000);
        assert_eq!(run(&mut d, &short).len(), 1);
    }

    #[test]
    fn snapshot_keeps_a_series_across_a_restart() {
        let flows = beacon("203.0.113.9", (0..10).map(|i| 1_764_000_000 + i * 600), 512);
        let mut d = Beaconing::new(no_learning(), 1_000);
        assert!(run(&mut d, &flows[..5]).is_empty());
        let mut restored = Beaconing::new(no_learning(), 1_000);
        restored
            .load_state(&crate::rules::encoded_state(&d).unwrap())
            .unwrap();
        assert_eq!(run(&mut restored, &flows[5..]).len(), 1);
    }

    #[test]
    fn a_beacon_that_began_while_learning_is_found_once_learning_ends() {
        let rule = BeaconingRule {
            learning_seconds: 3_600,
            ..BeaconingRule::default()
        };
        let mut d = Beaconing::new(rule, 1_000);
        let flows = beacon("203.0.113.9", (0..10).map(|i| 1_764_000_000 + i * 400), 512);
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].first_seen, 1_764_000_000);
        assert!(
            found[0].summary.contains("covers the learning period"),
            "{}",
            found[0].summary
        );
    }

    /// A beacon that runs only while the rule learns (a new install's first hours) and stops
    /// is judged when learning ends, with no later connection of its own to set that off.
    #[test]
    fn a_beacon_that_stopped_while_learning_is_judged_when_learning_ends() {
        let rule = BeaconingRule {
            learning_seconds: 86_400,
            ..BeaconingRule::default()
        };
        let t0 = 1_764_000_000u64;
        // 300 s with +-30 % jitter for 6 hours, then silence.
        let mut t = t0;
        let mut starts = Vec::new();
        let mut i = 0u64;
        while t < t0 + 6 * 3_600 {
            starts.push(t);
            i += 1;
            t += 300 + (i * 7_919 % 181) - 90;
        }
        let mut flows = beacon("198.51.100.40", starts.into_iter(), 700);
        // Other traffic goes on: the next day's first record ends learning.
        flows.push(flow(Path::NatEgress, "192.0.2.1", 443, 10_000, t0 + 86_400));
        let mut d = Beaconing::new(rule.clone(), 1_000);
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].remote, Some("198.51.100.40".parse().unwrap()));
        assert!(found[0].last_seen < t0 + 6 * 3_600 + 120, "{found:?}");
        // A finite input that ends while learning is judged at its end.
        let mut d = Beaconing::new(rule, 1_000);
        let found = crate::rules::testing::run_to_end(&mut d, &flows[..flows.len() - 1]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].summary.contains("end of the input"),
            "{}",
            found[0].summary
        );
    }
}
