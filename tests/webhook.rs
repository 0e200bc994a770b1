//! `clusterdns webhook` as a black box: the real binary on port 0 with rcgen certificates,
//! AdmissionReview v1 bodies posted over HTTPS as an API server sends them, the returned
//! JSON Patch applied with the json-patch crate and the result read back as a k8s-openapi Pod.
//! The Kubernetes API (version, kube-dns, namespaces) is the fake API server of tests/support.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::eventually;
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_clusterdns");
const IMAGE: &str = "registry.example/clusterdns:1.0";

// ---------------------------------------------------------------------------------------------
// Certificates (rcgen) and the HTTPS client.

struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca(name: &str) -> Ca {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Ca {
        cert,
        issuer: rcgen::Issuer::new(p, key),
    }
}

/// A serving certificate for localhost signed by `ca`: (cert PEM, key PEM, cert DER).
fn leaf(ca: &Ca) -> (String, String, Vec<u8>) {
    let p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

struct Tls {
    dir: tempfile::TempDir,
    client: Arc<rustls::ClientConfig>,
    ca2: Ca,
    leaf: Vec<u8>,
}

impl Tls {
    /// A CA, a serving pair in a temp dir, and a client trusting that CA and a second one
    /// (for rotations).
    fn new() -> Tls {
        let ca1 = ca("test CA 1");
        let ca2 = ca("test CA 2");
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, der) = leaf(&ca1);
        std::fs::write(dir.path().join("tls.crt"), cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), key).unwrap();
        let client = client_trusting(&[ca1.cert.der().clone(), ca2.cert.der().clone()]);
        Tls {
            dir,
            client,
            ca2,
            leaf: der,
        }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("tls.crt")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("tls.key")
    }
}

fn client_trusting(cas: &[CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in cas {
        roots.add(c.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Full handshakes, as the API server's Go client makes them: a resumed session would
    // report the certificate of the session it resumed, not the one served now.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    /// The leaf certificate the server presented (DER).
    leaf: Vec<u8>,
}

/// One request on a new TLS connection (so each sees the certificate served at the time).
async fn request(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<Reply, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let tls = tokio_rustls::TlsConnector::from(client.clone())
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .unwrap_or_default();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Reply { status, body, leaf })
}

/// A plain HTTP GET (the --metrics endpoint answers one request per connection).
async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).to_string()
}

// ---------------------------------------------------------------------------------------------
// The webhook process.

struct Webhook {
    child: tokio::process::Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    client: Arc<rustls::ClientConfig>,
}

impl Webhook {
    async fn start(tls: &Tls, extra: &[&str]) -> Webhook {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.arg("webhook")
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(tls.cert())
            .arg("--tls-key")
            .arg(tls.key())
            .args(["--cert-reload-interval", "0.1"])
            .args(if extra.contains(&"--sidecar-image") {
                &[][..]
            } else {
                &["--sidecar-image", IMAGE][..]
            })
            .args(extra)
            // No kubeconfig but the one passed: the tests without the API must not find one.
            .env_remove("KUBECONFIG")
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", tls.dir.path())
            .env(
                "CLUSTERDNS_LOG",
                std::env::var("TEST_WEBHOOK_LOG").unwrap_or("warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn clusterdns webhook");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let want_metrics = extra.contains(&"--metrics");
        let (mut addr, mut metrics) = (None, None);
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("clusterdns: serving webhook on https://") {
                    addr = Some(a.parse().unwrap());
                }
                if let Some(a) = line.strip_prefix("clusterdns: serving metrics on http://") {
                    metrics = Some(a.parse().unwrap());
                }
                if addr.is_some() && (metrics.is_some() || !want_metrics) {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), read)
            .await
            .expect("the webhook printed its address");
        let addr = addr.expect("the webhook exited before listening");
        let wh = Webhook {
            child,
            addr,
            metrics,
            client: tls.client.clone(),
        };
        // Ready once the namespace list is in (at once without an API).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = wh.get("/readyz").await {
                if r.status == 200 {
                    break;
                }
            }
            assert!(std::time::Instant::now() < deadline, "webhook never ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        wh
    }

    async fn get(&self, path: &str) -> Result<Reply, String> {
        request(self.addr, &self.client, "GET", path, vec![]).await
    }

    async fn post(&self, body: Vec<u8>) -> Reply {
        request(self.addr, &self.client, "POST", "/mutate", body)
            .await
            .unwrap()
    }

    /// Posts a review that must be answered 200 with `allowed: true` for its uid.
    async fn review(&self, review: &Value) -> Value {
        let r = self.post(serde_json::to_vec(review).unwrap()).await;
        let text = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, 200, "{text}");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1", "{text}");
        assert_eq!(v["kind"], "AdmissionReview", "{text}");
        assert_eq!(v["response"]["uid"], review["request"]["uid"], "{text}");
        assert_eq!(v["response"]["allowed"], true, "{text}");
        v
    }

    async fn metrics_text(&self) -> String {
        let r = self.get("/metrics").await.unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// AdmissionReview bodies as the API server sends them.

fn review_of(namespace: &str, operation: &str, object: Value) -> Value {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let uid = format!(
        "705ab4f5-6393-11e8-b7cc-42010a8000{:02}",
        NEXT.fetch_add(1, Ordering::Relaxed) % 100
    );
    let gvk = json!({"group": "", "version": "v1", "kind": "Pod"});
    let gvr = json!({"group": "", "version": "v1", "resource": "pods"});
    json!({
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid,
            "kind": gvk, "resource": gvr,
            "requestKind": gvk, "requestResource": gvr,
            "name": object["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "a7ae4bfe-2c3c-4b5c-8d6e-0c1f8f3b9f10",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
            },
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    })
}

/// The pod a ReplicaSet creates for a Deployment, after the API server's defaulting:
/// `generateName` and no name, owner reference, the service-account volume, defaults.
fn deployment_pod(namespace: &str, app: &str) -> Value {
    json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {
            "generateName": format!("{app}-7c5ddbdf54-"),
            "namespace": namespace,
            "creationTimestamp": null,
            "labels": {"app": app, "pod-template-hash": "7c5ddbdf54"},
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7c5ddbdf54"),
                "uid": "6a1f9c1e-0d5b-4c47-9e2f-3b1f3f0c2a11", "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            ], "defaultMode": 420}}],
            "containers": [{
                "name": app, "image": "nginx:1.27",
                "ports": [{"containerPort": 80, "protocol": "TCP"}],
                "resources": {},
                "volumeMounts": [{"name": "kube-api-access-x7k2p", "readOnly": true,
                                  "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}],
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default",
            "serviceAccount": "default",
            "securityContext": {},
            "schedulerName": "default-scheduler",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
            "priority": 0,
            "enableServiceLinks": true,
            "preemptionPolicy": "PreemptLowerPriority",
        },
        "status": {},
    })
}

/// Applies the response's patch (base64 JSON Patch) to `object` with the json-patch crate.
fn patched(object: &Value, response: &Value) -> (Value, Pod) {
    let mut doc = object.clone();
    if let Some(b64) = response["response"]["patch"].as_str() {
        assert_eq!(response["response"]["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    } else {
        assert!(response["response"].get("patchType").is_none());
    }
    let pod: Pod = serde_json::from_value(doc.clone()).unwrap();
    (doc, pod)
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn sidecars(pod: &Pod) -> Vec<&Container> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name == "clusterdns")
        .collect()
}

fn warnings(response: &Value) -> Vec<String> {
    response["response"]["warnings"]
        .as_array()
        .map(|a| a.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

fn profiles_file(dir: &Path) -> PathBuf {
    let path = dir.join("profiles.json");
    std::fs::write(
        &path,
        json!([
            {"fargateProfile": {"fargateProfileName": "fp-default", "selectors": [
                {"namespace": "default"}, {"namespace": "kube-system"}]}},
            {"fargateProfile": {"fargateProfileName": "fp-batch", "selectors": [
                {"namespace": "batch-*", "labels": {"compute": "fargate"}}]}},
        ])
        .to_string(),
    )
    .unwrap();
    path
}

/// A fake API server with kube-dns and these namespaces (name, inject label).
async fn api(namespaces: &[(&str, bool)]) -> ApiServer {
    let api = ApiServer::start().await;
    api.apply(support::service("kube-system", "kube-dns", "10.100.0.10"));
    for (name, label) in namespaces {
        let mut ns = support::namespace(name);
        if *label {
            ns["metadata"]["labels"] = json!({"clusterdns.io/inject": "enabled"});
        }
        api.apply(ns);
    }
    api
}

// ---------------------------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn deployment_pod_on_a_fargate_profile_gets_a_native_sidecar() {
    let tls = Tls::new();
    let api = api(&[("default", false)]).await;
    let profiles = profiles_file(tls.dir.path());
    let kubeconfig = api.kubeconfig_path();
    let wh = Webhook::start(
        &tls,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--fargate-profiles",
            profiles.to_str().unwrap(),
        ],
    )
    .await;
    // The upstream and the native choice came from the API.
    let requests = api.requests();
    assert!(requests.iter().any(|r| r == "GET /version"), "{requests:?}");
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/kube-system/services/kube-dns")),
        "{requests:?}"
    );

    let object = deployment_pod("default", "web");
    let response = wh
        .review(&review_of("default", "CREATE", object.clone()))
        .await;
    assert!(
        warnings(&response).is_empty(),
        "the sidecar fits the 0.25vCPU 0.5GB micro-VM: {response}"
    );
    let (doc, pod) = patched(&object, &response);

    // Identity untouched: no name was invented, generateName kept.
    assert_eq!(pod.metadata.name, None);
    assert_eq!(
        pod.metadata.generate_name.as_deref(),
        Some("web-7c5ddbdf54-")
    );
    assert_eq!(
        doc["metadata"]["ownerReferences"],
        object["metadata"]["ownerReferences"]
    );
    assert_eq!(annotation(&pod, "clusterdns.io/status"), Some("injected"));
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("fargate-profile fp-default")
    );
    assert_eq!(
        annotation(&pod, "clusterdns.io/micro-vm-size"),
        Some("0.25vCPU 0.5GB")
    );
    assert_eq!(
        annotation(&pod, "clusterdns.io/micro-vm-size-without-sidecar"),
        None
    );

    let spec = pod.spec.as_ref().unwrap();
    // The app container is exactly as it was.
    assert_eq!(doc["spec"]["containers"], object["spec"]["containers"]);
    // The native sidecar: the first init container, restartPolicy Always.
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    let c = &init[0];
    assert_eq!(c.name, "clusterdns");
    assert_eq!(c.image.as_deref(), Some(IMAGE));
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    let args = c.args.as_ref().unwrap();
    assert_eq!(args[0], "sidecar");
    let flag = |f: &str| {
        let i = args
            .iter()
            .position(|a| a == f)
            .unwrap_or_else(|| panic!("{f} in {args:?}"));
        args[i + 1].as_str()
    };
    assert_eq!(flag("--upstream"), "10.100.0.10");
    assert_eq!(flag("--listen"), "127.0.0.1:53");
    assert_eq!(flag("--autopath"), "/etc/resolv.conf");
    assert_eq!(flag("--ready"), ":8055");
    assert_eq!(flag("--health"), ":8054");
    assert_eq!(
        flag("--probe-name"),
        "kubernetes.default.svc.cluster.local."
    );
    // The app does not start before DNS answers: a startup probe on the ready port.
    let startup = c.startup_probe.as_ref().unwrap();
    let get = startup.http_get.as_ref().unwrap();
    assert_eq!(get.path.as_deref(), Some("/ready"));
    assert_eq!(get.port, IntOrString::Int(8055));
    let live = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        (live.path.as_deref(), &live.port),
        (Some("/health"), &IntOrString::Int(8054))
    );
    // Restricted Pod Security Standard.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert!(sc.run_as_user.is_some_and(|u| u != 0));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, None);
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    // Only so that the image's file-capability binary may be exec'd: the bind itself comes
    // from the sysctl below.
    assert_eq!(
        caps.add.as_deref(),
        Some(&["NET_BIND_SERVICE".to_string()][..])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "16Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "64Mi");
    // Port 53 as non-root: the pod's namespaced safe sysctl.
    let sysctls = spec
        .security_context
        .as_ref()
        .unwrap()
        .sysctls
        .as_ref()
        .unwrap();
    assert_eq!(sysctls.len(), 1);
    assert_eq!(sysctls[0].name, "net.ipv4.ip_unprivileged_port_start");
    assert_eq!(sysctls[0].value, "53");
    // The pod's resolver points at the sidecar with the cluster search path.
    assert_eq!(spec.dns_policy.as_deref(), Some("None"));
    let dns = spec.dns_config.as_ref().unwrap();
    assert_eq!(
        dns.nameservers.as_deref(),
        Some(&["127.0.0.1".to_string()][..])
    );
    assert_eq!(
        dns.searches.as_ref().unwrap(),
        &[
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local"
        ]
    );
    let opts = dns.options.as_ref().unwrap();
    assert_eq!(opts.len(), 1);
    assert_eq!(
        (opts[0].name.as_deref(), opts[0].value.as_deref()),
        (Some("ndots"), Some("5"))
    );

    let m = wh.metrics_text().await;
    assert!(
        m.contains("clusterdns_webhook_injections_total{reason=\"fargate-profile\"} 1"),
        "{m}"
    );
}

#[tokio::test]
async fn a_bigger_micro_vm_is_a_warning_and_an_annotation() {
    let tls = Tls::new();
    let profiles = profiles_file(tls.dir.path());
    // No API: the upstream is given and the sidecar kind forced.
    let wh = Webhook::start(
        &tls,
        &[
            "--upstream",
            "172.20.0.10",
            "--native-sidecar",
            "always",
            "--fargate-profiles",
            profiles.to_str().unwrap(),
        ],
    )
    .await;
    // fp-batch: namespace batch-* (wildcard) and label compute=fargate.
    let mut object = deployment_pod("batch-nightly", "report");
    object["metadata"]["labels"]["compute"] = json!("fargate");
    object["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}});
    let response = wh
        .review(&review_of("batch-nightly", "CREATE", object.clone()))
        .await;
    let w = warnings(&response);
    assert_eq!(w.len(), 1, "{response}");
    assert!(
        w[0].contains("0.25vCPU 0.5GB") && w[0].contains("0.5vCPU 1GB"),
        "{w:?}"
    );
    let (_, pod) = patched(&object, &response);
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("fargate-profile fp-batch")
    );
    assert_eq!(
        annotation(&pod, "clusterdns.io/micro-vm-size"),
        Some("0.5vCPU 1GB")
    );
    assert_eq!(
        annotation(&pod, "clusterdns.io/micro-vm-size-without-sidecar"),
        Some("0.25vCPU 0.5GB")
    );
    let c = &pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap()[0];
    assert_eq!(c.args.as_ref().unwrap()[2], "172.20.0.10");

    // Same namespace without the label: no profile selects it.
    let mut other = deployment_pod("batch-nightly", "report");
    other["spec"]["containers"][0]["resources"] =
        json!({"requests": {"cpu": "250m", "memory": "256Mi"}});
    let response = wh
        .review(&review_of("batch-nightly", "CREATE", other.clone()))
        .await;
    let (_, pod) = patched(&other, &response);
    assert!(sidecars(&pod).is_empty());
    assert_eq!(annotation(&pod, "clusterdns.io/status"), Some("skipped"));
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("not-selected")
    );

    // Already on Fargate's scheduler, in a namespace no profile names: injected and sized;
    // the pod's own search domains and ndots are kept.
    let mut sched = deployment_pod("legacy", "worker");
    sched["spec"]["schedulerName"] = json!("fargate-scheduler");
    sched["spec"]["dnsConfig"] = json!({"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]});
    let response = wh
        .review(&review_of("legacy", "CREATE", sched.clone()))
        .await;
    let (_, pod) = patched(&sched, &response);
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("fargate-scheduler")
    );
    assert_eq!(
        annotation(&pod, "clusterdns.io/micro-vm-size"),
        Some("0.25vCPU 0.5GB")
    );
    let dns = pod.spec.as_ref().unwrap().dns_config.as_ref().unwrap();
    assert_eq!(
        dns.searches.as_ref().unwrap(),
        &[
            "legacy.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
            "corp.example"
        ]
    );
    let opts: Vec<(Option<&str>, Option<&str>)> = dns
        .options
        .as_ref()
        .unwrap()
        .iter()
        .map(|o| (o.name.as_deref(), o.value.as_deref()))
        .collect();
    assert_eq!(opts, [(Some("ndots"), Some("2")), (Some("edns0"), None)]);

    // Opt in by annotation on a node-group pod: injected, but no micro-VM to size.
    let mut opt_in = deployment_pod("demo", "api");
    opt_in["metadata"]["annotations"] = json!({"clusterdns.io/inject": "true"});
    let response = wh
        .review(&review_of("demo", "CREATE", opt_in.clone()))
        .await;
    let (_, pod) = patched(&opt_in, &response);
    assert_eq!(sidecars(&pod).len(), 1);
    assert_eq!(annotation(&pod, "clusterdns.io/reason"), Some("annotation"));
    assert_eq!(annotation(&pod, "clusterdns.io/micro-vm-size"), None);
    assert_eq!(annotation(&pod, "clusterdns.io/inject"), Some("true"));
}

#[tokio::test]
async fn pods_that_chose_their_own_dns_are_skipped_with_a_reason() {
    let tls = Tls::new();
    let profiles = profiles_file(tls.dir.path());
    let wh = Webhook::start(
        &tls,
        &[
            "--upstream",
            "10.100.0.10",
            "--fargate-profiles",
            profiles.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
            "--namespace",
            "clusterdns-system",
        ],
    )
    .await;
    type Change = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, &str, Change)> = vec![
        (
            "default",
            "opt-out",
            Box::new(|p| {
                p["metadata"]["annotations"] = json!({"clusterdns.io/inject": "false"});
            }),
        ),
        (
            "default",
            "host-network",
            Box::new(|p| {
                p["spec"]["hostNetwork"] = json!(true);
                p["spec"]["dnsPolicy"] = json!("ClusterFirstWithHostNet");
            }),
        ),
        (
            "default",
            "dns-policy",
            Box::new(|p| p["spec"]["dnsPolicy"] = json!("Default")),
        ),
        (
            "default",
            "dns-policy",
            Box::new(|p| {
                p["spec"]["dnsPolicy"] = json!("None");
                p["spec"]["dnsConfig"] = json!({"nameservers": ["1.1.1.1"]});
            }),
        ),
        (
            "kube-system",
            "cluster-dns",
            Box::new(|p| {
                p["metadata"]["labels"] =
                    json!({"k8s-app": "kube-dns", "pod-template-hash": "6f9c6c7d4"});
            }),
        ),
        ("clusterdns-system", "webhook", Box::new(|_| {})),
        (
            "default",
            "webhook",
            Box::new(|p| {
                p["metadata"]["labels"] = json!({"app.kubernetes.io/name": "clusterdns-webhook"});
            }),
        ),
    ];
    for (ns, reason, change) in &cases {
        let mut object = deployment_pod(ns, "app");
        change(&mut object);
        let response = wh.review(&review_of(ns, "CREATE", object.clone())).await;
        let (doc, pod) = patched(&object, &response);
        assert!(sidecars(&pod).is_empty(), "{reason}: {doc}");
        // Nothing but the two annotations changed.
        let mut without = doc.clone();
        let annotations = without["metadata"]["annotations"].as_object_mut().unwrap();
        assert_eq!(
            annotations.remove("clusterdns.io/status"),
            Some(json!("skipped"))
        );
        assert_eq!(
            annotations.remove("clusterdns.io/reason"),
            Some(json!(reason))
        );
        if annotations.is_empty() {
            without["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("annotations");
        }
        assert_eq!(without, object, "{reason}");
    }
    // The same counts over plain HTTP (--metrics) as on the HTTPS port.
    let m = http_get(wh.metrics.unwrap(), "/metrics").await;
    for (reason, n) in [
        ("opt-out", 1),
        ("host-network", 1),
        ("dns-policy", 2),
        ("cluster-dns", 1),
        ("webhook", 2),
        ("not-selected", 0),
    ] {
        let line = format!("clusterdns_webhook_skips_total{{reason=\"{reason}\"}} {n}");
        assert!(m.contains(&line), "{line} in\n{m}");
    }
    assert!(
        m.contains("clusterdns_webhook_admission_duration_seconds_count 7"),
        "{m}"
    );
}

#[tokio::test]
async fn an_injected_pod_is_never_injected_twice() {
    let tls = Tls::new();
    let profiles = profiles_file(tls.dir.path());
    let wh = Webhook::start(
        &tls,
        &[
            "--upstream",
            "10.100.0.10",
            "--native-sidecar",
            "always",
            "--fargate-profiles",
            profiles.to_str().unwrap(),
        ],
    )
    .await;
    let mut object = deployment_pod("default", "web");
    object["spec"]["initContainers"] =
        json!([{"name": "migrate", "image": "migrate:1", "args": ["up"]}]);
    let first = wh
        .review(&review_of("default", "CREATE", object.clone()))
        .await;
    let (once, pod) = patched(&object, &first);
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert_eq!(
        init.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["clusterdns", "migrate"],
        "the sidecar starts before the other init containers"
    );
    // Re-invoked (reinvocationPolicy: IfNeeded, after another webhook changed the pod):
    // nothing to do, not even an annotation.
    let mut again = once.clone();
    again["metadata"]["labels"]["eks.amazonaws.com/fargate-profile"] = json!("fp-default");
    let second = wh
        .review(&review_of("default", "CREATE", again.clone()))
        .await;
    assert!(second["response"].get("patch").is_none(), "{second}");
    let (_, pod) = patched(&again, &second);
    assert_eq!(sidecars(&pod).len(), 1);
    assert_eq!(
        pod.spec
            .as_ref()
            .unwrap()
            .security_context
            .as_ref()
            .unwrap()
            .sysctls
            .as_ref()
            .unwrap()
            .len(),
        1
    );

    // A sidecar written by hand (manifests/examples/sidecar-pod.yaml): recognised, and said.
    let mut by_hand = deployment_pod("default", "busybox");
    by_hand["spec"]["initContainers"] = json!([{"name": "dns-cache", "image": IMAGE, "restartPolicy": "Always",
        "args": ["sidecar", "--upstream", "172.20.0.10"]}]);
    let r = wh
        .review(&review_of("default", "CREATE", by_hand.clone()))
        .await;
    let (_, pod) = patched(&by_hand, &r);
    assert_eq!(
        pod.spec
            .as_ref()
            .unwrap()
            .init_containers
            .as_ref()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("already-injected")
    );

    // First pass: not selected; then EKS's webhook sets fargate-scheduler and we are invoked
    // again: now injected, and the annotation says so.
    let object = deployment_pod("elsewhere", "job");
    let first = wh
        .review(&review_of("elsewhere", "CREATE", object.clone()))
        .await;
    let (mut doc, pod) = patched(&object, &first);
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("not-selected")
    );
    doc["spec"]["schedulerName"] = json!("fargate-scheduler");
    let second = wh
        .review(&review_of("elsewhere", "CREATE", doc.clone()))
        .await;
    let (_, pod) = patched(&doc, &second);
    assert_eq!(sidecars(&pod).len(), 1);
    assert_eq!(annotation(&pod, "clusterdns.io/status"), Some("injected"));
    assert_eq!(
        annotation(&pod, "clusterdns.io/reason"),
        Some("fargate-scheduler")
    );
}

#[tokio::test]
async fn api_servers_before_1_29_get_an_ordinary_container() {
    let tls = Tls::new();
    let api = api(&[]).await;
    api.set_version("1", "28+", "v1.28.15-eks-7f9249a");
    let kubeconfig = api.kubeconfig_path();
    let kc = kubeconfig.to_str().unwrap();
    let object = deployment_pod("demo", "api");
    let mut object_in = object.clone();
    object_in["metadata"]["annotations"] = json!({"clusterdns.io/inject": "true"});

    let wh = Webhook::start(&tls, &["--kubeconfig", kc]).await;
    let r = wh
        .review(&review_of("demo", "CREATE", object_in.clone()))
        .await;
    let (_, pod) = patched(&object_in, &r);
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.init_containers, None);
    assert_eq!(
        spec.containers
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["api", "clusterdns"],
        "appended: the app stays the default container"
    );
    assert_eq!(spec.containers[1].restart_policy, None);
    assert!(spec.containers[1].startup_probe.is_some());
    drop(wh);

    // The flag overrides the version.
    let wh = Webhook::start(&tls, &["--kubeconfig", kc, "--native-sidecar", "always"]).await;
    let r = wh
        .review(&review_of("demo", "CREATE", object_in.clone()))
        .await;
    let (_, pod) = patched(&object_in, &r);
    let init = pod.spec.as_ref().unwrap().init_containers.as_ref().unwrap();
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
}

#[tokio::test]
async fn the_namespace_label_opts_in_and_is_followed() {
    let tls = Tls::new();
    let api = api(&[("team-a", true), ("team-b", false)]).await;
    // Its own pod, for --sidecar-image self.
    api.apply(json!({"kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": "clusterdns-webhook-5d8f7-x2x9q", "namespace": "clusterdns-system"},
        "spec": {"containers": [{"name": "webhook", "image": "registry.example/clusterdns:9.9", "args": ["webhook"]}]}}));
    let kubeconfig = api.kubeconfig_path();
    let wh = Webhook::start(
        &tls,
        &[
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--sidecar-image",
            "self",
            "--namespace",
            "clusterdns-system",
            "--pod-name",
            "clusterdns-webhook-5d8f7-x2x9q",
        ],
    )
    .await;
    let reason = |ns: &'static str| {
        let wh = &wh;
        async move {
            let object = deployment_pod(ns, "svc");
            let r = wh.review(&review_of(ns, "CREATE", object.clone())).await;
            let (_, pod) = patched(&object, &r);
            annotation(&pod, "clusterdns.io/reason").map(str::to_string)
        }
    };
    assert_eq!(reason("team-a").await.as_deref(), Some("namespace-label"));
    assert_eq!(reason("team-b").await.as_deref(), Some("not-selected"));
    let object = deployment_pod("team-a", "img");
    let r = wh
        .review(&review_of("team-a", "CREATE", object.clone()))
        .await;
    let (_, pod) = patched(&object, &r);
    assert_eq!(
        sidecars(&pod)[0].image.as_deref(),
        Some("registry.example/clusterdns:9.9"),
        "--sidecar-image self: the webhook's own image"
    );

    // Label team-b, unlabel team-a: the watch follows.
    let mut b = support::namespace("team-b");
    b["metadata"]["labels"] = json!({"clusterdns.io/inject": "enabled"});
    api.apply(b);
    api.apply(support::namespace("team-a"));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) = (reason("team-a").await, reason("team-b").await);
        if a.as_deref() == Some("not-selected") && b.as_deref() == Some("namespace-label") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "labels not followed: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = wh.metrics_text().await;
    assert!(m.contains("clusterdns_webhook_inject_namespaces 1"), "{m}");
}

#[tokio::test]
async fn bad_input_is_a_400_or_an_allowed_answer_never_a_crash() {
    let tls = Tls::new();
    let mut wh = Webhook::start(&tls, &["--upstream", "10.100.0.10"]).await;
    let message = |r: &Reply| -> String {
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        v["message"]
            .as_str()
            .or(v["response"]["status"]["message"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    for (body, want) in [
        (b"{\"kind\": \"AdmissionReview\", ".to_vec(), "invalid JSON"),
        (b"not json".to_vec(), "invalid JSON"),
        (serde_json::to_vec(&deployment_pod("default", "x")).unwrap(), "kind Pod"),
        (
            serde_json::to_vec(&json!({"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1",
                "request": review_of("default", "CREATE", deployment_pod("default", "x"))["request"]}))
            .unwrap(),
            "admission.k8s.io/v1",
        ),
        (vec![b' '; 5 << 20], "larger than the limit"),
    ] {
        let r = wh.post(body).await;
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
        assert!(message(&r).contains(want), "{want}: {}", message(&r));
    }
    // Another resource, another operation, a pod that does not parse: allowed, unchanged.
    let mut deployment = review_of(
        "default",
        "CREATE",
        json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": {"name": "web"}}),
    );
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["resource"] =
        json!({"group": "apps", "version": "v1", "resource": "deployments"});
    let mut update = review_of("default", "UPDATE", deployment_pod("default", "x"));
    update["request"]["oldObject"] = deployment_pod("default", "x");
    let mut broken = deployment_pod("default", "x");
    broken["spec"]["containers"] = json!("nginx");
    let broken = review_of("default", "CREATE", broken);
    let mut binding = review_of(
        "default",
        "CREATE",
        json!({"kind": "Binding", "apiVersion": "v1", "metadata": {"name": "x"}, "target": {"kind": "Node", "name": "n"}}),
    );
    binding["request"]["subResource"] = json!("binding");
    for (review, want) in [
        (deployment, "not a pod"),
        (update, "only pod creation"),
        (broken, "does not parse"),
        (binding, "not a pod"),
    ] {
        let v = wh.review(&review).await;
        assert!(v["response"].get("patch").is_none(), "{v}");
        let msg = v["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(msg.contains(want), "{want}: {v}");
    }
    let get = wh.get("/mutate").await.unwrap();
    assert_eq!(get.status, 405);
    assert_eq!(wh.get("/nope").await.unwrap().status, 404);
    assert_eq!(wh.get("/healthz").await.unwrap().status, 200);
    // A client that is not TLS: dropped without harm.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(wh.addr).await.unwrap();
        s.write_all(b"POST /mutate HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf)).await;
    }
    // Still serving, still alive.
    let v = wh
        .review(&review_of(
            "default",
            "CREATE",
            deployment_pod("default", "ok"),
        ))
        .await;
    assert_eq!(v["response"]["allowed"], true);
    assert!(wh.child.try_wait().unwrap().is_none(), "the webhook exited");
    let m = wh.metrics_text().await;
    assert!(
        m.contains("clusterdns_webhook_errors_total{kind=\"bad-request\"} 5"),
        "{m}"
    );
    assert!(
        m.contains("clusterdns_webhook_errors_total{kind=\"pod\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("clusterdns_webhook_ignored_total{reason=\"not-a-pod\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_dropping_a_request() {
    let tls = Tls::new();
    let wh = Webhook::start(&tls, &["--upstream", "10.100.0.10"]).await;
    let body = serde_json::to_vec(&review_of(
        "default",
        "CREATE",
        deployment_pod("default", "w"),
    ))
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let last_leaf = Arc::new(Mutex::new(Vec::new()));
    // A client posting back to back on fresh connections the whole time.
    let client = {
        let (stop, ok, failures, last_leaf) = (
            stop.clone(),
            ok.clone(),
            failures.clone(),
            last_leaf.clone(),
        );
        let (addr, cfg) = (wh.addr, wh.client.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match request(addr, &cfg, "POST", "/mutate", body.clone()).await {
                    Ok(r) if r.status == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                        *last_leaf.lock().unwrap() = r.leaf;
                    }
                    Ok(r) => failures
                        .lock()
                        .unwrap()
                        .push(format!("status {}", r.status)),
                    Err(e) => failures.lock().unwrap().push(e),
                }
            }
        })
    };
    eventually(
        "requests before the renewal",
        Duration::from_secs(20),
        || ok.load(Ordering::Relaxed) >= 20,
    )
    .await;
    assert_eq!(*last_leaf.lock().unwrap(), tls.leaf);

    // Renewal as a non-atomic writer does it: the certificate first, the key after (the
    // mismatched pair in between must not be served), each by rename.
    let (cert, key, new_leaf) = leaf(&tls.ca2);
    let write = |path: PathBuf, text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    };
    write(tls.cert(), &cert);
    let seen = ok.load(Ordering::Relaxed);
    eventually(
        "requests with the half-written pair",
        Duration::from_secs(20),
        || ok.load(Ordering::Relaxed) >= seen + 20,
    )
    .await;
    write(tls.key(), &key);
    eventually(
        "the renewed certificate served",
        Duration::from_secs(20),
        || *last_leaf.lock().unwrap() == new_leaf,
    )
    .await;

    // A broken file afterwards: logged, and the renewed certificate stays.
    write(
        tls.cert(),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    // The poll (every second) must have read the broken file before the counts are checked.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let m = wh.metrics_text().await;
        if m.contains("clusterdns_webhook_cert_reloads_total{result=\"error\"}") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broken certificate was never read: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = ok.load(Ordering::Relaxed);
    eventually(
        "requests after the broken write",
        Duration::from_secs(20),
        || ok.load(Ordering::Relaxed) >= seen + 20,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    client.await.unwrap();
    assert_eq!(*last_leaf.lock().unwrap(), new_leaf);
    assert_eq!(failures.lock().unwrap().as_slice(), &[] as &[String]);
    let m = wh.metrics_text().await;
    assert!(
        m.contains("clusterdns_webhook_cert_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("clusterdns_webhook_cert_reloads_total{result=\"error\"}"),
        "{m}"
    );
}

async fn run_to_exit(args: &[&str], env_home: &Path) -> (i32, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(BIN)
            .arg("webhook")
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", env_home)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the webhook exits")
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn start_up_errors_exit_2_naming_the_cause() {
    let tls = Tls::new();
    let home = tls.dir.path();
    let missing = home.join("missing.crt");
    let common = |cert: &Path, key: &Path| -> Vec<String> {
        [
            "--listen",
            "127.0.0.1:0",
            "--sidecar-image",
            IMAGE,
            "--upstream",
            "10.100.0.10",
            "--tls-cert",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ])
        .collect()
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run_to_exit(&refs, home).await
    };
    let (code, err) = run(common(&missing, &tls.key())).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("--tls-cert"),
        "{err}"
    );

    let garbage = home.join("garbage.key");
    std::fs::write(&garbage, "not a key").unwrap();
    let (code, err) = run(common(&tls.cert(), &garbage)).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&garbage.display().to_string()), "{err}");

    // A key of another certificate.
    let (_, other_key, _) = leaf(&tls.ca2);
    let other = home.join("other.key");
    std::fs::write(&other, other_key).unwrap();
    let (code, err) = run(common(&tls.cert(), &other)).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("does not belong"), "{err}");

    // No --upstream, and the API has no kube-dns Service.
    let api = ApiServer::start().await;
    let kubeconfig = api.kubeconfig_path();
    let args: Vec<String> = common(&tls.cert(), &tls.key())
        .into_iter()
        .filter(|a| a != "--upstream" && a != "10.100.0.10")
        .chain(["--kubeconfig".to_string(), kubeconfig.display().to_string()])
        .collect();
    let (code, err) = run(args.clone()).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("kube-system/kube-dns") && err.contains("--upstream"),
        "{err}"
    );
    // No --upstream and no API at all.
    let args: Vec<String> = args
        .into_iter()
        .take_while(|a| a != "--kubeconfig")
        .collect();
    let (code, err) = run(args).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--upstream"), "{err}");
    drop(api);
}

#[tokio::test]
async fn generated_certificates_serve_for_clusters_without_cert_manager() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("certs");
    let out = tokio::process::Command::new(BIN)
        .args(["webhook", "--generate-certs"])
        .arg(&out_dir)
        .args(["--namespace", "dns", "--extra-name", "localhost"])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("kubectl -n dns create secret tls clusterdns-webhook-tls"),
        "{stdout}"
    );
    assert!(stdout.contains("caBundle"), "{stdout}");
    // Serve with them; a client that trusts only the generated CA connects as `localhost`.
    let ca_pem = std::fs::read(out_dir.join("ca.crt")).unwrap();
    let ca = rustls::pki_types::pem::PemObject::from_pem_slice(&ca_pem).unwrap();
    let mut tls = Tls::new();
    std::fs::copy(out_dir.join("tls.crt"), tls.cert()).unwrap();
    std::fs::copy(out_dir.join("tls.key"), tls.key()).unwrap();
    tls.client = client_trusting(&[ca]);
    let wh = Webhook::start(&tls, &["--upstream", "10.100.0.10"]).await;
    let r = wh.get("/healthz").await.unwrap();
    assert_eq!(r.status, 200);
    // The served certificate names the Service.
    let text =
        String::from_utf8_lossy(&std::fs::read(out_dir.join("tls.crt")).unwrap()).to_string();
    assert!(text.starts_with("-----BEGIN CERTIFICATE-----"), "{text}");
}

/// The manifests in manifests/webhook read back as the k8s-openapi types with nothing lost
/// (a misspelt or misplaced field would vanish in the round trip), and say what the issue
/// asks of a webhook that must never block pod creation.
#[test]
fn manifests_are_valid_and_fail_open() {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use k8s_openapi::api::apps::v1::Deployment;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/webhook");
    let mut kinds = Vec::new();
    let mut deployment = None;
    let mut webhook = None;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") || path.ends_with("kustomization.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap().to_string();
            fn same<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value, what: &str) -> T {
                let t: T =
                    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{what}: {e}"));
                assert_eq!(
                    &serde_json::to_value(&t).unwrap(),
                    v,
                    "{what}: fields lost in the round trip"
                );
                t
            }
            let what = format!("{}: {kind}", path.display());
            use k8s_openapi::api::{core::v1 as core, policy::v1 as policy, rbac::v1 as rbac};
            match kind.as_str() {
                "Deployment" => deployment = Some(same::<Deployment>(&v, &what)),
                "MutatingWebhookConfiguration" => {
                    webhook = Some(same::<MutatingWebhookConfiguration>(&v, &what))
                }
                "Service" => drop(same::<core::Service>(&v, &what)),
                "ServiceAccount" => drop(same::<core::ServiceAccount>(&v, &what)),
                "Namespace" => drop(same::<core::Namespace>(&v, &what)),
                "PodDisruptionBudget" => drop(same::<policy::PodDisruptionBudget>(&v, &what)),
                "ClusterRole" => drop(same::<rbac::ClusterRole>(&v, &what)),
                "ClusterRoleBinding" => drop(same::<rbac::ClusterRoleBinding>(&v, &what)),
                "Role" => drop(same::<rbac::Role>(&v, &what)),
                "RoleBinding" => drop(same::<rbac::RoleBinding>(&v, &what)),
                // cert-manager CRDs: no types here.
                "Issuer" | "Certificate" => assert_eq!(v["apiVersion"], "cert-manager.io/v1"),
                other => panic!("{what}: unexpected kind {other}"),
            }
            kinds.push(kind);
        }
    }
    for k in [
        "Deployment",
        "PodDisruptionBudget",
        "Service",
        "MutatingWebhookConfiguration",
        "Certificate",
        "ClusterRole",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing: {kinds:?}");
    }
    let d = deployment.unwrap();
    let ns = d.metadata.namespace.clone().unwrap();
    let spec = d.spec;
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("clusterdns"),
        "overridable with kustomize images:"
    );
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    assert_eq!(labels["app.kubernetes.io/name"], "clusterdns-webhook");
    // The binary accepts the Deployment's arguments (up to the point of reading the files).
    let args = c.args.clone().unwrap();
    let out = std::process::Command::new(BIN)
        .args(&args)
        .env("HOME", "/nonexistent")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--tls-cert /tls/tls.crt"),
        "flags parsed, then the file: {err}"
    );

    let w = &webhook.unwrap().webhooks.unwrap()[0];
    assert_eq!(w.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(w.side_effects, "None");
    assert!(w.timeout_seconds.is_some_and(|t| t <= 5));
    assert_eq!(w.reinvocation_policy.as_deref(), Some("IfNeeded"));
    assert_eq!(w.admission_review_versions, ["v1"]);
    let svc = w.client_config.service.as_ref().unwrap();
    assert_eq!(
        (svc.namespace.as_str(), svc.path.as_deref()),
        (ns.as_str(), Some("/mutate"))
    );
    let exprs = w
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap();
    let excluded = exprs
        .iter()
        .find(|e| e.key == "kubernetes.io/metadata.name" && e.operator == "NotIn")
        .unwrap();
    let values = excluded.values.as_ref().unwrap();
    assert!(
        values.contains(&"kube-system".to_string()) && values.contains(&ns),
        "{values:?}"
    );
}

#[tokio::test]
async fn sigterm_turns_unready_keeps_serving_then_exits_0() {
    let tls = Tls::new();
    let mut wh = Webhook::start(&tls, &["--upstream", "10.100.0.10"]).await;
    let pid = i32::try_from(wh.child.id().unwrap()).unwrap();
    // SAFETY: signalling the child this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = wh.get("/readyz").await.unwrap();
        if r.status == 503 {
            assert!(String::from_utf8_lossy(&r.body).contains("shutting down"));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never unready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Still answering admissions while the endpoints catch up.
    wh.review(&review_of(
        "default",
        "CREATE",
        deployment_pod("default", "late"),
    ))
    .await;
    let status = tokio::time::timeout(Duration::from_secs(20), wh.child.wait())
        .await
        .expect("exits after the lameduck")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn the_webhook_dashboard_queries_only_metrics_a_running_webhook_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exprs = support::dashboard::queries(&root.join("dashboards/clusterdns-webhook.json"));
    // Injections, skips, ignored, errors, latency, micro-VM growth, namespaces, cert reloads.
    let queried: std::collections::BTreeSet<String> = exprs
        .iter()
        .flat_map(|e| support::dashboard::metric_names(e))
        .collect();
    for name in [
        "clusterdns_webhook_injections_total",
        "clusterdns_webhook_skips_total",
        "clusterdns_webhook_ignored_total",
        "clusterdns_webhook_errors_total",
        "clusterdns_webhook_admission_duration_seconds_bucket",
        "clusterdns_webhook_micro_vm_size_increases_total",
        "clusterdns_webhook_inject_namespaces",
        "clusterdns_webhook_cert_reloads_total",
    ] {
        assert!(queried.contains(name), "no panel shows {name}");
    }

    let tls = Tls::new();
    let profiles = profiles_file(tls.dir.path());
    let wh = Webhook::start(
        &tls,
        &[
            "--upstream",
            "10.100.0.10",
            "--fargate-profiles",
            profiles.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ],
    )
    .await;
    // Counters with labels appear once counted: one of each outcome the panels show.
    let injected = deployment_pod("default", "web");
    let response = wh
        .review(&review_of("default", "CREATE", injected.clone()))
        .await;
    assert_eq!(sidecars(&patched(&injected, &response).1).len(), 1);
    let mut opted_out = deployment_pod("default", "quiet");
    opted_out["metadata"]["annotations"] = json!({"clusterdns.io/inject": "false"});
    wh.review(&review_of("default", "CREATE", opted_out)).await;
    wh.review(&review_of(
        "default",
        "UPDATE",
        deployment_pod("default", "web"),
    ))
    .await;
    assert_eq!(wh.post(b"not json".to_vec()).await.status, 400);
    // A certificate reload (a broken file: counted as an error, the old pair kept).
    std::fs::write(
        tls.cert(),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let addr = wh.metrics.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = http_get(addr, "/metrics").await;
        if text.contains("clusterdns_webhook_cert_reloads_total{") {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the certificate change was never counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let missing = support::dashboard::missing(&exprs, &text);
    assert!(
        missing.is_empty(),
        "the webhook dashboard queries metrics the webhook does not export: {missing:?}\n{text}"
    );
    // The check itself: a misspelled name in a panel is reported.
    let misspelled: Vec<String> = exprs
        .iter()
        .map(|e| {
            e.replace(
                "clusterdns_webhook_skips_total",
                "clusterdns_webhook_skip_total",
            )
        })
        .collect();
    assert_eq!(
        support::dashboard::missing(&misspelled, &text),
        ["clusterdns_webhook_skip_total"]
    );
}
