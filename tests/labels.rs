//! The `kubernetes` plugin's `labels` and `namespace_labels` selectors, over real DNS: from
//! manifest files (`--manifests`) and from the fake API server, including label changes.

mod dnsclient;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use clusterdns::app::{self, ServeOptions};
use dnsclient::{query, rcode_name, section, Transport};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use serde_json::json;
use support::apiserver::ApiServer;
use support::{namespace, service, slice};

const WAIT: Duration = Duration::from_secs(15);
const SOA: &str = "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5";

/// Two labelled namespaces, services with various labels, two headless services with
/// endpoints, and a service in a namespace that has no Namespace object.
fn manifests(db_app: &str, web_app: &str, lab_team: &str) -> String {
    let mut out = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{team: a}}}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: lab, labels: {{team: {lab_team}}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop, labels: {{app: {web_app}}}}}
spec: {{clusterIP: 10.96.0.10, ports: [{{name: http, port: 80, protocol: TCP}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: db, namespace: shop, labels: {{app: {db_app}}}}}
spec: {{clusterIP: 10.96.0.11, ports: [{{name: sql, port: 5432, protocol: TCP}}]}}
"#
    );
    out.push_str(
        r#"---
apiVersion: v1
kind: Service
metadata: {name: old, namespace: shop, labels: {app: web, hidden: "yes"}}
spec: {clusterIP: 10.96.0.12, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: lab, labels: {app: web}}
spec: {clusterIP: 10.96.0.13, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: ghost, namespace: nowhere, labels: {app: web}}
spec: {clusterIP: 10.96.0.14, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: v1
kind: Service
metadata: {name: hl, namespace: shop, labels: {app: cache}}
spec: {clusterIP: None, ports: [{name: redis, port: 6379, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hl-1, namespace: shop, labels: {kubernetes.io/service-name: hl}}
addressType: IPv4
ports: [{name: redis, port: 6379, protocol: TCP}]
endpoints: [{addresses: [10.1.0.5], hostname: h0}]
---
apiVersion: v1
kind: Service
metadata: {name: hl2, namespace: shop, labels: {app: queue}}
spec: {clusterIP: None, ports: [{name: amqp, port: 5672, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: hl2-1, namespace: shop, labels: {kubernetes.io/service-name: hl2}}
addressType: IPv4
ports: [{name: amqp, port: 5672, protocol: TCP}]
endpoints: [{addresses: [10.1.0.6], hostname: q0}]
"#,
    );
    out
}

fn corefile(options: &str) -> String {
    format!(
        ".:0 {{\n    bind 127.0.0.1\n    kubernetes cluster.local in-addr.arpa {{\n        {options}\n    }}\n}}\n"
    )
}

struct Server {
    running: app::Running,
    dir: tempfile::TempDir,
}

impl Server {
    async fn files(options: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Corefile"), corefile(options)).unwrap();
        std::fs::create_dir(dir.path().join("cluster")).unwrap();
        write_manifests(dir.path(), &manifests("db", "web", "b"));
        let running = app::start(ServeOptions {
            corefile: Some(dir.path().join("Corefile")),
            manifests: Some(dir.path().join("cluster")),
            ..ServeOptions::default()
        })
        .await
        .unwrap_or_else(|e| panic!("server starts: {e:#}"));
        Server { running, dir }
    }

    fn addr(&self) -> SocketAddr {
        self.running.dns_addr
    }

    async fn stop(self) {
        self.running.cancel_token().cancel();
        self.running.wait().await;
    }
}

/// Written aside and renamed, so the file source never reads half a file.
fn write_manifests(dir: &Path, text: &str) {
    let tmp = dir.join("cluster.yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join("cluster").join("cluster.yaml")).unwrap();
}

async fn ask(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    query(addr, Transport::Udp, name, qtype).await
}

/// rcode and answers.
async fn answer(addr: SocketAddr, name: &str, qtype: RecordType) -> (String, Vec<String>) {
    let r = ask(addr, name, qtype).await;
    (rcode_name(&r), section(&r.answers))
}

/// NXDOMAIN, authoritative, with the zone's SOA: the name does not exist.
async fn assert_nxdomain(addr: SocketAddr, name: &str, qtype: RecordType, soa: &str) {
    let r = ask(addr, name, qtype).await;
    assert_eq!(rcode_name(&r), "NXDOMAIN", "{name} {qtype}: {r:?}");
    assert!(r.metadata.authoritative, "{name} {qtype}");
    assert!(r.answers.is_empty(), "{name} {qtype}: {:?}", r.answers);
    let auth = section(&r.authorities);
    assert_eq!(auth.len(), 1, "{name} {qtype}: {auth:?}");
    assert!(auth[0].starts_with(soa), "{name} {qtype}: {auth:?}");
}

async fn assert_answers(addr: SocketAddr, name: &str, qtype: RecordType, want: &[&str]) {
    let (rcode, answers) = answer(addr, name, qtype).await;
    assert_eq!(rcode, "NOERROR", "{name} {qtype}");
    assert_eq!(answers, want, "{name} {qtype}");
}

const REVERSE_SOA: &str = "in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa.";

#[tokio::test]
async fn labels_expose_only_matching_services_and_their_endpoints() {
    let s = Server::files("labels app in (web, cache), !hidden").await;
    let a = s.addr();
    use RecordType::{A, PTR, SRV};
    // Matching services answer as usual, in every namespace.
    assert_answers(
        a,
        "web.shop.svc.cluster.local",
        A,
        &["web.shop.svc.cluster.local. 5 IN A 10.96.0.10"],
    )
    .await;
    assert_answers(
        a,
        "api.lab.svc.cluster.local",
        A,
        &["api.lab.svc.cluster.local. 5 IN A 10.96.0.13"],
    )
    .await;
    assert_answers(
        a,
        "_http._tcp.web.shop.svc.cluster.local",
        SRV,
        &["_http._tcp.web.shop.svc.cluster.local. 5 IN SRV 0 100 80 web.shop.svc.cluster.local."],
    )
    .await;
    assert_answers(
        a,
        "hl.shop.svc.cluster.local",
        A,
        &["hl.shop.svc.cluster.local. 5 IN A 10.1.0.5"],
    )
    .await;
    assert_answers(
        a,
        "h0.hl.shop.svc.cluster.local",
        A,
        &["h0.hl.shop.svc.cluster.local. 5 IN A 10.1.0.5"],
    )
    .await;
    assert_answers(
        a,
        "_redis._tcp.hl.shop.svc.cluster.local",
        SRV,
        &["_redis._tcp.hl.shop.svc.cluster.local. 5 IN SRV 0 100 6379 h0.hl.shop.svc.cluster.local."],
    )
    .await;
    assert_answers(
        a,
        "10.0.96.10.in-addr.arpa",
        PTR,
        &["10.0.96.10.in-addr.arpa. 5 IN PTR web.shop.svc.cluster.local."],
    )
    .await;
    assert_answers(
        a,
        "5.0.1.10.in-addr.arpa",
        PTR,
        &["5.0.1.10.in-addr.arpa. 5 IN PTR h0.hl.shop.svc.cluster.local."],
    )
    .await;
    // The namespace itself still exists (NODATA), whatever its services' labels.
    let (rcode, answers) = answer(a, "shop.svc.cluster.local", A).await;
    assert_eq!((rcode.as_str(), answers.len()), ("NOERROR", 0));

    // Others do not exist: app=db, hidden=yes, app=queue; their endpoints and reverse names
    // neither.
    for (name, qtype) in [
        ("db.shop.svc.cluster.local", A),
        ("_sql._tcp.db.shop.svc.cluster.local", SRV),
        ("old.shop.svc.cluster.local", A),
        ("_http._tcp.old.shop.svc.cluster.local", SRV),
        ("hl2.shop.svc.cluster.local", A),
        ("q0.hl2.shop.svc.cluster.local", A),
        ("_amqp._tcp.hl2.shop.svc.cluster.local", SRV),
        ("hl2.shop.svc.cluster.local", SRV),
    ] {
        assert_nxdomain(a, name, qtype, SOA).await;
    }
    for name in [
        "11.0.96.10.in-addr.arpa",
        "12.0.96.10.in-addr.arpa",
        "6.0.1.10.in-addr.arpa",
    ] {
        assert_nxdomain(a, name, PTR, REVERSE_SOA).await;
    }
    s.stop().await;
}

#[tokio::test]
async fn namespace_labels_expose_only_matching_namespaces() {
    let s = Server::files("namespace_labels team=a").await;
    let a = s.addr();
    use RecordType::{A, PTR, SRV};
    // Every service of a matching namespace, whatever its own labels.
    for (name, ip) in [("web", "10.96.0.10"), ("db", "10.96.0.11")] {
        assert_answers(
            a,
            &format!("{name}.shop.svc.cluster.local"),
            A,
            &[&format!("{name}.shop.svc.cluster.local. 5 IN A {ip}")],
        )
        .await;
    }
    let (rcode, answers) = answer(a, "shop.svc.cluster.local", A).await;
    assert_eq!((rcode.as_str(), answers.len()), ("NOERROR", 0));
    // team=b: the namespace and every name under it are NXDOMAIN; so is a namespace known
    // only from its services (no Namespace object, so no labels to match).
    for (name, qtype) in [
        ("lab.svc.cluster.local", A),
        ("api.lab.svc.cluster.local", A),
        ("_http._tcp.api.lab.svc.cluster.local", SRV),
        ("nowhere.svc.cluster.local", A),
        ("ghost.nowhere.svc.cluster.local", A),
    ] {
        assert_nxdomain(a, name, qtype, SOA).await;
    }
    // As in CoreDNS (reverse.go checks namespaces only for `namespaces NS...`), reverse
    // entries are not filtered by namespace_labels.
    assert_answers(
        a,
        "13.0.96.10.in-addr.arpa",
        PTR,
        &["13.0.96.10.in-addr.arpa. 5 IN PTR api.lab.svc.cluster.local."],
    )
    .await;
    s.stop().await;
}

#[tokio::test]
async fn namespaces_also_hide_reverse_entries() {
    // CoreDNS's reverse.go skips services and endpoints outside `namespaces NS...`.
    let s = Server::files("namespaces shop").await;
    let a = s.addr();
    assert_answers(
        a,
        "10.0.96.10.in-addr.arpa",
        RecordType::PTR,
        &["10.0.96.10.in-addr.arpa. 5 IN PTR web.shop.svc.cluster.local."],
    )
    .await;
    assert_nxdomain(a, "13.0.96.10.in-addr.arpa", RecordType::PTR, REVERSE_SOA).await;
    assert_nxdomain(a, "api.lab.svc.cluster.local", RecordType::A, SOA).await;
    s.stop().await;
}

/// Polls `f` until it holds, failing after [`WAIT`].
async fn until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rcode_of(addr: SocketAddr, name: &str) -> String {
    answer(addr, name, RecordType::A).await.0
}

#[tokio::test]
async fn label_changes_in_manifest_files_change_the_answers() {
    let s = Server::files("labels app=web\n        namespace_labels team=a").await;
    let a = s.addr();
    assert_eq!(rcode_of(a, "web.shop.svc.cluster.local").await, "NOERROR");
    assert_eq!(rcode_of(a, "db.shop.svc.cluster.local").await, "NXDOMAIN");
    assert_eq!(rcode_of(a, "api.lab.svc.cluster.local").await, "NXDOMAIN");
    // db gets app=web, web loses it, the lab namespace gets team=a.
    write_manifests(s.dir.path(), &manifests("web", "frontend", "a"));
    until("the relabelled services and namespace", || async {
        rcode_of(a, "db.shop.svc.cluster.local").await == "NOERROR"
            && rcode_of(a, "web.shop.svc.cluster.local").await == "NXDOMAIN"
            && rcode_of(a, "api.lab.svc.cluster.local").await == "NOERROR"
    })
    .await;
    assert_answers(
        a,
        "11.0.96.10.in-addr.arpa",
        RecordType::PTR,
        &["11.0.96.10.in-addr.arpa. 5 IN PTR db.shop.svc.cluster.local."],
    )
    .await;
    assert_nxdomain(a, "10.0.96.10.in-addr.arpa", RecordType::PTR, REVERSE_SOA).await;
    s.stop().await;
}

fn labelled(mut obj: serde_json::Value, labels: serde_json::Value) -> serde_json::Value {
    obj["metadata"]["labels"] = labels;
    obj
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_changes_from_the_api_server_change_the_answers() {
    let api = ApiServer::start().await;
    api.apply_all([
        labelled(namespace("shop"), json!({"team": "a"})),
        labelled(namespace("lab"), json!({"team": "b"})),
        labelled(service("shop", "web", "10.96.0.10"), json!({"app": "web"})),
        labelled(service("shop", "db", "10.96.0.11"), json!({"app": "db"})),
        labelled(service("lab", "api", "10.96.0.13"), json!({"app": "web"})),
        slice("shop", "db-1", "db", &["10.1.0.7"]),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Corefile");
    std::fs::write(
        &path,
        corefile("labels app=web\n        namespace_labels team=a"),
    )
    .unwrap();
    let running = app::start(ServeOptions {
        corefile: Some(path),
        kubeconfig: Some(api.kubeconfig_path()),
        ..ServeOptions::default()
    })
    .await
    .expect("serve --kubeconfig starts");
    let a = running.dns_addr;
    // Until every kind is listed, would-be NXDOMAIN answers are SERVFAIL.
    until("the initial sync", || async {
        rcode_of(a, "web.shop.svc.cluster.local").await == "NOERROR"
            && rcode_of(a, "db.shop.svc.cluster.local").await == "NXDOMAIN"
    })
    .await;
    assert_eq!(rcode_of(a, "api.lab.svc.cluster.local").await, "NXDOMAIN");
    assert_nxdomain(a, "7.0.1.10.in-addr.arpa", RecordType::PTR, REVERSE_SOA).await;

    // A label-only update of a Service (a watch MODIFIED event) brings it in...
    api.apply(labelled(
        service("shop", "db", "10.96.0.11"),
        json!({"app": "web", "tier": "data"}),
    ));
    until("db to appear", || async {
        rcode_of(a, "db.shop.svc.cluster.local").await == "NOERROR"
    })
    .await;
    assert_answers(
        a,
        "7.0.1.10.in-addr.arpa",
        RecordType::PTR,
        &["7.0.1.10.in-addr.arpa. 5 IN PTR 10-1-0-7.db.shop.svc.cluster.local."],
    )
    .await;
    // ... or takes it out.
    api.apply(labelled(
        service("shop", "web", "10.96.0.10"),
        json!({"app": "old"}),
    ));
    until("web to disappear", || async {
        rcode_of(a, "web.shop.svc.cluster.local").await == "NXDOMAIN"
    })
    .await;
    // A Namespace's labels likewise.
    api.apply(labelled(namespace("lab"), json!({"team": "a"})));
    until("the lab namespace to appear", || async {
        rcode_of(a, "api.lab.svc.cluster.local").await == "NOERROR"
    })
    .await;
    api.apply(labelled(namespace("shop"), json!({})));
    until("the shop namespace to disappear", || async {
        rcode_of(a, "db.shop.svc.cluster.local").await == "NXDOMAIN"
    })
    .await;
    running.cancel_token().cancel();
    running.wait().await;
}
