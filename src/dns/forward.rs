//! The `forward` handler: CoreDNS's plugin/forward. Queries under `from` (minus `except`) go
//! to upstream nameservers, chosen by policy among the healthy ones.
//!
//! ```text
//!  handle ─> in zone? ─> in flight < bound? ─> order upstreams (policy, healthy first)
//!              │ no            │ over: REFUSED      │
//!              Next                                 for each: exchange (UDP, TC -> TCP; or TCP;
//!                                                     tls:// upstreams: always TCP over TLS)
//!                                                     ok: the upstream's answer
//!                                                     error: count a fail, start health probes
//!                                                   all failed: SERVFAIL
//! ```
//!
//! TCP connections are used one query at a time and kept idle per upstream for `expire`:
//! no demultiplexing task is needed, a connection in use is out of the pool so a slow answer
//! never blocks another query, and concurrent queries simply open more connections (CoreDNS's
//! connection cache works the same way). `tls://` upstreams use the same pool, holding
//! connections after the TLS handshake (see [`super::dot`]).
//!
//! UDP uses a fresh connected socket per attempt: the kernel drops datagrams from other
//! sources (we never see them), the source port is random, and the id is random per attempt.
//! A reply that reaches us but is not the answer to this query (wrong id, wrong question,
//! not a response, or bytes that do not parse) is dropped and counted per reason
//! (`clusterdns_forward_dropped_replies_total`), and the wait goes on: an off-path spoofer
//! cannot end it. Over TCP a reply with another id is a late answer to an earlier query on
//! the connection (skipped); bytes that do not parse end the connection.
//!
//! Queries in flight are bounded per `forward` block: by `max_concurrent` when set, else by
//! [`DEFAULT_MAX_IN_FLIGHT`]. Above the bound a query is REFUSED at once (as CoreDNS's
//! `max_concurrent`), so a silent upstream under a flood holds at most that many sockets and
//! futures, each for at most the query timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use rand::seq::SliceRandom;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::answer::Answer;
use super::dot::DotClient;
use super::pipeline::{Flow, Handler, Proto, Request};
use super::zone;
use crate::corefile::{ForwardConfig, ForwardPolicy, Transport, Upstream as UpstreamConfig};

const PLUGIN: &str = "forward";
/// Idle TCP (or TLS) connections kept per upstream; more concurrent queries open (and close)
/// more.
const MAX_IDLE_TCP: usize = 16;
/// The EDNS payload we offer upstream when the client sent no OPT record, so that answers up
/// to this size need no TCP retry (the server truncates again for the client if needed).
const UPSTREAM_PAYLOAD: u16 = 1232;
/// The in-flight bound when `max_concurrent` is not set. CoreDNS has none; without one, a
/// silent upstream under a flood holds a socket per query for the whole timeout (10 000 qps
/// for 5 s is 50 000 sockets: past any open-file limit, and memory that only grows).
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("forward: bad zone: {0}")]
    Zone(String),
    #[error("forward: cannot read {path}: {source}")]
    ResolvConf {
        path: String,
        source: std::io::Error,
    },
    #[error("forward: no upstreams (resolv.conf files without nameserver lines?)")]
    NoUpstreams,
    #[error("forward: more than {} upstreams", ForwardConfig::MAX_UPSTREAMS)]
    TooMany,
    #[error("forward: {0}:// upstreams are not supported yet")]
    Transport(&'static str),
    #[error("forward: tls: {0}")]
    Tls(String),
}

/// Timing knobs CoreDNS hard-codes; here they can be set in code (tests use short ones).
#[derive(Debug, Clone, Copy)]
pub struct ForwardTimeouts {
    /// Waiting for one reply from one upstream (CoreDNS: 2s).
    pub read: Duration,
    /// Establishing a TCP connection (and the TLS handshake, for `tls://`).
    pub connect: Duration,
    /// The whole query, across upstreams (CoreDNS: 5s).
    pub total: Duration,
}

impl Default for ForwardTimeouts {
    fn default() -> Self {
        ForwardTimeouts {
            read: Duration::from_secs(2),
            connect: Duration::from_secs(2),
            total: Duration::from_secs(5),
        }
    }
}

/// The buckets of CoreDNS's time histograms: 0.00025 s doubling, 16 buckets.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
    2.048, 4.096, 8.192,
];

/// A lock-free histogram with [`DURATION_BUCKETS`].
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is above the largest bucket.
    pub buckets: [AtomicU64; 17],
    pub count: AtomicU64,
    pub sum_micros: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            d.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }
}

/// Why a reply that reached us was not taken as the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Another message id (a spoof, or a late reply to an earlier query).
    Id,
    /// The right id but another question, or not a response (QR unset).
    Question,
    /// Bytes that do not parse as a DNS message (garbage, cut short).
    Malformed,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [DropReason::Id, DropReason::Question, DropReason::Malformed];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Id => "id",
            DropReason::Question => "question",
            DropReason::Malformed => "malformed",
        }
    }
}

/// Header rcodes are 4 bits; index 16 holds extended ones.
const RCODE_SLOTS: usize = 17;

fn rcode_slot(rcode: ResponseCode) -> usize {
    (u16::from(rcode) as usize).min(RCODE_SLOTS - 1)
}

/// Per-upstream counters for the `coredns_proxy_*` metrics (label `to` = [`Self::addr`]).
#[derive(Debug)]
pub struct UpstreamStats {
    pub addr: SocketAddr,
    /// A `tls://` upstream: its connections are `tcp-tls` in the metrics, as in CoreDNS.
    pub tls: bool,
    /// Queries sent (each attempt, including retries over TCP).
    pub requests: AtomicU64,
    /// Replies per rcode (index = rcode, 16 = extended rcodes).
    pub rcodes: [AtomicU64; RCODE_SLOTS],
    /// Exchange durations per rcode, as `rcodes`.
    pub durations: [Histogram; RCODE_SLOTS],
    /// Attempts with no usable reply (timeout, refused, reset, bad reply).
    pub errors: AtomicU64,
    pub healthcheck_failures: AtomicU64,
    /// Connection cache per proto: UDP sockets are never reused, so UDP counts only misses.
    /// For a `tls://` upstream the TCP counters count its TLS connections.
    pub conn_cache_hits_tcp: AtomicU64,
    pub conn_cache_misses_tcp: AtomicU64,
    pub conn_cache_misses_udp: AtomicU64,
    /// Replies dropped, by [`DropReason`] (index = position in `DropReason::ALL`).
    pub dropped: [AtomicU64; 3],
}

impl UpstreamStats {
    fn new(addr: SocketAddr, tls: bool) -> Self {
        UpstreamStats {
            addr,
            tls,
            requests: AtomicU64::new(0),
            rcodes: Default::default(),
            durations: Default::default(),
            errors: AtomicU64::new(0),
            healthcheck_failures: AtomicU64::new(0),
            conn_cache_hits_tcp: AtomicU64::new(0),
            conn_cache_misses_tcp: AtomicU64::new(0),
            conn_cache_misses_udp: AtomicU64::new(0),
            dropped: Default::default(),
        }
    }

    /// Replies dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    fn drop_reply(&self, reason: DropReason) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Replies seen with `rcode`.
    pub fn rcode_count(&self, rcode: ResponseCode) -> u64 {
        self.rcodes[rcode_slot(rcode)].load(Ordering::Relaxed)
    }
}

/// Counters of one `forward` instance.
#[derive(Debug)]
pub struct ForwardStats {
    /// `coredns_forward_max_concurrent_rejects_total`.
    pub max_concurrent_rejects: AtomicU64,
    /// `coredns_forward_healthcheck_broken_total`: every upstream was down.
    pub healthcheck_broken: AtomicU64,
    /// Queries in flight now, and the most there have been at once.
    pub in_flight: AtomicU32,
    pub in_flight_peak: AtomicU32,
    pub upstreams: Vec<Arc<UpstreamStats>>,
}

struct Upstream {
    addr: SocketAddr,
    /// Set for `tls://` upstreams: every query goes over TLS.
    tls: Option<DotClient>,
    /// A failed TLS handshake was logged; cleared by a good one (one warning per outage, not
    /// one per query and probe).
    tls_warned: AtomicBool,
    /// Consecutive failures (queries and health probes); reset by any reply.
    fails: AtomicU32,
    probing: AtomicBool,
    idle: Mutex<Vec<(Conn, Instant)>>,
    stats: Arc<UpstreamStats>,
}

/// A pooled stream connection.
enum Conn {
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

struct Inner {
    from: Name,
    except: Vec<Name>,
    upstreams: Vec<Arc<Upstream>>,
    policy: ForwardPolicy,
    force_tcp: bool,
    prefer_udp: bool,
    expire: Duration,
    max_fails: u32,
    health_check: Duration,
    health_check_rd: bool,
    health_check_name: Name,
    /// `max_concurrent`, or [`DEFAULT_MAX_IN_FLIGHT`].
    max_in_flight: u32,
    next_rr: AtomicUsize,
    timeouts: ForwardTimeouts,
    stats: Arc<ForwardStats>,
    /// Stops health probes when the handler is dropped (e.g. on reload).
    cancel: CancellationToken,
}

pub struct Forward {
    inner: Arc<Inner>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

/// `nameserver` lines of a resolv.conf. Beyond the standard `nameserver IP` (port 53), an
/// `IP:PORT` or `[IPv6]:PORT` is accepted so local setups and tests can use other ports.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        // A zone index (fe80::1%eth0) cannot be expressed in SocketAddr parsing; skip it.
        let addr = addr.split('%').next().unwrap_or(addr);
        if let Ok(ip) = addr.parse::<IpAddr>() {
            out.push(SocketAddr::new(ip, 53));
        } else if let Ok(sa) = addr.parse::<SocketAddr>() {
            out.push(sa);
        }
    }
    out
}

impl Forward {
    pub fn new(cfg: &ForwardConfig) -> Result<Forward, ForwardError> {
        Forward::with_timeouts(cfg, ForwardTimeouts::default())
    }

    pub fn with_timeouts(
        cfg: &ForwardConfig,
        timeouts: ForwardTimeouts,
    ) -> Result<Forward, ForwardError> {
        // Destructured so a new config field cannot be forgotten here.
        let ForwardConfig {
            from,
            to,
            except,
            force_tcp,
            prefer_udp,
            expire,
            max_fails,
            health_check,
            health_check_no_rec,
            health_check_domain,
            policy,
            max_concurrent,
            tls,
            tls_servername,
        } = cfg;
        let any_tls = to.iter().any(|u| {
            matches!(
                u,
                UpstreamConfig::Addr {
                    transport: Transport::Tls,
                    ..
                }
            )
        });
        let dot = if any_tls {
            Some(
                DotClient::new(tls.as_ref(), tls_servername.as_deref())
                    .map_err(ForwardError::Tls)?,
            )
        } else {
            // CoreDNS ignores them too; say so, since it is likely a mistake.
            if tls.is_some() || tls_servername.is_some() {
                warn!("forward: 'tls' and 'tls_servername' apply only to tls:// upstreams, and there are none");
            }
            None
        };
        let mut addrs: Vec<(SocketAddr, Option<DotClient>)> = Vec::new();
        for up in to {
            match up {
                UpstreamConfig::Addr {
                    transport: Transport::Dns,
                    addr,
                } => addrs.push((*addr, None)),
                UpstreamConfig::Addr {
                    transport: Transport::Tls,
                    addr,
                } => addrs.push((*addr, dot.clone())),
                UpstreamConfig::Addr { transport, .. } => {
                    return Err(ForwardError::Transport(match transport {
                        Transport::Tls => "tls",
                        Transport::Grpc => "grpc",
                        Transport::Https => "https",
                        Transport::Quic => "quic",
                        Transport::Dns => "dns",
                    }))
                }
                UpstreamConfig::ResolvConf(path) => {
                    addrs.extend(read_resolv_conf(path)?.into_iter().map(|a| (a, None)))
                }
            }
        }
        if addrs.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        if addrs.len() > ForwardConfig::MAX_UPSTREAMS {
            return Err(ForwardError::TooMany);
        }
        let from = zone::parse(std::slice::from_ref(from))
            .map_err(ForwardError::Zone)?
            .remove(0);
        let except = zone::parse(except).map_err(ForwardError::Zone)?;
        let health_check_name = zone::parse(std::slice::from_ref(health_check_domain))
            .map_err(ForwardError::Zone)?
            .remove(0);
        let upstreams: Vec<Arc<Upstream>> = addrs
            .into_iter()
            .map(|(addr, tls)| {
                Arc::new(Upstream {
                    addr,
                    stats: Arc::new(UpstreamStats::new(addr, tls.is_some())),
                    tls,
                    tls_warned: AtomicBool::new(false),
                    fails: AtomicU32::new(0),
                    probing: AtomicBool::new(false),
                    idle: Mutex::new(Vec::new()),
                })
            })
            .collect();
        let stats = Arc::new(ForwardStats {
            max_concurrent_rejects: AtomicU64::new(0),
            healthcheck_broken: AtomicU64::new(0),
            in_flight: AtomicU32::new(0),
            in_flight_peak: AtomicU32::new(0),
            upstreams: upstreams.iter().map(|u| u.stats.clone()).collect(),
        });
        Ok(Forward {
            inner: Arc::new(Inner {
                from,
                except,
                upstreams,
                policy: *policy,
                force_tcp: *force_tcp,
                // CoreDNS ignores prefer_udp under force_tcp.
                prefer_udp: *prefer_udp && !*force_tcp,
                expire: *expire,
                max_fails: *max_fails,
                health_check: *health_check,
                health_check_rd: !*health_check_no_rec,
                health_check_name,
                max_in_flight: max_concurrent.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
                next_rr: AtomicUsize::new(0),
                timeouts,
                stats,
                cancel: CancellationToken::new(),
            }),
        })
    }

    pub fn stats(&self) -> Arc<ForwardStats> {
        self.inner.stats.clone()
    }

    /// The upstream addresses in configuration order (resolv.conf files expanded).
    pub fn upstreams(&self) -> Vec<SocketAddr> {
        self.inner.upstreams.iter().map(|u| u.addr).collect()
    }

    /// Whether the upstream at `addr` currently counts as down.
    pub fn is_down(&self, addr: SocketAddr) -> bool {
        self.inner
            .upstreams
            .iter()
            .any(|u| u.addr == addr && self.inner.down(u))
    }
}

fn read_resolv_conf(path: &Path) -> Result<Vec<SocketAddr>, ForwardError> {
    let text = std::fs::read_to_string(path).map_err(|source| ForwardError::ResolvConf {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse_resolv_conf(&text))
}

/// Decrements the in-flight count when the query finishes or is abandoned.
struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Handler for Forward {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn handle(&self, req: &Request) -> Flow {
        let inner = &self.inner;
        if !zone::in_zone(&req.qname, &inner.from) || zone::in_any(&req.qname, &inner.except) {
            return Flow::Next;
        }
        let now = inner.stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        let guard = InFlight(inner.clone());
        if now > inner.max_in_flight {
            drop(guard);
            inner
                .stats
                .max_concurrent_rejects
                .fetch_add(1, Ordering::Relaxed);
            return Flow::Answer(Answer::rcode(ResponseCode::Refused, PLUGIN));
        }
        inner.stats.in_flight_peak.fetch_max(now, Ordering::Relaxed);
        let query = upstream_query(&req.message);
        let proto = if inner.force_tcp {
            Proto::Tcp
        } else if inner.prefer_udp {
            Proto::Udp
        } else {
            req.proto
        };
        let inner = inner.clone();
        Flow::Pending(Box::pin(async move {
            let _guard = guard;
            let answer = match timeout(inner.timeouts.total, inner.forward(&query, proto)).await {
                Ok(Some(a)) => a,
                _ => Answer::rcode(ResponseCode::ServFail, PLUGIN),
            };
            Some(answer)
        }))
    }
}

/// The client's query as sent upstream: same question and flags, EDNS added when absent.
fn upstream_query(client: &Message) -> Message {
    let mut q = Message::new(0, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = client.metadata.recursion_desired;
    q.metadata.checking_disabled = client.metadata.checking_disabled;
    q.queries = client.queries.clone();
    let mut edns = client.edns.clone().unwrap_or_default();
    edns.set_max_payload(edns.max_payload().max(UPSTREAM_PAYLOAD));
    q.set_edns(edns);
    q
}

#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("{0}")]
    Bad(&'static str),
}

impl Inner {
    fn down(&self, up: &Upstream) -> bool {
        self.max_fails > 0 && up.fails.load(Ordering::Relaxed) >= self.max_fails
    }

    /// Upstreams to try, in order: by policy among the healthy ones; if none is healthy, all
    /// of them in random order (CoreDNS does the same rather than failing outright).
    fn order(&self) -> Vec<Arc<Upstream>> {
        let n = self.upstreams.len();
        let mut list: Vec<Arc<Upstream>> = match self.policy {
            ForwardPolicy::Random => {
                let mut l = self.upstreams.clone();
                l.shuffle(&mut rand::rng());
                l
            }
            ForwardPolicy::RoundRobin => {
                let start = self.next_rr.fetch_add(1, Ordering::Relaxed) % n;
                (0..n)
                    .map(|i| self.upstreams[(start + i) % n].clone())
                    .collect()
            }
            ForwardPolicy::Sequential => self.upstreams.clone(),
        };
        let healthy: Vec<Arc<Upstream>> = list.iter().filter(|u| !self.down(u)).cloned().collect();
        if healthy.is_empty() {
            self.stats
                .healthcheck_broken
                .fetch_add(1, Ordering::Relaxed);
            list.shuffle(&mut rand::rng());
            list
        } else {
            healthy
        }
    }

    async fn forward(self: &Arc<Self>, query: &Message, proto: Proto) -> Option<Answer> {
        for up in self.order() {
            let start = Instant::now();
            match self.exchange(&up, query, proto).await {
                Ok(reply) => {
                    up.fails.store(0, Ordering::Relaxed);
                    let rcode = reply.metadata.response_code;
                    let slot = rcode_slot(rcode);
                    up.stats.rcodes[slot].fetch_add(1, Ordering::Relaxed);
                    up.stats.durations[slot].observe(start.elapsed());
                    return Some(Answer {
                        rcode,
                        authoritative: reply.metadata.authoritative,
                        recursion_available: reply.metadata.recursion_available,
                        answers: reply.answers,
                        authorities: reply.authorities,
                        additionals: reply.additionals,
                        plugin: PLUGIN,
                        no_reply: false,
                        zone: None,
                        cacheable: false,
                        shuffled: false,
                        lease: None,
                        zonal: Default::default(),
                    });
                }
                Err(e) => {
                    debug!(upstream = %up.addr, error = %e, "forward attempt failed");
                    up.stats.errors.fetch_add(1, Ordering::Relaxed);
                    up.fails.fetch_add(1, Ordering::Relaxed);
                    self.start_probe(&up);
                }
            }
        }
        None
    }

    /// One attempt against one upstream; a truncated UDP reply is retried over TCP. A
    /// `tls://` upstream is always asked over TLS, whatever `proto` (as in CoreDNS).
    async fn exchange(
        &self,
        up: &Upstream,
        query: &Message,
        proto: Proto,
    ) -> Result<Message, ExchangeError> {
        let mut q = query.clone();
        // A fresh random id per attempt: one of the two things a spoofer must guess.
        q.metadata.id = rand::random();
        if proto == Proto::Udp && up.tls.is_none() {
            let reply = self.exchange_udp(up, &q).await?;
            if !reply.metadata.truncation {
                return Ok(reply);
            }
            q.metadata.id = rand::random();
        }
        let reply = self.exchange_stream(up, &q).await?;
        if reply.metadata.truncation {
            // Never hand on a partial answer: the cache would keep it.
            return Err(ExchangeError::Bad("truncated over TCP"));
        }
        Ok(reply)
    }

    async fn exchange_udp(&self, up: &Upstream, q: &Message) -> Result<Message, ExchangeError> {
        up.stats.requests.fetch_add(1, Ordering::Relaxed);
        up.stats
            .conn_cache_misses_udp
            .fetch_add(1, Ordering::Relaxed);
        let bytes = q
            .to_vec()
            .map_err(|_| ExchangeError::Bad("cannot encode"))?;
        let local: SocketAddr = match up.addr {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local).await?;
        sock.connect(up.addr).await?;
        sock.send(&bytes).await?;
        // The upstream may send up to the payload size we offered, no more.
        let mut buf = vec![0u8; usize::from(q.max_payload()).max(512)];
        let deadline = Instant::now() + self.timeouts.read;
        loop {
            let n = match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => return Err(ExchangeError::Timeout),
            };
            // Anything that is not the reply to this exact query is dropped, and we keep
            // waiting for the real one: an off-path spoofer must not be able to end the wait.
            match matching_reply(q, &buf[..n]) {
                Ok(reply) => return Ok(reply),
                Err(reason) => {
                    up.stats.drop_reply(reason);
                    debug!(upstream = %up.addr, reason = reason.as_str(), "dropped a UDP reply that does not answer the query");
                }
            }
        }
    }

    /// Over TCP, or TLS for a `tls://` upstream.
    async fn exchange_stream(&self, up: &Upstream, q: &Message) -> Result<Message, ExchangeError> {
        up.stats.requests.fetch_add(1, Ordering::Relaxed);
        let bytes = q
            .to_vec()
            .map_err(|_| ExchangeError::Bad("cannot encode"))?;
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&(bytes.len().min(u16::MAX as usize) as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
        // A pooled connection the upstream has closed meanwhile fails on first use; then one
        // fresh connection is tried before this counts as the upstream's failure.
        if let Some(mut conn) = self.take_idle(up) {
            up.stats.conn_cache_hits_tcp.fetch_add(1, Ordering::Relaxed);
            if let Ok(reply) = self.roundtrip(up, &mut conn, &framed, q).await {
                self.put_idle(up, conn);
                return Ok(reply);
            }
        } else {
            up.stats
                .conn_cache_misses_tcp
                .fetch_add(1, Ordering::Relaxed);
        }
        let mut conn = self.connect(up).await?;
        let reply = self.roundtrip(up, &mut conn, &framed, q).await?;
        self.put_idle(up, conn);
        Ok(reply)
    }

    /// A new connection, with the TLS handshake done for a `tls://` upstream.
    async fn connect(&self, up: &Upstream) -> Result<Conn, ExchangeError> {
        let work = async {
            let tcp = TcpStream::connect(up.addr).await?;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = &up.tls else {
                return Ok(Conn::Tcp(tcp));
            };
            match tls.handshake(tcp, up.addr).await {
                Ok(s) => {
                    up.tls_warned.store(false, Ordering::Relaxed);
                    Ok(Conn::Tls(Box::new(s)))
                }
                Err(e) => {
                    // Usually configuration (wrong CA or server name): worth a warning, once.
                    if !up.tls_warned.swap(true, Ordering::Relaxed) {
                        warn!(
                            upstream = %up.addr,
                            server_name = ?tls.server_name(up.addr),
                            "forward: TLS handshake with upstream failed: {e}"
                        );
                    }
                    Err(ExchangeError::Tls(e))
                }
            }
        };
        match timeout(self.timeouts.connect, work).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Timeout),
        }
    }

    async fn roundtrip(
        &self,
        up: &Upstream,
        conn: &mut Conn,
        framed: &[u8],
        q: &Message,
    ) -> Result<Message, ExchangeError> {
        match conn {
            Conn::Tcp(s) => self.stream_roundtrip(up, s, framed, q).await,
            Conn::Tls(s) => self.stream_roundtrip(up, s.as_mut(), framed, q).await,
        }
    }

    async fn stream_roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        up: &Upstream,
        stream: &mut S,
        framed: &[u8],
        q: &Message,
    ) -> Result<Message, ExchangeError> {
        let work = async {
            stream.write_all(framed).await?;
            // TLS buffers records; a no-op for TCP.
            stream.flush().await?;
            loop {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await?;
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                stream.read_exact(&mut buf).await?;
                match matching_reply(q, &buf) {
                    Ok(reply) => return Ok::<_, ExchangeError>(reply),
                    // Framing is lost or the peer is not speaking DNS: the connection is
                    // useless (and, failing, is not pooled again).
                    Err(DropReason::Malformed) => {
                        up.stats.drop_reply(DropReason::Malformed);
                        return Err(ExchangeError::Bad("malformed reply over TCP"));
                    }
                    // A late reply to an earlier, timed-out query on this connection, or a
                    // wrong one: skip it and keep reading.
                    Err(reason) => up.stats.drop_reply(reason),
                }
            }
        };
        match timeout(self.timeouts.read, work).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError::Timeout),
        }
    }

    fn take_idle(&self, up: &Upstream) -> Option<Conn> {
        let mut idle = up.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        idle.retain(|(_, since)| now.duration_since(*since) < self.expire);
        idle.pop().map(|(s, _)| s)
    }

    fn put_idle(&self, up: &Upstream, conn: Conn) {
        let mut idle = up.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_TCP {
            idle.push((conn, Instant::now()));
        }
    }

    /// Probes a failing upstream until it answers: right away, then every `health_check`.
    /// Each failed probe counts towards `max_fails`; an answer brings the upstream back.
    fn start_probe(self: &Arc<Self>, up: &Arc<Upstream>) {
        if self.max_fails == 0 || self.health_check.is_zero() {
            return;
        }
        if up.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            up.probing.store(false, Ordering::Release);
            return;
        };
        let (inner, up) = (Arc::downgrade(self), up.clone());
        let cancel = self.cancel.clone();
        rt.spawn(async move {
            loop {
                let Some(this) = inner.upgrade() else { break };
                let mut q = Message::new(0, MessageType::Query, OpCode::Query);
                q.metadata.recursion_desired = this.health_check_rd;
                let mut query = Query::query(this.health_check_name.clone(), RecordType::NS);
                query.set_query_class(DNSClass::IN);
                q.add_query(query);
                let proto = if this.force_tcp {
                    Proto::Tcp
                } else {
                    Proto::Udp
                };
                let ok = tokio::select! {
                    _ = cancel.cancelled() => break,
                    r = this.exchange(&up, &q, proto) => r.is_ok(),
                };
                if ok {
                    up.fails.store(0, Ordering::Relaxed);
                    break;
                }
                up.stats
                    .healthcheck_failures
                    .fetch_add(1, Ordering::Relaxed);
                up.fails.fetch_add(1, Ordering::Relaxed);
                let interval = this.health_check;
                drop(this);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(interval) => {}
                }
            }
            up.probing.store(false, Ordering::Release);
        });
    }
}

/// `bytes` parsed, if it is a response to `q`: same id, same question (name compared without
/// case, since some servers do not echo it exactly), and QR set; else why not.
fn matching_reply(q: &Message, bytes: &[u8]) -> Result<Message, DropReason> {
    if bytes.len() < 12 {
        return Err(DropReason::Malformed);
    }
    // The id first: a spoof with the wrong id costs no parsing.
    if u16::from_be_bytes([bytes[0], bytes[1]]) != q.metadata.id {
        return Err(DropReason::Id);
    }
    let reply = Message::from_vec(bytes).map_err(|_| DropReason::Malformed)?;
    if reply.metadata.message_type != MessageType::Response {
        return Err(DropReason::Question);
    }
    let (Some(a), Some(b)) = (reply.queries.first(), q.queries.first()) else {
        return Err(DropReason::Question);
    };
    let same = reply.queries.len() == 1
        && a.name() == b.name()
        && a.query_type() == b.query_type()
        && a.query_class() == b.query_class();
    if same {
        Ok(reply)
    } else {
        Err(DropReason::Question)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_lines() {
        let text = "# comment\nsearch a.b\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n\
                    nameserver 127.0.0.1:5300\nnameserver\nnameserver bogus\noptions ndots:5\n";
        let got = parse_resolv_conf(text);
        assert_eq!(
            got,
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "127.0.0.1:5300".parse().unwrap(),
            ]
        );
    }

    #[test]
    fn in_flight_is_bounded_without_max_concurrent() {
        let mut cfg = ForwardConfig::new(
            ".".into(),
            vec![UpstreamConfig::Addr {
                transport: Transport::Dns,
                addr: "127.0.0.1:53".parse().unwrap(),
            }],
        );
        let f = Forward::new(&cfg).unwrap();
        assert_eq!(f.inner.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        cfg.max_concurrent = Some(7);
        assert_eq!(Forward::new(&cfg).unwrap().inner.max_in_flight, 7);
    }

    #[test]
    fn reply_matching() {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(
            Name::from_ascii("Example.org.").unwrap(),
            RecordType::A,
        ));
        let mut r = q.clone();
        r.metadata.message_type = MessageType::Response;
        let ok = r.to_vec().unwrap();
        assert!(matching_reply(&q, &ok).is_ok());
        let mut wrong_id = r.clone();
        wrong_id.metadata.id = 8;
        let why = |b: &[u8]| matching_reply(&q, b).err();
        assert_eq!(why(&wrong_id.to_vec().unwrap()), Some(DropReason::Id));
        let mut wrong_q = r.clone();
        wrong_q.queries[0].set_query_type(RecordType::AAAA);
        assert_eq!(why(&wrong_q.to_vec().unwrap()), Some(DropReason::Question));
        assert_eq!(
            why(&q.to_vec().unwrap()),
            Some(DropReason::Question),
            "QR unset"
        );
        assert_eq!(why(&[0, 7, 0x80]), Some(DropReason::Malformed));
        assert_eq!(
            why(&ok[..ok.len() - 3]),
            Some(DropReason::Malformed),
            "cut short"
        );
    }
}
