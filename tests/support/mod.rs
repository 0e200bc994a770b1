//! Shared test support: the fake API server, object builders, polling with a deadline, the
//! Kubernetes source against the fake server, log capture, golden rows, the dashboard check.
#![allow(dead_code)] // each test file uses a different part

pub mod apiserver;
pub mod dashboard;
pub mod golden;
pub mod kube_source;
pub mod logs;
pub mod pki;
pub mod process;

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Polls `check` every few milliseconds until it holds; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// A ClusterIP service with one named TCP port 80.
pub fn service(ns: &str, name: &str, cluster_ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
        },
    })
}

pub fn headless(ns: &str, name: &str, with_selector: bool) -> Value {
    let mut spec = json!({
        "clusterIP": "None", "clusterIPs": ["None"],
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    });
    if with_selector {
        spec["selector"] = json!({"app": name});
    }
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// An EndpointSlice of `service` with one ready endpoint per address.
pub fn slice(ns: &str, name: &str, service: &str, addresses: &[&str]) -> Value {
    let endpoints: Vec<Value> = addresses
        .iter()
        .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": name, "namespace": ns,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 80, "protocol": "TCP"}],
    })
}

pub fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "nginx"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

pub fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {}}})
}
