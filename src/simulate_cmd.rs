//! `egresswatch simulate`, `evaluate` and `score`: the arguments and the printing. The traffic
//! and the detection harness are the simulate crate's (`egresswatch_simulate::evaluate`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use egresswatch_monitor::finding::Finding;
use egresswatch_monitor::Config;
use egresswatch_provision::logs::put_events;
use egresswatch_simulate::evaluate::{self, Report};
use egresswatch_simulate::{Label, Network, Selection, Settings, Simulator, Subnet};
use flowlog::Format;

use crate::parse_duration;

/// What both commands simulate.
#[derive(clap::Args, Clone)]
pub struct TrafficArgs {
    /// What to simulate, comma separated: `all` (every benign profile and every attack),
    /// `benign` (every benign profile), `attacks`, or names. Benign profiles, each with an
    /// optional rate multiplier (`heartbeats=2`): daily-work, heartbeats, api-polling,
    /// large-downloads, cloud-storage, checkpoint-uploads, nightly-upload, git-push,
    /// s3-endpoint, batched-delivery. Attacks: ssh-exfil, https-upload, spray-upload,
    /// split-upload, slow-drip, s3-exfil, beaconing, jittered-beacon, long-beacon, port-scan,
    /// port-sweep, denylisted, tor, dns-outside, dns-over-https, dns-over-tls, blocked-tunnel,
    /// unusual-port, first-day-beacon, first-hour-upload, reverse-shell. By name only (not in
    /// `all`): shared-storage-upload, s3-under-floor, slow-ramp (each played by a quiet
    /// workload) and sparse-beacon (built where flow logs are blind).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Simulated time span [default: 6h for simulate, 7d for evaluate].
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Attacks start no earlier than this into the run, after the baselines have formed
    /// [default: half the duration for simulate, 2d for evaluate].
    #[arg(long, value_parser = parse_duration)]
    attacks_after: Option<Duration>,
    /// Workloads (Studio apps) in the fleet [default: 20 for simulate, 200 for evaluate].
    #[arg(long)]
    workloads: Option<usize>,
    /// Fresh internet destinations each workload contacts per active hour.
    #[arg(long, default_value_t = 2.0)]
    new_destinations_per_hour: f64,
}

/// A command's defaults for what `TrafficArgs` leaves out.
struct TrafficDefaults {
    duration: Duration,
    workloads: usize,
    /// `None`: half the duration.
    attacks_after: Option<Duration>,
}

const SIMULATE_DEFAULTS: TrafficDefaults = TrafficDefaults {
    duration: Duration::from_secs(6 * 3_600),
    workloads: 20,
    attacks_after: None,
};

const EVALUATE_DEFAULTS: TrafficDefaults = TrafficDefaults {
    duration: Duration::from_secs(7 * 86_400),
    workloads: 200,
    attacks_after: Some(Duration::from_secs(2 * 86_400)),
};

impl TrafficArgs {
    fn duration(&self, d: &TrafficDefaults) -> Duration {
        self.duration.unwrap_or(d.duration)
    }

    fn settings(
        &self,
        seed: u64,
        start: u64,
        network: Network,
        d: &TrafficDefaults,
    ) -> Result<Settings, String> {
        let duration = self.duration(d);
        let mut s = Settings::new(seed, start, duration.as_secs());
        s.selection = Selection::parse(&self.scenario)?;
        s.workloads = self.workloads.unwrap_or(d.workloads);
        s.network = network;
        s.new_destinations_per_hour = self.new_destinations_per_hour;
        if let Some(a) = self.attacks_after.or(d.attacks_after) {
            if a >= duration {
                return Err(format!(
                    "--attacks-after {} is not within the {} simulated",
                    humantime::format_duration(a),
                    humantime::format_duration(duration)
                ));
            }
            s.attacks_after_seconds = a.as_secs();
        }
        Ok(s)
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    egresswatch simulate --to file:flows.log --labels truth.jsonl\n  \
    egresswatch simulate --scenario benign,beaconing --duration 2d --seed 7 --to file:flows.log\n  \
    egresswatch simulate --to cloudwatch --stack research --duration 1h   # into the stack's log group\n\n\
    Records follow the stack's flow-log format. Attacks that need the security group opened\n\
    (ssh-exfil, unusual-port) are written as accepted, as they would be after such drift;\n\
    the others meet the HTTPS-only group as AWS would (port scans, Tor and outside DNS are\n\
    rejected on the workload's interface).")]
pub struct SimulateArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// `file:PATH` (`-` for stdout) or `cloudwatch` (the stack's flow-log group).
    #[arg(long, default_value = "file:-")]
    to: String,
    /// Write the ground truth (scenario, workload, remotes, time span) here as JSON lines.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Write the deny lists the denylisted and tor scenarios use into this directory
    /// (threats.txt, tor-exits.txt) for the monitor's `rules.denylists`.
    #[arg(long)]
    denylists_out: Option<PathBuf>,
    /// Random seed; the same seed gives the same records.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Start of the simulated time, Unix seconds [default: now minus the duration].
    #[arg(long)]
    start: Option<u64>,
    /// The stack (its network comes from `provision outputs`, its log group from the name).
    #[arg(long, default_value = "egresswatch", env = "EGRESSWATCH_STACK")]
    stack: String,
    /// `provision outputs` JSON to take the network from, instead of asking AWS.
    #[arg(long)]
    outputs: Option<PathBuf>,
    /// AWS region (default: the standard chain).
    #[arg(long)]
    region: Option<String>,
    /// Send AWS calls here (an emulator); default: AWS_ENDPOINT_URL.
    #[arg(long)]
    endpoint_url: Option<String>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The simulator's view of a provisioned stack.
fn network_from_outputs(out: &egresswatch_provision::Outputs) -> Result<Network, String> {
    let mut net = Network {
        account_id: out.account_id.clone(),
        region: out.region.clone(),
        vpc_id: out.vpc_id.clone(),
        ..Network::default()
    };
    let nat = out
        .nat_gateways
        .first()
        .ok_or("the stack has no NAT gateway in its outputs")?;
    net.nat_interface_id = nat.network_interface_id.clone();
    net.nat_private_ip = nat
        .private_ip
        .parse()
        .map_err(|_| format!("NAT private address `{}` is not IPv4", nat.private_ip))?;
    net.nat_subnet_id = nat.subnet_id.clone();
    net.private_subnets = out
        .private_subnets
        .iter()
        .map(|s| {
            let cidr: ipnet::Ipv4Net = s
                .cidr
                .parse()
                .map_err(|_| format!("subnet {} CIDR `{}` is not IPv4", s.id, s.cidr))?;
            Ok(Subnet {
                id: s.id.clone(),
                base: cidr.network(),
                size: 1u32 << (32 - cidr.prefix_len()),
                az_id: s.availability_zone.clone(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(net)
}

fn write_labels(path: &std::path::Path, labels: &[Label]) -> Result<(), String> {
    let mut text = String::new();
    for l in labels {
        text.push_str(&serde_json::to_string(l).map_err(|e| e.to_string())?);
        text.push('\n');
    }
    std::fs::write(path, text).map_err(|e| format!("labels {}: {e}", path.display()))
}

pub fn simulate(args: SimulateArgs) -> ExitCode {
    match simulate_inner(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresswatch simulate: {e}");
            ExitCode::FAILURE
        }
    }
}

fn simulate_inner(args: SimulateArgs) -> Result<(), String> {
    let duration = args.traffic.duration(&SIMULATE_DEFAULTS);
    let learning = egresswatch_monitor::config::Rules::default().longest_learning_seconds();
    if duration.as_secs() < learning {
        eprintln!(
            "egresswatch simulate: note: {} is shorter than the rules' learning period ({} of event time by default): a monitor that reads only this traffic judges what it saw while learning at the end of its input, not as it arrives (rules.*.learning-seconds, or its warm start from retained history, changes that)",
            egresswatch_monitor::config::Rules::period_text(duration.as_secs()),
            egresswatch_monitor::config::Rules::period_text(learning)
        );
    }
    let start = args.start.unwrap_or_else(|| {
        now().saturating_sub(args.traffic.duration(&SIMULATE_DEFAULTS).as_secs())
    });
    if let Some(dir) = &args.denylists_out {
        evaluate::write_denylists(dir)?;
    }
    let format =
        Format::parse(&egresswatch_provision::flow_log_format()).map_err(|e| e.to_string())?;
    if let Some(path) = args.to.strip_prefix("file:") {
        let network = match &args.outputs {
            Some(p) => network_from_outputs(&egresswatch_provision::Outputs::read(p)?)?,
            None => Network::default(),
        };
        let mut sim = Simulator::new(args.traffic.settings(
            args.seed,
            start,
            network,
            &SIMULATE_DEFAULTS,
        )?)?;
        let mut out: Box<dyn Write> = if path == "-" {
            Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?,
            ))
        };
        // A header line, as S3 delivery writes, so readers know the format.
        let mut failed = writeln!(out, "{}", format.header_line()).err();
        let stats = sim.run(&format, |d| {
            if failed.is_none() {
                if let Err(e) = writeln!(out, "{}", d.line) {
                    failed = Some(e);
                }
            }
        });
        if let Some(e) = failed.or_else(|| out.flush().err()) {
            return Err(format!("{path}: {e}"));
        }
        if let Some(l) = &args.labels {
            write_labels(l, sim.labels())?;
        }
        eprintln!(
            "egresswatch simulate: {} records ({} from attacks, {} NODATA, {} SKIPDATA), {} distinct internet destinations, {} attack(s) labelled",
            stats.records, stats.malicious_records, stats.nodata_records, stats.skipdata_records, stats.distinct_remotes, sim.labels().len()
        );
        return Ok(());
    }
    if args.to != "cloudwatch" {
        return Err(format!(
            "--to {}: expected file:PATH or cloudwatch",
            args.to
        ));
    }
    let runtime = crate::tokio_runtime("simulate").map_err(|_| "cannot start the runtime")?;
    runtime.block_on(to_cloudwatch(args, start, format))
}

async fn to_cloudwatch(args: SimulateArgs, start: u64, format: Format) -> Result<(), String> {
    let clients =
        egresswatch_provision::Clients::from_env(args.region.clone(), args.endpoint_url.clone())
            .await
            .map_err(|e| e.to_string())?;
    let outputs = match &args.outputs {
        Some(p) => egresswatch_provision::Outputs::read(p)?,
        None => {
            let spec = egresswatch_provision::StackSpec::default();
            let (changes, out) = egresswatch_provision::reconcile(
                &clients,
                &spec,
                &args.stack,
                egresswatch_provision::Mode::Plan,
                |_| {},
            )
            .await
            .map_err(|e| e.to_string())?;
            if !egresswatch_provision::stack_exists(&changes) {
                return Err(format!(
                    "stack {} does not exist; run `egresswatch provision up` first",
                    args.stack
                ));
            }
            out
        }
    };
    let group = outputs.log_group.clone();
    let format = if outputs.flow_log_format.is_empty() {
        format
    } else {
        Format::parse(&outputs.flow_log_format)
            .map_err(|e| format!("the stack's flow-log format: {e}"))?
    };
    let mut sim = Simulator::new(args.traffic.settings(
        args.seed,
        start,
        network_from_outputs(&outputs)?,
        &SIMULATE_DEFAULTS,
    )?)?;
    // Generation is synchronous; events are gathered per stream, then each stream is written
    // in as few calls as the service's limits allow.
    let mut streams: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    let stats = sim.run(&format, |d| {
        streams
            .entry(d.stream.to_string())
            .or_default()
            .push((d.timestamp_ms, d.line.to_string()));
    });
    let stream_count = streams.len();
    let mut calls = 0u64;
    let started = Instant::now();
    let total: usize = streams.values().map(Vec::len).sum();
    let mut sent = 0usize;
    for (stream, events) in streams {
        put_events(&clients, &group, &stream, events, |n| {
            sent += n;
            calls += 1;
            if calls.is_multiple_of(20) {
                eprintln!(
                    "  {sent}/{total} events written ({:.0}%)",
                    100.0 * sent as f64 / total.max(1) as f64
                );
            }
        })
        .await?;
    }
    if let Some(l) = &args.labels {
        write_labels(l, sim.labels())?;
    }
    eprintln!(
        "egresswatch simulate: {} records into {group} over {} streams in {calls} PutLogEvents calls ({:.1}s); {} attack(s) labelled",
        stats.records,
        stream_count,
        started.elapsed().as_secs_f64(),
        sim.labels().len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    egresswatch evaluate                                   # 5 seeds, a week of 200 workloads\n  \
    egresswatch evaluate --seeds 1,2 --duration 2d --workloads 20 --attacks-after 30h\n  \
    egresswatch evaluate --config monitor.toml --output json\n\n\
    Each seed's records go through the daemon's own path (parse, classify, every rule, the\n\
    alert router's deduplication) in delivery order. A finding matches an attack when it names\n\
    the attack's workload, one of its remotes (or none), and falls within its time span; any\n\
    other finding is false. Latency is event time from the attack's first record to the\n\
    finding. The deny lists the denylisted and tor scenarios need are added to the rules.")]
pub struct EvaluateArgs {
    #[command(flatten)]
    traffic: TrafficArgs,
    /// Seeds, comma separated; every attack runs once per seed.
    #[arg(long, default_value = "1,2,3,4,5", value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Monitor config whose `[rules]` to evaluate [default: the defaults].
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// `text` (a table) or `json`.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: crate::Output,
}

/// One attack's outcome on one seed.
pub fn evaluate(args: EvaluateArgs) -> ExitCode {
    let config = match crate::load_toml("evaluate", args.config.as_deref(), Config::from_toml) {
        Ok(c) => c.unwrap_or_default(),
        Err(code) => return code,
    };
    let runtime = match crate::tokio_runtime("evaluate") {
        Ok(r) => r,
        Err(code) => return code,
    };
    let settings = |seed: u64, start: u64, network: Network| {
        args.traffic
            .settings(seed, start, network, &EVALUATE_DEFAULTS)
    };
    let report = runtime.block_on(async { evaluate::evaluate(&args.seeds, &settings, config) });
    match report {
        Ok(r) => {
            if args.output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print_report(&r, args.seeds.len());
            }
            let missed = r.outcomes.iter().any(|o| !o.as_expected());
            if missed {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("egresswatch evaluate: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Example:\n  \
    egresswatch simulate --to cloudwatch --labels truth.jsonl\n  \
    egresswatch monitor > alerts.jsonl      # the stdout sink's JSON lines\n  \
    egresswatch score --labels truth.jsonl --findings alerts.jsonl")]
pub struct ScoreArgs {
    /// Ground truth from `simulate --labels`.
    #[arg(long)]
    labels: PathBuf,
    /// Findings as JSON lines (the monitor's stdout sink, or a webhook's log).
    #[arg(long)]
    findings: PathBuf,
    /// `text` (a table) or `json`.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: crate::Output,
}

/// Scores the findings a monitor raised against a simulation's labels.
pub fn score(args: ScoreArgs) -> ExitCode {
    let read =
        |p: &PathBuf| std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()));
    let parse_lines = |p: &PathBuf, text: &str| -> Result<Vec<serde_json::Value>, String> {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", p.display(), n + 1))
            })
            .collect()
    };
    let result = (|| -> Result<Report, String> {
        let labels: Vec<Label> = parse_lines(&args.labels, &read(&args.labels)?)?
            .into_iter()
            .map(|v| {
                serde_json::from_value(v).map_err(|e| format!("{}: {e}", args.labels.display()))
            })
            .collect::<Result<_, _>>()?;
        let findings: Vec<Finding> = parse_lines(&args.findings, &read(&args.findings)?)?
            .into_iter()
            .map(|v| {
                Finding::from_json(&v).map_err(|e| format!("{}: {e}", args.findings.display()))
            })
            .collect::<Result<_, _>>()?;
        let mut report = Report::default();
        evaluate::score_into(
            &mut report,
            0,
            &findings,
            &[],
            &labels,
            &HashMap::new(),
            // The labels do not say which benign profile made which traffic.
            None,
        );
        Ok(report)
    })();
    match result {
        Ok(r) => {
            if args.output == crate::Output::Json {
                println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
            } else {
                print_report(&r, 1);
            }
            if r.outcomes.iter().all(|o| o.as_expected()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Err(e) => {
            eprintln!("egresswatch score: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(r: &Report, seeds: usize) {
    let mut by_scenario: BTreeMap<&str, Vec<&evaluate::Outcome>> = BTreeMap::new();
    for o in &r.outcomes {
        by_scenario.entry(o.scenario).or_default().push(o);
    }
    println!(
        "{:<16} {:>9} {:>12} {:>12} {:>15}  rules that fired",
        "scenario", "detected", "latency p50", "latency max", "after delivery"
    );
    for (scenario, outs) in &by_scenario {
        let detected = outs.iter().filter(|o| o.detected).count();
        let mut lat: Vec<u64> = outs.iter().filter_map(|o| o.latency_seconds).collect();
        lat.sort_unstable();
        let show = |v: Option<&u64>| v.map_or("-".to_string(), |s| format!("{s} s"));
        let rules: BTreeSet<&str> = outs.iter().flat_map(|o| o.rules.iter().copied()).collect();
        let delivered = outs.iter().filter_map(|o| o.after_delivery_seconds).max();
        println!(
            "{:<16} {:>9} {:>12} {:>12} {:>15}  {}",
            scenario,
            format!("{detected}/{}", outs.len()),
            show(lat.get(lat.len() / 2)),
            show(lat.last()),
            show(delivered.as_ref()),
            rules.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    for (scenario, outs) in &by_scenario {
        if let Some(why) = outs.first().and_then(|o| o.blind) {
            println!("{scenario} is built where flow logs are blind: {why}");
        }
    }
    println!();
    if r.records > 0 {
        let per_million = r.false_findings as f64 * 1e6 / r.benign_records.max(1) as f64;
        println!(
            "{} seed(s), {} records ({} benign): {} false finding(s) = {:.2} per million benign records, {:.2} per 100 workload-days",
            seeds,
            r.records,
            r.benign_records,
            r.false_findings,
            per_million,
            r.false_findings as f64 * 100.0 / r.workload_days.max(1e-9)
        );
    } else {
        println!("{} finding(s) matched no attack", r.false_findings);
    }
    if !r.false_by_rule.is_empty() {
        let parts: Vec<String> = r
            .false_by_rule
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("false findings by rule: {}", parts.join(", "));
        let by_severity: Vec<String> = r
            .false_by_severity
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        println!("false findings by severity: {}", by_severity.join(", "));
        if !r.false_by_rule_and_profile.is_empty() {
            println!("false findings by rule / benign profile whose traffic they are about:");
            for (k, v) in &r.false_by_rule_and_profile {
                println!("  {k:<48} {v}");
            }
        }
        for f in r.false_examples.iter().take(5) {
            println!(
                "  e.g. {} {}: {}",
                f.rule,
                f.workload.map(|w| w.to_string()).unwrap_or_default(),
                f.summary
            );
        }
    }
    if r.records > 0 {
        println!(
            "processed in {:.1} s ({:.0} records/s including generation), peak resident memory {:.0} MiB",
            r.seconds, r.records_per_second, r.peak_rss_mib
        );
    }
}
