//! `egresswatch monitor`: loads the config, applies command-line overrides, installs signal
//! handlers and runs the daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use egresswatch_monitor::events::{Lifecycle, ProcessEvent};
use egresswatch_monitor::{Config, Metrics};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    egresswatch provision outputs > /etc/egresswatch/outputs.json\n  \
    egresswatch monitor --config /etc/egresswatch/monitor.toml\n  \
    egresswatch monitor --source file:flows.log.gz --outputs outputs.json --state-dir /tmp/ew\n  \
    egresswatch monitor --source s3 --outputs outputs.json   (objects announced on the stack's queue)\n  \
    egresswatch monitor --source s3 --outputs outputs.json --from 2026-11-01T00:00:00Z --to 2026-11-08T00:00:00Z \\\n      \
    --state-dir /tmp/backfill   (a backfill: the records of that week, then stop)")]
pub struct MonitorArgs {
    /// Config file (TOML); every key is optional.
    #[arg(long, short = 'c', env = "EGRESSWATCH_CONFIG")]
    config: Option<PathBuf>,
    /// The stack whose flow-log group to read.
    #[arg(long)]
    stack: Option<String>,
    /// `cloudwatch`, `s3` (objects announced on an SQS queue), `file:PATH` (plain or .gz) or
    /// `stdin`.
    #[arg(long)]
    source: Option<String>,
    /// With `--source s3`: a backfill from this time (RFC 3339 or Unix seconds): the objects
    /// of the range are listed from the stack's prefix, records starting within [from, to)
    /// are judged, and the run ends.
    #[arg(long, requires = "to")]
    from: Option<String>,
    /// With `--from`: the end of the backfill's range (exclusive).
    #[arg(long, requires = "from")]
    to: Option<String>,
    /// With `--source file:PATH`, keep reading what is appended to the file (like tail -f).
    #[arg(long)]
    follow: bool,
    /// Read this log group instead of the stack's.
    #[arg(long)]
    log_group: Option<String>,
    /// Address for /metrics, /healthz and /readyz [default: 127.0.0.1:9477].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where checkpoints live [default: /var/lib/egresswatch].
    #[arg(long, env = "STATE_DIRECTORY")]
    state_dir: Option<PathBuf>,
    /// `egresswatch provision outputs` JSON describing the network.
    #[arg(long)]
    outputs: Option<PathBuf>,
    /// Removed (one daemon per stack); refused with the reason.
    #[arg(long, hide = true)]
    shard: Option<String>,
    /// AWS region (default: the standard chain).
    #[arg(long)]
    region: Option<String>,
    /// Send AWS calls here (an emulator); default: AWS_ENDPOINT_URL.
    #[arg(long)]
    endpoint_url: Option<String>,
    /// Print every suppressed finding to stdout, as a finding document with a `suppressed`
    /// object naming the `[[suppress]]` entry (by number) and its reason. Nothing suppressed
    /// reaches a sink either way.
    #[arg(long)]
    explain: bool,
    /// Check everything the daemon needs, then exit: the config and the files it names, the
    /// network description, the state dir, the source (the flow log's format and one read,
    /// with their permissions) and each alert sink. Reads only. Exit 0 when all is well, 1
    /// when something would stop the daemon or lose alerts.
    #[arg(long)]
    check: bool,
}

pub fn run(args: MonitorArgs) -> ExitCode {
    let mut config = match args.config.as_deref().map(Config::from_file).transpose() {
        Ok(c) => c.unwrap_or_default(),
        Err(e) => {
            eprintln!("egresswatch monitor: {e}");
            return ExitCode::from(2);
        }
    };
    if args.follow {
        config.follow = true;
    }
    config.explain = args.explain;
    if let Some(v) = args.stack {
        config.stack = v;
    }
    if args.from.is_some() {
        config.s3.from = args.from;
        config.s3.to = args.to;
    }
    if let Some(v) = args.source {
        config.source = v;
    }
    if let Some(v) = args.log_group {
        config.log_group = Some(v);
    }
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.state_dir {
        config.state_dir = v;
    }
    if let Some(v) = args.outputs {
        config.outputs_file = Some(v);
    }
    if args.shard.is_some() {
        eprintln!(
            "egresswatch monitor: {}",
            egresswatch_monitor::config::SHARD_REMOVED
        );
        return ExitCode::from(2);
    }
    if let Err(e) = config.validate() {
        eprintln!("egresswatch monitor: {e}");
        return ExitCode::from(2);
    }
    let runtime = match crate::tokio_runtime("monitor") {
        Ok(r) => r,
        Err(code) => return code,
    };
    if args.check {
        return runtime.block_on(check(config, args.region, args.endpoint_url));
    }
    let code = runtime.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                Lifecycle::SignalHandlersMissing.emit();
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                    // Reload, as systemd's ExecReload and operators expect; each stack's
                    // loop takes it up between batches.
                    _ = hup.recv() => {
                        Lifecycle::ReloadRequested { signal: "SIGHUP" }.emit();
                        egresswatch_monitor::reload::request();
                    }
                }
            }
            Lifecycle::ShuttingDown.emit();
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
            let _ = tx.send(true);
        });
        if !config.stacks.is_empty() {
            // One set of clients per stack: each is used only on its stack's own runtime.
            let mut per_stack = Vec::new();
            for entry in &config.stacks {
                let source = config.for_stack(entry).source;
                if source != "cloudwatch" && source != "s3" {
                    per_stack.push(None);
                    continue;
                }
                match egresswatch_monitor::aws::Clients::from_env(
                    args.region.clone(),
                    args.endpoint_url.clone(),
                )
                .await
                {
                    Ok(c) => per_stack.push(Some(c)),
                    Err(e) => {
                        eprintln!("egresswatch monitor: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            }
            let names: Vec<&str> = config.stacks.iter().map(|s| s.name.as_str()).collect();
            Lifecycle::Starting {
                listen: config.listen,
                reading: &format!("stacks {}", names.join(", ")),
            }
            .emit();
            return match egresswatch_monitor::daemon::run_stacks(config, rx, per_stack).await {
                Ok(s) => {
                    Lifecycle::Finished {
                        records: s.records,
                        outside_range: 0,
                    }
                    .emit();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("egresswatch monitor: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        let clients = if config.source == "cloudwatch" || config.source == "s3" {
            match egresswatch_monitor::aws::Clients::from_env(args.region, args.endpoint_url).await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("egresswatch monitor: {e}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        Lifecycle::Starting {
            listen: config.listen,
            reading: &config.source.to_string(),
        }
        .emit();
        let metrics = Arc::new(Metrics::new());
        match egresswatch_monitor::run(config, metrics.clone(), rx, clients).await {
            Ok(s) => {
                // A backfill leaves out the records that start outside its range.
                Lifecycle::Finished {
                    records: s.records,
                    outside_range: metrics.records_outside_range.get(),
                }
                .emit();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("egresswatch monitor: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // A reader thread blocked on stdin, or a stdout nobody reads, must not hold the process
    // after the daemon has stopped.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// `monitor --check`: every stack's checks, a line each; exit 1 when one failed.
async fn check(config: Config, region: Option<String>, endpoint_url: Option<String>) -> ExitCode {
    let stacks: Vec<Config> = if config.stacks.is_empty() {
        vec![config.clone()]
    } else {
        config.stacks.iter().map(|e| config.for_stack(e)).collect()
    };
    let mut failed = 0;
    for c in &stacks {
        let clients = if c.source == "cloudwatch" || c.source == "s3" {
            match egresswatch_monitor::aws::Clients::from_env(region.clone(), endpoint_url.clone())
                .await
            {
                Ok(clients) => Some(clients),
                Err(e) => {
                    println!("FAIL  AWS: {e}");
                    failed += 1;
                    None
                }
            }
        } else {
            None
        };
        if stacks.len() > 1 {
            println!("stack {}:", c.stack);
        }
        for item in egresswatch_monitor::check::run(c, clients).await {
            match item.outcome {
                Ok(detail) => println!("ok    {}: {detail}", item.what),
                Err(e) => {
                    failed += 1;
                    println!("FAIL  {}: {e}", item.what);
                }
            }
        }
    }
    if failed == 0 {
        println!("all checks passed");
        ExitCode::SUCCESS
    } else {
        println!("{failed} check(s) failed");
        ExitCode::FAILURE
    }
}
