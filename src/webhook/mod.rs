//! Webhook mode: a mutating admission webhook that gives the pods that will run on micro-VMs
//! (and the pods that opt in) the DNS sidecar.
//!
//! ```text
//! API server ──HTTPS POST /mutate (AdmissionReview v1)──> server (rustls, hyper)
//!     ──> inject::review(body, ctx): decide (Fargate profiles, scheduler, opt-in/out) ──> patch
//!     <── AdmissionReview { allowed: true, JSONPatch, warnings }
//!
//! start-up: certificate files ─> certs::Reloading (polled, swapped whole)
//!           --upstream or kube-system/kube-dns ─> the sidecar's upstream
//!           /version ─> native sidecar (1.29+) or ordinary container
//!           Namespace watch ─> namespaces labelled clusterdns.io/inject=enabled ─> ctx
//! ```
//!
//! It never denies a pod: every failure is an `allowed: true` answer with a message (or a 400
//! for a body that is not an AdmissionReview), and the webhook configuration says
//! `failurePolicy: Ignore`, so pods are created even while the webhook is down.

pub mod certs;
pub mod inject;
pub mod server;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use k8s_openapi::api::core::v1::{Namespace, Service};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::cluster::kube_source;
pub use inject::{review, Context, Outcome, Reviewed, Settings};

/// Native sidecars need Kubernetes 1.29+ (older API servers refuse probes on init containers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NativeSidecar {
    /// Native on API servers 1.29 and later, an ordinary container before (or when the
    /// version cannot be read).
    #[default]
    Auto,
    Always,
    Never,
}

/// `--generate-certs`: write a CA and a serving certificate instead of serving.
#[derive(Debug, Clone)]
pub struct CertOptions {
    pub dir: PathBuf,
    pub service: String,
    pub namespace: String,
    pub extra_names: Vec<String>,
    pub days: u32,
}

#[derive(Debug, Clone)]
pub struct WebhookOptions {
    pub listen: SocketAddr,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub sidecar_image: String,
    pub fargate_profiles: Option<PathBuf>,
    /// The cluster DNS service IP(s); empty: read kube-system/kube-dns.
    pub upstreams: Vec<String>,
    pub zone: String,
    pub kubeconfig: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub native_sidecar: NativeSidecar,
    pub sidecar_cpu: String,
    pub sidecar_memory: String,
    pub sidecar_memory_limit: String,
    /// The webhook's namespace (its pods are never injected).
    pub namespace: Option<String>,
    /// The webhook's own pod (for `--sidecar-image self`).
    pub pod_name: Option<String>,
    pub cert_reload_interval: Duration,
    pub generate_certs: Option<CertOptions>,
}

const API_TIMEOUT: Duration = Duration::from_secs(10);
/// After SIGTERM: not ready but still serving for this long, so the API server (which follows
/// the Service's endpoints) stops calling this replica before its listener closes.
const LAMEDUCK: Duration = Duration::from_secs(3);

/// The webhook's metrics, in their own registry.
pub struct WebhookMetrics {
    registry: Registry,
    injections: IntCounterVec,
    skips: IntCounterVec,
    ignored: IntCounterVec,
    errors: IntCounterVec,
    size_increases: IntCounter,
    duration: Histogram,
    cert_reloads: IntCounterVec,
    namespaces: IntGauge,
}

impl Default for WebhookMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl WebhookMetrics {
    pub fn new() -> WebhookMetrics {
        let reg = Registry::new();
        let vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])
                .expect("constant metric definition");
            reg.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let injections = vec(
            "clusterdns_webhook_injections_total",
            "Pods given the DNS sidecar, by what selected them.",
            "reason",
        );
        let skips = vec(
            "clusterdns_webhook_skips_total",
            "Pods not given the DNS sidecar, by reason.",
            "reason",
        );
        let ignored = vec(
            "clusterdns_webhook_ignored_total",
            "Admission requests that were not pod creations.",
            "reason",
        );
        let errors = vec(
            "clusterdns_webhook_errors_total",
            "Admission requests answered without a patch because of an error.",
            "kind",
        );
        let cert_reloads = vec(
            "clusterdns_webhook_cert_reloads_total",
            "Serving certificate reloads after a file change, by result.",
            "result",
        );
        let size_increases = IntCounter::new(
            "clusterdns_webhook_micro_vm_size_increases_total",
            "Injections that made the pod's micro-VM bigger.",
        )
        .expect("constant metric definition");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "clusterdns_webhook_admission_duration_seconds",
                "Time to answer one AdmissionReview, body read included.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0,
            ]),
        )
        .expect("constant metric definition");
        let namespaces = IntGauge::new(
            "clusterdns_webhook_inject_namespaces",
            "Namespaces labelled clusterdns.io/inject=enabled.",
        )
        .expect("constant metric definition");
        for m in [
            Box::new(size_increases.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(namespaces.clone()),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            reg.register(m).expect("metric names are unique");
        }
        // Every label value from the start, so a rate() has a zero to start from.
        for r in inject::SkipReason::ALL {
            skips.with_label_values(&[r.label()]);
        }
        for r in [
            "fargate-profile",
            "fargate-scheduler",
            "annotation",
            "namespace-label",
        ] {
            injections.with_label_values(&[r]);
        }
        for k in ["bad-request", "pod"] {
            errors.with_label_values(&[k]);
        }
        WebhookMetrics {
            registry: reg,
            injections,
            skips,
            ignored,
            errors,
            size_increases,
            duration,
            cert_reloads,
            namespaces,
        }
    }

    pub fn record(&self, outcome: &Outcome, took: Duration) {
        self.duration.observe(took.as_secs_f64());
        match outcome {
            Outcome::Injected { reason, grew } => {
                self.injections.with_label_values(&[reason]).inc();
                if grew.is_some() {
                    self.size_increases.inc();
                }
            }
            Outcome::Skipped(r) => self.skips.with_label_values(&[r.label()]).inc(),
            Outcome::Ignored(r) => self.ignored.with_label_values(&[r]).inc(),
            Outcome::BadRequest(_) => self.errors.with_label_values(&["bad-request"]).inc(),
            Outcome::Error(_) => self.errors.with_label_values(&["pod"]).inc(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}

/// `1.29`, `1.28+` (EKS), or from `v1.29.3-eks-...`.
pub fn version_at_least(info: &k8s_openapi::apimachinery::pkg::version::Info, minor: u32) -> bool {
    let digits = |s: &str| -> Option<u32> {
        s.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .ok()
    };
    let (major, min) = match (digits(&info.major), digits(&info.minor)) {
        (Some(a), Some(b)) => (a, b),
        _ => {
            let mut parts = info.git_version.trim_start_matches('v').split('.');
            match (parts.next().and_then(digits), parts.next().and_then(digits)) {
                (Some(a), Some(b)) => (a, b),
                _ => return false,
            }
        }
    };
    major > 1 || (major == 1 && min >= minor)
}

fn check_quantity(flag: &str, q: &str, memory: bool) -> anyhow::Result<()> {
    let quantity = k8s_openapi::apimachinery::pkg::api::resource::Quantity(q.to_string());
    let r = if memory {
        crate::fargate::sizing::bytes(&quantity)
    } else {
        crate::fargate::sizing::cpu_millis(&quantity)
    };
    r.map(|_| ())
        .map_err(|e| anyhow::anyhow!("{flag} {q}: not a Kubernetes quantity: {e}"))
}

/// `--sidecar-image self`: the image of the container running this webhook, read from its
/// own Pod, so that a kustomize `images:` override of the Deployment reaches the sidecar too.
async fn own_image(
    client: Option<&kube::Client>,
    namespace: Option<&str>,
    pod: Option<&str>,
) -> anyhow::Result<String> {
    let (Some(client), Some(namespace), Some(pod)) = (client, namespace, pod) else {
        bail!(
            "--sidecar-image self needs the Kubernetes API and the pod's namespace and name \
             (POD_NAMESPACE and POD_NAME from the downward API)"
        );
    };
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    let me = tokio::time::timeout(API_TIMEOUT, api.get(pod))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {API_TIMEOUT:?}"))??;
    let containers = me.spec.map(|s| s.containers).unwrap_or_default();
    containers
        .iter()
        .find(|c| c.args.as_ref().and_then(|a| a.first()).map(String::as_str) == Some("webhook"))
        .or(containers.first())
        .and_then(|c| c.image.clone())
        .ok_or_else(|| anyhow::anyhow!("pod {namespace}/{pod} has no container image"))
}

/// The cluster DNS service IPs from kube-system/kube-dns.
async fn kube_dns(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let api: kube::Api<Service> = kube::Api::namespaced(client.clone(), "kube-system");
    let svc = tokio::time::timeout(API_TIMEOUT, api.get("kube-dns"))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {API_TIMEOUT:?}"))??;
    let spec = svc.spec.unwrap_or_default();
    let ips: Vec<String> = spec
        .cluster_ips
        .filter(|v| !v.is_empty())
        .or(spec.cluster_ip.map(|ip| vec![ip]))
        .unwrap_or_default()
        .into_iter()
        .filter(|ip| ip.parse::<IpAddr>().is_ok())
        .collect();
    if ips.is_empty() {
        bail!("the Service has no cluster IP (headless?)");
    }
    Ok(ips)
}

/// Keeps `ctx.namespaces` equal to the namespaces labelled `clusterdns.io/inject=enabled`.
/// All namespaces are watched (few, small objects) and filtered here, so a namespace that
/// loses the label is seen as a change, not as a silent disappearance.
async fn watch_namespaces(
    client: kube::Client,
    ctx: Arc<Context>,
    metrics: Arc<WebhookMetrics>,
    synced: Arc<AtomicBool>,
    cancel: CancellationToken,
) {
    use futures::StreamExt;
    use kube::runtime::watcher::{self, Event};
    use kube::runtime::WatchStreamExt;
    let enabled = |ns: &Namespace| {
        ns.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(inject::NAMESPACE_LABEL))
            .map(String::as_str)
            == Some(inject::NAMESPACE_LABEL_VALUE)
    };
    let name = |ns: &Namespace| ns.metadata.name.clone().unwrap_or_default();
    let api: kube::Api<Namespace> = kube::Api::all(client);
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut building = BTreeSet::new();
    let mut last_error = None;
    let publish = |set: BTreeSet<String>| {
        metrics
            .namespaces
            .set(i64::try_from(set.len()).unwrap_or(i64::MAX));
        ctx.namespaces.store(Arc::new(set));
    };
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return,
            e = stream.next() => e,
        };
        match event {
            None => return,
            Some(Err(e)) => {
                let text = e.to_string();
                if last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("webhook: namespace watch: {text}");
                    last_error = Some(text);
                }
            }
            Some(Ok(Event::Init)) => building.clear(),
            Some(Ok(Event::InitApply(ns))) => {
                if enabled(&ns) {
                    building.insert(name(&ns));
                }
            }
            Some(Ok(Event::InitDone)) => {
                last_error = None;
                publish(std::mem::take(&mut building));
                synced.store(true, Ordering::Release);
            }
            Some(Ok(Event::Apply(ns))) => {
                let mut set = (**ctx.namespaces.load()).clone();
                let changed = if enabled(&ns) {
                    set.insert(name(&ns))
                } else {
                    set.remove(&name(&ns))
                };
                if changed {
                    publish(set);
                }
            }
            Some(Ok(Event::Delete(ns))) => {
                let mut set = (**ctx.namespaces.load()).clone();
                if set.remove(&name(&ns)) {
                    publish(set);
                }
            }
        }
    }
}

fn generate(c: &CertOptions) -> anyhow::Result<u8> {
    let (ca, cert, key) = certs::self_signed(&c.service, &c.namespace, &c.extra_names, c.days)
        .context("generating the certificates")?;
    std::fs::create_dir_all(&c.dir).with_context(|| format!("{}", c.dir.display()))?;
    for (name, body) in [("ca.crt", &ca), ("tls.crt", &cert), ("tls.key", &key)] {
        let path = c.dir.join(name);
        std::fs::write(&path, body).with_context(|| format!("{}", path.display()))?;
    }
    let d = c.dir.display();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "wrote {d}/ca.crt, {d}/tls.crt, {d}/tls.key (valid {} days, for {}.{}.svc)\n\
         install them:\n  \
         kubectl -n {ns} create secret tls clusterdns-webhook-tls --cert={d}/tls.crt --key={d}/tls.key\n  \
         kubectl patch mutatingwebhookconfiguration clusterdns-sidecar --type=json \
         -p \"[{{\\\"op\\\":\\\"add\\\",\\\"path\\\":\\\"/webhooks/0/clientConfig/caBundle\\\",\\\"value\\\":\\\"$(base64 -w0 {d}/ca.crt)\\\"}}]\"",
        c.days,
        c.service,
        c.namespace,
        ns = c.namespace,
    );
    Ok(0)
}

/// The entry point of `clusterdns webhook`: serves until `shutdown` completes; errors at
/// start-up (unreadable certificate, no upstream) are returned for exit status 2.
pub async fn run(
    opts: WebhookOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<u8> {
    if let Some(c) = &opts.generate_certs {
        return generate(c);
    }
    check_quantity("--sidecar-cpu", &opts.sidecar_cpu, false)?;
    check_quantity("--sidecar-memory", &opts.sidecar_memory, true)?;
    check_quantity("--sidecar-memory-limit", &opts.sidecar_memory_limit, true)?;
    for u in &opts.upstreams {
        if u.parse::<IpAddr>().is_err() && u.parse::<SocketAddr>().is_err() {
            bail!("--upstream {u}: expected the cluster DNS service IP (IP or IP:PORT)");
        }
    }
    let certified = certs::Reloading::load(&opts.tls_cert, &opts.tls_key)?;
    let profiles = match &opts.fargate_profiles {
        Some(p) => crate::fargate::load_profiles(p)?,
        None => Vec::new(),
    };

    // The API: needed for kube-dns (without --upstream), the version and the namespace watch.
    let client = match kube_source::config(opts.kubeconfig.as_deref(), None).await {
        Ok(cfg) => Some(kube_source::client_for(cfg)?),
        Err(e) if opts.kubeconfig.is_some() || opts.upstreams.is_empty() => {
            bail!(
                "{e}{}",
                if opts.upstreams.is_empty() {
                    "; without --upstream the webhook reads kube-system/kube-dns through the \
                     API: pass --upstream <cluster DNS service IP> or --kubeconfig FILE"
                } else {
                    ""
                }
            )
        }
        Err(e) => {
            tracing::warn!(
                "webhook: no Kubernetes API ({e}): the namespace label {}={} is not followed \
                 and the API server version is unknown",
                inject::NAMESPACE_LABEL,
                inject::NAMESPACE_LABEL_VALUE
            );
            None
        }
    };
    let upstreams = match (&client, opts.upstreams.is_empty()) {
        (_, false) => opts.upstreams.clone(),
        (Some(c), true) => kube_dns(c).await.map_err(|e| {
            anyhow::anyhow!(
                "no --upstream given and kube-system/kube-dns could not be read: {e}; pass \
                 --upstream <cluster DNS service IP>"
            )
        })?,
        (None, true) => bail!("no --upstream and no Kubernetes API to read kube-dns from"),
    };
    let image = if opts.sidecar_image == "self" {
        own_image(
            client.as_ref(),
            opts.namespace.as_deref(),
            opts.pod_name.as_deref(),
        )
        .await
        .map_err(|e| anyhow::anyhow!("--sidecar-image self: {e}"))?
    } else {
        opts.sidecar_image.clone()
    };
    if image.is_empty() {
        bail!("--sidecar-image: empty");
    }
    let native = match opts.native_sidecar {
        NativeSidecar::Always => true,
        NativeSidecar::Never => false,
        NativeSidecar::Auto => match &client {
            Some(c) => match tokio::time::timeout(API_TIMEOUT, c.apiserver_version()).await {
                Ok(Ok(info)) => {
                    let native = version_at_least(&info, 29);
                    tracing::info!(
                        "webhook: API server {}: injecting {}",
                        info.git_version,
                        if native {
                            "a native sidecar (init container, restartPolicy: Always)"
                        } else {
                            "an ordinary container (native sidecars need 1.29+)"
                        }
                    );
                    native
                }
                Ok(Err(e)) => {
                    tracing::warn!("webhook: cannot read the API server version ({e}): injecting an ordinary container; --native-sidecar always overrides");
                    false
                }
                Err(_) => {
                    tracing::warn!("webhook: the API server version did not answer: injecting an ordinary container; --native-sidecar always overrides");
                    false
                }
            },
            None => false,
        },
    };

    let ctx = Arc::new(Context::new(Settings {
        image,
        upstreams,
        zone: opts.zone.trim_end_matches('.').to_string(),
        native,
        cpu_request: opts.sidecar_cpu.clone(),
        memory_request: opts.sidecar_memory.clone(),
        memory_limit: opts.sidecar_memory_limit.clone(),
        own_namespace: opts.namespace.clone(),
        profiles,
    }));
    let metrics = Arc::new(WebhookMetrics::new());
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    let synced = Arc::new(AtomicBool::new(client.is_none()));
    if let Some(c) = client {
        tasks.spawn(watch_namespaces(
            c,
            ctx.clone(),
            metrics.clone(),
            synced.clone(),
            cancel.clone(),
        ));
    }
    {
        let metrics = metrics.clone();
        tasks.spawn(certified.clone().watch(
            opts.cert_reload_interval,
            move |ok| {
                metrics
                    .cert_reloads
                    .with_label_values(&[if ok { "ok" } else { "error" }])
                    .inc();
            },
            cancel.clone(),
        ));
    }

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS configuration")?
    .with_no_client_auth()
    .with_cert_resolver(certified);
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("--listen {}", opts.listen))?;
    let addr = listener.local_addr()?;
    let mut banner = format!("clusterdns: serving webhook on https://{addr}\n");
    if let Some(m) = opts.metrics {
        let l = tokio::net::TcpListener::bind(m)
            .await
            .with_context(|| format!("--metrics {m}"))?;
        banner.push_str(&format!(
            "clusterdns: serving metrics on http://{}\n",
            l.local_addr()?
        ));
        let render = metrics.clone();
        let routes = crate::admin::Routes {
            metrics: Some(Arc::new(move || render.render())),
            ..Default::default()
        };
        tasks.spawn(crate::admin::serve(l, routes, cancel.clone()));
    }
    let draining = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(server::Shared {
        ctx,
        metrics,
        ready: {
            let draining = draining.clone();
            Arc::new(move || {
                if draining.load(Ordering::Acquire) {
                    vec!["webhook: shutting down".to_string()]
                } else if synced.load(Ordering::Acquire) {
                    vec![]
                } else {
                    vec!["webhook: waiting for the initial list of namespaces".to_string()]
                }
            })
        },
    });
    let serving = tokio::spawn(server::serve(listener, acceptor, shared, cancel.clone()));
    // Tests and scripts read this to find the port chosen for port 0.
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(banner.as_bytes());
    let _ = out.flush();
    drop(out);

    shutdown.await;
    tracing::info!("webhook: shutting down: not ready, serving for {LAMEDUCK:?} more");
    draining.store(true, Ordering::Release);
    tokio::time::sleep(LAMEDUCK).await;
    cancel.cancel();
    let _ = serving.await;
    tasks.shutdown().await;
    Ok(0)
}
