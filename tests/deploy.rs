//! The install manifests, as `kubectl apply -k manifests/overlays/<name>` would send them:
//!
//! ```text
//!  manifests/overlays/*  ──kubectl kustomize──> objects ──strict typed round trip──> checks
//!                                                  │                      (PSS restricted, HA,
//!                                                  │                       RBAC = WATCHED, ...)
//!                                                  └── ConfigMap's Corefile ──> clusterdns serve
//!                                                        in a network namespace of its own, dig
//! ```
//!
//! Every directory of manifests/overlays is checked, whoever added it. A failure names the
//! overlay, the object (kind namespace/name) and the field.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterdns::cluster::kube_source::WATCHED;
use k8s_openapi::api::apps::v1 as apps;
use k8s_openapi::api::autoscaling::v2 as autoscaling;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::policy::v1 as policy;
use k8s_openapi::api::rbac::v1 as rbac;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use support::process::wait_for_lines;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// kubectl (with kustomize built in) is on CI's machine image; elsewhere a missing kubectl
/// skips, under CI it fails.
fn have_kubectl() -> bool {
    let ok = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok || !in_ci(),
        "kubectl is missing (CI=true): it renders the overlays"
    );
    if !ok {
        eprintln!("skipped: kubectl not installed");
    }
    ok
}

/// Every overlay directory, sorted.
fn overlays() -> Vec<PathBuf> {
    let dir = Path::new(REPO).join("manifests/overlays");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("read_dir").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(
        out.len() >= 4,
        "expected the overlays node-groups, fargate, replace-coredns, trial"
    );
    out
}

fn name_of(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

/// `kubectl kustomize DIR` as JSON values, one per object; the error says what kubectl said.
fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .map_err(|e| format!("kubectl: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "kubectl kustomize {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut objects = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !v.is_null() {
            objects.push(v);
        }
    }
    Ok(objects)
}

fn describe(v: &Value) -> String {
    let kind = v["kind"].as_str().unwrap_or("?");
    let name = v["metadata"]["name"].as_str().unwrap_or("?");
    match v["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

/// The first place where `back` lost or changed what `orig` said: a field the typed object
/// does not know (k8s-openapi ignores unknown fields, so a dropped field is an unknown one).
fn first_difference(orig: &Value, back: &Value, path: &str) -> Option<String> {
    match (orig, back) {
        (Value::Object(a), Value::Object(b)) => a.iter().find_map(|(k, va)| {
            let p = format!("{path}.{k}");
            match b.get(k) {
                None => Some(format!("{p}: unknown field")),
                Some(vb) => first_difference(va, vb, &p),
            }
        }),
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (va, vb))| first_difference(va, vb, &format!("{path}[{i}]"))),
        (a, b) if a == b => None,
        (a, b) => Some(format!(
            "{path}: {a} does not survive the typed object (got {b})"
        )),
    }
}

fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(v, &back, "$") {
        Some(d) => Err(d),
        None => Ok(()),
    }
}

// cert-manager has no k8s-openapi type: these hold the fields its v1 API defines that a
// webhook's certificates use, and refuse any other (deny_unknown_fields), so a typo fails
// here as a k8s-openapi kind fails its round trip.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct CertManager<S> {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: S,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct CertificateSpec {
    secret_name: String,
    issuer_ref: IssuerRef,
    common_name: Option<String>,
    dns_names: Option<Vec<String>>,
    ip_addresses: Option<Vec<String>>,
    uris: Option<Vec<String>>,
    duration: Option<String>,
    renew_before: Option<String>,
    usages: Option<Vec<String>>,
    is_ca: Option<bool>,
    revision_history_limit: Option<i32>,
    private_key: Option<PrivateKey>,
    secret_template: Option<SecretTemplate>,
    subject: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct IssuerRef {
    name: String,
    kind: Option<String>,
    group: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct PrivateKey {
    algorithm: Option<String>,
    encoding: Option<String>,
    size: Option<u32>,
    rotation_policy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct SecretTemplate {
    annotations: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct IssuerSpec {
    self_signed: Option<SelfSigned>,
    ca: Option<CaIssuer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct SelfSigned {
    crl_distribution_points: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct CaIssuer {
    secret_name: String,
    crl_distribution_points: Option<Vec<String>>,
    ocsp_servers: Option<Vec<String>>,
}

fn strict<T: DeserializeOwned>(v: &Value) -> Result<(), String> {
    serde_json::from_value::<T>(v.clone())
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Deserializes one rendered object strictly into its type.
fn check_strict(v: &Value) -> Result<(), String> {
    use k8s_openapi::api::admissionregistration::v1 as admission;
    let api_version = v["apiVersion"].as_str().unwrap_or("");
    let kind = v["kind"].as_str().unwrap_or("");
    match (api_version, kind) {
        ("v1", "Namespace") => roundtrip::<core::Namespace>(v),
        ("v1", "ServiceAccount") => roundtrip::<core::ServiceAccount>(v),
        ("v1", "ConfigMap") => roundtrip::<core::ConfigMap>(v),
        ("v1", "Secret") => roundtrip::<core::Secret>(v),
        ("v1", "Service") => roundtrip::<core::Service>(v),
        ("apps/v1", "Deployment") => roundtrip::<apps::Deployment>(v),
        ("apps/v1", "DaemonSet") => roundtrip::<apps::DaemonSet>(v),
        ("policy/v1", "PodDisruptionBudget") => roundtrip::<policy::PodDisruptionBudget>(v),
        ("autoscaling/v2", "HorizontalPodAutoscaler") => {
            roundtrip::<autoscaling::HorizontalPodAutoscaler>(v)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<rbac::ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<rbac::ClusterRoleBinding>(v)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<rbac::Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<rbac::RoleBinding>(v),
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            roundtrip::<admission::MutatingWebhookConfiguration>(v)
        }
        ("admissionregistration.k8s.io/v1", "ValidatingWebhookConfiguration") => {
            roundtrip::<admission::ValidatingWebhookConfiguration>(v)
        }
        ("cert-manager.io/v1", "Certificate") => strict::<CertManager<CertificateSpec>>(v),
        ("cert-manager.io/v1", "Issuer" | "ClusterIssuer") => strict::<CertManager<IssuerSpec>>(v),
        _ => Err(format!(
            "no type known for apiVersion {api_version:?} kind {kind:?} (add it to check_strict)"
        )),
    }
}

/// Renders every overlay and checks every object strictly; all failures in one message.
fn render_all() -> BTreeMap<String, Vec<Value>> {
    let mut all = BTreeMap::new();
    let mut errors = Vec::new();
    for dir in overlays() {
        let overlay = name_of(&dir);
        match render(&dir) {
            Err(e) => errors.push(format!("overlay {overlay}: {e}")),
            Ok(objects) => {
                for o in &objects {
                    if let Err(e) = check_strict(o) {
                        errors.push(format!("overlay {overlay}: {}: {e}", describe(o)));
                    }
                }
                all.insert(overlay, objects);
            }
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    all
}

fn typed<T: DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("checked strictly before")
}

fn of_kind<'a>(objects: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    objects.iter().filter(move |o| o["kind"] == kind)
}

/// The Deployments running the cluster DNS (`clusterdns serve`), as opposed to other workloads
/// an overlay may add (the sidecar webhook).
fn dns_deployments(objects: &[Value]) -> Vec<apps::Deployment> {
    of_kind(objects, "Deployment")
        .map(typed::<apps::Deployment>)
        .filter(|d| {
            pod_spec(d).containers.iter().any(|c| {
                c.args
                    .as_ref()
                    .is_some_and(|a| a.first().map(String::as_str) == Some("serve"))
            })
        })
        .collect()
}

fn pod_spec(d: &apps::Deployment) -> &core::PodSpec {
    d.spec
        .template
        .spec
        .as_ref()
        .expect("a Deployment has a pod spec")
}

fn pod_labels(d: &apps::Deployment) -> BTreeMap<String, String> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn match_labels(
    s: Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
) -> BTreeMap<String, String> {
    s.and_then(|s| s.match_labels.clone()).unwrap_or_default()
}

/// The restricted Pod Security Standard (latest), plus a read-only root filesystem, for one
/// pod spec; every violation, by field.
fn restricted_violations(spec: &core::PodSpec) -> Vec<String> {
    let mut v = Vec::new();
    for (flag, name) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if flag == Some(true) {
            v.push(format!("{name}: true"));
        }
    }
    const VOLUMES: [&str; 8] = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for vol in spec.volumes.iter().flatten() {
        let json = serde_json::to_value(vol).unwrap();
        for key in json.as_object().unwrap().keys() {
            if key != "name" && !VOLUMES.contains(&key.as_str()) {
                v.push(format!("volume {}: type {key} is not allowed", vol.name));
            }
        }
    }
    let pod = spec.security_context.clone().unwrap_or_default();
    if pod.run_as_user == Some(0) {
        v.push("securityContext.runAsUser: 0".into());
    }
    let pod_seccomp = pod.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    if matches!(pod_seccomp, Some(t) if t != "RuntimeDefault" && t != "Localhost") {
        v.push(format!("securityContext.seccompProfile: {pod_seccomp:?}"));
    }
    if let Some(sysctls) = &pod.sysctls {
        for s in sysctls {
            v.push(format!("securityContext.sysctls: {} (not needed)", s.name));
        }
    }
    let containers = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers);
    for c in containers {
        let at = format!("container {}", c.name);
        let sc = c.security_context.clone().unwrap_or_default();
        if sc.privileged == Some(true) {
            v.push(format!("{at}: privileged"));
        }
        if sc.allow_privilege_escalation != Some(false) {
            v.push(format!("{at}: allowPrivilegeEscalation must be false"));
        }
        if sc.read_only_root_filesystem != Some(true) {
            v.push(format!("{at}: readOnlyRootFilesystem must be true"));
        }
        if sc.run_as_non_root.or(pod.run_as_non_root) != Some(true) {
            v.push(format!(
                "{at}: runAsNonRoot must be true (pod or container)"
            ));
        }
        if sc.run_as_user == Some(0) {
            v.push(format!("{at}: runAsUser 0"));
        }
        let seccomp = sc
            .seccomp_profile
            .as_ref()
            .map(|s| s.type_.as_str())
            .or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            v.push(format!(
                "{at}: seccompProfile must be RuntimeDefault or Localhost"
            ));
        }
        let caps = sc.capabilities.clone().unwrap_or_default();
        if !caps.drop.iter().flatten().any(|c| c == "ALL") {
            v.push(format!("{at}: capabilities.drop must contain ALL"));
        }
        for add in caps.add.iter().flatten() {
            if add != "NET_BIND_SERVICE" {
                v.push(format!("{at}: capabilities.add {add} is not allowed"));
            }
        }
        if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
            v.push(format!("{at}: procMount"));
        }
        for p in c.ports.iter().flatten() {
            if p.host_port.is_some_and(|h| h != 0) {
                v.push(format!("{at}: hostPort {:?}", p.host_port));
            }
        }
    }
    v
}

/// `lameduck Ns` of the Corefile's health block, in seconds (0 without).
fn lameduck_secs(corefile: &str) -> i64 {
    let re = regex::Regex::new(r"lameduck\s+(\d+)s").unwrap();
    re.captures(corefile)
        .map(|c| c[1].parse().unwrap())
        .unwrap_or(0)
}

/// The Corefile a DNS Deployment mounts, from the rendered ConfigMap.
fn corefile_of(objects: &[Value], d: &apps::Deployment) -> String {
    let volume = pod_spec(d)
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .expect("the DNS Deployment mounts a ConfigMap");
    let ns = d.metadata.namespace.as_deref();
    let cm = of_kind(objects, "ConfigMap")
        .map(typed::<core::ConfigMap>)
        .find(|c| {
            c.metadata.name == Some(volume.name.clone()) && c.metadata.namespace.as_deref() == ns
        })
        .unwrap_or_else(|| panic!("ConfigMap {} is not in the overlay", volume.name));
    cm.data
        .and_then(|d| d.get("Corefile").cloned())
        .expect("the ConfigMap has a Corefile key")
}

fn compute_type(d: &apps::Deployment) -> Option<String> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get("eks.amazonaws.com/compute-type").cloned())
}

/// Every rule of the issue that a rendered overlay must keep, all failures named.
fn check_overlay(overlay: &str, objects: &[Value]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut fail = |what: String| errors.push(format!("overlay {overlay}: {what}"));

    // Pod Security Standard `restricted` for every workload, ours or not.
    for w in objects
        .iter()
        .filter(|o| o["kind"] == "Deployment" || o["kind"] == "DaemonSet")
    {
        let spec: core::PodSpec =
            serde_json::from_value(w["spec"]["template"]["spec"].clone()).expect("pod spec");
        for v in restricted_violations(&spec) {
            fail(format!("{}: {v}", describe(w)));
        }
        for c in &spec.containers {
            let image = c.image.as_deref().unwrap_or("");
            if image.is_empty() || image.ends_with(":latest") || !image.contains(':') {
                fail(format!(
                    "{}: container {}: image {image:?} needs a pinned tag (kustomize images:)",
                    describe(w),
                    c.name
                ));
            }
        }
    }

    let dns = dns_deployments(objects);
    // The sidecar webhook's overlay may hold the webhook alone: the rules above are all.
    if dns.is_empty() && overlay.contains("webhook") {
        return errors;
    }
    if dns.len() != 1 {
        fail(format!("{} cluster DNS Deployments, want 1", dns.len()));
        return errors;
    }
    let d = &dns[0];
    let at = format!(
        "Deployment {}/{}",
        d.metadata.namespace.as_deref().unwrap_or(""),
        d.metadata.name.as_deref().unwrap_or("")
    );
    let spec = pod_spec(d);
    let labels = pod_labels(d);
    let fargate = compute_type(d).as_deref() == Some("fargate");

    // High availability.
    // The HPA (checked below) owns the count; a count here would be reset by every apply.
    if let Some(n) = d.spec.replicas {
        fail(format!(
            "{at}: replicas {n}: leave the count to the HorizontalPodAutoscaler"
        ));
    }
    if spec.priority_class_name.as_deref() != Some("system-cluster-critical") {
        fail(format!(
            "{at}: priorityClassName must be system-cluster-critical"
        ));
    }
    if spec.dns_policy.as_deref() != Some("Default") {
        fail(format!(
            "{at}: dnsPolicy must be Default (else it forwards to itself)"
        ));
    }
    let spread: Vec<&str> = spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .filter(|t| selects(&match_labels(t.label_selector.as_ref()), &labels))
        .map(|t| t.topology_key.as_str())
        .collect();
    if !spread.contains(&"topology.kubernetes.io/zone") {
        fail(format!(
            "{at}: no topologySpreadConstraint over zones selecting its pods"
        ));
    }
    match (fargate, spread.contains(&"kubernetes.io/hostname")) {
        (false, false) => fail(format!("{at}: no topologySpreadConstraint over hostnames")),
        (true, true) => fail(format!(
            "{at}: on Fargate each pod is its own node: no spreading over hostnames"
        )),
        _ => {}
    }
    if fargate {
        let tolerates = spec.tolerations.iter().flatten().any(|t| {
            t.key.as_deref() == Some("eks.amazonaws.com/compute-type")
                && t.value.as_deref() == Some("fargate")
        });
        if !tolerates {
            fail(format!(
                "{at}: no toleration of eks.amazonaws.com/compute-type=fargate"
            ));
        }
    }

    // Graceful rollout: the grace period outlasts lameduck and the 5 s drain, with margin;
    // liveness cannot kill a pod during lameduck; the probes hit the Corefile's ports.
    let corefile = corefile_of(objects, d);
    let lameduck = lameduck_secs(&corefile);
    if lameduck < 5 {
        fail(format!(
            "{at}: the Corefile's health needs lameduck (>= 5s), has {lameduck}s"
        ));
    }
    let grace = spec.termination_grace_period_seconds.unwrap_or(30);
    if grace < lameduck + 15 {
        fail(format!(
            "{at}: terminationGracePeriodSeconds {grace} < lameduck {lameduck} + 5 s drain + 10 s margin"
        ));
    }
    let c = &spec.containers[0];
    let ports: BTreeMap<String, i32> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    let probe_port = |p: Option<&core::Probe>, path: &str| -> Option<i32> {
        let get = p?.http_get.as_ref()?;
        if get.path.as_deref() != Some(path) {
            return None;
        }
        match &get.port {
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => Some(*n),
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => {
                ports.get(s).copied()
            }
        }
    };
    if probe_port(c.liveness_probe.as_ref(), "/health") != Some(8080) {
        fail(format!(
            "{at}: livenessProbe must GET /health on 8080 (the health plugin)"
        ));
    }
    if probe_port(c.readiness_probe.as_ref(), "/ready") != Some(8181) {
        fail(format!(
            "{at}: readinessProbe must GET /ready on 8181 (the ready plugin)"
        ));
    }
    if let Some(l) = &c.liveness_probe {
        let window = i64::from(l.period_seconds.unwrap_or(10) * l.failure_threshold.unwrap_or(3));
        if window <= lameduck {
            fail(format!(
                "{at}: liveness gives up after {window}s, within lameduck"
            ));
        }
    }
    for (needle, what) in [
        ("health", "health"),
        ("ready", "ready"),
        ("prometheus :9153", "prometheus :9153"),
    ] {
        if !corefile.contains(needle) {
            fail(format!("{at}: the Corefile lacks {what}"));
        }
    }
    let resources = c.resources.clone().unwrap_or_default();
    for (set, what) in [
        (
            resources.requests.as_ref().and_then(|r| r.get("cpu")),
            "requests.cpu",
        ),
        (
            resources.requests.as_ref().and_then(|r| r.get("memory")),
            "requests.memory",
        ),
        (
            resources.limits.as_ref().and_then(|r| r.get("memory")),
            "limits.memory",
        ),
    ] {
        if set.is_none() {
            fail(format!("{at}: resources.{what} missing"));
        }
    }
    if fargate {
        // requests + 256 MB must be exactly a Fargate size: 0.25 vCPU with 0.5 GB.
        let r = resources.requests.clone().unwrap_or_default();
        let cpu = r.get("cpu").map(|q| q.0.as_str());
        let mem = r.get("memory").map(|q| q.0.as_str());
        if (cpu, mem) != (Some("250m"), Some("256Mi")) {
            fail(format!(
                "{at}: Fargate requests {cpu:?}/{mem:?}: want 250m/256Mi (+256 MB = 0.25 vCPU 0.5 GB)"
            ));
        }
    }

    // Autoscaling.
    let hpas: Vec<autoscaling::HorizontalPodAutoscaler> =
        of_kind(objects, "HorizontalPodAutoscaler")
            .map(typed)
            .filter(|h: &autoscaling::HorizontalPodAutoscaler| {
                h.spec.scale_target_ref.kind == "Deployment"
                    && Some(&h.spec.scale_target_ref.name) == d.metadata.name.as_ref()
            })
            .collect();
    match hpas.as_slice() {
        [h] => {
            let s = &h.spec;
            if s.min_replicas.unwrap_or(1) < 2 {
                fail(format!("{at}: HPA minReplicas < 2"));
            }
            let on_cpu = s
                .metrics
                .iter()
                .flatten()
                .any(|m| m.resource.as_ref().is_some_and(|r| r.name == "cpu"));
            if !on_cpu {
                fail(format!("{at}: HPA does not scale on CPU"));
            }
            let b = s.behavior.as_ref();
            if b.and_then(|b| b.scale_up.as_ref()).is_none()
                || b.and_then(|b| b.scale_down.as_ref()).is_none()
            {
                fail(format!(
                    "{at}: HPA needs a behavior for scaleUp and scaleDown"
                ));
            }
        }
        other => fail(format!("{at}: {} HPAs target it, want 1", other.len())),
    }

    // The kube-dns Service, when the overlay has one (replace-coredns keeps CoreDNS's).
    let services: Vec<core::Service> = of_kind(objects, "Service").map(typed).collect();
    let dns_services: Vec<&core::Service> = services
        .iter()
        .filter(|s| {
            s.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| selects(sel, &labels))
        })
        .collect();
    for s in &dns_services {
        let sp = s.spec.as_ref().unwrap();
        let name = s.metadata.name.as_deref().unwrap_or("");
        if sp.traffic_distribution.as_deref() != Some("PreferClose") {
            fail(format!(
                "Service {name}: trafficDistribution must be PreferClose"
            ));
        }
        for proto in ["UDP", "TCP"] {
            let ok = sp.ports.iter().flatten().any(|p| {
                p.port == 53
                    && p.protocol.as_deref() == Some(proto)
                    && match &p.target_port {
                        Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(n),
                        ) => ports.get(n) == Some(&53),
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n)) => {
                            *n == 53
                        }
                        None => true,
                    }
            });
            if !ok {
                fail(format!(
                    "Service {name}: no {proto} port 53 reaching the container's 53"
                ));
            }
        }
    }
    let keeps_coredns_service = overlay == "replace-coredns";
    match (dns_services.len(), keeps_coredns_service) {
        (0, true) | (1, false) => {}
        (n, true) => fail(format!(
            "{n} Services select the DNS pods: this overlay must leave CoreDNS's kube-dns alone"
        )),
        (n, false) => fail(format!(
            "{n} Services select the DNS pods, want 1 (kube-dns)"
        )),
    }

    // Disruption budgets: one covers the pods, none overlaps CoreDNS's pods (the eviction API
    // refuses pods under two budgets). Beside CoreDNS, CoreDNS's own budget covers them.
    let coredns_pods: BTreeMap<String, String> = [
        ("k8s-app", "kube-dns"),
        ("eks.amazonaws.com/component", "coredns"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let pdbs: Vec<policy::PodDisruptionBudget> =
        of_kind(objects, "PodDisruptionBudget").map(typed).collect();
    let mut covering = 0;
    for p in &pdbs {
        let sel = match_labels(p.spec.as_ref().and_then(|s| s.selector.as_ref()));
        let name = p.metadata.name.as_deref().unwrap_or("");
        if selects(&sel, &coredns_pods) {
            fail(format!(
                "PodDisruptionBudget {name} also selects CoreDNS's pods"
            ));
        }
        if selects(&sel, &labels) {
            covering += 1;
        }
    }
    let want = usize::from(!keeps_coredns_service);
    if covering != want {
        fail(format!(
            "{covering} PodDisruptionBudgets cover the DNS pods, want {want}"
        ));
    }

    // RBAC: the ServiceAccount exists, is bound, and its ClusterRole grants exactly WATCHED.
    let sa = spec.service_account_name.clone().unwrap_or_default();
    let ns = d.metadata.namespace.clone().unwrap_or_default();
    if !of_kind(objects, "ServiceAccount")
        .any(|o| o["metadata"]["name"] == sa.as_str() && o["metadata"]["namespace"] == ns.as_str())
    {
        fail(format!(
            "{at}: ServiceAccount {ns}/{sa} is not in the overlay"
        ));
    }
    let roles: Vec<String> = of_kind(objects, "ClusterRoleBinding")
        .map(typed::<rbac::ClusterRoleBinding>)
        .filter(|b| {
            b.subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount" && s.name == sa && s.namespace.as_deref() == Some(&ns)
            })
        })
        .map(|b| b.role_ref.name)
        .collect();
    for b in of_kind(objects, "ClusterRoleBinding").map(typed::<rbac::ClusterRoleBinding>) {
        for s in b
            .subjects
            .iter()
            .flatten()
            .filter(|s| s.kind == "ServiceAccount")
        {
            let exists = of_kind(objects, "ServiceAccount").any(|o| {
                o["metadata"]["name"] == s.name.as_str()
                    && o["metadata"]["namespace"].as_str() == s.namespace.as_deref()
            });
            if !exists {
                fail(format!(
                    "ClusterRoleBinding {}: subject ServiceAccount {}/{} is not in the overlay",
                    b.metadata.name.as_deref().unwrap_or(""),
                    s.namespace.as_deref().unwrap_or(""),
                    s.name
                ));
            }
        }
    }
    match roles.as_slice() {
        [role] => match of_kind(objects, "ClusterRole")
            .map(typed::<rbac::ClusterRole>)
            .find(|r| r.metadata.name.as_ref() == Some(role))
        {
            Some(r) => {
                if let Err(e) = rbac_matches_watched(&r) {
                    fail(format!("ClusterRole {role}: {e}"));
                }
            }
            None => fail(format!(
                "ClusterRole {role} is bound but not in the overlay"
            )),
        },
        other => fail(format!(
            "{at}: ServiceAccount {ns}/{sa} is bound to {} ClusterRoles, want 1",
            other.len()
        )),
    }
    errors
}

type Grant = (String, String, String);

/// The ClusterRole grants exactly `WATCHED`: every (group, resource, verb) the code uses and
/// nothing else.
fn rbac_matches_watched(role: &rbac::ClusterRole) -> Result<(), String> {
    let mut granted: BTreeSet<Grant> = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        if rule.resource_names.is_some() || rule.non_resource_urls.is_some() {
            return Err("rules with resourceNames or nonResourceURLs: the code uses none".into());
        }
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let needed: BTreeSet<Grant> = WATCHED
        .iter()
        .flat_map(|(g, r, verbs)| {
            verbs
                .iter()
                .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
        })
        .collect();
    let missing: Vec<&Grant> = needed.difference(&granted).collect();
    let extra: Vec<&Grant> = granted.difference(&needed).collect();
    if missing.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "grants differ from kube_source::WATCHED: missing {missing:?}, not used by the code {extra:?}"
        ))
    }
}

#[test]
fn every_overlay_renders_and_deserializes_strictly() {
    if !have_kubectl() {
        return;
    }
    let all = render_all();
    for (overlay, objects) in &all {
        assert!(!objects.is_empty(), "overlay {overlay} renders nothing");
    }
}

#[test]
fn every_overlay_is_highly_available_restricted_and_least_privileged() {
    if !have_kubectl() {
        return;
    }
    let mut errors = Vec::new();
    for (overlay, objects) in render_all() {
        errors.extend(check_overlay(&overlay, &objects));
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
}

#[test]
fn the_trial_namespace_enforces_the_restricted_standard() {
    if !have_kubectl() {
        return;
    }
    let objects = render(&Path::new(REPO).join("manifests/overlays/trial")).unwrap();
    let ns: core::Namespace = typed(of_kind(&objects, "Namespace").next().expect("a Namespace"));
    let labels = ns.metadata.labels.unwrap_or_default();
    for mode in ["enforce", "audit", "warn"] {
        assert_eq!(
            labels
                .get(&format!("pod-security.kubernetes.io/{mode}"))
                .map(String::as_str),
            Some("restricted"),
            "{mode}"
        );
    }
    for o in &objects {
        if let Some(n) = o["metadata"]["namespace"].as_str() {
            assert_eq!(Some(n), ns.metadata.name.as_deref(), "{}", describe(o));
        }
    }
}

// The checks catch what they are for: each broken object below must be refused, by name.

#[test]
fn an_unknown_field_is_named_with_its_path() {
    let mut d = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "clusterdns", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [{"name": "c", "image": "clusterdns:1"}]}
            }
        }
    });
    assert_eq!(check_strict(&d), Ok(()));
    d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always".into();
    let err = check_strict(&d).unwrap_err();
    assert!(
        err.contains("$.spec.template.spec.containers[0].imagePullPolicyy: unknown field"),
        "{err}"
    );
    let cert = serde_json::json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "w"},
        "spec": {"secretName": "w", "issuerRef": {"name": "i"}, "dnsName": ["x"]}
    });
    assert!(check_strict(&cert).unwrap_err().contains("dnsName"));
    let odd = serde_json::json!({"apiVersion": "example.com/v1", "kind": "Thing"});
    assert!(check_strict(&odd).unwrap_err().contains("no type known"));
}

#[test]
fn a_missing_or_extra_rbac_rule_is_refused() {
    let role = |rules: Value| -> rbac::ClusterRole {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "r"}, "rules": rules,
        }))
        .unwrap()
    };
    let exact = role(serde_json::json!([
        {"apiGroups": [""], "resources": ["namespaces", "services", "pods", "nodes"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]));
    assert_eq!(rbac_matches_watched(&exact), Ok(()));
    let missing = role(serde_json::json!([
        {"apiGroups": [""], "resources": ["namespaces", "services", "pods", "nodes"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]},
    ]));
    let err = rbac_matches_watched(&missing).unwrap_err();
    assert!(err.contains("\"endpointslices\", \"watch\""), "{err}");
    let extra = role(serde_json::json!([
        {"apiGroups": [""], "resources": ["namespaces", "services", "pods", "nodes", "secrets"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
    ]));
    assert!(rbac_matches_watched(&extra)
        .unwrap_err()
        .contains("secrets"));
}

#[test]
fn a_broken_overlay_fails_with_its_name() {
    if !have_kubectl() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kustomization.yaml"),
        "resources: [missing.yaml]\n",
    )
    .unwrap();
    let err = render(dir.path()).unwrap_err();
    assert!(
        err.contains("kubectl kustomize") && err.contains("missing.yaml"),
        "{err}"
    );
}

#[test]
fn restricted_violations_are_named() {
    let spec: core::PodSpec = serde_json::from_value(serde_json::json!({
        "hostNetwork": true,
        "containers": [{
            "name": "c",
            "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
            "ports": [{"containerPort": 53, "hostPort": 53}]
        }],
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}]
    }))
    .unwrap();
    let v = restricted_violations(&spec).join("\n");
    for want in [
        "hostNetwork",
        "allowPrivilegeEscalation",
        "readOnlyRootFilesystem",
        "runAsNonRoot",
        "seccompProfile",
        "drop must contain ALL",
        "NET_ADMIN",
        "hostPort",
        "hostPath",
    ] {
        assert!(v.contains(want), "{want} not reported in:\n{v}");
    }
}

/// A child process killed on drop, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dig` inside the network namespace of `pid`, polled until it answers `want`.
fn dig_in_netns(pid: u32, name: &str, tcp: bool, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "--target",
            &pid.to_string(),
            "--net",
            "dig",
            "@127.0.0.1",
            "-p",
            "53",
        ])
        .args(["+short", "+time=1", "+tries=1", name]);
        if tcp {
            cmd.arg("+tcp");
        }
        let out = cmd.output().expect("nsenter dig");
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if text == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dig {name} (tcp={tcp}) in the server's namespace: {text:?}, want {want:?}; {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The Corefile of each overlay's ConfigMap, served as the Deployment runs it: on port 53
/// and the probe ports, in a network namespace of its own (so nothing else on the machine is
/// in the way), with the demo cluster in place of the API; answered over UDP and TCP.
#[test]
fn the_configmap_corefile_is_served_by_clusterdns_serve() {
    if !have_kubectl() {
        return;
    }
    let netns_ok = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        netns_ok || !in_ci(),
        "unshare --net failed (CI=true): needs root"
    );
    if !netns_ok {
        eprintln!("skipped: cannot create a network namespace here");
        return;
    }
    let mut corefiles = BTreeSet::new();
    for (overlay, objects) in render_all() {
        for d in dns_deployments(&objects) {
            corefiles.insert((corefile_of(&objects, &d), overlay.clone()));
        }
    }
    assert!(!corefiles.is_empty());
    let demo = Path::new(REPO).join("manifests/examples/demo-cluster.yaml");
    let mut seen = BTreeSet::new();
    for (corefile, overlay) in corefiles {
        if !seen.insert(corefile.clone()) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Corefile");
        std::fs::write(&path, &corefile).unwrap();
        let child = Command::new("unshare")
            .args(["--net", "--", "sh", "-c"])
            .arg(r#"ip link set lo up && exec "$0" serve --corefile "$1" --manifests "$2""#)
            .arg(env!("CARGO_BIN_EXE_clusterdns"))
            .arg(&path)
            .arg(&demo)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let mut server = Running(child);
        let lines = wait_for_lines(
            &mut server.0,
            &[":53 (udp+tcp)", ":8080", ":8181", ":9153"],
            Duration::from_secs(20),
        );
        eprintln!("overlay {overlay}: {lines:?}");
        let pid = server.0.id();
        dig_in_netns(pid, "nginx.demo.svc.cluster.local", false, "10.100.12.34");
        dig_in_netns(pid, "nginx.demo.svc.cluster.local", true, "10.100.12.34");
    }
}
