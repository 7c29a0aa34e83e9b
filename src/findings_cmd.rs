//! `egresswatch findings` and `egresswatch report`: read the findings store the daemon keeps
//! in its state dir, and list the findings or write the HTML report.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use egresswatch_monitor::daemon::unix_now;
use egresswatch_monitor::finding::Severity;
use egresswatch_monitor::findings::{self, Query};

/// Where the store is: a state dir given, or the one a config file names.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// The daemon's state dir [default: the config's state-dir, else /var/lib/egresswatch].
    #[arg(long, env = "STATE_DIRECTORY")]
    state_dir: Option<PathBuf>,
    /// The daemon's config file, for its state-dir.
    #[arg(long, short = 'c', env = "EGRESSWATCH_CONFIG")]
    config: Option<PathBuf>,
}

impl StoreArgs {
    fn state_dir(&self, command: &str) -> Result<PathBuf, ExitCode> {
        if let Some(d) = &self.state_dir {
            return Ok(d.clone());
        }
        let config = crate::load_toml(command, self.config.as_deref(), |text, origin| {
            egresswatch_monitor::Config::from_toml(text, origin)
        })?;
        Ok(config.unwrap_or_default().state_dir)
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ListOutput {
    /// Aligned columns for a terminal.
    Table,
    /// One finding document (schema v1) per line.
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SeverityArg {
    Low,
    Medium,
    High,
    Critical,
}

impl From<SeverityArg> for Severity {
    fn from(s: SeverityArg) -> Severity {
        match s {
            SeverityArg::Low => Severity::Low,
            SeverityArg::Medium => Severity::Medium,
            SeverityArg::High => Severity::High,
            SeverityArg::Critical => Severity::Critical,
        }
    }
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    egresswatch findings                                   (the last 24 hours)\n  \
    egresswatch findings --since 7d --severity high\n  \
    egresswatch findings --workload 10.0.1.23 --output json | jq .summary\n  \
    egresswatch findings --rule non_https_egress --suppressed --state-dir /var/lib/egresswatch")]
pub struct FindingsArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Findings last seen within this long before now (90m, 24h, 7d).
    #[arg(long, default_value = "24h", value_parser = parse_since)]
    since: Since,
    /// Only this rule's findings (e.g. non_https_egress).
    #[arg(long)]
    rule: Option<String>,
    /// Only this workload's: its address or its interface id.
    #[arg(long)]
    workload: Option<String>,
    /// Only findings of this severity or higher.
    #[arg(long, value_enum)]
    severity: Option<SeverityArg>,
    /// Only this stack's (a daemon that watches several).
    #[arg(long)]
    stack: Option<String>,
    /// Also the findings a suppression held back (marked as such).
    #[arg(long)]
    suppressed: bool,
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: ListOutput,
}

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    egresswatch report --out report.html                   (the last 7 days)\n  \
    egresswatch report --since 30d --stack research --out research-november.html")]
pub struct ReportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The period: findings last seen within this long before now.
    #[arg(long, default_value = "7d", value_parser = parse_since)]
    since: Since,
    /// Only this stack's findings.
    #[arg(long)]
    stack: Option<String>,
    /// The file to write the page to. (`--output`/`-o` is a format everywhere else, so a
    /// file is `--out`, as Terraform's `plan -out` is.)
    #[arg(long)]
    out: PathBuf,
}

/// A `--since` as given (for messages) and as a duration.
#[derive(Clone)]
pub struct Since {
    text: String,
    duration: Duration,
}

fn parse_since(s: &str) -> Result<Since, String> {
    Ok(Since {
        text: s.to_string(),
        duration: crate::parse_duration(s)?,
    })
}

/// The findings of the query from the stores under `state_dir`; damaged lines are reported on
/// stderr and skipped.
fn read(
    command: &str,
    state_dir: &std::path::Path,
    q: &Query,
) -> Result<Vec<serde_json::Value>, ExitCode> {
    let stores = findings::stores(state_dir);
    if stores.is_empty() {
        eprintln!(
            "egresswatch {command}: no findings store in {} (the daemon keeps one in its state dir; is this its state-dir, and has it run?)",
            state_dir.display()
        );
        return Err(ExitCode::FAILURE);
    }
    match findings::read(&stores, q) {
        Ok((found, problems)) => {
            for p in problems {
                eprintln!("egresswatch {command}: skipped a damaged line: {p}");
            }
            Ok(found)
        }
        Err(e) => {
            eprintln!("egresswatch {command}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

fn cut(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut out: String = text.chars().take(width.saturating_sub(1)).collect();
    out.push('…');
    out
}

pub fn list(args: FindingsArgs) -> ExitCode {
    let state_dir = match args.store.state_dir("findings") {
        Ok(d) => d,
        Err(code) => return code,
    };
    let q = Query {
        since: Some(unix_now().saturating_sub(args.since.duration.as_secs())),
        rule: args.rule,
        workload: args.workload,
        min_severity: args.severity.map(Severity::from),
        stack: args.stack,
        suppressed: args.suppressed,
    };
    let found = match read("findings", &state_dir, &q) {
        Ok(f) => f,
        Err(code) => return code,
    };
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let written = match args.output {
        ListOutput::Json => found.iter().try_for_each(|d| writeln!(out, "{d}")),
        ListOutput::Table => {
            let mut r = writeln!(
                out,
                "{:<20}  {:<8}  {:<22}  {:<15}  {:<21}  {:>9}  SUMMARY",
                "LAST SEEN", "SEVERITY", "RULE", "WORKLOAD", "DESTINATION", "BYTES"
            );
            for d in &found {
                let s = |k: &str| d[k].as_str().unwrap_or("-").to_string();
                let remote = findings::destination(d).unwrap_or_else(|| "-".into());
                let severity = if d.get("suppressed").is_some() {
                    "supp.".to_string()
                } else {
                    s("severity")
                };
                r = r.and_then(|()| {
                    writeln!(
                        out,
                        "{:<20}  {:<8}  {:<22}  {:<15}  {:<21}  {:>9}  {}",
                        s("last_seen"),
                        severity,
                        s("rule"),
                        s("workload"),
                        remote,
                        egresswatch_monitor::report::human_bytes(d["bytes"].as_u64().unwrap_or(0)),
                        cut(&s("summary"), 80)
                    )
                });
            }
            r.and_then(|()| {
                writeln!(
                    out,
                    "{} finding(s) in the last {}",
                    found.len(),
                    args.since.text
                )
            })
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("egresswatch findings: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn report(args: ReportArgs) -> ExitCode {
    let state_dir = match args.store.state_dir("report") {
        Ok(d) => d,
        Err(code) => return code,
    };
    let until = unix_now();
    let since = until.saturating_sub(args.since.duration.as_secs());
    let q = Query {
        since: Some(since),
        stack: args.stack,
        suppressed: true,
        ..Query::default()
    };
    let found = match read("report", &state_dir, &q) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let page = egresswatch_monitor::report::html(
        &found,
        &egresswatch_monitor::report::Period {
            asked: args.since.text,
            since,
            until,
        },
    );
    match std::fs::write(&args.out, page) {
        Ok(()) => {
            eprintln!(
                "egresswatch report: {} finding(s) in {}",
                found.len(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egresswatch report: {}: {e}", args.out.display());
            ExitCode::FAILURE
        }
    }
}
