//! traffic_volume_unusual: a large upload to one remote stands out against what the workload
//! usually sends, even when each of its records looks ordinary. A window is judged once it is
//! complete: both directions seen, after a bounded wait for late records (AWS delivers a
//! window's records minutes late and in any order), so a sync that sends much and receives
//! more is not an upload because its sending half arrived first.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use super::{human_bytes, restore, through_the_nat, Rule, SavedState, Snapshot};
use crate::classify::Flow;
use crate::finding::{Evidence, Finding, KeptRecord, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::ewma::Ewma;
use crate::sketch::learning::LearningClock;
use crate::sketch::network::{key_of, network_key, pair_key, Audience};

/// Bytes sent to one remote in one window, against the workload's own history
/// (GuardDuty's TrafficVolumeUnusual).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct TrafficVolumeRule {
    pub enabled: bool,
    pub window_seconds: u64,
    /// Never flag less than this many bytes to one remote in one window.
    pub min_bytes: u64,
    /// How many mean absolute deviations above the workload's mean counts as unusual.
    pub deviations: f64,
    /// Active windows a workload needs before its baseline is trusted.
    pub learning_windows: u64,
    /// Event-time seconds from the first flow during which the fleet's networks and each
    /// workload's own networks are learnt before anything is judged.
    pub learning_seconds: u64,
    /// Bytes sent must be at least this multiple of bytes received (an upload).
    pub upload_ratio: f64,
    /// A remote network (/24, /48) more workloads than this use is shared; large transfers
    /// there are the team's work (checkpoints to object storage), not unusual.
    pub max_workloads: usize,
    /// Event-time seconds a window waits after its end for late records (of either
    /// direction) before it is judged.
    pub late_seconds: u64,
    /// A window is usual for a pair that has sent at least 1/this-multiple of it in one window
    /// before, at least `history-seconds` earlier (a recurring job to its own server).
    pub pair_history_multiple: f64,
    /// How old a pair's earlier window must be to vouch for a new one, so an upload that
    /// ramps up window by window cannot vouch for itself.
    pub history_seconds: u64,
}

impl Default for TrafficVolumeRule {
    fn default() -> Self {
        TrafficVolumeRule {
            enabled: true,
            window_seconds: 60,
            min_bytes: 50_000_000,
            deviations: 10.0,
            learning_windows: 30,
            learning_seconds: 86_400,
            upload_ratio: 2.0,
            max_workloads: 2,
            late_seconds: 600,
            pair_history_multiple: 2.0,
            history_seconds: 21_600,
        }
    }
}

/// Windows waiting for their late records at most; past it the earliest is judged early.
const PENDING_CAPACITY: usize = 10_000;

/// Bytes sent to one remote within one window, against what this workload usually sends to
/// one remote in one window.
pub struct TrafficVolume {
    rule: TrafficVolumeRule,
    state: VolumeState,
}

#[derive(Serialize, Deserialize)]
struct VolumeState {
    pairs: BoundedMap<u64, PairWindow>,
    workloads: BoundedMap<u64, VolumeBaseline>,
    /// Remote network -> the workloads that talked to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
    /// Event time of the first flow seen: the learning period runs from it.
    first_flow: LearningClock,
    /// Windows that sent at least min-bytes, by (pair, window), waiting to be judged.
    pending: HashMap<(u64, u64), Candidate>,
    /// When each pending window is judged: (event time, pair, window), earliest first.
    due: BinaryHeap<Reverse<(u64, u64, u64)>>,
    /// Newest window end seen: event time, by which pending windows become complete.
    watermark: u64,
}

impl Snapshot for VolumeState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.pairs.set_capacity(configured.pairs.capacity());
        self.workloads.set_capacity(configured.workloads.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PairWindow {
    window: u64,
    sent: u64,
    received: u64,
    records: u64,
    /// The largest amount this pair sent in one window that was judged usual, among windows
    /// at least history-seconds old: what vouches for a new window.
    vouched: u64,
    /// The largest such amount since `recent_since` (a window index), joining `vouched` once
    /// that is history-seconds old.
    recent: u64,
    recent_since: u64,
    /// This window has been made a candidate: later records do not make it one again.
    judged: bool,
}

/// A window that sent at least min-bytes to one remote, as far as its records have arrived.
#[derive(Serialize, Deserialize)]
struct Candidate {
    /// The record that made it a candidate, for the finding's fields.
    record: KeptRecord,
    sent: u64,
    received: u64,
    records: u64,
    /// The workload's baseline before this window, so the window cannot raise its own bar.
    baseline: Ewma,
    /// Whether it began while the rule was still learning.
    learning: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct VolumeBaseline {
    per_window: Ewma,
    window: u64,
    /// The largest amount sent to one remote in `window` so far.
    window_max: u64,
}

impl TrafficVolume {
    pub fn new(rule: TrafficVolumeRule, entries: usize) -> Self {
        TrafficVolume {
            rule,
            state: VolumeState {
                pairs: BoundedMap::new(entries),
                workloads: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: LearningClock::default(),
                pending: HashMap::new(),
                due: BinaryHeap::new(),
                watermark: 0,
            },
        }
    }

    fn windows_of(&self, seconds: u64) -> u64 {
        seconds.div_ceil(self.rule.window_seconds.max(1))
    }

    /// Moves a pair's recent maximum into what vouches for it once it is old enough.
    fn age_history(rule_windows: u64, p: &mut PairWindow, window: u64) {
        if window.saturating_sub(p.recent_since) >= rule_windows {
            p.vouched = p.vouched.max(p.recent);
            p.recent = 0;
            p.recent_since = window;
        }
    }

    /// Judges every pending window whose wait is over (all of them with `all`).
    fn judge_due(&mut self, all: bool, out: &mut Vec<Finding>) {
        while let Some(&Reverse((at, pair, window))) = self.state.due.peek() {
            let full = self.state.pending.len() > PENDING_CAPACITY;
            if !all && !full && at > self.state.watermark {
                break;
            }
            self.state.due.pop();
            if let Some(c) = self.state.pending.remove(&(pair, window)) {
                self.judge(pair, window, c, out);
            }
        }
    }

    fn judge(&mut self, pair: u64, window: u64, c: Candidate, out: &mut Vec<Finding>) {
        let rule = &self.rule;
        let history_windows = rule.history_seconds.div_ceil(rule.window_seconds.max(1));
        let Some(r) = c.record.remote else {
            return;
        };
        // Popularity as it stands now: a network other workloads took up during the wait
        // is as shared as one they used before.
        let popular = self
            .state
            .audience
            .get(&network_key(r))
            .is_some_and(|a| a.len() > rule.max_workloads);
        let vouched = match self.state.pairs.get_mut(&pair) {
            Some(p) => {
                Self::age_history(history_windows, p, window);
                p.vouched
            }
            None => 0,
        };
        let threshold =
            (rule.min_bytes as f64).max(c.baseline.mean + rule.deviations * c.baseline.deviation);
        let usual = c.learning
            || popular
            || c.baseline.samples < rule.learning_windows
            || (c.sent as f64) < threshold
            || (c.sent as f64) < rule.upload_ratio * c.received as f64
            || (vouched > 0 && c.sent as f64 <= rule.pair_history_multiple * vouched as f64);
        if usual {
            if let Some(p) = self.state.pairs.get_mut(&pair) {
                p.recent = p.recent.max(c.sent);
            }
            return;
        }
        let summary = format!(
            "sent {} to {r} within one {}-s window (received {}); this workload usually sends {} ± {} to one remote per window (over {} active windows), threshold {}{}",
            human_bytes(c.sent as f64),
            rule.window_seconds,
            human_bytes(c.received as f64),
            human_bytes(c.baseline.mean),
            human_bytes(c.baseline.deviation),
            c.baseline.samples,
            human_bytes(threshold),
            if vouched > 0 {
                format!("; its largest earlier window to {r} was {}", human_bytes(vouched as f64))
            } else {
                String::new()
            }
        );
        let mut finding = Finding::from_kept(self.name(), Severity::High, summary, c.record);
        finding.bytes = c.sent;
        finding.records = c.records;
        out.push(finding.with_evidence(Evidence {
            observed: c.sent as f64,
            baseline: Some(c.baseline.mean),
            threshold,
            unit: "bytes per window".into(),
        }));
    }
}

impl Rule for TrafficVolume {
    fn state_evictions(&self) -> u64 {
        self.state.pairs.evicted + self.state.workloads.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "traffic_volume_unusual"
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
        let ws = self.rule.window_seconds.max(1);
        let window = f.end / ws;
        let history_windows = self.windows_of(self.rule.history_seconds);
        // A network the fleet shares (object storage, a package CDN) is where large transfers
        // of the team's work go, a new training job's first checkpoints included; an upload
        // there is not unusual by volume. (An attacker's bucket at the same provider looks
        // the same in a flow log: the residual risk the decision record accepts.)
        self.state
            .audience
            .touch(network_key(r), f.end, Audience::default)
            .add(key_of(w));
        let b = self
            .state
            .workloads
            .touch(key_of(w), f.end, VolumeBaseline::default);
        if window > b.window {
            if b.window_max > 0 {
                b.per_window.update(b.window_max as f64);
            }
            b.window = window;
            b.window_max = 0;
        }
        let baseline = b.per_window;
        let pair = pair_key(w, r);
        let p = self.state.pairs.touch(pair, f.end, || PairWindow {
            window,
            sent: 0,
            received: 0,
            records: 0,
            vouched: 0,
            recent: 0,
            recent_since: window,
            judged: false,
        });
        if window > p.window {
            // The window that ended never reached min-bytes (or it would be pending): it is
            // the pair's usual traffic.
            if p.sent < self.rule.min_bytes {
                p.recent = p.recent.max(p.sent);
            }
            Self::age_history(history_windows, p, window);
            p.window = window;
            p.sent = 0;
            p.received = 0;
            p.records = 0;
            p.judged = false;
        }
        // A window already waiting for judgement takes its late records, of either direction.
        // Only a window that became a candidate, or an earlier one, can be waiting: the common
        // record costs no lookup.
        if window < p.window || (window == p.window && p.judged) {
            if let Some(c) = self.state.pending.get_mut(&(pair, window)) {
                // Byte counts come from the input and may each be near 2^64: sums saturate.
                if sending {
                    c.sent = c.sent.saturating_add(f.bytes);
                } else {
                    c.received = c.received.saturating_add(f.bytes);
                }
                c.records = c.records.saturating_add(1);
                c.record.first_seen = c.record.first_seen.min(f.start);
                c.record.last_seen = c.record.last_seen.max(f.end);
                return;
            }
        }
        let (sent, received, records) = if window < p.window {
            // A late record of a window that has moved on, alone: judged on its own bytes.
            if sending {
                (f.bytes, 0, 1)
            } else {
                return;
            }
        } else {
            p.records = p.records.saturating_add(1);
            if sending {
                p.sent = p.sent.saturating_add(f.bytes);
            } else {
                p.received = p.received.saturating_add(f.bytes);
            }
            (p.sent, p.received, p.records)
        };
        if window == b.window {
            b.window_max = b.window_max.max(sent);
        }
        let learning = self
            .state
            .first_flow
            .learning(f.start, f.end, self.rule.learning_seconds);
        if !sending || sent < self.rule.min_bytes {
            return;
        }
        if window == p.window {
            if p.judged {
                // Judged already: this record came after the wait for late ones.
                return;
            }
            p.judged = true;
        }
        self.state.pending.insert(
            (pair, window),
            Candidate {
                record: KeptRecord::of(f),
                sent,
                received,
                records,
                baseline,
                learning,
            },
        );
        let at = window
            .saturating_add(1)
            .saturating_mul(ws)
            .saturating_add(self.rule.late_seconds);
        self.state.due.push(Reverse((at, pair, window)));
        self.judge_due(false, out);
    }

    fn finish(&mut self, out: &mut Vec<Finding>) {
        self.judge_due(true, out);
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
    use crate::rules::testing::{flow, run, run_to_end, W};

    #[test]
    fn traffic_volume_against_the_workloads_baseline() {
        let rule = TrafficVolumeRule {
            learning_seconds: 0,
            ..TrafficVolumeRule::default()
        };
        let mut d = TrafficVolume::new(rule, 1_000);
        // 40 windows of about 1 MB sent to a handful of remotes.
        let mut flows = Vec::new();
        for i in 0..40u64 {
            flows.push(flow(
                Path::NatEgress,
                "198.51.100.1",
                443,
                900_000 + i * 5_000,
                i * 60,
            ));
            flows.push(flow(
                Path::NatReturn,
                "198.51.100.1",
                443,
                20_000_000,
                i * 60,
            ));
        }
        assert!(run(&mut d, &flows).is_empty());
        // A big download is not an upload; a big upload is flagged once its window is
        // complete, with the numbers of the whole window.
        let t = 40 * 60;
        let mut later = vec![
            flow(Path::NatReturn, "198.51.100.9", 443, 900_000_000, t),
            flow(Path::NatEgress, "198.51.100.9", 443, 60_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
        ];
        later[1].end = t + 59;
        assert!(run(&mut d, &later).is_empty(), "judged only when complete");
        let found = run_to_end(&mut d, &[]);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.remote, Some("203.0.113.7".parse().unwrap()));
        assert_eq!((f.bytes, f.records), (90_000_000, 3));
        let e = f.evidence.as_ref().unwrap();
        assert_eq!(e.threshold, 50_000_000.0);
        assert!(
            (e.baseline.unwrap() - 1_000_000.0).abs() < 200_000.0,
            "{e:?}"
        );
    }

    /// Bytes come from the input, and AWS's field is a u64: sums must stop at u64::MAX
    /// rather than wrap (a panic in debug builds, a small number in release builds).
    #[test]
    fn byte_sums_saturate_instead_of_wrapping() {
        const HUGE: u64 = u64::MAX - 1;
        let t = 1_764_150_000;
        let w: IpAddr = W.parse().unwrap();
        let up = |remote: &str| flow(Path::NatEgress, remote, 443, HUGE, t);
        let down = |remote: &str| flow(Path::NatReturn, remote, 443, HUGE, t);

        // The pair's window sums.
        let r: IpAddr = "203.0.113.5".parse().unwrap();
        let rule = TrafficVolumeRule {
            learning_windows: 0,
            learning_seconds: 0,
            ..TrafficVolumeRule::default()
        };
        let mut v = TrafficVolume::new(rule, 1_000);
        run(
            &mut v,
            &[up("203.0.113.5"), up("203.0.113.5"), up("203.0.113.5")],
        );
        run(&mut v, &[down("203.0.113.5"), down("203.0.113.5")]);
        let c = &v.state.pending[&(pair_key(w, r), (t + 59).div_euclid(60))];
        assert_eq!((c.sent, c.received), (u64::MAX, u64::MAX));
        // As much came back as went out: not an upload.
        assert!(run_to_end(&mut v, &[]).is_empty());
    }

    fn trained() -> TrafficVolume {
        let rule = TrafficVolumeRule {
            learning_seconds: 0,
            learning_windows: 3,
            ..TrafficVolumeRule::default()
        };
        let mut d = TrafficVolume::new(rule, 1_000);
        let flows: Vec<_> = (0..5u64)
            .map(|i| flow(Path::NatEgress, "198.51.100.1", 443, 1_000_000, i * 60))
            .collect();
        assert!(run(&mut d, &flows).is_empty());
        d
    }

    #[test]
    fn the_answer_that_comes_late_makes_a_sync_not_an_upload() {
        let mut d = trained();
        let t = 6 * 60;
        // The sending half of a sync arrives first; its receiving half five minutes later,
        // within the wait for late records.
        assert!(run(
            &mut d,
            &[flow(Path::NatEgress, "203.0.113.7", 443, 80_000_000, t)]
        )
        .is_empty());
        let mut filler = flow(Path::NatEgress, "198.51.100.1", 443, 1_000, t + 300);
        assert!(run(&mut d, &[filler.clone()]).is_empty());
        assert!(run(
            &mut d,
            &[flow(Path::NatReturn, "203.0.113.7", 443, 400_000_000, t)]
        )
        .is_empty());
        filler.start = t + 2_000;
        filler.end = t + 2_059;
        assert!(run_to_end(&mut d, &[filler]).is_empty());

        // The same upload with nothing coming back is flagged once the wait is over, and only
        // then: event time decides, not the end of the input.
        let mut d = trained();
        assert!(run(
            &mut d,
            &[flow(Path::NatEgress, "203.0.113.7", 443, 80_000_000, t)]
        )
        .is_empty());
        let mut tick = flow(Path::NatEgress, "198.51.100.1", 443, 1_000, t + 600);
        assert!(
            run(&mut d, &[tick.clone()]).is_empty(),
            "still within the wait"
        );
        tick.start = t + 700;
        tick.end = t + 759;
        assert_eq!(run(&mut d, &[tick]).len(), 1);
        // A record of that window arriving after its judgement does not raise it again.
        assert!(run_to_end(
            &mut d,
            &[flow(Path::NatEgress, "203.0.113.7", 443, 80_000_000, t)]
        )
        .is_empty());
    }

    #[test]
    fn a_pairs_own_older_windows_vouch_for_it_but_a_ramp_cannot_vouch_for_itself() {
        let mut d = trained();
        // A nightly job sends 60 MB to its own server, night after night.
        let night = 86_400;
        let up = |t: u64| flow(Path::NatEgress, "203.0.113.7", 443, 60_000_000, t);
        assert_eq!(
            run_to_end(&mut d, &[up(night)]).len(),
            1,
            "the first is unusual"
        );
        let mut d = trained();
        let first = run(&mut d, &[up(night)]);
        let again = run_to_end(&mut d, &[up(night + 7 * 3_600), up(2 * night)]);
        assert!(first.is_empty());
        assert_eq!(
            again.len(),
            1,
            "the first night is flagged, later nights are vouched for"
        );
        assert_eq!(again[0].first_seen, night);

        // An upload that grows window by window has no old window to vouch for it.
        let mut d = trained();
        let ramp: Vec<_> = (0..6u64)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "203.0.113.9",
                    443,
                    30_000_000 << i,
                    600 + i * 60,
                )
            })
            .collect();
        let found = run_to_end(&mut d, &ramp);
        // 60 MB a minute after 30 MB: the window before is too recent to vouch for it.
        assert_eq!(found[0].bytes, 60_000_000, "{found:?}");
    }
}
