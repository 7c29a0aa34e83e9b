//! The metrics endpoint under the attack issue 11 found: thousands of connections that send
//! half a request line and wait. Before the cap, 1,100 of them exhausted the daemon's file
//! descriptors and it exited; now /metrics must keep answering at once and the server's
//! sockets must stay within its cap.

use std::collections::HashSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_monitor::http::{serve_with, Limits};
use egresswatch_monitor::Metrics;

const IDLE: usize = 2_000;

/// Raises this process's soft limit on open files to `want` (and the hard one, if it is lower
/// and we may), so the test's own 2,000 client sockets do not hit the usual 1,024 and fail it
/// for the wrong reason.
fn raise_open_file_limit(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        if lim.rlim_cur >= want {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not allowed to raise the hard limit: take what it allows.
            let within = libc::rlimit {
                rlim_cur: lim.rlim_max.min(want),
                rlim_max: lim.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &within), 0);
        }
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
    }
    assert!(
        lim.rlim_cur as usize > IDLE + 512,
        "this test needs {} open files and the hard limit allows {}; raise it (ulimit -Hn)",
        IDLE + 512,
        lim.rlim_cur
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Sockets this process holds whose local end is `port`: the server's listener and the
/// connections it accepted (the test's client sockets have `port` as their remote end).
fn server_sockets(port: u16) -> usize {
    let mut ours = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|s| s.strip_suffix(']'))
            {
                ours.insert(inode.to_string());
            }
        }
    }
    let mut n = 0;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if local_port == Some(port) && ours.contains(f[9]) {
                n += 1;
            }
        }
    }
    n
}

/// Whether the server has closed `s` (end of stream or reset), without waiting.
fn closed(mut s: &TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

fn scrape(addr: SocketAddr) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out, started.elapsed())
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {exposition}"))
}

#[test]
fn two_thousand_half_sent_requests_leave_metrics_answering_within_bounded_descriptors() {
    raise_open_file_limit(8_192);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // The shipped cap; timeouts long enough that only the cap acts while the test runs (the
    // header-read timeout and the lifetime have their own tests in the module).
    let limits = Limits {
        header_read_timeout: Duration::from_secs(120),
        connection_lifetime: Duration::from_secs(300),
        ..Limits::default()
    };
    assert_eq!(limits.max_connections, 256);
    let addr = runtime
        .block_on(serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
            Arc::new(AtomicBool::new(true)),
            stopped,
            limits,
        ))
        .unwrap();
    let fds_before = open_fds();

    // The attack: connections that send half a request line and then nothing.
    let mut idle = Vec::with_capacity(IDLE);
    let connecting = Instant::now();
    for _ in 0..IDLE {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        // The server may already have shed this one; a failed write is part of the attack.
        let _ = s.write_all(b"GET /metr");
        idle.push(s);
    }

    println!(
        "{IDLE} half-sent connections opened in {:?}",
        connecting.elapsed()
    );
    let (body, took) = scrape(addr);
    println!("/metrics answered in {took:?} with {IDLE} half-sent connections open");
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(took < Duration::from_secs(2), "/metrics took {took:?}");
    // Every connection past the cap made room by closing the one idle the longest: 2,001
    // connections (the attack and the scrape) into 256 slots.
    let shed = IDLE + 1 - 256;
    assert_eq!(
        sample(&body, "egresswatch_http_connections_shed_total"),
        shed as f64
    );

    // The attacker's side sees exactly those closed, the newest 255 still open.
    for s in &idle {
        s.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let closed_count = loop {
        let n = idle.iter().filter(|s| closed(s)).count();
        if n >= shed || Instant::now() > deadline {
            break n;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(closed_count, shed);
    assert!(idle[..shed].iter().all(closed));
    assert!(!idle[shed..].iter().any(closed));

    // The server holds its listener and the 255 idle connections, nothing more; the whole
    // process, the attacker's 2,000 sockets included, stays within what that adds up to.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let n = server_sockets(addr.port());
        if n == 256 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server holds {n} sockets, expected its listener and 255 connections"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let fds_after = open_fds();
    assert!(
        fds_after <= fds_before + IDLE + 255 + 8,
        "{fds_before} descriptors before, {fds_after} after"
    );

    // A second scrape while the attack is still connected answers too.
    let (body, took) = scrape(addr);
    assert!(body.starts_with("HTTP/1.1 200 OK\r\n"), "{body}");
    assert!(took < Duration::from_secs(2), "/metrics took {took:?}");
    stop.send(true).unwrap();
}
