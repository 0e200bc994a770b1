//! Zone-aware answers (issue 14), end to end: golden rows over a cluster spread across three
//! zones, asked by clients in each zone (the test binds its sockets to loopback addresses that
//! the fixture gives to pods), the response cache keyed by client zone, the metrics, the
//! Corefile error, and the API source picking up zone labels and hints without a restart.

mod dnsclient;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clusterdns::app::{self, ServeOptions};
use dnsclient::{exchange_from, query_message, rcode_name, section, Transport};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use serde::Deserialize;
use serde_json::json;
use support::apiserver::ApiServer;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    servers: HashMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    rule: String,
    server: String,
    client: String,
    name: String,
    #[serde(rename = "type", default = "default_type")]
    qtype: String,
    rcode: String,
    #[serde(default)]
    answer: Vec<String>,
    authority: Option<Vec<String>>,
    additional: Option<Vec<String>>,
    #[serde(default)]
    unordered: bool,
    first_group: Option<usize>,
}

fn default_type() -> String {
    "A".into()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/zonal")
        .join(name)
}

fn norm(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

struct Server {
    running: app::Running,
    _dir: tempfile::TempDir,
}

/// A server on 127.0.0.1 port 0 with `block` as the body of its one server block.
async fn serve(block: &str, manifests: Option<PathBuf>, kubeconfig: Option<PathBuf>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Corefile");
    let indented: String = block.lines().map(|l| format!("    {l}\n")).collect();
    let text = format!(".:0 {{\n    bind 127.0.0.1\n    prometheus 127.0.0.1:0\n{indented}}}\n");
    std::fs::write(&path, &text).unwrap();
    let running = app::start(ServeOptions {
        corefile: Some(path),
        manifests,
        kubeconfig,
        ..ServeOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("server starts: {e:#}\n{text}"));
    Server { running, _dir: dir }
}

async fn ask_from(
    server: SocketAddr,
    client: &str,
    transport: Transport,
    name: &str,
    qtype: RecordType,
) -> Message {
    let bind: SocketAddr = format!("{client}:0").parse().expect("client address");
    exchange_from(
        server,
        transport,
        query_message(name, qtype, Some(1232)),
        Some(bind),
    )
    .await
}

fn check(case: &Case, resp: &Message) -> Vec<String> {
    let mut problems = Vec::new();
    let rcode = rcode_name(resp);
    if rcode != case.rcode.to_uppercase() {
        problems.push(format!("rcode {rcode}, want {}", case.rcode));
    }
    let got = section(&resp.answers);
    let want = norm(&case.answer);
    let same = match case.first_group {
        Some(k) if k <= got.len() && k <= want.len() => {
            sorted(got[..k].to_vec()) == sorted(want[..k].to_vec())
                && sorted(got[k..].to_vec()) == sorted(want[k..].to_vec())
        }
        Some(_) => false,
        None if case.unordered => sorted(got.clone()) == sorted(want.clone()),
        None => got == want,
    };
    if !same {
        problems.push(format!("answer {got:#?}\n  want {want:#?}"));
    }
    if let Some(auth) = &case.authority {
        let got = section(&resp.authorities);
        if got != norm(auth) {
            problems.push(format!("authority {got:#?}\n  want {:#?}", norm(auth)));
        }
    }
    if let Some(add) = &case.additional {
        let got = section(&resp.additionals);
        if got != norm(add) {
            problems.push(format!("additional {got:#?}\n  want {:#?}", norm(add)));
        }
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_rows_from_clients_in_each_zone() {
    let text = std::fs::read_to_string(fixture("golden.yaml")).unwrap();
    let golden: Golden = serde_yaml::from_str(&text).expect("golden.yaml parses");
    let mut servers = HashMap::new();
    for (name, block) in &golden.servers {
        servers.insert(
            name.clone(),
            serve(block, Some(fixture("cluster.yaml")), None).await,
        );
    }
    let mut failures = Vec::new();
    // Twice: the second round is answered from the response cache, which must keep each
    // zone's answer apart.
    for round in 0..2 {
        for case in &golden.cases {
            let server = &servers[&case.server];
            let qtype: RecordType = case.qtype.parse().unwrap();
            for transport in [Transport::Udp, Transport::Tcp] {
                let resp = ask_from(
                    server.running.dns_addr,
                    &case.client,
                    transport,
                    &case.name,
                    qtype,
                )
                .await;
                let problems = check(case, &resp);
                if !problems.is_empty() {
                    failures.push(format!(
                        "round {round} [{}] {} {} from {} over {transport:?}:\n  {}",
                        case.rule,
                        case.name,
                        case.qtype,
                        case.client,
                        problems.join("\n  ")
                    ));
                }
            }
        }
    }
    // Every result was counted, on the server whose rows produce all three.
    let m = &servers["plain"].running.metrics;
    let counts: Vec<u64> = m.zonal_answers.iter().map(|c| c.get()).collect();
    assert!(
        counts.iter().all(|c| *c > 0),
        "zonal answers by result (in_zone, fallback, unknown_client): {counts:?}"
    );
    for (_, s) in servers {
        s.running.shutdown().await;
    }
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Clients of three zones and an unknown one, interleaved, many times: the response cache
/// answers most of them, and never one zone's answer to another zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_cache_keeps_each_zones_answer_apart() {
    let s = serve(
        "kubernetes cluster.local {\n    pods insecure\n}\nloadbalance",
        Some(fixture("cluster.yaml")),
        None,
    )
    .await;
    let want: [(&str, &[&str]); 4] = [
        ("127.0.0.11", &["10.1.0.10"]),
        ("127.0.0.12", &["10.1.0.20"]),
        ("127.0.0.13", &["10.1.0.30"]),
        ("127.0.0.15", &["10.1.0.10", "10.1.0.20", "10.1.0.30"]),
    ];
    for i in 0..200 {
        let (client, ips) = want[i % want.len()];
        let r = ask_from(
            s.running.dns_addr,
            client,
            Transport::Udp,
            "db.shop.svc.cluster.local",
            RecordType::A,
        )
        .await;
        let mut got: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
        got.sort();
        assert_eq!(got, ips, "query {i} from {client}");
    }
    s.running.shutdown().await;
}

#[tokio::test]
async fn zonal_with_noendpoints_is_a_corefile_error_at_its_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Corefile");
    std::fs::write(
        &path,
        ".:0 {\n    kubernetes cluster.local {\n        noendpoints\n        zonal\n    }\n}\n",
    )
    .unwrap();
    let err = match app::start(ServeOptions {
        corefile: Some(path.clone()),
        manifests: Some(fixture("cluster.yaml")),
        ..ServeOptions::default()
    })
    .await
    {
        Ok(_) => panic!("a Corefile with zonal and noendpoints was accepted"),
        Err(e) => format!("{e:#}"),
    };
    let at = format!("{}:4:9", path.display());
    assert!(
        err.contains(&at) && err.contains("zonal and noendpoints"),
        "error should name {at}: {err}"
    );
}

/// Polls `f` until it holds, for at most 15 s.
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn api_node(name: &str, zone: Option<&str>) -> serde_json::Value {
    let labels = match zone {
        Some(z) => json!({ "topology.kubernetes.io/zone": z }),
        None => json!({}),
    };
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}})
}

fn api_slice(hints: Option<(&str, &str)>) -> serde_json::Value {
    let ep = |ip: &str, zone: &str, hint: Option<&str>| {
        let mut e = json!({"addresses": [ip], "conditions": {"ready": true}, "zone": zone});
        if let Some(h) = hint {
            e["hints"] = json!({"forZones": [{"name": h}]});
        }
        e
    };
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "db-1", "namespace": "shop",
                     "labels": {"kubernetes.io/service-name": "db"}},
        "endpoints": [
            ep("10.1.0.10", "eu-west-1a", hints.map(|h| h.0)),
            ep("10.1.0.20", "eu-west-1b", hints.map(|h| h.1)),
        ],
        "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_source_picks_up_a_new_zone_label_and_new_hints() {
    let api = ApiServer::start().await;
    api.apply_all([
        support::namespace("shop"),
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "db", "namespace": "shop"},
               "spec": {"clusterIP": "None", "trafficDistribution": "PreferClose",
                        "ports": [{"name": "pg", "port": 5432}]}}),
        api_slice(None),
        api_node("n1", None),
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "client", "namespace": "shop"},
               "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]},
               "status": {"podIP": "127.0.0.21", "podIPs": [{"ip": "127.0.0.21"}]}}),
    ]);
    // zone_first: pod addresses are watched from the start (PreferClose alone also has them
    // watched, while such a Service exists: the test below).
    let s = serve(
        "kubernetes cluster.local {\n    zone_first\n}",
        None,
        Some(api.kubeconfig_path()),
    )
    .await;
    let dns = s.running.dns_addr;
    let ips = || async move {
        let r = ask_from(
            dns,
            "127.0.0.21",
            Transport::Udp,
            "db.shop.svc.cluster.local",
            RecordType::A,
        )
        .await;
        let mut v: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
        v.sort();
        v
    };
    until(
        "both endpoints for a client whose node has no zone",
        || async { ips().await == ["10.1.0.10", "10.1.0.20"] },
    )
    .await;
    api.apply(api_node("n1", Some("eu-west-1a")));
    until("the node's new zone label to narrow the answer", || async {
        ips().await == ["10.1.0.10"]
    })
    .await;
    // Hints now send zone a to the zone-b endpoint (and b to a).
    api.apply(api_slice(Some(("eu-west-1b", "eu-west-1a"))));
    until("the new hints to take effect", || async {
        ips().await == ["10.1.0.20"]
    })
    .await;
    s.running.shutdown().await;
}

fn api_pod(name: &str, node: &str, ip: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "shop"},
           "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}]},
           "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn api_db(prefer_close: bool) -> serde_json::Value {
    let mut spec = json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]});
    if prefer_close {
        spec["trafficDistribution"] = json!("PreferClose");
    }
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "db", "namespace": "shop"}, "spec": spec})
}

/// The sorted A answers of `db.shop` for a client at `client`.
async fn db_from(dns: SocketAddr, client: &str) -> Vec<String> {
    let r = ask_from(
        dns,
        client,
        Transport::Udp,
        "db.shop.svc.cluster.local",
        RecordType::A,
    )
    .await;
    let mut v: Vec<String> = r.answers.iter().map(|a| a.data.to_string()).collect();
    v.sort();
    v
}

/// Issue 14 item 4: with the default Corefile (`pods insecure`), the API source still
/// locates PreferClose clients by their pod: it watches pod addresses (IP -> node only) while
/// such a Service exists, picks up new pods without a restart, and watches no pods while none
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_close_is_zone_aware_through_the_api_with_the_default_corefile() {
    use support::apiserver::Res;
    let api = ApiServer::start().await;
    api.apply_all([
        support::namespace("shop"),
        api_db(true),
        api_slice(None),
        api_node("n1", Some("eu-west-1a")),
        api_node("n2", Some("eu-west-1b")),
        api_pod("client-a", "n1", "127.0.0.21"),
    ]);
    let s = serve(
        "kubernetes cluster.local {\n    pods insecure\n}",
        None,
        Some(api.kubeconfig_path()),
    )
    .await;
    let dns = s.running.dns_addr;
    until("zone a's endpoint only, for the pod in zone a", || async {
        db_from(dns, "127.0.0.21").await == ["10.1.0.10"]
    })
    .await;
    // A client that is no pod: unknown zone, every endpoint.
    assert_eq!(db_from(dns, "127.0.0.23").await, ["10.1.0.10", "10.1.0.20"]);
    // A pod created after the start arrives by the watch.
    api.apply(api_pod("client-b", "n2", "127.0.0.23"));
    until("the new pod in zone b to get zone b's endpoint", || async {
        db_from(dns, "127.0.0.23").await == ["10.1.0.20"]
    })
    .await;
    // A deleted pod's address is no one's any more.
    api.delete(Res::Pods, "shop", "client-b");
    until(
        "the deleted pod's address to be of an unknown zone",
        || async { db_from(dns, "127.0.0.23").await == ["10.1.0.10", "10.1.0.20"] },
    )
    .await;
    // The last PreferClose Service gone: no pod watch, answers as CoreDNS's.
    api.apply(api_db(false));
    until("the pod watch to stop", || async {
        api.open_watches(Res::Pods) == 0
    })
    .await;
    until("every endpoint for the zone-a client", || async {
        db_from(dns, "127.0.0.21").await == ["10.1.0.10", "10.1.0.20"]
    })
    .await;
    // And PreferClose again: the watch starts again, from a fresh list.
    api.apply(api_db(true));
    until("zone a's endpoint again", || async {
        db_from(dns, "127.0.0.21").await == ["10.1.0.10"]
    })
    .await;
    s.running.shutdown().await;
}

/// Without any Service that asks for in-zone traffic (and without `zone_first`, `pods
/// verified`, the prober), the API source lists and watches no pods at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_source_watches_no_pods_when_nothing_needs_them() {
    use support::apiserver::Res;
    let api = ApiServer::start().await;
    api.apply_all([
        support::namespace("shop"),
        api_db(false),
        api_slice(None),
        api_node("n1", Some("eu-west-1a")),
        api_pod("client-a", "n1", "127.0.0.21"),
    ]);
    let s = serve(
        "kubernetes cluster.local {\n    pods insecure\n}",
        None,
        Some(api.kubeconfig_path()),
    )
    .await;
    let dns = s.running.dns_addr;
    until("both endpoints", || async {
        db_from(dns, "127.0.0.21").await == ["10.1.0.10", "10.1.0.20"]
    })
    .await;
    assert_eq!(api.list_requests(Res::Pods), 0, "pods were listed");
    assert_eq!(api.open_watches(Res::Pods), 0, "pods are watched");
    s.running.shutdown().await;
}
