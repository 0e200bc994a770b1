//! The Kubernetes source: list and watch the API with kube-rs, keep stripped objects, publish
//! snapshots.
//!
//! ```text
//!  API server ──watch──> one task per kind ──Msg──> publisher thread ──> ClusterView
//!  (namespaces, services,   strip on arrival,        Store, coalesce,     (snapshot swap)
//!   endpointslices, pods,   buffer a relist          publish <= ~5 ms
//!   nodes)                  until InitDone           after a change
//!                 └─ errors, reachability ──> SourceStatus (readiness, staleness, counts)
//! ```
//!
//! Full API objects live only between decoding and [`model`](super::model)'s `from_api`; the
//! store holds stripped objects, which keeps memory small with 50 000 pods. A relist (after a
//! 410, a history reset or a restart) replaces that kind's objects whole at `InitDone`, so
//! nothing phantom or lost remains. Failed watches never remove records: the last complete view
//! keeps serving and [`SourceStatus::stale_since`] says since when it may be out of date.
//!
//! Initial lists: a streaming list (one watch with `sendInitialEvents`, see [`InitialList`])
//! where the API server offers it, so each object is decoded from its own event line and no
//! page of 500 is ever held; paged lists where it does not. Both end in the same `InitDone`.
//!
//! Staleness, per kind: a kind goes stale when a list or watch attempt fails or stalls, and is
//! current again when its watch delivers an event or a bookmark, or its first list completes.
//! A relist alone is not enough: in a 410 storm every relist may succeed while every watch
//! fails at once, and counting the relists would flap between stale and current (and log it)
//! on every cycle. On a quiet cluster a recovery is thus seen at the next bookmark, which the
//! API server sends about once a minute. The source is stale while any kind is.
//!
//! Stalls: a watch that delivers nothing, neither events nor bookmarks, for
//! [`KubeSourceOptions::stall_timeout`] (default 2 min; the API server's watch cache sends a
//! bookmark about once a minute) is presumed dead (a half-open connection, a stuck proxy) and
//! restarted with a relist. A list request that gets no answer bytes for that long is retried,
//! with twice the patience each time (up to 8x) so that a slow API server still gets to
//! finish. kube's client has no read timeout, so without this a stuck connection would hang
//! the kind until kube's own 295 s idle timeout (watches) or forever (lists).
//!
//! Logging: one line when the source goes stale (naming what failed), one when it is current
//! again (with how long it was stale and how many attempts failed), and a summary every
//! [`KubeSourceOptions::summary_interval`] in between. Each failed attempt is at debug level.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use http_body_util::BodyExt;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Status;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use super::model::{intern, EndpointSlice, Namespace, Node, Pod, Service, ServiceKind};
use super::snapshot::{Changed, Key, Store};
use super::status::{ResourceKind, SourceStatus};
use super::view::ClusterView;
use super::wire::{ApiEndpointSlice, ApiNamespace, ApiNode, ApiPod, ApiService};
use super::zones::PodIpTable;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// kube-rs's text for an unreadable file quotes the path twice and repeats the OS
    /// error; this one names the path once and then only the reason.
    #[error("kubeconfig {path:?}: {}", kubeconfig_reason(error))]
    Kubeconfig {
        path: PathBuf,
        error: kube::config::KubeconfigError,
    },
    #[error("kubeconfig context {context:?}: {source}")]
    Context {
        context: String,
        source: kube::config::KubeconfigError,
    },
    #[error(
        "no Kubernetes configuration (no KUBECONFIG, no ~/.kube/config, not in a cluster): {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

fn kubeconfig_reason(error: &kube::config::KubeconfigError) -> String {
    match error {
        kube::config::KubeconfigError::ReadConfig(io, _) => format!("cannot read: {io}"),
        other => crate::report::one_line(other),
    }
}

/// The client configuration: the kubeconfig file `kubeconfig` if given; else `KUBECONFIG` (or
/// `~/.kube/config`); else the in-cluster service account. `context` picks a kubeconfig context.
/// `config.cluster_url` is what [`KubeSourceOptions::api_url`] wants.
pub async fn config(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Config, SourceError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_string),
        ..KubeConfigOptions::default()
    };
    match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(|error| SourceError::Kubeconfig {
                path: path.to_path_buf(),
                error,
            })?;
            kube::Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|error| SourceError::Kubeconfig {
                    path: path.to_path_buf(),
                    error,
                })
        }
        // A named context only exists in a kubeconfig, so there is nothing to fall back to.
        (None, Some(context)) => kube::Config::from_kubeconfig(&options)
            .await
            .map_err(|source| SourceError::Context {
                context: context.to_string(),
                source,
            }),
        (None, None) => kube::Config::infer().await.map_err(SourceError::Infer),
    }
}

/// A client for [`config`]'s configuration, without kube's built-in request retries (the
/// source's watch loop does its own).
pub async fn client(
    kubeconfig: Option<&Path>,
    context: Option<&str>,
) -> Result<kube::Client, SourceError> {
    client_for(config(kubeconfig, context).await?)
}

/// A client for an explicit configuration (e.g. the Corefile's `endpoint URL`).
pub fn client_for(mut config: kube::Config) -> Result<kube::Client, SourceError> {
    info!(url = %config.cluster_url, "kubernetes: API server");
    // kube retries 429/503/504 up to 15 times inside the client, which hides a "Too large
    // resource version" (504) for about a minute; the watch loop retries with its own backoff
    // and relists instead.
    config.default_retry = false;
    super::http_client::build(config).map_err(SourceError::Client)
}

/// Every Kubernetes API access the server makes, as RBAC spells it: (API group, resource,
/// verbs); "" is the core group. Watches start only through `Watch::run`, which refuses a
/// resource missing here, and tests/deploy.rs requires the ClusterRole of manifests/base to
/// grant exactly this table: a new watch without its RBAC rule fails the tests, not a cluster.
pub const WATCHED: &[(&str, &str, &[&str])] = &[
    ("", "namespaces", &["list", "watch"]),
    ("", "services", &["list", "watch"]),
    ("discovery.k8s.io", "endpointslices", &["list", "watch"]),
    // Pods and nodes only for `pods verified`, `--fargate-profiles` and `--aws`.
    ("", "pods", &["list", "watch"]),
    ("", "nodes", &["list", "watch"]),
];

/// Whether [`WATCHED`] grants `verb` on `group`/`resource`.
pub fn watched(group: &str, resource: &str, verb: &str) -> bool {
    WATCHED
        .iter()
        .any(|(g, r, verbs)| *g == group && *r == resource && verbs.contains(&verb))
}

/// The `service_kind` label of `coredns_kubernetes_dns_programming_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKindLabel {
    ClusterIp,
    HeadlessWithSelector,
    HeadlessWithoutSelector,
}

impl ServiceKindLabel {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceKindLabel::ClusterIp => "cluster_ip",
            ServiceKindLabel::HeadlessWithSelector => "headless_with_selector",
            ServiceKindLabel::HeadlessWithoutSelector => "headless_without_selector",
        }
    }

    /// None for ExternalName services, which CoreDNS does not measure either.
    pub fn of(service: &Service) -> Option<ServiceKindLabel> {
        match service.kind {
            ServiceKind::ClusterIp => Some(ServiceKindLabel::ClusterIp),
            ServiceKind::Headless if service.has_selector => {
                Some(ServiceKindLabel::HeadlessWithSelector)
            }
            ServiceKind::Headless => Some(ServiceKindLabel::HeadlessWithoutSelector),
            ServiceKind::ExternalName => None,
        }
    }
}

impl fmt::Display for ServiceKindLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Called once per Service/EndpointSlice watch event that changed the view, with the time from
/// the event's receipt to the publish of a snapshot containing it. Runs on the publisher
/// thread: keep it cheap (a histogram observation).
pub type ProgrammedHook = Arc<dyn Fn(ServiceKindLabel, Duration) + Send + Sync>;

#[derive(Clone)]
pub struct KubeSourceOptions {
    /// Until every kind has listed, or this has passed, nothing is published: the empty
    /// unsynced snapshot answers (would-be NXDOMAIN answers are SERVFAIL); after it snapshots
    /// are synced with what there is.
    pub startup_timeout: Duration,
    /// Needed for `pods verified` and Fargate placement.
    pub watch_pods: bool,
    /// Without `watch_pods`: when to watch pods for their IP -> node only, what zone-aware
    /// answers need of them.
    pub pod_zones: PodZones,
    /// Needed for telling micro-VM nodes from node-group nodes.
    pub watch_nodes: bool,
    /// The API server URL, for error messages (`connection refused to <url>`).
    pub api_url: Option<String>,
    /// How each kind's state is fetched at start and after a relist: a streaming list (one
    /// watch with `sendInitialEvents`) or paged lists.
    pub initial_list: InitialList,
    /// How long a streaming list may stay quiet after an object without ending
    /// ([`INITIAL_EVENTS_END_PATIENCE`]).
    pub initial_events_patience: Duration,
    /// List page size (`limit`) of paged lists.
    pub page_size: u32,
    /// First retry delay after a failed list/watch; doubles (with jitter) up to `backoff_max`.
    /// The defaults are client-go's (0.8 s .. 30 s).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Minimum time between two publishes, so a burst of events builds few snapshots.
    pub min_publish_interval: Duration,
    pub on_programmed: Option<ProgrammedHook>,
    /// A watch silent (no event, no bookmark) for this long is restarted; see the module doc.
    pub stall_timeout: Duration,
    /// While stale, a summary line this often.
    pub summary_interval: Duration,
}

impl Default for KubeSourceOptions {
    fn default() -> Self {
        KubeSourceOptions {
            startup_timeout: Duration::from_secs(5),
            watch_pods: false,
            pod_zones: PodZones::OnDemand,
            watch_nodes: false,
            api_url: None,
            initial_list: InitialList::Auto,
            initial_events_patience: INITIAL_EVENTS_END_PATIENCE,
            page_size: 500,
            backoff_initial: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            min_publish_interval: Duration::from_millis(2),
            on_programmed: None,
            stall_timeout: Duration::from_secs(120),
            summary_interval: Duration::from_secs(60),
        }
    }
}

impl fmt::Debug for KubeSourceOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeSourceOptions")
            .field("startup_timeout", &self.startup_timeout)
            .field("watch_pods", &self.watch_pods)
            .field("pod_zones", &self.pod_zones)
            .field("watch_nodes", &self.watch_nodes)
            .field("api_url", &self.api_url)
            .field("initial_list", &self.initial_list)
            .field("initial_events_patience", &self.initial_events_patience)
            .field("page_size", &self.page_size)
            .field("backoff_initial", &self.backoff_initial)
            .field("backoff_max", &self.backoff_max)
            .field("min_publish_interval", &self.min_publish_interval)
            .field("on_programmed", &self.on_programmed.as_ref().map(|_| "Fn"))
            .field("stall_timeout", &self.stall_timeout)
            .field("summary_interval", &self.summary_interval)
            .finish()
    }
}

/// How the source fetches the objects of a kind before it watches them.
///
/// A streaming list is one watch request with `sendInitialEvents=true`: the API server sends
/// every object as an event, from its watch cache, then a bookmark that ends the initial
/// events, and the same connection goes on with the changes. Neither side holds a page of
/// objects, and the API server does not read etcd for it (KEP-3157). Kubernetes offers it
/// where the `WatchList` feature gate is on: 1.32 and 1.34 onwards by default; 1.27-1.31 and
/// 1.33 refuse it with 422 Invalid unless the gate was turned on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialList {
    /// A streaming list, and paged lists from then on for a kind whose streaming list the API
    /// server refuses (400 or 422) or never ends (no end bookmark within
    /// [`INITIAL_EVENTS_END_PATIENCE`] of the last object: a server from before 1.27, which
    /// ignores the parameter). What client-go does since 1.35.
    Auto,
    /// Streaming lists only: a refusal is an error that readiness reports.
    Streaming,
    /// Paged lists (`limit`/`continue`), then a watch from the list's resourceVersion.
    Paged,
}

/// How long a streaming list may go quiet after an object without the bookmark that ends the
/// initial events. A server that streams sends it right after the last object; one that
/// ignores `sendInitialEvents` never does.
pub const INITIAL_EVENTS_END_PATIENCE: Duration = Duration::from_secs(10);

/// Whether the fall back to paged lists was logged at info (once per process).
static FALLBACK_LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The API server refused a streaming list as a request it does not take, not as a
/// failure: 400 or 422 (the `WatchList` gate off, a proxy or an old server rejecting the
/// parameters), or a server error that says so (the watch cache's own check of the gate,
/// which bypasses validation, answers 500 "sendInitialEvents is forbidden ...").
fn refuses_streaming(err: &watcher::Error) -> bool {
    matches!(err, watcher::Error::WatchStartFailed(kube::Error::Api(s))
        if s.code == 400 || s.code == 422
            || (s.code >= 500 && s.message.contains("sendInitialEvents")))
}

/// When the source watches pods only for the client-zone map (`KubeSourceOptions::pod_zones`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodZones {
    /// Always: every headless Service is zone-aware (`zone_first`); readiness waits for the
    /// pod list.
    Always,
    /// While some Service asks for in-zone traffic (`trafficDistribution: PreferClose` or the
    /// topology-mode annotation): its answers are zone-aware whatever the `pods` mode. The
    /// watch starts when the first such Service appears and stops (dropping the map) when the
    /// last one goes, so a cluster without them keeps no pod data; readiness does not wait
    /// for it (until its first list, clients are of an unknown zone and get every endpoint).
    OnDemand,
}

/// Starts the source. It runs until the returned task is aborted (which stops every watch).
pub fn spawn(
    client: Client,
    view: Arc<ClusterView>,
    status: Arc<SourceStatus>,
    opts: KubeSourceOptions,
) -> tokio::task::JoinHandle<()> {
    let mut kinds = vec![
        ResourceKind::Namespaces,
        ResourceKind::Services,
        ResourceKind::EndpointSlices,
    ];
    let compact_pods = !opts.watch_pods;
    if opts.watch_pods || opts.pod_zones == PodZones::Always {
        kinds.push(ResourceKind::Pods);
    }
    if opts.watch_nodes {
        kinds.push(ResourceKind::Nodes);
    }
    status.start(&kinds);
    let activity = Arc::new(Activity::default());
    let client = observed_client(client, status.clone(), activity.clone());
    tokio::spawn(async move {
        let (tx, rx) = std_mpsc::channel();
        let mut watches = JoinSet::new();
        watches.spawn(summaries(status.clone(), opts.summary_interval));
        for &kind in &kinds {
            let w = Watch {
                kind,
                tx: tx.clone(),
                status: status.clone(),
                opts: opts.clone(),
                activity: activity.clone(),
            };
            let c = client.clone();
            // Each kind is decoded into its lean type (cluster::wire), then stripped.
            match kind {
                ResourceKind::Namespaces => {
                    watches.spawn(w.run(Api::<ApiNamespace>::all(c), |o| {
                        Namespace::from_api(&o.into_api()).map(Object::Namespace)
                    }))
                }
                ResourceKind::Services => watches.spawn(w.run(Api::<ApiService>::all(c), |o| {
                    Service::from_api(&o.into_api()).map(Object::Service)
                })),
                ResourceKind::EndpointSlices => {
                    watches.spawn(w.run(Api::<ApiEndpointSlice>::all(c), |o| {
                        EndpointSlice::from_api(&o.into_api()).map(Object::Slice)
                    }))
                }
                ResourceKind::Pods if compact_pods => watch_placements(&mut watches, w, c),
                ResourceKind::Pods => watches.spawn(w.run(Api::<ApiPod>::all(c), |o| {
                    Pod::from_api(&o.into_api()).map(|p| Object::Pod(Box::new(p)))
                })),
                ResourceKind::Nodes => watches.spawn(w.run(Api::<ApiNode>::all(c), |o| {
                    Node::from_api(&o.into_api()).map(Object::Node)
                })),
            };
        }
        // Building a snapshot of a large cluster takes milliseconds of CPU: do it on a thread
        // of its own so DNS queries on the runtime's workers never wait behind it.
        let (zones_tx, mut zones_rx) = tokio::sync::watch::channel(false);
        let on_demand = compact_pods && opts.pod_zones == PodZones::OnDemand;
        let publisher = Publisher::new(view, status.clone(), opts.clone(), kinds, zones_tx);
        let mut publishing = tokio::task::spawn_blocking(move || publisher.run(rx));
        // The on-demand pod watch, started and stopped as the publisher asks.
        let mut pod_watch: Option<tokio::task::AbortHandle> = None;
        let mut listening = on_demand;
        loop {
            tokio::select! {
                done = &mut publishing => {
                    if let Err(e) = done {
                        warn!("kubernetes: snapshot publisher stopped: {e}");
                    }
                    break;
                }
                changed = zones_rx.changed(), if listening => {
                    if changed.is_err() {
                        listening = false;
                        continue;
                    }
                    let want = *zones_rx.borrow_and_update();
                    match (want, pod_watch.take()) {
                        (true, None) => {
                            debug!("kubernetes: a Service asks for in-zone traffic: watching pod addresses");
                            let w = Watch {
                                kind: ResourceKind::Pods,
                                tx: tx.clone(),
                                status: status.clone(),
                                opts: opts.clone(),
                                activity: activity.clone(),
                            };
                            pod_watch = Some(watch_placements(&mut watches, w, client.clone()));
                        }
                        (false, Some(h)) => {
                            debug!("kubernetes: no Service asks for in-zone traffic: pod addresses dropped");
                            h.abort();
                            while watches.try_join_next().is_some() {}
                        }
                        (_, kept) => pod_watch = kept,
                    }
                }
            }
        }
        // Dropping `watches` aborts every watch task.
    })
}

/// A pod watch that keeps only each pod's addresses and node (the client-zone map).
fn watch_placements(
    watches: &mut JoinSet<()>,
    w: Watch,
    client: Client,
) -> tokio::task::AbortHandle {
    watches.spawn(w.run(Api::<ApiPod>::all(client), |o| {
        let (ips, node) = o.placement();
        Some(Object::Placement(Placement {
            ips: ips.into(),
            node: node.map(Into::into),
        }))
    }))
}

/// When each kind last heard from the API server: response headers or body bytes of its
/// list and watch requests, or a watcher event. What stall detection measures.
#[derive(Debug, Default)]
struct Activity {
    last: std::sync::Mutex<HashMap<ResourceKind, Instant>>,
}

impl Activity {
    fn touch(&self, kind: ResourceKind) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.insert(kind, Instant::now());
    }

    fn last(&self, kind: ResourceKind) -> Instant {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.get(&kind).copied().unwrap_or_else(Instant::now)
    }
}

/// A kube client that sees the bytes of every response: any of them is activity for the
/// requested kind (stall detection), and a watch event or bookmark line makes the kind current
/// again. The watcher reports failures but neither bookmarks nor a silent reconnect, so this
/// is how staleness clears on a quiet cluster.
fn observed_client(client: Client, status: Arc<SourceStatus>, activity: Arc<Activity>) -> Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let client = client.clone();
        let status = status.clone();
        let activity = activity.clone();
        let kind = kind_of_path(request.uri().path());
        let watch = request
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
        async move {
            let response = client.send(request).await?;
            if let Some(kind) = kind {
                activity.touch(kind);
            }
            let watching = watch && response.status().is_success();
            Ok::<_, kube::Error>(response.map(move |body| {
                body.map_frame(move |frame| {
                    if let Some(kind) = kind {
                        activity.touch(kind);
                        if watching && frame.data_ref().is_some_and(|d| is_event_line(d)) {
                            healthy(&status, kind);
                        }
                    }
                    frame
                })
            }))
        }
    });
    Client::new(service, namespace)
}

/// A watch line that is an event or a bookmark, not an error. The API server writes each
/// event as `{"type":"ADDED","object":...}` in one chunk; a chunk that starts otherwise (a
/// line split across chunks) only counts as activity.
fn is_event_line(chunk: &[u8]) -> bool {
    chunk.starts_with(br#"{"type":""#) && !chunk.starts_with(br#"{"type":"ERROR""#)
}

/// A failed list/watch attempt: detail at debug level; one warning when the source goes stale.
fn failed(status: &SourceStatus, kind: ResourceKind, text: String) {
    debug!("kubernetes: {kind}: {text}");
    if status.set_error(kind, text.clone()) {
        warn!(
            "kubernetes: source stale: {kind}: {text}; answering from the last good view until it recovers"
        );
    }
}

/// `kind` is current; one line when that ends the source's staleness.
fn healthy(status: &SourceStatus, kind: ResourceKind) {
    if !status.is_failing(kind) {
        return;
    }
    if let Some((stale, failed)) = status.set_healthy(kind) {
        info!(
            "kubernetes: source current again after {:.1} s stale ({failed} failed attempts)",
            stale.as_secs_f64(),
        );
    }
}

/// While the source is stale, one summary line every `interval`.
async fn summaries(status: Arc<SourceStatus>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval.max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is immediate
    let mut attempts = status.failed_attempts();
    loop {
        ticks.tick().await;
        let now = status.failed_attempts();
        let Some(since) = status.stale_since() else {
            attempts = now;
            continue;
        };
        let stale = since.elapsed().unwrap_or_default();
        // A staleness younger than one interval was announced moments ago.
        if stale >= interval {
            warn!(
                "kubernetes: source still stale after {:.0} s ({} failed attempts in the last {:.0} s): {}",
                stale.as_secs_f64(),
                now - attempts,
                interval.as_secs_f64(),
                status.failures().join("; ")
            );
        }
        attempts = now;
    }
}

/// The watched kind a list/watch path is for: its last segment (`/api/v1/namespaces/x/pods`).
fn kind_of_path(path: &str) -> Option<ResourceKind> {
    let last = path.trim_end_matches('/').rsplit('/').next()?;
    ResourceKind::ALL.into_iter().find(|k| k.resource() == last)
}

#[derive(Debug, Clone)]
enum Object {
    Namespace(Namespace),
    Service(Service),
    Slice(EndpointSlice),
    /// Boxed: the largest model object (216 bytes), watched only for `pods verified`,
    /// placement and the prober; unboxed it would set the size of every list's slots.
    Pod(Box<Pod>),
    /// A pod of the compact watch: where it runs, nothing else.
    Placement(Placement),
    Node(Node),
}

#[derive(Debug, Clone)]
struct Placement {
    ips: Box<[std::net::IpAddr]>,
    node: Option<Box<str>>,
}

#[derive(Debug)]
enum Msg {
    /// Added or modified; `None` when the new version is nothing DNS serves (a slice that lost
    /// its service label), which removes the old one.
    Apply {
        kind: ResourceKind,
        key: Key,
        object: Option<Object>,
        received: Instant,
    },
    Delete {
        kind: ResourceKind,
        key: Key,
        old: Option<Object>,
        received: Instant,
    },
    /// A complete list: replaces every object of `kind`.
    Replace {
        kind: ResourceKind,
        objects: Vec<(Key, Object)>,
    },
    /// A complete list of the compact pod watch, as the table it builds.
    ReplacePlacements(PodIpTable),
}

struct Watch {
    kind: ResourceKind,
    tx: std_mpsc::Sender<Msg>,
    status: Arc<SourceStatus>,
    opts: KubeSourceOptions,
    activity: Arc<Activity>,
}

impl Watch {
    async fn run<K>(self, api: Api<K>, strip: fn(K) -> Option<Object>)
    where
        K: Resource + Clone + DeserializeOwned + fmt::Debug + Send + 'static,
        K::DynamicType: Default,
    {
        let kind = self.kind;
        // kube-rs's watcher lists (paged) and watches; nothing else.
        let dt = K::DynamicType::default();
        let (group, resource) = (K::group(&dt), K::plural(&dt));
        if group != kind.group()
            || resource != kind.resource()
            || !["list", "watch"]
                .iter()
                .all(|verb| watched(&group, &resource, verb))
        {
            // A programming error, caught by the tests: readiness names it instead of a panic.
            let text = format!(
                "internal error: {kind} is watched as {group:?}/{resource} but WATCHED \
                 (the RBAC table) does not grant list and watch on it"
            );
            error!("kubernetes: {text}");
            self.status.set_error(kind, text);
            return;
        }
        // Bookmarks are on by default; they keep a quiet watch's resourceVersion fresh.
        #[allow(unused_mut)]
        let mut page_size = self.opts.page_size;
        // Benchmark builds only: the page-size trial of issue 17 (benches/memory.rs --env).
        #[cfg(feature = "alloc-trial")]
        if let Some(n) = std::env::var("CLUSTERDNS_PAGE_SIZE")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            page_size = n;
        }
        let paged = watcher::Config::default().page_size(page_size.max(1));
        let mut streaming = self.opts.initial_list != InitialList::Paged;
        let mut backoff = Backoff::new(self.opts.backoff_initial, self.opts.backoff_max);
        let stall = self.opts.stall_timeout.max(Duration::from_millis(1));
        // How many stall timeouts a list may take; doubles after each stalled list.
        let mut list_patience = 1u32;
        let mut ever_listed = false;
        loop {
            let config = if streaming {
                paged.clone().streaming_lists()
            } else {
                paged.clone()
            };
            let mut stream = watcher::watcher(api.clone(), config).boxed();
            // Objects of a list in progress; swapped in whole at InitDone.
            let mut listing: Vec<(Key, Object)> = Vec::new();
            // The compact pod watch's list goes straight into the table it makes: 100 000
            // pods kept as listed items until the list ends (248-byte slots, two names each)
            // left the heap fragmented around what was allocated meanwhile (bench/RESULTS.md).
            let compact = kind == ResourceKind::Pods && !self.opts.watch_pods;
            let mut placements = PodIpTable::default();
            // A new watcher lists first.
            let mut in_list = true;
            let mut restart = false;
            // A streaming list accepted and not yet ended: when its last object came.
            let mut streamed_since: Option<Instant> = None;
            self.activity.touch(kind);
            loop {
                let limit = if in_list {
                    stall * list_patience
                } else {
                    stall
                };
                let due = tokio::time::Instant::from_std(self.activity.last(kind) + limit);
                let end_due = streamed_since
                    .map(|t| tokio::time::Instant::from_std(t + self.opts.initial_events_patience));
                let item = tokio::select! {
                    item = stream.next() => item,
                    _ = tokio::time::sleep_until(end_due.unwrap_or(due)), if end_due.is_some() => {
                        // Objects came, then nothing ended them: the parameter was ignored.
                        if self.opts.initial_list == InitialList::Auto {
                            info!(
                                "kubernetes: {kind}: the API server sent no end of the streaming \
                                 list's initial events (it ignores sendInitialEvents); listing in pages"
                            );
                            streaming = false;
                        } else {
                            failed(
                                &self.status,
                                kind,
                                format!(
                                    "streaming list of {kind}: no bookmark ended the initial events \
                                     within {:?} of the last object; the API server ignores \
                                     sendInitialEvents (use --initial-list paged or auto)",
                                    self.opts.initial_events_patience
                                ),
                            );
                            // Not a synchronisation sleep: the retry backoff (with jitter).
                            tokio::time::sleep(backoff.next_delay()).await;
                        }
                        break;
                    }
                    _ = tokio::time::sleep_until(due) => {
                        // Heard from meanwhile (the body of a response in progress): wait on.
                        // Dropping `next()` loses nothing: the watcher keeps its own state.
                        if self.activity.last(kind) + limit > Instant::now() {
                            continue;
                        }
                        let text = if in_list {
                            list_patience = (list_patience * 2).min(8);
                            format!("list of {kind} stalled: no answer for {} s; listing again", limit.as_secs())
                        } else {
                            format!("watch of {kind} stalled: no event or bookmark for {} s; relisting", limit.as_secs())
                        };
                        failed(&self.status, kind, text);
                        break;
                    }
                };
                let Some(item) = item else {
                    break; // a watcher stream never ends by itself; if it did, start a fresh one
                };
                self.activity.touch(kind);
                let received = Instant::now();
                let msg = match item {
                    Ok(event) => match event {
                        Event::Init => {
                            debug!(
                                "kubernetes: {kind}: listing ({})",
                                if streaming { "streaming" } else { "paged" }
                            );
                            in_list = true;
                            listing = Vec::new();
                            placements = PodIpTable::default();
                            if streaming {
                                streamed_since = Some(received);
                            }
                            None
                        }
                        Event::InitApply(o) => {
                            if streaming {
                                streamed_since = Some(received);
                            }
                            let key = key_of(&o);
                            match strip(o) {
                                Some(Object::Placement(p)) => {
                                    placements.insert(&key.0, &key.1, &p.ips, p.node.as_deref())
                                }
                                Some(stripped) => listing.push((key, stripped)),
                                None => {}
                            }
                            None
                        }
                        Event::InitDone => {
                            in_list = false;
                            streamed_since = None;
                            list_patience = 1;
                            // The first complete list is the kind's sync (after a 403 was
                            // lifted, say): current now. A relist after a failure must also
                            // get its watch going (see the module doc).
                            if !ever_listed {
                                ever_listed = true;
                                healthy(&self.status, kind);
                            }
                            Some(if compact {
                                Msg::ReplacePlacements(std::mem::take(&mut placements))
                            } else {
                                Msg::Replace {
                                    kind,
                                    objects: std::mem::take(&mut listing),
                                }
                            })
                        }
                        Event::Apply(o) => {
                            healthy(&self.status, kind);
                            Some(Msg::Apply {
                                kind,
                                key: key_of(&o),
                                object: strip(o),
                                received,
                            })
                        }
                        Event::Delete(o) => {
                            healthy(&self.status, kind);
                            Some(Msg::Delete {
                                kind,
                                key: key_of(&o),
                                old: strip(o),
                                received,
                            })
                        }
                    },
                    Err(err)
                        if streaming
                            && self.opts.initial_list == InitialList::Auto
                            && refuses_streaming(&err) =>
                    {
                        let text = format!(
                            "kubernetes: {kind}: the API server does not offer streaming lists \
                             ({}); listing in pages",
                            describe(&err, kind, self.opts.api_url.as_deref())
                        );
                        // Every kind finds out: one line says it, the rest are at debug.
                        if FALLBACK_LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                            debug!("{text}");
                        } else {
                            info!("{text}");
                        }
                        streaming = false;
                        break;
                    }
                    Err(err) => {
                        // Failures in a row back off further; one after a recovery starts over.
                        if !self.status.is_failing(kind) {
                            backoff.reset();
                        }
                        let mut text = describe(&err, kind, self.opts.api_url.as_deref());
                        if streaming && refuses_streaming(&err) {
                            text.push_str(
                                "; this API server does not offer streaming lists: use \
                                 --initial-list auto or paged",
                            );
                        }
                        failed(&self.status, kind, text);
                        restart = needs_relist(&err);
                        // Not a synchronisation sleep: the retry backoff (with jitter).
                        tokio::time::sleep(backoff.next_delay()).await;
                        // The wait for the next answer starts now.
                        self.activity.touch(kind);
                        if restart {
                            break;
                        }
                        None
                    }
                };
                if let Some(msg) = msg {
                    if self.tx.send(msg).is_err() {
                        return; // the publisher is gone: the source is shutting down
                    }
                }
            }
            if restart {
                debug!("kubernetes: {kind}: the API server lost our resourceVersion; relisting");
            }
        }
    }
}

/// A copy of `o` in fresh allocations: a derived clone, except the shared names, which are
/// copied. What is interned (namespaces, node names, port lists) is not: one copy per
/// distinct value for the whole store.
fn compacted(o: &Object) -> Object {
    with_fresh_name(o.clone())
}

/// Copies of `kind`'s objects in `store`, each with a name of its own, keyed by that name:
/// nothing of them shares an allocation with the originals, so the originals can all be freed
/// while the copies live. `empty` is the interned empty namespace of cluster-scoped keys.
fn staged_copies(store: &Store, kind: ResourceKind, empty: &Arc<str>) -> Vec<(Key, Object)> {
    fn copies<K, T>(
        table: &HashMap<K, Arc<T>>,
        wrap: impl Fn(&T) -> Object,
        key: impl Fn(&K) -> Key,
    ) -> Vec<(Key, Object)> {
        let mut out = Vec::with_capacity(table.len());
        for (k, v) in table {
            let object = with_fresh_name(wrap(v));
            let key = object.share_key(key(k));
            out.push((key, object));
        }
        out
    }
    let cluster = |name: &Arc<str>| (empty.clone(), name.clone());
    match kind {
        ResourceKind::Namespaces => {
            copies(&store.namespaces, |v| Object::Namespace(v.clone()), cluster)
        }
        ResourceKind::Services => copies(
            &store.services,
            |v| Object::Service(v.clone()),
            Clone::clone,
        ),
        ResourceKind::EndpointSlices => {
            copies(&store.slices, |v| Object::Slice(v.clone()), Clone::clone)
        }
        ResourceKind::Pods => copies(
            &store.pods,
            |v| Object::Pod(Box::new(v.clone())),
            Clone::clone,
        ),
        ResourceKind::Nodes => copies(&store.nodes, |v| Object::Node(v.clone()), cluster),
    }
}

/// `o` with a name string of its own (a clone of an object shares it).
fn with_fresh_name(mut o: Object) -> Object {
    let fresh = |s: &mut Arc<str>| *s = Arc::<str>::from(&**s);
    match &mut o {
        Object::Slice(s) => fresh(&mut s.name),
        Object::Service(s) => fresh(&mut s.name),
        Object::Pod(p) => fresh(&mut p.name),
        _ => {}
    }
    o
}

impl Object {
    /// `key` with the object's own name strings when they are the same (they are, but for
    /// objects without a namespace): the store's keys then cost no allocation of their own.
    fn share_key(&self, key: Key) -> Key {
        let (ns, name) = match self {
            Object::Service(o) => (&o.namespace, &o.name),
            Object::Slice(o) => (&o.namespace, &o.name),
            Object::Pod(o) => (&o.namespace, &o.name),
            // Cluster-scoped: the namespace part is empty, one interned copy for all.
            Object::Namespace(o) if *o.name == *key.1 => return (intern(&key.0), o.name.clone()),
            Object::Node(o) if *o.name == *key.1 => return (intern(&key.0), o.name.clone()),
            _ => return key,
        };
        if **ns == *key.0 && **name == *key.1 {
            (ns.clone(), name.clone())
        } else {
            key
        }
    }
}

fn key_of<K: Resource>(o: &K) -> Key {
    (
        o.meta().namespace.as_deref().unwrap_or("").into(),
        o.meta().name.as_deref().unwrap_or("").into(),
    )
}

/// Errors the kube watcher retries forever with the same resourceVersion, although only a
/// relist can cure them: a 410 at watch start, and "Too large resource version" (HTTP 504)
/// from an API server whose history was reset (etcd restored, a new cluster at the same URL).
fn needs_relist(err: &watcher::Error) -> bool {
    match err {
        watcher::Error::WatchStartFailed(kube::Error::Api(s)) => {
            s.code == 410 || is_too_large_resource_version(s)
        }
        watcher::Error::WatchError(s) => is_too_large_resource_version(s),
        _ => false,
    }
}

fn is_too_large_resource_version(s: &Status) -> bool {
    s.message.contains("Too large resource version")
        || s.details.as_ref().is_some_and(|d| {
            d.causes
                .iter()
                .any(|c| c.reason == "ResourceVersionTooLarge")
        })
}

/// A list/watch failure in words an operator can act on.
fn describe(err: &watcher::Error, kind: ResourceKind, api_url: Option<&str>) -> String {
    let (verb, client_err) = match err {
        watcher::Error::InitialListFailed(e) => ("list", e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", e),
        watcher::Error::WatchError(status) => return describe_status(status, "watch", kind),
        watcher::Error::NoResourceVersion => {
            return format!("the API server sent a {kind} list without a resourceVersion")
        }
    };
    match client_err {
        kube::Error::Api(status) => describe_status(status, verb, kind),
        other => describe_transport(other, api_url.unwrap_or("the API server")),
    }
}

fn describe_status(s: &Status, verb: &str, kind: ResourceKind) -> String {
    match s.code {
        403 => {
            // The API's message names the identity: `User "system:serviceaccount:..." cannot`.
            let user = s
                .message
                .split_once("User \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(user, _)| format!(" (as {user})"))
                .unwrap_or_default();
            format!(
                "403 forbidden: cannot {verb} resource \"{}\" in API group \"{}\"{user}",
                kind.resource(),
                kind.group()
            )
        }
        401 => "401 unauthorized: the API server rejected our credentials".to_string(),
        410 => format!("410 gone: {verb} of {kind}: resourceVersion expired; relisting"),
        code => {
            let reason = if s.reason.is_empty() {
                "error"
            } else {
                &s.reason
            };
            format!("{code} {reason}: {verb} {kind}: {}", s.message)
        }
    }
}

fn describe_transport(err: &kube::Error, url: &str) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut chain = Vec::new();
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return format!("API server unreachable: connection refused to {url}")
                }
                std::io::ErrorKind::TimedOut => {
                    return format!("API server unreachable: timed out connecting to {url}")
                }
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
                    return format!("API server connection reset: {url}")
                }
                _ => {}
            }
        }
        let text = e.to_string();
        if !chain.iter().any(|c: &String| c.contains(&text)) {
            chain.push(text);
        }
        source = e.source();
    }
    format!(
        "API server connection to {url} failed: {}",
        chain.join(": ")
    )
}

/// Exponential backoff with jitter: each delay is drawn from [d/2, d], d doubling up to max.
struct Backoff {
    initial: Duration,
    max: Duration,
    current: Option<Duration>,
}

impl Backoff {
    fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            current: None,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let d = match self.current {
            None => self.initial,
            Some(c) => (c * 2).min(self.max),
        };
        self.current = Some(d);
        d.mul_f64(0.5 + rand::random::<f64>() * 0.5)
    }

    fn reset(&mut self) {
        self.current = None;
    }
}

/// Owns the store; applies messages and publishes snapshots.
struct Publisher {
    view: Arc<ClusterView>,
    status: Arc<SourceStatus>,
    opts: KubeSourceOptions,
    kinds: Vec<ResourceKind>,
    store: Store,
    started: Instant,
    listed: Vec<ResourceKind>,
    newly_listed: Vec<ResourceKind>,
    /// The startup timeout passed before the first complete sync.
    timed_out: bool,
    /// First unpublished change.
    pending_since: Option<Instant>,
    last_publish: Option<Instant>,
    /// Service/EndpointSlice events waiting for the publish that contains them.
    programming: Vec<(ServiceKindLabel, Instant)>,
    /// The store last published, and the service and slice keys changed since (None after
    /// a relist of either kind, or before the first publish): the rebuild then compares only
    /// those keys instead of every key of both tables.
    published: Option<Arc<Store>>,
    changed: Option<Changed>,
    /// A complete list was applied since the last publish: its transient memory (response
    /// pages, decoded objects) is handed back to the OS after that publish.
    relisted: bool,
    /// Kinds listed during the initial sync and stored as the watch tasks stripped them: they
    /// are copied together only when every kind has listed (see [`Publisher::compact`]).
    uncompacted: Vec<ResourceKind>,
    /// Services asking for in-zone traffic; while there are any (or with `PodZones::Always`)
    /// the compact pod watch runs: `zones` says so to the source task.
    prefer_close: usize,
    zones: tokio::sync::watch::Sender<bool>,
    /// Pod IP -> node from the compact pod watch (None while it is not wanted); published as
    /// the store's `pod_nodes` when `pod_table_changed`.
    pod_table: Option<PodIpTable>,
    pod_table_changed: bool,
}

/// The longest a change waits for others to share its publish.
const MAX_PUBLISH_DELAY: Duration = Duration::from_millis(5);

impl Publisher {
    fn new(
        view: Arc<ClusterView>,
        status: Arc<SourceStatus>,
        opts: KubeSourceOptions,
        kinds: Vec<ResourceKind>,
        zones: tokio::sync::watch::Sender<bool>,
    ) -> Publisher {
        let always = !opts.watch_pods && opts.pod_zones == PodZones::Always;
        Publisher {
            prefer_close: 0,
            zones,
            pod_table: always.then(PodIpTable::default),
            pod_table_changed: false,
            view,
            status,
            opts,
            kinds,
            store: Store::default(),
            started: Instant::now(),
            listed: Vec::new(),
            newly_listed: Vec::new(),
            timed_out: false,
            pending_since: None,
            last_publish: None,
            programming: Vec::new(),
            published: None,
            changed: None,
            relisted: false,
            uncompacted: Vec::new(),
        }
    }

    fn complete(&self) -> bool {
        self.kinds.iter().all(|k| self.listed.contains(k))
    }

    /// When the next publish is due, if one is pending.
    fn publish_at(&self) -> Option<Instant> {
        let first = self.pending_since?;
        let spaced = self
            .last_publish
            .map_or(first, |t| (t + self.opts.min_publish_interval).max(first));
        Some(spaced.min(first + MAX_PUBLISH_DELAY))
    }

    fn run(mut self, rx: std_mpsc::Receiver<Msg>) {
        let startup_deadline = self.started + self.opts.startup_timeout;
        loop {
            let now = Instant::now();
            // Nothing is published until every kind has listed (or the startup timeout has
            // passed): the first snapshot is built once, from the complete lists. Snapshots of
            // partial lists, built and dropped between the lists' copies, left the publisher's
            // arena fragmented (issue 17). The cost: services listed first are answered only
            // once the other kinds have listed too (SERVFAIL until then, as before any list).
            let wake = if self.syncing() {
                Some(startup_deadline)
            } else {
                self.publish_at()
            };
            let first = match wake {
                Some(at) => match rx.recv_timeout(at.saturating_duration_since(now)) {
                    Ok(msg) => Some(msg),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                },
                None => match rx.recv() {
                    Ok(msg) => Some(msg),
                    Err(_) => return,
                },
            };
            if let Some(msg) = first {
                self.apply(msg);
                // Take whatever else has queued up meanwhile: one publish for the burst. A flood
                // that never pauses still publishes when the oldest change is due.
                while self.publish_at().is_none_or(|at| Instant::now() < at) {
                    match rx.try_recv() {
                        Ok(msg) => self.apply(msg),
                        Err(_) => break,
                    }
                }
            }
            if !self.complete() && !self.timed_out && Instant::now() >= startup_deadline {
                self.timed_out = true;
                self.status.set_startup_timed_out();
                warn!(
                    "kubernetes: no complete sync after {:?}; answering with what there is: {}",
                    self.opts.startup_timeout,
                    self.status.not_ready_reasons().join("; ")
                );
                self.pending_since.get_or_insert_with(Instant::now);
                self.publish();
                continue;
            }
            if !self.syncing() && self.publish_at().is_some_and(|at| Instant::now() >= at) {
                self.publish();
            }
        }
    }

    /// Before the first complete sync and the startup timeout.
    fn syncing(&self) -> bool {
        !self.complete() && !self.timed_out
    }

    fn mark(&mut self, label: Option<ServiceKindLabel>, received: Instant) {
        self.pending_since.get_or_insert(received);
        if let Some(label) = label {
            if self.opts.on_programmed.is_some() {
                self.programming.push((label, received));
            }
        }
    }

    fn apply(&mut self, msg: Msg) {
        let msg = match self.apply_placement(msg) {
            Some(msg) => msg,
            None => return,
        };
        match msg {
            Msg::Apply {
                kind,
                key,
                object,
                received,
            } => {
                let label = self.label(kind, &key, object.as_ref());
                self.note(kind, &key);
                let changed = match object {
                    Some(o) => self.insert(key, o),
                    None => self.remove(kind, &key),
                };
                if changed {
                    self.mark(label, received);
                }
            }
            Msg::Delete {
                kind,
                key,
                old,
                received,
            } => {
                let label = self.label(kind, &key, old.as_ref());
                self.note(kind, &key);
                if self.remove(kind, &key) {
                    self.mark(label, received);
                }
            }
            Msg::Replace { kind, objects } => {
                if matches!(kind, ResourceKind::Services | ResourceKind::EndpointSlices) {
                    self.changed = None;
                }
                self.replace(kind, objects);
                self.relisted = true;
                if !self.listed.contains(&kind) {
                    self.listed.push(kind);
                    self.newly_listed.push(kind);
                }
                self.pending_since.get_or_insert_with(Instant::now);
            }
            // Always taken by apply_placement.
            Msg::ReplacePlacements(_) => {}
        }
    }

    /// A message of the compact pod watch changes the pod table (or nothing, once it is no
    /// longer wanted); any other message is given back.
    fn apply_placement(&mut self, msg: Msg) -> Option<Msg> {
        let received = match &msg {
            Msg::Apply { kind, received, .. } | Msg::Delete { kind, received, .. }
                if *kind == ResourceKind::Pods && !self.opts.watch_pods =>
            {
                *received
            }
            Msg::ReplacePlacements(_) => Instant::now(),
            _ => return Some(msg),
        };
        let Some(table) = &mut self.pod_table else {
            return None; // a message of a pod watch being stopped
        };
        match msg {
            Msg::Apply {
                key,
                object: Some(Object::Placement(p)),
                ..
            } => table.insert(&key.0, &key.1, &p.ips, p.node.as_deref()),
            Msg::Delete {
                key,
                old: Some(Object::Placement(p)),
                ..
            } => table.remove(&key.0, &key.1, &p.ips),
            Msg::ReplacePlacements(fresh) => {
                *table = fresh;
                self.relisted = true;
                if !self.listed.contains(&ResourceKind::Pods) {
                    self.listed.push(ResourceKind::Pods);
                    self.newly_listed.push(ResourceKind::Pods);
                }
            }
            _ => return None,
        }
        self.pod_table_changed = true;
        self.mark(None, received);
        None
    }

    /// After a change of `prefer_close`: starts or stops the compact pod watch.
    fn zones_wanted(&mut self) {
        if self.opts.watch_pods || self.opts.pod_zones == PodZones::Always {
            return;
        }
        let want = self.prefer_close > 0;
        self.zones
            .send_if_modified(|w| std::mem::replace(w, want) != want);
        match (want, self.pod_table.is_some()) {
            (true, false) => self.pod_table = Some(PodIpTable::default()),
            (false, true) => {
                self.pod_table = None;
                self.store.pod_nodes = Arc::default();
                self.pending_since.get_or_insert_with(Instant::now);
            }
            _ => {}
        }
    }

    /// Records a service or slice key that may change before the next publish.
    fn note(&mut self, kind: ResourceKind, key: &Key) {
        let Some(c) = &mut self.changed else { return };
        match kind {
            ResourceKind::Services => c.services.insert(key.clone()),
            ResourceKind::EndpointSlices => c.slices.insert(key.clone()),
            _ => false,
        };
    }

    /// The service kind an event is measured under: the service's own, or for a slice, its
    /// service's (as the view knows it).
    fn label(
        &self,
        kind: ResourceKind,
        key: &Key,
        object: Option<&Object>,
    ) -> Option<ServiceKindLabel> {
        match (kind, object) {
            (ResourceKind::Services, Some(Object::Service(s))) => ServiceKindLabel::of(s),
            (ResourceKind::Services, _) => self
                .store
                .services
                .get(key)
                .and_then(|s| ServiceKindLabel::of(s)),
            (ResourceKind::EndpointSlices, _) => {
                let service = match object {
                    Some(Object::Slice(s)) => s.service.clone(),
                    _ => self.store.slices.get(key)?.service.clone(),
                };
                let svc = self.store.services.get(&(key.0.clone(), service.into()))?;
                ServiceKindLabel::of(svc)
            }
            _ => None,
        }
    }

    /// Returns whether the view changes (an identical update, e.g. a pod status heartbeat that
    /// touches nothing DNS keeps, publishes nothing).
    fn insert(&mut self, key: Key, object: Object) -> bool {
        fn put<K: std::hash::Hash + Eq + Clone, V: PartialEq>(
            map: &mut Arc<HashMap<K, Arc<V>>>,
            key: K,
            value: V,
        ) -> bool {
            if map.get(&key).is_some_and(|old| **old == value) {
                return false;
            }
            // Copies the table only while a published snapshot still shares it.
            let map = Arc::make_mut(map);
            // Removed first: `insert` would keep the old key, whose strings are the old
            // object's, and the new object's would then be a second copy.
            map.remove(&key);
            map.insert(key, Arc::new(value));
            true
        }
        let key = object.share_key(key);
        let s = &mut self.store;
        match object {
            Object::Namespace(o) => put(&mut s.namespaces, key.1, o),
            Object::Service(o) => {
                let was = s.services.get(&key).is_some_and(|old| old.prefer_close);
                let is = o.prefer_close;
                let changed = put(&mut s.services, key, o);
                if was != is {
                    self.prefer_close = (self.prefer_close + usize::from(is)) - usize::from(was);
                    self.zones_wanted();
                }
                changed
            }
            // Only the compact watch sends these, and apply_placement takes them.
            Object::Placement(_) => false,
            Object::Slice(o) => put(&mut s.slices, key, o),
            Object::Pod(o) => put(&mut s.pods, key, *o),
            Object::Node(mut o) => {
                // Labels serve placement and the prober, which also watch pods; DNS needs
                // only `micro_vm`.
                if !self.opts.watch_pods {
                    o.labels = Default::default();
                }
                put(&mut s.nodes, key.1, o)
            }
        }
    }

    fn remove(&mut self, kind: ResourceKind, key: &Key) -> bool {
        fn take<K: std::hash::Hash + Eq + Clone, V>(
            map: &mut Arc<HashMap<K, Arc<V>>>,
            key: &K,
        ) -> bool {
            map.contains_key(key) && Arc::make_mut(map).remove(key).is_some()
        }
        if kind == ResourceKind::Services
            && self
                .store
                .services
                .get(key)
                .is_some_and(|old| old.prefer_close)
        {
            self.prefer_close -= 1;
            let removed = take(&mut self.store.services, key);
            self.zones_wanted();
            return removed;
        }
        let s = &mut self.store;
        match kind {
            ResourceKind::Namespaces => take(&mut s.namespaces, &key.1),
            ResourceKind::Services => take(&mut s.services, key),
            ResourceKind::EndpointSlices => take(&mut s.slices, key),
            ResourceKind::Pods => take(&mut s.pods, key),
            ResourceKind::Nodes => take(&mut s.nodes, &key.1),
        }
    }

    fn replace(&mut self, kind: ResourceKind, objects: Vec<(Key, Object)>) {
        // During the initial sync other kinds are still being decoded, on every runtime
        // thread: copies made now would land between their garbage. The objects are stored as
        // the watch tasks stripped them and copied together once every kind has listed
        // (`compact`).
        if self.syncing() {
            if !self.uncompacted.contains(&kind) {
                self.uncompacted.push(kind);
            }
            self.refill(kind, objects, false);
        } else {
            self.refill(kind, objects, true);
        }
    }

    /// A new empty table for `kind` (not a cleared shared one: snapshots keep the old one while
    /// they live).
    fn clear(&mut self, kind: ResourceKind) {
        let s = &mut self.store;
        match kind {
            ResourceKind::Namespaces => s.namespaces = Arc::default(),
            ResourceKind::Services => {
                s.services = Arc::default();
                self.prefer_close = 0;
            }
            ResourceKind::EndpointSlices => s.slices = Arc::default(),
            ResourceKind::Pods => s.pods = Arc::default(),
            ResourceKind::Nodes => s.nodes = Arc::default(),
        }
    }

    /// `kind`'s table made of `objects` alone; with `copy`, of compacted copies of them.
    fn refill(&mut self, kind: ResourceKind, objects: Vec<(Key, Object)>, copy: bool) {
        self.clear(kind);
        if copy {
            // Copies, made here, of what the watch task stripped: the originals were
            // allocated on runtime threads between the much larger full objects they came
            // from, so each pins a page of freed memory that no trim can return; the copies
            // are packed together. Dropping the originals then leaves those pages free
            // (bench/RESULTS.md).
            for (key, object) in &objects {
                let object = compacted(object);
                let shared = object.share_key(key.clone());
                // A key the object does not share (none, normally) is copied like the object.
                let key = if Arc::ptr_eq(&shared.1, &key.1) {
                    (Arc::from(&*key.0), Arc::from(&*key.1))
                } else {
                    shared
                };
                self.insert(key, object);
            }
            drop(objects);
        } else {
            for (key, object) in objects {
                let key = object.share_key(key);
                self.insert(key, object);
            }
        }
        if kind == ResourceKind::Services {
            self.zones_wanted();
        }
    }

    fn counts(&self) -> Vec<(ResourceKind, usize)> {
        let s = &self.store;
        vec![
            (ResourceKind::Namespaces, s.namespaces.len()),
            (ResourceKind::Services, s.services.len()),
            (ResourceKind::EndpointSlices, s.slices.len()),
            (
                ResourceKind::Pods,
                match &self.pod_table {
                    Some(t) if !self.opts.watch_pods => t.len(),
                    _ => s.pods.len(),
                },
            ),
            (ResourceKind::Nodes, s.nodes.len()),
        ]
    }

    /// The kinds stored uncopied during the initial sync, copied now that no list is being
    /// decoded any more. The originals lie between the decoding's holes; copies made beside
    /// them would fill those holes and leave the originals' own between them once freed. So
    /// the copy is staged outside the heap first (`malloc::staged`), every original is freed
    /// together, and the store's copies are made from the staged ones into the heap the
    /// originals and the decoding left free, where they pack (bench/RESULTS.md, issue 17).
    fn compact(&mut self) {
        if self.uncompacted.is_empty() {
            return;
        }
        let kinds = std::mem::take(&mut self.uncompacted);
        // Looked up before staging: a name interned while staging would live in the region.
        let empty = intern("");
        let store = &self.store;
        let staged: Vec<(ResourceKind, Vec<(Key, Object)>)> = crate::malloc::staged(|| {
            kinds
                .iter()
                .map(|&kind| (kind, staged_copies(store, kind, &empty)))
                .collect()
        });
        for &kind in &kinds {
            self.clear(kind);
        }
        // The originals' small blocks, merged with the free space around them.
        super::file_source::release_freed_memory();
        for (kind, objects) in staged {
            self.refill(kind, objects, true);
        }
        let released = crate::malloc::release_staging();
        let stats = crate::malloc::staging_stats();
        debug!(
            "kubernetes: compaction staged {} blocks in all; released: {released} ({} still live)",
            stats.staged_blocks, stats.live_blocks
        );
    }

    fn publish(&mut self) {
        if !self.syncing() {
            self.compact();
        }
        if std::mem::take(&mut self.pod_table_changed) {
            if let Some(t) = &self.pod_table {
                self.store.pod_nodes = Arc::new(t.pod_nodes());
            }
        }
        let synced = self.complete() || self.timed_out;
        let start = Instant::now();
        let store = Arc::new(self.store.clone());
        let cloned = start.elapsed();
        self.view.publish_changed(
            store.clone(),
            synced,
            self.published.as_ref(),
            self.changed.as_ref(),
        );
        self.published = Some(store);
        self.changed = Some(Changed::default());
        let now = Instant::now();
        debug!(
            "kubernetes: published a snapshot in {:?} (store copy {:?})",
            now - start,
            cloned
        );
        self.pending_since = None;
        self.last_publish = Some(now);
        if let Some(hook) = &self.opts.on_programmed {
            for (label, received) in self.programming.drain(..) {
                hook(label, now.saturating_duration_since(received));
            }
        }
        let was_synced = self.status.synced_at().is_some();
        self.status
            .published(&self.counts(), &std::mem::take(&mut self.newly_listed));
        if std::mem::take(&mut self.relisted) {
            // A list decodes far more than the store keeps, on every runtime thread; glibc
            // keeps what was freed in per-thread arenas unless asked (bench/RESULTS.md, issue
            // 17). A relist is rare, and the trim takes a few ms on this thread, not a query's.
            super::file_source::release_freed_memory();
        }
        if !was_synced && self.status.synced_at().is_some() {
            let counts = self
                .counts()
                .into_iter()
                .filter(|(k, _)| self.kinds.contains(k))
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ");
            info!(
                "kubernetes: initial sync complete in {} ms: {counts}",
                self.started.elapsed().as_millis()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_in_the_rbac_table() {
        for kind in ResourceKind::ALL {
            for verb in ["list", "watch"] {
                assert!(
                    watched(kind.group(), kind.resource(), verb),
                    "{kind}: WATCHED lacks {verb}"
                );
            }
        }
        // And nothing else: every entry is a kind that is watched.
        for (group, resource, _) in WATCHED {
            assert!(
                ResourceKind::ALL
                    .iter()
                    .any(|k| k.group() == *group && k.resource() == *resource),
                "WATCHED grants {group:?}/{resource}, which nothing watches"
            );
        }
        assert!(!watched("", "secrets", "list"));
        assert!(!watched("", "services", "get"));
    }

    #[test]
    fn paths_name_their_kind() {
        assert_eq!(
            kind_of_path("/apis/discovery.k8s.io/v1/endpointslices"),
            Some(ResourceKind::EndpointSlices)
        );
        assert_eq!(
            kind_of_path("/api/v1/namespaces"),
            Some(ResourceKind::Namespaces)
        );
        assert_eq!(
            kind_of_path("/api/v1/namespaces/demo/services"),
            Some(ResourceKind::Services)
        );
        assert_eq!(kind_of_path("/version"), None);
    }

    #[test]
    fn watch_lines_that_clear_staleness() {
        assert!(is_event_line(br#"{"type":"BOOKMARK","object":{}}"#));
        assert!(is_event_line(br#"{"type":"ADDED","object":{}}"#));
        assert!(!is_event_line(br#"{"type":"ERROR","object":{"code":410}}"#));
        assert!(!is_event_line(br#"ct":{"metadata":{}}}"#), "a split line");
    }

    #[test]
    fn forbidden_names_verb_resource_group_and_user() {
        let status = Status::failure(
            "endpointslices.discovery.k8s.io is forbidden: User \"system:serviceaccount:kube-system:clusterdns\" cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\" at the cluster scope",
            "Forbidden",
        )
        .with_code(403);
        let err = watcher::Error::InitialListFailed(kube::Error::Api(status.boxed()));
        assert_eq!(
            describe(&err, ResourceKind::EndpointSlices, None),
            "403 forbidden: cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\" (as system:serviceaccount:kube-system:clusterdns)"
        );
    }

    #[test]
    fn too_large_resource_version_needs_a_relist() {
        let status = Status::failure("Too large resource version: 900, current: 12", "Timeout")
            .with_code(504);
        let err = watcher::Error::WatchStartFailed(kube::Error::Api(status.boxed()));
        assert!(needs_relist(&err));
        let status = Status::failure("etcd is sad", "InternalError").with_code(500);
        let err = watcher::Error::WatchStartFailed(kube::Error::Api(status.boxed()));
        assert!(!needs_relist(&err));
    }

    #[test]
    fn backoff_grows_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let d: Vec<Duration> = (0..5).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[4] >= Duration::from_millis(200) && d[4] <= Duration::from_millis(400));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
