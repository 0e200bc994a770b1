//! UDP and TCP listeners on one address, feeding the pipeline.
//!
//! Written on tokio and hickory-proto's message codec rather than hickory-server's
//! `Server`: we need exact control of truncation, FORMERR-or-silence on malformed input, and
//! several SO_REUSEPORT UDP sockets so every core reads packets (the kernel spreads the load),
//! which hickory-server does not offer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::pipeline::{Proto, Request, Responder};
use super::wire::{self, Incoming};

/// CoreDNS closes idle TCP connections after 10 s as well.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// How long shutdown waits for queries in flight.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind {
        proto: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Sockets bound and ready; nothing is served until [`Bound::serve`].
pub struct Bound {
    udp: Vec<Arc<UdpSocket>>,
    tcp: TcpListener,
    addr: SocketAddr,
}

fn udp_socket(addr: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    sock.set_reuse_port(reuse_port)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    // Bursts of queries must not be dropped by a small kernel buffer.
    let _ = sock.set_recv_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

impl Bound {
    /// Binds UDP (one SO_REUSEPORT socket per core) and TCP on `addr`. Port 0 picks a port
    /// free for both protocols, with a single plain UDP socket: Linux may give a reuseport
    /// socket asking for any port the port of another process of the same user, which would
    /// then receive some of our queries.
    pub async fn bind(addr: SocketAddr) -> Result<Bound, ServerError> {
        let reuse_port = addr.port() != 0;
        let workers = if reuse_port {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 16)
        } else {
            1
        };
        let mut last_err = None;
        // With port 0 the UDP port chosen may be taken for TCP: try a few times.
        for _ in 0..if addr.port() == 0 { 20 } else { 1 } {
            let first = udp_socket(addr, reuse_port).map_err(|source| ServerError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
            let local = first.local_addr().map_err(|source| ServerError::Bind {
                proto: "udp",
                addr,
                source,
            })?;
            let tcp = match TcpListener::bind(local).await {
                Ok(t) => t,
                Err(source) => {
                    last_err = Some(ServerError::Bind {
                        proto: "tcp",
                        addr: local,
                        source,
                    });
                    continue;
                }
            };
            let mut udp = vec![Arc::new(UdpSocket::from_std(first).map_err(|source| {
                ServerError::Bind {
                    proto: "udp",
                    addr: local,
                    source,
                }
            })?)];
            for _ in 1..workers {
                let extra = udp_socket(local, reuse_port)
                    .and_then(UdpSocket::from_std)
                    .map_err(|source| ServerError::Bind {
                        proto: "udp",
                        addr: local,
                        source,
                    })?;
                udp.push(Arc::new(extra));
            }
            return Ok(Bound {
                udp,
                tcp,
                addr: local,
            });
        }
        Err(last_err.unwrap_or(ServerError::Bind {
            proto: "tcp",
            addr,
            source: std::io::Error::other("no free port"),
        }))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `cancel` fires, then drains queries in flight (bounded by 5 s).
    pub async fn serve(self, pipeline: Arc<dyn Responder>, cancel: CancellationToken) {
        let mut tasks = JoinSet::new();
        for sock in self.udp {
            tasks.spawn(udp_loop(sock, pipeline.clone(), cancel.clone()));
        }
        tasks.spawn(tcp_loop(self.tcp, pipeline, cancel.clone()));
        cancel.cancelled().await;
        let _ =
            tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    }
}

/// Handles one message: parse, resolve, encode. `None` means no reply.
pub async fn process(
    pipeline: &dyn Responder,
    bytes: &[u8],
    src: SocketAddr,
    proto: Proto,
) -> Option<Vec<u8>> {
    let msg: Message = match wire::parse(bytes) {
        Incoming::Query(m) => *m,
        Incoming::Reply(r) => return (!r.is_empty()).then_some(r),
        Incoming::Drop => return None,
    };
    let q = &msg.queries[0];
    let req = Request {
        qname: q.name().clone(),
        qtype: q.query_type(),
        src,
        proto,
        message: msg,
    };
    let answer = pipeline.respond(&req).await;
    if answer.no_reply {
        return None;
    }
    let max = match proto {
        Proto::Udp => Some(wire::max_udp_size(&req.message)),
        Proto::Tcp => None,
    };
    let out = wire::encode(&req.message, &answer, max);
    if out.is_empty() {
        return Some(wire::rcode_reply(&req.message, ResponseCode::ServFail));
    }
    Some(out)
}

async fn udp_loop(sock: Arc<UdpSocket>, pipeline: Arc<dyn Responder>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, src) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    debug!(error = %e, "udp recv");
                    continue;
                }
            },
        };
        if let Some(reply) = process(&*pipeline, &buf[..len], src, Proto::Udp).await {
            if let Err(e) = sock.send_to(&reply, src).await {
                debug!(error = %e, %src, "udp send");
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, pipeline: Arc<dyn Responder>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, src)) => {
                    conns.spawn(tcp_conn(stream, src, pipeline.clone(), cancel.clone()));
                }
                Err(e) => {
                    warn!(error = %e, "tcp accept");
                    // Out of file descriptors and the like: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    while conns.join_next().await.is_some() {}
}

async fn tcp_conn(
    mut stream: TcpStream,
    src: SocketAddr,
    pipeline: Arc<dyn Responder>,
    cancel: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(512);
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)) => r,
        };
        match read {
            Ok(Ok(_)) => {}
            _ => return, // idle, closed or reset
        }
        let n = u16::from_be_bytes(len) as usize;
        buf.resize(n, 0);
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = process(&*pipeline, &buf, src, Proto::Tcp).await else {
            continue;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&(reply.len().min(u16::MAX as usize) as u16).to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
