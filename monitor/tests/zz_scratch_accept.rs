use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};
#[test]
fn scratch() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    let n = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    let mode = std::env::var("MODE").unwrap_or_default();
    rt.spawn(async move {
        let mut keep = Vec::new();
        loop {
            let (s, _) = l.accept().await.unwrap();
            n2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if mode == "spawn" {
                tokio::spawn(async move {
                    let _s = s;
                    tokio::time::sleep(Duration::from_secs(100)).await;
                });
            } else {
                keep.push(s);
            }
        }
    });
    let mut v = Vec::new();
    let t = Instant::now();
    for i in 0..2000 {
        let t0 = Instant::now();
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"GET /metr");
        let d = t0.elapsed();
        if d > Duration::from_millis(200) {
            println!(
                "slow #{i} {:?} accepted {}",
                d,
                n.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        v.push(s);
    }
    println!("total {:?}", t.elapsed());
}
