//! `forward` against real DNS servers started here on 127.0.0.1 (never anything else), over
//! UDP, TCP and TLS (with a CA and certificates made here), `cache` in front of it or of a
//! stub handler (paused tokio time for TTLs), and the sidecar mode that puts the two in each
//! pod.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod dnsclient;
mod support;

use clusterdns::app::{self, ServeOptions};
use clusterdns::corefile::{parse_str, CacheConfig, ForwardConfig, PluginConfig};
use clusterdns::dns::cache::Kind;
use clusterdns::dns::forward::ForwardTimeouts;
use clusterdns::dns::pipeline::Proto;
use clusterdns::dns::{server, Answer, Cache, Flow, Forward, Handler, Pipeline, Request};
use clusterdns::sidecar::SidecarOptions;
use dnsclient::{pki, Pki, Transport};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

// ---------------------------------------------------------------------------------------------
// A tiny upstream: UDP + TCP (or TLS) on one loopback port, answering from a table.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    Drop,
    Delay(Duration),
    ServFail,
    /// A reply with a wrong id and one with a wrong question first, then the real one.
    Spoof,
    /// Only the wrong replies.
    SpoofOnly,
}

#[derive(Debug, Clone, Copy)]
enum Rec {
    A(Ipv4Addr, u32),
    NxDomain { soa_ttl: u32, minimum: u32 },
}

struct State {
    mode: Mutex<Mode>,
    table: Mutex<HashMap<String, Rec>>,
    /// Names answered with TC (and no records) over UDP.
    truncate: Mutex<HashSet<String>>,
    udp: AtomicUsize,
    tcp: AtomicUsize,
    tcp_conns: AtomicUsize,
    /// Queries per lowercase name, health checks (`.`) excluded.
    per_name: Mutex<HashMap<String, usize>>,
    /// Names asked over UDP at least once.
    udp_names: Mutex<HashSet<String>>,
}

struct Responder {
    addr: SocketAddr,
    state: Arc<State>,
    tasks: Vec<JoinHandle<()>>,
    /// Set for a DNS-over-TLS upstream: the stream port speaks TLS instead of plain TCP.
    tls: Option<TlsAcceptor>,
}

impl Responder {
    async fn start() -> Responder {
        Responder::start_with(None).await
    }

    /// UDP as usual, and DNS over TLS (instead of plain TCP) on the same port number.
    async fn start_tls(tls: &Pki) -> Responder {
        Responder::start_with(Some(TlsAcceptor::from(tls.server.clone()))).await
    }

    async fn start_with(tls: Option<TlsAcceptor>) -> Responder {
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Normal),
            table: Mutex::new(HashMap::new()),
            truncate: Mutex::new(HashSet::new()),
            udp: AtomicUsize::new(0),
            tcp: AtomicUsize::new(0),
            tcp_conns: AtomicUsize::new(0),
            per_name: Mutex::new(HashMap::new()),
            udp_names: Mutex::new(HashSet::new()),
        });
        for _ in 0..20 {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                return Responder::serve(addr, udp, tcp, state, tls);
            }
        }
        panic!("no free loopback port for UDP and TCP");
    }

    fn serve(
        addr: SocketAddr,
        udp: UdpSocket,
        tcp: TcpListener,
        state: Arc<State>,
        tls: Option<TlsAcceptor>,
    ) -> Responder {
        let tasks = vec![
            tokio::spawn(udp_loop(udp, state.clone())),
            tokio::spawn(tcp_loop(tcp, state.clone(), tls.clone())),
        ];
        Responder {
            addr,
            state,
            tasks,
            tls,
        }
    }

    /// Closes both sockets and every TCP connection.
    async fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }

    /// Serves again on the same port, with the same table and counters.
    async fn restart(&mut self) {
        let udp = UdpSocket::bind(self.addr).await.unwrap();
        let tcp = TcpListener::bind(self.addr).await.unwrap();
        *self = Responder::serve(self.addr, udp, tcp, self.state.clone(), self.tls.clone());
    }

    fn set(&self, name: &str, rec: Rec) {
        self.state.table.lock().unwrap().insert(name.into(), rec);
    }

    fn mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    fn count(&self, name: &str) -> usize {
        *self.state.per_name.lock().unwrap().get(name).unwrap_or(&0)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn replies(state: &State, query: &[u8], udp: bool) -> Vec<Vec<u8>> {
    let Ok(req) = Message::from_vec(query) else {
        return vec![];
    };
    let Some(q) = req.queries.first().cloned() else {
        return vec![];
    };
    let lname = q.name().to_lowercase().to_string();
    if lname != "." {
        *state
            .per_name
            .lock()
            .unwrap()
            .entry(lname.clone())
            .or_default() += 1;
        if udp {
            state.udp_names.lock().unwrap().insert(lname.clone());
        }
    }
    let mode = *state.mode.lock().unwrap();
    if mode == Mode::Drop {
        return vec![];
    }
    let mut resp = Message::new(req.metadata.id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    resp.queries = req.queries.clone();
    let rec = state.table.lock().unwrap().get(&lname).copied();
    if mode == Mode::ServFail {
        resp.metadata.response_code = ResponseCode::ServFail;
    } else if udp && state.truncate.lock().unwrap().contains(&lname) {
        resp.metadata.truncation = true;
    } else if lname == "." {
        // Health checks: an empty NOERROR will do.
    } else {
        match rec {
            Some(Rec::A(ip, ttl)) => {
                resp.add_answer(Record::from_rdata(q.name().clone(), ttl, RData::A(A(ip))));
            }
            Some(Rec::NxDomain { soa_ttl, minimum }) => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(soa("example.org.", soa_ttl, minimum));
            }
            None => {
                resp.metadata.response_code = ResponseCode::NXDomain;
                resp.add_authority(soa("example.org.", 60, 30));
            }
        }
    }
    let good = resp.to_vec().unwrap();
    if !matches!(mode, Mode::Spoof | Mode::SpoofOnly) {
        return vec![good];
    }
    let fake = |m: &mut Message| {
        m.answers.clear();
        m.add_answer(Record::from_rdata(
            q.name().clone(),
            300,
            RData::A(A(Ipv4Addr::new(6, 6, 6, 6))),
        ));
    };
    let mut wrong_id = resp.clone();
    wrong_id.metadata.id = req.metadata.id.wrapping_add(1);
    fake(&mut wrong_id);
    let mut wrong_q = resp.clone();
    wrong_q.queries[0].set_query_type(RecordType::AAAA);
    fake(&mut wrong_q);
    let mut out = vec![wrong_id.to_vec().unwrap(), wrong_q.to_vec().unwrap()];
    if mode == Mode::Spoof {
        out.push(good);
    }
    out
}

async fn delay(state: &State) {
    let mode = *state.mode.lock().unwrap();
    if let Mode::Delay(d) = mode {
        tokio::time::sleep(d).await;
    }
}

async fn udp_loop(sock: UdpSocket, state: Arc<State>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((n, src)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        state.udp.fetch_add(1, Ordering::SeqCst);
        let out = replies(&state, &buf[..n], true);
        delay(&state).await;
        for r in out {
            let _ = sock.send_to(&r, src).await;
        }
    }
}

async fn tcp_loop(listener: TcpListener, state: Arc<State>, tls: Option<TlsAcceptor>) {
    // Owned here, so aborting this task closes every connection too.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.tcp_conns.fetch_add(1, Ordering::SeqCst);
        let state = state.clone();
        let tls = tls.clone();
        conns.spawn(async move {
            match tls {
                None => serve_stream(stream, &state).await,
                // A failed handshake (the client rejected our certificate) just closes.
                Some(tls) => {
                    if let Ok(stream) = tls.accept(stream).await {
                        serve_stream(stream, &state).await
                    }
                }
            }
        });
    }
}

/// Length-prefixed queries and replies on one connection until it closes.
async fn serve_stream<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, state: &State) {
    loop {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        if stream.read_exact(&mut buf).await.is_err() {
            return;
        }
        state.tcp.fetch_add(1, Ordering::SeqCst);
        let out = replies(state, &buf, false);
        delay(state).await;
        for r in out {
            let mut framed = (r.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&r);
            if stream.write_all(&framed).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.

fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
    let z = Name::from_ascii(zone).unwrap();
    Record::from_rdata(
        z.clone(),
        ttl,
        RData::SOA(SOA::new(
            Name::from_ascii("ns.dns.").unwrap(),
            Name::from_ascii("hostmaster.").unwrap(),
            1,
            7200,
            1800,
            86400,
            minimum,
        )),
    )
}

fn plugins(corefile: &str) -> Vec<PluginConfig> {
    match parse_str(corefile, Path::new("Corefile"), &|_| None) {
        Ok(mut c) => c.servers.remove(0).plugins,
        Err(e) => panic!("bad test Corefile: {e}"),
    }
}

fn forward_cfg(line: &str) -> ForwardConfig {
    plugins(&format!(".:1053 {{\n{line}\n}}\n"))
        .into_iter()
        .find_map(|p| match p {
            PluginConfig::Forward(f) => Some(f),
            _ => None,
        })
        .expect("a forward directive")
}

fn cache_cfg(line: &str) -> CacheConfig {
    plugins(&format!(".:1053 {{\n{line}\n}}\n"))
        .into_iter()
        .find_map(|p| match p {
            PluginConfig::Cache(c) => Some(c),
            _ => None,
        })
        .expect("a cache directive")
}

fn fast() -> ForwardTimeouts {
    ForwardTimeouts {
        read: Duration::from_millis(300),
        connect: Duration::from_millis(300),
        total: Duration::from_secs(3),
    }
}

fn forward(line: &str) -> Arc<Forward> {
    Arc::new(Forward::with_timeouts(&forward_cfg(line), fast()).unwrap())
}

fn request(name: &str, qtype: RecordType, proto: Proto) -> Request {
    let qname = Name::from_ascii(name).unwrap();
    let mut m = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(qname.clone(), qtype));
    Request {
        message: m,
        qname,
        qtype,
        src: "127.0.0.1:40000".parse().unwrap(),
        proto,
    }
}

async fn ask(p: &Pipeline, name: &str) -> Answer {
    p.resolve(&request(name, RecordType::A, Proto::Udp)).await
}

fn first_ip(a: &Answer) -> Option<Ipv4Addr> {
    a.answers.iter().find_map(|r| match &r.data {
        RData::A(A(ip)) => Some(*ip),
        _ => None,
    })
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Polls `cond` (real time) until it holds, or fails after 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`] for paused time: yields to background tasks instead of sleeping.
async fn eventually_paused(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// forward

#[tokio::test]
async fn forwards_over_udp_and_echoes_the_question_case() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    let fwd = forward(&format!("forward . {}", up.addr));
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd]);

    let mut q = Message::new(4242, MessageType::Query, OpCode::Query);
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(
        Name::from_ascii("A.Example.ORG.").unwrap(),
        RecordType::A,
    ));
    let src = "127.0.0.1:40000".parse().unwrap();
    let bytes = server::process(&p, &q.to_vec().unwrap(), src, Proto::Udp)
        .await
        .unwrap();
    let resp = Message::from_vec(&bytes).unwrap();
    assert_eq!(resp.metadata.id, 4242);
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
    assert!(resp.metadata.recursion_available);
    assert_eq!(resp.queries[0].name().to_string(), "A.Example.ORG.");
    assert_eq!(resp.answers.len(), 1);

    let a = ask(&p, "a.example.org.").await;
    assert_eq!(a.plugin, "forward");
    assert_eq!(first_ip(&a), Some(ip("10.0.0.1")));
    up.set(
        "missing.example.org.",
        Rec::NxDomain {
            soa_ttl: 120,
            minimum: 30,
        },
    );
    let nx = ask(&p, "missing.example.org.").await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1, "SOA passed through");

    assert_eq!(up.state.udp.load(Ordering::SeqCst), 3);
    assert_eq!(up.state.tcp.load(Ordering::SeqCst), 0);
    let s = &stats.upstreams[0];
    assert_eq!(s.addr, up.addr);
    assert_eq!(s.requests.load(Ordering::Relaxed), 3);
    assert_eq!(s.rcode_count(ResponseCode::NoError), 2);
    assert_eq!(s.rcode_count(ResponseCode::NXDomain), 1);
    assert_eq!(s.durations[0].count.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn force_tcp_reuses_one_connection() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    let fwd = forward(&format!("forward . {} {{\nforce_tcp\n}}", up.addr));
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd]);
    for _ in 0..3 {
        assert_eq!(
            first_ip(&ask(&p, "a.example.org.").await),
            Some(ip("10.0.0.1"))
        );
    }
    assert_eq!(up.state.udp.load(Ordering::SeqCst), 0);
    assert_eq!(up.state.tcp.load(Ordering::SeqCst), 3);
    assert_eq!(up.state.tcp_conns.load(Ordering::SeqCst), 1);
    let s = &stats.upstreams[0];
    assert_eq!(s.conn_cache_misses_tcp.load(Ordering::Relaxed), 1);
    assert_eq!(s.conn_cache_hits_tcp.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn truncated_udp_reply_is_retried_over_tcp() {
    let up = Responder::start().await;
    up.set("big.example.org.", Rec::A(ip("10.0.0.9"), 60));
    up.state
        .truncate
        .lock()
        .unwrap()
        .insert("big.example.org.".into());
    let p = Pipeline::new(vec![forward(&format!("forward . {}", up.addr))]);
    let a = ask(&p, "big.example.org.").await;
    assert_eq!(first_ip(&a), Some(ip("10.0.0.9")));
    assert_eq!(up.state.udp.load(Ordering::SeqCst), 1);
    assert_eq!(up.state.tcp.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstreams_from_a_resolv_conf_file() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resolv.conf");
    std::fs::write(
        &path,
        format!(
            "search svc.cluster.local\nnameserver {}\noptions ndots:5\n",
            up.addr
        ),
    )
    .unwrap();
    let fwd = forward(&format!("forward . {}", path.display()));
    assert_eq!(fwd.upstreams(), vec![up.addr]);
    let p = Pipeline::new(vec![fwd]);
    assert_eq!(
        first_ip(&ask(&p, "a.example.org.").await),
        Some(ip("10.0.0.1"))
    );
    assert_eq!(up.count("a.example.org."), 1);

    let missing = forward_cfg(&format!("forward . {}", dir.path().join("nope").display()));
    assert!(Forward::new(&missing).is_err(), "unreadable resolv.conf");
}

#[tokio::test]
async fn except_zones_and_zones_outside_from_pass_on() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    let p = Pipeline::new(vec![forward(&format!(
        "forward example.org {} {{\nexcept skip.example.org\n}}",
        up.addr
    ))]);
    // Nothing after forward: a query it does not take is SERVFAIL, CoreDNS's "no next
    // plugin found".
    let skipped = ask(&p, "x.skip.example.org.").await;
    assert_eq!(skipped.rcode, ResponseCode::ServFail);
    assert_eq!(skipped.plugin, "");
    let outside = ask(&p, "a.example.com.").await;
    assert_eq!(outside.plugin, "");
    assert_eq!(ask(&p, "a.example.org.").await.plugin, "forward");
    assert_eq!(up.count("x.skip.example.org."), 0);
    assert_eq!(up.count("a.example.com."), 0);
    assert_eq!(up.count("a.example.org."), 1);
}

#[tokio::test]
async fn failed_upstream_is_marked_down_and_health_checks_bring_it_back() {
    let mut first = Responder::start().await;
    let second = Responder::start().await;
    for r in [&first, &second] {
        r.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    }
    let fwd = forward(&format!(
        "forward . {} {} {{\npolicy sequential\nmax_fails 2\nhealth_check 50ms\n}}",
        first.addr, second.addr
    ));
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd.clone()]);
    ask(&p, "a.example.org.").await;
    assert_eq!(
        (
            first.count("a.example.org."),
            second.count("a.example.org.")
        ),
        (1, 0)
    );

    first.kill().await;
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(a.rcode, ResponseCode::NoError, "answered by the second");
    assert_eq!(second.count("a.example.org."), 1);
    eventually("first upstream marked down", || fwd.is_down(first.addr)).await;
    assert!(
        stats.upstreams[0]
            .healthcheck_failures
            .load(Ordering::Relaxed)
            >= 1
    );
    let errors_before = stats.upstreams[0].errors.load(Ordering::Relaxed);
    for _ in 0..3 {
        assert_eq!(ask(&p, "a.example.org.").await.rcode, ResponseCode::NoError);
    }
    assert_eq!(second.count("a.example.org."), 4);
    assert_eq!(
        stats.upstreams[0].errors.load(Ordering::Relaxed),
        errors_before,
        "a down upstream is skipped, not tried"
    );

    first.restart().await;
    eventually("first upstream healthy again", || !fwd.is_down(first.addr)).await;
    ask(&p, "a.example.org.").await;
    assert_eq!(first.count("a.example.org."), 2, "used again");
    assert_eq!(second.count("a.example.org."), 4);
}

#[tokio::test]
async fn all_upstreams_down_is_servfail() {
    let mut up = Responder::start().await;
    let fwd = forward(&format!("forward . {}", up.addr));
    let stats = fwd.stats();
    up.kill().await;
    let p = Pipeline::new(vec![fwd]);
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(a.rcode, ResponseCode::ServFail);
    assert_eq!(a.plugin, "forward");
    assert!(stats.upstreams[0].errors.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn above_max_concurrent_is_refused() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    up.mode(Mode::Delay(Duration::from_millis(100)));
    let fwd = forward(&format!("forward . {} {{\nmax_concurrent 1\n}}", up.addr));
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd]);
    let (a, b) = tokio::join!(ask(&p, "a.example.org."), ask(&p, "a.example.org."));
    let mut rcodes = vec![a.rcode, b.rcode];
    rcodes.sort_by_key(|r| u16::from(*r));
    assert_eq!(rcodes, vec![ResponseCode::NoError, ResponseCode::Refused]);
    assert_eq!(stats.max_concurrent_rejects.load(Ordering::Relaxed), 1);
    // The slot is released once the first query is done.
    assert_eq!(ask(&p, "a.example.org.").await.rcode, ResponseCode::NoError);
}

#[tokio::test]
async fn replies_with_wrong_id_or_question_are_ignored() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    up.mode(Mode::Spoof);
    let p = Pipeline::new(vec![forward(&format!("forward . {}", up.addr))]);
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(first_ip(&a), Some(ip("10.0.0.1")), "the genuine reply wins");

    up.mode(Mode::SpoofOnly);
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(
        a.rcode,
        ResponseCode::ServFail,
        "spoofed replies alone are no answer"
    );
    assert!(a.answers.is_empty());
}

#[tokio::test]
async fn dropped_queries_time_out_to_servfail() {
    let up = Responder::start().await;
    up.mode(Mode::Drop);
    let p = Pipeline::new(vec![forward(&format!("forward . {}", up.addr))]);
    assert_eq!(
        ask(&p, "a.example.org.").await.rcode,
        ResponseCode::ServFail
    );
    up.mode(Mode::ServFail);
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(
        a.rcode,
        ResponseCode::ServFail,
        "an upstream SERVFAIL is passed on"
    );
}

// ---------------------------------------------------------------------------------------------
// forward over TLS

#[tokio::test]
async fn forwards_over_tls_and_reuses_the_connection() {
    let pki = pki(&["dot.test"]);
    let up = Responder::start_tls(&pki).await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    let fwd = forward(&format!(
        "forward . tls://{} {{\ntls_servername dot.test\ntls {}\n}}",
        up.addr,
        pki.ca.display()
    ));
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd]);
    // Asked over UDP by the client; a tls:// upstream is still asked over TLS.
    for _ in 0..3 {
        let a = ask(&p, "a.example.org.").await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert_eq!(first_ip(&a), Some(ip("10.0.0.1")));
    }
    let nx = ask(&p, "missing.example.org.").await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert_eq!(up.state.udp.load(Ordering::SeqCst), 0);
    assert_eq!(up.state.tcp.load(Ordering::SeqCst), 4);
    assert_eq!(
        up.state.tcp_conns.load(Ordering::SeqCst),
        1,
        "one TLS connection, reused"
    );
    let s = &stats.upstreams[0];
    assert!(s.tls);
    assert_eq!(s.conn_cache_misses_tcp.load(Ordering::Relaxed), 1);
    assert_eq!(s.conn_cache_hits_tcp.load(Ordering::Relaxed), 3);
    assert_eq!(s.conn_cache_misses_udp.load(Ordering::Relaxed), 0);

    // `expire` applies to pooled TLS connections too: with 0 none is ever reused.
    let fwd = forward(&format!(
        "forward . tls://{} {{\ntls_servername dot.test\ntls {}\nexpire 0s\n}}",
        up.addr,
        pki.ca.display()
    ));
    let p = Pipeline::new(vec![fwd]);
    for _ in 0..2 {
        assert_eq!(ask(&p, "a.example.org.").await.rcode, ResponseCode::NoError);
    }
    assert_eq!(up.state.tcp_conns.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn tls_without_servername_verifies_the_upstream_ip() {
    let pki = pki(&["127.0.0.1"]);
    let up = Responder::start_tls(&pki).await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    // One argument is the CA (CoreDNS reads `tls` arguments by count).
    let p = Pipeline::new(vec![forward(&format!(
        "forward . tls://{} {{\ntls {}\n}}",
        up.addr,
        pki.ca.display()
    ))]);
    assert_eq!(
        first_ip(&ask(&p, "a.example.org.").await),
        Some(ip("10.0.0.1"))
    );
}

#[tokio::test]
async fn tls_wrong_server_name_or_unknown_ca_fails_verification() {
    // A current-thread runtime: the forwarder's tasks log on this thread too.
    let (logs, _guard) = support::logs::capture("warn");
    let pki = pki(&["dot.test"]);
    let up = Responder::start_tls(&pki).await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));

    let fwd = forward(&format!(
        "forward . tls://{} {{\ntls_servername other.test\ntls {}\nhealth_check 1h\n}}",
        up.addr,
        pki.ca.display()
    ));
    let stats = fwd.stats();
    let p = Pipeline::new(vec![fwd]);
    for _ in 0..2 {
        let a = ask(&p, "a.example.org.").await;
        assert_eq!(a.rcode, ResponseCode::ServFail);
        assert_eq!(a.plugin, "forward");
    }
    assert_eq!(up.count("a.example.org."), 0, "no query sent over TLS");
    assert!(stats.upstreams[0].errors.load(Ordering::Relaxed) >= 2);
    let log = logs.text();
    assert!(
        log.contains("TLS handshake with upstream failed")
            && log.contains(&up.addr.to_string())
            && log.contains("other.test")
            && log.contains("not valid for name"),
        "{log}"
    );
    assert_eq!(
        log.matches("TLS handshake with upstream failed").count(),
        1,
        "warned once, not per query: {log}"
    );

    // Without tls_servername the IP is verified, and this certificate names none.
    let p = Pipeline::new(vec![forward(&format!(
        "forward . tls://{} {{\ntls {}\n}}",
        up.addr,
        pki.ca.display()
    ))]);
    assert_eq!(
        ask(&p, "a.example.org.").await.rcode,
        ResponseCode::ServFail
    );

    // Without a CA file the system roots are used, which do not know the test CA.
    match Forward::with_timeouts(
        &forward_cfg(&format!(
            "forward . tls://{} {{\ntls_servername dot.test\n}}",
            up.addr
        )),
        fast(),
    ) {
        Ok(fwd) => {
            let p = Pipeline::new(vec![Arc::new(fwd)]);
            assert_eq!(
                ask(&p, "a.example.org.").await.rcode,
                ResponseCode::ServFail
            );
            assert!(logs.text().contains("UnknownIssuer"), "{}", logs.text());
        }
        // A machine without a CA bundle: then that is the error.
        Err(e) => assert!(e.to_string().contains("no system root certificates"), "{e}"),
    }
    assert_eq!(up.count("a.example.org."), 0);
}

#[tokio::test]
async fn bad_tls_files_are_configuration_errors() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.pem");
    let err = |opts: &str| match Forward::new(&forward_cfg(&format!(
        "forward . tls://127.0.0.1:853 {{\n{opts}\n}}"
    ))) {
        Ok(_) => panic!("accepted: {opts}"),
        Err(e) => e.to_string(),
    };
    let e = err(&format!("tls {}", missing.display()));
    assert!(
        e.starts_with("forward: tls: cannot read") && e.contains("nope.pem"),
        "{e}"
    );
    let e = err(&format!("tls {} {}", missing.display(), missing.display()));
    assert!(e.contains("cannot read") && e.contains("nope.pem"), "{e}");
    let e = err("tls_servername under_score!");
    assert!(e.contains("tls_servername 'under_score!'"), "{e}");
    // A plain dns:// upstream does not read the TLS files (CoreDNS ignores them there).
    assert!(Forward::new(&forward_cfg(&format!(
        "forward . 127.0.0.1:53 {{\ntls {}\n}}",
        missing.display()
    )))
    .is_ok());
}

#[tokio::test]
async fn mixed_dns_and_tls_upstreams_fail_over_and_tls_health_checks_recover() {
    let pki = pki(&["dot.test"]);
    let mut dot = Responder::start_tls(&pki).await;
    let mut plain = Responder::start().await;
    for r in [&dot, &plain] {
        r.set("a.example.org.", Rec::A(ip("10.0.0.1"), 60));
    }
    let opts = format!(
        "policy sequential\nmax_fails 2\nhealth_check 50ms\ntls_servername dot.test\ntls {}",
        pki.ca.display()
    );
    let fwd = forward(&format!(
        "forward . tls://{} dns://{} {{\n{opts}\n}}",
        dot.addr, plain.addr
    ));
    let stats = fwd.stats();
    assert!(stats.upstreams[0].tls && !stats.upstreams[1].tls);
    let p = Pipeline::new(vec![fwd.clone()]);
    ask(&p, "a.example.org.").await;
    assert_eq!(
        (dot.count("a.example.org."), plain.count("a.example.org.")),
        (1, 0)
    );

    dot.kill().await;
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(a.rcode, ResponseCode::NoError, "answered by the dns:// one");
    assert_eq!(plain.count("a.example.org."), 1);
    assert_eq!(plain.state.udp.load(Ordering::SeqCst), 1, "plain over UDP");
    eventually("tls upstream marked down", || fwd.is_down(dot.addr)).await;
    assert!(
        stats.upstreams[0]
            .healthcheck_failures
            .load(Ordering::Relaxed)
            >= 1
    );

    // Health probes go over TLS too: they bring it back once it serves again.
    dot.restart().await;
    eventually("tls upstream healthy again", || !fwd.is_down(dot.addr)).await;
    ask(&p, "a.example.org.").await;
    assert_eq!(dot.count("a.example.org."), 2, "used again");

    // The other way round: the dns:// one first and dead, the tls:// one answers.
    plain.kill().await;
    let p = Pipeline::new(vec![forward(&format!(
        "forward . dns://{} tls://{} {{\n{opts}\n}}",
        plain.addr, dot.addr
    ))]);
    let a = ask(&p, "a.example.org.").await;
    assert_eq!(first_ip(&a), Some(ip("10.0.0.1")));
    assert_eq!(dot.count("a.example.org."), 3);
}

// ---------------------------------------------------------------------------------------------
// cache

/// Answers from a table and counts calls per name.
#[derive(Default)]
struct Stub {
    table: Mutex<HashMap<String, Answer>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl Stub {
    fn set(&self, name: &str, a: Answer) {
        self.table.lock().unwrap().insert(name.into(), a);
    }
    fn calls(&self, name: &str) -> usize {
        *self.calls.lock().unwrap().get(name).unwrap_or(&0)
    }
}

impl Handler for Stub {
    fn name(&self) -> &'static str {
        "stub"
    }
    fn handle(&self, req: &Request) -> Flow {
        let name = req.qname.to_lowercase().to_string();
        *self.calls.lock().unwrap().entry(name.clone()).or_default() += 1;
        let a = self.table.lock().unwrap().get(&name).cloned();
        Flow::Answer(a.unwrap_or_else(|| Answer::rcode(ResponseCode::ServFail, "stub")))
    }
}

fn a_answer(name: &str, addr: &str, ttl: u32) -> Answer {
    Answer {
        rcode: ResponseCode::NoError,
        recursion_available: true,
        answers: vec![Record::from_rdata(
            Name::from_ascii(name).unwrap(),
            ttl,
            RData::A(A(ip(addr))),
        )],
        plugin: "stub",
        ..Default::default()
    }
}

fn cache_and_stub(line: &str) -> (Arc<Cache>, Arc<Stub>, Pipeline) {
    let cache = Arc::new(Cache::new(&cache_cfg(line), &[".".to_string()]));
    let stub = Arc::new(Stub::default());
    cache.set_next(Pipeline::new(vec![stub.clone()]));
    let p = Pipeline::new(vec![cache.clone(), stub.clone()]);
    (cache, stub, p)
}

async fn advance(secs: u64) {
    tokio::time::advance(Duration::from_secs(secs)).await;
}

#[tokio::test(start_paused = true)]
async fn hits_count_down_the_ttl_and_ignore_case() {
    let (cache, stub, p) = cache_and_stub("cache");
    stub.set("a.example.org.", a_answer("a.example.org.", "10.0.0.1", 30));
    let first = ask(&p, "a.example.org.").await;
    assert_eq!(first.plugin, "stub");
    advance(10).await;
    let hit = ask(&p, "A.EXAMPLE.org.").await;
    assert_eq!(hit.plugin, "cache");
    assert_eq!(hit.answers[0].ttl, 20);
    assert!(hit.recursion_available);
    advance(19).await;
    assert_eq!(ask(&p, "a.example.org.").await.answers[0].ttl, 1);
    advance(1).await;
    assert_eq!(ask(&p, "a.example.org.").await.plugin, "stub", "expired");
    assert_eq!(stub.calls("a.example.org."), 2);
    let s = cache.stats();
    assert_eq!(s.success_hits.load(Ordering::Relaxed), 2);
    assert_eq!(s.misses.load(Ordering::Relaxed), 2);
    assert_eq!(s.requests.load(Ordering::Relaxed), 4);
    assert_eq!(cache.entries(Kind::Success), 1);
}

#[tokio::test(start_paused = true)]
async fn ttls_are_bounded_and_keepttl_keeps_them() {
    let (_, stub, p) = cache_and_stub("cache {\nsuccess 100 60 10\n}");
    stub.set(
        "long.example.org.",
        a_answer("long.example.org.", "10.0.0.1", 86400),
    );
    stub.set(
        "short.example.org.",
        a_answer("short.example.org.", "10.0.0.2", 1),
    );
    ask(&p, "long.example.org.").await;
    ask(&p, "short.example.org.").await;
    assert_eq!(ask(&p, "long.example.org.").await.answers[0].ttl, 60);
    assert_eq!(ask(&p, "short.example.org.").await.answers[0].ttl, 10);

    let (_, stub, p) = cache_and_stub("cache {\nkeepttl\n}");
    stub.set("a.example.org.", a_answer("a.example.org.", "10.0.0.1", 30));
    ask(&p, "a.example.org.").await;
    advance(10).await;
    let hit = ask(&p, "a.example.org.").await;
    assert_eq!((hit.plugin, hit.answers[0].ttl), ("cache", 30));
}

#[tokio::test(start_paused = true)]
async fn negative_answers_live_for_the_soa_minimum() {
    let (cache, stub, p) = cache_and_stub("cache");
    stub.set(
        "nx.example.org.",
        Answer {
            rcode: ResponseCode::NXDomain,
            authorities: vec![soa("example.org.", 300, 60)],
            plugin: "stub",
            ..Default::default()
        },
    );
    stub.set(
        "nodata.example.org.",
        Answer {
            rcode: ResponseCode::NoError,
            authorities: vec![soa("example.org.", 20, 3600)],
            plugin: "stub",
            ..Default::default()
        },
    );
    ask(&p, "nx.example.org.").await;
    ask(&p, "nodata.example.org.").await;
    advance(19).await;
    let nodata = ask(&p, "nodata.example.org.").await;
    assert_eq!(
        (nodata.plugin, nodata.rcode),
        ("cache", ResponseCode::NoError)
    );
    assert_eq!(nodata.authorities[0].ttl, 1, "SOA TTL 20 < minimum 3600");
    advance(40).await; // t = 59
    let nx = ask(&p, "nx.example.org.").await;
    assert_eq!((nx.plugin, nx.rcode), ("cache", ResponseCode::NXDomain));
    assert_eq!(nx.authorities[0].ttl, 1);
    advance(2).await; // t = 61
    assert_eq!(ask(&p, "nx.example.org.").await.plugin, "stub");
    assert_eq!(stub.calls("nx.example.org."), 2);
    assert_eq!(cache.stats().denial_hits.load(Ordering::Relaxed), 2);
    assert_eq!(cache.entries(Kind::Denial), 2);
}

#[tokio::test(start_paused = true)]
async fn full_cache_evicts() {
    let (cache, stub, p) = cache_and_stub("cache {\nsuccess 2\n}");
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        let name = format!("{n}.example.org.");
        stub.set(&name, a_answer(&name, &format!("10.0.0.{}", i + 1), 60));
        ask(&p, &name).await;
    }
    assert_eq!(cache.entries(Kind::Success), 2);
    assert_eq!(cache.stats().success_evictions.load(Ordering::Relaxed), 1);
    // Probe with the cache alone: a miss is answered by no plugin and not stored, so probing
    // evicts nothing.
    let probe = Pipeline::new(vec![cache.clone()]);
    let mut hits = 0;
    for n in ["a", "b", "c"] {
        if ask(&probe, &format!("{n}.example.org.")).await.plugin == "cache" {
            hits += 1;
        }
    }
    assert_eq!(hits, 2, "the survivors still answer");
    assert_eq!(stub.calls("a.example.org."), 1);
}

#[tokio::test(start_paused = true)]
async fn popular_entries_are_prefetched_before_expiry() {
    let (cache, stub, p) = cache_and_stub("cache {\nprefetch 2 1m 50%\n}");
    stub.set(
        "hot.example.org.",
        a_answer("hot.example.org.", "10.0.0.1", 10),
    );
    ask(&p, "hot.example.org.").await; // t=0, stored with TTL 10
    ask(&p, "hot.example.org.").await; // one hit
    stub.set(
        "hot.example.org.",
        a_answer("hot.example.org.", "10.0.0.2", 10),
    );
    advance(6).await; // 4 s left <= 50%: second hit triggers a prefetch
    let served = ask(&p, "hot.example.org.").await;
    assert_eq!(served.plugin, "cache", "still answered from cache");
    assert_eq!(first_ip(&served), Some(ip("10.0.0.1")));
    eventually_paused("background prefetch", || {
        stub.calls("hot.example.org.") == 2
    })
    .await;
    assert_eq!(cache.stats().prefetches.load(Ordering::Relaxed), 1);
    advance(6).await; // t=12: the original entry would have expired at t=10
    let later = ask(&p, "hot.example.org.").await;
    assert_eq!(later.plugin, "cache");
    assert_eq!(first_ip(&later), Some(ip("10.0.0.2")));
    assert_eq!(later.answers[0].ttl, 4);
    assert_eq!(stub.calls("hot.example.org."), 2);
}

#[tokio::test(start_paused = true)]
async fn servfail_is_cached_briefly() {
    let (cache, stub, p) = cache_and_stub("cache");
    // The stub answers SERVFAIL for names it does not know.
    ask(&p, "broken.example.org.").await;
    advance(4).await;
    let hit = ask(&p, "broken.example.org.").await;
    assert_eq!((hit.plugin, hit.rcode), ("cache", ResponseCode::ServFail));
    advance(2).await;
    assert_eq!(ask(&p, "broken.example.org.").await.plugin, "stub");
    assert_eq!(cache.stats().denial_hits.load(Ordering::Relaxed), 1);

    let (_, stub2, p2) = cache_and_stub("cache {\nservfail 0\n}");
    ask(&p2, "broken.example.org.").await;
    ask(&p2, "broken.example.org.").await;
    assert_eq!(stub2.calls("broken.example.org."), 2, "servfail 0 disables");
    assert_eq!(stub.calls("broken.example.org."), 2);
}

#[tokio::test(start_paused = true)]
async fn disable_success_leaves_a_zone_uncached() {
    let (_, stub, p) = cache_and_stub("cache {\ndisable success nocache.org\n}");
    stub.set("a.nocache.org.", a_answer("a.nocache.org.", "10.0.0.1", 60));
    stub.set("a.example.org.", a_answer("a.example.org.", "10.0.0.2", 60));
    stub.set(
        "nx.nocache.org.",
        Answer {
            rcode: ResponseCode::NXDomain,
            authorities: vec![soa("nocache.org.", 60, 60)],
            plugin: "stub",
            ..Default::default()
        },
    );
    for _ in 0..2 {
        ask(&p, "a.nocache.org.").await;
        ask(&p, "a.example.org.").await;
        ask(&p, "nx.nocache.org.").await;
    }
    assert_eq!(stub.calls("a.nocache.org."), 2);
    assert_eq!(stub.calls("a.example.org."), 1);
    assert_eq!(
        stub.calls("nx.nocache.org."),
        1,
        "denial still cached there"
    );
}

#[tokio::test(start_paused = true)]
async fn serve_stale_immediate_answers_at_once_and_refreshes() {
    let (cache, stub, p) = cache_and_stub("cache {\nserve_stale 1h immediate\n}");
    stub.set("a.example.org.", a_answer("a.example.org.", "10.0.0.1", 10));
    ask(&p, "a.example.org.").await;
    stub.set("a.example.org.", a_answer("a.example.org.", "10.0.0.2", 10));
    advance(20).await;
    let stale = ask(&p, "a.example.org.").await;
    assert_eq!((stale.plugin, stale.answers[0].ttl), ("cache", 0));
    assert_eq!(first_ip(&stale), Some(ip("10.0.0.1")));
    eventually_paused("background refresh", || stub.calls("a.example.org.") == 2).await;
    let fresh = ask(&p, "a.example.org.").await;
    assert_eq!(first_ip(&fresh), Some(ip("10.0.0.2")));
    assert_eq!(cache.stats().served_stale.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn cache_in_front_of_forward_and_serve_stale_when_upstreams_are_dead() {
    let mut up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 30));
    let cache = Arc::new(Cache::new(
        &cache_cfg("cache {\nserve_stale 1h verify\n}"),
        &[],
    ));
    let fwd = forward(&format!("forward . {}", up.addr));
    cache.set_next(Pipeline::new(vec![fwd.clone()]));
    let p = Pipeline::new(vec![cache.clone(), fwd]);

    assert_eq!(ask(&p, "a.example.org.").await.plugin, "forward");
    let hit = ask(&p, "a.example.org.").await;
    assert_eq!(hit.plugin, "cache");
    assert_eq!(up.count("a.example.org."), 1);

    // Expire the entry on a paused clock, then lose every upstream.
    tokio::time::pause();
    advance(60).await;
    up.kill().await;
    let stale = ask(&p, "a.example.org.").await;
    assert_eq!(stale.plugin, "cache");
    assert_eq!(stale.rcode, ResponseCode::NoError);
    assert_eq!(stale.answers[0].ttl, 0);
    assert_eq!(first_ip(&stale), Some(ip("10.0.0.1")));
    assert_eq!(cache.stats().served_stale.load(Ordering::Relaxed), 1);

    // Past the stale window, the failure shows.
    advance(3700).await;
    assert_eq!(
        ask(&p, "a.example.org.").await.rcode,
        ResponseCode::ServFail
    );
}

// ---------------------------------------------------------------------------------------------
// Sidecar mode: the whole binary path (generated Corefile, listeners, metrics endpoint).

async fn scrape(addr: SocketAddr) -> String {
    dnsclient::http_get(addr, "/metrics").await.1
}

/// The value of the first sample line that starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn sidecar_forwards_over_tcp_caches_probes_and_serves_stale() {
    let mut up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 300));
    let server = app::start(ServeOptions {
        sidecar: Some(SidecarOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstreams: vec![up.addr.to_string()],
            // Entries expire after a second, so the stale path is reached quickly.
            cache_ttl: 1,
            health: "127.0.0.1:0".into(),
            ready: "127.0.0.1:0".into(),
            metrics: "127.0.0.1:0".into(),
            probe_interval: Duration::from_millis(200),
            probe_name: "probe.example.org.".into(),
            ..SidecarOptions::default()
        }),
        ..ServeOptions::default()
    })
    .await
    .expect("sidecar starts");
    let dns = server.dns_addr;
    let metrics = server.http_addr("prometheus").expect("metrics endpoint");
    let ready = server.http_addr("ready").expect("ready endpoint");
    assert_eq!(dnsclient::http_get(ready, "/ready").await.0, 200);

    // The pod asks over UDP; the sidecar asks upstream over TCP only.
    let m = dnsclient::query(dns, Transport::Udp, "a.example.org.", RecordType::A).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_ips(&m), vec![ip("10.0.0.1")]);
    assert_eq!(up.count("a.example.org."), 1);
    assert!(!up
        .state
        .udp_names
        .lock()
        .unwrap()
        .contains("a.example.org."));
    assert!(up.state.tcp.load(Ordering::SeqCst) >= 1);
    // A second ask is a cache hit.
    dnsclient::query(dns, Transport::Udp, "a.example.org.", RecordType::A).await;
    assert_eq!(up.count("a.example.org."), 1);

    // The probes reach the upstream over both transports and say so.
    let target = up.addr.to_string();
    let up_line =
        |proto: &str| format!("clusterdns_probe_up{{protocol=\"{proto}\",target=\"{target}\"}}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(metrics).await;
        if sample(&text, &up_line("udp")) == Some(1.0)
            && sample(&text, &up_line("tcp")) == Some(1.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "probes never answered:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up.count("probe.example.org.") >= 2);

    // The upstream dies: the probes see it, and the expired entry is served stale, never
    // SERVFAIL.
    up.kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = dnsclient::query(dns, Transport::Udp, "a.example.org.", RecordType::A).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{m:?}");
        assert_eq!(a_ips(&m), vec![ip("10.0.0.1")]);
        let text = scrape(metrics).await;
        let stale = sample(&text, "coredns_cache_served_stale_total").unwrap_or(0.0);
        let down = sample(&text, &up_line("tcp")) == Some(0.0);
        let failures = sample(
            &text,
            &format!("clusterdns_probe_results_total{{protocol=\"tcp\",result=\"refused\",target=\"{target}\"}}"),
        );
        if stale >= 1.0 && down && failures.is_some_and(|f| f >= 1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never served stale:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}

fn a_ips(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn sidecar_autopath_answers_the_first_search_name_with_a_cname() {
    let up = Responder::start().await;
    up.set("a.example.org.", Rec::A(ip("10.0.0.1"), 300));
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        "nameserver 127.0.0.1\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    let server = app::start(ServeOptions {
        sidecar: Some(SidecarOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            upstreams: vec![up.addr.to_string()],
            health: "127.0.0.1:0".into(),
            ready: "127.0.0.1:0".into(),
            metrics: "127.0.0.1:0".into(),
            probe_interval: Duration::ZERO,
            autopath: Some(resolv),
            ..SidecarOptions::default()
        }),
        ..ServeOptions::default()
    })
    .await
    .expect("sidecar starts");
    // What glibc sends first for `a.example.org` with ndots:5 (TTLs capped by --cache-ttl 30).
    let m = dnsclient::query(
        server.dns_addr,
        Transport::Udp,
        "a.example.org.default.svc.cluster.local.",
        RecordType::A,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        dnsclient::section(&m.answers),
        vec![
            "a.example.org.default.svc.cluster.local. 30 IN CNAME a.example.org.",
            "a.example.org. 30 IN A 10.0.0.1",
        ]
    );
    // The sidecar walked the search path upstream (over its TCP connection).
    for n in [
        "a.example.org.default.svc.cluster.local.",
        "a.example.org.svc.cluster.local.",
        "a.example.org.cluster.local.",
        "a.example.org.",
    ] {
        assert_eq!(up.count(n), 1, "{n}");
    }
    server.shutdown().await;
}
