//! Test helpers: hickory's DNS client over real UDP and TCP, and the response formatted as
//! zone-file lines for comparison with golden files.
#![allow(dead_code)]

// The certificates live with the rest of the test support (the fake API server uses them
// too); every test file that includes this module includes `support`.
#[allow(unused_imports)]
pub use crate::support::pki::{pki, Pki};

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use hickory_net::runtime::TokioRuntimeProvider;
use hickory_net::tcp::TcpClientStream;
use hickory_net::udp::UdpClientStream;
use hickory_net::DnsHandle;
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, Record, RecordType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

pub fn query_message(name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let mut msg = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(parse_name(name), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    msg
}

/// Any label bytes (`_*` included, which hickory's text parser rejects), as a FQDN.
pub fn parse_name(name: &str) -> Name {
    let labels: Vec<&[u8]> = name
        .trim_end_matches('.')
        .split('.')
        .filter(|l| !l.is_empty())
        .map(str::as_bytes)
        .collect();
    let mut n = Name::from_labels(labels).expect("name");
    n.set_fqdn(true);
    n
}

fn rand_id() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(4242);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Sends `msg` with hickory's client and returns the response message as received.
pub async fn exchange(server: SocketAddr, transport: Transport, msg: Message) -> Message {
    exchange_from(server, transport, msg, None).await
}

/// [`exchange`] from the local address `bind` (e.g. `127.0.0.11:0`: a client the fixture
/// maps to a pod).
pub async fn exchange_from(
    server: SocketAddr,
    transport: Transport,
    msg: Message,
    bind: Option<SocketAddr>,
) -> Message {
    let provider = TokioRuntimeProvider::default();
    let mut options = DnsRequestOptions::default();
    options.use_edns = msg.edns.is_some();
    if let Some(e) = &msg.edns {
        options.edns_payload_len = e.max_payload();
    }
    let request = DnsRequest::new(msg, options);
    // The exchange must outlive the response: dropping it stops its background task.
    let exchange = match transport {
        Transport::Udp => UdpClientStream::builder(server, provider.clone())
            .with_timeout(Some(Duration::from_secs(5)))
            .with_bind_addr(bind)
            .exchange(),
        Transport::Tcp => {
            TcpClientStream::exchange(server, bind, Duration::from_secs(5), None, provider.clone())
                .await
                .expect("tcp connect")
        }
    };
    let mut responses = exchange.send(request);
    let first = responses.next().await;
    // The provider owns the background tasks' JoinSet: it too must live until here.
    drop(exchange);
    drop(provider);
    match first {
        Some(Ok(resp)) => resp.into_message(),
        Some(Err(e)) => panic!("query failed over {transport:?}: {e}"),
        None => panic!("no response over {transport:?}"),
    }
}

pub async fn query(
    server: SocketAddr,
    transport: Transport,
    name: &str,
    qtype: RecordType,
) -> Message {
    exchange(server, transport, query_message(name, qtype, Some(1232))).await
}

/// `name ttl IN TYPE rdata` with single spaces; SOA serials become `SERIAL` (they are the time
/// of the last change).
pub fn format_record(r: &Record) -> String {
    let text = r.to_string().replace("\\*", "*");
    let mut parts: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    if r.record_type() == RecordType::SOA && parts.len() >= 7 {
        parts[6] = "SERIAL".into();
    }
    // Zone-file form: TXT strings quoted (hickory prints them bare).
    if let hickory_proto::rr::RData::TXT(txt) = &r.data {
        let quoted: Vec<String> = txt
            .txt_data
            .iter()
            .map(|s| format!("\"{}\"", String::from_utf8_lossy(s)))
            .collect();
        parts.truncate(4);
        parts.extend(quoted);
    }
    parts.join(" ")
}

/// The rcode as dig prints it.
pub fn rcode_name(msg: &Message) -> String {
    match u16::from(msg.metadata.response_code) {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

pub fn section(records: &[Record]) -> Vec<String> {
    records.iter().map(format_record).collect()
}

/// A tiny upstream on a loopback address, port 53 (resolv.conf has no ports): answers
/// `example.com A` with 192.0.2.1 (TEST-NET data, never contacted), NXDOMAIN otherwise, and
/// counts queries. UDP only: enough for `forward`'s default.
pub struct Upstream {
    pub ip: std::net::Ipv4Addr,
    pub queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn upstream() -> Upstream {
    // A loopback address of our own per test run so parallel tests do not collide on :53.
    let mut sock = None;
    for i in 0..200u32 {
        let n = (std::process::id() + i) % 250 + 2;
        let ip = std::net::Ipv4Addr::new(127, 53, (i % 250) as u8 + 1, n as u8);
        if let Ok(s) = tokio::net::UdpSocket::bind((ip, 53)).await {
            sock = Some((ip, s));
            break;
        }
    }
    let (ip, sock) = sock.expect("a free loopback address on port 53 (tests run as root)");
    let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = queries.clone();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(q) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let r = example_reply(&q);
            let _ = sock.send_to(&r.to_vec().unwrap(), from).await;
        }
    });
    Upstream { ip, queries, task }
}

/// What [`upstream`] and [`dot_upstream`] answer to `q`.
fn example_reply(q: &Message) -> Message {
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{rdata::A, RData};
    let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries = q.queries.clone();
    let Some(question) = q.queries.first() else {
        r.metadata.response_code = ResponseCode::FormErr;
        return r;
    };
    if question
        .name()
        .to_ascii()
        .eq_ignore_ascii_case("example.com.")
        && question.query_type() == RecordType::A
    {
        r.answers.push(Record::from_rdata(
            question.name().clone(),
            300,
            RData::A(A("192.0.2.1".parse().unwrap())),
        ));
    } else {
        r.metadata.response_code = ResponseCode::NXDomain;
    }
    r
}

/// [`upstream`]'s answers over DNS over TLS, on 127.0.0.1 (a free port) with `pki`'s server
/// certificate; counts queries answered.
pub struct DotUpstream {
    pub addr: SocketAddr,
    pub queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DotUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn dot_upstream(pki: &Pki) -> DotUpstream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server.clone());
    let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = queries.clone();
    let task = tokio::spawn(async move {
        // Owned here, so aborting this task closes the connections too.
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, count) = (acceptor.clone(), count.clone());
            conns.spawn(async move {
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    return;
                };
                loop {
                    let mut len = [0u8; 2];
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if s.read_exact(&mut buf).await.is_err() {
                        return;
                    }
                    let Ok(q) = Message::from_vec(&buf) else {
                        return;
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let r = example_reply(&q).to_vec().unwrap();
                    let mut framed = (r.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&r);
                    if s.write_all(&framed).await.is_err() || s.flush().await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    DotUpstream {
        addr,
        queries,
        task,
    }
}

/// A plain HTTP/1.1 GET: (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (code, body)
}
