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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::fastpath;
use super::pipeline::{FastLookup, Proto, Request, Responder, Stamp};
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
        let mut out = Vec::new();
        match self.try_fast(bytes, src, proto, start, &mut out) {
            Ok(()) => Some(out),
            Err(stamp) => self.slow(bytes, src, proto, start, stamp).await,
        }
    }

    /// The response cache first: a plain question answered before is one hash lookup and a
    /// copy into `out` (dns::fastpath). Err carries what the slow path needs to store its
    /// answer.
    fn try_fast(
        &self,
        bytes: &[u8],
        src: SocketAddr,
        proto: Proto,
        start: Instant,
        out: &mut Vec<u8>,
    ) -> Result<(), Option<Stamp>> {
        let Some(p) = fastpath::peek(bytes) else {
            return Err(None);
        };
        let max = match proto {
            Proto::Udp => p.max_udp(),
            Proto::Tcp => u16::MAX as usize,
        };
        match self.responder.fast_get(&p, max, out) {
            FastLookup::Hit(meta) => {
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
                Ok(())
            }
            FastLookup::Miss(s) => Err(Some(s)),
            FastLookup::Off => Err(None),
        }
    }

    /// The whole pipeline, storing the answer in the response cache when it may be replayed.
    async fn slow(
        &self,
        bytes: &[u8],
        src: SocketAddr,
        proto: Proto,
        start: Instant,
        stamp: Option<Stamp>,
    ) -> Option<Vec<u8>> {
        let mut seen = None;
        let reply = process_inner(&*self.responder, bytes, src, proto, &mut seen).await;
        if let (Some(stamp), Some(s), Some(out)) = (stamp, &seen, &reply) {
            if let Some(p) = fastpath::peek(bytes).filter(|_| s.cacheable) {
                // A truncated UDP reply is kept for clients with the same size limit only
                // (dnsperf's and glibc's 512 bytes without EDNS, for big SRV answers).
                let truncated = out.len() >= 4 && out[2] & 0x02 != 0;
                let truncated_for = match (truncated, proto) {
                    (false, _) => None,
                    (true, Proto::Udp) => u16::try_from(p.max_udp()).ok(),
                    (true, Proto::Tcp) => None,
                };
                if !truncated || truncated_for.is_some() {
                    self.responder.fast_put(
                        &p,
                        stamp,
                        out,
                        fastpath::Meta {
                            zone: s.zone.clone(),
                            plugin: s.plugin,
                            rcode: s.rcode,
                            shuffled: s.shuffled,
                            lease: s.lease.clone(),
                            truncated_for,
                        },
                    );
                }
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
    lease: Option<Arc<dyn fastpath::Lease>>,
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
        lease: answer.lease.clone(),
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

/// Datagrams read, and answered, per system call at most: under load one recvmmsg and one
/// sendmmsg serve a whole batch, where recv_from/send_to cost two system calls per query.
const BATCH: usize = 32;
/// Room per datagram. A query has one question and at most an OPT record, far below this; a
/// larger datagram arrives cut short and gets FORMERR.
const SLOT: usize = 4096;

/// Buffers of one UDP loop, kept across batches so that answering allocates nothing. Lives
/// in a Box: the message headers point into the buffers beside them.
struct Batch {
    bufs: [[u8; SLOT]; BATCH],
    lens: [usize; BATCH],
    addrs: [libc::sockaddr_storage; BATCH],
    recv_iov: [libc::iovec; BATCH],
    recv_hdrs: [libc::mmsghdr; BATCH],
    send_iov: [libc::iovec; BATCH],
    send_hdrs: [libc::mmsghdr; BATCH],
    replies: Vec<Vec<u8>>,
    reply_to: Vec<socket2::SockAddr>,
}

// SAFETY: the raw pointers in the headers point only into this Batch's own heap allocation
// (or, while sending, into replies it owns); moving the Box between threads moves all of it.
unsafe impl Send for Batch {}

impl Batch {
    fn new() -> Box<Batch> {
        // SAFETY: all-zero bytes are valid for every field but the Vecs (plain integers and
        // null pointers), and the Vecs are written before the Box is used.
        let mut b: Box<Batch> = unsafe {
            let layout = std::alloc::Layout::new::<Batch>();
            let p = std::alloc::alloc_zeroed(layout).cast::<Batch>();
            if p.is_null() {
                std::alloc::handle_alloc_error(layout);
            }
            std::ptr::addr_of_mut!((*p).replies)
                .write((0..BATCH).map(|_| Vec::with_capacity(512)).collect());
            std::ptr::addr_of_mut!((*p).reply_to).write(Vec::with_capacity(BATCH));
            Box::from_raw(p)
        };
        let b_ = &mut *b;
        for i in 0..BATCH {
            b_.recv_iov[i].iov_base = b_.bufs[i].as_mut_ptr().cast();
            b_.recv_iov[i].iov_len = SLOT;
            let h = &mut b_.recv_hdrs[i].msg_hdr;
            h.msg_name = (&mut b_.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_iov = &mut b_.recv_iov[i];
            h.msg_iovlen = 1;
            b_.send_hdrs[i].msg_hdr.msg_iov = &mut b_.send_iov[i];
            b_.send_hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        b
    }

    /// One recvmmsg: the number of datagrams read.
    fn recv(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        for h in self.recv_hdrs.iter_mut() {
            // The kernel writes the address length back.
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as u32;
        }
        // SAFETY: every header points at buffers of this Batch of the stated sizes (new).
        let n = unsafe {
            libc::recvmmsg(
                fd,
                self.recv_hdrs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (len, h) in self.lens.iter_mut().zip(&self.recv_hdrs[..n]) {
            *len = (h.msg_len as usize).min(SLOT);
        }
        Ok(n)
    }

    /// One sendmmsg of replies `from..to`: how many went.
    fn send(&mut self, fd: std::os::fd::RawFd, from: usize, to: usize) -> std::io::Result<usize> {
        let n = to - from;
        for k in 0..n {
            let (reply, addr) = (&self.replies[from + k], &self.reply_to[from + k]);
            self.send_iov[k].iov_base = reply.as_ptr() as *mut libc::c_void;
            self.send_iov[k].iov_len = reply.len();
            let h = &mut self.send_hdrs[k].msg_hdr;
            h.msg_name = addr.as_ptr() as *mut libc::c_void;
            h.msg_namelen = addr.len();
        }
        // SAFETY: the first n headers point at replies and addresses owned by self, which
        // nothing changes during the call; the kernel only reads through them.
        let sent = unsafe {
            libc::sendmmsg(
                fd,
                self.send_hdrs.as_mut_ptr(),
                n as u32,
                libc::MSG_DONTWAIT,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

/// The sender of datagram `i` of a batch.
fn source(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is larger
            // and suitably aligned for it.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Reads datagrams in batches, answers what the response cache knows at once, runs the
/// pipeline for the rest, and sends the batch's replies together. An answer that must wait
/// (an upstream exchange) finishes in a task of its own, so it never holds up the socket.
async fn udp_loop(sock: Arc<UdpSocket>, service: Arc<Service>, cancel: CancellationToken) {
    use std::os::fd::AsRawFd;
    let fd = sock.as_raw_fd();
    let mut b = Batch::new();
    let mut waiting = JoinSet::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            r = sock.readable() => if let Err(e) = r {
                warn!(error = %e, "udp socket");
                break;
            },
        }
        loop {
            let n = match sock.try_io(tokio::io::Interest::READABLE, || b.recv(fd)) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    debug!(error = %e, "udp recv");
                    tokio::task::coop::consume_budget().await;
                    continue;
                }
            };
            b.reply_to.clear();
            for i in 0..n {
                let Some(src) = source(&b.addrs[i]) else {
                    continue;
                };
                let start = Instant::now();
                let k = b.reply_to.len();
                let bytes = &b.bufs[i][..b.lens[i]];
                let reply = match service.try_fast(bytes, src, Proto::Udp, start, &mut b.replies[k])
                {
                    Ok(()) => true,
                    Err(stamp) => match slow_udp(&service, bytes, src, start, stamp) {
                        Slow::Done(Some(r)) => {
                            b.replies[k] = r;
                            true
                        }
                        Slow::Done(None) => false,
                        Slow::Waiting(fut) => {
                            let sock = sock.clone();
                            waiting.spawn(async move {
                                if let Some(r) = fut.await {
                                    if let Err(e) = sock.send_to(&r, src).await {
                                        debug!(error = %e, %src, "udp send");
                                    }
                                }
                            });
                            false
                        }
                    },
                };
                if reply {
                    b.reply_to.push(socket2::SockAddr::from(src));
                }
            }
            send_all(&sock, fd, &mut b).await;
            while waiting.try_join_next().is_some() {}
            // Other tasks (TCP, timers, the data source) get their turn under a flood.
            for _ in 0..n {
                tokio::task::coop::consume_budget().await;
            }
        }
    }
    while waiting.join_next().await.is_some() {}
}

type SlowFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send>>;

enum Slow {
    Done(Option<Vec<u8>>),
    Waiting(SlowFuture),
}

/// Runs the pipeline for one datagram as far as it goes without waiting.
fn slow_udp(
    service: &Arc<Service>,
    bytes: &[u8],
    src: SocketAddr,
    start: Instant,
    stamp: Option<Stamp>,
) -> Slow {
    let (service, bytes) = (service.clone(), bytes.to_vec());
    let mut fut: SlowFuture =
        Box::pin(async move { service.slow(&bytes, src, Proto::Udp, start, stamp).await });
    // A future may be polled with one waker and later with another: the task it moves to
    // polls it again at once and registers its own.
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(r) => Slow::Done(r),
        std::task::Poll::Pending => Slow::Waiting(fut),
    }
}

/// Sends the batch's replies, waiting while the socket buffer is full; a reply the kernel
/// refuses is skipped.
async fn send_all(sock: &UdpSocket, fd: std::os::fd::RawFd, b: &mut Batch) {
    let n = b.reply_to.len();
    let mut sent = 0;
    while sent < n {
        match sock.try_io(tokio::io::Interest::WRITABLE, || b.send(fd, sent, n)) {
            Ok(k) => sent += k.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Err(e) = sock.writable().await {
                    debug!(error = %e, "udp send");
                    return;
                }
            }
            Err(e) => {
                debug!(error = %e, "udp send");
                sent += 1;
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
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve_stream(stream, src, service.clone(), cancel.clone()));
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

/// One TCP connection: length-prefixed queries in, length-prefixed replies out, until the
/// client closes or idles or `cancel` fires. Generic over the stream so that the framing runs
/// without a socket too (the fuzz targets in fuzz/ feed it bytes from memory).
pub async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    src: SocketAddr,
    service: Arc<Service>,
    cancel: CancellationToken,
) {
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
