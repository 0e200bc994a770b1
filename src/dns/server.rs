//! UDP and TCP listeners on one address, feeding the pipeline.
//!
//! Written on tokio and hickory-proto's message codec rather than hickory-server's
//! `Server`: we need exact control of truncation, FORMERR-or-silence on malformed input, and
//! several SO_REUSEPORT UDP sockets so every core reads packets (the kernel spreads the load),
//! which hickory-server does not offer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::fastpath;
use super::pipeline::{FastLookup, Proto, Request, Responder};
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

/// A TCP listener on `addr`; on IPv6, v6-only, so `[::]` and `0.0.0.0` (both bound for a
/// block without `bind`) do not collide as tokio's dual-stack default would.
fn tcp_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let sock = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
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
            let tcp = match tcp_listener(local) {
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
        self.serve_observed(pipeline, None, cancel).await
    }

    /// [`Bound::serve`], telling `observer` about every query (metrics).
    pub async fn serve_observed(
        self,
        pipeline: Arc<dyn Responder>,
        observer: Option<Arc<dyn QueryObserver>>,
        cancel: CancellationToken,
    ) {
        let service = Arc::new(Service {
            responder: pipeline,
            observer,
        });
        let mut tasks = JoinSet::new();
        for sock in self.udp {
            tasks.spawn(udp_loop(sock, service.clone(), cancel.clone()));
        }
        tasks.spawn(tcp_loop(self.tcp, service, cancel.clone()));
        cancel.cancelled().await;
        let _ =
            tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    }
}

/// What the server tells an observer about each query it handled.
pub struct Observed<'a> {
    /// The server block zone, or `dropped` when no block took the query.
    pub zone: &'a str,
    pub proto: Proto,
    pub src: SocketAddr,
    pub qtype: Option<RecordType>,
    pub rcode: ResponseCode,
    pub plugin: &'a str,
    pub duration: Duration,
    pub request_size: usize,
    pub response_size: usize,
    pub do_bit: bool,
}

pub trait QueryObserver: Send + Sync {
    fn observe(&self, q: &Observed);
}

/// A responder plus who watches it; what each socket loop holds.
pub struct Service {
    pub responder: Arc<dyn Responder>,
    pub observer: Option<Arc<dyn QueryObserver>>,
}

impl Service {
    pub async fn process(&self, bytes: &[u8], src: SocketAddr, proto: Proto) -> Option<Vec<u8>> {
        let start = Instant::now();
        // The response cache first: a plain question answered before from the snapshot is
        // one hash lookup and a copy (dns::fastpath).
        let peeked = fastpath::peek(bytes);
        let mut stamp = None;
        if let Some(p) = &peeked {
            let max = match proto {
                Proto::Udp => p.max_udp(),
                Proto::Tcp => u16::MAX as usize,
            };
            match self.responder.fast_get(p, max) {
                FastLookup::Hit(out, meta) => {
                    if let Some(obs) = &self.observer {
                        obs.observe(&Observed {
                            zone: meta.zone.as_deref().unwrap_or("dropped"),
                            proto,
                            src,
                            qtype: Some(RecordType::from(p.qtype)),
                            rcode: meta.rcode,
                            plugin: meta.plugin,
                            duration: start.elapsed(),
                            request_size: bytes.len(),
                            response_size: out.len(),
                            do_bit: p.do_bit,
                        });
                    }
                    return Some(out);
                }
                FastLookup::Miss(s) => stamp = Some(s),
                FastLookup::Off => {}
            }
        }
        let mut seen = None;
        let reply = process_inner(&*self.responder, bytes, src, proto, &mut seen).await;
        if let (Some(p), Some(stamp), Some(s), Some(out)) = (&peeked, stamp, &seen, &reply) {
            // Whole answers only: a truncated UDP reply is never replayed.
            if s.cacheable && out.len() >= 4 && out[2] & 0x02 == 0 {
                self.responder.fast_put(
                    p,
                    stamp,
                    out,
                    fastpath::Meta {
                        zone: s.zone.clone(),
                        plugin: s.plugin,
                        rcode: s.rcode,
                        shuffled: s.shuffled,
                    },
                );
            }
        }
        let Some(obs) = &self.observer else {
            return reply;
        };
        let (qtype, rcode, plugin, zone, do_bit) = match &seen {
            Some(s) => (
                Some(s.qtype),
                s.rcode,
                s.plugin,
                s.zone.as_deref().unwrap_or("dropped"),
                s.do_bit,
            ),
            // Malformed or refused before any handler: CoreDNS's zone "dropped".
            None => (
                None,
                reply
                    .as_ref()
                    .filter(|r| r.len() >= 4)
                    .map(|r| ResponseCode::from(0, r[3] & 0x0f))
                    .unwrap_or(ResponseCode::FormErr),
                "",
                "dropped",
                false,
            ),
        };
        obs.observe(&Observed {
            zone,
            proto,
            src,
            qtype,
            rcode,
            plugin,
            duration: start.elapsed(),
            request_size: bytes.len(),
            response_size: reply.as_ref().map(Vec::len).unwrap_or(0),
            do_bit,
        });
        reply
    }
}

/// What process_inner learned, for the observer.
struct Seen {
    cacheable: bool,
    shuffled: bool,
    qtype: RecordType,
    rcode: ResponseCode,
    plugin: &'static str,
    zone: Option<Arc<str>>,
    do_bit: bool,
}

/// Handles one message: parse, resolve, encode. `None` means no reply.
pub async fn process(
    pipeline: &dyn Responder,
    bytes: &[u8],
    src: SocketAddr,
    proto: Proto,
) -> Option<Vec<u8>> {
    process_inner(pipeline, bytes, src, proto, &mut None).await
}

async fn process_inner(
    pipeline: &dyn Responder,
    bytes: &[u8],
    src: SocketAddr,
    proto: Proto,
    seen: &mut Option<Seen>,
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
    *seen = Some(Seen {
        cacheable: answer.cacheable && !answer.no_reply,
        shuffled: answer.shuffled,
        qtype: req.qtype,
        rcode: answer.rcode,
        plugin: answer.plugin,
        zone: answer.zone.clone(),
        do_bit: req
            .message
            .edns
            .as_ref()
            .is_some_and(|e| e.flags().dnssec_ok),
    });
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

async fn udp_loop(sock: Arc<UdpSocket>, service: Arc<Service>, cancel: CancellationToken) {
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
        if let Some(reply) = service.process(&buf[..len], src, Proto::Udp).await {
            if let Err(e) = sock.send_to(&reply, src).await {
                debug!(error = %e, %src, "udp send");
            }
        }
    }
}

async fn tcp_loop(listener: TcpListener, service: Arc<Service>, cancel: CancellationToken) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, src)) => {
                    conns.spawn(tcp_conn(stream, src, service.clone(), cancel.clone()));
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
    service: Arc<Service>,
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
        let Some(reply) = service.process(&buf, src, Proto::Tcp).await else {
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
