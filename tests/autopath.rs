//! `autopath @kubernetes` run for real: queries sent from a loopback address that is a pod
//! IP in the manifests (127.0.0.2 in `default`), and from one that is not (127.0.0.1).

mod dnsclient;
mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clusterdns::app::{self, ServeOptions};
use dnsclient::{query_message, rcode_name, section, upstream};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

/// The demo cluster plus a pod whose IP is a loopback address the test can send from.
const LOOPBACK_POD: &str = r#"
---
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: default
  uid: uid-default-client
spec:
  containers:
  - name: client
    image: busybox
  nodeName: ip-192-168-40-11.eu-west-1.compute.internal
status:
  phase: Running
  podIP: 127.0.0.2
  podIPs:
  - ip: 127.0.0.2
"#;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/demo-cluster.yaml")
}

async fn start(dir: &Path, corefile: &str) -> anyhow::Result<app::Running> {
    start_with(dir, corefile, LOOPBACK_POD).await
}

async fn start_with(dir: &Path, corefile: &str, pods: &str) -> anyhow::Result<app::Running> {
    let manifests = dir.join("cluster.yaml");
    let mut text = std::fs::read_to_string(demo()).unwrap();
    text.push_str(pods);
    std::fs::write(&manifests, text).unwrap();
    let path = dir.join("Corefile");
    std::fs::write(&path, corefile).unwrap();
    app::start(ServeOptions {
        corefile: Some(path),
        manifests: Some(manifests),
        ..ServeOptions::default()
    })
    .await
}

async fn ask_from(from: IpAddr, server: SocketAddr, name: &str) -> Message {
    let sock = tokio::net::UdpSocket::bind((from, 0)).await.unwrap();
    let msg = query_message(name, RecordType::A, None);
    sock.send_to(&msg.to_vec().unwrap(), server).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("no answer for {name} from {from}"))
        .unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

fn success_count(running: &app::Running) -> u64 {
    running
        .metrics
        .render()
        .lines()
        .find(|l| l.starts_with("coredns_autopath_success_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn walks_the_search_path_for_pods_only() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let corefile = format!(
        ".:0 {{\n    bind 127.0.0.1\n    autopath @kubernetes\n    kubernetes cluster.local {{\n        pods verified\n    }}\n    cache 30\n    forward . {}\n}}\n",
        up.ip
    );
    let s = start(dir.path(), &corefile)
        .await
        .unwrap_or_else(|e| panic!("server starts: {e:#}\n{corefile}"));
    let dns = s.dns_addr;
    let pod: IpAddr = "127.0.0.2".parse().unwrap();
    let other: IpAddr = "127.0.0.1".parse().unwrap();

    // A service of another namespace, found at the second search domain.
    let r = ask_from(pod, dns, "nginx.demo.default.svc.cluster.local").await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert_eq!(
        section(&r.answers),
        vec![
            "nginx.demo.default.svc.cluster.local. 5 IN CNAME nginx.demo.svc.cluster.local.",
            "nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34",
        ]
    );
    assert_eq!(
        r.queries[0].name().to_ascii(),
        "nginx.demo.default.svc.cluster.local."
    );

    // An external name: every cluster candidate is NXDOMAIN, the bare name goes upstream.
    let r = ask_from(pod, dns, "example.com.default.svc.cluster.local").await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert_eq!(
        section(&r.answers),
        vec![
            "example.com.default.svc.cluster.local. 30 IN CNAME example.com.",
            "example.com. 30 IN A 192.0.2.1",
        ]
    );
    assert_eq!(success_count(&s), 2);

    // NODATA wins too (the service has no AAAA): NOERROR, empty, as CoreDNS answers it.
    let sock = tokio::net::UdpSocket::bind((pod, 0)).await.unwrap();
    let msg = query_message(
        "nginx.demo.default.svc.cluster.local",
        RecordType::AAAA,
        None,
    );
    sock.send_to(&msg.to_vec().unwrap(), dns).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(Duration::from_secs(5), sock.recv(&mut buf))
        .await
        .expect("an AAAA answer")
        .unwrap();
    let r = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(rcode_name(&r), "NOERROR");
    assert!(r.answers.is_empty());
    assert_eq!(success_count(&s), 3);

    // Not a pod: the usual answer for the name as asked.
    for name in [
        "nginx.demo.default.svc.cluster.local",
        "example.com.default.svc.cluster.local",
    ] {
        let r = ask_from(other, dns, name).await;
        assert_eq!(rcode_name(&r), "NXDOMAIN", "{name} from a non-pod");
        assert!(r.answers.is_empty());
    }

    // Resolves nowhere: NXDOMAIN for the name as asked, as without autopath.
    let r = ask_from(pod, dns, "nope.default.svc.cluster.local").await;
    assert_eq!(rcode_name(&r), "NXDOMAIN");
    assert!(r.answers.is_empty());
    assert_eq!(
        r.queries[0].name().to_ascii(),
        "nope.default.svc.cluster.local."
    );

    // Not under the pod's first search domain: passes through unchanged.
    let r = ask_from(pod, dns, "nginx.demo.svc.cluster.local").await;
    assert_eq!(
        section(&r.answers),
        vec!["nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34"]
    );

    // The non-pod answers were not replayed to the pod (nor the other way round).
    let r = ask_from(pod, dns, "nginx.demo.default.svc.cluster.local").await;
    assert_eq!(section(&r.answers).len(), 2, "CNAME + A again for the pod");
    let r = ask_from(other, dns, "nginx.demo.default.svc.cluster.local").await;
    assert_eq!(rcode_name(&r), "NXDOMAIN");
    assert_eq!(success_count(&s), 4);
    s.shutdown().await;
}

#[tokio::test]
async fn needs_pods_verified() {
    let dir = tempfile::tempdir().unwrap();
    let corefile = ".:0 {\n    bind 127.0.0.1\n    autopath @kubernetes\n    kubernetes cluster.local {\n        pods insecure\n    }\n}\n";
    let err = start(dir.path(), corefile).await.err().expect("refused");
    assert!(format!("{err:#}").contains("pods verified"), "{err:#}");
}

/// `autopath RESOLV-CONF`: the search path is the file's, the same for every client (here
/// 127.0.0.1, which is no pod), and needs no `pods verified`.
#[tokio::test]
async fn walks_the_search_path_of_a_resolv_conf() {
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    // The last search/domain line wins, as in CoreDNS (miekg/dns).
    std::fs::write(
        &resolv,
        "domain ignored.example\nsearch Default.svc.cluster.local svc.cluster.local com\nnameserver 192.0.2.53\noptions ndots:5\n",
    )
    .unwrap();
    let corefile = format!(
        ".:0 {{\n    bind 127.0.0.1\n    autopath {}\n    kubernetes cluster.local\n    forward . {}\n}}\n",
        resolv.display(),
        up.ip
    );
    let s = start(dir.path(), &corefile)
        .await
        .unwrap_or_else(|e| panic!("server starts: {e:#}\n{corefile}"));
    let dns = s.dns_addr;
    let client: IpAddr = "127.0.0.1".parse().unwrap();

    // Found at the second search domain.
    let r = ask_from(client, dns, "nginx.demo.default.svc.cluster.local").await;
    assert_eq!(
        section(&r.answers),
        vec![
            "nginx.demo.default.svc.cluster.local. 5 IN CNAME nginx.demo.svc.cluster.local.",
            "nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34",
        ]
    );
    // Found at the third, a domain outside the cluster, through forward.
    let r = ask_from(client, dns, "example.default.svc.cluster.local").await;
    assert_eq!(
        section(&r.answers),
        vec![
            "example.default.svc.cluster.local. 300 IN CNAME example.com.",
            "example.com. 300 IN A 192.0.2.1",
        ]
    );
    assert_eq!(success_count(&s), 2);
    // Found nowhere: NXDOMAIN for the name as asked.
    let r = ask_from(client, dns, "nope.default.svc.cluster.local").await;
    assert_eq!(rcode_name(&r), "NXDOMAIN");
    assert!(r.answers.is_empty());
    // Not under the first search domain: untouched.
    let r = ask_from(client, dns, "example.com").await;
    assert_eq!(section(&r.answers), vec!["example.com. 300 IN A 192.0.2.1"]);
    assert_eq!(success_count(&s), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn unreadable_or_searchless_resolv_conf_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let corefile = |path: &Path| {
        format!(
            ".:0 {{\n    bind 127.0.0.1\n    autopath {}\n}}\n",
            path.display()
        )
    };
    let missing = dir.path().join("missing.conf");
    let err = format!(
        "{:#}",
        start(dir.path(), &corefile(&missing))
            .await
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("autopath: cannot read") && err.contains("missing.conf"),
        "{err}"
    );

    let bare = dir.path().join("bare.conf");
    std::fs::write(&bare, "nameserver 192.0.2.53\n").unwrap();
    let err = format!(
        "{:#}",
        start(dir.path(), &corefile(&bare))
            .await
            .err()
            .expect("refused")
    );
    assert!(
        err.contains("bare.conf: no 'search' or 'domain' line"),
        "{err}"
    );
}

/// `kubernetes { labels SELECTOR }` filters Pods as well as Services (CoreDNS lists both with
/// it): a pod whose labels do not match is neither a verified pod name nor an autopath client.
#[tokio::test]
async fn the_labels_selector_applies_to_pods() {
    let labelled = LOOPBACK_POD.to_string()
        + &LOOPBACK_POD
            .replace("name: client", "name: labelled\n  labels:\n    app: nginx")
            .replace("uid-default-client", "uid-default-labelled")
            .replace("127.0.0.2", "127.0.0.3");
    let dir = tempfile::tempdir().unwrap();
    let corefile = ".:0 {\n    bind 127.0.0.1\n    autopath @kubernetes\n    kubernetes cluster.local {\n        pods verified\n        labels app=nginx\n    }\n}\n";
    let s = start_with(dir.path(), corefile, &labelled)
        .await
        .unwrap_or_else(|e| panic!("server starts: {e:#}\n{corefile}"));
    let dns = s.dns_addr;
    let plain: IpAddr = "127.0.0.2".parse().unwrap();
    let matching: IpAddr = "127.0.0.3".parse().unwrap();
    let other: IpAddr = "127.0.0.1".parse().unwrap();

    let r = ask_from(other, dns, "127-0-0-3.default.pod.cluster.local").await;
    assert_eq!(
        section(&r.answers),
        vec!["127-0-0-3.default.pod.cluster.local. 5 IN A 127.0.0.3"]
    );
    let r = ask_from(other, dns, "127-0-0-2.default.pod.cluster.local").await;
    assert_eq!(rcode_name(&r), "NXDOMAIN", "{:?}", section(&r.answers));

    let r = ask_from(matching, dns, "nginx.demo.default.svc.cluster.local").await;
    assert_eq!(
        section(&r.answers),
        vec![
            "nginx.demo.default.svc.cluster.local. 5 IN CNAME nginx.demo.svc.cluster.local.",
            "nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34",
        ]
    );
    let r = ask_from(plain, dns, "nginx.demo.default.svc.cluster.local").await;
    assert_eq!(rcode_name(&r), "NXDOMAIN", "{:?}", section(&r.answers));
    assert!(r.answers.is_empty());
    s.shutdown().await;
}
