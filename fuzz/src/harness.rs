//! The bodies of the fuzz targets: outside input in, through the library functions the server
//! itself calls, with checks that must hold for every input. A panic is a bug.
//!
//! ```text
//!  dns_udp    datagram ───────────> dns::server::Service::process ─┐ Router: demo cluster, a
//!  dns_tcp    byte stream ────────> dns::tcp::serve_stream ────────┘ Corefile with every plugin
//!  corefile   text ─> corefile::parse_str ─> dns::build (blocks, listeners, routes)
//!  manifests  YAML/JSON ─> cluster::objects (fast and reference parse) ─> Store ─> Snapshot
//!                         ─> kubernetes answers for its services
//!  aws        AWS CLI JSON files ─> prober::VpcModel ─> judge_all ─> verdicts, table, JSON
//! ```
//!
//! Shared by the cargo-fuzz targets (fuzz/fuzz_targets) and the stable corpus replay
//! (tests/fuzz_corpus.rs includes this file by path), so CI replays exactly what the fuzzer
//! ran. Everything here names the library as `clusterdns::`, which both sides provide.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use clusterdns::cluster::objects::{self, ObjectSet};
use clusterdns::cluster::snapshot::StoreBuilder;
use clusterdns::cluster::{file_source, ClusterView, Snapshot, Store};
use clusterdns::corefile;
use clusterdns::dns::build::{self, BuildEnv, Router, Routes};
use clusterdns::dns::pipeline::Proto;
use clusterdns::dns::plugins::loop_detect::Fatal;
use clusterdns::dns::server::{self, Service};
use clusterdns::prober;
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::{TcpListener, UdpSocket};

/// The Corefile of the DNS targets: every plugin, in two blocks on one listener (the second
/// zone routes to its own pipeline). `UPSTREAM` becomes the local responder's address.
const CORE_FILE: &str = r#".:0 {
    bind 127.0.0.1
    reload 10s
    ready 127.0.0.1:0
    health 127.0.0.1:0 {
        lameduck 1s
    }
    prometheus 127.0.0.1:0
    errors {
        consolidate 5m ".* i/o timeout$" warning
    }
    log . "{remote} {type} {name} {rcode}" {
        class denial error
    }
    log
    loadbalance round_robin
    rewrite name exact db.example.com nginx.demo.svc.cluster.local answer auto
    rewrite continue name regex (.*)\.ext\.org {1}.demo.svc.cluster.local answer name (.*)\.demo\.svc\.cluster\.local {1}.ext.org
    rewrite name suffix .corp.internal. .demo.svc.cluster.local.
    autopath @kubernetes
    acl {
        block type HINFO net *
        filter net 10.9.0.0/16
        drop type NULL
    }
    cache 30 {
        success 1000 60 5
        denial 500
        prefetch 2 10s 20%
        serve_stale 1h verify
    }
    template IN A example.org {
        match "^(?P<a>[0-9]+)\.example\.org\.$"
        answer "{{ .Name }} 60 IN A 10.0.0.{{ .Group.a }}"
        fallthrough
    }
    template IN TXT example.org {
        answer "{{ .Name }} 30 IN TXT \"{{ .Question.Name }}|{{ .Type }}|{{ .Meta \"kubernetes/client-namespace\" }}\""
    }
    hosts {
        10.0.0.7 inline.example
        fd00::7 inline.example
        ttl 60
        reload 0
        fallthrough
    }
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        pods verified
        endpoint_pod_names
        fallthrough in-addr.arpa ip6.arpa
    }
    loop
    forward . UPSTREAM {
        max_fails 3
        policy sequential
        health_check 5s
    }
}
other.local:0 {
    bind 127.0.0.1
    cache 5
    kubernetes other.local {
        pods insecure
        ttl 0
        ignore empty_service
    }
}
"#;

/// Client addresses the DNS targets pick from (input byte 0): a demo pod (autopath and
/// `pods verified` apply), loopback v4 and v6, an address the `acl` filters, another pod.
const SOURCES: [SocketAddr; 5] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 40, 50)), 40000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5353),
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5353),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 9, 1, 1)), 53000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 70, 81)), 1),
];

struct Dns {
    rt: tokio::runtime::Runtime,
    service: Arc<Service>,
}

/// The demo cluster, as the server serves it by default.
fn demo_view() -> Arc<ClusterView> {
    let view = ClusterView::new();
    let objects = file_source::embedded_objects().expect("the embedded demo cluster loads");
    view.publish(Arc::new(Store::from_objects(&objects)), true);
    view
}

/// A local upstream for `forward`, on loopback UDP and TCP: A queries get 192.0.2.53, names
/// starting with `nx` NXDOMAIN, anything else an empty NOERROR.
async fn upstream() -> SocketAddr {
    fn reply(query: &[u8]) -> Option<Vec<u8>> {
        let q = Message::from_vec(query).ok()?;
        let question = q.queries.first()?.clone();
        let mut r = Message::new(q.metadata.id, MessageType::Response, OpCode::Query);
        r.metadata.recursion_desired = q.metadata.recursion_desired;
        r.metadata.recursion_available = true;
        let first = question.name().iter().next().unwrap_or_default();
        if first.starts_with(b"nx") {
            r.metadata.response_code = ResponseCode::NXDomain;
        } else if question.query_type() == RecordType::A {
            r.answers.push(Record::from_rdata(
                question.name().clone(),
                30,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 53))),
            ));
        }
        r.queries.push(question);
        r.to_vec().ok()
    }
    let udp = UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind upstream udp");
    let addr = udp.local_addr().expect("upstream address");
    let tcp = TcpListener::bind(addr).await.expect("bind upstream tcp");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            if let Some(r) = reply(&buf[..n]) {
                let _ = udp.send_to(&r, from).await;
            }
        }
    });
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut len = [0u8; 2];
                while s.read_exact(&mut len).await.is_ok() {
                    let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                    if s.read_exact(&mut q).await.is_err() {
                        return;
                    }
                    let Some(r) = reply(&q) else { return };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn dns() -> &'static Dns {
    static DNS: OnceLock<Dns> = OnceLock::new();
    DNS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let service = rt.block_on(async {
            let up = upstream().await;
            let text = CORE_FILE.replace("UPSTREAM", &up.to_string());
            let config = corefile::parse_str(&text, Path::new("fuzz.Corefile"), &|_| None)
                .unwrap_or_else(|e| panic!("the fuzz Corefile parses: {e}"));
            let view = demo_view();
            let env = BuildEnv {
                view: view.clone(),
                fatal: Arc::new(Fatal::default()),
            };
            let built = build::build_all(&config, &env)
                .unwrap_or_else(|e| panic!("the fuzz Corefile builds: {e}"));
            let plan = build::listeners(&config).expect("listeners");
            let blocks = plan.values().next().expect("one listener");
            assert_eq!(blocks.len(), 2, "both blocks share the listener");
            let router = Router::new(Routes::new(&config, blocks, &built, 0), view);
            Arc::new(Service {
                responder: Arc::new(router),
                observer: None,
            })
        });
        Dns { rt, service }
    })
}

/// What every reply must be: a DNS response to the query it answers, that a client parses.
fn check_reply(query: &[u8], reply: &[u8], proto: Proto) {
    assert!(reply.len() >= 12, "reply shorter than a header: {reply:?}");
    assert!(reply.len() <= 65535, "reply longer than a DNS message");
    assert_eq!(reply[..2], query[..2], "reply ID differs from the query's");
    assert!(reply[2] & 0x80 != 0, "reply without QR");
    let parsed = Message::from_vec(reply)
        .unwrap_or_else(|e| panic!("reply does not parse: {e}: {reply:?} (query {query:?})"));
    if proto == Proto::Udp {
        if let Ok(q) = Message::from_vec(query) {
            let max = clusterdns::dns::wire::max_udp_size(&q);
            assert!(
                reply.len() <= max,
                "UDP reply of {} bytes, over the client's {max}",
                reply.len()
            );
        }
    }
    drop(parsed);
}

/// Byte 0: the client address (low bits) and, with bit 7, the query as if it came over TCP
/// (no size limit); the rest is the DNS message. The same message twice: the second may come
/// from the response cache and must say the same.
pub fn dns_udp(data: &[u8]) {
    let Some((&sel, msg)) = data.split_first() else {
        return;
    };
    let proto = if sel & 0x80 != 0 {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    let first = dns_answer(data);
    let second = dns_answer(data);
    for r in [&first, &second].into_iter().flatten() {
        check_reply(msg, r, proto);
    }
    if let (Some(a), Some(b)) = (&first, &second) {
        let (a, b) = (
            Message::from_vec(a).expect("checked"),
            Message::from_vec(b).expect("checked"),
        );
        assert_eq!(
            a.metadata.response_code, b.metadata.response_code,
            "the same query answered with two rcodes"
        );
        assert_eq!(
            a.queries, b.queries,
            "the same query answered for two questions"
        );
        assert_eq!(
            a.answers.len(),
            b.answers.len(),
            "the same query answered with different answer counts"
        );
    }
}

/// The reply to a `dns_udp` input (byte 0 as there), through the harness's server.
pub fn dns_answer(data: &[u8]) -> Option<Vec<u8>> {
    let (&sel, msg) = data.split_first()?;
    let d = dns();
    let src = SOURCES[usize::from(sel & 0x7f) % SOURCES.len()];
    let proto = if sel & 0x80 != 0 {
        Proto::Tcp
    } else {
        Proto::Udp
    };
    d.rt.block_on(d.service.process(msg, src, proto))
}

/// Byte 0: the client address; the rest is what a TCP client sends on one connection
/// (length-prefixed messages, possibly cut short). Every reply is framed and parses.
pub fn dns_tcp(data: &[u8]) {
    let Some((&sel, stream)) = data.split_first() else {
        return;
    };
    let d = dns();
    let src = SOURCES[usize::from(sel) % SOURCES.len()];
    let mut out = Vec::new();
    d.rt.block_on(async {
        let io = clusterdns::dns::tcp::MemoryStream {
            input: stream,
            out: &mut out,
        };
        clusterdns::dns::tcp::serve_stream(io, src, d.service.clone()).await;
    });
    let mut rest = &out[..];
    while !rest.is_empty() {
        assert!(rest.len() >= 2, "a reply frame cut in its length");
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        assert!(rest.len() >= 2 + n, "a reply frame shorter than its length");
        let reply = &rest[2..2 + n];
        assert!(reply.len() >= 12, "reply shorter than a header");
        assert!(reply[2] & 0x80 != 0, "reply without QR");
        Message::from_vec(reply).unwrap_or_else(|e| panic!("reply does not parse: {e}"));
        rest = &rest[2 + n..];
    }
}

/// Corefile text: parsed, and when valid built into pipelines and routes as `serve` does.
/// Inputs that name device or kernel files are skipped: `import /dev/zero` would read forever,
/// as it would in CoreDNS; that is the operator's file, not outside input.
pub fn corefile(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys"].iter().any(|p| text.contains(p)) {
        return;
    }
    let env = |name: &str| (name == "FUZZ").then(|| "fuzz.example".to_string());
    let _ = corefile::parse_ast(text, Path::new("/nonexistent-fuzz/Corefile"), &env);
    let Ok(config) = corefile::parse_str(text, Path::new("/nonexistent-fuzz/Corefile"), &env)
    else {
        return;
    };
    static VIEW: OnceLock<Arc<ClusterView>> = OnceLock::new();
    let env = BuildEnv {
        view: VIEW.get_or_init(demo_view).clone(),
        fatal: Arc::new(Fatal::default()),
    };
    let Ok(built) = build::build_all(&config, &env) else {
        return;
    };
    let Ok(plan) = build::listeners(&config) else {
        return;
    };
    for (key, blocks) in &plan {
        let _ = key.socket_addr(key.port);
        let routes = Routes::new(&config, blocks, &built, key.port);
        for name in ["cluster.local.", "example.org.", "."] {
            let _ = routes.route(&Name::from_ascii(name).expect("valid name"));
        }
    }
}

/// Queries for the services of a fuzzed snapshot, through a `kubernetes` pipeline.
const KUBE_FILE: &str = "cluster.local:0 {\n    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        pods verified\n        endpoint_pod_names\n    }\n}\n";

/// Kubernetes YAML or JSON (as `kubectl get -o yaml|json` prints, or anything else): what the
/// reference parse reads, the fast parallel parse must read too, giving the same objects; the
/// objects then go
/// through both store builders, a snapshot (fresh and as an update of the demo cluster's), and
/// answers for the first services.
pub fn manifests(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.yaml");
    let mut fast = ObjectSet::default();
    let fast_res = fast.add_text(text, path);
    let mut reference = ObjectSet::default();
    let ref_res = objects::add_text_sequential(&mut reference, text, path);
    match (&fast_res, &ref_res) {
        (Ok(()), Ok(())) => assert_eq!(
            format!("{fast:?}"),
            format!("{reference:?}"),
            "the fast parse read other objects than the reference parse"
        ),
        (Err(_), Err(_)) => {}
        // Items of kinds DNS does not read are passed over unparsed by the fast path, on
        // purpose (a broken Deployment does not stop a dump from loading): the reference
        // parse may refuse a file the fast path reads.
        (Ok(()), Err(_)) => {}
        (Err(e), Ok(())) => panic!("fast parse refused what the reference parse reads: {e}"),
    }
    if fast_res.is_err() {
        return;
    }
    let mut builder = StoreBuilder::default();
    objects::add_text_to(&mut builder, text, path).expect("parsed once already");
    let stripped = Arc::new(builder.finish());
    let store = Arc::new(Store::from_objects(&fast));
    let fresh = Snapshot::build(store.clone(), 1, true);
    static DEMO: OnceLock<Arc<ClusterView>> = OnceLock::new();
    let demo = DEMO.get_or_init(demo_view).snapshot_full();
    let _ = Snapshot::rebuild(&demo, stripped, 2, true);

    let view = ClusterView::new();
    view.publish(store, true);
    let config = corefile::parse_str(KUBE_FILE, Path::new("kube.Corefile"), &|_| None)
        .expect("kubernetes Corefile parses");
    let env = BuildEnv {
        view: view.clone(),
        fatal: Arc::new(Fatal::default()),
    };
    let built = build::build_block(&config.servers[0], &env).expect("kubernetes block builds");
    let mut queries = Vec::new();
    for entry in fresh.services().take(4) {
        let svc = &entry.service;
        let base = format!("{}.{}.svc.cluster.local.", svc.name, svc.namespace);
        queries.push((base.clone(), RecordType::A));
        queries.push((base.clone(), RecordType::AAAA));
        queries.push((format!("_http._tcp.{base}"), RecordType::SRV));
        queries.push((format!("*.{base}"), RecordType::SRV));
        for ep in entry.endpoints.iter().take(2) {
            queries.push((ep.label(true).to_string() + "." + &base, RecordType::A));
            let ptr = match ep.address() {
                IpAddr::V4(a) => {
                    let o = a.octets();
                    format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
                }
                IpAddr::V6(a) => {
                    let mut s = String::new();
                    for b in a.octets().iter().rev() {
                        s += &format!("{:x}.{:x}.", b & 0xf, b >> 4);
                    }
                    s + "ip6.arpa."
                }
            };
            queries.push((ptr, RecordType::PTR));
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    for (name, qtype) in queries {
        // Object names that are not DNS names cannot be asked for.
        let Ok(name) = Name::from_ascii(&name) else {
            continue;
        };
        let mut q = Message::new(0x1234, MessageType::Query, OpCode::Query);
        q.add_query(Query::query(name, qtype));
        let Ok(bytes) = q.to_vec() else { continue };
        let reply = rt.block_on(server::process(
            &*built.pipeline,
            &bytes,
            SOURCES[0],
            Proto::Udp,
        ));
        if let Some(r) = reply {
            check_reply(&bytes, &r, Proto::Udp);
        }
    }
}

/// The healthy case's cluster: pods and nodes whose addresses the fuzzed VPC describes.
const AWS_OBJECTS: &str = include_str!("../../tests/fixtures/aws/healthy/cluster/objects.json");

/// AWS CLI output files, separated by NUL bytes (a part that starts with `{` is a `.json`
/// file, anything else a `.yaml` SecurityGroupPolicy): loaded into the prober's model and
/// judged for every path of the healthy case's cluster, then rendered both ways.
pub fn aws(data: &[u8]) {
    static OBJECTS: OnceLock<ObjectSet> = OnceLock::new();
    let objects = OBJECTS.get_or_init(|| {
        let mut o = ObjectSet::default();
        o.add_text(AWS_OBJECTS, Path::new("objects.json"))
            .expect("fixture objects load");
        o
    });
    let mut model = prober::VpcModel::default();
    for (i, part) in data.split(|b| *b == 0).enumerate() {
        let Ok(text) = std::str::from_utf8(part) else {
            return;
        };
        let ext = if text.trim_start().starts_with('{') {
            "json"
        } else {
            "yaml"
        };
        let file = format!("part{i}.{ext}");
        if let Err(e) = model.add_text(text, Path::new(&file)) {
            // Bad input is an error that names the file.
            assert!(e.to_string().contains(&file), "error without its file: {e}");
            return;
        }
    }
    let (findings, notes) = prober::judge_all(&model, objects);
    let _ = prober::render_table(&findings, &notes);
    let json = prober::render_json(&findings);
    if let Err(e) = serde_json::from_str::<serde_json::Value>(&json) {
        panic!("render_json printed something that is not JSON ({e}): {json}");
    }
}

/// The webhook's settings in the fuzz target: the Fargate profiles of tests/webhook.rs
/// (`default` and `kube-system`; `batch-*` pods labelled `compute=fargate`), its own namespace,
/// one namespace labelled for injection; a native sidecar or, as for API servers before 1.29,
/// an ordinary container.
pub fn webhook_contexts() -> &'static [clusterdns::webhook::inject::Context; 2] {
    use clusterdns::webhook::inject::{Context, Settings};
    static CTX: OnceLock<[Context; 2]> = OnceLock::new();
    CTX.get_or_init(|| {
        let profiles = clusterdns::fargate::profile::parse_profiles(
            r#"[{"fargateProfile":{"fargateProfileName":"fp-default","selectors":[
                  {"namespace":"default"},{"namespace":"kube-system"}]}},
                {"fargateProfile":{"fargateProfileName":"fp-batch","selectors":[
                  {"namespace":"batch-*","labels":{"compute":"fargate"}}]}}]"#,
            Path::new("profiles.json"),
        )
        .expect("the fuzz Fargate profiles parse");
        let ctx = |native: bool| {
            let ctx = Context::new(Settings {
                image: "registry.example/clusterdns:1.0".into(),
                upstreams: vec!["10.100.0.10".into()],
                native,
                own_namespace: Some("clusterdns-system".into()),
                profiles: profiles.clone(),
                ..Settings::default()
            });
            ctx.namespaces
                .store(Arc::new(["team".to_string()].into_iter().collect()));
            ctx
        };
        [ctx(true), ctx(false)]
    })
}

/// Container names of a pod object (init and ordinary), for the duplicate-name check.
fn container_names(pod: &serde_json::Value) -> Vec<String> {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod["spec"][k].as_array())
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect()
}

/// The answer of `review` to one body, checked as the API server would take it: a 400 is a
/// `Status` with a message; a 200 is an AdmissionReview v1 with the request's uid, allowed
/// (the webhook fails open and never denies), and its patch, if any, is a base64 JSON Patch
/// that applies to the request's object and leaves a pod that parses, with no container name
/// twice. Returns the patched object (or the object unchanged without a patch) for a 200.
pub fn webhook_review(
    data: &[u8],
    ctx: &clusterdns::webhook::inject::Context,
) -> Option<serde_json::Value> {
    use base64::Engine;
    use serde_json::Value;
    let r = clusterdns::webhook::inject::review(data, ctx);
    let body: Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("the answer is not JSON ({e}): {:?}", r.body));
    match r.status {
        400 => {
            assert_eq!(body["kind"], "Status", "a 400 that is not a Status: {body}");
            assert_eq!(body["code"], 400, "{body}");
            assert!(
                body["message"].as_str().is_some_and(|m| !m.is_empty()),
                "a 400 without a message: {body}"
            );
            return None;
        }
        200 => {}
        other => panic!("HTTP status {other}: {body}"),
    }
    // A 200 is only for a request that parsed.
    let request: Value = serde_json::from_slice(data).expect("a 200 for a body that is not JSON");
    let request = &request["request"];
    assert_eq!(body["kind"], "AdmissionReview", "{body}");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1", "{body}");
    // What the API server decodes (Go's admission/v1 AdmissionResponse; kube's own types
    // read `patch` as an array of numbers, not the base64 string Go writes, so checked here).
    let response = body["response"]
        .as_object()
        .unwrap_or_else(|| panic!("an AdmissionReview without a response: {body}"));
    for key in response.keys() {
        assert!(
            [
                "uid",
                "allowed",
                "status",
                "patch",
                "patchType",
                "auditAnnotations",
                "warnings"
            ]
            .contains(&key.as_str()),
            "an AdmissionResponse field the API does not have: {key}: {body}"
        );
    }
    assert_eq!(
        response.get("uid").and_then(Value::as_str),
        Some(
            request["uid"]
                .as_str()
                .expect("a 200 for a request without a uid")
        ),
        "the answer's uid is not the request's: {body}"
    );
    assert_eq!(
        response.get("allowed"),
        Some(&Value::Bool(true)),
        "not allowed: {body}"
    );
    if let Some(w) = response.get("warnings") {
        assert!(
            w.as_array().is_some_and(|w| w.iter().all(Value::is_string)),
            "warnings that are not strings: {body}"
        );
    }
    if let Some(status) = response.get("status") {
        assert!(
            status.is_object() && status.get("message").is_none_or(Value::is_string),
            "a status that is not a Status: {body}"
        );
    }
    let object = request["object"].clone();
    let Some(b64) = body["response"]["patch"].as_str() else {
        assert!(
            body["response"].get("patchType").is_none(),
            "a patchType without a patch: {body}"
        );
        return Some(object);
    };
    assert_eq!(body["response"]["patchType"], "JSONPatch", "{body}");
    let is_pod_create = request["operation"] == "CREATE"
        && request["kind"]["kind"] == "Pod"
        && request["resource"]["resource"] == "pods";
    assert!(
        is_pod_create,
        "a patch for something else than a pod CREATE: {body}"
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap_or_else(|e| panic!("the patch is not base64 ({e}): {b64}"));
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "the patch is not a JSON Patch ({e}): {}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert!(!patch.0.is_empty(), "an empty patch is sent as none");
    let mut doc = object.clone();
    if let Err(e) = json_patch::patch(&mut doc, &patch) {
        panic!(
            "the patch does not apply to the request's pod ({e}):\npatch {}\npod {object}",
            String::from_utf8_lossy(&bytes)
        );
    }
    if let Err(e) = serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(doc.clone()) {
        panic!("the patched pod does not parse ({e}): {doc}");
    }
    let (before, after) = (container_names(&object), container_names(&doc));
    for name in &after {
        let count = |names: &[String]| names.iter().filter(|n| *n == name).count();
        assert!(
            count(&after) <= count(&before).max(1),
            "the patch gives two containers the name {name}: {doc}"
        );
    }
    Some(doc)
}

/// An AdmissionReview body, answered with a native sidecar and with an ordinary container
/// (checks in [`webhook_review`]). The API server re-invokes the webhook after other mutating
/// webhooks (`reinvocationPolicy: IfNeeded`): the review of the patched pod must patch
/// nothing more.
pub fn webhook(data: &[u8]) {
    for ctx in webhook_contexts() {
        let Some(patched) = webhook_review(data, ctx) else {
            continue;
        };
        let mut again: serde_json::Value =
            serde_json::from_slice(data).expect("a 200 for a body that is JSON");
        if again["request"]["object"] == patched {
            continue;
        }
        again["request"]["object"] = patched;
        let body = serde_json::to_vec(&again).expect("JSON encodes");
        let patched_again = webhook_review(&body, ctx).expect("the re-invocation is a 200");
        assert_eq!(
            patched_again, again["request"]["object"],
            "a re-invocation patched the pod again"
        );
    }
}
