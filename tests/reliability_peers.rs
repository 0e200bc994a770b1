//! Hostile and broken peers (issue 15, item 4; item 6's quiet logs): upstream DNS servers
//! that answer wrongly, slowly or not at all, and a Kubernetes API server that storms 410s,
//! stalls, fails lists, lists slowly, resets streams or goes away. Everything runs on
//! 127.0.0.1 against real sockets: the forwarder against scripted upstreams made here, the
//! Kubernetes source (and a real `clusterdns serve --kubeconfig` process) against the test
//! API server of tests/support with its fault knobs.

mod dnsclient;
mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clusterdns::corefile::{parse_str, ForwardConfig, PluginConfig};
use clusterdns::dns::forward::{DropReason, ForwardTimeouts};
use clusterdns::dns::pipeline::Proto;
use clusterdns::dns::{Answer, Forward, Pipeline, Request};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// A scripted upstream: for every query, UDP and TCP each send what their script says.

/// One thing the upstream sends in reply to a query.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    /// The right answer: A 10.0.0.1.
    Genuine,
    /// A spoof: another id, answer 6.6.6.6.
    WrongId,
    /// The right id, another question (AAAA), answer 6.6.6.6.
    WrongQuestion,
    /// The right id and question with QR unset (a query echoed back).
    NotResponse,
    /// The genuine reply cut short in the middle of the question.
    Cut,
    /// Random bytes starting with the right id (so they pass the id check).
    Garbage,
    /// The genuine reply with the TC bit and no records.
    Truncated,
    /// The genuine reply (right id, right question), from another port of this host.
    FromOtherPort,
    /// Nothing, after the delay.
    Nothing,
}

struct Script {
    udp: Vec<Reply>,
    tcp: Vec<Reply>,
    delay: Duration,
}

struct Upstream {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    /// (source port, id) of every UDP query received.
    seen: Arc<Mutex<Vec<(u16, u16)>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Upstream {
    async fn start(udp: &[Reply], tcp: &[Reply]) -> Upstream {
        let script = Arc::new(Mutex::new(Script {
            udp: udp.to_vec(),
            tcp: tcp.to_vec(),
            delay: Duration::ZERO,
        }));
        let seen = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..20 {
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = sock.local_addr().unwrap();
            let Ok(listener) = TcpListener::bind(addr).await else {
                continue;
            };
            let other = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
            let tasks = vec![
                tokio::spawn(udp_loop(sock, other, script.clone(), seen.clone())),
                tokio::spawn(tcp_loop(listener, script.clone())),
            ];
            return Upstream {
                addr,
                script,
                seen,
                tasks,
            };
        }
        panic!("no free loopback port for UDP and TCP");
    }

    fn set_udp(&self, udp: &[Reply]) {
        self.script.lock().unwrap().udp = udp.to_vec();
    }

    fn set_delay(&self, d: Duration) {
        self.script.lock().unwrap().delay = d;
    }
}

fn render(query: &Message, reply: Reply, tcp: bool) -> Option<Vec<u8>> {
    let q = query.queries.first()?.clone();
    let mut resp = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = query.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = query.queries.clone();
    let answer = |ip: Ipv4Addr| Record::from_rdata(q.name().clone(), 60, RData::A(A(ip)));
    let genuine = {
        let mut m = resp.clone();
        m.add_answer(answer(Ipv4Addr::new(10, 0, 0, 1)));
        m
    };
    let bytes = match reply {
        Reply::Genuine | Reply::FromOtherPort => genuine.to_vec().unwrap(),
        Reply::WrongId => {
            let mut m = resp.clone();
            m.metadata.id = query.metadata.id.wrapping_add(1);
            m.add_answer(answer(Ipv4Addr::new(6, 6, 6, 6)));
            m.to_vec().unwrap()
        }
        Reply::WrongQuestion => {
            let mut m = resp.clone();
            m.queries[0].set_query_type(RecordType::AAAA);
            m.add_answer(answer(Ipv4Addr::new(6, 6, 6, 6)));
            m.to_vec().unwrap()
        }
        Reply::NotResponse => {
            let mut m = genuine.clone();
            m.metadata.message_type = MessageType::Query;
            m.to_vec().unwrap()
        }
        Reply::Cut => {
            let full = genuine.to_vec().unwrap();
            full[..14].to_vec()
        }
        Reply::Garbage => {
            let mut b: Vec<u8> = (0..40).map(|_| rand::random::<u8>()).collect();
            b[..2].copy_from_slice(&query.metadata.id.to_be_bytes());
            // Counts that promise far more records than follow: never parses.
            b[4..12].copy_from_slice(&[0xff; 8]);
            b
        }
        Reply::Truncated if !tcp => {
            let mut m = resp.clone();
            m.metadata.truncation = true;
            m.to_vec().unwrap()
        }
        Reply::Truncated => genuine.to_vec().unwrap(),
        Reply::Nothing => return None,
    };
    Some(bytes)
}

async fn udp_loop(
    sock: UdpSocket,
    other: Arc<UdpSocket>,
    script: Arc<Mutex<Script>>,
    seen: Arc<Mutex<Vec<(u16, u16)>>>,
) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, src)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let Ok(query) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        // Health checks (`. NS`) are not the queries under test.
        if query.queries.first().is_some_and(|q| !q.name().is_root()) {
            seen.lock().unwrap().push((src.port(), query.metadata.id));
        }
        let (replies, delay) = {
            let s = script.lock().unwrap();
            (s.udp.clone(), s.delay)
        };
        let (sock, other) = (sock.clone(), other.clone());
        // Each query on its own task, so a slow reply holds up no other query.
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for r in replies {
                if let Some(bytes) = render(&query, r, false) {
                    let from = if r == Reply::FromOtherPort {
                        &other
                    } else {
                        &sock
                    };
                    let _ = from.send_to(&bytes, src).await;
                }
            }
        });
    }
}

async fn tcp_loop(listener: TcpListener, script: Arc<Mutex<Script>>) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let script = script.clone();
        conns.spawn(async move {
            loop {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                let Ok(query) = Message::from_vec(&buf) else {
                    return;
                };
                let replies = script.lock().unwrap().tcp.clone();
                for r in replies {
                    if let Some(bytes) = render(&query, r, true) {
                        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&bytes);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn forward_cfg(corefile_line: &str) -> ForwardConfig {
    let corefile = format!(".:1053 {{\n{corefile_line}\n}}\n");
    let mut c = parse_str(&corefile, Path::new("Corefile"), &|_| None)
        .unwrap_or_else(|e| panic!("bad test Corefile: {e}"));
    c.servers
        .remove(0)
        .plugins
        .into_iter()
        .find_map(|p| match p {
            PluginConfig::Forward(f) => Some(f),
            _ => None,
        })
        .expect("a forward directive")
}

fn timeouts(read_ms: u64, total_ms: u64) -> ForwardTimeouts {
    ForwardTimeouts {
        read: Duration::from_millis(read_ms),
        connect: Duration::from_millis(read_ms),
        total: Duration::from_millis(total_ms),
    }
}

/// A forwarder without health checks (`max_fails 0`), so that only the queries under test
/// reach the upstreams and the counters count only them.
fn forward(line: &str, t: ForwardTimeouts) -> Arc<Forward> {
    let mut cfg = forward_cfg(line);
    cfg.max_fails = 0;
    Arc::new(Forward::with_timeouts(&cfg, t).unwrap())
}

fn request(name: &str, proto: Proto) -> Request {
    let qname = Name::from_ascii(name).unwrap();
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname.clone(), RecordType::A));
    Request {
        message: m,
        qname,
        qtype: RecordType::A,
        src: "127.0.0.1:40000".parse().unwrap(),
        proto,
    }
}

async fn ask(p: &Pipeline, name: &str) -> Answer {
    p.resolve(&request(name, Proto::Udp)).await
}

fn first_ip(a: &Answer) -> Option<Ipv4Addr> {
    a.answers.iter().find_map(|r| match &r.data {
        RData::A(A(ip)) => Some(*ip),
        _ => None,
    })
}

const GENUINE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

// ---------------------------------------------------------------------------------------------
// The forwarder against hostile upstreams.

#[tokio::test]
async fn udp_replies_that_do_not_answer_the_query_are_dropped_counted_and_waited_past() {
    let up = Upstream::start(&[], &[Reply::Genuine]).await;
    let fwd = forward(&format!("forward . {}", up.addr), timeouts(300, 1000));
    let stats = fwd.stats().upstreams[0].clone();
    let p = Pipeline::new(vec![fwd]);
    let cases = [
        (Reply::WrongId, Some(DropReason::Id)),
        (Reply::WrongQuestion, Some(DropReason::Question)),
        (Reply::NotResponse, Some(DropReason::Question)),
        (Reply::Cut, Some(DropReason::Malformed)),
        (Reply::Garbage, Some(DropReason::Malformed)),
        // The kernel drops it (the socket is connected to the upstream): never seen, never
        // counted.
        (Reply::FromOtherPort, None),
    ];
    for (bad, reason) in cases {
        let before: Vec<u64> = DropReason::ALL.iter().map(|r| stats.dropped(*r)).collect();
        // Two bad replies, then the genuine one: the wait goes on past the bad ones.
        up.set_udp(&[bad, bad, Reply::Genuine]);
        let a = ask(&p, "a.example.org.").await;
        assert_eq!(a.rcode, ResponseCode::NoError, "{bad:?} then genuine");
        assert_eq!(first_ip(&a), Some(GENUINE), "{bad:?} then genuine");
        // The bad replies alone are no answer.
        up.set_udp(&[bad, bad]);
        let a = ask(&p, "a.example.org.").await;
        assert_eq!(a.rcode, ResponseCode::ServFail, "{bad:?} alone");
        assert!(a.answers.is_empty(), "{bad:?} alone");
        for (i, r) in DropReason::ALL.into_iter().enumerate() {
            let want = if Some(r) == reason { 4 } else { 0 };
            assert_eq!(
                stats.dropped(r) - before[i],
                want,
                "{bad:?}: dropped replies counted as {r:?}"
            );
        }
    }
    // A TC reply is no spoof: the query is asked again over TCP.
    up.set_udp(&[Reply::Truncated]);
    assert_eq!(first_ip(&ask(&p, "a.example.org.").await), Some(GENUINE));
}

#[tokio::test]
async fn udp_source_ports_and_ids_are_random_per_query() {
    let up = Upstream::start(&[Reply::Genuine], &[]).await;
    let p = Pipeline::new(vec![forward(
        &format!("forward . {}", up.addr),
        timeouts(1000, 2000),
    )]);
    const N: usize = 64;
    for i in 0..N {
        let a = ask(&p, &format!("n{i}.example.org.")).await;
        assert_eq!(first_ip(&a), Some(GENUINE));
    }
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), N);
    let ports: HashSet<u16> = seen.iter().map(|s| s.0).collect();
    let ids: HashSet<u16> = seen.iter().map(|s| s.1).collect();
    // 64 draws from ~28 000 ephemeral ports or 65 536 ids: a few collisions at most.
    assert!(ports.len() >= N - 4, "source ports reused: {seen:?}");
    assert!(ids.len() >= N - 4, "ids reused: {seen:?}");
    let sequential = |v: Vec<u16>| {
        v.windows(2)
            .filter(|w| w[1] == w[0].wrapping_add(1))
            .count()
    };
    assert!(
        sequential(seen.iter().map(|s| s.0).collect()) < 4,
        "source ports follow each other: {seen:?}"
    );
    assert!(
        sequential(seen.iter().map(|s| s.1).collect()) < 4,
        "ids follow each other: {seen:?}"
    );
}

#[tokio::test]
async fn tcp_garbage_ends_the_attempt_and_the_next_upstream_answers() {
    let bad = Upstream::start(&[], &[Reply::Garbage]).await;
    let good = Upstream::start(&[], &[Reply::WrongId, Reply::Genuine]).await;
    // A long read timeout: if garbage were waited past, the query would end in SERVFAIL at
    // the total timeout instead of reaching the second upstream.
    let fwd = forward(
        &format!(
            "forward . {} {} {{\nforce_tcp\npolicy sequential\n}}",
            bad.addr, good.addr
        ),
        timeouts(30_000, 30_000),
    );
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd]);
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(first_ip(&a), Some(GENUINE));
    let (b, g) = (&stats.upstreams[0], &stats.upstreams[1]);
    assert_eq!(b.dropped(DropReason::Malformed), 1);
    assert_eq!(b.errors.load(Ordering::Relaxed), 1);
    // On the good upstream's stream, a reply with another id is skipped, not fatal.
    assert_eq!(g.dropped(DropReason::Id), 1);
    assert_eq!(g.errors.load(Ordering::Relaxed), 0);
}

/// A silent upstream and a 2 s one: SERVFAIL at the configured total timeout. Paused tokio
/// time makes "within the timeout" exact: the clock moves only by timers, so the elapsed
/// time is what the forwarder waited, not how fast this machine is.
#[tokio::test(start_paused = true)]
async fn slow_and_silent_upstreams_are_servfail_within_the_timeout() {
    let up = Upstream::start(&[Reply::Nothing], &[]).await;
    let total = Duration::from_millis(1500);
    let p = Pipeline::new(vec![forward(
        &format!("forward . {}", up.addr),
        timeouts(600, total.as_millis() as u64),
    )]);
    for (what, delay, replies) in [
        ("silent", Duration::ZERO, vec![Reply::Nothing]),
        ("2 s slow", Duration::from_secs(2), vec![Reply::Genuine]),
    ] {
        up.set_delay(delay);
        up.set_udp(&replies);
        let start = tokio::time::Instant::now();
        let a = ask(&p, "a.example.org.").await;
        let waited = start.elapsed();
        assert_eq!(a.rcode, ResponseCode::ServFail, "{what}");
        assert!(waited <= total, "{what}: answered after {waited:?}");
    }
}

/// A silent upstream under floods: at most `max_concurrent` queries wait for it, the rest are
/// refused at once; another forward block answers meanwhile; when the waiting ones time out
/// nothing is left in flight, and a second flood finds the same bound (nothing accumulates).
/// The bound is checked by counting (the in-flight gauge and its peak, the queries that reach
/// the upstream), not by measuring memory or time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_holds_a_bounded_number_of_queries_and_others_are_unaffected() {
    let silent = Upstream::start(&[Reply::Nothing], &[]).await;
    let good = Upstream::start(&[Reply::Genuine], &[]).await;
    const BOUND: u32 = 32;
    const FLOOD: usize = 300;
    let slow = forward(
        &format!(
            "forward slow.test {} {{\nmax_concurrent {BOUND}\n}}",
            silent.addr
        ),
        timeouts(1000, 2000),
    );
    let stats = slow.stats();
    let p = Arc::new(Pipeline::new(vec![
        slow,
        forward(&format!("forward . {}", good.addr), timeouts(2000, 4000)),
    ]));
    for wave in 1..=2 {
        let mut flood = tokio::task::JoinSet::new();
        for i in 0..FLOOD {
            let p = p.clone();
            flood.spawn(async move { ask(&p, &format!("n{i}.slow.test.")).await.rcode });
        }
        support::eventually("the bound to fill up", Duration::from_secs(10), || {
            stats.in_flight.load(Ordering::Relaxed) == BOUND
        })
        .await;
        // Other names answer while the slow ones wait.
        let a = ask(&p, "other.example.org.").await;
        assert_eq!(first_ip(&a), Some(GENUINE));
        assert_eq!(
            stats.in_flight.load(Ordering::Relaxed),
            BOUND,
            "still waiting"
        );
        let mut rcodes = Vec::new();
        while let Some(r) = flood.join_next().await {
            rcodes.push(r.unwrap());
        }
        let n = |rcode| rcodes.iter().filter(|r| **r == rcode).count();
        assert_eq!(n(ResponseCode::ServFail), BOUND as usize, "{rcodes:?}");
        assert_eq!(
            n(ResponseCode::Refused),
            FLOOD - BOUND as usize,
            "{rcodes:?}"
        );
        assert_eq!(
            stats.max_concurrent_rejects.load(Ordering::Relaxed),
            (wave * (FLOOD - BOUND as usize)) as u64
        );
        assert_eq!(stats.in_flight_peak.load(Ordering::Relaxed), BOUND);
        assert_eq!(
            stats.in_flight.load(Ordering::Relaxed),
            0,
            "nothing left behind"
        );
        assert_eq!(
            silent.seen.lock().unwrap().len(),
            wave * BOUND as usize,
            "refused queries never reach the upstream"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes source against a sick API server.

use clusterdns::cluster::kube_source::{self, KubeSourceOptions};
use clusterdns::cluster::status::{ResourceKind, SourceStatus};
use clusterdns::cluster::ClusterView;
use support::apiserver::{ApiServer, Res, WatchList};
use support::{eventually, namespace, node, service, slice};

const WAIT: Duration = Duration::from_secs(20);

struct Source {
    view: Arc<ClusterView>,
    status: Arc<SourceStatus>,
    task: JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    fn has(&self, key: &str) -> bool {
        self.view.snapshot().service(key).is_some()
    }

    fn stale(&self) -> bool {
        self.status.stale_since().is_some()
    }
}

/// Quick retries and a 1 s stall timeout (the fake server bookmarks every 200 ms), so that
/// faults and recoveries play out in a few seconds; production keeps client-go's backoff and
/// a 2 min stall timeout.
fn options(server: &ApiServer) -> KubeSourceOptions {
    KubeSourceOptions {
        watch_nodes: true,
        api_url: Some(server.url()),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        stall_timeout: Duration::from_secs(1),
        summary_interval: Duration::from_millis(300),
        ..KubeSourceOptions::default()
    }
}

async fn start_source(server: &ApiServer, opts: KubeSourceOptions) -> Source {
    let client = kube_source::client(Some(&server.kubeconfig_path()), None)
        .await
        .expect("client from the fake server's kubeconfig");
    let view = ClusterView::new();
    let status = Arc::new(SourceStatus::new());
    let task = kube_source::spawn(client, view.clone(), status.clone(), opts);
    let source = Source { view, status, task };
    let s = &source;
    eventually("the initial sync", WAIT, || {
        s.status.ready() && s.has("nginx.demo") && !s.stale()
    })
    .await;
    source
}

/// Until the source's Services watch is open on the server. The initial sync is the lists; the
/// watches follow them. A watch opened after `expire_watches` would start from the compacted
/// resourceVersion, which is still valid: no 410 and no relist, and the change made for the
/// relist would arrive as a watch event (on a loaded machine, the tests that expire watches
/// right after the sync failed once in about 25 runs that way).
async fn watching_services(server: &ApiServer) {
    eventually("the services watch to be open", WAIT, || {
        server.open_watches(Res::Services) >= 1
    })
    .await;
}

/// Two namespaces, three services, a slice, two nodes: every kind needs more than one page
/// when the page size is 1.
fn seed(server: &ApiServer) {
    server.apply_all([
        namespace("demo"),
        namespace("default"),
        service("demo", "nginx", "10.96.0.10"),
        service("demo", "api", "10.96.0.11"),
        service("default", "web", "10.96.0.12"),
        slice("demo", "nginx-1", "nginx", &["10.1.0.1"]),
        slice("demo", "nginx-2", "nginx", &["10.1.0.2"]),
        node("node-1"),
        node("node-2"),
    ]);
}

/// The history is compacted faster than anyone can watch: every watch and every list
/// continuation is 410. No list completes (page size 1), so the last good view keeps serving
/// and the staleness grows from the first failure, never reset by the relists that keep
/// failing; when the storm ends, the source catches up by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_storm_keeps_the_last_view_stale_until_it_ends() {
    let server = ApiServer::start().await;
    seed(&server);
    let opts = KubeSourceOptions {
        page_size: 1,
        ..options(&server)
    };
    let source = start_source(&server, opts).await;
    let s = &source;
    let lists_before = server.list_requests(Res::Services);

    server.set_410_storm(true);
    server.apply(service("demo", "during", "10.96.0.20"));
    eventually("the storm to make the source stale", WAIT, || s.stale()).await;
    let since = s.status.stale_since();
    let attempts = s.status.failed_attempts();
    eventually("many failed relists", WAIT, || {
        s.status.failed_attempts() >= attempts + 20
            && server.list_requests(Res::Services) >= lists_before + 3
    })
    .await;
    assert_eq!(
        s.status.stale_since(),
        since,
        "staleness counts from the first failure"
    );
    assert!(
        s.has("nginx.demo") && s.has("web.default"),
        "last good view"
    );
    assert!(!s.has("during.demo"), "no list completed in the storm");
    assert!(s.status.ready(), "an outage after the sync keeps readiness");

    server.set_410_storm(false);
    eventually("recovery after the storm", WAIT, || {
        s.has("during.demo") && !s.stale()
    })
    .await;
    server.apply(service("demo", "after", "10.96.0.21"));
    eventually("the watch after the storm", WAIT, || s.has("after.demo")).await;
}

/// A watch that goes quiet (no events, no bookmarks, connection open) is restarted after the
/// stall timeout; the relist brings what changed meanwhile, while the watches stay stuck.
/// Without stall detection kube's client waits 295 s on such a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watch_is_restarted_and_changes_arrive_by_relist() {
    let server = ApiServer::start().await;
    seed(&server);
    let source = start_source(&server, options(&server)).await;
    let s = &source;

    server.stall_watches(true);
    server.apply(service("demo", "during", "10.96.0.20"));
    eventually(
        "the stall to be noticed and the relist to bring the change",
        WAIT,
        || {
            let stalled = s.status.kinds().iter().any(|k| {
                k.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("stalled"))
            });
            stalled && s.stale() && s.has("during.demo")
        },
    )
    .await;
    assert!(s.has("nginx.demo"));
    let err = s
        .status
        .last_error(ResourceKind::Services)
        .unwrap_or_default();
    assert!(
        err.contains("watch of services stalled: no event or bookmark for 1 s"),
        "{err}"
    );

    server.stall_watches(false);
    eventually("recovery once watches flow again", WAIT, || !s.stale()).await;
    server.apply(service("demo", "after", "10.96.0.21"));
    eventually("the watch after the stall", WAIT, || s.has("after.demo")).await;
}

/// Lists fail with 500 (etcd timing out) while the watches are gone: the last view serves,
/// the error is named, and the first good list brings the source back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_failing_with_500_keep_the_view_and_recover() {
    lists_failing_with_500(WatchList::Refused, "list").await;
}

/// The same with streaming lists: the streaming list's watch fails as the list would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_lists_failing_with_500_keep_the_view_and_recover() {
    lists_failing_with_500(WatchList::Offered, "watch").await;
}

async fn lists_failing_with_500(watch_list: WatchList, verb: &str) {
    let server = ApiServer::start().await;
    server.set_watch_list(watch_list);
    seed(&server);
    let source = start_source(&server, options(&server)).await;
    let s = &source;

    watching_services(&server).await;
    server.fail_lists(Some(500));
    server.compact();
    server.expire_watches();
    server.apply(service("demo", "during", "10.96.0.20"));
    eventually("a relist failing with 500", WAIT, || {
        s.status
            .last_error(ResourceKind::Services)
            .is_some_and(|e| e.starts_with(&format!("500 InternalError: {verb} services")))
    })
    .await;
    assert!(s.stale());
    assert!(
        s.has("nginx.demo") && !s.has("during.demo"),
        "last good view"
    );

    server.fail_lists(None);
    eventually("recovery", WAIT, || s.has("during.demo") && !s.stale()).await;
}

/// A relist slower than the stall timeout: the first attempt is given up, the next ones get
/// twice the patience, and the list completes; the view serves throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_list_is_given_more_patience_and_completes() {
    slow_list(WatchList::Refused).await;
}

/// The same with a streaming list, whose first answer is as slow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_streaming_list_is_given_more_patience_and_completes() {
    slow_list(WatchList::Offered).await;
}

async fn slow_list(watch_list: WatchList) {
    let server = ApiServer::start().await;
    server.set_watch_list(watch_list);
    seed(&server);
    let source = start_source(&server, options(&server)).await;
    let s = &source;

    // 2.5 s against a 1 s stall timeout: the list stalls at 1 s and again at 2 s of patience,
    // then completes with 4 s. The stale window (several seconds) is wide enough to be seen by
    // polling on a loaded machine; with 1.5 s it lasted about a second and was sometimes missed.
    watching_services(&server).await;
    server.set_list_delay(Duration::from_millis(2500));
    server.compact();
    server.expire_watches();
    server.apply(service("demo", "during", "10.96.0.20"));
    eventually("the relist to stall once", WAIT, || {
        s.status
            .last_error(ResourceKind::Services)
            .is_some_and(|e| e.contains("list of services stalled"))
    })
    .await;
    assert!(s.stale() && s.has("nginx.demo") && !s.has("during.demo"));
    eventually("the slow list to complete", WAIT, || {
        s.has("during.demo") && !s.stale()
    })
    .await;
    if watch_list == WatchList::Offered {
        // It was the streaming list that was slow: nothing fell back to pages.
        assert!(!server
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/services?") && !r.contains("watch=")));
    }
}

/// Every connection reset mid-stream: the watches resume, nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_reset_mid_stream_loses_nothing() {
    let server = ApiServer::start().await;
    seed(&server);
    let source = start_source(&server, options(&server)).await;
    let s = &source;
    for round in 0..3 {
        let attempts = s.status.failed_attempts();
        server.reset_connections();
        let name = format!("after-{round}");
        server.apply(service("demo", &name, &format!("10.96.1.{round}")));
        eventually(
            "the reset to be seen and the change to arrive",
            WAIT,
            || {
                s.status.failed_attempts() > attempts
                    && s.has(&format!("{name}.demo"))
                    && !s.stale()
            },
        )
        .await;
    }
    assert!(s.has("nginx.demo") && s.has("web.default"));
}

// ---------------------------------------------------------------------------------------------
// Quiet logs under failure (item 6).

/// Log lines of this thread's tracing events while the guard lives (a current-thread runtime:
/// the source's tasks and kube's run here too). Not a thread-local subscriber: see
/// support::logs for how that lost lines.
fn capture_logs() -> (support::logs::Logs, support::logs::Guard) {
    support::logs::capture("info,kube_client::client::builder=off,kube_runtime::watcher=error")
}

/// Another thread (another test's, with no capture) reaching a log line's callsite first does
/// not turn that line off for this thread's capture: with a thread-local subscriber it did
/// (tokio-rs/tracing#3611), and the outage test waited in vain for its recovery line.
#[test]
fn captured_lines_do_not_depend_on_which_thread_logs_first() {
    fn probe(who: &str) {
        tracing::info!("capture probe: {who}");
    }
    let (buf, _guard) = capture_logs();
    std::thread::spawn(|| probe("another thread"))
        .join()
        .unwrap();
    probe("this thread");
    let lines = log_lines(&buf);
    assert_eq!(count(&lines, "capture probe: this thread"), 1, "{lines:?}");
    assert_eq!(
        count(&lines, "capture probe: another thread"),
        0,
        "{lines:?}"
    );
}

fn log_lines(buf: &support::logs::Logs) -> Vec<String> {
    buf.lines()
}

fn count(lines: &[String], text: &str) -> usize {
    lines.iter().filter(|l| l.contains(text)).count()
}

/// While stopped, the fake API server refuses connections as a dead one does, yet keeps its
/// port: no other socket can bind it (another test's listener took it in an outage once, and the
/// restart failed with "address in use"), and the restart gets it back.
#[tokio::test]
async fn a_stopped_api_server_refuses_connections_and_keeps_its_port() {
    let server = ApiServer::start().await;
    let addr: SocketAddr = server.url()["http://".len()..].parse().unwrap();
    server.stop().await;
    let refused = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let stranger = std::net::TcpListener::bind(addr);
    assert!(stranger.is_err(), "{addr} was free while stopped");
    server.restart(1000).await;
    tokio::net::TcpStream::connect(addr)
        .await
        .expect("listening again");
}

/// While the API server is away: one line going stale, a summary every interval with the
/// failures grouped, one line on recovery; never a line per attempt.
#[tokio::test]
async fn an_outage_logs_one_stale_line_summaries_and_one_recovery_line() {
    let (buf, _guard) = capture_logs();
    let server = ApiServer::start().await;
    seed(&server);
    let source = start_source(&server, options(&server)).await;
    let s = &source;
    let mark = log_lines(&buf).len();

    server.stop().await;
    eventually("two summaries and many failed attempts", WAIT, || {
        let lines = log_lines(&buf);
        count(&lines[mark..], "source still stale") >= 2 && s.status.failed_attempts() >= 20
    })
    .await;
    server.restart(1000).await;
    // Not `eventually`: on a timeout the lines seen and the kinds still failing say what
    // happened. (This once timed out with no kind failing: the source had recovered, and the
    // line was lost to the capture; see support::logs.)
    let recovery_wait = WAIT;
    let deadline = std::time::Instant::now() + recovery_wait;
    while count(&log_lines(&buf)[mark..], "source current again") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no recovery line within {recovery_wait:?} ({:?}); lines:\n{}",
            s.status.failures(),
            log_lines(&buf)[mark..].join("\n")
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let lines = log_lines(&buf)[mark..].to_vec();
    let all = lines.join("\n");
    assert_eq!(count(&lines, "source stale: "), 1, "{all}");
    assert_eq!(count(&lines, "source current again"), 1, "{all}");
    let summaries = count(&lines, "source still stale");
    assert!(summaries >= 2, "{all}");
    assert_eq!(
        lines.len(),
        2 + summaries,
        "nothing else, although {} attempts failed:\n{all}",
        s.status.failed_attempts()
    );
    let refused = format!(
        "API server unreachable: connection refused to {}",
        server.url()
    );
    let summary = lines
        .iter()
        .find(|l| l.contains("source still stale"))
        .unwrap();
    assert!(
        summary.contains(&format!(
            "namespaces, services, endpointslices, nodes: {refused}"
        )) || summary.contains(&refused),
        "{summary}"
    );
}

struct Process {
    child: std::process::Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// `clusterdns serve --kubeconfig` as a real process, its stderr counted across an outage of
/// the API server long enough for a dozen failed attempts (kube-rs alone used to log one
/// ERROR line per attempt per resource): exactly one line when it goes stale and one when it
/// recovers (with the duration), answers from the last good view meanwhile, the staleness
/// metric rising.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_process_logs_two_lines_across_an_api_outage() {
    use std::io::{BufRead, BufReader};
    let server = ApiServer::start().await;
    seed(&server);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .arg("serve")
        .arg("--kubeconfig")
        .arg(server.kubeconfig_path())
        .args(["--dns-addr", "127.0.0.1:0", "--upstream", "none"])
        .env_remove("CLUSTERDNS_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("clusterdns starts");
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let sink = stderr.clone();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let process = Process { child, stderr };
    let (mut dns, mut metrics) = (None, None);
    while dns.is_none() || metrics.is_none() {
        let mut line = String::new();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "no banner; stderr: {:?}",
            process.stderr.lock().unwrap()
        );
        let addr = line
            .split_whitespace()
            .find_map(|w| w.trim_start_matches("http://").parse::<SocketAddr>().ok());
        if line.contains("serving DNS") {
            dns = addr;
        } else if line.contains("serving prometheus") {
            metrics = addr;
        }
    }
    let (dns, metrics) = (dns.unwrap(), metrics.unwrap());
    let name = "nginx.demo.svc.cluster.local";
    let nginx = || async {
        let r = dnsclient::query(dns, dnsclient::Transport::Udp, name, RecordType::A).await;
        dnsclient::section(&r.answers)
    };
    let want = vec![format!("{name}. 5 IN A 10.96.0.10")];
    let stale = || async {
        metric(
            &dnsclient::http_get(metrics, "/metrics").await.1,
            "clusterdns_source_stale_seconds",
        )
    };
    let deadline = std::time::Instant::now() + WAIT;
    while nginx().await != want || stale().await != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "initial sync");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mark = process.stderr.lock().unwrap().len();
    // The fake API server refuses streaming lists, as 1.31 does: one line says so for every
    // kind that falls back to paged lists.
    let fallbacks = process.stderr.lock().unwrap()[..mark]
        .iter()
        .filter(|l| l.contains("does not offer streaming lists"))
        .count();
    assert_eq!(
        fallbacks,
        1,
        "{:?}",
        &process.stderr.lock().unwrap()[..mark]
    );

    server.stop().await;
    // 4 s of outage: with client-go's backoff (0.8 s doubling) three or four attempts for
    // each of the four kinds.
    while stale().await.is_none_or(|s| s < 4.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "staleness to reach 4 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(nginx().await, want, "the last good view answers");
    server.restart(1000).await;
    let deadline = std::time::Instant::now() + WAIT;
    while stale().await != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "recovery");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = process.stderr.lock().unwrap()[mark..].to_vec();
    let all = lines.join("\n");
    assert_eq!(lines.len(), 2, "{all}");
    assert!(
        lines[0].contains(" WARN ") && lines[0].contains("kubernetes: source stale: "),
        "{all}"
    );
    // The first failure names the API server (an open watch reset, or connection refused).
    assert!(lines[0].contains(&server.url()), "{all}");
    let after: f64 = lines[1]
        .split("current again after ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no duration in the recovery line: {all}"));
    assert!(lines[1].contains(" INFO ") && after >= 4.0, "{all}");
}
