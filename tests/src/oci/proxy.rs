//! Fault injection in front of the real OCI registry (`make oci-up`): a
//! TCP proxy that forwards each request to it, or answers with an error
//! status instead, or asks for credentials. The registry's answers are
//! its own; only outages and refusals are made up here.
//!
//! One request per connection: the request goes upstream with
//! `Connection: close`, so the answer ends the connection and the client
//! opens a new one for its next request, which sees the current mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// What the proxy does with the next request.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Forward to the registry.
    Forward,
    /// Answer every request with this status.
    Status(u16),
}

pub struct OciProxy {
    /// `127.0.0.1:<port>`: the registry to name in references.
    pub addr: String,
    /// The registry behind it.
    upstream: String,
    mode: Arc<Mutex<Mode>>,
    /// `Authorization` header value required to forward (`Basic ...`).
    required: Arc<Mutex<Option<String>>>,
    /// Requests answered so far, and how many carried credentials.
    pub seen: Arc<Mutex<(u64, u64)>>,
}

impl OciProxy {
    /// Starts a proxy to `upstream` (`host:port`) on a free port.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let proxy = Self {
            addr,
            upstream: upstream.to_owned(),
            mode: Arc::new(Mutex::new(Mode::Forward)),
            required: Default::default(),
            seen: Default::default(),
        };
        let (mode, required, seen) = (
            proxy.mode.clone(),
            proxy.required.clone(),
            proxy.seen.clone(),
        );
        let upstream = upstream.to_owned();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mode = mode.lock().unwrap().clone();
                let required = required.lock().unwrap().clone();
                let (upstream, seen) = (upstream.clone(), seen.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, mode, required, &seen);
                });
            }
        });
        proxy
    }

    /// A repository of its own per test run, reached through the proxy.
    pub fn repository(&self, name: &str) -> String {
        super::repository_on(&self.addr, name)
    }

    /// `reference` (through the proxy) on the registry itself: where to
    /// push and sign without the proxy's faults.
    pub fn direct(&self, reference: &str) -> String {
        reference.replacen(&self.addr, &self.upstream, 1)
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// Requires HTTP basic credentials (`user:password`) from now on.
    pub fn require_basic(&self, user: &str, password: &str) {
        use base64::Engine;
        let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        *self.required.lock().unwrap() = Some(format!("Basic {pair}"));
    }
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    mode: Mode,
    required: Option<String>,
    seen: &Mutex<(u64, u64)>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut content_length = 0usize;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("authorization:") {
            authorization = Some(line["authorization:".len()..].trim().to_owned());
        }
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0u8; content_length];
    reader.read_exact(&mut body)?;
    {
        let mut s = seen.lock().unwrap();
        s.0 += 1;
        s.1 += u64::from(authorization.is_some());
    }
    let answer = |client: &mut TcpStream, status: u16, extra: &str| {
        let body =
            format!("{{\"errors\":[{{\"code\":\"UNKNOWN\",\"message\":\"injected {status}\"}}]}}");
        write!(
            client,
            "HTTP/1.1 {status} Injected\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if let Mode::Status(status) = mode {
        let extra = match status {
            401 => "WWW-Authenticate: Basic realm=\"persona-bus-test\"\r\n",
            _ => "",
        };
        return answer(&mut client, status, extra);
    }
    if let Some(want) = required
        && authorization.as_deref() != Some(want.as_str())
    {
        return answer(
            &mut client,
            401,
            "WWW-Authenticate: Basic realm=\"persona-bus-test\"\r\n",
        );
    }
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    std::io::copy(&mut up, &mut client)?;
    Ok(())
}
