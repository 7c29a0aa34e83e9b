//! The processing stages every source feeds: parse (with the flow log's own format),
//! classify, detect, route alerts, with metrics at each stage.

use std::sync::Arc;

use prometheus::IntCounter;
use std::time::{SystemTime, UNIX_EPOCH};

use flowlog::{Decoder, Field, Line, LogStatus};

use crate::alert::Router;
use crate::classify::{classify, Path};
use crate::events::Event;
use crate::finding::Finding;
use crate::metrics::{inc_saturating, port_class, Metrics};
use crate::rules::{Rule, SavedState};
use crate::sketch::topk::TopK;
use crate::topology::Topology;

pub struct Pipeline {
    pub topology: Topology,
    pub detectors: Vec<Box<dyn Rule>>,
    pub router: Router,
    /// What the team has said is fine; checked before a finding is counted or routed.
    pub suppressions: crate::suppress::Suppressions,
    /// Who stands behind a workload address, for suppressions by tag or interface.
    pub inventory: crate::inventory::SharedInventory,
    /// Print each suppressed finding to stdout with the suppression that matched.
    pub explain: bool,
    /// Keep suppressed findings' documents in [`Pipeline::suppressed`] for the findings
    /// store, which takes them at each commit.
    pub keep_suppressed: bool,
    pub suppressed: Vec<serde_json::Value>,
    pub metrics: Arc<Metrics>,
    pub records: u64,
    /// Flows classified as workload egress through the NAT: none after many records means the
    /// network description does not match the flow logs.
    pub nat_egress_flows: u64,
    /// Findings raised (not suppressed) since start.
    pub findings_raised: u64,
    /// Flows that reached the rules (every record but duplicate views and status records).
    pub flows_judged: u64,
    /// Window end of the newest record seen: event time, by which the router closes folds
    /// even when no new finding comes.
    pub newest_event: u64,
    findings: Vec<Finding>,
    top_workloads: TopK,
    top_remotes: TopK,
    /// Counter handles by (path, port class, action), so a record costs no label lookup.
    counters: rustc_hash::FxHashMap<(Path, usize, usize), (IntCounter, IntCounter)>,
    /// Wall-clock seconds, refreshed every few thousand records (for the ingest lag).
    clock: u64,
    /// A backfill's time range [from, to) in Unix seconds: records that start outside it are
    /// counted and left out.
    pub range: Option<(u64, u64)>,
    /// How far past this host's clock a record's time may be before it is a bad line.
    pub max_future_skew_seconds: u64,
    /// The stack's name in a daemon that watches several: it goes with every finding.
    pub stack: Option<String>,
    /// Whether each rule that learns was last said to be learning, by rule name.
    learning: std::collections::BTreeMap<&'static str, bool>,
}

/// Counters the top-k estimates keep (the exported top 10 are reliable well beyond that).
const TOP_K_COUNTERS: usize = 1_024;
/// No flow-log record starts before 2014: the service launched on 2015-06-10, and the oldest
/// records in circulation (AWS's own documentation examples, from December 2014, and records
/// of the months before launch) are later than this. What it catches is a zero or a
/// truncated time, which would end every learning period at once.
const FLOW_LOGS_BEGAN: u64 = 1_388_534_400;
/// Clocks and delivery disagree by minutes; a day past this host's clock is no record's time.
pub const DEFAULT_MAX_FUTURE_SKEW_SECONDS: u64 = 86_400;
/// Judged flows between refreshes of the top-k gauges.
const TOP_K_REFRESH: u64 = 20_000;

/// Leading bytes of a detector-state snapshot; a snapshot without them is not ours.
const STATE_MAGIC: &[u8; 8] = b"EWSTATE1";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A suppressed finding as the finding document with the suppression that matched.
fn suppressed_document(f: Finding, number: usize, reason: &str) -> serde_json::Value {
    let mut doc = crate::document::document(&crate::alert::Alert::single(f));
    doc["suppressed"] = serde_json::json!({"suppression": number, "reason": reason});
    doc
}

/// Prints a suppressed finding's document, one JSON line on stdout (`monitor --explain`).
fn explain(doc: &serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    // A closed stdout must not stop the daemon; the suppression is counted either way.
    let _ = writeln!(out, "{doc}");
}

/// The number and reason of the suppression that matches `f`, if any.
fn suppressed(
    suppressions: &crate::suppress::Suppressions,
    inventory: &crate::inventory::SharedInventory,
    f: &Finding,
    now: u64,
) -> Option<(usize, String)> {
    let inventory = inventory.read().ok();
    let workload = match (&inventory, f.workload) {
        (Some(inv), Some(w)) => inv.lookup(w),
        _ => None,
    };
    suppressions
        .matching(f, now, workload)
        .map(|(n, s)| (n, s.reason.clone()))
}

impl Pipeline {
    pub fn new(
        topology: Topology,
        detectors: Vec<Box<dyn Rule>>,
        router: Router,
        metrics: Arc<Metrics>,
    ) -> Self {
        for d in &detectors {
            metrics.rule_state_evictions.with_label_values(&[d.name()]);
        }
        Pipeline {
            topology,
            detectors,
            router,
            suppressions: Default::default(),
            inventory: Default::default(),
            explain: false,
            keep_suppressed: false,
            suppressed: Vec::new(),
            metrics,
            records: 0,
            nat_egress_flows: 0,
            findings_raised: 0,
            flows_judged: 0,
            newest_event: 0,
            findings: Vec::new(),
            top_workloads: TopK::new(TOP_K_COUNTERS),
            top_remotes: TopK::new(TOP_K_COUNTERS),
            counters: Default::default(),
            clock: now(),
            max_future_skew_seconds: DEFAULT_MAX_FUTURE_SKEW_SECONDS,
            range: None,
            stack: None,
            learning: Default::default(),
        }
    }

    /// Refreshes the top-k gauges, the rules' eviction counts and whether each rule is still
    /// learning (also done every few thousand flows).
    pub fn publish_gauges(&mut self) {
        for d in &self.detectors {
            let Some(ends) = d.learning_ends() else {
                continue;
            };
            let now = self.newest_event < ends;
            if self.learning.insert(d.name(), now) != Some(now) {
                crate::events::RuleLearning {
                    rule: d.name(),
                    learning: now,
                    ends,
                }
                .emit(&self.metrics);
            }
        }
        self.top_workloads.export(&self.metrics.top_workloads);
        self.top_remotes.export(&self.metrics.top_remotes);
        for d in &self.detectors {
            let c = self
                .metrics
                .rule_state_evictions
                .with_label_values(&[d.name()]);
            c.inc_by(d.state_evictions().saturating_sub(c.get()));
        }
    }

    /// What every rule has learnt, as one snapshot: the magic, then (rule name, state bytes)
    /// pairs as postcard writes a `Vec<(String, Vec<u8>)>`. Each rule's part is sized first
    /// and written in place into one buffer of the whole snapshot's size.
    pub fn save_state(&self) -> Vec<u8> {
        let parts: Vec<(&str, &dyn SavedState, usize)> = self
            .detectors
            .iter()
            .filter_map(|d| {
                let state = d.state()?;
                Some((d.name(), state, state.encoded_len()?))
            })
            .collect();
        let varint_len =
            |n: usize| postcard::experimental::serialized_size(&(n as u64)).unwrap_or(10);
        let total = parts.iter().fold(
            STATE_MAGIC.len().saturating_add(varint_len(parts.len())),
            |acc, (name, _, len)| {
                acc.saturating_add(varint_len(name.len()))
                    .saturating_add(name.len())
                    .saturating_add(varint_len(*len))
                    .saturating_add(*len)
            },
        );
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(STATE_MAGIC);
        let put = |out: &mut Vec<u8>, value: &dyn SavedState| match value.encoded_len() {
            Some(len) => value.encode_into(out, len),
            None => false,
        };
        let mut whole = put(&mut out, &(parts.len() as u64));
        for (name, state, len) in &parts {
            whole = whole
                && put(&mut out, name)
                && put(&mut out, &(*len as u64))
                && state.encode_into(&mut out, *len);
        }
        if !whole {
            // Sizing succeeded, so writing cannot fail; were it to, a snapshot that reads as
            // not ours is restored as nothing rather than as half a rule.
            out.truncate(0);
            out.extend_from_slice(STATE_MAGIC);
        }
        out
    }

    /// Restores a snapshot from `save_state`. A rule whose part cannot be read starts
    /// learning afresh; its error is returned so it can be logged, the others keep theirs.
    pub fn load_state(&mut self, bytes: &[u8]) -> Vec<String> {
        let Some(body) = bytes.strip_prefix(STATE_MAGIC.as_slice()) else {
            return vec!["not a detector-state snapshot (wrong leading bytes)".into()];
        };
        let parts: Vec<(String, Vec<u8>)> = match postcard::from_bytes(body) {
            Ok(p) => p,
            Err(e) => return vec![format!("detector-state snapshot: {e}")],
        };
        let mut errors = Vec::new();
        for (name, state) in parts {
            if let Some(d) = self.detectors.iter_mut().find(|d| d.name() == name) {
                if let Err(e) = d.load_state(&state) {
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Swaps in newly built rules (after a deny list changed), carrying over what the
    /// running ones learnt.
    pub fn replace_detectors(&mut self, detectors: Vec<Box<dyn Rule>>) {
        let snapshot = self.save_state();
        self.detectors = detectors;
        for e in self.load_state(&snapshot) {
            crate::events::StateRepaired {
                store: "rules_snapshot",
                kind: "rule_not_carried_over",
                count: 1,
                file: &"(in memory)",
                detail: &format!(
                    "rule state not carried over the reload ({e}); that rule learns afresh"
                ),
            }
            .emit(&self.metrics);
        }
    }

    /// A record whose times cannot be true: it would move every learning clock (which runs
    /// from the first record judged) and make findings that end before they begin.
    fn implausible_time(&self, record: &flowlog::Record<'_>) -> Option<flowlog::ParseError> {
        let bad = |field, text: u64, why: String| flowlog::ParseError {
            kind: flowlog::ErrorKind::ImplausibleTime {
                text: text.to_string(),
                why,
            },
            field: Some(field),
            column: 0,
        };
        let (start, end) = (record.start(), record.end());
        for (field, t) in [(Field::Start, start), (Field::End, end)] {
            let Some(t) = t else { continue };
            if t < FLOW_LOGS_BEGAN {
                return Some(bad(
                    field,
                    t,
                    "is before 2014, older than any flow-log record".into(),
                ));
            }
            // The cached clock may be old after a quiet spell: the rare record past it is
            // held against the clock as it is now.
            if t > self.clock.saturating_add(self.max_future_skew_seconds) {
                let clock = now();
                if t > clock.saturating_add(self.max_future_skew_seconds) {
                    return Some(bad(
                        field,
                        t,
                        format!(
                            "is {} s ahead of this host's clock (more than max-future-skew-seconds, {})",
                            t - clock,
                            self.max_future_skew_seconds
                        ),
                    ));
                }
            }
        }
        if let (Some(s), Some(e)) = (start, end) {
            if s > e {
                return Some(bad(
                    Field::Start,
                    s,
                    format!("is after the record's end, {e}"),
                ));
            }
        }
        None
    }

    /// Processes one line; bad lines are counted by reason and logged with where they came from.
    /// Runs one line through every stage. Returns whether it was a record (or a bad line in
    /// place of one), not a header or a blank line: what the checkpoint counts.
    pub fn line(
        &mut self,
        decoder: &mut Decoder,
        line: &[u8],
        origin: &dyn std::fmt::Display,
    ) -> bool {
        self.record(decoder, line, origin).is_some()
    }

    fn record(
        &mut self,
        decoder: &mut Decoder,
        line: &[u8],
        origin: &dyn std::fmt::Display,
    ) -> Option<()> {
        match decoder.decode(line) {
            Ok(Line::Record(r)) => self.judge(Ok(&r), origin),
            Ok(_) => None,
            Err(e) => self.judge(Err(e), origin),
        }
    }

    /// Runs one record (from a line, or from a columnar row) through every stage; a record
    /// that could not be made is counted and logged as a bad line. Returns what
    /// [`Pipeline::line`] does.
    pub fn judge(
        &mut self,
        record: Result<&flowlog::Record<'_>, flowlog::ParseError>,
        origin: &dyn std::fmt::Display,
    ) -> Option<()> {
        let m = &*self.metrics;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                crate::events::BadLine { origin, error: &e }.emit(m);
                return Some(());
            }
        };
        if let Some(e) = self.implausible_time(record) {
            crate::events::BadLine { origin, error: &e }.emit(m);
            return Some(());
        }
        if let (Some((from, to)), Some(start)) = (self.range, record.start()) {
            if start < from || start >= to {
                m.records_outside_range.inc();
                return Some(());
            }
        }
        self.records += 1;
        match record.log_status() {
            Some(LogStatus::NoData) => {
                m.skipped_records.with_label_values(&["NODATA"]).inc();
                return Some(());
            }
            Some(LogStatus::SkipData) => {
                m.skipped_records.with_label_values(&["SKIPDATA"]).inc();
                return Some(());
            }
            _ => {}
        }
        let Some(flow) = classify(record, &self.topology) else {
            m.records
                .with_label_values(&[Path::Other.as_str(), "none", "-"])
                .inc();
            return Some(());
        };
        let action = flow.action.unwrap_or("-");
        let class = port_class(flow.remote_port, flow.protocol);
        let (records, bytes) = self
            .counters
            .entry((flow.path, class.as_ptr() as usize, action.as_ptr() as usize))
            .or_insert_with(|| {
                let labels = [flow.path.as_str(), class, action];
                (
                    m.records.with_label_values(&labels),
                    m.bytes.with_label_values(&labels),
                )
            });
        records.inc();
        inc_saturating(bytes, flow.bytes);
        if self.records.is_multiple_of(4_096) {
            self.clock = now();
        }
        if flow.end > 0 {
            m.ingest_lag
                .observe(self.clock.saturating_sub(flow.end) as f64);
            self.newest_event = self.newest_event.max(flow.end);
            if flow.end as i64 > m.last_record_timestamp.get() {
                m.last_record_timestamp.set(flow.end as i64);
            }
        }
        if flow.path == Path::Duplicate {
            return Some(());
        }
        self.flows_judged += 1;
        if flow.path == Path::NatEgress {
            self.nat_egress_flows += 1;
            if let (Some(w), Some(r)) = (flow.workload, flow.remote) {
                self.top_workloads.add(w, flow.bytes);
                self.top_remotes.add(r, flow.bytes);
            }
        }
        if self.flows_judged.is_multiple_of(TOP_K_REFRESH) {
            self.publish_gauges();
        }
        for d in &mut self.detectors {
            d.observe(&flow, &mut self.findings);
        }
        self.route_findings();
        Some(())
    }

    /// End of a finite input: the rules judge what waited for more records, and every open
    /// fold and repeat count is closed.
    pub fn finish(&mut self) {
        for d in &mut self.detectors {
            d.finish(&mut self.findings);
        }
        self.route_findings();
        self.router.flush();
    }

    /// Counts, suppresses or routes what the rules found.
    fn route_findings(&mut self) {
        if self.findings.is_empty() {
            return;
        }
        let m = &self.metrics;
        for mut f in self.findings.drain(..) {
            // Which network it came from, when the record's format did not say: a daemon that
            // watches several stacks raises findings for each.
            if f.vpc_id.is_none() {
                f.vpc_id.clone_from(&self.topology.vpc_id);
            }
            if f.stack.is_none() {
                f.stack.clone_from(&self.stack);
            }
            if !self.suppressions.is_empty() {
                if let Some((n, reason)) =
                    suppressed(&self.suppressions, &self.inventory, &f, self.clock)
                {
                    crate::events::FindingSuppressed {
                        finding: &f,
                        suppression: n,
                        reason: &reason,
                    }
                    .emit(m);
                    if self.explain || self.keep_suppressed {
                        let doc = suppressed_document(f, n, &reason);
                        if self.explain {
                            explain(&doc);
                        }
                        if self.keep_suppressed {
                            self.suppressed.push(doc);
                        }
                    }
                    continue;
                }
            }
            m.findings
                .with_label_values(&[f.rule, f.severity.as_str()])
                .inc();
            self.findings_raised += 1;
            self.router.route(f);
        }
    }
}
