//! The detection harness of `egresswatch evaluate` and `egresswatch score`: simulated traffic
//! through the daemon's whole processing path (parse, classify, every rule, the alert
//! router), the findings matched to the attacks' ground truth, and the score: per attack
//! whether and how fast it was caught, and the false findings per benign profile.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use egresswatch_monitor::alert::Router;
use egresswatch_monitor::finding::Finding;
use egresswatch_monitor::pipeline::Pipeline;
use egresswatch_monitor::rules;
use egresswatch_monitor::topology::Topology;
use egresswatch_monitor::{Config, Metrics};
use flowlog::{Decoder, Format};

use crate::{Label, Network, Profile, Settings, Simulator};

#[derive(serde::Serialize, Clone)]
pub struct Outcome {
    pub seed: u64,
    pub scenario: &'static str,
    pub workload: IpAddr,
    pub detected: bool,
    /// Why flow logs cannot show this attack, for a scenario built to show where they
    /// cannot; such an outcome is reported, not counted as a miss.
    pub blind: Option<&'static str>,
    pub latency_seconds: Option<u64>,
    /// Delivery time from the attack's first record the rules judge (not a duplicate view)
    /// reaching the log group to the record that produced the first finding.
    pub after_delivery_seconds: Option<u64>,
    pub rules: Vec<&'static str>,
    pub records: u64,
}

impl Outcome {
    /// Detected, or a scenario flow logs are known to be blind to.
    pub fn as_expected(&self) -> bool {
        self.detected || self.blind.is_some()
    }
}

#[derive(serde::Serialize, Default)]
pub struct Report {
    pub outcomes: Vec<Outcome>,
    pub benign_records: u64,
    pub records: u64,
    pub false_findings: u64,
    pub false_by_rule: BTreeMap<&'static str, u64>,
    /// False findings by severity: a low one goes to a daily channel, a high one pages.
    pub false_by_severity: BTreeMap<&'static str, u64>,
    /// False findings by (rule, the benign profile whose traffic the finding is about);
    /// a finding that several profiles' traffic fits counts for each.
    pub false_by_rule_and_profile: BTreeMap<String, u64>,
    /// Workloads times simulated days, over every seed.
    pub workload_days: f64,
    pub seconds: f64,
    pub records_per_second: f64,
    pub peak_rss_mib: f64,
    pub false_examples: Vec<Finding>,
}

fn matches(f: &Finding, l: &Label) -> bool {
    // A finding about many remotes (a sweep) names none; it can only be the attack's if the
    // attack itself spans many remotes on that port.
    let remote_matches = match f.remote {
        Some(r) => l.remotes.contains(&r),
        // A fold (findings over the alert budget, counted into one) names neither remote nor
        // port: it is the attack's if the workload and the time are.
        None if f.remote_port.is_none() => true,
        None => l.remotes.len() > 1 && f.remote_port == l.remote_port,
    };
    f.workload
        .is_some_and(|w| w == l.workload || l.accomplices.contains(&w))
        && remote_matches
        && f.last_seen + 120 >= l.start
        && f.first_seen <= l.end + 3_600
}

/// Writes the deny lists the denylisted and tor scenarios need into `dir`.
pub fn write_denylists(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let threats = dir.join("threats.txt");
    let tor = dir.join("tor-exits.txt");
    std::fs::write(&threats, crate::threat_list())
        .map_err(|e| format!("{}: {e}", threats.display()))?;
    std::fs::write(&tor, crate::tor_exit_list()).map_err(|e| format!("{}: {e}", tor.display()))?;
    Ok(vec![threats, tor])
}

/// Runs every seed's traffic (its settings from `settings`) through the daemon's processing
/// path with `config`'s rules, and scores the findings against the attacks.
pub fn evaluate(
    seeds: &[u64],
    settings: &dyn Fn(u64, u64, Network) -> Result<Settings, String>,
    mut config: Config,
) -> Result<Report, String> {
    let dir = std::env::temp_dir().join(format!("egresswatch-evaluate-{}", std::process::id()));
    let lists = write_denylists(&dir)?;
    config.rules.denylists.extend(lists);
    let format = Format::parse(&egresswatch_stack::flow_log_format()).map_err(|e| e.to_string())?;
    let network = Network::default();
    let topology = Topology {
        vpc_cidrs: vec!["10.0.0.0/16".parse().map_err(|e| format!("{e}"))?],
        nat_interfaces: vec![network.nat_interface_id.clone()],
        nat_private_ips: vec![IpAddr::V4(network.nat_private_ip)],
        s3_cidrs: vec!["52.216.0.0/15".parse().map_err(|e| format!("{e}"))?],
        vpc_id: None,
        s3_prefix_list_id: None,
    };
    let mut report = Report::default();
    let started = Instant::now();
    let start = 1_764_547_200; // 2025-12-01 00:00 UTC, a Monday
    for &seed in seeds {
        let settings = settings(seed, start, network.clone())?;
        let (sim_workloads, sim_days) = (
            settings.workloads,
            settings.duration_seconds as f64 / 86_400.0,
        );
        let mut sim = Simulator::new(settings)?;
        let metrics = Arc::new(Metrics::new());
        let mut router = Router::new(&config.alerts, metrics.clone());
        router.kept = Some(Vec::new());
        let mut pipeline = Pipeline::new(
            topology.clone(),
            rules::build(&config.rules)?,
            router,
            metrics,
        );
        pipeline.suppressions = egresswatch_monitor::suppress::Suppressions::new(&config.suppress)?;
        let mut decoder = Decoder::pinned(format.clone());
        // When each attack's first record was delivered, and when each finding was raised.
        let mut first_delivery: HashMap<u32, u64> = HashMap::new();
        let mut raised_at: Vec<u64> = Vec::new();
        let stats = sim.run(&format, |d| {
            let judged = pipeline.flows_judged;
            pipeline.line(&mut decoder, d.line.as_bytes(), &"simulated");
            // Evidence is a record the rules judge; the other views of a connection are not.
            if let (Some(id), true) = (d.label, pipeline.flows_judged > judged) {
                first_delivery.entry(id).or_insert(d.delivered_at);
            }
            let kept = pipeline.router.kept.as_ref().map_or(0, Vec::len);
            raised_at.resize(kept, d.delivered_at);
        });
        report.records += stats.records;
        report.benign_records += stats.benign_records;
        // Folds still open at the end are what a daemon would send once their window closes.
        pipeline.finish();
        let alerts = pipeline.router.kept.take().unwrap_or_default();
        let mut raised: Vec<Option<u64>> = raised_at.into_iter().map(Some).collect();
        raised.resize(alerts.len(), None);
        // An update of an alert whose finding repeated is the same finding, not a new one.
        let (findings, raised): (Vec<Finding>, Vec<Option<u64>>) = alerts
            .into_iter()
            .zip(raised)
            .filter(|(a, _)| a.repeated.is_none())
            .map(|(a, at)| (a.finding, at))
            .unzip();
        // A finding about the S3 endpoint path names no remote; only one profile's traffic
        // takes that path.
        let blame = |f: &Finding| match f.rule {
            "s3_endpoint_upload" => vec![Profile::S3Endpoint],
            _ => sim.benign_profiles(f.workload, f.remote),
        };
        score_into(
            &mut report,
            seed,
            &findings,
            &raised,
            sim.labels(),
            &first_delivery,
            Some(&blame),
        );
        report.workload_days += sim_workloads as f64 * sim_days;
    }
    report.seconds = started.elapsed().as_secs_f64();
    report.records_per_second = report.records as f64 / report.seconds.max(1e-9);
    report.peak_rss_mib = egresswatch_monitor::metrics::peak_resident_kib() as f64 / 1024.0;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(report)
}

/// The benign profiles whose traffic a finding is about.
pub type Blame<'a> = dyn Fn(&Finding) -> Vec<Profile> + 'a;

/// Matches findings to the labels of one run and adds the outcomes to `report`. `raised`
/// holds, per finding, the delivery time of the record that raised it, where known. `blame`
/// names the benign profiles whose traffic a false finding is about, when the run that made
/// the traffic is at hand; without it false findings are counted by rule only.
pub fn score_into(
    report: &mut Report,
    seed: u64,
    findings: &[Finding],
    raised: &[Option<u64>],
    labels: &[Label],
    first_delivery: &HashMap<u32, u64>,
    blame: Option<&Blame<'_>>,
) {
    let mut by_label: HashMap<u32, Vec<(&Finding, Option<u64>)>> = HashMap::new();
    for (n, f) in findings.iter().enumerate() {
        let at = raised.get(n).copied().flatten();
        let hits: Vec<&Label> = labels.iter().filter(|l| matches(f, l)).collect();
        if hits.is_empty() {
            report.false_findings += 1;
            *report.false_by_rule.entry(f.rule).or_default() += 1;
            *report
                .false_by_severity
                .entry(f.severity.as_str())
                .or_default() += 1;
            if let Some(blame) = blame {
                let profiles = blame(f);
                if profiles.is_empty() {
                    *report
                        .false_by_rule_and_profile
                        .entry(format!("{} / unknown", f.rule))
                        .or_default() += 1;
                }
                for p in profiles {
                    *report
                        .false_by_rule_and_profile
                        .entry(format!("{} / {}", f.rule, p.name()))
                        .or_default() += 1;
                }
            }
            if report.false_examples.len() < 20 {
                report.false_examples.push(f.clone());
            }
        }
        for l in hits {
            by_label.entry(l.id).or_default().push((f, at));
        }
    }
    for l in labels {
        let found = by_label.get(&l.id).cloned().unwrap_or_default();
        let mut rules: Vec<&'static str> = found.iter().map(|(f, _)| f.rule).collect();
        rules.sort_unstable();
        rules.dedup();
        report.outcomes.push(Outcome {
            seed,
            scenario: l.scenario.name(),
            workload: l.workload,
            detected: !found.is_empty(),
            blind: l.scenario.blind(),
            latency_seconds: found
                .iter()
                .map(|(f, _)| f.last_seen.saturating_sub(l.start))
                .min(),
            after_delivery_seconds: first_delivery.get(&l.id).and_then(|first| {
                found
                    .iter()
                    .filter_map(|(_, at)| at.map(|a| a.saturating_sub(*first)))
                    .min()
            }),
            rules,
            records: l.records,
        });
    }
}
