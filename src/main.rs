//! The `egresswatch` command line: argument parsing and wiring only. Each subcommand hands
//! over to the crate that does the work (`flowlog`, `egresswatch-provision`,
//! `egresswatch-monitor`) and turns its result into output and an exit status.

mod findings_cmd;
mod monitor_cmd;
mod parse_cmd;
mod provision_cmd;
mod simulate_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Stand up a SageMaker Studio VPC with controlled internet egress, and watch what leaves it.
///
/// egresswatch provisions the network an accepted architecture decision describes (private
/// subnets, NAT gateway, S3 gateway endpoint, HTTPS-only security group, Studio in VpcOnly
/// mode) with VPC flow logs that attribute every NAT flow to its workload, and runs a daemon
/// that reads those flow logs, flags non-HTTPS and anomalous egress, exports Prometheus
/// metrics and raises alerts.
///
/// AWS credentials and region come from the standard chain (environment, profile, SSO,
/// instance role). Set AWS_ENDPOINT_URL (or --endpoint-url) to talk to an emulator.
#[derive(Parser)]
#[command(
    name = "egresswatch",
    version,
    long_version = egresswatch_monitor::BUILD_VERSION,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    /// How log lines on stderr are written: `text` for people, `json` (one object a line) for
    /// log pipelines such as CloudWatch Logs Insights, Loki or Elasticsearch.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "EGRESSWATCH_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// How much is logged on stderr: error, warn, info, debug or trace. `RUST_LOG` (e.g.
    /// `egresswatch_monitor=debug`), when set, takes precedence and can tune each module.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "info",
        env = "EGRESSWATCH_LOG_LEVEL"
    )]
    log_level: LogLevel,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The filter for this level. At info and below, the AWS SDK's own warnings (each several
    /// hundred characters, e.g. every instance-metadata attempt without a region) are left
    /// out: the command says in one line what was wrong.
    fn filter(self) -> String {
        let level = match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        };
        if self <= LogLevel::Info {
            format!("{level},aws_config=error,aws_smithy_runtime=error")
        } else {
            level.to_string()
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create, inspect, repair and delete the egress-controlled Studio network in an account.
    Provision(provision_cmd::ProvisionArgs),
    /// Run the monitoring daemon: read flow logs, flag non-HTTPS and suspicious egress through
    /// the NAT, export Prometheus metrics and send alerts.
    ///
    /// Reads the stack's flow-log group in CloudWatch Logs (or a file, or stdin), classifies
    /// every record against the network (`provision outputs`), raises findings, and commits
    /// per-stream checkpoints in the state dir after each batch, so a restart loses nothing
    /// and counts nothing twice. SIGTERM or Ctrl-C finishes the batch in flight and exits 0.
    Monitor(monitor_cmd::MonitorArgs),
    /// Parse flow-log files and print records as JSON lines, or a summary of counts.
    ///
    /// Reads each FILE in turn (stdin when none is given or for `-`); `.gz` files are
    /// decompressed. A file whose first line is a header (as S3 delivery writes) is read in
    /// that header's format, unless --format is given. Each bad line is reported on stderr as
    /// FILE:LINE: REASON and parsing goes on.
    ///
    /// Exit status: 0 when every input was read (bad lines included), 1 when an input could
    /// not be read, 2 for a usage error.
    #[command(after_help = "Examples:\n  \
        egresswatch parse flows.log\n  \
        egresswatch parse --output summary 123456789012_vpcflowlogs_*.log.gz\n  \
        egresswatch parse -f 'interface-id srcaddr dstaddr dstport bytes action' custom.log\n  \
        aws logs filter-log-events --log-group-name /egresswatch/prod/flow-logs --query 'events[].message' \\\n      \
        --output text | tr '\\t' '\\n' | egresswatch parse --format \"$(jq -r .flow_log_format outputs.json)\"")]
    Parse {
        /// The record format: an AWS format string (`${version} ${srcaddr} …`) or field names
        /// separated by spaces or commas. Default: a file's header line, else the default
        /// version 2 format.
        #[arg(long, short = 'f', value_parser = parse_format)]
        format: Option<flowlog::Format>,
        /// What to print.
        #[arg(long, short = 'o', value_enum, default_value = "json")]
        output: parse_cmd::Output,
        /// Input files; `-` is stdin.
        files: Vec<PathBuf>,
    },
    /// Generate labelled flow-log traffic for a stack: a fleet of data scientists' workloads
    /// and the attacks the monitor must catch, with ground truth.
    ///
    /// Records are written as AWS writes them: the workload's interface and both legs of the
    /// NAT gateway, 60-second windows, per-interface streams delivered one to ten minutes late
    /// and out of order, NODATA and SKIPDATA now and then. Into CloudWatch, every
    /// PutLogEvents call respects the service's limits (10,000 events, 1 MiB, 24 hours,
    /// chronological).
    Simulate(simulate_cmd::SimulateArgs),
    /// Measure detection: run simulated traffic through the daemon's processing path and
    /// report, per attack scenario, whether it was detected and how fast, and the false
    /// findings per million benign records.
    ///
    /// Exit status 0 when every attack was detected on every seed, 3 when one was missed.
    Evaluate(simulate_cmd::EvaluateArgs),
    /// Score a monitor's findings against a simulation's labels: per attack, detected or not,
    /// how fast and by which rules; and the findings that match no attack.
    Score(simulate_cmd::ScoreArgs),
    /// List the findings the daemon kept in its state dir: what it raised, newest last.
    ///
    /// The daemon keeps every alert's finding document (schema v1) in `STATE_DIR/findings`,
    /// a file per UTC day, for `[findings] keep-days` (90) within `max-bytes` (256 MiB), and
    /// the findings suppressions held back, marked (`--suppressed` lists them too).
    Findings(findings_cmd::FindingsArgs),
    /// Write a self-contained HTML report of the findings (no script, nothing fetched), to read
    /// or forward: findings over time by rule, the workloads and destinations with the most
    /// egress in findings, the attacks found, and what was suppressed.
    Report(findings_cmd::ReportArgs),
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        egresswatch completions bash > /etc/bash_completion.d/egresswatch\n  \
        egresswatch completions zsh > \"${fpath[1]}/_egresswatch\"\n  \
        egresswatch completions fish > ~/.config/fish/completions/egresswatch.fish")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write the man pages: egresswatch(1) and one per subcommand (egresswatch-monitor(1), …).
    #[command(after_help = "Example:\n  \
        egresswatch man --dir /usr/local/share/man/man1 && man egresswatch-monitor")]
    Man {
        /// The directory to write the pages into (created if missing).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Check a running daemon's health endpoint: exit 0 when it answers 200, 1 otherwise.
    /// For container health checks, where there is no shell or curl.
    Health {
        /// The daemon's health URL.
        #[arg(long, default_value = "http://127.0.0.1:9477/healthz")]
        url: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

/// What a command prints on stdout: text for people, or one JSON document for scripts.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}

/// Whether stdout is a terminal that takes colour (and NO_COLOR is not set).
fn stdout_colour() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A duration as people write it: 90m, 24h, 7d.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 90m, 6h, 7d)"))
}

fn parse_format(s: &str) -> Result<flowlog::Format, String> {
    flowlog::Format::parse(s).map_err(|e| e.to_string())
}

/// Reads a TOML file into `T` with `parse(text, origin)`; errors are printed and become exit
/// status 2 (a usage error), as for any bad argument.
fn load_toml<T>(
    command: &str,
    path: Option<&std::path::Path>,
    parse: impl Fn(&str, &str) -> Result<T, String>,
) -> Result<Option<T>, ExitCode> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| {
        eprintln!("egresswatch {command}: cannot read {}: {e}", path.display());
        ExitCode::from(2)
    })?;
    parse(&text, &path.display().to_string())
        .map(Some)
        .map_err(|e| {
            eprintln!("egresswatch {command}: {e}");
            ExitCode::from(2)
        })
}

/// The async runtime the AWS-facing commands run on.
fn tokio_runtime(command: &str) -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("egresswatch {command}: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn health(url: &str, timeout: u64) -> ExitCode {
    let runtime = match tokio_runtime("health") {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let client = match reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(timeout))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("egresswatch health: {e}");
                return ExitCode::FAILURE;
            }
        };
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => ExitCode::SUCCESS,
            Ok(r) => {
                eprintln!("egresswatch health: {url} answered {}", r.status());
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("egresswatch health: {url}: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Writes egresswatch.1 and a page for each subcommand and sub-subcommand into `dir`.
fn man_pages(dir: &std::path::Path) -> ExitCode {
    fn write(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<usize> {
        // clap takes a static name; the process ends soon after writing the pages.
        let static_name: &'static str = Box::leak(name.to_string().into_boxed_str());
        let cmd = cmd.clone().name(static_name);
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
        std::fs::write(dir.join(format!("{name}.1")), page)?;
        let mut n = 1;
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            n += write(sub, &format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(n)
    }
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    match std::fs::create_dir_all(dir).and_then(|()| write(&cmd, "egresswatch", dir)) {
        Ok(n) => {
            eprintln!("egresswatch man: {n} page(s) in {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egresswatch man: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Monitor(_)) {
        // A command whose output is cut short (`provision outputs | head`) ends quietly, as
        // Unix tools do, instead of panicking on the closed pipe. The daemon keeps Rust's
        // default (a write error it handles), so a reader going away never kills it.
        // SAFETY: restoring the default disposition of one signal, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    // Logs go to stderr; --log-level or RUST_LOG tunes them (default: info). Colour only on a
    // terminal and unless NO_COLOR is set (no-color.org): journald, awslogs and files get
    // plain text.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(cli.log_level.filter()));
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(colour).init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
    match cli.command {
        Command::Parse {
            format,
            output,
            files,
        } => {
            let status = parse_cmd::run(parse_cmd::ParseArgs {
                format,
                output,
                files,
            });
            ExitCode::from(status as u8)
        }
        Command::Provision(args) => provision_cmd::run(args),
        Command::Monitor(args) => monitor_cmd::run(args),
        Command::Simulate(args) => simulate_cmd::simulate(args),
        Command::Evaluate(args) => simulate_cmd::evaluate(args),
        Command::Score(args) => simulate_cmd::score(args),
        Command::Findings(args) => findings_cmd::list(args),
        Command::Report(args) => findings_cmd::report(args),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "egresswatch",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Command::Man { dir } => man_pages(&dir),
        Command::Health { url, timeout } => health(&url, timeout),
    }
}
