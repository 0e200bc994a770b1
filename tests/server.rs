//! The server's wire behaviour: truncation and TCP, EDNS sizes, malformed packets, and
//! SERVFAIL before the first complete load.

mod dnsclient;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clusterdns::app::{self, ServeOptions};
use clusterdns::cluster::objects::ObjectSet;
use clusterdns::cluster::{ClusterView, Store};
use clusterdns::dns::{Kubernetes, KubernetesConfig};
use dnsclient::{exchange, query_message, rcode_name, Transport};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A headless service with `n` ready endpoints, plus its namespace.
fn big_headless(n: usize) -> String {
    let mut endpoints = String::new();
    for i in 0..n {
        endpoints.push_str(&format!(
            "  - addresses: [\"10.7.{}.{}\"]\n    conditions: {{ready: true}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: big}}\n---\n\
apiVersion: v1\nkind: Service\nmetadata: {{name: many, namespace: big}}\nspec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\n\
apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: many-1\n  namespace: big\n  labels: {{kubernetes.io/service-name: many}}\naddressType: IPv4\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{endpoints}"
    )
}

async fn start_with(yaml: &str) -> (app::Running, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), yaml).unwrap();
    let server = app::start(ServeOptions {
        manifests: Some(dir.path().to_owned()),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    (server, dir)
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let (server, _dir) = start_with(&big_headless(150)).await;
    let name = "many.big.svc.cluster.local";

    // No EDNS: 512 bytes at most, TC set, and what fits is still valid.
    let udp = exchange(
        server.dns_addr,
        Transport::Udp,
        query_message(name, RecordType::A, None),
    )
    .await;
    assert!(udp.metadata.truncation, "TC must be set");
    assert!(
        udp.answers.len() < 150 && !udp.answers.is_empty(),
        "{}",
        udp.answers.len()
    );
    assert!(udp.to_vec().unwrap().len() <= 512);

    // EDNS 1232: more fits, still truncated.
    let edns = exchange(
        server.dns_addr,
        Transport::Udp,
        query_message(name, RecordType::A, Some(1232)),
    )
    .await;
    assert!(edns.metadata.truncation);
    assert!(edns.answers.len() > udp.answers.len());
    assert!(edns.to_vec().unwrap().len() <= 1232);

    // EDNS 4096 over UDP: all 150 records fit, no TC.
    let all = exchange(
        server.dns_addr,
        Transport::Udp,
        query_message(name, RecordType::A, Some(4096)),
    )
    .await;
    assert!(!all.metadata.truncation);
    assert_eq!(all.answers.len(), 150);

    // TCP: the whole answer.
    let tcp = exchange(
        server.dns_addr,
        Transport::Tcp,
        query_message(name, RecordType::A, None),
    )
    .await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 150);
    server.shutdown().await;
}

/// Truncated replies are replayed from the response cache, but only to clients with the same
/// size limit: every client gets what its limit allows, however the queries interleave.
#[tokio::test]
async fn replayed_truncated_answers_respect_each_clients_limit() {
    let (server, _dir) = start_with(&big_headless(150)).await;
    let name = "many.big.svc.cluster.local";
    let ask = |transport, edns| {
        exchange(
            server.dns_addr,
            transport,
            query_message(name, RecordType::SRV, edns),
        )
    };
    let mut first_512 = None;
    for round in 0..3 {
        let small = ask(Transport::Udp, None).await;
        assert!(small.metadata.truncation, "round {round}");
        assert!(small.to_vec().unwrap().len() <= 512);
        assert!(!small.answers.is_empty());
        let answers = dnsclient::section(&small.answers);
        assert_eq!(first_512.get_or_insert(answers.clone()), &answers);

        let mid = ask(Transport::Udp, Some(1232)).await;
        assert!(mid.metadata.truncation);
        assert!(mid.answers.len() > small.answers.len());
        assert!(mid.to_vec().unwrap().len() <= 1232);

        let tcp = ask(Transport::Tcp, None).await;
        assert!(!tcp.metadata.truncation);
        assert_eq!(tcp.answers.len(), 150);

        // 150 SRV records and their addresses are ~17 kB: truncated even at 4096.
        let big = ask(Transport::Udp, Some(4096)).await;
        assert!(big.metadata.truncation);
        assert!(big.answers.len() > mid.answers.len());
        assert!(big.to_vec().unwrap().len() <= 4096);
    }
    server.shutdown().await;
}

#[tokio::test]
async fn edns_responses_carry_opt() {
    let (server, _dir) = start_with(&big_headless(1)).await;
    let with = exchange(
        server.dns_addr,
        Transport::Udp,
        query_message("many.big.svc.cluster.local", RecordType::A, Some(4096)),
    )
    .await;
    let opt = with
        .edns
        .as_ref()
        .expect("OPT in the response to an EDNS query");
    assert_eq!(opt.max_payload(), 1232);
    let without = exchange(
        server.dns_addr,
        Transport::Udp,
        query_message("many.big.svc.cluster.local", RecordType::A, None),
    )
    .await;
    assert!(without.edns.is_none());
    server.shutdown().await;
}

/// Sends raw bytes over UDP; the reply, or None when none comes within `wait`.
async fn raw_udp(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(bytes, server).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

fn header(id: u16, flags: u16, qd: u16) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    h
}

fn rcode_of(reply: &[u8]) -> u8 {
    reply[3] & 0x0f
}

#[tokio::test]
async fn malformed_packets_get_formerr_or_silence_and_the_server_keeps_answering() {
    let (server, _dir) = start_with(&big_headless(1)).await;
    let addr = server.dns_addr;
    // A valid packet gets an answer within this; silence is judged against the same bound.
    let wait = Duration::from_millis(300);

    // Truncated header: nothing to answer to.
    assert_eq!(
        raw_udp(addr, &[0x12, 0x34, 0x01, 0x00, 0x00], wait).await,
        None
    );

    // Bad label length: a 63-byte label with 3 bytes behind it.
    let mut bad_label = header(0x1001, 0x0100, 1);
    bad_label.extend_from_slice(&[63, b'a', b'b', b'c']);
    let reply = raw_udp(addr, &bad_label, wait)
        .await
        .expect("FORMERR reply");
    assert_eq!(&reply[..2], &[0x10, 0x01], "reply carries the query id");
    assert_eq!(rcode_of(&reply), 1, "FORMERR");

    // A compression pointer that points at itself.
    let mut loop_ptr = header(0x1002, 0x0100, 1);
    loop_ptr.extend_from_slice(&[0xC0, 12, 0, 1, 0, 1]);
    let reply = raw_udp(addr, &loop_ptr, wait).await.expect("FORMERR reply");
    assert_eq!(rcode_of(&reply), 1);

    // A response sent as a query (QR set): never answered, so no reflection loops.
    let mut response = header(0x1003, 0x8180, 1);
    response.extend_from_slice(&[0, 0, 1, 0, 1]);
    assert_eq!(raw_udp(addr, &response, wait).await, None);

    // No question at all.
    let reply = raw_udp(addr, &header(0x1004, 0x0100, 0), wait)
        .await
        .expect("reply");
    assert_eq!(rcode_of(&reply), 1);

    // Opcode UPDATE: not implemented.
    let mut update = header(0x1005, 5 << 11, 1);
    update.extend_from_slice(&[0, 0, 6, 0, 1]);
    let reply = raw_udp(addr, &update, wait).await.expect("reply");
    assert_eq!(rcode_of(&reply), 4, "NOTIMP");

    // Random garbage never panics the server.
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..300 {
        let len = (seed % 80) as usize + 12;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        sock.send_to(&bytes, addr).await.unwrap();
    }

    // TCP: a garbage frame gets FORMERR or a close, never a crash.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut frame = vec![0u8, bad_label.len() as u8];
    frame.extend_from_slice(&bad_label);
    tcp.write_all(&frame).await.unwrap();
    let mut len = [0u8; 2];
    if tokio::time::timeout(Duration::from_secs(2), tcp.read_exact(&mut len))
        .await
        .is_ok_and(|r| r.is_ok())
    {
        let mut body = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut body).await.unwrap();
        assert_eq!(rcode_of(&body), 1);
    }

    // Still answering, on both transports.
    for t in [Transport::Udp, Transport::Tcp] {
        let ok = exchange(
            addr,
            t,
            query_message("many.big.svc.cluster.local", RecordType::A, None),
        )
        .await;
        assert_eq!(rcode_name(&ok), "NOERROR");
        assert_eq!(ok.answers.len(), 1);
    }
    server.shutdown().await;
}

#[test]
fn servfail_before_the_first_complete_load() {
    let view = ClusterView::new();
    let k = Kubernetes::new(
        KubernetesConfig::for_zone("cluster.local").unwrap(),
        view.clone(),
    );
    let name = |n: &str| Name::from_ascii(n).unwrap();

    let a = k
        .lookup(&name("nginx.demo.svc.cluster.local."), RecordType::A)
        .unwrap();
    assert_eq!(
        a.rcode,
        ResponseCode::ServFail,
        "no data yet: SERVFAIL, not NXDOMAIN"
    );

    // Partial data, not yet synced: what exists answers, what does not is SERVFAIL.
    let mut set = ObjectSet::default();
    set.add_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: nginx, namespace: demo}\nspec: {clusterIP: 10.0.0.1}\n",
        Path::new("x.yaml"),
    )
    .unwrap();
    view.publish(Arc::new(Store::from_objects(&set)), false);
    let a = k
        .lookup(&name("nginx.demo.svc.cluster.local."), RecordType::A)
        .unwrap();
    assert_eq!(a.rcode, ResponseCode::NoError);
    assert_eq!(a.answers.len(), 1);
    let missing = k
        .lookup(&name("other.demo.svc.cluster.local."), RecordType::A)
        .unwrap();
    assert_eq!(missing.rcode, ResponseCode::ServFail);

    // Synced: the same name is a proper NXDOMAIN.
    view.publish(Arc::new(Store::from_objects(&set)), true);
    let missing = k
        .lookup(&name("other.demo.svc.cluster.local."), RecordType::A)
        .unwrap();
    assert_eq!(missing.rcode, ResponseCode::NXDomain);
    assert_eq!(missing.authorities.len(), 1, "SOA in the negative answer");
}

#[tokio::test]
async fn dual_stack_sockets_answer_on_ipv6_loopback() {
    // Tests run where ::1 may be missing; skip only then, and say so.
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback here: skipping");
        return;
    }
    let server = app::start(ServeOptions {
        dns_addr: "[::1]:0".parse().unwrap(),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    for t in [Transport::Udp, Transport::Tcp] {
        let r = exchange(
            server.dns_addr,
            t,
            query_message("nginx.demo.svc.cluster.local", RecordType::A, None),
        )
        .await;
        assert_eq!(r.answers.len(), 1);
    }
    server.shutdown().await;
}
