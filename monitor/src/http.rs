//! The daemon's one listening socket: `/metrics` for Prometheus, `/healthz` and `/readyz` for
//! the orchestrator. Anyone who can reach the port can open connections to it, so it is built
//! to keep answering scrapes while a client holds thousands of idle or half-sent requests:
//!
//! - at most [`Limits::max_connections`] connections are open at once; a new one past the cap
//!   closes the connection that has gone longest without completing a request, so a scraper
//!   (which sends its request at once) always gets a slot and the file descriptors stay bounded;
//! - a request's headers must arrive within [`Limits::header_read_timeout`] (hyper's HTTP/1
//!   header-read timeout, which also ends idle keep-alive connections);
//! - no connection lives longer than [`Limits::connection_lifetime`], however it behaves;
//! - a request head and its buffer are capped at 16 KiB.
//!
//! hyper is used directly rather than through axum: axum's `serve` owns the accept loop and
//! sets no timer, so none of the bounds above could be put on it, and three fixed routes
//! need no router.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use crate::events::ProcessEvent;
use crate::metrics::Metrics;

/// The bounds on the server's connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from the connection's start or the end
    /// of its previous request.
    pub header_read_timeout: Duration,
    /// Time after which any connection is closed (gracefully, if a request is in flight).
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Prometheus holds one connection per scraping server, health checks one each for
            // a moment: 256 is far beyond what the legitimate clients need, and well within the
            // unit's LimitNOFILE=65536 and the 1,024 a shell's default leaves.
            max_connections: 256,
            // A scraper sends its request at once; ten seconds forgives a slow network, not a
            // client that trickles bytes.
            header_read_timeout: Duration::from_secs(10),
            // Long enough for a keep-alive connection to serve a few scrapes at the usual 15 to
            // 60 s interval; reconnecting after it costs one handshake.
            connection_lifetime: Duration::from_secs(120),
        }
    }
}

/// Read buffer per connection (hyper's default is about 400 KB): a GET with ordinary headers
/// fits many times over, and 256 connections cannot hold more than 4 MB between them.
const MAX_BUF: usize = 16 * 1024;

/// How long a connection being closed (lifetime over, shutdown) gets to finish its request.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Serves /metrics, /healthz and /readyz until shutdown, within [`Limits::default`].
pub async fn serve(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    serve_with(listen, metrics, ready, shutdown, Limits::default())
        .await
        .map(|_| ())
}

/// As [`serve`]; the handle ends once the socket is closed after shutdown, so a run that
/// waits for it leaves the port free for the next.
pub async fn serve_until_closed(
    listen: SocketAddr,
    metrics: Vec<Arc<Metrics>>,
    ready: Vec<Arc<AtomicBool>>,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let listener = bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let app = Arc::new(App { metrics, ready });
    Ok(serve_app(listener, local, app, shutdown, Limits::default()))
}

/// As [`serve`], within `limits`; returns the address it listens on (useful with port 0).
pub async fn serve_with(
    listen: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<SocketAddr, String> {
    let listener = bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let app = Arc::new(App {
        metrics: vec![metrics],
        ready: vec![ready],
    });
    serve_app(listener, local, app, shutdown, limits);
    Ok(local)
}

fn serve_app(
    listener: tokio::net::TcpListener,
    local: SocketAddr,
    app: Arc<App>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> tokio::task::JoinHandle<()> {
    let table = Arc::new(Table::default());
    tokio::spawn(async move {
        let mut last_warning: Option<Instant> = None;
        loop {
            let accepted = tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                a = listener.accept() => a,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors (or another transient failure): wait for
                    // connections to end instead of spinning, and say so at most once a minute.
                    let log = last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                    if log {
                        last_warning = Some(Instant::now());
                    }
                    crate::events::AcceptFailed {
                        error: &e,
                        listen: local,
                        log,
                    }
                    .emit();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (conn, shed) = table.admit(limits.max_connections);
            if shed {
                crate::events::ConnectionShed.emit();
            }
            tokio::spawn(connection(
                stream,
                conn,
                table.clone(),
                app.clone(),
                limits,
                shutdown.clone(),
            ));
        }
    })
}

/// Pending connections the kernel queues for `accept` (it caps this at net.core.somaxconn).
/// tokio's `TcpListener::bind` asks for 128, which a burst of connections fills before the
/// accept loop runs on a busy host; every connection past it waits a 1-s SYN retransmit,
/// a scraper's too.
const BACKLOG: u32 = 1_024;

fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As TcpListener::bind does: a restarted daemon can bind again at once.
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    socket.listen(BACKLOG)
}

/// What `/` answers: where the endpoints are, for someone who opened the port in a browser.
const LANDING_PAGE: &str = concat!(
    "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
    "<title>egresswatch monitor</title></head><body>\n",
    "<h1>egresswatch monitor</h1>\n<p>Version ",
    env!("CARGO_PKG_VERSION"),
    ", revision ",
    env!("EGRESSWATCH_REVISION"),
    ".</p>\n<ul>\n",
    "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\n",
    "<li><a href=\"/healthz\">/healthz</a>: the process answers (liveness)</li>\n",
    "<li><a href=\"/readyz\">/readyz</a>: every source is reading (readiness)</li>\n",
    "</ul>\n</body></html>\n"
);

/// What the routes answer from: one stack's metrics and readiness, or several.
struct App {
    metrics: Vec<Arc<Metrics>>,
    ready: Vec<Arc<AtomicBool>>,
}

impl App {
    /// Why /readyz answers 503: each stack that is not ready, with its reason when one is
    /// known (the source cannot read, the outbox cannot be written), else "starting".
    fn not_ready(&self) -> Bytes {
        let mut body = String::new();
        for (ready, m) in self.ready.iter().zip(&self.metrics) {
            if ready.load(Ordering::SeqCst) {
                continue;
            }
            let reason = m
                .not_ready_reason
                .lock()
                .ok()
                .and_then(|r| r.clone())
                .unwrap_or_else(|| "starting".into());
            match &m.stack {
                Some(stack) => body.push_str(&format!("stack {stack}: {reason}\n")),
                None => body.push_str(&format!("{reason}\n")),
            }
        }
        if body.is_empty() {
            body.push_str("starting\n");
        }
        Bytes::from(body)
    }

    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let text = "text/plain; charset=utf-8";
        let (status, content_type, body) = match req.uri().path() {
            "/metrics" => (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                Bytes::from(crate::metrics::render_all(&self.metrics)),
            ),
            "/" => (
                StatusCode::OK,
                "text/html; charset=utf-8",
                Bytes::from_static(LANDING_PAGE.as_bytes()),
            ),
            "/healthz" => (StatusCode::OK, text, Bytes::from_static(b"ok\n")),
            "/readyz" if self.ready.iter().all(|r| r.load(Ordering::SeqCst)) => {
                let left: i64 = self.metrics.iter().map(|m| m.warm_start_left.get()).sum();
                if left > 0 {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        text,
                        Bytes::from(format!(
                            "warming: learning from retained flow logs, {left} log stream(s) or object(s) left to read\n"
                        )),
                    )
                } else {
                    (StatusCode::OK, text, Bytes::from_static(b"ready\n"))
                }
            }
            "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, text, self.not_ready()),
            _ => (
                StatusCode::NOT_FOUND,
                text,
                Bytes::from_static(b"not found\n"),
            ),
        };
        let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
        let (status, content_type, body) = if read_only || status == StatusCode::NOT_FOUND {
            (status, content_type, body)
        } else {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                text,
                Bytes::from_static(b"method not allowed\n"),
            )
        };
        let mut response = Response::new(Full::new(body));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}

/// One open connection, as the accept loop sees it.
struct Conn {
    /// When it last showed life (accepted, or a complete request head arrived), as a ticket
    /// from [`Table::clock`]: the lowest ticket is the connection idle the longest.
    active: AtomicU64,
    /// Told when the connection is shed to make room.
    shed: Notify,
}

/// The open connections, for the cap.
#[derive(Default)]
struct Table {
    open: Mutex<Vec<Arc<Conn>>>,
    clock: AtomicU64,
}

impl Table {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Conn>>> {
        // The table stays consistent whatever panicked while holding it: go on with it.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection; at the cap, first sheds the one idle the longest. Returns
    /// the new connection and whether one was shed. O(cap) per connection past the cap.
    fn admit(&self, cap: usize) -> (Arc<Conn>, bool) {
        let conn = Arc::new(Conn {
            active: AtomicU64::new(self.tick()),
            shed: Notify::new(),
        });
        let mut open = self.lock();
        let mut shed = false;
        while open.len() >= cap.max(1) {
            let Some(oldest) = open
                .iter()
                .enumerate()
                .min_by_key(|(_, c)| c.active.load(Ordering::Relaxed))
                .map(|(i, _)| i)
            else {
                break;
            };
            // notify_one keeps the permit if the task is not waiting yet: it ends either way.
            open.swap_remove(oldest).shed.notify_one();
            shed = true;
        }
        open.push(conn.clone());
        (conn, shed)
    }

    fn remove(&self, conn: &Arc<Conn>) {
        let mut open = self.lock();
        if let Some(i) = open.iter().position(|c| Arc::ptr_eq(c, conn)) {
            open.swap_remove(i);
        }
    }
}

/// Takes a connection out of the table however its task ends (finished, shed, aborted).
struct Registration {
    table: Arc<Table>,
    conn: Arc<Conn>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table.remove(&self.conn);
    }
}

/// Serves one connection until it closes, is shed, outlives its lifetime or the daemon stops.
async fn connection(
    stream: TcpStream,
    conn: Arc<Conn>,
    table: Arc<Table>,
    app: Arc<App>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let _registration = Registration {
        table: table.clone(),
        conn: conn.clone(),
    };
    let me = conn.clone();
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        me.active.store(table.tick(), Ordering::Relaxed);
        let response = app.respond(&req);
        async move { Ok::<_, Infallible>(response) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(served);
    let lifetime = tokio::time::sleep(limits.connection_lifetime);
    tokio::pin!(lifetime);
    tokio::select! {
        // Ended by the client or by hyper (header-read timeout, a malformed request): its
        // error is the client's doing and nothing to report.
        _ = served.as_mut() => return,
        // Shed to make room: dropping the connection closes the socket at once.
        () = conn.shed.notified() => return,
        () = &mut lifetime => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
    // Let a request in flight finish, then close; an idle connection closes at once.
    served.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, served).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Of several stacks, /readyz names the one that is not ready and why.
    #[tokio::test]
    async fn readiness_names_the_stack_and_the_reason() {
        use crate::events::{Event, SourceHealth};
        let (a, b) = (
            Arc::new(Metrics::for_stack(Some("research"))),
            Arc::new(Metrics::for_stack(Some("clinical"))),
        );
        let ready = vec![
            Arc::new(AtomicBool::new(true)),
            Arc::new(AtomicBool::new(false)),
        ];
        let (tx, rx) = watch::channel(false);
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listen.local_addr().unwrap();
        drop(listen);
        let server = serve_until_closed(addr, vec![a, b.clone()], ready.clone(), rx)
            .await
            .unwrap();
        let r = ask(addr, &get("/readyz")).await;
        assert!(r.ends_with("\r\n\r\nstack clinical: starting\n"), "{r}");
        SourceHealth::Failing {
            reason: "cannot write alerts to the outbox: No space left on device",
            new_reason: true,
        }
        .emit(&b);
        let r = ask(addr, &get("/readyz")).await;
        assert!(
            r.starts_with("HTTP/1.1 503")
                && r.ends_with(
                    "stack clinical: cannot write alerts to the outbox: No space left on device\n"
                ),
            "{r}"
        );
        ready[1].store(true, Ordering::SeqCst);
        assert!(ask(addr, &get("/readyz")).await.ends_with("ready\n"));
        tx.send(true).unwrap();
        server.await.unwrap();
    }

    async fn start(limits: Limits) -> (SocketAddr, Arc<AtomicBool>, watch::Sender<bool>) {
        let ready = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(false);
        let addr = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new()),
            ready.clone(),
            rx,
            limits,
        )
        .await
        .unwrap();
        (addr, ready, tx)
    }

    /// Sends `request` on a new connection and reads the answer to its end.
    async fn ask(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn get(path: &str) -> String {
        format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    }

    /// Waits up to `within` for the server to close `s`; true if it did.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                // A response (e.g. 408 or 400) before the close: keep reading.
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// A first start reading the retained history is not ready: the rules have not learnt.
    #[tokio::test]
    async fn readiness_waits_for_the_warm_start() {
        let ready = Arc::new(AtomicBool::new(true));
        let metrics = Arc::new(Metrics::new());
        let (_tx, rx) = watch::channel(false);
        let addr = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            ready,
            rx,
            Limits::default(),
        )
        .await
        .unwrap();
        metrics.warm_start_left.set(3);
        let r = ask(addr, &get("/readyz")).await;
        assert!(
            r.starts_with("HTTP/1.1 503 Service Unavailable")
                && r.ends_with(
                    "warming: learning from retained flow logs, 3 log stream(s) or object(s) left to read\n"
                ),
            "{r}"
        );
        metrics.warm_start_left.set(0);
        let r = ask(addr, &get("/readyz")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    }

    #[tokio::test]
    async fn routes_answer_and_readiness_follows_the_flag() {
        let (addr, ready, tx) = start(Limits::default()).await;
        let metrics = ask(addr, &get("/metrics")).await;
        assert!(metrics.starts_with("HTTP/1.1 200 OK\r\n"), "{metrics}");
        assert!(metrics.contains("content-type: text/plain; version=0.0.4\r\n"));
        assert!(metrics.contains(&format!(
            "egresswatch_build_info{{revision=\"{}\",version=\"{}\"}} 1",
            env!("EGRESSWATCH_REVISION"),
            env!("CARGO_PKG_VERSION")
        )));
        assert!(metrics.contains("\nprocess_cpu_seconds_total "));
        assert!(ask(addr, &get("/healthz")).await.ends_with("\r\n\r\nok\n"));
        let r = ask(addr, &get("/readyz")).await;
        assert!(
            r.starts_with("HTTP/1.1 503 Service Unavailable") && r.ends_with("starting\n"),
            "{r}"
        );
        ready.store(true, Ordering::SeqCst);
        let r = ask(addr, &get("/readyz")).await;
        assert!(
            r.starts_with("HTTP/1.1 200 OK") && r.ends_with("ready\n"),
            "{r}"
        );
        let r = ask(addr, &get("/")).await;
        assert!(
            r.contains("content-type: text/html; charset=utf-8\r\n")
                && r.contains("<a href=\"/metrics\">"),
            "{r}"
        );
        let r = ask(addr, &get("/nope")).await;
        assert!(r.starts_with("HTTP/1.1 404 Not Found"), "{r}");
        let r = ask(
            addr,
            "POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 405 Method Not Allowed") && r.contains("allow: GET, HEAD\r\n"),
            "{r}"
        );
        tx.send(true).unwrap();
    }

    #[tokio::test]
    async fn a_half_sent_request_is_closed_at_the_header_timeout() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (addr, _, tx) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(3),
            "closed after {took:?}"
        );
        tx.send(true).unwrap();
    }

    #[tokio::test]
    async fn a_keep_alive_connection_ends_at_its_lifetime() {
        let limits = Limits {
            connection_lifetime: Duration::from_millis(400),
            ..Limits::default()
        };
        let (addr, _, tx) = start(limits).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 OK"));
        // Still open for the next request until the lifetime is over, then closed.
        let started = Instant::now();
        assert!(closed_within(&mut s, Duration::from_secs(5)).await);
        assert!(started.elapsed() < Duration::from_secs(3));
        tx.send(true).unwrap();
    }

    #[tokio::test]
    async fn past_the_cap_the_longest_idle_connection_makes_room() {
        let limits = Limits {
            max_connections: 4,
            ..Limits::default()
        };
        let (addr, _, tx) = start(limits).await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /met").await.unwrap();
            idle.push(s);
            // Accepted in this order, so the first is the oldest.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A fifth connection, a complete request: answered; the oldest idle one is gone.
        let r = ask(addr, &get("/healthz")).await;
        assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
        assert!(closed_within(&mut idle[0], Duration::from_secs(2)).await);
        for s in &mut idle[1..] {
            assert!(!closed_within(s, Duration::from_millis(100)).await);
        }
        tx.send(true).unwrap();
    }

    #[tokio::test]
    async fn shutdown_stops_accepting() {
        let (addr, _, tx) = start(Limits::default()).await;
        assert!(ask(addr, &get("/healthz"))
            .await
            .starts_with("HTTP/1.1 200"));
        tx.send(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).await.is_ok() {
            assert!(Instant::now() < deadline, "still accepting after shutdown");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
