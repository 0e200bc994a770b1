//! DNS over TCP (RFC 7766): the accept loop, one task per connection, and the limits that keep
//! thousands of persistent clients (every micro-VM pod's sidecar keeps connections open) and
//! hostile ones (connection floods, slowloris) from starving everyone else.
//!
//! ```text
//!  listener ─accept─> gate (total and per-client limits) ─> one task per connection:
//!     read ─> length-prefixed frames ─> Service (cache hits inline, the rest polled
//!     side by side) ─> replies written as they complete
//!     deadlines: idle (nothing asked), read (a query started but not finished),
//!                write (a client that does not read its answers)
//! ```
//!
//! Pipelined queries are answered as they complete, possibly out of order (RFC 7766 section
//! 6.2.1.1): a forwarded name waiting for its upstream does not hold up cluster names sent
//! after it on the same connection.
//!
//! Shutdown (the cancel token): the queue of connections the kernel already completed is
//! accepted before the listener closes (closing resets them), and every connection answers
//! what it has read, keeps answering until it has been quiet briefly, then closes at a message
//! boundary so the client reconnects (to another replica, or to the next server on the same
//! port through SO_REUSEPORT).

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::pipeline::Proto;
use super::server::{start_slow, Service, Slow};

/// Queries of one connection answered at once; past this the connection is not read until
/// one finishes: backpressure on the client instead of unbounded memory.
const MAX_IN_FLIGHT: usize = 64;
/// On shutdown, a connection that has been quiet this long (nothing in flight, nothing half
/// read) is closed; busy ones are closed after [`CLOSE_GRACE`].
const QUIET: Duration = Duration::from_millis(50);
const CLOSE_GRACE: Duration = Duration::from_millis(300);
/// Pause after the first accept that failed for want of file descriptors; doubles per failure
/// up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A Go duration (`10s`, `1m30s`), more than zero: a zero timeout would close every client.
fn duration(s: &str) -> Result<Duration, String> {
    match crate::corefile::parse_go_duration(s)? {
        d if d.is_zero() => Err(format!("'{s}': a timeout must be more than 0")),
        d => Ok(d),
    }
}

/// Limits on DNS-over-TCP clients. CoreDNS's Corefile has no connection limits, so these are
/// flags of `serve` and `sidecar`, for every listener of the process; a block's `timeouts`
/// plugin overrides the three timeouts for its listeners ([`TcpServing::for_listener`]).
#[derive(Clone, Debug, clap::Args)]
pub struct TcpLimits {
    /// Open TCP connections at most, over all listeners; more are accepted and closed at
    /// once. Default: the open-file limit (raised to its hard limit at start) minus a
    /// reserve of a quarter of it, at most 1000, for sockets, upstreams and files.
    #[arg(long = "tcp-max-connections", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Open TCP connections at most from one client IP address (0: no limit).
    #[arg(long = "tcp-max-per-client", value_name = "N", default_value_t = 256)]
    pub max_per_client: usize,
    /// Close a connection when nothing has been asked on it for this long.
    #[arg(long = "tcp-idle-timeout", value_name = "DUR", default_value = "10s", value_parser = duration)]
    pub idle_timeout: Duration,
    /// Close a connection when a query, once started, has not fully arrived within this
    /// (slowloris).
    #[arg(long = "tcp-read-timeout", value_name = "DUR", default_value = "3s", value_parser = duration)]
    pub read_timeout: Duration,
    /// Close a connection when its answers cannot be written within this (a client that
    /// does not read).
    #[arg(long = "tcp-write-timeout", value_name = "DUR", default_value = "5s", value_parser = duration)]
    pub write_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_connections: None,
            max_per_client: 256,
            idle_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(3),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// Raises the soft open-file limit to the hard limit, as Go's runtime (so CoreDNS) does at
/// start: a soft limit of 1024 would cap TCP clients near 1000. Returns the soft limit now
/// in force. Two system calls through libc: no crate needed for that.
pub fn raise_open_file_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let want = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    Ok(lim.rlim_cur)
}

/// The current soft open-file limit.
fn open_file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: as above.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_cur
}

/// The default total: the limit less a reserve for everything else that needs a descriptor.
fn auto_max_connections(fd_limit: u64) -> usize {
    let reserve = (fd_limit / 4).min(1000);
    usize::try_from(fd_limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// What the TCP side reports; `metrics` implements it, so this module never names a metric.
pub trait TcpObserver: Send + Sync {
    /// Open connections now, over all listeners.
    fn connections(&self, open: usize);
    /// A connection closed at once over a limit (`total`, `per_client`), or an accept that
    /// failed for want of descriptors (`descriptors`).
    fn refused(&self, reason: &'static str);
}

/// The timeouts of one listener's connections.
#[derive(Clone, Copy, Debug)]
struct TcpTimeouts {
    idle: Duration,
    read: Duration,
    write: Duration,
}

/// What one listener's accept loop needs: the shared limits and the timeouts of its blocks.
#[derive(Clone)]
pub struct ListenerTcp {
    gate: Arc<TcpServing>,
    // Shared by the listener's connections: 8 bytes each instead of 48.
    timeouts: Arc<TcpTimeouts>,
}

/// The limits plus the count of open connections, shared by every TCP listener.
pub struct TcpServing {
    limits: TcpLimits,
    max_total: usize,
    open: Mutex<Open>,
    observer: Option<Arc<dyn TcpObserver>>,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_client: HashMap<IpAddr, u32>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Refused {
    Total,
    PerClient,
}

/// One admitted connection; dropping it frees its place.
struct Admitted {
    gate: Arc<TcpServing>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.gate.open.lock().unwrap_or_else(|p| p.into_inner());
        open.total = open.total.saturating_sub(1);
        if let Some(n) = open.per_client.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.per_client.remove(&self.ip);
            }
        }
        if let Some(o) = &self.gate.observer {
            o.connections(open.total);
        }
    }
}

impl TcpServing {
    pub fn new(limits: TcpLimits) -> Arc<TcpServing> {
        Self::observed(limits, None)
    }

    /// [`TcpServing::new`], reporting connections and refusals to `observer`.
    pub fn observed(limits: TcpLimits, observer: Option<Arc<dyn TcpObserver>>) -> Arc<TcpServing> {
        let max_total = limits
            .max_connections
            .unwrap_or_else(|| auto_max_connections(open_file_limit()));
        Arc::new(TcpServing {
            limits,
            max_total,
            open: Mutex::new(Open::default()),
            observer,
        })
    }

    fn refused(&self, reason: &'static str) {
        if let Some(o) = &self.observer {
            o.refused(reason);
        }
    }

    /// The total limit in force (the default resolved).
    pub fn max_connections(&self) -> usize {
        self.max_total
    }

    /// For one listener: the Corefile's `timeouts` of its blocks, if any, over the flags.
    pub fn for_listener(
        self: &Arc<Self>,
        block: Option<&crate::corefile::TimeoutsConfig>,
    ) -> ListenerTcp {
        let l = &self.limits;
        ListenerTcp {
            gate: self.clone(),
            timeouts: Arc::new(TcpTimeouts {
                idle: block.and_then(|b| b.idle).unwrap_or(l.idle_timeout),
                read: block.and_then(|b| b.read).unwrap_or(l.read_timeout),
                write: block.and_then(|b| b.write).unwrap_or(l.write_timeout),
            }),
        }
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.total >= self.max_total {
            self.refused("total");
            return Err(Refused::Total);
        }
        let per = open.per_client.entry(ip).or_insert(0);
        if self.limits.max_per_client != 0 && *per as usize >= self.limits.max_per_client {
            self.refused("per_client");
            return Err(Refused::PerClient);
        }
        *per += 1;
        open.total += 1;
        if let Some(o) = &self.observer {
            o.connections(open.total);
        }
        Ok(Admitted {
            gate: self.clone(),
            ip,
        })
    }
}

/// A condition that repeats in bursts (out of descriptors, over a limit): logged once when
/// it starts and once when it ends, with the count, instead of once per event.
#[derive(Default)]
struct Burst {
    since: Option<Instant>,
    count: u64,
}

impl Burst {
    /// Counts one event; true for the first of a burst (the caller logs it).
    fn hit(&mut self) -> bool {
        self.count += 1;
        if self.since.is_none() {
            self.since = Some(Instant::now());
            return true;
        }
        false
    }

    /// Ends the burst: its length and count, if one was going on.
    fn end(&mut self) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let n = std::mem::take(&mut self.count);
        Some((since.elapsed(), n))
    }
}

/// Errors of accept(2) that mean the process or system is out of descriptors or memory:
/// retrying at once fails again, so the loop pauses.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Accepts until `cancel`, then takes the connections already queued and closes the listener
/// (see the module doc).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    service: Arc<Service>,
    tcp: ListenerTcp,
    cancel: CancellationToken,
) {
    let mut conns = JoinSet::new();
    let mut exhausted = Burst::default();
    let mut refused = Burst::default();
    let mut backoff = BACKOFF_START;
    let mut paused_until: Option<Instant> = None;
    let local = listener.local_addr().ok();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = async { sleep_until(paused_until.unwrap_or_else(Instant::now)).await }, if paused_until.is_some() => {
                paused_until = None;
            }
            r = listener.accept(), if paused_until.is_none() => match r {
                Ok((stream, src)) => {
                    if let Some((d, n)) = exhausted.end() {
                        info!(
                            listener = ?local,
                            failed_accepts = n,
                            after = ?d,
                            "tcp: file descriptors available again, accepting"
                        );
                    }
                    backoff = BACKOFF_START;
                    admit(&tcp, stream, src, &service, &cancel, &mut conns, &mut refused);
                }
                Err(e) if out_of_resources(&e) => {
                    tcp.gate.refused("descriptors");
                    if exhausted.hit() {
                        warn!(
                            listener = ?local,
                            error = %e,
                            open = conns.len(),
                            fd_limit = open_file_limit(),
                            "tcp: cannot accept new connections (out of file descriptors); \
                             pausing accepts and retrying with backoff, logged again when it recovers"
                        );
                    }
                    paused_until = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                // A client gone before we took it (ECONNABORTED) and the like: its own problem.
                Err(e) => debug!(error = %e, "tcp accept"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    // Connections the kernel has completed but we have not accepted would be reset when the
    // listener closes: take them first, with plain non-blocking accepts (tokio's cached
    // readiness may not know of the latest ones yet).
    match listener.into_std() {
        Ok(std_listener) => loop {
            match std_listener.accept() {
                Ok((s, src)) => {
                    let stream = s
                        .set_nonblocking(true)
                        .and_then(|()| TcpStream::from_std(s));
                    match stream {
                        Ok(stream) => admit(
                            &tcp,
                            stream,
                            src,
                            &service,
                            &cancel,
                            &mut conns,
                            &mut refused,
                        ),
                        Err(e) => debug!(error = %e, "tcp accept on shutdown"),
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    debug!(error = %e, "tcp accept on shutdown");
                    break;
                }
            }
        },
        Err(e) => debug!(error = %e, "tcp listener"),
    }
    while conns.join_next().await.is_some() {}
}

fn admit(
    tcp: &ListenerTcp,
    stream: TcpStream,
    src: SocketAddr,
    service: &Arc<Service>,
    cancel: &CancellationToken,
    conns: &mut JoinSet<()>,
    refused: &mut Burst,
) {
    match tcp.gate.admit(src.ip()) {
        Ok(place) => {
            let _ = stream.set_nodelay(true);
            if let Some((d, n)) = refused.end() {
                info!(refused = n, over = ?d, "tcp: accepting connections again");
            }
            conns.spawn(connection(Conn::new(
                stream,
                src,
                service.clone(),
                tcp.timeouts.clone(),
                place,
                cancel.clone(),
            )));
        }
        Err(why) => {
            if refused.hit() {
                let (what, limit) = match why {
                    Refused::Total => ("open connections", tcp.gate.max_total),
                    Refused::PerClient => (
                        "connections from one client",
                        tcp.gate.limits.max_per_client,
                    ),
                };
                warn!(
                    client = %src.ip(),
                    limit,
                    "tcp: limit of {what} reached, closing new connections at once \
                     (--tcp-max-connections, --tcp-max-per-client); logged again when it clears"
                );
            }
            // Dropped: closed at once, so the client tries another server instead of waiting.
            drop(stream);
        }
    }
}

type Pending = super::server::SlowFuture;

/// Room taken for each read: a few queries; a pipelined burst is read in several.
const READ_CHUNK: usize = 1024;

fn waiting(in_flight: &Option<FuturesUnordered<Pending>>) -> usize {
    in_flight.as_ref().map_or(0, |f| f.len())
}

/// Appends `reply` to `out` with its two-byte length.
fn frame(out: &mut Vec<u8>, reply: &[u8]) {
    let n = reply.len().min(u16::MAX as usize);
    out.extend_from_slice(&(n as u16).to_be_bytes());
    out.extend_from_slice(&reply[..n]);
}

/// What a connection needs of its stream: wait for data without a buffer, then read what
/// arrived (so an idle connection holds no buffer). A TcpStream, or bytes in memory for the
/// fuzz target (`serve_stream`).
pub trait ConnStream: AsyncWrite + Unpin + Send + Sync {
    /// Readiness by polling (the waker is kept in the socket's registration), not tokio's
    /// `readable()` future, whose waiter node would add 152 bytes to every connection's task.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
    fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize>;
}

impl ConnStream for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
    fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }
}

/// A client's whole byte stream in memory; the replies are appended to `out`.
pub struct MemoryStream<'a> {
    pub input: &'a [u8],
    pub out: &'a mut Vec<u8>,
}

impl ConnStream for MemoryStream<'_> {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn try_read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        // A chunk at a time, as a socket delivers a pipelined burst in several reads.
        let n = self.input.len().min(READ_CHUNK);
        buf.extend_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl AsyncWrite for MemoryStream<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.get_mut().out.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// One connection's bytes through the real connection loop, without a socket or limits
/// (the fuzz targets in fuzz/ and their replay in tests/fuzz_corpus.rs).
pub async fn serve_stream(stream: MemoryStream<'_>, src: SocketAddr, service: Arc<Service>) {
    let listener = TcpServing::new(TcpLimits::default()).for_listener(None);
    let Ok(place) = listener.gate.admit(src.ip()) else {
        return;
    };
    connection(Conn::new(
        stream,
        src,
        service,
        listener.timeouts,
        place,
        CancellationToken::new(),
    ))
    .await;
}

/// What a connection keeps for its whole life, and all it keeps while idle. Most of the
/// thousands of sidecar connections are idle most of the time, and each idle one costs what
/// its task's future holds: so the buffers, the queries in flight and the busy loop's timers
/// live in [`busy`]'s future, boxed only while there is something to read, answer or write.
struct Conn<S> {
    stream: S,
    src: SocketAddr,
    service: Arc<Service>,
    limits: Arc<TcpTimeouts>,
    cancel: CancellationToken,
    /// Last time the client sent something or got an answer (the idle clock).
    active: Instant,
    _place: Admitted,
}

impl<S> Conn<S> {
    fn new(
        stream: S,
        src: SocketAddr,
        service: Arc<Service>,
        limits: Arc<TcpTimeouts>,
        place: Admitted,
        cancel: CancellationToken,
    ) -> Self {
        Conn {
            stream,
            src,
            service,
            limits,
            cancel,
            active: Instant::now(),
            _place: place,
        }
    }
}

/// How a busy spell ended.
enum After {
    /// Nothing left to read, answer or write: wait idle.
    Idle,
    /// End of stream, or quiet on shutdown: close at a message boundary.
    Close,
    /// A read or write failed, or a deadline passed mid-query: drop the socket.
    Drop,
}

/// Serves one connection until the client closes it, a deadline passes or shutdown. Idle, it
/// waits for bytes, the idle deadline or shutdown with nothing else held; then [`busy`] runs,
/// in a box, until the connection is idle again.
// A plain fn returning an async block: an `async fn` would hold `c` twice in its future (the
// argument, then the local it is moved into).
#[allow(clippy::manual_async_fn)]
fn connection<S: ConnStream>(mut c: Conn<S>) -> impl std::future::Future<Output = ()> + Send {
    async move {
        loop {
            tokio::select! {
                biased;
                _ = c.cancel.cancelled() => {}
                r = poll_fn(|cx| c.stream.poll_read_ready(cx)) => {
                    if let Err(e) = r {
                        debug!(src = %c.src, error = %e, "tcp read");
                        return;
                    }
                }
                _ = sleep_until(c.active + c.limits.idle) => {
                    debug!(src = %c.src, "tcp: idle, closing");
                    break;
                }
            }
            match Box::pin(busy(&mut c)).await {
                After::Idle => {}
                After::Close => break,
                After::Drop => return,
            }
        }
        let _ = c.stream.shutdown().await;
    }
}

/// Reads, answers and writes until nothing is left to do (or the connection must end).
async fn busy<S: ConnStream>(c: &mut Conn<S>) -> After {
    let (src, limits) = (c.src, *c.limits);
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    // A cache hit is copied here, then framed into `out` (try_fast overwrites it).
    let mut hit: Vec<u8> = Vec::new();
    // Allocated when a query must wait, dropped when none does.
    let mut in_flight: Option<FuturesUnordered<Pending>> = None;
    // When the first byte of the query not yet complete arrived (the read clock).
    let mut partial_since: Option<Instant> = None;
    // Shutdown: when to stop reading.
    let mut closing: Option<Instant> = None;
    let mut eof = false;
    // The first pass waits for what woke the idle connection (bytes or shutdown).
    let mut first = true;
    loop {
        // Answer every complete query read so far, as far as the in-flight bound allows.
        let mut used = 0;
        while waiting(&in_flight) < MAX_IN_FLIGHT && buf.len() - used >= 2 {
            let n = u16::from_be_bytes([buf[used], buf[used + 1]]) as usize;
            if buf.len() - used < 2 + n {
                break;
            }
            let query = &buf[used + 2..used + 2 + n];
            used += 2 + n;
            let start = std::time::Instant::now();
            match c.service.try_fast(query, src, Proto::Tcp, start, &mut hit) {
                Ok(()) => frame(&mut out, &hit),
                Err(stamp) => match start_slow(&c.service, query, src, Proto::Tcp, start, stamp) {
                    Slow::Done(Some(r)) => frame(&mut out, &r),
                    Slow::Done(None) => {}
                    Slow::Waiting(fut) => in_flight.get_or_insert_with(Default::default).push(fut),
                },
            }
        }
        buf.drain(..used);
        partial_since = match (buf.is_empty(), partial_since) {
            (true, _) => None,
            (false, Some(t)) if used == 0 => Some(t),
            (false, _) => Some(Instant::now()),
        };
        if buf.is_empty() {
            buf = Vec::new();
        }
        if in_flight.as_ref().is_some_and(|f| f.is_empty()) {
            in_flight = None;
        }
        if !out.is_empty() {
            match tokio::time::timeout(limits.write, c.stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    debug!(%src, error = %e, "tcp write");
                    return After::Drop;
                }
                Err(_) => {
                    debug!(%src, "tcp: client does not read its answers, closing");
                    return After::Drop;
                }
            }
            out = Vec::new();
            c.active = Instant::now();
        }
        let now = Instant::now();
        // After end of stream a half-read query can never complete.
        let n_waiting = waiting(&in_flight);
        if n_waiting == 0 && (eof || (buf.is_empty() && closing.is_some_and(|t| now >= t))) {
            return After::Close;
        }
        if n_waiting == 0 && buf.is_empty() && closing.is_none() && !first {
            return After::Idle;
        }
        first = false;
        // The next deadline: a half-read query must complete in time; otherwise an idle
        // connection (nothing in flight) closes; when shutting down, a quiet one closes soon.
        // None while the client waits on us.
        let deadline = if n_waiting >= MAX_IN_FLIGHT {
            None
        } else if let Some(t) = partial_since {
            Some(match closing {
                Some(end) => (t + limits.read).min(end),
                None => t + limits.read,
            })
        } else if n_waiting == 0 {
            Some(match closing {
                Some(end) => (c.active + QUIET).min(end),
                None => c.active + limits.idle,
            })
        } else {
            None
        };
        let reading = !eof && n_waiting < MAX_IN_FLIGHT && closing.is_none_or(|end| now < end);
        tokio::select! {
            biased;
            Some(r) = async { in_flight.as_mut()?.next().await }, if n_waiting > 0 => {
                if let Some(r) = r {
                    frame(&mut out, &r);
                }
            }
            _ = c.cancel.cancelled(), if closing.is_none() => {
                closing = Some(Instant::now() + CLOSE_GRACE);
                // Whatever already arrived is answered, even if tokio has not seen it yet.
                loop {
                    buf.reserve(READ_CHUNK);
                    match c.stream.try_read_buf(&mut buf) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(_) => c.active = Instant::now(),
                        Err(_) => break,
                    }
                }
            }
            // Wait for data without a buffer; take one only to read what arrived.
            r = poll_fn(|cx| c.stream.poll_read_ready(cx)), if reading => {
                if let Err(e) = r {
                    debug!(%src, error = %e, "tcp read");
                    return After::Drop;
                }
                buf.reserve(READ_CHUNK);
                match c.stream.try_read_buf(&mut buf) {
                    Ok(0) => eof = true,
                    Ok(_) => c.active = Instant::now(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        debug!(%src, error = %e, "tcp read");
                        return After::Drop;
                    }
                }
            }
            _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                if partial_since.is_some() {
                    debug!(%src, shutdown = closing.is_some(), "tcp: query not complete in time, closing");
                    return After::Drop;
                }
                if closing.is_some() {
                    // Quiet, or the grace is over: close once what is in flight is answered.
                    closing = Some(Instant::now());
                    continue;
                }
                debug!(%src, "tcp: idle, closing");
                return After::Close;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_total_leaves_room_for_other_descriptors() {
        assert_eq!(auto_max_connections(1024), 768);
        assert_eq!(auto_max_connections(20_000), 19_000);
        assert_eq!(auto_max_connections(1 << 20), (1 << 20) - 1000);
        assert_eq!(auto_max_connections(1), 1);
    }

    #[test]
    fn limits_count_per_client_and_in_total_and_free_places_on_drop() {
        let gate = TcpServing::new(TcpLimits {
            max_connections: Some(3),
            max_per_client: 2,
            ..TcpLimits::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = gate.admit(a).unwrap();
        let _a2 = gate.admit(a).unwrap();
        assert_eq!(gate.admit(a).err(), Some(Refused::PerClient));
        let _b1 = gate.admit(b).unwrap();
        assert_eq!(gate.admit(b).err(), Some(Refused::Total));
        drop(a1);
        let _b2 = gate.admit(b).unwrap();
        assert_eq!(gate.open.lock().unwrap().total, 3);
    }

    #[test]
    fn a_burst_is_reported_once_with_its_count() {
        let mut b = Burst::default();
        assert!(b.end().is_none());
        assert!(b.hit());
        assert!(!b.hit());
        assert!(!b.hit());
        assert_eq!(b.end().map(|(_, n)| n), Some(3));
        assert!(b.hit(), "a new burst starts after the end");
    }
}
