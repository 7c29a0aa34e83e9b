//! Configuration reloads while the daemon runs: on SIGHUP ([`request`]), or when the config
//! file, a deny list, a resolver list or the outputs file changes. The new configuration is
//! read and every part of it built before anything is swapped in, so a bad file keeps the
//! running configuration whole and says why. What a running pipeline can take (the rules and
//! their lists, suppressions, workloads, the network) takes effect at once, the rules keeping
//! what they learnt; keys that shape the process (listen address, state dir, source, alert
//! sinks) are named in a warning and take effect at the next start.
//!
//! `egresswatch_config_last_reload_successful` and
//! `egresswatch_config_last_reload_success_timestamp_seconds` follow Prometheus's own names.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::Config;
use crate::daemon::unix_now;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Reloads asked for since start: each stack's loop compares it with the count it has seen,
/// so one SIGHUP reloads every stack.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Asks every running pipeline to reload its configuration (what SIGHUP does).
/// How long the config file must stay unmodified before a change to it is read.
const CONFIG_DEBOUNCE: std::time::Duration = std::time::Duration::from_secs(1);

pub fn request() {
    REQUESTS.fetch_add(1, Ordering::SeqCst);
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

pub struct Reloader {
    /// What the pipeline runs with now.
    running: Config,
    /// The config file as last read (for one stack of several: its share), to tell which
    /// keys the file changed; None when the daemon runs from flags alone.
    from_file: Option<Config>,
    /// The files the configuration names and when each was last modified.
    stamps: Vec<(PathBuf, Option<SystemTime>)>,
    config_stamp: Option<SystemTime>,
    seen_requests: u64,
    metrics: Arc<Metrics>,
}

/// The files whose content the pipeline is built from, besides the config file.
fn watched(config: &Config) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut paths: Vec<PathBuf> = config.rules.denylists.clone();
    paths.extend(config.rules.resolver_lists.iter().cloned());
    if config.topology.is_none() {
        paths.extend(config.outputs_file.clone());
    }
    paths
        .into_iter()
        .map(|p| {
            let t = modified(&p);
            (p, t)
        })
        .collect()
}

/// Reads the config file again, as the running pipeline would have it: one stack of several
/// takes its share.
fn read(running: &Config, path: &Path) -> Result<Config, String> {
    // An editor or a deploy tool that truncates the file before writing it leaves it empty
    // for a moment, and an empty file is a valid config of defaults: never take that for
    // the team's intent.
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(format!(
            "{}: the file is empty (being rewritten?); the running configuration stays",
            path.display()
        ));
    }
    let whole = Config::from_file(path)?;
    if !running.one_of_several {
        return Ok(whole);
    }
    let entry = whole
        .stacks
        .iter()
        .find(|e| e.name == running.stack)
        .ok_or_else(|| {
            format!(
                "{}: stack `{}` is no longer in `stacks`; stop its daemon to remove it",
                path.display(),
                running.stack
            )
        })?;
    Ok(whole.for_stack(entry))
}

/// The keys of `a` and `b` that differ and that a running pipeline cannot take.
fn restart_keys(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    macro_rules! differ {
        ($($field:ident => $key:literal),* $(,)?) => {
            $( if a.$field != b.$field { keys.push($key); } )*
        };
    }
    differ!(
        listen => "listen",
        state_dir => "state-dir",
        source => "source",
        follow => "follow",
        stack => "stack",
        log_group => "log-group",
        format => "format",
        poll_interval_seconds => "poll-interval-seconds",
        checkpoint_interval_seconds => "checkpoint-interval-seconds",
        max_line_bytes => "max-line-bytes",
        max_future_skew_seconds => "max-future-skew-seconds",
        cloudwatch => "[cloudwatch]",
        s3 => "[s3]",
        stacks => "stacks",
        outputs_dir => "outputs-dir",
        alerts => "[alerts]",
        inventory_refresh_seconds => "inventory-refresh-seconds",
    );
    keys
}

impl Reloader {
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Self {
        let from_file = config.path.as_deref().and_then(|p| read(config, p).ok());
        metrics.config_last_reload_successful.set(1);
        metrics
            .config_last_reload_success_timestamp
            .set(i64::try_from(unix_now()).unwrap_or(i64::MAX));
        Reloader {
            running: config.clone(),
            from_file,
            stamps: watched(config),
            config_stamp: config.path.as_deref().and_then(modified),
            seen_requests: REQUESTS.load(Ordering::SeqCst),
            metrics,
        }
    }

    /// Reloads when asked (SIGHUP) or when a file the configuration comes from changed.
    pub fn reload_if_asked_or_changed(&mut self, p: &mut Pipeline) {
        let requests = REQUESTS.load(Ordering::SeqCst);
        let asked = requests != self.seen_requests;
        self.seen_requests = requests;
        let config_now = self.running.path.as_deref().and_then(modified);
        // A change younger than the debounce waits for the next look: a file being written
        // in several steps is read once it is still.
        let settled = config_now.is_none_or(|t| {
            SystemTime::now()
                .duration_since(t)
                .is_ok_and(|age| age >= CONFIG_DEBOUNCE)
        });
        let config_changed = config_now != self.config_stamp && settled;
        if config_changed {
            self.config_stamp = config_now;
        }
        let mut file_changed = false;
        for (path, stamp) in &mut self.stamps {
            let now = modified(path);
            if now != *stamp {
                *stamp = now;
                file_changed = true;
            }
        }
        if !(asked || config_changed || file_changed) {
            return;
        }
        let why = if asked {
            "SIGHUP"
        } else if config_changed {
            "the config file changed"
        } else {
            "a file the config names changed"
        };
        use crate::events::{Event, Reload};
        match self.reload(p) {
            Ok(later) => Reload::Done {
                reason: why,
                suppressions: self.running.suppress.len(),
                waiting_for_restart: &later,
                at_unix: unix_now(),
            }
            .emit(&self.metrics),
            Err(e) => Reload::Refused {
                reason: why,
                error: &e,
            }
            .emit(&self.metrics),
        }
    }

    /// Builds everything from the new configuration, then swaps it in. Returns the changed
    /// keys that wait for the next start.
    fn reload(&mut self, p: &mut Pipeline) -> Result<Vec<&'static str>, String> {
        let file = match self.running.path.as_deref() {
            Some(path) => Some(read(&self.running, path)?),
            None => None,
        };
        // Flags given at start stay: only what the file says of the reloadable parts is new.
        let mut next = self.running.clone();
        if let Some(f) = &file {
            next.rules = f.rules.clone();
            next.suppress = f.suppress.clone();
            next.workloads = f.workloads.clone();
            next.topology = f.topology.clone();
            if f.topology.is_none() {
                next.outputs_file = f.outputs_file.clone().or(next.outputs_file);
            }
        }
        // A network found from the stack's tags at start stays: nothing names another.
        let mut topology = if next.topology.is_none() && next.outputs_file.is_none() {
            p.topology.clone()
        } else {
            crate::daemon::topology(&next)?
        };
        let detectors = crate::rules::build(&next.rules)?;
        let suppressions = crate::suppress::Suppressions::new(&next.suppress)?;
        // The S3 ranges asked of EC2 at start are newer than those an outputs file records.
        if topology.s3_prefix_list_id.is_some()
            && topology.s3_prefix_list_id == p.topology.s3_prefix_list_id
        {
            topology.s3_cidrs = p.topology.s3_cidrs.clone();
        }
        p.topology = topology;
        p.replace_detectors(detectors);
        p.suppressions = suppressions;
        if let Ok(mut inventory) = p.inventory.write() {
            inventory.replace_configured(&next.workloads);
        }
        let later = match (&self.from_file, &file) {
            (Some(before), Some(after)) => restart_keys(before, after),
            _ => Vec::new(),
        };
        self.stamps = watched(&next);
        self.running = next;
        if file.is_some() {
            self.from_file = file;
        }
        Ok(later)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flowlog::{Decoder, Format};

    use super::*;
    use crate::alert::Router;

    fn set_modified(path: &Path, secs: u64) {
        let f = std::fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn pipeline(config: &Config, metrics: &Arc<Metrics>) -> Pipeline {
        let mut p = Pipeline::new(
            crate::daemon::topology(config).unwrap(),
            crate::rules::build(&config.rules).unwrap(),
            Router::new(&config.alerts, metrics.clone()),
            metrics.clone(),
        );
        p.suppressions = crate::suppress::Suppressions::new(&config.suppress).unwrap();
        p
    }

    const FORMAT: &str = "interface-id srcaddr dstaddr dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr end";

    #[tokio::test]
    async fn changed_deny_lists_are_reloaded_and_bad_ones_refused() {
        let dir = std::env::temp_dir().join(format!("ew-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let deny = dir.join("deny.txt");
        std::fs::write(&deny, "192.0.2.0/24\n").unwrap();
        let toml = format!(
            "state-dir = \"{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[rules]\ndenylists = [\"{}\"]\n[alerts]\nstdout = false\n",
            dir.display(),
            deny.display()
        );
        let config = Config::from_toml(&toml, "t.toml").unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = pipeline(&config, &metrics);
        let line =
            b"eni-nat 10.0.1.5 10.0.0.220 443 6 10 ACCEPT OK 10.0.1.5 203.0.113.5 1764150060";
        let denied = || {
            metrics
                .findings
                .with_label_values(&["denylisted_destination", "critical"])
                .get()
        };
        let mut reloader = Reloader::new(&config, metrics.clone());
        let mut decoder = Decoder::pinned(Format::parse(FORMAT).unwrap());
        p.line(&mut decoder, line, &"t");
        assert_eq!(denied(), 0);

        std::fs::write(&deny, "203.0.113.0/24\n").unwrap();
        set_modified(&deny, 1_000);
        reloader.reload_if_asked_or_changed(&mut p);
        p.line(&mut decoder, line, &"t");
        assert_eq!(denied(), 1);
        assert_eq!(metrics.config_last_reload_successful.get(), 1);

        // A broken list is refused; the working rules stay.
        std::fs::write(&deny, "banana\n").unwrap();
        set_modified(&deny, 2_000);
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);
        let other =
            b"eni-nat 10.0.1.6 10.0.0.220 443 6 10 ACCEPT OK 10.0.1.6 203.0.113.9 1764150060";
        p.line(&mut decoder, other, &"t");
        assert_eq!(denied(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn suppressions_are_counted_not_alerted_and_reload_with_the_config() {
        let dir = std::env::temp_dir().join(format!("ew-suppress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("monitor.toml");
        let base = format!(
            "state-dir = \"{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[alerts]\nstdout = false\n",
            dir.display()
        );
        let write = |extra: &str, secs: u64| {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            set_modified(&path, secs);
        };
        write(
            "[[suppress]]\nreason = \"partner SFTP, SEC-42\"\nremote = \"198.51.100.0/24\"\nport = 22\n",
            1_000,
        );
        let config = Config::from_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = pipeline(&config, &metrics);
        let mut reloader = Reloader::new(&config, metrics.clone());
        let mut decoder = Decoder::pinned(Format::parse(FORMAT).unwrap());
        let ssh = |t: u64| {
            format!("eni-nat 10.0.1.5 10.0.0.220 22 6 10 ACCEPT OK 10.0.1.5 198.51.100.22 {t}")
        };
        let counts = || {
            (
                metrics
                    .findings_suppressed
                    .with_label_values(&["non_https_egress"])
                    .get(),
                metrics
                    .findings
                    .with_label_values(&["non_https_egress", "high"])
                    .get(),
            )
        };
        p.line(&mut decoder, ssh(1_764_150_060).as_bytes(), &"t");
        assert_eq!(
            counts(),
            (1, 0),
            "suppressed: counted as such, not as a finding"
        );
        assert!(p.router.take().alerts.is_empty());

        // A broken suppression is refused and the running ones stay.
        write("[[suppress]]\nreason = \"x\"\nrule = \"nope\"\n", 2_000);
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);
        p.line(&mut decoder, ssh(1_764_150_120).as_bytes(), &"t");
        assert_eq!(counts(), (2, 0));

        // Removed from the file: alerted again, without a restart.
        write("", 3_000);
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 1);
        p.line(&mut decoder, ssh(1_764_150_180).as_bytes(), &"t");
        assert_eq!(counts(), (2, 1));
        assert_eq!(p.router.take().alerts.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A config file caught between its truncation and its rewrite is not a config: the
    /// running one (its suppression) stays, and the refusal is on the metric.
    #[tokio::test]
    async fn an_emptied_config_file_is_refused_and_a_fresh_change_waits_to_settle() {
        let dir = std::env::temp_dir().join(format!("ew-emptied-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("monitor.toml");
        let full = format!(
            "state-dir = \"{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[alerts]\nstdout = false\n[[suppress]]\nreason = \"r\"\nport = 22\n",
            dir.display()
        );
        std::fs::write(&path, &full).unwrap();
        set_modified(&path, 1_000);
        let config = Config::from_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = pipeline(&config, &metrics);
        let mut reloader = Reloader::new(&config, metrics.clone());
        std::fs::write(&path, "").unwrap();
        set_modified(&path, 2_000);
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);
        assert!(!p.suppressions.is_empty(), "the running config stays");
        // Written just now: not read until it has been still for a moment.
        std::fs::write(&path, full.replace("port = 22", "port = 23")).unwrap();
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);
        std::thread::sleep(CONFIG_DEBOUNCE);
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 1);
        assert!(!p.suppressions.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn sighup_reloads_the_config_file_and_names_the_keys_that_wait_for_a_restart() {
        let dir = std::env::temp_dir().join(format!("ew-sighup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("monitor.toml");
        let network = "[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[alerts]\nstdout = false\n";
        let state = format!("state-dir = \"{}\"\n", dir.display());
        std::fs::write(&path, format!("{state}{network}")).unwrap();
        let config = Config::from_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = pipeline(&config, &metrics);
        let mut reloader = Reloader::new(&config, metrics.clone());
        // Written within the same second: only SIGHUP tells the daemon, not the file's time.
        let stamp = modified(&path);
        std::fs::write(
            &path,
            format!("{state}listen = \"127.0.0.1:19999\"\n{network}[[suppress]]\nreason = \"r\"\nport = 22\n"),
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_modified(stamp.unwrap()).unwrap();
        reloader.reload_if_asked_or_changed(&mut p);
        assert!(p.suppressions.is_empty(), "not reloaded without a reason");
        request();
        reloader.reload_if_asked_or_changed(&mut p);
        assert!(!p.suppressions.is_empty());
        assert_eq!(metrics.config_last_reload_successful.get(), 1);
        let before = reloader.from_file.clone().unwrap();
        let mut changed = before.clone();
        changed.listen = "127.0.0.1:1".parse().unwrap();
        changed.poll_interval_seconds += 1;
        assert_eq!(
            restart_keys(&before, &changed),
            vec!["listen", "poll-interval-seconds"]
        );
        // A file that no longer parses: the metric says so, the running config stays.
        std::fs::write(&path, "listen = 12\n").unwrap();
        request();
        reloader.reload_if_asked_or_changed(&mut p);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);
        assert!(!p.suppressions.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
