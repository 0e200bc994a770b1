//! /metrics as a CoreDNS dashboard reads it: a known mix of queries gives exact counter values
//! and label sets; every metric our Grafana dashboard queries is exported by a running server.

mod dnsclient;
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use clusterdns::app::{self, ServeOptions};
use dnsclient::{exchange, http_get, query_message, upstream, Transport};
use hickory_proto::rr::RecordType;
use support::dashboard;

/// `name{labels} value` lines of the text exposition, labels sorted, for exact lookups.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = match line.rsplit_once(' ') {
            Some(v) => v,
            None => continue,
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let series = match series.split_once('{') {
            Some((name, labels)) => {
                // `a="x",b="y"` -> [`a="x`, `b="y`]: the closing quote of each value dropped.
                let inner = labels.strip_suffix('}').unwrap_or(labels);
                let inner = inner.strip_suffix('"').unwrap_or(inner);
                let mut l: Vec<&str> = inner.split("\",").collect();
                l.sort();
                format!("{name}{{{}}}", l.join(","))
            }
            None => series.to_string(),
        };
        out.insert(series, v);
    }
    out
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}")).collect();
    l.sort();
    format!("{name}{{{}}}", l.join(","))
}

async fn ask(addr: SocketAddr, t: Transport, name: &str, qtype: RecordType) {
    exchange(addr, t, query_message(name, qtype, None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_known_query_mix_gives_exact_coredns_counters() {
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        panic!("these tests need IPv6 loopback (::1) for the family=2 counters");
    }
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(
            ".:0 {{
    bind 127.0.0.1 ::1
    errors
    ready 127.0.0.1:0
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    prometheus 127.0.0.1:0
    forward . {}
    cache 30
}}
",
            up.ip
        ),
    )
    .unwrap();
    let server = app::start(ServeOptions {
        corefile: Some(corefile),
        manifests: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/demo-cluster.yaml"),
        ),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    let v4 = *server.dns_addrs.iter().find(|a| a.is_ipv4()).unwrap();
    let v6 = *server.dns_addrs.iter().find(|a| a.is_ipv6()).unwrap();
    let port = v4.port();

    for _ in 0..3 {
        ask(
            v4,
            Transport::Udp,
            "nginx.demo.svc.cluster.local",
            RecordType::A,
        )
        .await;
    }
    for _ in 0..2 {
        ask(
            v4,
            Transport::Udp,
            "missing.demo.svc.cluster.local",
            RecordType::A,
        )
        .await;
    }
    ask(v4, Transport::Udp, "example.com", RecordType::A).await; // forward
    ask(v4, Transport::Udp, "example.com", RecordType::A).await; // cache hit
    ask(
        v4,
        Transport::Tcp,
        "nginx.demo.svc.cluster.local",
        RecordType::AAAA,
    )
    .await; // NODATA
    ask(
        v6,
        Transport::Udp,
        "nginx.demo.svc.cluster.local",
        RecordType::A,
    )
    .await;
    ask(
        v4,
        Transport::Udp,
        "web.demo.svc.cluster.local",
        RecordType::MX,
    )
    .await; // type "MX"
    ask(
        v4,
        Transport::Udp,
        "nginx.demo.svc.cluster.local",
        RecordType::NULL,
    )
    .await; // "other"

    let (code, text) = http_get(server.http_addr("prometheus").unwrap(), "/metrics").await;
    assert_eq!(code, 200);
    let s = samples(&text);
    let s4 = format!("dns://127.0.0.1:{port}");
    let s6 = format!("dns://[::1]:{port}");
    let get = |name: &str, labels: &[(&str, &str)]| {
        let k = key(name, labels);
        *s.get(&k)
            .unwrap_or_else(|| panic!("missing {k} in\n{text}"))
    };
    let req = |server: &str, proto: &str, family: &str, t: &str| {
        get(
            "coredns_dns_requests_total",
            &[
                ("server", server),
                ("zone", "."),
                ("view", ""),
                ("proto", proto),
                ("family", family),
                ("type", t),
            ],
        )
    };
    assert_eq!(req(&s4, "udp", "1", "A"), 7.0);
    assert_eq!(req(&s4, "tcp", "1", "AAAA"), 1.0);
    assert_eq!(req(&s4, "udp", "1", "MX"), 1.0);
    assert_eq!(req(&s4, "udp", "1", "other"), 1.0);
    assert_eq!(req(&s6, "udp", "2", "A"), 1.0);
    let resp = |server: &str, rcode: &str, plugin: &str| {
        get(
            "coredns_dns_responses_total",
            &[
                ("server", server),
                ("zone", "."),
                ("view", ""),
                ("rcode", rcode),
                ("plugin", plugin),
            ],
        )
    };
    // nginx A x3, AAAA NODATA, MX NODATA on web, NULL NODATA on nginx.
    assert_eq!(resp(&s4, "NOERROR", "kubernetes"), 6.0);
    assert_eq!(resp(&s4, "NXDOMAIN", "kubernetes"), 2.0);
    assert_eq!(resp(&s4, "NOERROR", "forward"), 1.0);
    assert_eq!(resp(&s4, "NOERROR", "cache"), 1.0);
    assert_eq!(resp(&s6, "NOERROR", "kubernetes"), 1.0);
    let duration_count = get(
        "coredns_dns_request_duration_seconds_count",
        &[("server", &s4), ("zone", "."), ("view", "")],
    );
    assert_eq!(duration_count, 10.0);
    assert_eq!(
        get(
            "coredns_dns_request_duration_seconds_bucket",
            &[("server", &s4), ("zone", "."), ("view", ""), ("le", "+Inf")]
        ),
        10.0
    );
    assert_eq!(
        get(
            "coredns_dns_response_size_bytes_count",
            &[
                ("server", &s4),
                ("zone", "."),
                ("view", ""),
                ("proto", "tcp")
            ]
        ),
        1.0
    );
    // The cache: one success hit for the external name; cluster answers never come from it.
    let zones = [("server", s4.as_str()), ("zones", "."), ("view", "")];
    assert_eq!(
        get(
            "coredns_cache_hits_total",
            &[zones[0], zones[1], zones[2], ("type", "success")]
        ),
        1.0
    );
    let requests = get("coredns_cache_requests_total", &zones);
    let misses = get("coredns_cache_misses_total", &zones);
    let denial_hits = get(
        "coredns_cache_hits_total",
        &[zones[0], zones[1], zones[2], ("type", "denial")],
    );
    assert_eq!(requests, misses + 1.0 + denial_hits);
    assert_eq!(
        get(
            "coredns_cache_entries",
            &[zones[0], zones[1], zones[2], ("type", "success")]
        ),
        1.0
    );
    // Forward: one exchange with the upstream, NOERROR.
    let to = format!("{}:53", up.ip);
    assert_eq!(
        get(
            "coredns_proxy_request_duration_seconds_count",
            &[("proxy_name", "forward"), ("to", &to), ("rcode", "NOERROR")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "coredns_plugin_enabled",
            &[
                ("server", &s4),
                ("zone", "."),
                ("view", ""),
                ("name", "kubernetes")
            ]
        ),
        1.0
    );
    assert_eq!(
        get("clusterdns_endpoints", &[("compute", "micro-vm")]),
        2.0,
        "the two CoreDNS pods"
    );
    assert!(
        text.contains("coredns_build_info{goversion=\"rust"),
        "{text}"
    );
    assert!(dashboard::families(&text).contains("process_resident_memory_bytes"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_queries_only_metrics_a_running_server_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exprs = dashboard::queries(&root.join("dashboards/clusterdns.json"));
    assert!(exprs.len() >= 15);

    // A server with everything the dashboard shows: cache + forward traffic, the prober.
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(".:0 {{\n    bind 127.0.0.1\n    kubernetes cluster.local\n    prometheus 127.0.0.1:0\n    forward . {}\n    cache 30\n}}\n", up.ip),
    )
    .unwrap();
    // The prober's inputs: AWS JSON from a fixture, and a cluster whose DNS endpoints are
    // loopback addresses, so the live DNS probes never leave this machine.
    let case = root.join("tests/fixtures/aws/udp53-missing");
    let cluster = dir.path().join("cluster.yaml");
    std::fs::write(&cluster, LOOPBACK_DNS_CLUSTER).unwrap();
    let server = app::start(ServeOptions {
        corefile: Some(corefile),
        manifests: Some(cluster),
        aws: Some(case.clone()),
        probe_active: true,
        fargate_profiles: Some(case.join("profiles.json")),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    let a = server.dns_addr;
    ask(a, Transport::Udp, "example.com", RecordType::A).await;
    ask(a, Transport::Udp, "example.com", RecordType::A).await;
    let metrics = server.http_addr("prometheus").unwrap();
    // The prober runs at start, then every interval: wait for its first results.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (_, text) = http_get(metrics, "/metrics").await;
        if text.contains("clusterdns_probe_paths{")
            && text.contains("clusterdns_probe_latency_seconds{")
        {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no probe metrics:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let missing = dashboard::missing(&exprs, &text);
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics nobody exports: {missing:?}"
    );
    server.shutdown().await;
}

const LOOPBACK_DNS_CLUSTER: &str = "apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec: {clusterIP: 127.0.0.1, ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-1, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
endpoints: [{addresses: [127.0.0.1]}]
ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_exports_the_probers_verdicts() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws/udp53-missing");
    let server = app::start(ServeOptions {
        manifests: Some(case.join("cluster")),
        aws: Some(case.clone()),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    let metrics = server.http_addr("prometheus").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let (_, text) = http_get(metrics, "/metrics").await;
        if text.contains("clusterdns_probe_paths{") {
            break text;
        }
        assert!(std::time::Instant::now() < deadline, "no verdicts:\n{text}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let s = samples(&text);
    // udp53-missing: UDP 53 from micro-VM pods to the DNS pods on the node group is blocked
    // (6 rows in its expected table), TCP 53 allowed.
    assert_eq!(
        s.get(&key(
            "clusterdns_probe_paths",
            &[("path", "fargate-to-dns"), ("verdict", "blocked")]
        )),
        Some(&6.0),
        "{text}"
    );
    assert!(s
        .get(&key(
            "clusterdns_probe_paths",
            &[("path", "fargate-to-dns"), ("verdict", "allowed")]
        ))
        .is_some_and(|v| *v >= 6.0));
    server.shutdown().await;
}
