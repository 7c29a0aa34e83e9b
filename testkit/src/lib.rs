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

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit is in the workspace")
        .to_path_buf()
}

fn venv() -> PathBuf {
    match std::env::var_os("EGRESSWATCH_VENV") {
        Some(v) => PathBuf::from(v),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
            .join(".cache/egresswatch-venv"),
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local address").port()
}

fn wait_http(port: u16, path: &str, timeout: Duration, child: &mut Child, name: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{name} exited before it was ready: {status}");
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let req = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(req.as_bytes()).is_ok() {
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.") {
                    return;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not answer on 127.0.0.1:{port} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a moto server (the AWS emulator), installing it first if it is missing.
pub fn moto() -> Service {
    let venv = venv();
    let bin = venv.join("bin/moto_server");
    if !bin.exists() {
        let status = Command::new(workspace_root().join("scripts/install-test-services"))
            .env("EGRESSWATCH_VENV", &venv)
            .status()
            .expect("run scripts/install-test-services");
        assert!(status.success(), "installing moto failed");
    }
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
