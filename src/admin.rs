//! The HTTP endpoints of `health`, `ready` and `prometheus`: `GET /health` (200 `OK`),
//! `GET /ready` (200 `OK`, or 503 naming what is not ready) and `GET /metrics`. A tiny
//! HTTP/1.1 responder on tokio: one request per connection, `Connection: close`; it only has
//! to satisfy kubelet probes and Prometheus scrapes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Names what is not ready yet; empty means ready.
pub type ReadyCheck = Arc<dyn Fn() -> Vec<String> + Send + Sync>;
/// Renders the Prometheus text exposition.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;
/// `/debug/...` pages: the path in, a JSON body out (None: not found).
pub type DebugRender = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

const MAX_REQUEST: usize = 8192;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What one address serves (several plugins may share an address).
#[derive(Clone, Default)]
pub struct Routes {
    pub health: bool,
    pub ready: Option<ReadyCheck>,
    pub metrics: Option<MetricsRender>,
    pub debug: Option<DebugRender>,
}

impl Routes {
    fn answer(&self, path: &str) -> (u16, String) {
        let path = path.split('?').next().unwrap_or(path);
        match path {
            "/health" if self.health => (200, "OK".into()),
            "/ready" => match &self.ready {
                Some(check) => {
                    let waiting = check();
                    if waiting.is_empty() {
                        (200, "OK".into())
                    } else {
                        (503, format!("{}\n", waiting.join("\n")))
                    }
                }
                None => (404, "404 page not found\n".into()),
            },
            "/metrics" => match &self.metrics {
                Some(render) => (200, render()),
                None => (404, "404 page not found\n".into()),
            },
            p if p.starts_with("/debug/") => match self.debug.as_ref().and_then(|d| d(p)) {
                Some(body) => (200, body),
                None => (404, "404 page not found\n".into()),
            },
            _ => (404, "404 page not found\n".into()),
        }
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    }
}

async fn handle(mut stream: TcpStream, routes: Routes) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_REQUEST {
            return;
        }
        match tokio::time::timeout(READ_TIMEOUT, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (code, body) = match method {
        "GET" | "HEAD" => routes.answer(path),
        "" => (400, "bad request\n".into()),
        _ => (405, "method not allowed\n".into()),
    };
    let content_type = if path.starts_with("/metrics") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else if path.starts_with("/debug/") && code == 200 {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

/// Serves `routes` on `listener` until `cancel`.
pub async fn serve(listener: TcpListener, routes: Routes, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => { conns.spawn(handle(stream, routes.clone())); }
                Err(e) => {
                    tracing::warn!(error = %e, "http accept");
                    // Out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Resolves a Corefile HTTP address: an empty host is every interface, `localhost` the IPv4
/// loopback.
pub async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    let host = match host {
        "" => "0.0.0.0",
        "localhost" => "127.0.0.1",
        h => h,
    };
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host} has no address")))
}
