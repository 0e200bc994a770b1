//! Replays the fuzz corpora (fuzz/corpus/TARGET) and the regression inputs of fixed crashes
//! (fuzz/regressions/TARGET) through the same harness the cargo-fuzz targets run
//! (fuzz/src/harness.rs), on stable: every input the fuzzer kept must still pass its checks.

#[allow(dead_code)]
#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::path::Path;

/// Runs `target` over every file of the target's corpus and regression directories; at least
/// `min` inputs must exist, so an emptied corpus cannot pass silently.
fn replay(target: &str, run: fn(&[u8]), min: usize) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in ["corpus", "regressions"] {
        let dir = root.join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("corpus file reads");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", file.display());
            count += 1;
        }
    }
    assert!(
        count >= min,
        "{target}: {count} inputs, expected at least {min}"
    );
}

#[test]
fn dns_udp_corpus() {
    replay("dns_udp", harness::dns_udp, 10);
}

#[test]
fn dns_tcp_corpus() {
    replay("dns_tcp", harness::dns_tcp, 10);
}

#[test]
fn corefile_corpus() {
    replay("corefile", harness::corefile, 10);
}

#[test]
fn manifests_corpus() {
    replay("manifests", harness::manifests, 10);
}

#[test]
fn aws_corpus() {
    replay("aws", harness::aws, 10);
}

#[test]
fn webhook_corpus() {
    replay("webhook", harness::webhook, 10);
}

/// The harness is not vacuous: its server answers cluster names from the demo cluster and
/// forwarded names through its local upstream, and its answers pass the checks.
#[test]
fn harness_serves_the_demo_cluster_and_forwards() {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let ask = |name: &str| {
        let mut q = Message::new(7, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        let mut input = vec![1u8]; // from 127.0.0.1 over UDP
        input.extend(q.to_vec().unwrap());
        harness::dns_udp(&input);
        let reply = harness::dns_answer(&input).expect("a reply");
        let reply = Message::from_vec(&reply).expect("reply parses");
        reply
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::A(a) => a.0.to_string(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(ask("nginx.demo.svc.cluster.local."), ["10.100.12.34"]);
    assert_eq!(ask("nginx.demo.svc.other.local."), ["10.100.12.34"]);
    assert_eq!(ask("www.example.com."), ["192.0.2.53"]);
    assert_eq!(ask("12.example.org."), ["10.0.0.12"]);
}

/// The webhook harness is not vacuous: a Deployment's pod on a Fargate profile gets the
/// sidecar (first init container, or last container before 1.29), one elsewhere is marked
/// skipped, and both answers pass the harness's checks.
#[test]
fn webhook_harness_injects_and_skips() {
    use serde_json::json;
    let body = |namespace: &str| {
        serde_json::to_vec(&json!({
            "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
            "request": {
                "uid": "8e2b", "operation": "CREATE", "namespace": namespace,
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {},
                "object": {"metadata": {"generateName": "web-"},
                           "spec": {"containers": [{"name": "web", "image": "nginx"}]}},
            },
        }))
        .unwrap()
    };
    let [native, container] = harness::webhook_contexts();
    let pod = harness::webhook_review(&body("default"), native).expect("a 200");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "clusterdns");
    assert_eq!(pod["spec"]["dnsPolicy"], "None");
    let pod = harness::webhook_review(&body("default"), container).expect("a 200");
    assert_eq!(pod["spec"]["containers"][1]["name"], "clusterdns");
    let pod = harness::webhook_review(&body("elsewhere"), native).expect("a 200");
    assert_eq!(
        pod["metadata"]["annotations"]["clusterdns.io/status"],
        "skipped"
    );
    assert!(pod["spec"].get("initContainers").is_none());
    harness::webhook(&body("default"));
    assert!(harness::webhook_review(b"{", native).is_none(), "a 400");
}
