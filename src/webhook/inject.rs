//! The admission decision and the patch, as pure functions: an AdmissionReview body in, an
//! AdmissionReview body out ([`review`]), no sockets, no clock, so the whole path can be
//! fuzzed and tested table-driven.
//!
//! ```text
//! body ─> JSON ─> kind/apiVersion check ─> AdmissionReview<DynamicObject> ─> Pod?
//!      ─> decide (skip rules, then Fargate profile / scheduler / annotation / namespace label)
//!      ─> JSON Patch ops ─> applied to a copy (must still parse as a Pod) ─> sizes before/after
//!      ─> AdmissionResponse { allowed: true, patch, warnings }
//! ```

use std::collections::{BTreeMap, BTreeSet};

use arc_swap::ArcSwap;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, ReplaceOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, HTTPGetAction, Pod, PodDNSConfig, PodDNSConfigOption,
    PodSecurityContext, Probe, ResourceRequirements, SeccompProfile, SecurityContext, Sysctl,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;
use serde_json::Value;

use crate::fargate::{self, FargateProfile, Size};
use crate::sidecar::SidecarOptions;

/// The user's switch on a pod: `"true"` opts in, `"false"` opts out.
pub const INJECT_ANNOTATION: &str = "clusterdns.io/inject";
/// The namespace label that opts every pod of the namespace in.
pub const NAMESPACE_LABEL: &str = "clusterdns.io/inject";
pub const NAMESPACE_LABEL_VALUE: &str = "enabled";
/// What the webhook decided: `injected` or `skipped`.
pub const STATUS_ANNOTATION: &str = "clusterdns.io/status";
/// Why: the reason label of the metrics, and a detail (the profile's name).
pub const REASON_ANNOTATION: &str = "clusterdns.io/reason";
/// The micro-VM size Fargate will give the pod with the sidecar.
pub const SIZE_ANNOTATION: &str = "clusterdns.io/micro-vm-size";
/// The size it would have had without, set when the sidecar makes it bigger.
pub const SIZE_BEFORE_ANNOTATION: &str = "clusterdns.io/micro-vm-size-without-sidecar";
/// The injected container's name; a pod that has one is never injected again.
pub const SIDECAR_NAME: &str = "clusterdns";
/// The webhook's own pods carry this label (manifests/webhook), and are never injected.
pub const WEBHOOK_LABEL: (&str, &str) = ("app.kubernetes.io/name", "clusterdns-webhook");
/// The cluster DNS pods (CoreDNS and clusterdns serve) carry this label.
pub const CLUSTER_DNS_LABEL: (&str, &str) = ("k8s-app", "kube-dns");
pub const FARGATE_SCHEDULER: &str = "fargate-scheduler";
/// Binding 127.0.0.1:53 as non-root: a namespaced "safe" sysctl (see the README).
pub const PORT_SYSCTL: &str = "net.ipv4.ip_unprivileged_port_start";
/// The sidecar's user: non-root, as the restricted Pod Security Standard requires.
pub const SIDECAR_UID: i64 = 65532;

/// The largest AdmissionReview read. A pod is at most ~1.5 MiB (etcd's object limit) and a
/// CREATE review carries one copy; anything larger is not from an API server.
pub const MAX_BODY: usize = 4 << 20;

/// Everything the decision needs that does not come from the request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub image: String,
    /// The cluster DNS service address(es) the sidecar forwards to.
    pub upstreams: Vec<String>,
    /// The cluster domain (search path and the sidecar's probe name).
    pub zone: String,
    /// A native sidecar (init container with `restartPolicy: Always`, Kubernetes 1.29+) or an
    /// ordinary container.
    pub native: bool,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
    /// The webhook's own namespace: its pods are never injected.
    pub own_namespace: Option<String>,
    pub profiles: Vec<FargateProfile>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: "clusterdns:latest".into(),
            upstreams: vec!["10.100.0.10".into()],
            zone: "cluster.local".into(),
            native: true,
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            memory_limit: "64Mi".into(),
            own_namespace: None,
            profiles: Vec::new(),
        }
    }
}

/// The settings plus what changes at run time (the namespaces that opted in).
#[derive(Debug)]
pub struct Context {
    pub settings: Settings,
    /// Namespaces labelled `clusterdns.io/inject=enabled`, from the Namespace watch.
    pub namespaces: ArcSwap<BTreeSet<String>>,
}

impl Context {
    pub fn new(settings: Settings) -> Context {
        Context {
            settings,
            namespaces: ArcSwap::from_pointee(BTreeSet::new()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InjectReason {
    /// A Fargate profile selects the pod (its name).
    Profile(String),
    /// `schedulerName: fargate-scheduler` already set.
    FargateScheduler,
    /// `clusterdns.io/inject: "true"`.
    Annotation,
    /// The namespace is labelled `clusterdns.io/inject=enabled`.
    NamespaceLabel,
}

impl InjectReason {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            InjectReason::Profile(_) => "fargate-profile",
            InjectReason::FargateScheduler => "fargate-scheduler",
            InjectReason::Annotation => "annotation",
            InjectReason::NamespaceLabel => "namespace-label",
        }
    }

    fn detail(&self) -> String {
        match self {
            InjectReason::Profile(name) => format!("fargate-profile {name}"),
            other => other.label().to_string(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    OptOut,
    HostNetwork,
    DnsPolicy,
    Windows,
    ClusterDns,
    Webhook,
    AlreadyInjected,
    NotSelected,
}

impl SkipReason {
    pub const ALL: [SkipReason; 8] = [
        SkipReason::OptOut,
        SkipReason::HostNetwork,
        SkipReason::DnsPolicy,
        SkipReason::Windows,
        SkipReason::ClusterDns,
        SkipReason::Webhook,
        SkipReason::AlreadyInjected,
        SkipReason::NotSelected,
    ];

    /// The metric label and the reason annotation.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::OptOut => "opt-out",
            SkipReason::HostNetwork => "host-network",
            SkipReason::DnsPolicy => "dns-policy",
            SkipReason::Windows => "windows",
            SkipReason::ClusterDns => "cluster-dns",
            SkipReason::Webhook => "webhook",
            SkipReason::AlreadyInjected => "already-injected",
            SkipReason::NotSelected => "not-selected",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject {
        reason: InjectReason,
        /// Fargate will run the pod (a profile selects it or its scheduler is Fargate's), so
        /// its micro-VM size matters.
        micro_vm: bool,
    },
    Skip(SkipReason),
}

/// What one review came to, for metrics and logs.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Injected {
        reason: &'static str,
        /// (before, after) when the sidecar makes the micro-VM bigger.
        grew: Option<(Size, Size)>,
    },
    Skipped(SkipReason),
    /// Not ours to mutate (another resource or operation): allowed unchanged.
    Ignored(&'static str),
    /// Not an AdmissionReview v1: HTTP 400.
    BadRequest(String),
    /// A pod that could not be handled: allowed unchanged, with the message.
    Error(String),
}

/// An HTTP answer: status and JSON body.
#[derive(Debug)]
pub struct Reviewed {
    pub status: u16,
    pub body: Vec<u8>,
    pub outcome: Outcome,
}

fn bad_request(message: String) -> Reviewed {
    let body = serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "status": "Failure",
        "code": 400, "reason": "BadRequest", "message": message,
    });
    Reviewed {
        status: 400,
        body: serde_json::to_vec(&body).unwrap_or_default(),
        outcome: Outcome::BadRequest(message),
    }
}

fn answer(response: AdmissionResponse, outcome: Outcome) -> Reviewed {
    let encoded = serde_json::to_value(response.into_review()).map(|mut v| {
        // kube serialises `patch: Vec<u8>` as an array of numbers; the API documents (and
        // every client and test tool expects) the base64 string that Go writes for []byte.
        if let Some(patch) = v.pointer_mut("/response/patch") {
            if let Some(bytes) = patch.as_array().map(|a| {
                a.iter()
                    .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                    .collect::<Vec<u8>>()
            }) {
                use base64::Engine;
                *patch = Value::from(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
        }
        v
    });
    match encoded.and_then(|v| serde_json::to_vec(&v)) {
        Ok(body) => Reviewed {
            status: 200,
            body,
            outcome,
        },
        // Serialising plain data does not fail; answer rather than panic if it ever does.
        Err(e) => bad_request(format!("cannot encode the response: {e}")),
    }
}

fn allowed_with(mut response: AdmissionResponse, message: String, outcome: Outcome) -> Reviewed {
    response.result.message = message;
    answer(response, outcome)
}

/// Reads an AdmissionReview v1 body and answers it: 400 when it is not one, else 200 with
/// `allowed: true` and, for a pod to inject, the patch. Never panics, never denies.
pub fn review(body: &[u8], ctx: &Context) -> Reviewed {
    if body.len() > MAX_BODY {
        return bad_request(format!(
            "request body of {} bytes is larger than the limit of {MAX_BODY} bytes",
            body.len()
        ));
    }
    let mut value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => return bad_request(format!("invalid JSON: {e}")),
    };
    let kind = value.get("kind").and_then(Value::as_str);
    if kind != Some("AdmissionReview") {
        return bad_request(match kind {
            Some(k) => format!("kind {k}: expected AdmissionReview"),
            None => "no kind: expected an AdmissionReview".into(),
        });
    }
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    if api_version != Some("admission.k8s.io/v1") {
        return bad_request(format!(
            "apiVersion {}: expected admission.k8s.io/v1 (admissionReviewVersions: [v1])",
            api_version.unwrap_or("missing")
        ));
    }
    // The object exactly as sent: the patch is applied to it by the API server, so it is
    // what the patch is built and checked against (a typed round trip could drop fields).
    let object = value.pointer_mut("/request/object").map(Value::take);
    let review: AdmissionReview<DynamicObject> = match serde_json::from_value(value) {
        Ok(r) => r,
        Err(e) => return bad_request(format!("not an AdmissionReview: {e}")),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(_) => return bad_request("AdmissionReview without a request".into()),
    };
    let response = AdmissionResponse::from(&request);
    let is_pod = request.kind.group.is_empty()
        && request.kind.kind == "Pod"
        && request.resource.resource == "pods"
        && request.sub_resource.as_deref().is_none_or(str::is_empty);
    if !is_pod {
        let what = format!(
            "{}/{} {}{}",
            request.kind.group,
            request.kind.version,
            request.kind.kind,
            request
                .sub_resource
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
        return allowed_with(
            response,
            format!("clusterdns: not a pod ({what}): nothing to do"),
            Outcome::Ignored("not-a-pod"),
        );
    }
    if !matches!(request.operation, Operation::Create) {
        return allowed_with(
            response,
            format!(
                "clusterdns: {:?}: only pod creation is mutated",
                request.operation
            ),
            Outcome::Ignored("operation"),
        );
    }
    let Some(object) = object.filter(Value::is_object) else {
        let msg = "clusterdns: pod CREATE without an object".to_string();
        return allowed_with(response, msg.clone(), Outcome::Error(msg));
    };
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!("clusterdns: the pod does not parse: {e}");
            return allowed_with(response, msg.clone(), Outcome::Error(msg));
        }
    };
    // A Deployment's pod has no name and may have no namespace yet: the request has both.
    let namespace = request
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_else(|| "default".into());
    let decision = decide(&pod, &namespace, ctx);
    match mutate(&pod, &object, &namespace, &decision, &ctx.settings) {
        Ok(m) => {
            let mut response = response;
            if !m.warnings.is_empty() {
                response.warnings = Some(m.warnings);
            }
            let outcome = match &decision {
                Decision::Inject { reason, .. } => Outcome::Injected {
                    reason: reason.label(),
                    grew: m.grew,
                },
                Decision::Skip(r) => Outcome::Skipped(*r),
            };
            let response = if m.ops.is_empty() {
                response
            } else {
                match response.with_patch(json_patch::Patch(m.ops)) {
                    Ok(r) => r,
                    Err(e) => {
                        let msg = format!("clusterdns: cannot encode the patch: {e}");
                        return allowed_with(
                            AdmissionResponse::from(&request),
                            msg.clone(),
                            Outcome::Error(msg),
                        );
                    }
                }
            };
            allowed_with(response, format!("clusterdns: {}", m.summary), outcome)
        }
        Err(e) => {
            let msg = format!("clusterdns: pod not injected: {e}");
            allowed_with(response, msg.clone(), Outcome::Error(msg))
        }
    }
}

/// Whether the pod already runs a clusterdns sidecar: ours by name, or one written by hand
/// (the `sidecar` subcommand of the same image).
fn has_sidecar(pod: &Pod, image: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.name == SIDECAR_NAME
                || (c.image.as_deref() == Some(image)
                    && c.args.as_ref().and_then(|a| a.first()).map(String::as_str)
                        == Some("sidecar"))
        })
}

/// Which pods get the sidecar: the skip rules first (a pod that chose its own DNS, or that
/// serves DNS, or that already has one), then whatever sends it to a micro-VM, then the
/// opt-ins.
pub fn decide(pod: &Pod, namespace: &str, ctx: &Context) -> Decision {
    let s = &ctx.settings;
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = pod.metadata.annotations.as_ref().unwrap_or(&empty);
    let spec = pod.spec.as_ref();
    if has_sidecar(pod, &s.image) {
        return Decision::Skip(SkipReason::AlreadyInjected);
    }
    let opt = annotations.get(INJECT_ANNOTATION).map(|v| v.trim());
    if opt.is_some_and(|v| v.eq_ignore_ascii_case("false")) {
        return Decision::Skip(SkipReason::OptOut);
    }
    if spec.and_then(|s| s.host_network) == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    if matches!(
        spec.and_then(|s| s.dns_policy.as_deref()),
        Some("Default" | "None")
    ) {
        return Decision::Skip(SkipReason::DnsPolicy);
    }
    if spec
        .and_then(|s| s.os.as_ref())
        .is_some_and(|os| os.name == "windows")
    {
        return Decision::Skip(SkipReason::Windows);
    }
    let has = |(k, v): (&str, &str)| labels.get(k).map(String::as_str) == Some(v);
    if has(CLUSTER_DNS_LABEL) {
        return Decision::Skip(SkipReason::ClusterDns);
    }
    if has(WEBHOOK_LABEL) || s.own_namespace.as_deref() == Some(namespace) {
        return Decision::Skip(SkipReason::Webhook);
    }
    let on_fargate_scheduler =
        spec.and_then(|s| s.scheduler_name.as_deref()) == Some(FARGATE_SCHEDULER);
    let profile = fargate::select_profile(&s.profiles, namespace, labels);
    let micro_vm = on_fargate_scheduler || profile.is_some();
    let reason = if opt.is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        InjectReason::Annotation
    } else if let Some(p) = profile {
        InjectReason::Profile(p.fargate_profile_name.clone())
    } else if on_fargate_scheduler {
        InjectReason::FargateScheduler
    } else if ctx.namespaces.load().contains(namespace) {
        InjectReason::NamespaceLabel
    } else {
        return Decision::Skip(SkipReason::NotSelected);
    };
    Decision::Inject { reason, micro_vm }
}

struct Mutation {
    ops: Vec<PatchOperation>,
    warnings: Vec<String>,
    grew: Option<(Size, Size)>,
    summary: String,
}

fn ptr(tokens: &[&str]) -> PointerBuf {
    PointerBuf::from_tokens(tokens.iter().copied())
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: ptr(tokens),
        value,
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, String> {
    serde_json::to_value(v).map_err(|e| format!("cannot encode: {e}"))
}

/// The port of a sidecar HTTP address such as `:8054`.
fn port_of(addr: &str) -> i32 {
    addr.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// The injected container. Its flags and ports are the sidecar's own defaults
/// ([`SidecarOptions`]), so the probes and the listener cannot drift apart.
pub fn sidecar_container(s: &Settings) -> Container {
    let defaults = SidecarOptions::default();
    let http_probe = |path: &str, addr: &str| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::Int(port_of(addr)),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.to_string());
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(s.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(vec![
            "sidecar".into(),
            "--upstream".into(),
            s.upstreams.join(","),
            "--listen".into(),
            defaults.listen.to_string(),
            "--health".into(),
            defaults.health.clone(),
            "--ready".into(),
            defaults.ready.clone(),
            "--metrics".into(),
            defaults.metrics.clone(),
            "--autopath".into(),
            "/etc/resolv.conf".into(),
            "--probe-name".into(),
            format!("kubernetes.default.svc.{}.", s.zone),
        ]),
        // Native sidecar: started before the app (and before later init containers), kept
        // running, stopped after the app.
        restart_policy: s.native.then(|| "Always".into()),
        // The app starts only once DNS answers: with a native sidecar the kubelet waits for
        // this probe before starting the next container.
        startup_probe: Some(Probe {
            http_get: Some(http_probe("/ready", &defaults.ready)),
            period_seconds: Some(1),
            timeout_seconds: Some(1),
            failure_threshold: Some(30),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_probe("/health", &defaults.health)),
            period_seconds: Some(10),
            timeout_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&s.cpu_request)),
                ("memory".to_string(), quantity(&s.memory_request)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                quantity(&s.memory_limit),
            )])),
            ..Default::default()
        }),
        // The restricted Pod Security Standard; port 53 comes from the pod's sysctl.
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            // NET_BIND_SERVICE is not what binds port 53 (a non-root process with
            // no_new_privs never gets it); it is here because the image's binary carries it
            // as a file capability with the effective bit, and the kernel refuses to exec
            // such a binary (EPERM) when the capability is outside the bounding set. The
            // restricted standard allows adding exactly this one; Fargate allows it too.
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["NET_BIND_SERVICE".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's DNS settings with the sidecar: nameserver 127.0.0.1 first, the cluster search
/// path then the pod's own searches, the pod's options with `ndots:5` unless it set ndots.
pub fn dns_config(own: Option<&PodDNSConfig>, namespace: &str, zone: &str) -> PodDNSConfig {
    let mut nameservers = vec!["127.0.0.1".to_string()];
    for ns in own
        .and_then(|c| c.nameservers.as_ref())
        .into_iter()
        .flatten()
    {
        // The resolver uses at most three (glibc MAXNS).
        if !nameservers.contains(ns) && nameservers.len() < 3 {
            nameservers.push(ns.clone());
        }
    }
    let mut searches = vec![
        format!("{namespace}.svc.{zone}"),
        format!("svc.{zone}"),
        zone.to_string(),
    ];
    for s in own.and_then(|c| c.searches.as_ref()).into_iter().flatten() {
        if !searches.contains(s) {
            searches.push(s.clone());
        }
    }
    let mut options: Vec<PodDNSConfigOption> =
        own.and_then(|c| c.options.clone()).unwrap_or_default();
    if !options.iter().any(|o| o.name.as_deref() == Some("ndots")) {
        options.insert(
            0,
            PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("5".into()),
            },
        );
    }
    PodDNSConfig {
        nameservers: Some(nameservers),
        options: Some(options),
        searches: Some(searches),
    }
}

/// The ops that set `net.ipv4.ip_unprivileged_port_start` to 53 or lower, keeping a lower
/// value the pod already set.
fn sysctl_ops(pod: &Pod) -> Result<Vec<PatchOperation>, String> {
    let ours = Sysctl {
        name: PORT_SYSCTL.into(),
        value: "53".into(),
    };
    let security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let Some(security) = security else {
        let ctx = PodSecurityContext {
            sysctls: Some(vec![ours]),
            ..Default::default()
        };
        return Ok(vec![add(&["spec", "securityContext"], to_value(&ctx)?)]);
    };
    let Some(sysctls) = &security.sysctls else {
        return Ok(vec![add(
            &["spec", "securityContext", "sysctls"],
            to_value(&vec![ours])?,
        )]);
    };
    match sysctls.iter().position(|s| s.name == PORT_SYSCTL) {
        Some(i)
            if sysctls[i]
                .value
                .trim()
                .parse::<u32>()
                .is_ok_and(|v| v <= 53) =>
        {
            Ok(vec![])
        }
        Some(i) => Ok(vec![PatchOperation::Replace(ReplaceOperation {
            path: ptr(&[
                "spec",
                "securityContext",
                "sysctls",
                &i.to_string(),
                "value",
            ]),
            value: Value::from("53"),
        })]),
        None => Ok(vec![add(
            &["spec", "securityContext", "sysctls", "-"],
            to_value(&ours)?,
        )]),
    }
}

/// Ops that set these annotations (none for values already in place, so a re-invocation
/// changes nothing). They are built against the object as sent, not the typed pod: a pod
/// without `metadata` (or with `metadata: null`) reads as one with empty metadata, yet the
/// patch must add `/metadata` itself, or it does not apply.
fn annotation_ops(object: &Value, wanted: &BTreeMap<String, String>) -> Vec<PatchOperation> {
    let metadata = object.get("metadata").and_then(Value::as_object);
    let have = metadata
        .and_then(|m| m.get("annotations"))
        .and_then(Value::as_object);
    let all = || serde_json::to_value(wanted).unwrap_or_default();
    match (metadata, have) {
        (None, _) => vec![add(
            &["metadata"],
            serde_json::json!({ "annotations": all() }),
        )],
        (Some(_), None) => vec![add(&["metadata", "annotations"], all())],
        (Some(_), Some(have)) => wanted
            .iter()
            .filter(|(k, v)| have.get(k.as_str()).and_then(Value::as_str) != Some(v.as_str()))
            .map(|(k, v)| add(&["metadata", "annotations", k], Value::from(v.as_str())))
            .collect(),
    }
}

/// The ops applied to a copy of the object as sent: the result must parse as a Pod. Every op
/// is checked, so a patch the API server could not apply (it would refuse the pod's creation)
/// is never sent.
fn apply(object: &Value, ops: &[PatchOperation]) -> Result<Pod, String> {
    let mut patched = object.clone();
    json_patch::patch(&mut patched, ops).map_err(|e| format!("the patch does not apply: {e}"))?;
    serde_json::from_value(patched).map_err(|e| format!("the patched pod does not parse: {e}"))
}

fn mutate(
    pod: &Pod,
    object: &Value,
    namespace: &str,
    decision: &Decision,
    s: &Settings,
) -> Result<Mutation, String> {
    let (reason, micro_vm) = match decision {
        Decision::Skip(reason) => {
            let marked = pod
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(STATUS_ANNOTATION));
            // Re-invoked after our own injection: the pod already says so.
            let ops = if *reason == SkipReason::AlreadyInjected && marked {
                vec![]
            } else {
                annotation_ops(
                    object,
                    &BTreeMap::from([
                        (STATUS_ANNOTATION.to_string(), "skipped".to_string()),
                        (REASON_ANNOTATION.to_string(), reason.label().to_string()),
                    ]),
                )
            };
            apply(object, &ops)?;
            return Ok(Mutation {
                ops,
                warnings: vec![],
                grew: None,
                summary: format!("skipped ({})", reason.label()),
            });
        }
        Decision::Inject { reason, micro_vm } => (reason, *micro_vm),
    };
    let spec = pod.spec.as_ref().ok_or("the pod has no spec")?;
    let container = to_value(&sidecar_container(s))?;
    let mut ops = Vec::new();
    if s.native {
        // First, so that later init containers have DNS too.
        match &spec.init_containers {
            Some(_) => ops.push(add(&["spec", "initContainers", "0"], container)),
            None => ops.push(add(
                &["spec", "initContainers"],
                Value::Array(vec![container]),
            )),
        }
    } else {
        // Appended: the first container stays the default of `kubectl logs` and `exec`.
        ops.push(add(&["spec", "containers", "-"], container));
    }
    ops.push(add(&["spec", "dnsPolicy"], Value::from("None")));
    ops.push(add(
        &["spec", "dnsConfig"],
        to_value(&dns_config(spec.dns_config.as_ref(), namespace, &s.zone))?,
    ));
    ops.extend(sysctl_ops(pod)?);

    // Applied to a copy: the result is what gets sized.
    let patched = apply(object, &ops)?;

    let mut annotations = BTreeMap::from([
        (STATUS_ANNOTATION.to_string(), "injected".to_string()),
        (REASON_ANNOTATION.to_string(), reason.detail()),
    ]);
    let mut warnings = Vec::new();
    let mut grew = None;
    if micro_vm {
        match (fargate::pod_size(pod), fargate::pod_size(&patched)) {
            (Ok(before), Ok(after)) => {
                annotations.insert(SIZE_ANNOTATION.into(), after.to_string());
                if after != before {
                    annotations.insert(SIZE_BEFORE_ANNOTATION.into(), before.to_string());
                    warnings.push(format!(
                        "clusterdns: the DNS sidecar moves this pod from a {before} to a {after} micro-VM"
                    ));
                    grew = Some((before, after));
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                warnings.push(format!("clusterdns: cannot size the micro-VM: {e}"));
            }
        }
    }
    ops.extend(annotation_ops(object, &annotations));
    apply(object, &ops)?;
    Ok(Mutation {
        ops,
        warnings,
        grew,
        summary: format!(
            "injected ({}, {})",
            reason.detail(),
            if s.native {
                "native sidecar"
            } else {
                "container"
            }
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn ctx_with_profile() -> Context {
        let profiles = crate::fargate::profile::parse_profiles(
            r#"[{"fargateProfile":{"fargateProfileName":"fp-web","selectors":[{"namespace":"web-*"}]}}]"#,
            std::path::Path::new("p.json"),
        )
        .unwrap();
        Context::new(Settings {
            profiles,
            own_namespace: Some("clusterdns-system".into()),
            ..Settings::default()
        })
    }

    fn base() -> Value {
        json!({"metadata": {"generateName": "w-"}, "spec": {"containers": [{"name": "app", "image": "app"}]}})
    }

    #[test]
    fn decisions() {
        let ctx = ctx_with_profile();
        let d = |v: Value, ns: &str| decide(&pod(v), ns, &ctx);
        assert_eq!(
            d(base(), "web-a"),
            Decision::Inject {
                reason: InjectReason::Profile("fp-web".into()),
                micro_vm: true
            }
        );
        assert_eq!(d(base(), "other"), Decision::Skip(SkipReason::NotSelected));
        let mut v = base();
        v["spec"]["schedulerName"] = json!("fargate-scheduler");
        assert_eq!(
            d(v, "other"),
            Decision::Inject {
                reason: InjectReason::FargateScheduler,
                micro_vm: true
            }
        );
        let mut v = base();
        v["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "false"});
        assert_eq!(d(v, "web-a"), Decision::Skip(SkipReason::OptOut));
        let mut v = base();
        v["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "true"});
        assert_eq!(
            d(v, "other"),
            Decision::Inject {
                reason: InjectReason::Annotation,
                micro_vm: false
            }
        );
        let mut v = base();
        v["spec"]["hostNetwork"] = json!(true);
        assert_eq!(d(v, "web-a"), Decision::Skip(SkipReason::HostNetwork));
        for policy in ["Default", "None"] {
            let mut v = base();
            v["spec"]["dnsPolicy"] = json!(policy);
            assert_eq!(d(v, "web-a"), Decision::Skip(SkipReason::DnsPolicy));
        }
        let mut v = base();
        v["metadata"]["labels"] = json!({"k8s-app": "kube-dns"});
        assert_eq!(d(v, "web-a"), Decision::Skip(SkipReason::ClusterDns));
        assert_eq!(
            d(base(), "clusterdns-system"),
            Decision::Skip(SkipReason::Webhook)
        );
        let mut v = base();
        v["spec"]["initContainers"] = json!([{"name": "clusterdns", "image": "x"}]);
        v["spec"]["dnsPolicy"] = json!("None");
        assert_eq!(d(v, "web-a"), Decision::Skip(SkipReason::AlreadyInjected));
        ctx.namespaces
            .store(std::sync::Arc::new(BTreeSet::from(["team".to_string()])));
        assert_eq!(
            d(base(), "team"),
            Decision::Inject {
                reason: InjectReason::NamespaceLabel,
                micro_vm: false
            }
        );
    }

    #[test]
    fn dns_config_keeps_the_pods_own_settings() {
        let own = PodDNSConfig {
            nameservers: Some(vec!["10.0.0.2".into(), "127.0.0.1".into()]),
            searches: Some(vec!["corp.example".into(), "svc.cluster.local".into()]),
            options: Some(vec![PodDNSConfigOption {
                name: Some("ndots".into()),
                value: Some("2".into()),
            }]),
        };
        let c = dns_config(Some(&own), "web", "cluster.local");
        assert_eq!(c.nameservers.unwrap(), ["127.0.0.1", "10.0.0.2"]);
        assert_eq!(
            c.searches.unwrap(),
            [
                "web.svc.cluster.local",
                "svc.cluster.local",
                "cluster.local",
                "corp.example"
            ]
        );
        let opts = c.options.unwrap();
        assert_eq!(opts.len(), 1);
        assert_eq!(opts[0].value.as_deref(), Some("2"));
        let c = dns_config(None, "web", "k.test");
        assert_eq!(c.options.unwrap()[0].value.as_deref(), Some("5"));
        assert_eq!(c.searches.unwrap()[2], "k.test");
    }

    #[test]
    fn bad_bodies_are_400_and_never_panic() {
        let ctx = Context::new(Settings::default());
        for (body, want) in [
            (&b"{"[..], "invalid JSON"),
            (b"[]", "no kind"),
            (br#"{"kind":"Pod","apiVersion":"v1"}"#, "kind Pod: expected"),
            (
                br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1beta1"}"#,
                "admission.k8s.io/v1",
            ),
            (
                br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#,
                "without a request",
            ),
            (
                br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":1}}"#,
                "not an AdmissionReview",
            ),
        ] {
            let r = review(body, &ctx);
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let text = v["message"].as_str().unwrap();
            assert!(text.contains(want), "{text}");
        }
        let big = vec![b' '; MAX_BODY + 1];
        assert_eq!(review(&big, &ctx).status, 400);
    }

    /// Found by the webhook fuzz target's seeds: a pod object without `metadata` (or with
    /// `metadata: null`) reads as a Pod with empty metadata, and the patch added
    /// `/metadata/annotations` under a `/metadata` that is not there, so the API server could
    /// not apply it. Every answer's patch must apply to the object as sent.
    #[test]
    fn the_patch_applies_to_a_pod_without_metadata() {
        use base64::Engine;
        let ctx = ctx_with_profile();
        for (namespace, metadata) in [
            ("web-a", None),
            ("other", None),
            ("web-a", Some(Value::Null)),
            ("other", Some(json!({"annotations": null}))),
        ] {
            let mut object = base();
            match &metadata {
                None => drop(object.as_object_mut().unwrap().remove("metadata")),
                Some(m) => object["metadata"] = m.clone(),
            }
            let body = json!({
                "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": "u1", "operation": "CREATE", "namespace": namespace,
                    "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "userInfo": {}, "object": object,
                },
            });
            let r = review(&serde_json::to_vec(&body).unwrap(), &ctx);
            assert_eq!(r.status, 200);
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            let b64 = v["response"]["patch"].as_str().expect("a patch");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
            let mut doc = object.clone();
            json_patch::patch(&mut doc, &patch)
                .unwrap_or_else(|e| panic!("{namespace} {metadata:?}: {e}"));
            let status = if namespace == "web-a" {
                "injected"
            } else {
                "skipped"
            };
            assert_eq!(doc["metadata"]["annotations"][STATUS_ANNOTATION], status);
        }
    }

    #[test]
    fn existing_sysctl_is_lowered_or_kept() {
        let mut v = base();
        v["spec"]["securityContext"] =
            json!({"sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "1024"}]});
        let ops = sysctl_ops(&pod(v.clone())).unwrap();
        let mut doc = v.clone();
        json_patch::patch(&mut doc, &ops).unwrap();
        assert_eq!(doc["spec"]["securityContext"]["sysctls"][0]["value"], "53");
        v["spec"]["securityContext"]["sysctls"][0]["value"] = json!("0");
        assert!(sysctl_ops(&pod(v)).unwrap().is_empty());
    }
}
