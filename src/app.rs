//! The serve mode's wiring: Corefile (given, or the built-in default of [`crate::defaults`])
//! -> data source -> view -> pipelines -> listeners and HTTP endpoints, plus the `reload` and
//! `loop` tasks and [`crate::insight`] (placement, prober). Shared by the binary and the tests
//! (which run several side by side on port 0).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::admin::{self, Routes as HttpRoutes};
use crate::cluster::file_source::{self, DEFAULT_INTERVAL};
use crate::cluster::kube_source::{self, KubeSourceOptions, PodZones};
use crate::cluster::status::SourceStatus;
use crate::cluster::{ClusterView, Store};
use crate::corefile::{self, Config, HostPort};
use crate::dns::build::{self, BuildEnv, ListenKey, Router, Routes};
use crate::dns::kubernetes::PodMode;
use crate::dns::plugins::loop_detect::{self, Fatal};
use crate::dns::server::Bound;
use crate::insight::{self, InsightOptions};
use crate::metrics::{BlockStats, Metrics, ServerObserver};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Serve this Corefile; None uses the built-in default (see [`crate::defaults::corefile`]).
    pub corefile: Option<PathBuf>,
    /// Kubernetes objects from these files; None serves the embedded demo cluster.
    pub manifests: Option<PathBuf>,
    /// `aws eks describe-fargate-profile` JSON: enables `/debug/placement` on the HTTP
    /// endpoints and the placement-mismatch gauge.
    pub fargate_profiles: Option<PathBuf>,
    /// AWS CLI JSON for the prober: its verdicts for the live cluster view are re-judged every
    /// `probe_interval` and exported as `clusterdns_probe_paths`.
    pub aws: Option<PathBuf>,
    /// The same, read from the AWS APIs every `probe_interval` instead of from files.
    pub aws_api: Option<crate::prober::aws_api::ApiOptions>,
    pub probe_interval: Duration,
    /// Also send live DNS probes (UDP and TCP 53) to every DNS endpoint and the DNS service
    /// every `probe_interval`: `clusterdns_probe_up` / `clusterdns_probe_latency_seconds`.
    pub probe_active: bool,
    /// Also export metric names of CoreDNS before 1.7 and 1.11, for older dashboards.
    pub legacy_metrics: bool,
    /// Follow the Kubernetes API through this kubeconfig (also implied by `--corefile`,
    /// which then uses `KUBECONFIG` or the in-cluster service account).
    pub kubeconfig: Option<PathBuf>,
    /// How the API source fetches each kind before watching it (streaming or paged lists).
    pub initial_list: crate::cluster::kube_source::InitialList,
    /// For the built-in default only: where DNS listens.
    pub dns_addr: SocketAddr,
    /// For the built-in default only: the cluster zone, record TTL and pod records mode.
    pub zone: String,
    pub ttl: u32,
    pub pods: PodMode,
    /// For the built-in default only: `forward . <these>` (addresses or resolv.conf files),
    /// with `cache 30`, `loop` and reverse-zone fallthrough as in the EKS Corefile. Empty:
    /// cluster zones only, other names REFUSED (the tests' default: they send nothing off
    /// this machine).
    pub upstreams: Vec<String>,
    /// Sidecar mode: serve this generated Corefile (no cluster data) and probe its upstreams.
    pub sidecar: Option<crate::sidecar::SidecarOptions>,
    /// Connection limits and timeouts of DNS over TCP, for every listener.
    pub tcp: crate::dns::tcp::TcpLimits,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            corefile: None,
            manifests: None,
            kubeconfig: None,
            initial_list: crate::cluster::kube_source::InitialList::Auto,
            fargate_profiles: None,
            aws: None,
            aws_api: None,
            probe_interval: Duration::from_secs(60),
            probe_active: false,
            legacy_metrics: false,
            dns_addr: SocketAddr::from(([127, 0, 0, 1], 1053)),
            zone: "cluster.local".into(),
            ttl: 5,
            pods: PodMode::Insecure,
            upstreams: Vec::new(),
            sidecar: None,
            tcp: Default::default(),
        }
    }
}

/// A server that is running; drop does not stop it: call [`Running::shutdown`].
pub struct Running {
    /// The first DNS address bound (tests and the startup line use it).
    pub dns_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    pub dns_addrs: Vec<SocketAddr>,
    /// `("health" | "ready" | "prometheus", address)` for every HTTP endpoint bound.
    pub http_addrs: Vec<(&'static str, SocketAddr)>,
    pub view: Arc<ClusterView>,
    cancel: CancellationToken,
    fatal: Arc<Fatal>,
    lameduck: Duration,
    draining: Arc<std::sync::atomic::AtomicBool>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Stops accepting, drains queries in flight, and returns when done. With `health {
    /// lameduck DUR }`, keeps serving (and /health says OK) for DUR first.
    pub async fn shutdown(mut self) {
        // Readiness drops first, so endpoints stop sending new clients here, while health
        // stays OK and queries are still answered for the lameduck time.
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if !self.lameduck.is_zero() {
            info!(lameduck = ?self.lameduck, "lameduck: still serving before shutdown");
            tokio::time::sleep(self.lameduck).await;
        }
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Fires when the server must stop on its own (a forwarding loop was detected).
    pub fn fatal_token(&self) -> CancellationToken {
        self.fatal.token.clone()
    }

    /// Why the server stopped on its own, if it did.
    pub fn fatal_message(&self) -> Option<String> {
        self.fatal.message()
    }

    /// Waits until the server stops (after [`Running::cancel_token`] fires).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }

    pub fn http_addr(&self, kind: &str) -> Option<SocketAddr> {
        self.http_addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
    }
}

/// Where the cluster data comes from: `--manifests` files; else the Kubernetes API when asked
/// for (`--kubeconfig`, the Corefile's `kubeconfig`/`endpoint`, or any `--corefile`, which is
/// how clusterdns runs in a cluster: in-cluster service account or `KUBECONFIG`); else the
/// embedded demo cluster. Returns the API source's status (readiness, staleness).
async fn start_source(
    opts: &ServeOptions,
    config: &Config,
    view: &Arc<ClusterView>,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Arc<SourceStatus>>> {
    let verified = config
        .servers
        .iter()
        .filter_map(|b| b.kubernetes())
        .any(|k| matches!(k.pods, corefile::PodsMode::Verified));
    let need_pods =
        verified || opts.fargate_profiles.is_some() || opts.aws.is_some() || opts.aws_api.is_some();
    let zone_first = config
        .servers
        .iter()
        .filter_map(|b| b.kubernetes())
        .any(|k| k.zone_first);
    if let Some(path) = &opts.manifests {
        file_source::start(
            path.clone(),
            view.clone(),
            DEFAULT_INTERVAL,
            need_pods,
            zone_first,
            cancel.clone(),
        )
        // Every load error starts with the file it is about (a directory's member included).
        .context("cannot load --manifests")?;
        return Ok(None);
    }
    let k8s = config.servers.iter().find_map(|b| b.kubernetes());
    if k8s.is_none() {
        // No kubernetes plugin (a forward-only Corefile, the sidecar): no cluster data to
        // wait for, so the view is complete (and /ready true) from the start.
        view.publish(Arc::new(Store::default()), true);
        return Ok(None);
    }
    let from_corefile = k8s.is_some_and(|k| k.kubeconfig.is_some() || k.endpoint.is_some());
    if opts.kubeconfig.is_none() && !from_corefile && opts.corefile.is_none() {
        let set = file_source::embedded_objects().context("embedded demo cluster")?;
        view.publish(Arc::new(Store::from_objects(&set)), true);
        return Ok(None);
    }
    let kube_config = match (
        &opts.kubeconfig,
        k8s.and_then(|k| k.kubeconfig.as_ref()),
        k8s.and_then(|k| k.endpoint.as_ref()),
    ) {
        (Some(path), _, _) => kube_source::config(Some(path), None).await?,
        (None, Some(kc), _) => kube_source::config(Some(&kc.path), kc.context.as_deref()).await?,
        (None, None, Some(url)) => {
            let uri = url
                .parse()
                .with_context(|| format!("kubernetes endpoint {url:?} is not a URL"))?;
            kube::Config::new(uri)
        }
        // Only here was no source named: say where one can come from.
        (None, None, None) => kube_source::config(None, None).await.context(
            "the kubernetes plugin follows the Kubernetes API (in-cluster, KUBECONFIG or \
             --kubeconfig FILE); to serve files instead, pass --manifests PATH",
        )?,
    };
    let api_url = kube_config.cluster_url.to_string();
    let client = kube_source::client_for(kube_config).context("kubernetes")?;
    let m = metrics.clone();
    let source_opts = KubeSourceOptions {
        startup_timeout: k8s
            .map(|k| k.startup_timeout)
            .unwrap_or(Duration::from_secs(5)),
        // Pods cost memory in big clusters: watched whole only where answers (pods
        // verified), placement or the prober need them; for zone-aware answers only their
        // addresses and nodes are kept.
        watch_pods: need_pods,
        pod_zones: if zone_first {
            PodZones::Always
        } else {
            PodZones::OnDemand
        },
        // Nodes are few and tell micro-VM endpoints from node-group ones.
        watch_nodes: true,
        api_url: Some(api_url),
        initial_list: opts.initial_list,
        on_programmed: Some(Arc::new(move |kind, d| {
            m.programming_duration
                .with_label_values(&[kind.as_str()])
                .observe(d.as_secs_f64());
        })),
        ..KubeSourceOptions::default()
    };
    let status = Arc::new(SourceStatus::new());
    let handle = kube_source::spawn(client, view.clone(), status.clone(), source_opts);
    let cancel = cancel.clone();
    tokio::spawn(async move {
        cancel.cancelled().await;
        handle.abort();
    });
    Ok(Some(status))
}

/// Binds every listener. Port 0 with several addresses gets one free port shared by all.
async fn bind_all(keys: &[ListenKey]) -> anyhow::Result<BTreeMap<ListenKey, Bound>> {
    let mut out = BTreeMap::new();
    let mut chosen: HashMap<u16, u16> = HashMap::new();
    for key in keys {
        let port = chosen.get(&key.port).copied().unwrap_or(key.port);
        let bound = Bound::bind(key.socket_addr(port)).await?;
        chosen.insert(key.port, bound.local_addr().port());
        out.insert(*key, bound);
    }
    Ok(out)
}

/// HTTP endpoints by address, merged across blocks (CoreDNS shares them too).
fn http_plan(config: &Config) -> Vec<(&'static str, HostPort)> {
    let mut out: Vec<(&'static str, HostPort)> = Vec::new();
    for b in &config.servers {
        let mut push = |kind, hp: &HostPort| {
            if !out.iter().any(|(k, h)| *k == kind && h == hp) {
                out.push((kind, hp.clone()));
            }
        };
        if let Some(h) = b.health() {
            push("health", &h.addr);
        }
        if let Some(r) = b.ready() {
            push("ready", &r.addr);
        }
        if let Some(p) = b.prometheus() {
            push("prometheus", &p.addr);
        }
    }
    out
}

/// What the HTTP endpoints read.
struct HttpState {
    view: Arc<ClusterView>,
    status: Option<Arc<SourceStatus>>,
    metrics: Arc<Metrics>,
    debug: Option<admin::DebugRender>,
    draining: Arc<std::sync::atomic::AtomicBool>,
}

async fn start_http(
    config: &Config,
    state: HttpState,
    tasks: &mut JoinSet<()>,
    cancel: &CancellationToken,
) -> anyhow::Result<Vec<(&'static str, SocketAddr)>> {
    let HttpState {
        view,
        status,
        metrics,
        debug,
        draining,
    } = state;
    let mut by_addr: BTreeMap<SocketAddr, (tokio::net::TcpListener, HttpRoutes)> = BTreeMap::new();
    let mut bound = Vec::new();
    for (kind, hp) in http_plan(config) {
        let want = admin::resolve(&hp.host, hp.port)
            .await
            .with_context(|| format!("{kind} {hp}"))?;
        // Same address as another endpoint (port 0 excepted): one listener serves both.
        let key = by_addr
            .keys()
            .find(|a| want.port() != 0 && **a == want)
            .copied();
        let addr = match key {
            Some(a) => a,
            None => {
                let l = tokio::net::TcpListener::bind(want)
                    .await
                    .with_context(|| format!("{kind}: cannot listen on {want}"))?;
                let a = l.local_addr()?;
                by_addr.insert(a, (l, HttpRoutes::default()));
                a
            }
        };
        if let Some((_, routes)) = by_addr.get_mut(&addr) {
            routes.debug = debug.clone();
            match kind {
                "health" => routes.health = true,
                "ready" => {
                    let view = view.clone();
                    let status = status.clone();
                    let draining = draining.clone();
                    routes.ready = Some(Arc::new(move || match &status {
                        _ if draining.load(std::sync::atomic::Ordering::SeqCst) => {
                            vec![
                                "shutting down (lameduck): still answering, taking no new clients"
                                    .to_string(),
                            ]
                        }
                        // The API source says exactly what it waits for (RBAC, unreachable).
                        Some(s) => s.not_ready_reasons(),
                        None if view.is_synced() => Vec::new(),
                        None => vec![
                            "kubernetes: waiting for the first complete load of the cluster data"
                                .to_string(),
                        ],
                    }));
                }
                _ => {
                    let m = metrics.clone();
                    routes.metrics = Some(Arc::new(move || m.render()));
                }
            }
        }
        bound.push((kind, addr));
    }
    for (_, (listener, routes)) in by_addr {
        tasks.spawn(admin::serve(listener, routes, cancel.clone()));
    }
    Ok(bound)
}

pub async fn start(opts: ServeOptions) -> anyhow::Result<Running> {
    let (text, path) = match (&opts.sidecar, &opts.corefile) {
        (Some(s), _) => (
            crate::sidecar::corefile(s)?,
            PathBuf::from("<sidecar Corefile>"),
        ),
        (None, Some(p)) => (
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the Corefile {}", p.display()))?,
            p.clone(),
        ),
        (None, None) => (
            crate::defaults::corefile(&crate::defaults::BuiltIn {
                dns_addr: opts.dns_addr,
                zone: &opts.zone,
                ttl: opts.ttl,
                pods: opts.pods,
                upstreams: &opts.upstreams,
            })?,
            PathBuf::from("<built-in Corefile>"),
        ),
    };
    let config = corefile::parse_str(&text, &path, &|n| std::env::var(n).ok())?;
    let cancel = CancellationToken::new();
    let view = ClusterView::new();
    let metrics = Arc::new(Metrics::new());
    let status = start_source(&opts, &config, &view, &metrics, &cancel).await?;
    let fatal = Arc::new(Fatal::default());
    let env = BuildEnv {
        view: view.clone(),
        fatal: fatal.clone(),
    };
    let built = build::build_all(&config, &env)?;
    let plan = build::listeners(&config)?;
    let keys: Vec<ListenKey> = plan.keys().copied().collect();
    // Before any socket: the TCP connection limit's default is derived from the result.
    match crate::dns::tcp::raise_open_file_limit() {
        Ok(n) => tracing::debug!(open_file_limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let tcp = crate::dns::tcp::TcpServing::observed(opts.tcp.clone(), Some(metrics.clone()));
    let bound = bind_all(&keys).await?;
    metrics.set_legacy(opts.legacy_metrics);
    watch_source_metrics(&metrics, &view, status.clone());
    let insight = InsightOptions {
        fargate_profiles: opts.fargate_profiles.as_ref(),
        aws: opts.aws.as_ref(),
        aws_api: opts.aws_api.as_ref(),
        probe_interval: opts.probe_interval,
        probe_active: opts.probe_active,
    };
    let debug = insight::start(&insight, &view, &metrics, &cancel)?;
    if let Some(s) = opts
        .sidecar
        .as_ref()
        .filter(|s| !s.probe_interval.is_zero())
    {
        tokio::spawn(crate::sidecar::probe_loop(
            crate::sidecar::probe_targets(&config),
            s.probe_name.clone(),
            s.probe_interval,
            metrics.clone(),
            cancel.clone(),
        ));
    }
    let mut tasks = JoinSet::new();
    let mut routers: BTreeMap<ListenKey, Arc<Router>> = BTreeMap::new();
    let mut dns_addrs = Vec::new();
    let mut probed = HashSet::new();
    for (key, b) in bound {
        let blocks = &plan[&key];
        let router = Arc::new(Router::new(
            Routes::new(&config, blocks, &built, key.port),
            view.clone(),
        ));
        let addr = b.local_addr();
        dns_addrs.push(addr);
        for &i in blocks {
            // One probe per block, through the first listener that serves it.
            if let Some(l) = built[i].loop_detect.as_ref().filter(|_| probed.insert(i)) {
                tasks.spawn(loop_detect::send_probes(l.clone(), addr, cancel.clone()));
            }
        }
        let observer = Arc::new(ServerObserver::new(
            metrics.clone(),
            server_label(&key, addr),
        ));
        let timeouts = blocks.iter().find_map(|&i| config.servers[i].timeouts());
        tasks.spawn(b.serve_observed(
            router.clone(),
            Some(observer),
            tcp.for_listener(timeouts),
            cancel.clone(),
        ));
        routers.insert(key, router);
    }
    metrics.set_blocks(block_stats(&config, &built, &plan, &dns_addrs, &keys));
    set_plugin_enabled(&metrics, &config, &plan, &dns_addrs, &keys);
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = HttpState {
        view: view.clone(),
        status,
        metrics: metrics.clone(),
        debug,
        draining: draining.clone(),
    };
    let http_addrs = start_http(&config, state, &mut tasks, &cancel).await?;
    let lameduck = config
        .servers
        .iter()
        .filter_map(|b| b.health())
        .map(|h| h.lameduck)
        .max()
        .unwrap_or_default();
    if let (Some(reload), Some(p)) = (
        config.servers.iter().find_map(|b| b.reload()).cloned(),
        opts.corefile.clone(),
    ) {
        tasks.spawn(reload_loop(Reloader {
            path: p,
            last: text,
            interval: reload.interval,
            jitter: reload.jitter,
            env,
            routers,
            listen: keys.clone(),
            dns_addrs: dns_addrs.clone(),
            metrics: metrics.clone(),
            http: http_plan(&config),
            cancel: cancel.clone(),
        }));
    }
    let dns_addr = *dns_addrs
        .first()
        .context("the Corefile has no server block to listen for")?;
    Ok(Running {
        dns_addr,
        dns_addrs,
        metrics,
        http_addrs,
        view,
        cancel,
        fatal,
        lameduck,
        draining,
        tasks,
    })
}

/// CoreDNS's `server` label: `dns://:53` on every interface, else `dns://IP:53`.
fn server_label(key: &ListenKey, bound: SocketAddr) -> String {
    crate::metrics::server_label(bound, key.ip.is_unspecified())
}

/// For each block, the listener it is first served on and its cache/forward handlers.
fn block_stats(
    config: &Config,
    built: &[build::BuiltBlock],
    plan: &BTreeMap<ListenKey, Vec<usize>>,
    dns_addrs: &[SocketAddr],
    keys: &[ListenKey],
) -> Vec<BlockStats> {
    let mut out = Vec::new();
    for (i, block) in config.servers.iter().enumerate() {
        let Some((key, addr)) = keys
            .iter()
            .zip(dns_addrs)
            .find(|(k, _)| plan.get(*k).is_some_and(|b| b.contains(&i)))
        else {
            continue;
        };
        out.push(BlockStats {
            server: server_label(key, *addr),
            zones: block
                .zones
                .iter()
                .map(|z| z.zone.as_str())
                .collect::<Vec<_>>()
                .join(","),
            cache: built[i].cache.clone(),
            forward: built[i].forward.clone(),
        });
    }
    out
}

fn set_plugin_enabled(
    metrics: &Metrics,
    config: &Config,
    plan: &BTreeMap<ListenKey, Vec<usize>>,
    dns_addrs: &[SocketAddr],
    keys: &[ListenKey],
) {
    for (key, addr) in keys.iter().zip(dns_addrs) {
        let server = server_label(key, *addr);
        for &i in plan.get(key).into_iter().flatten() {
            let block = &config.servers[i];
            for z in &block.zones {
                for p in &block.plugins {
                    metrics
                        .plugin_enabled
                        .with_label_values(&[&server, &z.zone, "", p.kind().name()])
                        .set(1);
                }
            }
        }
    }
}

pub use crate::cluster::one_shot::objects_from_api;

/// Gauges that mirror the cluster view, refreshed at every scrape.
fn watch_source_metrics(
    metrics: &Metrics,
    view: &Arc<ClusterView>,
    status: Option<Arc<SourceStatus>>,
) {
    let view = view.clone();
    metrics.on_scrape(move |m| {
        let snap = view.snapshot();
        let ready = status.as_ref().map(|s| s.ready()).unwrap_or(snap.synced);
        m.source_synced.set(i64::from(ready));
        let stale = status
            .as_ref()
            .and_then(|s| s.stale_since())
            .and_then(|t| t.elapsed().ok())
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        m.source_stale_seconds.set(stale);
        let store = &snap.store;
        for (kind, n) in [
            ("namespaces", store.namespaces.len()),
            ("services", store.services.len()),
            ("endpointslices", store.slices.len()),
            ("pods", store.pods.len()),
            ("nodes", store.nodes.len()),
        ] {
            m.objects.with_label_values(&[kind]).set(n as i64);
        }
        let (mut vm, mut ec2, mut unknown) = (0i64, 0i64, 0i64);
        for entry in snap.services() {
            for e in &entry.endpoints {
                match e.node_name().and_then(|n| store.nodes.get(n)) {
                    Some(n) if n.micro_vm => vm += 1,
                    Some(_) => ec2 += 1,
                    None => unknown += 1,
                }
            }
        }
        m.endpoints_by_compute
            .with_label_values(&["micro-vm"])
            .set(vm);
        m.endpoints_by_compute.with_label_values(&["ec2"]).set(ec2);
        m.endpoints_by_compute
            .with_label_values(&["unknown"])
            .set(unknown);
    });
}

struct Reloader {
    path: PathBuf,
    last: String,
    interval: Duration,
    jitter: Duration,
    env: BuildEnv,
    routers: BTreeMap<ListenKey, Arc<Router>>,
    listen: Vec<ListenKey>,
    /// The bound address of each `listen` key, same order (for metric labels).
    dns_addrs: Vec<SocketAddr>,
    metrics: Arc<Metrics>,
    http: Vec<(&'static str, HostPort)>,
    cancel: CancellationToken,
}

impl Reloader {
    fn next_wait(&self) -> Duration {
        let jitter = self.jitter.min(self.interval / 2);
        let span = jitter.as_millis() as u64 * 2;
        let offset = if span == 0 {
            0
        } else {
            rand::random::<u64>() % (span + 1)
        };
        (self.interval - jitter) + Duration::from_millis(offset)
    }

    /// Re-reads the Corefile; a changed, valid one replaces the pipelines of every listener.
    fn check(&mut self) {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                error!(path = %self.path.display(), "reload: cannot read the Corefile, keeping the running one: {e}");
                return;
            }
        };
        if text == self.last {
            return;
        }
        self.last = text.clone();
        match self.apply(&text) {
            Ok(()) => info!(path = %self.path.display(), "reload: new Corefile in service"),
            Err(e) => error!("reload: {e:#}; the running configuration stays in service"),
        }
    }

    fn apply(&mut self, text: &str) -> anyhow::Result<()> {
        let config = corefile::parse_str(text, &self.path, &|n| std::env::var(n).ok())?;
        let built = build::build_all(&config, &self.env)?;
        let plan = build::listeners(&config)?;
        for key in plan.keys() {
            if !self.listen.contains(key) {
                warn!(listen = %key, "reload: a new listen address needs a restart to take effect");
            }
        }
        for key in &self.listen {
            if !plan.contains_key(key) {
                warn!(listen = %key, "reload: this listen address was removed; it keeps its old configuration until a restart");
            }
        }
        if http_plan(&config) != self.http {
            warn!("reload: health/ready/prometheus address changes need a restart to take effect");
        }
        // All pipelines were built before any is swapped in: a reload is all or nothing.
        for (key, blocks) in &plan {
            if let Some(router) = self.routers.get(key) {
                router.swap(Routes::new(&config, blocks, &built, key.port));
            }
        }
        self.metrics.set_blocks(block_stats(
            &config,
            &built,
            &plan,
            &self.dns_addrs,
            &self.listen,
        ));
        if built.iter().any(|b| b.loop_detect.is_some()) {
            info!("reload: loop detection runs at start only");
        }
        if let Some(r) = config.servers.iter().find_map(|b| b.reload()) {
            self.interval = r.interval;
            self.jitter = r.jitter;
        }
        Ok(())
    }
}

async fn reload_loop(mut r: Reloader) {
    loop {
        let wait = r.next_wait();
        tokio::select! {
            _ = r.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        r.check();
    }
}
