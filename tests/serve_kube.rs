//! `clusterdns serve --kubeconfig FILE` against the test API server: answers track the API,
//! readiness says what it waits for, outages keep answers and show as staleness.

mod dnsclient;
mod support;

use std::time::Duration;

use clusterdns::app::{self, ServeOptions};
use dnsclient::{http_get, query, rcode_name, section, Transport};
use hickory_proto::rr::RecordType;
use support::apiserver::{ApiServer, Res};
use support::{namespace, node, pod, service, slice};

const WAIT: Duration = Duration::from_secs(15);

async fn answers(addr: std::net::SocketAddr, name: &str) -> (String, Vec<String>) {
    let r = query(addr, Transport::Udp, name, RecordType::A).await;
    (rcode_name(&r), section(&r.answers))
}

/// Polls an async check with a deadline.
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + WAIT;
    while !f().await {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_follows_the_api_server() {
    let api = ApiServer::start().await;
    api.apply_all([
        namespace("demo"),
        service("demo", "nginx", "10.100.12.34"),
        slice("demo", "nginx-1", "nginx", &["10.0.1.5"]),
    ]);
    let server = app::start(ServeOptions {
        kubeconfig: Some(api.kubeconfig_path()),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeOptions::default()
    })
    .await
    .expect("serve --kubeconfig starts");
    let dns = server.dns_addr;
    let ready = server.http_addr("ready").expect("ready endpoint");
    let metrics = server.http_addr("prometheus").expect("metrics endpoint");

    until("the initial sync to answer", || async {
        answers(dns, "nginx.demo.svc.cluster.local").await.1
            == vec!["nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34"]
    })
    .await;
    until("/ready to say 200", || async {
        http_get(ready, "/ready").await.0 == 200
    })
    .await;

    // A new service answers within moments of the watch event; a deleted one disappears.
    api.apply(service("demo", "added", "10.100.99.1"));
    until("the created service", || async {
        answers(dns, "added.demo.svc.cluster.local").await.0 == "NOERROR"
    })
    .await;
    api.delete(Res::Services, "demo", "added");
    until("the deleted service to be NXDOMAIN", || async {
        answers(dns, "added.demo.svc.cluster.local").await.0 == "NXDOMAIN"
    })
    .await;
    // Endpoint changes reach endpoint names.
    api.apply(slice("demo", "nginx-1", "nginx", &["10.0.1.6"]));
    until("the new endpoint", || async {
        answers(dns, "10-0-1-6.nginx.demo.svc.cluster.local")
            .await
            .0
            == "NOERROR"
    })
    .await;

    let (code, body) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("coredns_kubernetes_dns_programming_duration_seconds_count{service_kind=\"cluster_ip\"}"),
        "{body}"
    );
    assert!(body.contains("clusterdns_source_synced 1"), "{body}");

    // The API server goes away: answers keep coming, staleness shows.
    api.stop().await;
    until("staleness in the metrics", || async {
        let (_, body) = http_get(metrics, "/metrics").await;
        body.lines()
            .find(|l| l.starts_with("clusterdns_source_stale_seconds "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    })
    .await;
    assert_eq!(
        answers(dns, "nginx.demo.svc.cluster.local").await.1,
        vec!["nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34"],
        "the last good view keeps serving"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_over_the_api_on_debug_placement_and_the_cli_path() {
    let api = ApiServer::start().await;
    let mut fargate_node = node("fargate-ip-10-0-9-9.eu-west-1.compute.internal");
    fargate_node["metadata"]["labels"]["eks.amazonaws.com/compute-type"] = "fargate".into();
    let mut busybox = pod("default", "busybox", "10.0.9.9");
    busybox["spec"]["nodeName"] = "fargate-ip-10-0-9-9.eu-west-1.compute.internal".into();
    api.apply_all([
        namespace("default"),
        fargate_node,
        busybox,
        node("node-1"),
        pod("demo", "nginx", "10.0.1.5"),
    ]);
    let profiles = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/examples/fargate-profiles");
    let server = app::start(ServeOptions {
        kubeconfig: Some(api.kubeconfig_path()),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        fargate_profiles: Some(profiles),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    let ready = server.http_addr("ready").unwrap();
    until("/ready", || async {
        http_get(ready, "/ready").await.0 == 200
    })
    .await;
    let (code, body) = http_get(ready, "/debug/placement").await;
    assert_eq!(code, 200);
    let rows: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let busybox = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "busybox")
        .unwrap_or_else(|| panic!("{body}"));
    assert_eq!(busybox["compute"], "micro-vm", "{body}");
    assert_eq!(busybox["profile"], "fp-default", "{body}");
    assert_eq!(busybox["expectedSize"], "0.25vCPU 0.5GB", "{body}");
    server.shutdown().await;

    // `clusterdns placement --kubeconfig` reads the same through one complete list.
    let objects = app::objects_from_api(Some(&api.kubeconfig_path()), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(objects.pods.len(), 2);
    assert_eq!(objects.nodes.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_names_a_forbidden_resource_and_nxdomain_is_servfail_until_synced() {
    let api = ApiServer::start().await;
    api.apply_all([namespace("demo"), service("demo", "nginx", "10.100.12.34")]);
    api.forbid(Res::EndpointSlices, true);
    let server = app::start(ServeOptions {
        kubeconfig: Some(api.kubeconfig_path()),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeOptions::default()
    })
    .await
    .unwrap();
    let ready = server.http_addr("ready").unwrap();
    until("/ready to name the forbidden resource", || async {
        let (code, body) = http_get(ready, "/ready").await;
        code == 503 && body.contains("endpointslices") && body.contains("403")
    })
    .await;
    // Before the first complete sync (bounded by the 5 s startup timeout) a missing name is
    // SERVFAIL, not NXDOMAIN. The timeout may already have passed on a slow machine, in which
    // case NXDOMAIN is right: accept either, but never NOERROR.
    let (rcode, _) = answers(server.dns_addr, "missing.demo.svc.cluster.local").await;
    assert!(rcode == "SERVFAIL" || rcode == "NXDOMAIN", "{rcode}");
    api.forbid(Res::EndpointSlices, false);
    until("/ready to turn 200 once allowed", || async {
        http_get(ready, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(
        answers(server.dns_addr, "missing.demo.svc.cluster.local")
            .await
            .0,
        "NXDOMAIN"
    );
    server.shutdown().await;
}
