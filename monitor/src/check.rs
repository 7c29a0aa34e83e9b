//! `egresswatch monitor --check`: everything the daemon would need at start, tried without
//! starting it — the config, every file it names, the network description, the state dir,
//! the source (the flow log's format and a read, with the permissions they need) and each
//! alert sink — each reported on a line of its own, as `promtool check config` and
//! `vector validate` do. Reads only: nothing is written to AWS, the queue or the sinks.

use std::time::Duration;

use crate::config::Config;

/// One thing checked: what, and how it went.
pub struct Checked {
    pub what: String,
    pub outcome: Result<String, String>,
}

fn checked(what: impl Into<String>, outcome: Result<String, String>) -> Checked {
    Checked {
        what: what.into(),
        outcome,
    }
}

/// Every check of `config` (one stack's); `clients` when its source reads from AWS.
pub async fn run(config: &Config, clients: Option<crate::aws::Clients>) -> Vec<Checked> {
    let mut out = Vec::new();
    out.push(checked(
        "config",
        Ok(match &config.path {
            Some(p) => format!("{} reads and validates", p.display()),
            None => "flags only".into(),
        }),
    ));
    for list in config
        .rules
        .denylists
        .iter()
        .chain(&config.rules.resolver_lists)
    {
        out.push(checked(
            format!("list {}", list.display()),
            std::fs::metadata(list)
                .map(|m| format!("{} bytes", m.len()))
                .map_err(|e| e.to_string()),
        ));
    }
    out.push(checked(
        "rules",
        crate::rules::build(&config.rules).map(|r| format!("{} rules on", r.len())),
    ));
    let periods = config.rules.learning_periods();
    if !periods.is_empty() {
        let each: Vec<String> = periods
            .iter()
            .map(|(rule, s)| format!("{rule} {}", crate::config::Rules::period_text(*s)))
            .collect();
        let warm = match config.source.as_str() {
            "cloudwatch" => config.cloudwatch.history_seconds,
            "s3" => config.s3.history_seconds,
            _ => 0,
        };
        out.push(checked(
            "learning",
            Ok(format!(
                "{}: each keeps what it sees and judges it when its period (event time) ends{}",
                each.join(", "),
                if warm > 0 {
                    format!(
                        "; a first start learns from {} of retained flow logs first",
                        crate::config::Rules::period_text(warm)
                    )
                } else {
                    String::new()
                }
            )),
        ));
    }
    let describe = |t: &crate::topology::Topology| {
        format!(
            "VPC {:?}, {} NAT interface(s), {} S3 range(s)",
            t.vpc_cidrs
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>(),
            t.nat_interfaces.len(),
            t.s3_cidrs.len()
        )
    };
    let m = crate::metrics::Metrics::new();
    let network = crate::daemon::resolve_topology(config, clients.as_ref(), &m)
        .await
        .map(|(t, from_tags)| {
            if from_tags {
                format!("from the stack's tags: {}", describe(&t))
            } else {
                describe(&t)
            }
        });
    out.push(checked("network", network));
    // Without taking the daemon's lock: a running daemon holds it.
    out.push(checked(
        "state dir",
        crate::checkpoint::probe_writable(&config.state_dir, "check")
            .map(|()| format!("{} is writable", config.state_dir.display())),
    ));
    out.extend(source(config, clients).await);
    out.extend(sinks(config).await);
    out
}

async fn source(config: &Config, clients: Option<crate::aws::Clients>) -> Vec<Checked> {
    let what = format!("source {}", config.source);
    if let Some(path) = config.source.strip_prefix("file:") {
        return vec![checked(
            what,
            std::fs::File::open(path)
                .map(|_| "readable".to_string())
                .map_err(|e| format!("{path}: {e}")),
        )];
    }
    if config.source == "stdin" {
        return vec![checked(what, Ok("read from standard input".into()))];
    }
    let Some(clients) = clients else {
        return vec![checked(what, Err("no AWS clients".into()))];
    };
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let cp = crate::checkpoint::Checkpoint::default();
    let found = if config.source == "s3" {
        match crate::source::s3::S3Source::new(config, &clients, &cp, metrics) {
            Ok(s) => s.check().await,
            Err(e) => vec![("settings".to_string(), Err(e))],
        }
    } else {
        match crate::source::cloudwatch::CloudWatchSource::new(config, clients, &cp, metrics) {
            Ok(s) => s.check().await,
            Err(e) => vec![("settings".to_string(), Err(e))],
        }
    };
    found
        .into_iter()
        .map(|(w, o)| checked(format!("{what}: {w}"), o))
        .collect()
}

/// Each sink: reachable, without sending it anything it would take for an alert.
async fn sinks(config: &Config) -> Vec<Checked> {
    let mut out = Vec::new();
    let a = &config.alerts;
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
    {
        Ok(h) => h,
        Err(e) => return vec![checked("alert sinks", Err(e.to_string()))],
    };
    if a.stdout {
        out.push(checked("sink stdout", Ok("one JSON line per alert".into())));
    }
    if let Some(url) = &a.alertmanager_url {
        // Alertmanager's own health endpoint.
        let health = format!("{}/-/healthy", url.trim_end_matches('/'));
        let r = http.get(&health).send().await;
        out.push(checked(
            format!("sink alertmanager {url}"),
            match r {
                Ok(r) if r.status().is_success() => Ok("healthy (/-/healthy)".into()),
                Ok(r) => Err(format!("{health} answered {}", r.status())),
                Err(e) => Err(format!("{health}: {e}")),
            },
        ));
    }
    if let Some(url) = &a.webhook_url {
        // Any HTTP answer to HEAD shows the endpoint is there; a POST would be an alert.
        let r = http.head(url).send().await;
        out.push(checked(
            format!("sink webhook {url}"),
            r.map(|r| format!("reachable (HEAD answered {})", r.status()))
                .map_err(|e| format!("{url}: {e}")),
        ));
    }
    if a.desktop {
        out.push(checked(
            "sink desktop",
            std::env::var("DBUS_SESSION_BUS_ADDRESS")
                .map(|v| format!("session bus {v}"))
                .map_err(|_| "no D-Bus session bus (DBUS_SESSION_BUS_ADDRESS is not set)".into()),
        ));
    }
    out.push(checked(
        "findings store",
        Ok(if config.findings.keep_days == 0 {
            "off (findings.keep-days = 0)".into()
        } else {
            format!(
                "{} for {} days",
                crate::findings::dir(&config.state_dir).display(),
                config.findings.keep_days
            )
        }),
    ));
    out
}
