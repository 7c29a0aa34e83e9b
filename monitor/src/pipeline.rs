//! The processing stages every source feeds: parse (with the flow log's own format),
//! classify, detect, route alerts, with metrics at each stage.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use flowlog::{Decoder, Line, LogStatus};

use crate::alert::Router;
use crate::classify::{classify, Path};
use crate::config::Rules;
use crate::denylist::Denylist;
use crate::detect::{
    DenylistedDestination, Detector, DnsBypass, Finding, NonHttpsEgress, RejectedEgress,
};
use crate::metrics::{port_class, Metrics};
use crate::topology::Topology;

pub struct Pipeline {
    pub topology: Topology,
    pub detectors: Vec<Box<dyn Detector>>,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub records: u64,
    findings: Vec<Finding>,
}

/// Builds the rules the config turns on; deny lists are loaded now, and a bad file is an error.
pub fn detectors(rules: &Rules) -> Result<Vec<Box<dyn Detector>>, String> {
    let mut v: Vec<Box<dyn Detector>> = Vec::new();
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
        v.push(Box::new(DnsBypass));
    }
    Ok(v)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Pipeline {
    pub fn new(
        topology: Topology,
        detectors: Vec<Box<dyn Detector>>,
        router: Router,
        metrics: Arc<Metrics>,
    ) -> Self {
        Pipeline {
            topology,
            detectors,
            router,
            metrics,
            records: 0,
            findings: Vec::new(),
        }
    }

    /// Processes one line; bad lines are counted by reason and logged with where they came from.
    pub fn line(&mut self, decoder: &mut Decoder, line: &[u8], origin: &dyn std::fmt::Display) {
        let m = self.metrics.clone();
        let record = match decoder.decode(line) {
            Ok(Line::Record(r)) => r,
            Ok(_) => return,
            Err(e) => {
                m.bad_lines.with_label_values(&[e.reason()]).inc();
                tracing::warn!(origin = %origin, error = %e, "bad flow-log line skipped");
                return;
            }
        };
        self.records += 1;
        match record.log_status() {
            Some(LogStatus::NoData) => {
                m.skipped_records.with_label_values(&["NODATA"]).inc();
                return;
            }
            Some(LogStatus::SkipData) => {
                m.skipped_records.with_label_values(&["SKIPDATA"]).inc();
                return;
            }
            _ => {}
        }
        let Some(flow) = classify(&record, &self.topology) else {
            m.records
                .with_label_values(&[Path::Other.as_str(), "none", "-"])
                .inc();
            return;
        };
        let action = flow.action.unwrap_or("-");
        let class = port_class(flow.remote_port, flow.protocol);
        m.records
            .with_label_values(&[flow.path.as_str(), class, action])
            .inc();
        m.bytes
            .with_label_values(&[flow.path.as_str(), class, action])
            .inc_by(flow.bytes);
        if flow.end > 0 {
            m.ingest_lag.observe(now().saturating_sub(flow.end) as f64);
            if flow.end as i64 > m.last_record_timestamp.get() {
                m.last_record_timestamp.set(flow.end as i64);
            }
        }
        if flow.path == Path::Duplicate {
            return;
        }
        for d in &mut self.detectors {
            d.observe(&flow, &mut self.findings);
        }
        for f in self.findings.drain(..) {
            m.findings
                .with_label_values(&[f.rule, f.severity.as_str()])
                .inc();
            self.router.route(f);
        }
    }
}
