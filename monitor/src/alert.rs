//! The alert router: turns the rules' findings into alerts. A finding that repeats one already
//! alerted for the same (rule, workload, remote, port) within the dedupe window is not sent
//! again but counted: when the window ends, an update of the first alert (same id, as GuardDuty
//! keeps a finding's id while its count grows) says how many times it was seen and until when.
//! It folds floods: past a budget per rule and per (rule, workload) in a window of event time,
//! findings are counted into one alert that says how many it stands for. Everything here is
//! event time and bounded; what it decides goes to the outbox, which makes it durable before
//! any sink sees it, and the router's memory is rebuilt from the outbox after a restart.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::Alerts;
use crate::finding::{Finding, Severity};
use crate::metrics::Metrics;

/// What sinks deliver: a finding with a stable id, or a fold of many findings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Derived from the finding's content, so a finding produced again after a crash carries
    /// the same id and receivers can drop the repeat.
    pub id: String,
    #[serde(flatten)]
    pub finding: Finding,
    /// For a folded alert: how many findings it stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folded: Option<u64>,
    /// For an update of an alert whose finding repeated within its dedupe window: how many
    /// times it was seen in all (the first included). The id is the first alert's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeated: Option<u64>,
}

/// The running count of an alert's repeats within its dedupe window. Kept in the outbox with
/// every commit that changed it, so a crash does not lose the count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Repeat {
    /// The id of the alert that opened the window.
    pub id: String,
    /// Times seen in all, the first included.
    pub count: u64,
    pub bytes: u64,
    pub packets: u64,
    pub records: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// Set once the update has been emitted.
    pub closed: bool,
}

/// The running count of a fold: findings over budget for one rule (and workload) in one
/// window. Kept in the outbox with every commit, so a crash loses no part of a flood.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub rule: String,
    pub workload: Option<IpAddr>,
    /// Start of the event-time window (seconds).
    pub window_start: u64,
    pub count: u64,
    pub severity: Severity,
    pub bytes: u64,
    pub records: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    /// A few of the remotes folded in, for the alert's summary.
    pub remotes: Vec<IpAddr>,
    /// Set once the fold's alert has been emitted.
    pub closed: bool,
}

/// Remotes a fold names in its summary.
const FOLD_SAMPLE: usize = 5;

/// FNV-1a over the canonical fields of a finding: a stable id that does not depend on the
/// order or the run in which the finding was made.
fn alert_id(f: &Finding, folded: bool) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    feed(f.rule.as_bytes());
    feed(if folded { b"fold" } else { b"one" });
    feed(
        f.workload
            .map(|w| w.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    feed(
        f.remote
            .map(|w| w.to_string())
            .unwrap_or_default()
            .as_bytes(),
    );
    feed(&f.remote_port.unwrap_or(0).to_le_bytes());
    feed(&[f.protocol.unwrap_or(0)]);
    feed(f.interface_id.as_deref().unwrap_or("").as_bytes());
    // A fold's times are those of the findings in it, so two folds of one window (records
    // that came late, after the first was sent) differ.
    feed(&f.first_seen.to_le_bytes());
    feed(&f.last_seen.to_le_bytes());
    format!("{h:016x}")
}

/// Unix seconds as RFC 3339 (UTC), for people and for receivers that want a timestamp.
pub fn rfc3339(secs: u64) -> String {
    // Times come from the input: past the year 9999 there is no RFC 3339 form.
    const LAST: u64 = 253_402_300_799;
    if secs > LAST {
        return format!("{secs} (Unix seconds)");
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .to_string()
}

impl Alert {
    pub fn single(finding: Finding) -> Alert {
        Alert {
            id: alert_id(&finding, false),
            finding,
            folded: None,
            repeated: None,
        }
    }

    /// The findings this alert stands for: a fold's or a repeat's count, else one.
    pub fn count(&self) -> u64 {
        self.folded.or(self.repeated).unwrap_or(1).max(1)
    }

    /// Names this delivery among the alerts of one finding: an update shares the first
    /// alert's id, so the outbox tells them apart by the count as well.
    pub fn delivery_key(&self) -> String {
        match self.repeated {
            Some(n) => format!("{}+{n}", self.id),
            None => self.id.clone(),
        }
    }

    /// The update of `first` after its finding repeated: the totals of the window, the same
    /// id, and a summary that says how often and until when.
    fn update(first: &Alert, r: &Repeat) -> Alert {
        let mut finding = first.finding.clone();
        finding.bytes = r.bytes;
        finding.packets = r.packets;
        finding.records = r.records;
        finding.first_seen = r.first_seen;
        finding.last_seen = r.last_seen;
        finding.summary = format!(
            "{} (seen {} times between {} and {})",
            first.finding.summary,
            r.count,
            rfc3339(r.first_seen),
            rfc3339(r.last_seen)
        );
        Alert {
            id: first.id.clone(),
            finding,
            folded: None,
            repeated: Some(r.count),
        }
    }
}

/// Rule, workload, remote and remote port: DNS to a resolver on 53 and DNS over HTTPS to it
/// on 443 are two things to know.
type DedupeKey = (&'static str, Option<IpAddr>, Option<IpAddr>, Option<u16>);
type FoldKey = (&'static str, Option<IpAddr>, u64);

/// Dedupe entries kept at most, whatever the traffic; past it the oldest is forgotten, which
/// can only cost a repeated alert, never a missed one.
pub const DEDUPE_CAPACITY: usize = 200_000;
/// Fold windows open at once at most; past it the oldest is closed early.
const FOLD_CAPACITY: usize = 20_000;

pub struct Router {
    window: u64,
    fold_window: u64,
    workload_budget: u64,
    rule_budget: u64,
    /// Key -> event time of the alert that opened its dedupe window.
    seen: HashMap<DedupeKey, u64>,
    /// Alerts let through on their own whose dedupe window is open, with their repeats.
    /// Bounded by the alert budgets, not by the traffic.
    open: HashMap<DedupeKey, (Alert, Repeat)>,
    /// Repeat counts changed since the last `take`, to be written to the outbox.
    repeats_dirty: Vec<DedupeKey>,
    /// Repeat counts whose update was emitted since the last `take`.
    repeats_closed: Vec<Repeat>,
    /// Keys in the order their windows were opened, with that time: expiry pops from the
    /// front, so each finding costs O(1) amortised.
    expiry: VecDeque<(u64, DedupeKey)>,
    /// Individual alerts let through per (rule, workload, window) and per (rule, -, window).
    spent: HashMap<FoldKey, u64>,
    spent_order: VecDeque<FoldKey>,
    folds: HashMap<FoldKey, Tally>,
    /// Folds changed since the last `take`, to be written to the outbox.
    dirty: Vec<FoldKey>,
    /// Newest event time seen: windows end by it, not by the wall clock.
    watermark: u64,
    pending: Vec<Alert>,
    /// Folds closed since the last `take`, to be marked closed in the outbox.
    closed: Vec<Tally>,
    metrics: Arc<Metrics>,
    /// When set, alerts are kept here instead (for evaluation, which scores exactly what the
    /// sinks would have received).
    pub kept: Option<Vec<Alert>>,
}

/// What the router has decided since the last commit.
#[derive(Default, Debug)]
pub struct Decided {
    pub alerts: Vec<Alert>,
    pub tallies: Vec<Tally>,
    pub repeats: Vec<Repeat>,
}

impl Decided {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.tallies.is_empty() && self.repeats.is_empty()
    }
}

impl Router {
    pub fn new(config: &Alerts, metrics: Arc<Metrics>) -> Self {
        for rule in crate::finding::RULES {
            metrics.alerts_folded.with_label_values(&[rule]);
        }
        Router {
            window: config.dedupe_window_seconds,
            fold_window: config.fold_window_seconds.max(1),
            workload_budget: config.budget_per_workload,
            rule_budget: config.budget_per_rule,
            seen: HashMap::new(),
            open: HashMap::new(),
            repeats_dirty: Vec::new(),
            repeats_closed: Vec::new(),
            expiry: VecDeque::new(),
            spent: HashMap::new(),
            spent_order: VecDeque::new(),
            folds: HashMap::new(),
            dirty: Vec::new(),
            watermark: 0,
            pending: Vec::new(),
            closed: Vec::new(),
            metrics,
            kept: None,
        }
    }

    fn emit(&mut self, alert: Alert) {
        match &mut self.kept {
            Some(kept) => kept.push(alert),
            None => self.pending.push(alert),
        }
    }

    fn expire(&mut self) {
        while let Some(&(opened, key)) = self.expiry.front() {
            let stale = opened.saturating_add(self.window) <= self.watermark;
            if !stale && self.seen.len() <= DEDUPE_CAPACITY {
                break;
            }
            self.expiry.pop_front();
            // A key re-opened later has a newer time in `seen` and a later queue entry.
            if self.seen.get(&key) == Some(&opened) {
                self.seen.remove(&key);
                self.close_repeat(key);
            }
        }
    }

    /// Ends the dedupe window of `key`: if its finding repeated, the update is emitted.
    fn close_repeat(&mut self, key: DedupeKey) {
        if let Some((first, mut repeat)) = self.open.remove(&key) {
            if repeat.count > 1 {
                self.emit(Alert::update(&first, &repeat));
                repeat.closed = true;
                self.repeats_closed.push(repeat);
            }
        }
    }

    /// Counts a repeat of the alert that opened `key`'s window.
    fn count_repeat(&mut self, key: DedupeKey, f: &Finding) {
        if let Some((_, r)) = self.open.get_mut(&key) {
            r.count = r.count.saturating_add(1);
            r.bytes = r.bytes.saturating_add(f.bytes);
            r.packets = r.packets.saturating_add(f.packets);
            r.records = r.records.saturating_add(f.records);
            r.first_seen = r.first_seen.min(f.first_seen);
            r.last_seen = r.last_seen.max(f.last_seen);
            self.repeats_dirty.push(key);
        }
    }

    /// Keeps an alert let through on its own, to count its repeats.
    fn open_window(&mut self, key: DedupeKey, alert: &Alert) {
        let f = &alert.finding;
        let repeat = Repeat {
            id: alert.id.clone(),
            count: 1,
            bytes: f.bytes,
            packets: f.packets,
            records: f.records,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            closed: false,
        };
        self.open.insert(key, (alert.clone(), repeat));
    }

    /// Remembers that `key` alerted at `t` (also used to rebuild from the outbox).
    fn remember(&mut self, key: DedupeKey, t: u64) {
        self.seen.insert(key, t);
        self.expiry.push_back((t, key));
    }

    /// Routes a finding: dropped as a repeat, folded into a flood, or made an alert.
    pub fn route(&mut self, finding: Finding) {
        let t = finding.last_seen;
        if t > self.watermark {
            self.watermark = t;
            self.close_folds(false);
        }
        self.expire();
        let key = (
            finding.rule,
            finding.workload,
            finding.remote,
            finding.remote_port,
        );
        if let Some(&opened) = self.seen.get(&key) {
            // Either side of the alert that opened the window: records arrive out of order.
            if t < opened.saturating_add(self.window) && t.saturating_add(self.window) > opened {
                self.metrics.alerts_suppressed.inc();
                self.count_repeat(key, &finding);
                return;
            }
            // The old window is over; its update goes before the new alert.
            self.close_repeat(key);
        }
        self.remember(key, t);
        let bucket = t - t % self.fold_window;
        let rule_key = (finding.rule, None, bucket);
        let workload_key = (finding.rule, finding.workload, bucket);
        // A workload over its budget folds under its own name; past the rule's budget the
        // rest fold together, so one noisy rule cannot bury the others.
        if finding.workload.is_some() && self.spent(workload_key) >= self.workload_budget {
            self.fold(workload_key, &finding);
            return;
        }
        if self.spent(rule_key) >= self.rule_budget {
            self.fold(rule_key, &finding);
            return;
        }
        self.charge(rule_key);
        if finding.workload.is_some() {
            self.charge(workload_key);
        }
        let alert = Alert::single(finding);
        self.open_window(key, &alert);
        self.emit(alert);
    }

    fn spent(&self, key: FoldKey) -> u64 {
        self.spent.get(&key).copied().unwrap_or(0)
    }

    /// Counts one more individual alert against a budget.
    fn charge(&mut self, key: FoldKey) {
        let n = self.spent.entry(key).or_insert_with(|| {
            self.spent_order.push_back(key);
            0
        });
        *n = n.saturating_add(1);
        // Budgets of windows well behind the watermark are done with.
        while let Some(&old) = self.spent_order.front() {
            let done = old.2.saturating_add(self.fold_window.saturating_mul(2)) < self.watermark;
            if !done && self.spent.len() <= FOLD_CAPACITY {
                break;
            }
            self.spent_order.pop_front();
            if old != key {
                self.spent.remove(&old);
            }
        }
    }

    fn fold(&mut self, key: FoldKey, f: &Finding) {
        self.metrics
            .alerts_folded
            .with_label_values(&[f.rule])
            .inc();
        let tally = self.folds.entry(key).or_insert_with(|| Tally {
            rule: f.rule.to_string(),
            workload: key.1,
            window_start: key.2,
            count: 0,
            severity: f.severity,
            bytes: 0,
            records: 0,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
            remotes: Vec::new(),
            closed: false,
        });
        tally.count = tally.count.saturating_add(1);
        tally.severity = tally.severity.max(f.severity);
        tally.bytes = tally.bytes.saturating_add(f.bytes);
        tally.records = tally.records.saturating_add(f.records);
        tally.first_seen = tally.first_seen.min(f.first_seen);
        tally.last_seen = tally.last_seen.max(f.last_seen);
        if let Some(r) = f.remote {
            if tally.remotes.len() < FOLD_SAMPLE && !tally.remotes.contains(&r) {
                tally.remotes.push(r);
            }
        }
        self.dirty.push(key);
        if self.folds.len() > FOLD_CAPACITY {
            self.close_folds(true);
        }
    }

    /// Emits the alert of every fold whose window the watermark has passed by a full window
    /// (late records get that long); with `all`, of every open fold.
    fn close_folds(&mut self, all: bool) {
        let horizon = self.watermark.saturating_sub(self.fold_window);
        let mut done: Vec<FoldKey> = self
            .folds
            .keys()
            .filter(|k| all || k.2.saturating_add(self.fold_window) <= horizon)
            .copied()
            .collect();
        // In a fixed order, so that a replay emits the same alerts in the same order.
        done.sort_unstable_by_key(|k| (k.2, k.0, k.1));
        for key in done {
            if let Some(mut tally) = self.folds.remove(&key) {
                tally.closed = true;
                self.dirty.push(key);
                let alert = fold_alert(key.0, &tally, self.fold_window);
                self.emit(alert);
                self.closed.push(tally);
            }
        }
    }

    /// Moves event time on (from the records, not only the findings), closing the folds it
    /// has passed.
    pub fn advance(&mut self, t: u64) {
        if t > self.watermark {
            self.watermark = t;
            self.close_folds(false);
            self.expire();
        }
    }

    /// Closes every open fold now and emits the update of every alert that repeated (end of
    /// input, shutdown).
    pub fn flush(&mut self) {
        self.close_folds(true);
        let mut keys: Vec<DedupeKey> = self.open.keys().copied().collect();
        // In a fixed order, so that a replay emits the same alerts in the same order.
        keys.sort_unstable_by(|a, b| {
            let opened = |k: &DedupeKey| self.seen.get(k).copied().unwrap_or(0);
            (opened(a), a).cmp(&(opened(b), b))
        });
        for key in keys {
            self.close_repeat(key);
        }
    }

    /// What was decided since the last call: new alerts and the folds that changed.
    pub fn take(&mut self) -> Decided {
        let mut tallies = Vec::new();
        let mut keys = std::mem::take(&mut self.dirty);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some(t) = self.folds.get(&key) {
                tallies.push(t.clone());
            }
        }
        tallies.append(&mut self.closed);
        let mut repeats = Vec::new();
        let mut keys = std::mem::take(&mut self.repeats_dirty);
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            if let Some((_, r)) = self.open.get(&key) {
                repeats.push(r.clone());
            }
        }
        repeats.append(&mut self.repeats_closed);
        Decided {
            alerts: std::mem::take(&mut self.pending),
            tallies,
            repeats,
        }
    }

    /// Rebuilds the dedupe memory and the open folds from what the outbox holds, oldest
    /// first, so that findings made again after a crash are recognised as repeats.
    pub fn restore(&mut self, alerts: &[&Alert], tallies: &[&Tally], repeats: &[&Repeat]) {
        for a in alerts {
            let f = &a.finding;
            if a.folded.is_none() && a.repeated.is_none() {
                let key = (f.rule, f.workload, f.remote, f.remote_port);
                self.remember(key, f.last_seen);
                self.open_window(key, a);
            }
            self.watermark = self.watermark.max(f.last_seen);
        }
        // The latest count of each window still open; a closed one has had its update.
        let mut by_id: HashMap<&str, &Repeat> = HashMap::new();
        for r in repeats {
            by_id.insert(r.id.as_str(), r);
        }
        self.open
            .retain(|_, (first, count)| match by_id.get(first.id.as_str()) {
                Some(r) if r.closed => false,
                Some(r) => {
                    *count = (*r).clone();
                    true
                }
                None => true,
            });
        for t in tallies {
            let Some(rule) = crate::finding::rule_name(&t.rule) else {
                continue;
            };
            let key = (rule, t.workload, t.window_start);
            if t.closed {
                self.folds.remove(&key);
            } else {
                self.folds.insert(key, (*t).clone());
            }
            // Budgets are spent by the time a fold exists.
            let budget = if t.workload.is_some() {
                self.workload_budget
            } else {
                self.rule_budget
            };
            if !self.spent.contains_key(&key) {
                self.spent_order.push_back(key);
            }
            self.spent.insert(key, budget);
        }
        self.expire();
    }

    pub fn watermark(&self) -> u64 {
        self.watermark
    }
}

fn fold_alert(rule: &'static str, t: &Tally, window: u64) -> Alert {
    let who = t
        .workload
        .map_or("several workloads".to_string(), |w| w.to_string());
    let sample: Vec<String> = t.remotes.iter().map(|r| r.to_string()).collect();
    let summary = format!(
        "{} more {rule} findings from {who} between {} and {}, over the alert budget of the {}-minute window from {}; for example {}",
        t.count,
        rfc3339(t.first_seen),
        rfc3339(t.last_seen),
        window.div_ceil(60),
        rfc3339(t.window_start),
        if sample.is_empty() { "-".into() } else { sample.join(", ") }
    );
    let finding = Finding {
        workload: t.workload,
        bytes: t.bytes,
        first_seen: t.first_seen,
        last_seen: t.last_seen,
        records: t.records,
        ..Finding::new(rule, t.severity, summary)
    };
    Alert {
        id: alert_id(&finding, true),
        finding,
        folded: Some(t.count),
        repeated: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(rule: &'static str, workload: u8, remote: u32, t: u64) -> Finding {
        Finding {
            workload: Some(IpAddr::from([10, 0, 1, workload])),
            remote: Some(IpAddr::from(remote.to_be_bytes())),
            remote_port: Some(443),
            protocol: Some(6),
            bytes: 60,
            first_seen: t,
            last_seen: t,
            ..Finding::new(rule, Severity::Low, String::new())
        }
    }

    fn router(config: Alerts) -> Router {
        Router::new(&config, Arc::new(Metrics::new()))
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_150_060), "2025-11-26T09:41:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), format!("{} (Unix seconds)", u64::MAX));
    }

    #[test]
    fn repeats_within_the_window_are_dropped_and_alert_again_after_it() {
        let mut r = router(Alerts {
            dedupe_window_seconds: 100,
            ..Alerts::default()
        });
        r.route(finding("non_https_egress", 1, 7, 1_000));
        r.route(finding("non_https_egress", 1, 7, 1_050));
        r.route(finding("non_https_egress", 1, 7, 1_100));
        // A late record from before the alert, within the window, is a repeat too.
        r.route(finding("non_https_egress", 1, 7, 1_090));
        let got = r.take().alerts;
        // The first alert, the update of its window (seen twice), the alert of the next.
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].repeated, Some(2));
        assert_eq!(got[1].id, got[0].id);
        assert_eq!(got[2].finding.last_seen, 1_100);
        assert_eq!(got[2].repeated, None);
        // The same finding made again (after a crash) has the same id; another does not.
        assert_eq!(
            got[0].id,
            Alert::single(finding("non_https_egress", 1, 7, 1_000)).id
        );
        assert_ne!(got[0].id, got[2].id);
    }

    #[test]
    fn a_repeat_grows_the_count_of_one_update_sent_when_its_window_ends() {
        let mut r = router(Alerts {
            dedupe_window_seconds: 100,
            ..Alerts::default()
        });
        r.route(finding("beaconing", 1, 7, 1_000));
        for t in [1_010, 1_020, 995, 1_030] {
            r.route(finding("beaconing", 1, 7, t));
        }
        let d = r.take();
        assert_eq!(d.alerts.len(), 1, "repeats wait for the window's end");
        assert_eq!(d.repeats.last().map(|x| x.count), Some(5));
        // Nothing changed since: the outbox gets nothing new.
        r.advance(1_050);
        assert!(r.take().is_empty());
        r.advance(1_100);
        let d = r.take();
        assert_eq!(d.alerts.len(), 1);
        let update = &d.alerts[0];
        assert_eq!(update.repeated, Some(5));
        assert_eq!(update.count(), 5);
        assert_eq!(
            update.id,
            Alert::single(finding("beaconing", 1, 7, 1_000)).id
        );
        assert_ne!(update.delivery_key(), update.id);
        assert_eq!(
            (
                update.finding.first_seen,
                update.finding.last_seen,
                update.finding.bytes
            ),
            (995, 1_030, 300)
        );
        assert!(update
            .finding
            .summary
            .ends_with("(seen 5 times between 1970-01-01T00:16:35Z and 1970-01-01T00:17:10Z)"));
        assert!(d.repeats.iter().all(|x| x.closed));
        // A finding that never repeated gets no update.
        r.route(finding("beaconing", 2, 7, 2_000));
        r.flush();
        assert_eq!(r.take().alerts.len(), 1);
    }

    #[test]
    fn a_restart_keeps_counting_the_repeats_the_outbox_holds() {
        let config = Alerts {
            dedupe_window_seconds: 100,
            ..Alerts::default()
        };
        let mut r = router(config.clone());
        r.route(finding("beaconing", 1, 7, 1_000));
        r.route(finding("beaconing", 1, 7, 1_010));
        r.route(finding("beaconing", 1, 7, 1_020));
        let d = r.take();
        let mut again = router(config);
        let alerts: Vec<&Alert> = d.alerts.iter().collect();
        let repeats: Vec<&Repeat> = d.repeats.iter().collect();
        again.restore(&alerts, &[], &repeats);
        again.route(finding("beaconing", 1, 7, 1_030));
        again.flush();
        let got = again.take().alerts;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].repeated, Some(4));
        // Once its update is out, a restart does not send it again.
        let closed: Vec<Repeat> = again.take().repeats;
        let mut third = router(Alerts {
            dedupe_window_seconds: 100,
            ..Alerts::default()
        });
        let mut all: Vec<&Repeat> = d.repeats.iter().collect();
        let done = [
            closed,
            d.repeats
                .iter()
                .map(|x| Repeat {
                    closed: true,
                    ..x.clone()
                })
                .collect(),
        ]
        .concat();
        all.extend(done.iter());
        third.restore(&alerts, &[], &all);
        third.flush();
        assert!(third.take().alerts.is_empty());
    }

    #[test]
    fn a_flood_folds_into_one_counted_alert_per_workload_and_rule() {
        let mut r = router(Alerts {
            budget_per_workload: 3,
            budget_per_rule: 5,
            fold_window_seconds: 600,
            ..Alerts::default()
        });
        for remote in 0..1_000 {
            r.route(finding("rejected_egress", 1, remote, 1_000));
        }
        // Workload 2 gets two alerts of its own before the rule's budget of five is spent.
        for remote in 0..10 {
            r.route(finding("rejected_egress", 2, remote, 1_001));
        }
        assert_eq!(r.take().alerts.len(), 5);
        r.flush();
        let d = r.take();
        let folds: Vec<_> = d
            .alerts
            .iter()
            .map(|a| (a.finding.workload, a.folded))
            .collect();
        assert_eq!(
            folds,
            vec![
                (None, Some(8)),
                (Some(IpAddr::from([10, 0, 1, 1])), Some(997)),
            ]
        );
        assert!(d.tallies.iter().all(|t| t.closed));
    }

    #[test]
    fn a_fold_closes_once_event_time_has_passed_its_window() {
        let mut r = router(Alerts {
            budget_per_workload: 1,
            fold_window_seconds: 60,
            ..Alerts::default()
        });
        for remote in 0..5 {
            r.route(finding("rejected_egress", 1, remote, 1_000));
        }
        assert_eq!(r.take().alerts.len(), 1);
        // A window and its grace later, the fold of the first window is emitted by itself.
        r.route(finding("non_https_egress", 9, 1, 1_200));
        let d = r.take();
        assert_eq!(d.alerts.len(), 2);
        assert_eq!(d.alerts[0].folded, Some(4));
        assert_eq!(
            d.alerts[0].finding.summary,
            "4 more rejected_egress findings from 10.0.1.1 between 1970-01-01T00:16:40Z and \
             1970-01-01T00:16:40Z, over the alert budget of the 1-minute window from \
             1970-01-01T00:16:00Z; for example 0.0.0.1, 0.0.0.2, 0.0.0.3, 0.0.0.4"
        );
    }

    #[test]
    fn restored_from_the_outbox_it_knows_its_repeats_and_open_folds() {
        let config = Alerts {
            budget_per_workload: 2,
            ..Alerts::default()
        };
        let mut r = router(config.clone());
        for remote in 0..6 {
            r.route(finding("rejected_egress", 1, remote, 1_000));
        }
        let d = r.take();
        // A new router, given what the outbox held, drops the repeats and goes on counting.
        let mut again = router(config);
        let alerts: Vec<&Alert> = d.alerts.iter().collect();
        let tallies: Vec<&Tally> = d.tallies.iter().collect();
        again.restore(&alerts, &tallies, &[]);
        again.route(finding("rejected_egress", 1, 0, 1_000));
        again.route(finding("rejected_egress", 1, 99, 1_000));
        assert!(again.take().alerts.is_empty());
        again.flush();
        assert_eq!(again.take().alerts[0].folded, Some(5));
    }

    #[test]
    fn dedupe_memory_stays_bounded_and_each_finding_costs_constant_time() {
        let mut r = router(Alerts {
            budget_per_workload: u64::MAX,
            budget_per_rule: u64::MAX,
            ..Alerts::default()
        });
        // 250,000 distinct keys at one event time: no expiry can help, only the cap.
        let started = std::time::Instant::now();
        for n in 0..250_000u32 {
            r.route(finding("port_scan", (n % 200) as u8, n, 5_000));
        }
        assert!(r.seen.len() <= DEDUPE_CAPACITY + 1);
        assert_eq!(r.take().alerts.len(), 250_000);
        // Debug build, so generous: a whole-table sweep per finding took minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
