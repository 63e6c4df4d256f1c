//! A local HTTP service that answers every request after a fixed delay:
//! the outside API a handler waits on, for tests and benchmarks. It counts
//! requests, connections and the most it was answering at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    connections: AtomicU64,
    now: AtomicU64,
    most: AtomicU64,
}

pub struct SlowService {
    port: u16,
    stats: Arc<Stats>,
}

impl SlowService {
    /// Starts it on a free port of 127.0.0.1, on a thread of its own with
    /// an async runtime (a task per connection, keep-alive honoured, so
    /// the service costs the machine little next to the host it serves);
    /// it runs until the process ends.
    pub fn start(delay: Duration) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the slow service");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        let shared = stats.clone();
        std::thread::Builder::new()
            .name("slow-service".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        shared.connections.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(serve(stream, shared.clone(), delay));
                    }
                });
            })
            .unwrap();
        Self { port, stats }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/work", self.port)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(Ordering::Relaxed)
    }

    /// Connections it accepted.
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(Ordering::Relaxed)
    }

    /// The most requests it was answering at the same time.
    pub fn most_at_once(&self) -> u64 {
        self.stats.most.load(Ordering::SeqCst)
    }
}

/// One connection: each request answered after `delay`.
async fn serve(stream: tokio::net::TcpStream, stats: Arc<Stats>, delay: Duration) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut close = false;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            if h.trim().is_empty() {
                break;
            }
            let h = h.to_ascii_lowercase();
            if h.starts_with("connection:") && h.contains("close") {
                close = true;
            }
        }
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let now = stats.now.fetch_add(1, Ordering::SeqCst) + 1;
        stats.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        stats.now.fetch_sub(1, Ordering::SeqCst);
        let reply: &[u8] = if close {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
        } else {
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
        };
        if write.write_all(reply).await.is_err() || close {
            return;
        }
    }
}
