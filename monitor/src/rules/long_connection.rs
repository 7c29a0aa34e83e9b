//! long_connection: one connection held open for hours to a network few workloads use. An
//! interactive reverse shell or a tunnel sends little and never trips a volume or beacon
//! rule, but it stays open (RITA's long connections). A connection here is a run of records of
//! one workload, remote address and port with no gap longer than the NAT gateway's idle
//! timeout (350 s: AWS drops an idle TCP flow then) and no new connection (a SYN) after its
//! first record; flow logs without `tcp-flags` cannot tell connections apart, and there the
//! rule stays silent.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{hours, human_bytes, kept_flow, restore, through_the_nat, Rule, SavedState, Snapshot};
use crate::classify::Flow;
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::learning::LearningClock;
use crate::sketch::network::{key_of, network_cidr, network_key, pair_key, Audience};

/// Connections open for hours to a network few workloads use.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct LongConnectionRule {
    pub enabled: bool,
    /// How long a connection must stay open to be flagged.
    pub min_duration_seconds: u64,
    /// A longer silence between two records ends the connection: the NAT gateway drops a TCP
    /// flow idle for 350 s, and records cover 60-s windows.
    pub max_gap_seconds: u64,
    /// A remote network (/24, /48) more workloads than this use is a shared service: the
    /// benign profile is experiment tracking and other SaaS sessions kept alive all day by
    /// many notebooks.
    pub max_workloads: usize,
    /// Event-time seconds from the first flow during which which networks the fleet shares
    /// is learnt. Learning defers judgement: connections that reached the duration meanwhile
    /// are judged when it ends.
    pub learning_seconds: u64,
}

impl Default for LongConnectionRule {
    fn default() -> Self {
        LongConnectionRule {
            enabled: true,
            min_duration_seconds: 3_600,
            max_gap_seconds: 420,
            max_workloads: 2,
            learning_seconds: 6 * 3_600,
        }
    }
}

pub struct LongConnection {
    rule: LongConnectionRule,
    state: LongState,
}

#[derive(Serialize, Deserialize)]
struct LongState {
    runs: BoundedMap<u64, Run>,
    /// Remote network -> the workloads that sent to it (up to four).
    audience: BoundedMap<u64, Audience>,
    first_flow: LearningClock,
    learning_judged: bool,
}

impl Snapshot for LongState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.runs.set_capacity(configured.runs.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct Run {
    first_start: u64,
    last_end: u64,
    sent: u64,
    received: u64,
    /// Records of the run, and those that opened a connection (SYN seen).
    records: u64,
    opened: u64,
    /// Distinct minutes with a record, for how steady the connection is.
    minutes: u64,
    last_minute: u64,
    alerted: bool,
    workload: IpAddr,
    remote: IpAddr,
    port: u16,
    interface_id: Option<compact_str::CompactString>,
}

impl Run {
    /// A connection whose first record (as far as has arrived) is `f`.
    fn new(f: &Flow, workload: IpAddr, remote: IpAddr, port: u16) -> Run {
        Run {
            first_start: f.start,
            last_end: f.end,
            sent: 0,
            received: 0,
            records: 0,
            opened: 0,
            minutes: 0,
            last_minute: 0,
            alerted: false,
            workload,
            remote,
            port,
            interface_id: None,
        }
    }

    fn duration(&self) -> u64 {
        self.last_end.saturating_sub(self.first_start)
    }

    /// Only the first record opened a connection (a record of a new one starts a new run).
    fn one_connection(&self) -> bool {
        self.opened <= 1
    }
}

impl LongConnection {
    pub fn new(rule: LongConnectionRule, entries: usize) -> Self {
        LongConnection {
            rule,
            state: LongState {
                runs: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: LearningClock::default(),
                learning_judged: false,
            },
        }
    }

    fn shared(audience: &BoundedMap<u64, Audience>, remote: IpAddr, most: usize) -> bool {
        audience
            .get(&network_key(remote))
            .is_some_and(|a| a.len() > most)
    }

    fn judge_learnt(&mut self, when: &str, out: &mut Vec<Finding>) {
        self.state.learning_judged = true;
        let rule = &self.rule;
        let audience = &self.state.audience;
        for (_, run) in self.state.runs.values_mut() {
            if !Self::shared(audience, run.remote, rule.max_workloads) {
                if let Some(mut f) = judge(rule, run, None) {
                    f.summary = format!(
                        "{}; judged {when}, so it covers the learning period",
                        f.summary
                    );
                    out.push(f);
                }
            }
        }
    }
}

fn judge(rule: &LongConnectionRule, run: &mut Run, at: Option<&Flow>) -> Option<Finding> {
    if run.alerted || run.duration() < rule.min_duration_seconds || !run.one_connection() {
        return None;
    }
    run.alerted = true;
    let duration = run.duration();
    let span_minutes = duration.div_ceil(60).max(1);
    let steady = run.minutes as f64 / span_minutes as f64;
    let summary = format!(
        "a connection to {} port {} (network {}) open for {}: sent {}, received {}, a record in {:.0} % of its minutes; no more than {} workload(s) use that network",
        run.remote,
        run.port,
        network_cidr(run.remote),
        hours(duration),
        human_bytes(run.sent as f64),
        human_bytes(run.received as f64),
        steady * 100.0,
        rule.max_workloads,
    );
    let kept;
    let flow = match at {
        Some(f) => f,
        None => {
            kept = kept_flow(
                run.workload,
                run.remote,
                Some(run.port),
                run.last_end,
                run.interface_id.as_deref(),
            );
            &kept
        }
    };
    let mut finding = Finding::from_flow("long_connection", Severity::Medium, summary, flow);
    finding.remote = Some(run.remote);
    finding.remote_port = Some(run.port);
    finding.first_seen = run.first_start;
    finding.last_seen = run.last_end;
    finding.bytes = run.sent;
    finding.records = run.records;
    Some(finding.with_evidence(Evidence {
        observed: duration as f64,
        baseline: None,
        threshold: rule.min_duration_seconds as f64,
        unit: "seconds the connection stayed open".into(),
    }))
}

impl Rule for LongConnection {
    fn state_evictions(&self) -> u64 {
        self.state.runs.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "long_connection"
    }

    fn learning_ends(&self) -> Option<u64> {
        self.state.first_flow.ends(self.rule.learning_seconds)
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let Some(port) = f.remote_port else { return };
        if f.protocol != Some(6) {
            return;
        }
        let learning = self
            .state
            .first_flow
            .learning(f.start, f.end, self.rule.learning_seconds);
        if !learning && !self.state.learning_judged {
            self.judge_learnt("when the learning period ended", out);
        }
        if f.closes_in_record {
            // Opened and closed within one record's window (most connections): it cannot be
            // one held for hours, and keeping it would churn the table for nothing.
            return;
        }
        if sending {
            self.state
                .audience
                .touch(network_key(r), f.end, Audience::default)
                .add(key_of(w));
        }
        // One connection: its own port too, where the record has it (a session reopened
        // every hour uses another).
        let local = f.local_port.map_or(0, |p| u64::from(p) << 16);
        let key = pair_key(w, r) ^ (u64::from(port) | local).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let gap = self.rule.max_gap_seconds;
        let run = self
            .state
            .runs
            .touch(key, f.end, || Run::new(f, w, r, port));
        let reopened = sending && f.opens_connection && run.opened > 0 && f.start > run.first_start;
        if f.start > run.last_end.saturating_add(gap) || reopened {
            // A silence the NAT would have closed the connection in, or a new connection
            // (a session reopened every hour is not one held for hours): a new one begins.
            *run = Run::new(f, w, r, port);
        } else if f.end.saturating_add(gap) < run.first_start
            || (run.opened > 0 && f.start < run.first_start)
        {
            // Older than the connection's first packet (a late record of an earlier
            // connection, which delivery order can bring after this one's): not this one.
            return;
        }
        run.first_start = run.first_start.min(f.start);
        run.last_end = run.last_end.max(f.end);
        run.records = run.records.saturating_add(1);
        if sending {
            run.sent = run.sent.saturating_add(f.bytes);
            if f.opens_connection {
                run.opened = run.opened.saturating_add(1);
            }
            let minute = f.start / 60;
            if minute != run.last_minute {
                run.last_minute = minute;
                run.minutes = run.minutes.saturating_add(1);
            }
        } else {
            run.received = run.received.saturating_add(f.bytes);
        }
        if run.interface_id.is_none() && sending {
            run.interface_id = f.interface_id.map(compact_str::CompactString::from);
        }
        if learning || Self::shared(&self.state.audience, r, self.rule.max_workloads) {
            return;
        }
        let Some(run) = self.state.runs.get_mut(&key) else {
            return;
        };
        if let Some(finding) = judge(&self.rule, run, sending.then_some(f)) {
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
    use crate::classify::Path;
    use crate::rules::testing::{flow, run, run_to_end};

    const T0: u64 = 1_764_547_200;

    fn no_learning() -> LongConnectionRule {
        LongConnectionRule {
            learning_seconds: 0,
            ..LongConnectionRule::default()
        }
    }

    /// A reverse shell: one TCP connection, a few kilobytes each way every minute, for hours.
    fn shell(remote: &str, t0: u64, minutes: u64) -> Vec<Flow<'static>> {
        let remote: &'static str = Box::leak(remote.to_string().into_boxed_str());
        let mut flows = Vec::new();
        for m in 0..minutes {
            let mut out = flow(
                Path::NatEgress,
                remote,
                443,
                2_000 + (m * 7_919) % 18_000,
                t0 + m * 60,
            );
            out.opens_connection = m == 0;
            let mut back = flow(
                Path::NatReturn,
                remote,
                443,
                3_000 + (m * 104_729) % 17_000,
                t0 + m * 60,
            );
            back.opens_connection = false;
            flows.push(out);
            flows.push(back);
        }
        flows
    }

    #[test]
    fn connections_that_open_and_close_in_one_record_are_not_kept() {
        let mut d = LongConnection::new(no_learning(), 1_000);
        // A request a minute for six hours, each its own connection (SYN and FIN in the
        // record), all from one local port as a NAT can reuse it: no run is kept, none found.
        let mut flows = shell("198.51.100.67", T0, 6 * 60);
        for f in &mut flows {
            f.opens_connection = f.path == Path::NatEgress;
            f.closes_in_record = true;
        }
        assert!(run(&mut d, &flows).is_empty());
        assert_eq!(d.state.runs.len(), 0);
        // The shell itself, records without FIN, is still found beside them.
        assert_eq!(run(&mut d, &shell("198.51.100.68", T0, 6 * 60)).len(), 1);
    }

    #[test]
    fn a_reverse_shell_held_for_hours_is_found_once() {
        let mut d = LongConnection::new(no_learning(), 1_000);
        let found = run(&mut d, &shell("198.51.100.66", T0, 6 * 60));
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.rule, "long_connection");
        assert_eq!(f.remote, Some("198.51.100.66".parse().unwrap()));
        assert!(f.last_seen - f.first_seen >= 3_600, "{f:?}");
        assert!(
            f.summary.contains("open for 60 min") || f.summary.contains("open for 61 min"),
            "{}",
            f.summary
        );
        assert!(f.summary.contains("100 % of its minutes"), "{}", f.summary);
    }

    #[test]
    fn shared_sessions_pollers_and_gaps_are_not_long_connections() {
        // Experiment tracking: the same sessions from three workloads.
        let mut d = LongConnection::new(no_learning(), 1_000);
        let mut flows = Vec::new();
        for (i, w) in ["10.0.1.5", "10.0.1.6", "10.0.1.7"].iter().enumerate() {
            for mut f in shell("35.186.0.10", T0 + i as u64, 30) {
                f.workload = Some(w.parse().unwrap());
                flows.push(f);
            }
        }
        flows.extend(shell("35.186.0.10", T0 + 1_800, 120));
        assert!(run(&mut d, &flows).is_empty());
        // A poller: a new connection every minute for hours.
        let mut d = LongConnection::new(no_learning(), 1_000);
        let poll: Vec<Flow> = (0..300)
            .map(|m| flow(Path::NatEgress, "203.0.113.80", 443, 900, T0 + m * 60))
            .collect();
        assert!(run(&mut d, &poll).is_empty());
        // Silences longer than the NAT's idle timeout: separate connections.
        let mut d = LongConnection::new(no_learning(), 1_000);
        let mut gaps = Vec::new();
        for k in 0..8u64 {
            gaps.extend(shell("203.0.113.81", T0 + k * 1_500, 15));
        }
        assert!(run(&mut d, &gaps).is_empty());
    }

    #[test]
    fn a_shell_opened_while_learning_is_judged_when_learning_ends_or_the_input_does() {
        let rule = LongConnectionRule::default();
        let mut flows = shell("198.51.100.66", T0, 3 * 60);
        flows.push(flow(
            Path::NatEgress,
            "192.0.2.1",
            443,
            100,
            T0 + rule.learning_seconds + 60,
        ));
        let mut d = LongConnection::new(rule.clone(), 1_000);
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].summary.contains("covers the learning period"));
        let mut d = LongConnection::new(rule, 1_000);
        let found = run_to_end(&mut d, &flows[..flows.len() - 1]);
        assert_eq!(found.len(), 1, "{found:?}");
        // Saved and restored mid-way, the connection is still one.
        let mut d = LongConnection::new(no_learning(), 1_000);
        let all = shell("198.51.100.67", T0, 90);
        assert!(run(&mut d, &all[..60]).is_empty());
        let mut restored = LongConnection::new(no_learning(), 1_000);
        restored
            .load_state(&crate::rules::encoded_state(&d).unwrap())
            .unwrap();
        assert_eq!(run(&mut restored, &all[60..]).len(), 1);
    }
}
