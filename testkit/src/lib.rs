//! The one way tests start a real service: each service is installed if missing, started on
//! a free port on 127.0.0.1, waited for, and stopped when its handle is dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running service process, killed on drop.
pub struct Service {
    name: &'static str,
    child: Child,
    port: u16,
}

impl Service {
    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The checkout the tests run from. Read at run time (cargo sets CARGO_MANIFEST_DIR for each
/// test it runs), because a build cache shared between checkouts would otherwise hand one
/// checkout's test binaries another checkout's path.
fn workspace_root() -> PathBuf {
    let package = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    package
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .unwrap_or(&package)
        .to_path_buf()
}

fn venv() -> PathBuf {
    match std::env::var_os("EGRESSWATCH_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/egresswatch-venv"),
    }
}

/// A program of the test virtual environment (moto server, its python with jsonschema),
/// installed by scripts/install-test-services when missing.
fn venv_program(name: &str) -> PathBuf {
    let venv = venv();
    let bin = venv.join("bin").join(name);
    if !bin.exists() {
        let status = Command::new(workspace_root().join("scripts/install-test-services"))
            .env("EGRESSWATCH_VENV", &venv)
            .status()
            .expect("run scripts/install-test-services");
        assert!(status.success(), "installing the test services failed");
    }
    bin
}

/// The test environment's Python with pyarrow, an independent Parquet writer for the S3 tests
/// (installed by scripts/install-test-services when missing).
pub fn python_with_pyarrow() -> PathBuf {
    let python = venv_program("python");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import pyarrow"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&python) {
        let status = Command::new(workspace_root().join("scripts/install-test-services"))
            .env("EGRESSWATCH_VENV", venv())
            .status()
            .expect("run scripts/install-test-services");
        assert!(
            status.success() && has(&python),
            "installing pyarrow failed"
        );
    }
    python
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

fn wait_http(port: u16, path: &str, timeout: Duration, child: &mut Child, name: &str) {
    if let Err(e) = try_wait_http(port, path, timeout, child, name) {
        panic!("{e}");
    }
}

/// [`wait_http`] that says why instead of panicking, for a service worth a second try.
fn try_wait_http(
    port: u16,
    path: &str,
    timeout: Duration,
    child: &mut Child,
    name: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{name} exited before it was ready: {status}"));
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{name} did not answer on 127.0.0.1:{port} within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a moto server (the AWS emulator), installing it first if it is missing.
pub fn moto() -> Service {
    let bin = venv_program("moto_server");
    let port = free_port();
    let mut child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    wait_http(
        port,
        "/moto-api/",
        Duration::from_secs(30),
        &mut child,
        "moto server",
    );
    Service {
        name: "moto",
        child,
        port,
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "egresswatch-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&d).expect("create a temporary directory");
    d
}

fn ensure_installed(bin: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        let status = Command::new(workspace_root().join("scripts/install-test-services"))
            .status()
            .expect("run scripts/install-test-services");
        assert!(status.success(), "installing test services failed");
    }
}

/// A webhook receiver (a small Python HTTP server) keeping every POSTed alert.
pub struct WebhookReceiver {
    pub service: Service,
    dir: PathBuf,
}

impl WebhookReceiver {
    /// Where to POST.
    pub fn url(&self) -> String {
        format!("{}/hook", self.service.endpoint())
    }

    /// Every body received so far, in the order they arrived.
    pub fn received(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("received.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["body"].clone())
            .collect()
    }

    /// While `down`, every POST gets 503.
    pub fn set_down(&self, down: bool) {
        let flag = self.dir.join("fail");
        if down {
            std::fs::write(flag, b"").expect("write the receiver's fail flag");
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }
}

/// Starts a webhook receiver with the machine's python3.
pub fn webhook_receiver() -> WebhookReceiver {
    let dir = temp_dir("webhook");
    let log = dir.join("receiver.log");
    // A port taken between choosing it and binding it, or an interpreter that fails to
    // start under load, is worth another try; its log says which.
    let mut failures = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut child = Command::new("python3")
            .arg(workspace_root().join("testkit/webhook_receiver.py"))
            .arg(port.to_string())
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("create the receiver's log"))
            .spawn()
            .expect("start python3 webhook_receiver.py");
        match try_wait_http(
            port,
            "/",
            Duration::from_secs(30),
            &mut child,
            "webhook receiver",
        ) {
            Ok(()) => {
                return WebhookReceiver {
                    service: Service {
                        name: "webhook",
                        child,
                        port,
                    },
                    dir,
                }
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                failures.push(format!(
                    "{e}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default().trim()
                ));
            }
        }
    }
    panic!("webhook receiver did not start: {failures:#?}");
}

/// Starts a real Alertmanager (Debian package) that keeps what it receives.
pub fn alertmanager() -> Service {
    ensure_installed("prometheus-alertmanager");
    let dir = temp_dir("alertmanager");
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: keep\n  group_by: ['rule']\nreceivers:\n  - name: keep\n",
    )
    .expect("write config");
    let port = free_port();
    let mut child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus-alertmanager");
    wait_http(
        port,
        "/-/ready",
        Duration::from_secs(30),
        &mut child,
        "alertmanager",
    );
    Service {
        name: "alertmanager",
        child,
        port,
    }
}

/// Starts a real Prometheus (Debian package) scraping `targets` (host:port) every second as
/// job `egresswatch`, evaluating `rule_files` every second and sending alerts to
/// `alertmanager` (a base URL), if given.
pub fn prometheus(
    targets: &[String],
    rule_files: &[PathBuf],
    alertmanager: Option<&str>,
) -> Service {
    ensure_installed("prometheus");
    let dir = temp_dir("prometheus");
    let quote = |v: &[String]| {
        v.iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rules: Vec<String> = rule_files.iter().map(|r| r.display().to_string()).collect();
    let mut config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\nscrape_configs:\n  - job_name: egresswatch\n    static_configs:\n      - targets: [{}]\n",
        quote(&rules),
        quote(targets)
    );
    if let Some(am) = alertmanager {
        let host = am.trim_start_matches("http://").trim_end_matches('/');
        config.push_str(&format!(
            "alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['{host}']\n"
        ));
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, config).expect("write config");
    let port = free_port();
    let mut child = Command::new("prometheus")
        .arg(format!("--config.file={}", path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    wait_http(
        port,
        "/-/ready",
        Duration::from_secs(60),
        &mut child,
        "prometheus",
    );
    Service {
        name: "prometheus",
        child,
        port,
    }
}

/// A layer in front of moto that behaves as real AWS does where moto does not (see
/// testkit/aws_behaviour.py for each behaviour and the AWS document or report it models).
pub struct AwsBehaviour {
    pub service: Service,
    dir: PathBuf,
}

impl AwsBehaviour {
    /// Point AWS clients here instead of at moto.
    pub fn endpoint(&self) -> String {
        self.service.endpoint()
    }

    /// What the layer injected so far, one JSON object per refusal or emulated answer.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many times `behaviour` was injected for `action`.
    pub fn injected(&self, behaviour: &str, action: &str) -> usize {
        self.journal()
            .iter()
            .filter(|j| j["behaviour"] == behaviour && j["action"] == action)
            .count()
    }
}

/// Starts the AWS behaviour layer in front of `moto` with `behaviours` switched on, e.g.
/// `{"eventual-consistency": {"misses": 2}, "already-associated": {}}`.
pub fn aws_behaviour(moto: &Service, behaviours: &serde_json::Value) -> AwsBehaviour {
    aws_behaviour_at(&moto.endpoint(), behaviours)
}

/// [`aws_behaviour`] in front of an emulator known by its endpoint (`http://127.0.0.1:PORT`).
pub fn aws_behaviour_at(upstream: &str, behaviours: &serde_json::Value) -> AwsBehaviour {
    let dir = temp_dir("aws-behaviour");
    let port = free_port();
    let mut child = Command::new("python3")
        .arg(workspace_root().join("testkit/aws_behaviour.py"))
        .arg(port.to_string())
        .arg(upstream)
        .arg(&dir)
        .arg(behaviours.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("layer.log")).expect("create the layer's log"))
        .spawn()
        .expect("start python3 aws_behaviour.py");
    wait_http(
        port,
        "/moto-api/",
        Duration::from_secs(30),
        &mut child,
        "AWS behaviour layer",
    );
    AwsBehaviour {
        service: Service {
            name: "aws-behaviour",
            child,
            port,
        },
        dir,
    }
}

/// Starts the `fault` proxy (fault-cli, installed if missing) on a free port in front of
/// `upstream` (host:port) with `faults` (a JSON array of fault-cli fault specs) active from
/// the start. Each connection's fate is journalled as JSON lines to `Service::journal`.
pub fn fault_proxy(upstream: &str, faults: &str) -> (Service, PathBuf) {
    let tools = match std::env::var_os("EGRESSWATCH_TOOLS") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/egresswatch-tools"),
    };
    let bin = tools.join("bin/fault");
    if !bin.exists() {
        let status = Command::new(workspace_root().join("scripts/install-test-services"))
            .status()
            .expect("run scripts/install-test-services");
        assert!(status.success(), "installing fault-cli failed");
    }
    let dir = temp_dir("fault");
    let port = free_port();
    let run = format!(
        r#"{{"schema_version": 1, "name": "egresswatch test", "proxies": [{{"name": "upstream", "protocol": "tcp", "listen": "127.0.0.1:{port}", "upstream": "{upstream}"}}], "phases": [{{"name": "faulty", "proxies": [{{"proxy": "upstream", "faults": {faults}}}]}}]}}"#
    );
    let file = dir.join("run.json");
    std::fs::write(&file, run).expect("write the fault run");
    let journal = dir.join("journal.ndjson");
    let child = Command::new(&bin)
        .args(["--output", "json", "run"])
        .arg(&file)
        .arg("--journal")
        .arg(&journal)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "fault proxy did not listen");
        std::thread::sleep(Duration::from_millis(100));
    }
    (
        Service {
            name: "fault",
            child,
            port,
        },
        journal,
    )
}

/// A private D-Bus session bus with an `org.freedesktop.Notifications` server on it that
/// writes each notification it receives as a JSON line to `log`.
pub struct NotificationBus {
    pub address: String,
    pub log: PathBuf,
    bus: Child,
    server: Child,
}

impl Drop for NotificationBus {
    fn drop(&mut self) {
        for c in [&mut self.server, &mut self.bus] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

const NOTIFICATION_SERVER: &str = r#"
import json, sys
import dbus, dbus.service
from dbus.mainloop.glib import DBusGMainLoop
from gi.repository import GLib

log = open(sys.argv[1], "a", buffering=1)

class Server(dbus.service.Object):
    def __init__(self, bus):
        super().__init__(bus, "/org/freedesktop/Notifications")
        self.next_id = 0

    @dbus.service.method("org.freedesktop.Notifications", in_signature="susssasa{sv}i", out_signature="u")
    def Notify(self, app, replaces, icon, summary, body, actions, hints, timeout):
        self.next_id += 1
        urgency = int(hints["urgency"]) if "urgency" in hints else None
        log.write(json.dumps({"app": str(app), "summary": str(summary), "body": str(body), "urgency": urgency}) + "\n")
        return self.next_id

    @dbus.service.method("org.freedesktop.Notifications", out_signature="as")
    def GetCapabilities(self):
        return ["body"]

    @dbus.service.method("org.freedesktop.Notifications", out_signature="ssss")
    def GetServerInformation(self):
        return ["egresswatch-test", "egresswatch", "1", "1.2"]

    @dbus.service.method("org.freedesktop.Notifications", in_signature="u")
    def CloseNotification(self, nid):
        pass

DBusGMainLoop(set_as_default=True)
bus = dbus.SessionBus()
name = dbus.service.BusName("org.freedesktop.Notifications", bus)
server = Server(bus)
log.write(json.dumps({"ready": True}) + "\n")
GLib.MainLoop().run()
"#;

/// Starts the bus and the notification server, and waits until the server owns its name.
pub fn notification_bus() -> NotificationBus {
    ensure_installed("dbus-daemon");
    let dir = temp_dir("dbus");
    let address = format!("unix:path={}", dir.join("bus").display());
    let bus = Command::new("dbus-daemon")
        .args(["--session", "--nofork", &format!("--address={address}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dbus-daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("bus").exists() {
        assert!(
            Instant::now() < deadline,
            "dbus-daemon did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let script = dir.join("notifications.py");
    std::fs::write(&script, NOTIFICATION_SERVER).expect("write the notification server");
    let log = dir.join("notifications.jsonl");
    // Debian's python3, which has the dbus and gi modules.
    let server = Command::new("/usr/bin/python3")
        .arg(&script)
        .arg(&log)
        .env("DBUS_SESSION_BUS_ADDRESS", &address)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the notification server");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if std::fs::read_to_string(&log)
            .map(|t| t.contains("\"ready\""))
            .unwrap_or(false)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the notification server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    NotificationBus {
        address,
        log,
        bus,
        server,
    }
}

/// Checks `documents` against the JSON Schema at `schema` (a path in the workspace) with the
/// `jsonschema` Python package (Draft 2020-12), an implementation independent of ours.
/// Returns each violation with the document's index.
pub fn schema_violations(schema: &str, documents: &[serde_json::Value]) -> Vec<String> {
    let python = venv_program("python");
    let dir = temp_dir("schema");
    let docs = dir.join("documents.json");
    std::fs::write(
        &docs,
        serde_json::Value::from(documents.to_vec()).to_string(),
    )
    .expect("write the documents");
    let out = Command::new(&python)
        .arg("-c")
        .arg(
            "import json, sys, jsonschema\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema.Draft202012Validator.check_schema(schema)\n\
             v = jsonschema.Draft202012Validator(schema)\n\
             for i, d in enumerate(json.load(open(sys.argv[2]))):\n\
             \x20   for e in v.iter_errors(d):\n\
             \x20       print(f'document {i}: {list(e.absolute_path)}: {e.message}')\n",
        )
        .arg(workspace_root().join(schema))
        .arg(&docs)
        .output()
        .expect("run python with jsonschema");
    assert!(
        out.status.success(),
        "the schema check failed to run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// A proxy in front of moto that counts CloudWatch Logs calls by operation and throttles those
/// over AWS's request quotas (see testkit/cloudwatch_quota.py and the quotas page it names).
pub struct CloudWatchQuota {
    pub service: Service,
    dir: PathBuf,
}

impl CloudWatchQuota {
    /// Point the clients under test here instead of at moto.
    pub fn endpoint(&self) -> String {
        self.service.endpoint()
    }

    fn counts(&self, key: &str) -> std::collections::BTreeMap<String, u64> {
        let text = std::fs::read_to_string(self.dir.join("calls.json")).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        v[key]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Calls that reached the proxy so far, by operation (throttled ones included).
    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        self.counts("calls")
    }

    /// Calls answered with ThrottlingException, by operation.
    pub fn throttled(&self) -> std::collections::BTreeMap<String, u64> {
        self.counts("throttled")
    }

    /// One JSON object per injected throttle, naming the quota's source.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

/// Starts the quota proxy in front of `moto` with `quotas` (calls per second by operation,
/// e.g. `{"GetLogEvents": 10}`, AWS's quota in its strictest regions).
pub fn cloudwatch_quota(moto: &Service, quotas: &serde_json::Value) -> CloudWatchQuota {
    let dir = temp_dir("cloudwatch-quota");
    let port = free_port();
    let mut child = Command::new("python3")
        .arg(workspace_root().join("testkit/cloudwatch_quota.py"))
        .arg(port.to_string())
        .arg(moto.endpoint())
        .arg(&dir)
        .arg(quotas.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("proxy.log")).expect("create the proxy's log"))
        .spawn()
        .expect("start python3 cloudwatch_quota.py");
    wait_http(
        port,
        "/moto-api/",
        Duration::from_secs(30),
        &mut child,
        "CloudWatch quota proxy",
    );
    CloudWatchQuota {
        service: Service {
            name: "cloudwatch-quota",
            child,
            port,
        },
        dir,
    }
}

/// Runs headless Chromium (Debian's `chromium`, installed by scripts/install-test-services)
/// on a local page with the flags a closed network needs, and returns what it printed.
/// `mode` is `--dump-dom` (the DOM after the page was laid out) or `--screenshot=PATH`.
pub fn chromium(page: &Path, mode: &str) -> String {
    ensure_installed("chromium");
    let profile = temp_dir("chromium");
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1280,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(mode)
        .arg(format!("file://{}", page.display()))
        .stdin(Stdio::null())
        .output()
        .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
