//! The server under restarts and crowds (issue 15): a rolling restart with a second server on
//! the same port loses no query; 10 000 concurrent TCP clients under a soft open-file limit of
//! 1024; running out of descriptors pauses accepts instead of spinning and logs once; TCP
//! connection limits, slowloris and idle timeouts, pipelining without head-of-line blocking,
//! while UDP and other TCP clients keep being answered.
//!
//! Every server is the real binary on loopback; clients are plain sockets speaking DNS
//! through hickory-proto's message types.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

// ---------------------------------------------------------------------------------------
// The server process

struct Server {
    child: Child,
    dns: SocketAddr,
    http: HashMap<String, SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn log_lines(&self, needle: &str) -> Vec<String> {
        self.stderr
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    fn ready_status(&self) -> u16 {
        http_status(self.http["ready"], "/ready")
    }
}

/// Starts `clusterdns serve --corefile` with `corefile` and `args`; `nofile` sets the child's
/// open-file limit (soft, hard) before it runs. Returns once the startup lines are printed.
fn start(corefile: &str, args: &[&str], nofile: Option<(u64, u64)>, http: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Corefile");
    std::fs::write(&path, corefile).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clusterdns"));
    cmd.arg("serve")
        .arg("--corefile")
        .arg(&path)
        .args(args)
        .env("CLUSTERDNS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some((soft, hard)) = nofile {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe and touches nothing of the parent.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().expect("clusterdns starts");
    let stderr = support::process::collect_stderr(&mut child);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut dns = None;
    let mut found = HashMap::new();
    while dns.is_none() || http.iter().any(|k| !found.contains_key(*k)) {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap_or(0) == 0 {
            panic!(
                "clusterdns exited before its startup lines; stderr: {:#?}",
                stderr.lock().unwrap()
            );
        }
        if line.contains("serving DNS on") {
            dns = line.split_whitespace().find_map(|w| w.parse().ok());
        } else if let Some(rest) = line.split("serving ").nth(1) {
            let mut w = rest.split_whitespace();
            let kind = w.next().unwrap_or("").to_string();
            let addr = w
                .nth(1)
                .and_then(|u| u.trim_start_matches("http://").parse().ok());
            if let Some(a) = addr {
                found.insert(kind, a);
            }
        }
    }
    // Keep draining stdout so a late write never blocks the server.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink);
    });
    Server {
        child,
        dns: dns.unwrap(),
        http: found,
        stderr,
        _dir: dir,
    }
}

/// GET `path`: the body (empty when nothing answers).
fn http_body(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of the sample `series` (name and labels as printed) in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn sigterm(pid: i32) {
    // SAFETY: plain kill(2) to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

/// GET `path`: the status code, 0 when nothing answers.
fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut head = String::new();
    let _ = BufReader::new(s).read_line(&mut head);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Raises this test process's own open-file limit (soft to hard, and hard to `want` when
/// allowed): it holds one end of every connection. Returns the soft limit.
fn raise_own_limit(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on our own process.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        let target = libc::rlimit {
            rlim_cur: (want as libc::rlim_t).max(lim.rlim_cur),
            rlim_max: (want as libc::rlim_t).max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &target) != 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// A port free for UDP and TCP on 127.0.0.1 right now (two servers are started on it).
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

// ---------------------------------------------------------------------------------------
// DNS on the wire

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

fn framed(q: &[u8]) -> Vec<u8> {
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(q);
    out
}

/// The answer's ID, rcode and first A address.
fn parse(bytes: &[u8]) -> (u16, ResponseCode, Option<Ipv4Addr>) {
    let m = Message::from_vec(bytes).expect("a DNS message");
    let a = m.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    });
    (m.metadata.id, m.metadata.response_code, a)
}

fn udp_ask(server: SocketAddr, id: u16, name: &str, timeout: Duration) -> std::io::Result<Vec<u8>> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(timeout))?;
    s.send_to(&query(id, name), server)?;
    let mut buf = [0u8; 1500];
    loop {
        let (n, _) = s.recv_from(&mut buf)?;
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            return Ok(buf[..n].to_vec());
        }
    }
}

/// Reads one length-prefixed message.
fn tcp_read(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut msg)?;
    Ok(msg)
}

fn tcp_connect(server: SocketAddr, from: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    if let Some(ip) = from {
        sock.bind(&SocketAddr::new(ip, 0).into())?;
    }
    sock.connect_timeout(&server.into(), Duration::from_secs(3))?;
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    Ok(s)
}

fn tcp_ask(s: &mut TcpStream, id: u16, name: &str) -> std::io::Result<Vec<u8>> {
    s.write_all(&framed(&query(id, name)))?;
    tcp_read(s)
}

/// Whether the server has closed `s` (EOF or reset) within `within`.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut b = [0u8; 1];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Rolling restart

/// A Corefile answering `whoami.test` with `me`, so every answer says which server gave it.
fn whoami_corefile(port: u16, me: &str, lameduck: &str) -> String {
    format!(
        ".:{port} {{\n    bind 127.0.0.1\n    health 127.0.0.1:0 {{\n        lameduck {lameduck}\n    }}\n    ready 127.0.0.1:0\n    template IN A whoami.test {{\n        answer \"{{{{ .Name }}}} 5 IN A {me}\"\n    }}\n}}\n"
    )
}

#[derive(Default)]
struct Tally {
    /// Answers per server address (192.0.2.1 = A, .2 = B), and per protocol.
    by_server: Mutex<HashMap<(Ipv4Addr, &'static str), u64>>,
    failures: Mutex<Vec<String>>,
    /// TCP queries re-sent on a new connection because the server closed the old one (at a
    /// message boundary, as RFC 7766 lets it) before answering them.
    tcp_resent: AtomicU64,
    sent: AtomicU64,
}

impl Tally {
    fn answered(&self, ip: Ipv4Addr, proto: &'static str) {
        *self
            .by_server
            .lock()
            .unwrap()
            .entry((ip, proto))
            .or_default() += 1;
    }
    fn count(&self, ip: &str, proto: &'static str) -> u64 {
        let ip: Ipv4Addr = ip.parse().unwrap();
        self.by_server
            .lock()
            .unwrap()
            .get(&(ip, proto))
            .copied()
            .unwrap_or(0)
    }
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }
}

fn check_answer(t: &Tally, bytes: &[u8], id: u16, proto: &'static str) {
    match parse(bytes) {
        (got, ResponseCode::NoError, Some(ip)) if got == id => t.answered(ip, proto),
        other => t.fail(format!("{proto}: unexpected answer {other:?}")),
    }
}

/// UDP clients: a fresh socket (source port) per query, so SO_REUSEPORT spreads them over
/// both servers; no retries: a lost query is a failure.
fn udp_client(server: SocketAddr, t: Arc<Tally>, stop: Arc<AtomicBool>, seed: u16) {
    let mut id = seed;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        t.sent.fetch_add(1, Ordering::Relaxed);
        match udp_ask(server, id, "whoami.test", Duration::from_secs(3)) {
            Ok(b) => check_answer(&t, &b, id, "udp"),
            Err(e) => t.fail(format!("udp query {id}: {e}")),
        }
        // Pacing, not synchronisation: a steady stream rather than a flood on shared cores.
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// TCP clients: persistent connections, as sidecars keep. A query on a connection the
/// server closed before answering it is re-sent once on a new connection (what RFC 7766
/// clients do); a second failure is a failure.
fn tcp_client(server: SocketAddr, t: Arc<Tally>, stop: Arc<AtomicBool>, seed: u16, reuse: bool) {
    let mut id = seed;
    let mut conn: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        id = id.wrapping_add(1);
        t.sent.fetch_add(1, Ordering::Relaxed);
        let mut outcome = Err(std::io::Error::other("not sent"));
        for attempt in 0..2 {
            let fresh = conn.is_none();
            if fresh {
                match tcp_connect(server, None) {
                    Ok(s) => conn = Some(s),
                    Err(e) => {
                        outcome = Err(e);
                        break;
                    }
                }
            }
            let s = conn.as_mut().unwrap();
            outcome = tcp_ask(s, id, "whoami.test");
            if outcome.is_ok() {
                break;
            }
            conn = None;
            if attempt == 0 {
                t.tcp_resent.fetch_add(1, Ordering::Relaxed);
            }
        }
        match outcome {
            Ok(b) => check_answer(&t, &b, id, "tcp"),
            Err(e) => t.fail(format!("tcp query {id}: {e}")),
        }
        if !reuse {
            conn = None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn rolling_restart_on_a_shared_port_loses_no_query() {
    let port = free_port();
    let lameduck = Duration::from_secs(1);
    let a = start(
        &whoami_corefile(port, "192.0.2.1", "1s"),
        &[],
        None,
        &["ready"],
    );
    let b = start(
        &whoami_corefile(port, "192.0.2.2", "1s"),
        &[],
        None,
        &["ready"],
    );
    assert_eq!(a.dns.port(), port);
    assert_eq!(b.dns.port(), port);
    assert_eq!(a.ready_status(), 200);
    assert_eq!(b.ready_status(), 200);

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..3u16 {
        let (t, s, d) = (tally.clone(), stop.clone(), a.dns);
        clients.push(std::thread::spawn(move || udp_client(d, t, s, i * 10_000)));
    }
    for (i, reuse) in [(3u16, true), (4, true), (5, false)] {
        let (t, s, d) = (tally.clone(), stop.clone(), a.dns);
        clients.push(std::thread::spawn(move || {
            tcp_client(d, t, s, i * 10_000, reuse)
        }));
    }
    // Both servers take a share of the port, over both protocols.
    eventually(
        "both servers answering UDP and TCP",
        Duration::from_secs(20),
        || {
            ["192.0.2.1", "192.0.2.2"]
                .iter()
                .all(|ip| tally.count(ip, "udp") > 0 && tally.count(ip, "tcp") > 0)
        },
    );

    let signalled = Instant::now();
    sigterm(a.pid());
    eventually(
        "/ready of the stopping server turns 503",
        Duration::from_secs(1),
        || a.ready_status() == 503,
    );
    let ready_dropped = signalled.elapsed();
    // During lameduck the stopping server still answers.
    let before = tally.count("192.0.2.1", "udp") + tally.count("192.0.2.1", "tcp");
    let mut a = a;
    let mut answered_in_lameduck = false;
    let status = loop {
        if !answered_in_lameduck {
            answered_in_lameduck =
                tally.count("192.0.2.1", "udp") + tally.count("192.0.2.1", "tcp") > before;
        }
        if let Some(st) = a.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            signalled.elapsed() <= lameduck + Duration::from_secs(1),
            "the stopping server must exit within lameduck + 1 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let exited = signalled.elapsed();
    assert!(
        status.success(),
        "exit status {status:?}; stderr: {:#?}",
        a.stderr
    );
    assert!(
        answered_in_lameduck,
        "no answer from the stopping server during lameduck"
    );

    // The other server now takes every query.
    let b_before = tally.count("192.0.2.2", "udp") + tally.count("192.0.2.2", "tcp");
    eventually(
        "the remaining server answering alone",
        Duration::from_secs(10),
        || tally.count("192.0.2.2", "udp") + tally.count("192.0.2.2", "tcp") > b_before + 200,
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let failures = tally.failures.lock().unwrap();
    eprintln!(
        "rolling restart: {} queries, /ready 503 after {ready_dropped:?}, exit 0 after {exited:?}, \
         answers A udp {} tcp {}, B udp {} tcp {}, TCP re-sent after a close {}",
        tally.sent.load(Ordering::Relaxed),
        tally.count("192.0.2.1", "udp"),
        tally.count("192.0.2.1", "tcp"),
        tally.count("192.0.2.2", "udp"),
        tally.count("192.0.2.2", "tcp"),
        tally.tcp_resent.load(Ordering::Relaxed),
    );
    assert!(
        failures.is_empty(),
        "{} failed: {:#?}",
        failures.len(),
        &failures[..failures.len().min(20)]
    );
    drop(b);
}

// ---------------------------------------------------------------------------------------
// Many clients

const SIMPLE: &str = ".:0 {\n    bind 127.0.0.1\n    template IN A a.test {\n        answer \"{{ .Name }} 5 IN A 192.0.2.9\"\n    }\n}\n";

/// A source address in 127.0.1.0/24 for client `i`: 100 clients per address, under the
/// default per-client limit, as sidecars each have their own pod IP.
fn client_ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        0,
        1 + (i / 25_000) as u8,
        (i / 100 % 250) as u8 + 1,
    ))
}

#[test]
fn ten_thousand_concurrent_tcp_clients_under_a_soft_limit_of_1024() {
    const N: usize = 10_000;
    let limit = raise_own_limit(2 * N as u64 + 2_000);
    assert!(
        limit >= N as u64 + 1_000,
        "this test needs an open-file limit of {} (it is {limit})",
        N + 1_000
    );
    // The server starts as a process does under a common default: soft 1024.
    let server = start(SIMPLE, &[], Some((1024, limit)), &[]);
    let dns = server.dns;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let all_open = Arc::new(tokio::sync::Barrier::new(N + 1));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let (all_open, failures) = (all_open.clone(), failures.clone());
            tasks.spawn(async move {
                let run = async {
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.bind(SocketAddr::new(client_ip(i), 0))?;
                    let mut s = sock.connect(dns).await?;
                    let mut ask = async |id: u16| -> std::io::Result<()> {
                        s.write_all(&framed(&query(id, "a.test"))).await?;
                        let mut len = [0u8; 2];
                        s.read_exact(&mut len).await?;
                        let mut m = vec![0u8; u16::from_be_bytes(len) as usize];
                        s.read_exact(&mut m).await?;
                        match parse(&m) {
                            (got, ResponseCode::NoError, Some(_)) if got == id => Ok(()),
                            other => Err(std::io::Error::other(format!("{other:?}"))),
                        }
                    };
                    ask(i as u16).await?;
                    // Every connection is open at once before the second round.
                    all_open.wait().await;
                    ask((i as u16).wrapping_add(20_000)).await?;
                    std::io::Result::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(120), run).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => failures.lock().unwrap().push(format!("client {i}: {e}")),
                    Err(_) => failures.lock().unwrap().push(format!("client {i}: timed out")),
                }
                // A failed client must not hold the others at the barrier.
            });
        }
        // The test itself is the last to arrive: then all N are connected and answered once.
        let waited = tokio::time::timeout(Duration::from_secs(150), all_open.wait()).await;
        if waited.is_err() {
            let f = failures.lock().unwrap();
            panic!(
                "not all {N} clients connected and answered; {} failed, first: {:?}; server log: {:?}",
                f.len(),
                f.first(),
                server.log_lines("tcp")
            );
        }
        // UDP is served meanwhile.
        let r = udp_ask(dns, 7, "a.test", Duration::from_secs(3)).expect("udp answer");
        assert_eq!(parse(&r).1, ResponseCode::NoError);
        while tasks.join_next().await.is_some() {}
    });
    let f = failures.lock().unwrap();
    assert!(
        f.is_empty(),
        "{} of {N} clients failed: {:?}",
        f.len(),
        &f[..f.len().min(10)]
    );
    assert!(server.log_lines("Too many open files").is_empty());
}

#[test]
fn out_of_descriptors_pauses_accepts_logs_once_and_recovers() {
    raise_own_limit(4096);
    // Soft and hard 64: the server cannot raise it. The total connection limit is set above
    // what the descriptors allow, so accept(2) itself fails with EMFILE.
    let server = start(
        SIMPLE,
        &["--tcp-max-connections", "1000", "--tcp-max-per-client", "0"],
        Some((64, 64)),
        &[],
    );
    let dns = server.dns;
    let mut open = Vec::new();
    let mut waiting = Vec::new();
    // Connect until one is not answered: the kernel completes it, the server cannot take it.
    for i in 0..200u16 {
        let mut s = tcp_connect(dns, None).unwrap();
        s.write_all(&framed(&query(i, "a.test"))).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        match tcp_read(&mut s) {
            Ok(_) => open.push(s),
            Err(_) => {
                waiting.push((i, s));
                if waiting.len() == 3 {
                    break;
                }
            }
        }
    }
    assert_eq!(waiting.len(), 3, "the server never ran out of descriptors");
    eventually(
        "the out-of-descriptors warning",
        Duration::from_secs(5),
        || !server.log_lines("out of file descriptors").is_empty(),
    );
    // While out of descriptors (at least a second of it, so accept fails again and again),
    // UDP is still answered.
    let exhausted = Instant::now();
    let mut udp_answers = 0;
    while exhausted.elapsed() < Duration::from_secs(1) || udp_answers < 20 {
        let r = udp_ask(dns, udp_answers, "a.test", Duration::from_secs(3)).expect("udp answer");
        assert_eq!(parse(&r).1, ResponseCode::NoError);
        udp_answers += 1;
    }
    // Descriptors come back: the connections waiting in the backlog are taken and answered.
    open.truncate(open.len().saturating_sub(10));
    for (id, s) in waiting.iter_mut() {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (got, rcode, _) = parse(&tcp_read(s).expect("answered after recovery"));
        assert_eq!((got, rcode), (*id, ResponseCode::NoError));
    }
    eventually("the recovery line", Duration::from_secs(5), || {
        !server
            .log_lines("file descriptors available again")
            .is_empty()
    });
    let warnings = server.log_lines("out of file descriptors");
    assert_eq!(warnings.len(), 1, "one warning per burst: {warnings:#?}");
    let recovered = server.log_lines("file descriptors available again");
    let failed: u64 = recovered[0]
        .split("failed_accepts=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {recovered:?}"));
    // Backing off from 10 ms to 1 s: a handful of attempts per second, not a spin.
    assert!(
        (2..=100).contains(&failed),
        "failed accepts over the burst: {failed}"
    );
}

// ---------------------------------------------------------------------------------------
// Limits and hostile clients

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, 2, last)))
}

fn answered_over_tcp(dns: SocketAddr, from: Option<IpAddr>, id: u16) -> bool {
    tcp_connect(dns, from)
        .and_then(|mut s| tcp_ask(&mut s, id, "a.test"))
        .map(|b| parse(&b).0 == id)
        .unwrap_or(false)
}

fn udp_answered(dns: SocketAddr, id: u16) -> bool {
    udp_ask(dns, id, "a.test", Duration::from_secs(3))
        .map(|b| parse(&b).1 == ResponseCode::NoError)
        .unwrap_or(false)
}

/// A connection from `from` that has been answered once (retried while places freed by
/// earlier connections are still being given back).
fn hold(dns: SocketAddr, from: Option<IpAddr>, id: u16) -> TcpStream {
    let mut held = None;
    eventually(
        "a connection under the limits",
        Duration::from_secs(5),
        || {
            held = tcp_connect(dns, from)
                .and_then(|mut s| tcp_ask(&mut s, id, "a.test").map(|_| s))
                .ok();
            held.is_some()
        },
    );
    held.unwrap()
}

#[test]
fn tcp_connection_limits_per_client_and_in_total() {
    let corefile = SIMPLE.replace(
        "bind 127.0.0.1\n",
        "bind 127.0.0.1\n    prometheus 127.0.0.1:0\n",
    );
    let server = start(
        &corefile,
        &["--tcp-max-per-client", "4", "--tcp-max-connections", "10"],
        None,
        &["prometheus"],
    );
    let dns = server.dns;
    let metrics = server.http["prometheus"];
    let mut held: Vec<TcpStream> = (0..4).map(|i| hold(dns, ip(1), i)).collect();
    // The fifth from the same client is closed at once; another client still gets in.
    let mut fifth = tcp_connect(dns, ip(1)).unwrap();
    assert!(
        closed_by_server(&mut fifth, Duration::from_secs(5)),
        "fifth connection from one client kept"
    );
    drop(hold(dns, ip(2), 100));
    // Fill the total: 4 + 4 + 2 = 10.
    for (id, last) in [(201, 2), (202, 2), (203, 2), (204, 2), (205, 3), (206, 3)] {
        held.push(hold(dns, ip(last), id));
    }
    let mut over = tcp_connect(dns, ip(4)).unwrap();
    assert!(
        closed_by_server(&mut over, Duration::from_secs(5)),
        "connection over the total kept"
    );
    // UDP is unaffected; a place freed is taken again.
    assert!(udp_answered(dns, 1));
    let page = http_body(metrics, "/metrics");
    assert_eq!(
        sample(&page, "clusterdns_tcp_connections"),
        Some(10.0),
        "{page}"
    );
    assert!(sample(&page, "clusterdns_tcp_refused_total{reason=\"per_client\"}") >= Some(1.0));
    assert!(sample(&page, "clusterdns_tcp_refused_total{reason=\"total\"}") >= Some(1.0));
    drop(held.pop());
    drop(hold(dns, ip(4), 300));
    // The child's stderr is collected by a reader thread: wait for the lines, then count.
    eventually(
        "both limit warnings in the log",
        Duration::from_secs(5),
        || {
            !server
                .log_lines("limit of open connections reached")
                .is_empty()
                && !server
                    .log_lines("limit of connections from one client reached")
                    .is_empty()
        },
    );
    assert_eq!(
        server.log_lines("limit of open connections reached").len(),
        1
    );
    assert_eq!(
        server
            .log_lines("limit of connections from one client reached")
            .len(),
        1
    );
}

#[test]
fn slowloris_and_idle_connections_are_closed_while_others_are_served() {
    let server = start(
        SIMPLE,
        &[
            "--tcp-read-timeout",
            "1s",
            "--tcp-idle-timeout",
            "2s",
            "--tcp-max-per-client",
            "0",
        ],
        None,
        &[],
    );
    let dns = server.dns;
    // Slow clients: a length prefix of 256 bytes, then a byte now and then.
    let mut slow: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = tcp_connect(dns, ip(10)).unwrap();
            s.write_all(&[1, 0, 0xab]).unwrap();
            s
        })
        .collect();
    let idle = tcp_connect(dns, ip(11)).unwrap();
    let started = Instant::now();
    let mut closed = vec![false; slow.len()];
    let mut idle = Some(idle);
    let mut idle_closed_after = None;
    let mut k = 0;
    while closed.iter().any(|c| !c) || idle.is_some() {
        // Read timeout 1 s, idle 2 s: the old 10 s limit per read would not pass this.
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "slow or idle clients still open: {} slow, idle {}",
            closed.iter().filter(|c| !**c).count(),
            idle.is_some()
        );
        // Everyone else is served meanwhile.
        k += 1;
        assert!(udp_answered(dns, k), "UDP not answered under slowloris");
        assert!(
            answered_over_tcp(dns, ip(12), k),
            "new TCP client not answered under slowloris"
        );
        for (i, s) in slow.iter_mut().enumerate() {
            if !closed[i] {
                let _ = s.write_all(&[0xab]);
                closed[i] = closed_by_server(s, Duration::from_millis(1));
            }
        }
        if let Some(s) = idle.as_mut() {
            if closed_by_server(s, Duration::from_millis(1)) {
                idle_closed_after = Some(started.elapsed());
                idle = None;
            }
        }
        // Pacing of the slow clients' drip, not synchronisation.
        std::thread::sleep(Duration::from_millis(100));
    }
    let idle_after = idle_closed_after.unwrap();
    assert!(
        idle_after >= Duration::from_secs(1),
        "idle connection closed too early: {idle_after:?}"
    );
}

/// A UDP upstream that answers every query after `delay`.
fn slow_upstream(delay: Duration) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
                r.metadata.recursion_desired = true;
                r.metadata.recursion_available = true;
                for query in &q.queries {
                    r.add_query(query.clone());
                    r.answers.push(hickory_proto::rr::Record::from_rdata(
                        query.name().clone(),
                        5,
                        RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(192, 0, 2, 77))),
                    ));
                }
                let _ = s.send_to(&r.to_vec().unwrap(), from);
            });
        }
    });
    addr
}

#[test]
fn pipelined_queries_are_all_answered_and_a_slow_one_blocks_none() {
    let upstream = slow_upstream(Duration::from_millis(700));
    let corefile = format!(
        "test:0 {{\n    bind 127.0.0.1\n    template IN A a.test {{\n        answer \"{{{{ .Name }}}} 5 IN A 192.0.2.9\"\n    }}\n}}\n\
         slow.example:0 {{\n    bind 127.0.0.1\n    forward . {upstream} {{\n        prefer_udp\n    }}\n}}\n"
    );
    let server = start(&corefile, &[], None, &[]);
    let dns = server.dns;
    let mut s = tcp_connect(dns, None).unwrap();
    // First a forwarded name that takes 700 ms, then 2000 cluster-like names, in one write.
    let mut burst = framed(&query(0, "x.slow.example"));
    for id in 1..=2000u16 {
        burst.extend(framed(&query(id, "a.test")));
    }
    s.write_all(&burst).unwrap();
    let mut order = Vec::new();
    let mut seen = HashSet::new();
    while order.len() < 2001 {
        let (id, rcode, a) = parse(&tcp_read(&mut s).expect("every pipelined query answered"));
        assert_eq!(rcode, ResponseCode::NoError, "query {id}");
        let want = if id == 0 {
            [192, 0, 2, 77]
        } else {
            [192, 0, 2, 9]
        };
        assert_eq!(a, Some(Ipv4Addr::from(want)), "query {id}");
        assert!(seen.insert(id), "query {id} answered twice");
        order.push(id);
    }
    // The slow answer came last: the 2000 behind it did not wait for it.
    assert_eq!(
        order.last(),
        Some(&0),
        "the forwarded query held up those behind it"
    );
    // The connection stays usable.
    let again = tcp_ask(&mut s, 4242, "a.test").unwrap();
    assert_eq!(parse(&again).0, 4242);
    // And UDP meanwhile.
    assert!(udp_answered(dns, 5));
}

/// CoreDNS's `timeouts` plugin sets a block's TCP timeouts over the flags' defaults (idle 10 s).
#[test]
fn corefile_timeouts_override_the_flags() {
    let corefile = ".:0 {\n    bind 127.0.0.1\n    timeouts {\n        idle 1s\n    }\n    template IN A a.test {\n        answer \"{{ .Name }} 5 IN A 192.0.2.9\"\n    }\n}\n";
    let server = start(corefile, &[], None, &[]);
    let mut s = tcp_connect(server.dns, None).unwrap();
    tcp_ask(&mut s, 1, "a.test").unwrap();
    let asked = Instant::now();
    assert!(
        closed_by_server(&mut s, Duration::from_secs(6)),
        "idle connection still open after 6 s"
    );
    assert!(asked.elapsed() >= Duration::from_millis(900));
}

#[test]
fn corefile_timeouts_errors_say_where_and_what() {
    let parse = |text: &str| {
        clusterdns::corefile::parse_str(text, std::path::Path::new("Corefile"), &|_| None)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        parse(".:53 {\n    timeouts\n}\n"),
        "Corefile:2:5: timeouts: give at least one of read, write, idle (or leave the plugin out)"
    );
    let e = parse(".:53 {\n    timeouts {\n        read 0s\n    }\n}\n");
    assert!(e.starts_with("Corefile:3:"), "{e}");
    assert!(e.contains("read 0s: must be between 1s and 24h"), "{e}");
    let e = parse(".:53 {\n    timeouts {\n        slow 5s\n    }\n}\n");
    assert!(e.starts_with("Corefile:3:"), "{e}");
    assert!(e.contains("slow"), "{e}");
    assert!(clusterdns::corefile::parse_str(
        ".:53 {\n    timeouts {\n        read 15s\n        write 30s\n        idle 1m\n    }\n}\n",
        std::path::Path::new("Corefile"),
        &|_| None,
    )
    .is_ok());
}

#[test]
fn bad_tcp_flags_are_refused_with_the_flag_named() {
    for (flag, value, says) in [
        ("--tcp-idle-timeout", "0", "a timeout must be more than 0"),
        ("--tcp-read-timeout", "5x", "unknown unit 'x'"),
        ("--tcp-max-per-client", "many", "invalid value 'many'"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
            .args([
                "serve",
                "--dns-addr",
                "127.0.0.1:0",
                "--upstream",
                "none",
                flag,
                value,
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value} accepted");
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {value}: {err}"
        );
    }
}
