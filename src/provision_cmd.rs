//! `egresswatch provision`: argument parsing and human output for the provisioner.

use std::path::PathBuf;
use std::process::ExitCode;

use egresswatch_provision::{self as provision, Change, ChangeKind, Clients, Mode, StackSpec};

#[derive(clap::Args)]
#[command(after_help = "Examples:\n  \
    egresswatch provision init > stack.toml\n  \
    egresswatch provision plan --spec stack.toml\n  \
    egresswatch provision up --spec stack.toml --stack research\n  \
    egresswatch provision outputs > outputs.json\n  \
    AWS_ENDPOINT_URL=http://127.0.0.1:5000 egresswatch provision up   # against an emulator")]
pub struct ProvisionArgs {
    #[command(subcommand)]
    command: Sub,
    /// The stack's name; every resource is tagged `egresswatch:stack=NAME`.
    #[arg(
        long,
        global = true,
        default_value = "egresswatch",
        env = "EGRESSWATCH_STACK"
    )]
    stack: String,
    /// Stack spec (TOML); every key is optional. See `provision init`.
    #[arg(long, global = true, env = "EGRESSWATCH_SPEC")]
    spec: Option<PathBuf>,
    /// AWS region (default: the standard chain, e.g. AWS_REGION or the profile).
    #[arg(long, global = true)]
    region: Option<String>,
    /// Send every AWS call here instead (an emulator); default: AWS_ENDPOINT_URL.
    #[arg(long, global = true)]
    endpoint_url: Option<String>,
    /// `text` for people or `json` (one document on stdout) for scripts; `outputs` is JSON
    /// either way.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    output: crate::Output,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Print a commented stack spec with every default.
    Init,
    /// Show what `up` would create, change or delete. Makes no change.
    Plan {
        /// Exit 0 when there is no change, 2 when there are changes (1 on error), as
        /// `terraform plan -detailed-exitcode` does.
        #[arg(long)]
        detailed_exitcode: bool,
    },
    /// Create or repair the stack until it matches the spec. Safe to run again at any time.
    /// Shows the plan and asks before changing anything, unless --yes.
    Up {
        /// Do not ask: apply at once (needed when stdin is not a terminal), as Terraform's
        /// `apply -auto-approve`.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Report each resource present, missing or drifted; security findings first.
    /// Exit status 0 when in spec, 3 when drifted or incomplete, 4 when no such stack exists
    /// in the region.
    Status,
    /// Print, as JSON, everything the monitor needs to know about the stack. Exit 0 when the
    /// outputs were printed (differences from the spec are `status`'s to report), 4 when the
    /// stack does not exist in the region.
    Outputs,
    /// Delete everything the stack created, including what Studio left behind. Shows what it
    /// will delete and asks for the stack's name unless --yes. The flow-log group (the
    /// evidence) is kept unless --delete-logs; a Studio domain's home directories are deleted
    /// only with --delete-home-data, and without it `down` refuses before deleting anything.
    Down(DownArgs),
    /// Print every policy the stack writes or asks for, rendered for the account, region and
    /// partition: the provisioner's and the monitor's own, the stack's roles and their trust,
    /// the flow-log bucket's and queue's, the S3 endpoint's. For a security review before
    /// `up`; makes no AWS call when --account is given.
    Policies {
        /// The account to render for (default: the credentials' account, from STS).
        #[arg(long)]
        account: Option<String>,
    },
    /// Remove the stack's lock left by a run that crashed (a run holds it while it changes
    /// the stack, so two runs never create twice). Only when no run is going on.
    Unlock,
}

#[derive(clap::Args)]
struct DownArgs {
    /// Do not ask: delete at once (needed when stdin is not a terminal).
    #[arg(long, short = 'y')]
    yes: bool,
    /// List what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Delete the flow-log group too (by default it is kept: it is the evidence).
    #[arg(long)]
    delete_logs: bool,
    /// Delete the Studio domain's home EFS volume, the users' home directories.
    #[arg(long)]
    delete_home_data: bool,
}

/// The changes by resource, as `plan` and `up` both count them: "2 to create, 1 to change"
/// (or "2 created, 1 changed" once done). A resource counts once, by its weightiest change.
fn summary(changes: &[Change], done: bool) -> String {
    use std::collections::BTreeMap;
    let mut by_resource: BTreeMap<&str, u8> = BTreeMap::new();
    for c in changes {
        let weight = match c.kind {
            ChangeKind::Delete => 3,
            ChangeKind::Create => 2,
            ChangeKind::Replace => 1,
            ChangeKind::Update => 0,
        };
        let w = by_resource.entry(c.resource.as_str()).or_insert(weight);
        *w = (*w).max(weight);
    }
    let count = |w: u8| by_resource.values().filter(|v| **v == w).count();
    let words: [(u8, &str, &str); 4] = [
        (2, "to create", "created"),
        (1, "to replace", "replaced"),
        (0, "to change", "changed"),
        (3, "to delete", "deleted"),
    ];
    let parts: Vec<String> = words
        .iter()
        .filter(|(w, _, _)| count(*w) > 0)
        .map(|(w, planned, made)| format!("{} {}", count(*w), if done { made } else { planned }))
        .collect();
    if parts.is_empty() {
        "nothing to change".into()
    } else {
        format!("{} resource(s): {}", by_resource.len(), parts.join(", "))
    }
}

fn print_changes(changes: &[Change]) {
    let colour = crate::stdout_colour();
    let mut sorted: Vec<&Change> = changes.iter().collect();
    sorted.sort_by_key(|c| !c.security);
    for c in sorted {
        let (sign, ansi) = match c.kind {
            ChangeKind::Create => ("+", "32"),
            ChangeKind::Update => ("~", "33"),
            ChangeKind::Replace => ("-/+", "35"),
            ChangeKind::Delete => ("-", "31"),
        };
        let flag = if c.security { "  [security]" } else { "" };
        let line = format!("{sign:>3} {:<26} {}{flag}", c.resource, c.detail);
        if colour {
            println!("\x1b[{ansi}m{line}\x1b[0m");
        } else {
            println!("{line}");
        }
    }
}

/// `provision policies`: every policy, as text with a heading each or as one JSON array.
fn print_policies(
    spec: &StackSpec,
    stack: &str,
    partition: &str,
    region: &str,
    account: &str,
    json: bool,
) -> ExitCode {
    let target = provision::policies::Target {
        stack,
        partition,
        region,
        account,
    };
    match provision::policies::render(spec, &target) {
        Ok(all) if json => {
            crate::print_json(&serde_json::json!(all));
            ExitCode::SUCCESS
        }
        Ok(all) => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            for p in all {
                let kind = match p.kind {
                    provision::policies::PolicyKind::Identity => "identity policy",
                    provision::policies::PolicyKind::Trust => "trust policy",
                    provision::policies::PolicyKind::Resource => "resource policy",
                    provision::policies::PolicyKind::Boundary => "permissions boundary",
                };
                let text = serde_json::to_string_pretty(&p.document).unwrap_or_default();
                // A reader that stops early (`| head`) ends the listing, not in a panic.
                if writeln!(out, "# {} ({kind}): {}\n{text}\n", p.name, p.attached_to).is_err() {
                    break;
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("egresswatch provision policies: {e}");
            ExitCode::FAILURE
        }
    }
}

fn kind_word(k: &ChangeKind) -> &'static str {
    match k {
        ChangeKind::Create => "create",
        ChangeKind::Update => "update",
        ChangeKind::Replace => "replace",
        ChangeKind::Delete => "delete",
    }
}

fn changes_json(changes: &[Change]) -> serde_json::Value {
    changes
        .iter()
        .map(|c| {
            serde_json::json!({
                "resource": c.resource,
                "action": kind_word(&c.kind),
                "detail": c.detail,
                "security": c.security,
            })
        })
        .collect()
}

/// The exit status of `status` and `outputs` for a stack the region does not have.
const STACK_NOT_FOUND: u8 = 4;

pub fn run(args: ProvisionArgs) -> ExitCode {
    let json = args.output == crate::Output::Json;
    if let Sub::Init = args.command {
        print!("{}", provision::SPEC_TEMPLATE);
        return ExitCode::SUCCESS;
    }
    let given = match crate::load_toml("provision", args.spec.as_deref(), |t, o| {
        StackSpec::from_toml(t, o).map_err(|e| e.to_string())
    }) {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Sub::Policies {
        account: Some(account),
    } = &args.command
    {
        let Some(region) = args
            .region
            .clone()
            .or_else(|| std::env::var("AWS_REGION").ok())
        else {
            eprintln!("egresswatch provision policies: no region: pass --region or set AWS_REGION");
            return ExitCode::FAILURE;
        };
        let partition = provision::aws::partition(&region);
        return print_policies(
            &given.unwrap_or_default(),
            &args.stack,
            partition,
            &region,
            account,
            json,
        );
    }
    let runtime = match crate::tokio_runtime("provision") {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let clients = match Clients::from_env(args.region.clone(), args.endpoint_url.clone()).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("egresswatch provision: {e}");
                return ExitCode::FAILURE;
            }
        };
        // No spec file: the spec the stack was built with, as its VPC records it; a new stack
        // gets the defaults.
        let spec = match given {
            Some(s) => s,
            None => match provision::recorded_spec(&clients, &args.stack).await {
                Ok(Some(s)) => {
                    // Only where it decides what is changed; elsewhere it is noise.
                    if matches!(args.command, Sub::Up { .. } | Sub::Plan { .. }) {
                        eprintln!("egresswatch provision: no --spec given: using the spec recorded with stack {}", args.stack);
                    }
                    s
                }
                Ok(None) => StackSpec::default(),
                Err(e) => {
                    eprintln!("egresswatch provision: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        // On a terminal, the long waits (NAT gateways, Studio domains) turn a spinner with the
        // time waited; every other line, and everything off a terminal, is printed as it is.
        let spinner = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            if let Ok(style) = indicatif::ProgressStyle::with_template("  {spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        let progress = |line: &str| match &spinner {
            Some(bar) if line.starts_with("waiting") => bar.set_message(line.to_string()),
            Some(bar) => bar.println(format!("  {line}")),
            None => eprintln!("  {line}"),
        };
        let result = match args.command {
            Sub::Init => unreachable!("handled above"),
            Sub::Policies { .. } => clients.caller().await.map(|(account, partition)| {
                print_policies(&spec, &args.stack, &partition, &clients.region, &account, json)
            }),
            Sub::Plan { detailed_exitcode } => provision::reconcile(&clients, &spec, &args.stack, Mode::Plan, progress).await.map(|(changes, _)| {
                if json {
                    crate::print_json(&serde_json::json!({"stack": args.stack, "changes": changes_json(&changes)}));
                } else if changes.is_empty() {
                    println!("stack {}: no changes; the account matches the spec", args.stack);
                } else {
                    println!("stack {}: `up` would change {}:", args.stack, summary(&changes, false));
                    print_changes(&changes);
                }
                if detailed_exitcode && !changes.is_empty() { ExitCode::from(2) } else { ExitCode::SUCCESS }
            }),
            Sub::Status => provision::reconcile(&clients, &spec, &args.stack, Mode::Plan, progress).await.map(|(changes, _)| {
                let security = changes.iter().filter(|c| c.security).count();
                if !provision::stack_exists(&changes) {
                    // A mistyped --stack or another region: nothing to repair, and no
                    // invitation to create a billable NAT gateway by accident.
                    if json {
                        crate::print_json(&serde_json::json!({"stack": args.stack, "region": clients.region, "found": false}));
                    } else {
                        println!("stack {} not found in {} (no VPC carries {}={})", args.stack, clients.region, provision::STACK_TAG, args.stack);
                    }
                    return ExitCode::from(STACK_NOT_FOUND);
                }
                if json {
                    crate::print_json(&serde_json::json!({
                        "stack": args.stack,
                        "found": true,
                        "in_spec": changes.is_empty(),
                        "security_differences": security,
                        "differences": changes_json(&changes),
                    }));
                } else if changes.is_empty() {
                    println!("stack {}: in spec", args.stack);
                } else {
                    println!("stack {}: {} difference(s) from the spec, {security} of them security-relevant:", args.stack, changes.len());
                    print_changes(&changes);
                    println!("run `egresswatch provision up` to repair");
                }
                if changes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(3) }
            }),
            Sub::Up { yes } => {
                if !yes {
                    // The plan first, then a yes typed back, as Terraform's apply asks.
                    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("egresswatch provision: up changes stack {} in {}; pass --yes to apply without asking when stdin is not a terminal (`plan` shows the changes)", args.stack, clients.region);
                        return ExitCode::from(2);
                    }
                    match provision::reconcile(&clients, &spec, &args.stack, Mode::Plan, |_| {}).await {
                        Ok((changes, _)) if changes.is_empty() => {
                            println!("stack {}: already in spec; nothing to change", args.stack);
                            return ExitCode::SUCCESS;
                        }
                        Ok((changes, _)) => {
                            println!("stack {} in {}: `up` will change {}:", args.stack, clients.region, summary(&changes, false));
                            print_changes(&changes);
                        }
                        Err(e) => {
                            eprintln!("egresswatch provision: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                    eprint!("type yes to apply: ");
                    let mut answer = String::new();
                    if std::io::stdin().read_line(&mut answer).is_err() || answer.trim() != "yes" {
                        eprintln!("egresswatch provision: not confirmed; nothing was changed");
                        return ExitCode::from(2);
                    }
                }
                let started = std::time::Instant::now();
                provision::reconcile(&clients, &spec, &args.stack, Mode::Apply, progress).await.map(|(changes, _)| {
                    let calls = clients.calls.calls();
                    let mutating = clients.calls.mutating();
                    let seconds = started.elapsed().as_secs_f64();
                    if json {
                        crate::print_json(&serde_json::json!({
                            "stack": args.stack,
                            "changes": changes_json(&changes),
                            "calls": calls,
                            "mutating_calls": mutating,
                            "seconds": seconds,
                        }));
                    } else if changes.is_empty() {
                        println!("stack {}: already in spec; no change made ({calls} read calls, {seconds:.1}s)", args.stack);
                    } else {
                        println!("stack {}: {} ({mutating} AWS calls that change something, {calls} in all, {seconds:.1}s)", args.stack, summary(&changes, true));
                    }
                    ExitCode::SUCCESS
                })
            }
            Sub::Outputs => provision::reconcile(&clients, &spec, &args.stack, Mode::Plan, |_| {}).await.map(|(changes, out)| {
                if !provision::stack_exists(&changes) {
                    eprintln!("egresswatch provision: stack {} not found in {}", args.stack, clients.region);
                    return ExitCode::from(STACK_NOT_FOUND);
                }
                match serde_json::to_string_pretty(&out) {
                    Ok(text) => {
                        println!("{text}");
                        if !changes.is_empty() {
                            eprintln!("egresswatch provision: stack {} differs from the spec in {} way(s); `provision status` says how", args.stack, changes.len());
                        }
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("egresswatch provision: {e}");
                        ExitCode::FAILURE
                    }
                }
            }),
            Sub::Unlock => provision::lock::unlock(&clients, &args.stack).await.map(|removed| {
                if json {
                    crate::print_json(&serde_json::json!({"stack": args.stack, "removed": removed}));
                } else if removed {
                    println!("stack {}: lock removed", args.stack);
                } else {
                    println!("stack {}: not locked", args.stack);
                }
                ExitCode::SUCCESS
            }),
            Sub::Down(d) => {
                let mut opts = provision::DownOptions {
                    delete_logs: d.delete_logs,
                    delete_home_data: d.delete_home_data,
                    dry_run: true,
                };
                if !d.dry_run && !d.yes {
                    // The plan of destruction first, then the stack's name typed back.
                    if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                        eprintln!("egresswatch provision: down deletes stack {}; pass --yes to confirm when stdin is not a terminal (or --dry-run to see what it would delete)", args.stack);
                        return ExitCode::from(2);
                    }
                    match provision::down(&clients, &args.stack, opts, |_| {}).await {
                        Ok(would) if would.is_empty() => {
                            println!("stack {}: nothing to delete", args.stack);
                            return ExitCode::SUCCESS;
                        }
                        Ok(would) => {
                            println!("stack {}: `down` will delete {} resource(s):", args.stack, would.len());
                            for w in &would {
                                println!("  - {w}");
                            }
                        }
                        Err(e) => {
                            eprintln!("egresswatch provision: {e}");
                            return ExitCode::FAILURE;
                        }
                    }
                    eprint!("type the stack's name ({}) to delete it: ", args.stack);
                    let mut answer = String::new();
                    if std::io::stdin().read_line(&mut answer).is_err() || answer.trim() != args.stack {
                        eprintln!("egresswatch provision: not confirmed; nothing was deleted");
                        return ExitCode::from(2);
                    }
                }
                opts.dry_run = d.dry_run;
                provision::down(&clients, &args.stack, opts, progress).await.map(|deleted| {
                    if json {
                        let list = if d.dry_run { "would_delete" } else { "deleted" };
                        crate::print_json(&serde_json::json!({
                            "stack": args.stack,
                            "dry_run": d.dry_run,
                            list: deleted,
                            "flow_log_group_kept": !d.delete_logs,
                        }));
                        return ExitCode::SUCCESS;
                    }
                    let kept = if d.delete_logs { String::new() } else { "; the flow-log group is kept (--delete-logs deletes it)".to_string() };
                    if deleted.is_empty() {
                        println!("stack {}: nothing to delete{kept}", args.stack);
                    } else if d.dry_run {
                        println!("stack {}: `down` would delete {} resource(s):", args.stack, deleted.len());
                        for w in &deleted {
                            println!("  - {w}");
                        }
                    } else {
                        println!("stack {}: deleted {} resource(s){kept}", args.stack, deleted.len());
                    }
                    ExitCode::SUCCESS
                })
            }
        };
        if let Some(bar) = &spinner {
            bar.finish_and_clear();
        }
        result.unwrap_or_else(|e| {
            eprintln!("egresswatch provision: {e}");
            ExitCode::FAILURE
        })
    })
}
