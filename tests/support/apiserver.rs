//! A fake Kubernetes API server that speaks the real HTTP protocol, so kube-rs runs against it
//! unmodified: paged lists with `resourceVersion` and `continue`, chunked newline-delimited
//! JSON watches (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR), `Status` objects for errors (403,
//! 404, 410 Expired, 504 "Too large resource version").
//!
//! Tests drive it: create/update/delete objects (each bumps one global resourceVersion, as
//! etcd does), compact the history, expire or drop open watches, stall requests, forbid a
//! resource, stop and restart on the same port with a new resource-version history.
//!
//! [`ApiServer::start_secure`] serves HTTPS with a certificate from a CA of its own and demands
//! a bearer token, as every real API server does; its kubeconfig carries both.
//!
//! Faults, as a sick API server or the network to it shows them: lists failing with a status
//! (500 as when etcd times out), slow lists, a 410 storm (history compacted faster than anyone
//! can watch: every watch from a resourceVersion and every list continuation gets 410), watches
//! that stall (the connection stays open, nothing arrives, not even bookmarks), and connections
//! reset mid-stream. Connections close with a TCP RST (SO_LINGER 0), as a killed process's do.
//!
//! ```text
//!  test ──apply/delete──> State { objects, history, open watches } ──events──> watch bodies
//!  kube client ──GET──> handle() ──list pages / replay history + register watch──┘
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

/// The resources the fake server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Res {
    Namespaces,
    Services,
    Endpoints,
    EndpointSlices,
    Pods,
    Nodes,
}

impl Res {
    const ALL: [Res; 6] = [
        Res::Namespaces,
        Res::Services,
        Res::Endpoints,
        Res::EndpointSlices,
        Res::Pods,
        Res::Nodes,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Res::Namespaces => "namespaces",
            Res::Services => "services",
            Res::Endpoints => "endpoints",
            Res::EndpointSlices => "endpointslices",
            Res::Pods => "pods",
            Res::Nodes => "nodes",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Res::Namespaces => "Namespace",
            Res::Services => "Service",
            Res::Endpoints => "Endpoints",
            Res::EndpointSlices => "EndpointSlice",
            Res::Pods => "Pod",
            Res::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Res::EndpointSlices => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Res::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }

    fn namespaced(self) -> bool {
        !matches!(self, Res::Namespaces | Res::Nodes)
    }

    fn from_kind(kind: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.kind() == kind)
    }

    fn from_plural(plural: &str) -> Option<Res> {
        Res::ALL.into_iter().find(|r| r.plural() == plural)
    }
}

/// (namespace, name); namespace "" for cluster-scoped objects.
type ObjKey = (String, String);

struct HistoryEvent {
    rv: u64,
    res: Res,
    namespace: String,
    line: Bytes,
}

struct OpenWatch {
    res: Res,
    namespace: Option<String>,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Bytes>,
}

/// A list taken at one resourceVersion, served page by page through `continue` tokens.
struct ListSnapshot {
    rv: u64,
    items: Arc<Vec<Bytes>>,
}

struct State {
    rv: u64,
    /// Watches from a resourceVersion older than this get 410 Expired.
    oldest: u64,
    objects: HashMap<Res, BTreeMap<ObjKey, Bytes>>,
    history: Vec<HistoryEvent>,
    watches: Vec<OpenWatch>,
    forbidden: HashSet<Res>,
    snapshots: HashMap<u64, ListSnapshot>,
    next_snapshot: u64,
    next_uid: u64,
    requests: Vec<String>,
}

impl State {
    fn new(rv: u64) -> State {
        State {
            rv,
            oldest: rv,
            objects: HashMap::new(),
            history: Vec::new(),
            watches: Vec::new(),
            forbidden: HashSet::new(),
            snapshots: HashMap::new(),
            next_snapshot: 1,
            next_uid: 1,
            requests: Vec::new(),
        }
    }

    /// Sends `line` to every open watch of `res` that sees `namespace`; drops closed ones.
    fn broadcast(&mut self, res: Res, namespace: &str, line: &Bytes) {
        self.watches.retain(|w| {
            if w.res != res || w.namespace.as_deref().is_some_and(|n| n != namespace) {
                return !w.tx.is_closed();
            }
            w.tx.send(line.clone()).is_ok()
        });
    }

    fn record(&mut self, res: Res, namespace: &str, event_type: &str, object: &Bytes) {
        let line = event_line(event_type, object);
        self.history.push(HistoryEvent {
            rv: self.rv,
            res,
            namespace: namespace.to_string(),
            line: line.clone(),
        });
        self.broadcast(res, namespace, &line);
    }

    fn apply(&mut self, mut obj: Value) -> u64 {
        let kind = obj["kind"].as_str().unwrap_or_default().to_string();
        let res = Res::from_kind(&kind)
            .unwrap_or_else(|| panic!("the fake API server does not serve kind {kind:?}"));
        if obj.get("apiVersion").is_none() {
            obj["apiVersion"] = json!(res.api_version());
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .expect("objects need metadata.name")
            .to_string();
        let namespace = if res.namespaced() {
            let ns = obj["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            obj["metadata"]["namespace"] = json!(ns);
            ns
        } else {
            String::new()
        };
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        if obj["metadata"].get("uid").is_none() {
            self.next_uid += 1;
            obj["metadata"]["uid"] =
                json!(format!("00000000-0000-0000-0000-{:012}", self.next_uid));
        }
        let bytes = Bytes::from(serde_json::to_vec(&obj).expect("JSON values serialize"));
        let key = (namespace.clone(), name);
        let existed = self
            .objects
            .entry(res)
            .or_default()
            .insert(key, bytes.clone())
            .is_some();
        let event = if existed { "MODIFIED" } else { "ADDED" };
        self.record(res, &namespace, event, &bytes);
        self.rv
    }

    fn delete(&mut self, res: Res, namespace: &str, name: &str) -> bool {
        let key = (
            if res.namespaced() { namespace } else { "" }.to_string(),
            name.to_string(),
        );
        let Some(old) = self.objects.entry(res).or_default().remove(&key) else {
            return false;
        };
        self.rv += 1;
        // A DELETED event carries the object's last state at the deletion's resourceVersion.
        let mut obj: Value = serde_json::from_slice(&old).expect("stored objects are JSON");
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let bytes = Bytes::from(serde_json::to_vec(&obj).expect("JSON values serialize"));
        self.record(res, &key.0, "DELETED", &bytes);
        true
    }

    fn items(&self, res: Res, namespace: Option<&str>) -> Vec<Bytes> {
        let Some(map) = self.objects.get(&res) else {
            return Vec::new();
        };
        match namespace {
            Some(ns) => map
                .range((ns.to_string(), String::new())..)
                .take_while(|((n, _), _)| n == ns)
                .map(|(_, v)| v.clone())
                .collect(),
            None => map.values().cloned().collect(),
        }
    }
}

fn event_line(event_type: &str, object: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(object.len() + 32);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(event_type.as_bytes());
    line.extend_from_slice(b"\",\"object\":");
    line.extend_from_slice(object);
    line.extend_from_slice(b"}\n");
    line.into()
}

fn status_object(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    let bytes = Bytes::from(serde_json::to_vec(body).expect("JSON values serialize"));
    Response::builder()
        .status(StatusCode::from_u16(code).expect("valid status code"))
        .header("content-type", "application/json")
        .body(Full::new(bytes).boxed_unsync())
        .expect("valid response")
}

fn status_response(
    code: u16,
    reason: &str,
    message: &str,
    details: Option<Value>,
) -> Response<Body> {
    json_response(code, &status_object(code, reason, message, details))
}

fn expired(message: String) -> Value {
    status_object(410, "Expired", &message, None)
}

/// Injected faults; see the module doc.
#[derive(Default)]
struct Faults {
    /// Lists (not watches, not gets) answer this status code.
    list_error: Option<u16>,
    list_delay: Duration,
    storm_410: bool,
}

/// Where the `WatchList` feature gate stands: streaming lists (`sendInitialEvents=true`) are
/// offered (Kubernetes 1.32, 1.34 and later by default), refused with 422 Invalid (1.27-1.31
/// and 1.33 by default) or not known at all, the parameter ignored (before 1.27): the watch
/// then sends every object as ADDED and never the bookmark that ends the initial events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchList {
    Offered,
    Refused,
    Ignored,
    /// Refused as the watch cache does when the gate is off but validation let the request
    /// through (kubernetes#132497): 500 InternalError naming `sendInitialEvents`.
    RefusedByCache,
}

struct Shared {
    state: Mutex<State>,
    /// What `GET /version` answers (major, minor, gitVersion).
    version: Mutex<(String, String, String)>,
    stalled: watch::Sender<bool>,
    bookmark_interval: Mutex<Duration>,
    faults: Mutex<Faults>,
    /// Watches deliver nothing (and do not end) while true.
    watches_stalled: watch::Sender<bool>,
    /// Bumped to reset every open connection.
    resets: watch::Sender<u64>,
    /// The bearer token every request must carry (401 otherwise); None: no authentication.
    token: Option<String>,
    watch_list: Mutex<WatchList>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Running {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

pub struct ApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    /// HTTPS with this CA and certificate when set.
    pki: Option<super::pki::Pki>,
    running: Mutex<Option<Running>>,
    /// While stopped: a socket bound to `addr` but not listening, so that connecting is
    /// refused as with a dead API server, yet no other socket of the machine can take the port
    /// before the restart (see [`bind`]).
    held: Mutex<Option<socket2::Socket>>,
    dir: tempfile::TempDir,
}

impl ApiServer {
    /// Starts on 127.0.0.1 on a free port, with an empty cluster at resourceVersion 1.
    pub async fn start() -> ApiServer {
        ApiServer::start_with(None, None).await
    }

    /// As [`ApiServer::start`], over HTTPS (a certificate for 127.0.0.1 from a CA made here)
    /// and answering 401 to any request without `Authorization: Bearer <token>`.
    pub async fn start_secure(token: &str) -> ApiServer {
        let pki = super::pki::pki(&["127.0.0.1"]);
        ApiServer::start_with(Some(pki), Some(token.to_string())).await
    }

    async fn start_with(pki: Option<super::pki::Pki>, token: Option<String>) -> ApiServer {
        let listener = listen("127.0.0.1:0".parse().expect("an address"))
            .unwrap_or_else(|e| panic!("listening on 127.0.0.1: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let (stalled, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(1)),
            version: Mutex::new(("1".into(), "31".into(), "v1.31.0".into())),
            stalled,
            bookmark_interval: Mutex::new(Duration::from_millis(200)),
            faults: Mutex::new(Faults::default()),
            watches_stalled: watch::channel(false).0,
            resets: watch::channel(0).0,
            token,
            watch_list: Mutex::new(WatchList::Refused),
        });
        let server = ApiServer {
            shared,
            addr,
            pki,
            running: Mutex::new(None),
            held: Mutex::new(None),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        std::fs::write(server.kubeconfig_path(), server.kubeconfig()).expect("write kubeconfig");
        server.run(listener);
        server
    }

    fn run(&self, listener: TcpListener) {
        let cancel = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            self.shared.clone(),
            self.pki
                .as_ref()
                .map(|p| tokio_rustls::TlsAcceptor::from(p.server.clone())),
            cancel.clone(),
        ));
        *self.running.lock().unwrap() = Some(Running { cancel, task });
    }

    pub fn url(&self) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn kubeconfig(&self) -> String {
        let ca = match &self.pki {
            Some(pki) => format!("    certificate-authority: {}\n", pki.ca.display()),
            None => String::new(),
        };
        let user = match &self.shared.token {
            Some(token) => format!("\n    token: {token}"),
            None => " {}".to_string(),
        };
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n{ca}\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:{user}\n",
            self.url()
        )
    }

    /// A kubeconfig file pointing at this server (with its CA and token when it has them).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates or updates an object (by `kind`, `metadata.namespace`, `metadata.name`); returns
    /// its new resourceVersion.
    pub fn apply(&self, obj: Value) -> u64 {
        self.shared.lock().apply(obj)
    }

    /// Applies many objects under one lock (big clusters).
    pub fn apply_all(&self, objs: impl IntoIterator<Item = Value>) -> u64 {
        let mut state = self.shared.lock();
        for o in objs {
            state.apply(o);
        }
        state.rv
    }

    pub fn delete(&self, res: Res, namespace: &str, name: &str) -> bool {
        self.shared.lock().delete(res, namespace, name)
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the event history: a watch from any earlier resourceVersion gets 410 Expired,
    /// and `continue` tokens of earlier lists expire.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.oldest = state.rv;
        state.history.clear();
        state.snapshots.clear();
    }

    /// Ends every open watch with an ERROR event carrying a 410 Status, as the API server does
    /// when a watcher falls out of the compacted window.
    pub fn expire_watches(&self) {
        expire_watches(&mut self.shared.lock());
    }

    /// Ends every open watch cleanly (the stream just stops, as on an API server timeout).
    pub fn drop_watches(&self) {
        self.shared.lock().watches.clear();
    }

    pub fn open_watches(&self, res: Res) -> usize {
        let state = self.shared.lock();
        state
            .watches
            .iter()
            .filter(|w| w.res == res && !w.tx.is_closed())
            .count()
    }

    /// While stalled, connections are accepted and requests read but not answered; they are
    /// answered once unstalled.
    pub fn stall(&self, stalled: bool) {
        self.shared.stalled.send_replace(stalled);
    }

    /// Lists and watches of `res` get 403 Forbidden.
    pub fn forbid(&self, res: Res, forbidden: bool) {
        let mut state = self.shared.lock();
        if forbidden {
            state.forbidden.insert(res);
        } else {
            state.forbidden.remove(&res);
        }
    }

    /// Lists of every resource answer `code` (e.g. 500) with a Status, until `None`.
    pub fn fail_lists(&self, code: Option<u16>) {
        self.shared.faults.lock().unwrap().list_error = code;
    }

    /// Whether watches with `sendInitialEvents=true` (streaming lists) are served, refused or
    /// ignored; see [`WatchList`]. Refused at the start, as by the 1.31 `/version` reports.
    pub fn set_watch_list(&self, watch_list: WatchList) {
        *self.shared.watch_list.lock().unwrap() = watch_list;
    }

    /// Lists answer only after `delay` (a loaded API server, a big cluster).
    pub fn set_list_delay(&self, delay: Duration) {
        self.shared.faults.lock().unwrap().list_delay = delay;
    }

    /// A 410 storm: open watches end with 410 Expired now, and while it lasts every watch from
    /// a resourceVersion and every list continuation is 410 too. Fresh lists still work.
    /// Under the state lock, as watches read the flag: a watch starting as the storm begins
    /// either sees it or is expired with the others, never escapes both.
    pub fn set_410_storm(&self, storm: bool) {
        let mut state = self.shared.lock();
        self.shared.faults.lock().unwrap().storm_410 = storm;
        if storm {
            expire_watches(&mut state);
        }
    }

    /// While stalled, watches (open and new) deliver nothing, not even bookmarks, and do not
    /// end: a stuck connection. What they held back is delivered when released.
    pub fn stall_watches(&self, stalled: bool) {
        self.shared.watches_stalled.send_replace(stalled);
    }

    /// Resets every open connection (lists and watches in progress) with a TCP RST; the
    /// server keeps accepting new ones.
    pub fn reset_connections(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// How many list requests (not watches) of `res` have been made.
    pub fn list_requests(&self, res: Res) -> usize {
        let path = format!("/{}?", res.plural());
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| r.contains(&path) && !r.contains("watch=true"))
            .count()
    }

    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self.shared.bookmark_interval.lock().unwrap() = interval;
    }

    /// What `GET /version` reports: `major`, `minor` as the API server writes them (EKS
    /// writes minors like `28+`) and the gitVersion.
    pub fn set_version(&self, major: &str, minor: &str, git_version: &str) {
        *self.shared.version.lock().unwrap() = (major.into(), minor.into(), git_version.into());
    }

    /// Every request so far, as `GET /path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Closes the listener and every connection: clients see connection refused.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(r) = running {
            // Held before the listener closes: the port is never free for another socket.
            let held = bind(self.addr, false)
                .unwrap_or_else(|e| panic!("holding {} while stopped: {e}", self.addr));
            *self.held.lock().unwrap() = Some(held);
            r.cancel.cancel();
            let _ = r.task.await;
        }
        self.shared.lock().watches.clear();
    }

    /// Starts again on the same port with the same objects but a new resource-version
    /// history starting at `rv_base` (as after an etcd restore): every object gets a new
    /// resourceVersion, and old versions are unknown (too old or too large).
    pub async fn restart(&self, rv_base: u64) {
        self.stop().await;
        {
            let mut state = self.shared.lock();
            let mut fresh = State::new(rv_base);
            fresh.forbidden = std::mem::take(&mut state.forbidden);
            fresh.next_uid = state.next_uid;
            let old = std::mem::take(&mut state.objects);
            *state = fresh;
            for map in old.into_values() {
                for bytes in map.into_values() {
                    let obj: Value =
                        serde_json::from_slice(&bytes).expect("stored objects are JSON");
                    state.apply(obj);
                }
            }
            state.history.clear();
            state.oldest = state.rv;
        }
        let listener =
            listen(self.addr).unwrap_or_else(|e| panic!("listening on {} again: {e}", self.addr));
        self.held.lock().unwrap().take();
        self.run(listener);
    }
}

/// A socket bound to `addr` that shares the port with the server's other sockets and no one
/// else's. Why: `stop` and `restart` keep one port, as a restarted API server does, and a port
/// the server let go of is an ephemeral port like any other: another test's `bind(0)`, or an
/// outgoing connection's source port, took it during an outage, and the restart failed with
/// "address in use" (or the client would have talked to a stranger). Linux shares a port bound
/// with `SO_REUSEPORT` only with sockets of the same user that set it too, and refuses
/// connections to it while none listens. The holding socket (not a `listener`) must not set
/// `SO_REUSEADDR`: with it, any socket setting that too (std's and tokio's listeners do) could
/// bind the port while it is not listening.
fn bind(addr: SocketAddr, listener: bool) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.set_reuse_address(listener)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// The server's listener on `addr` (port 0: any free port), sharing its port as [`bind`] says.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = bind(addr, true)?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    TcpListener::from_std(socket.into())
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        if let Some(r) = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            r.cancel.cancel();
            r.task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    cancel: CancellationToken,
) {
    let mut connections = tokio::task::JoinSet::new();
    let ticker = tokio::spawn(bookmarks(shared.clone(), cancel.clone()));
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        // Every close is a reset, as when the process dies.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        let shared = shared.clone();
        let cancel = cancel.clone();
        let mut resets = shared.resets.subscribe();
        let tls = tls.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(shared, req).await) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let conn = async {
                match tls {
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            let _ = http.serve_connection(TokioIo::new(stream), service).await;
                        }
                    }
                    None => {
                        let _ = http.serve_connection(TokioIo::new(stream), service).await;
                    }
                }
            };
            tokio::select! {
                _ = conn => {}
                _ = cancel.cancelled() => {}
                _ = resets.changed() => {}
            }
        });
    }
    ticker.abort();
    // Dropping the listener refuses new connections; dropping the set closes open ones.
    drop(listener);
    connections.shutdown().await;
}

/// Sends a BOOKMARK at the current resourceVersion to every watch that asked for them.
async fn bookmarks(shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let interval = *shared.bookmark_interval.lock().unwrap();
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let mut state = shared.lock();
        let rv = state.rv.to_string();
        state.watches.retain(|w| {
            if !w.bookmarks {
                return !w.tx.is_closed();
            }
            let object = json!({
                "kind": w.res.kind(),
                "apiVersion": w.res.api_version(),
                "metadata": {"resourceVersion": rv},
            });
            let line = event_line("BOOKMARK", &serde_json::to_vec(&object).expect("JSON"));
            w.tx.send(line).is_ok()
        });
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_params(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// What a path asks for: a resource, an optional namespace, an optional object name.
struct Target {
    res: Res,
    namespace: Option<String>,
    name: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/api/v1/").map(|r| (r, "")).or_else(|| {
        path.strip_prefix("/apis/discovery.k8s.io/v1/")
            .map(|r| (r, "discovery.k8s.io"))
    })?;
    let (rest, group) = rest;
    let segments: Vec<&str> = rest.trim_end_matches('/').split('/').collect();
    let target = match segments.as_slice() {
        ["namespaces", ns, plural] => Target {
            res: Res::from_plural(plural)?,
            namespace: Some(ns.to_string()),
            name: None,
        },
        ["namespaces", ns, plural, name] => Target {
            res: Res::from_plural(plural)?,
            namespace: Some(ns.to_string()),
            name: Some(name.to_string()),
        },
        [plural] => Target {
            res: Res::from_plural(plural)?,
            namespace: None,
            name: None,
        },
        [plural, name] => Target {
            res: Res::from_plural(plural)?,
            namespace: None,
            name: Some(name.to_string()),
        },
        _ => return None,
    };
    if target.res.group() != group || (target.namespace.is_some() && !target.res.namespaced()) {
        return None;
    }
    Some(target)
}

fn forbidden(res: Res, verb: &str, namespace: Option<&str>) -> Response<Body> {
    let scope = match namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let group = res.group();
    let qualified = if group.is_empty() {
        res.plural().to_string()
    } else {
        format!("{}.{group}", res.plural())
    };
    status_response(
        403,
        "Forbidden",
        &format!(
            "{qualified} is forbidden: User \"system:serviceaccount:kube-system:clusterdns\" cannot {verb} resource \"{}\" in API group \"{group}\" {scope}",
            res.plural()
        ),
        Some(json!({"group": group, "kind": res.plural()})),
    )
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    shared.lock().requests.push(format!(
        "{} {}{}",
        req.method(),
        path,
        query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default()
    ));
    if let Some(token) = &shared.token {
        let bearer = format!("Bearer {token}");
        let given = req.headers().get(hyper::header::AUTHORIZATION);
        if given.is_none_or(|v| v.as_bytes() != bearer.as_bytes()) {
            return status_response(401, "Unauthorized", "Unauthorized", None);
        }
    }
    // Stalled: hold the request until released (or the server stops and drops us).
    let mut stalled = shared.stalled.subscribe();
    let _ = stalled.wait_for(|s| !*s).await;

    if req.method() != hyper::Method::GET {
        return status_response(
            405,
            "MethodNotAllowed",
            "the fake API server only serves GET",
            None,
        );
    }
    if path == "/version" {
        let (major, minor, git_version) = shared.version.lock().unwrap().clone();
        return json_response(
            200,
            &json!({
                "major": major, "minor": minor, "gitVersion": git_version,
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z",
                "goVersion": "go1.23.0", "compiler": "gc", "platform": "linux/amd64",
            }),
        );
    }
    let Some(target) = parse_path(&path) else {
        return status_response(
            404,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
    };
    let params = query_params(query.as_deref());
    let is_watch = matches!(params.get("watch").map(String::as_str), Some("1" | "true"));
    if shared.lock().forbidden.contains(&target.res) {
        let verb = match (&target.name, is_watch) {
            (_, true) => "watch",
            (Some(_), false) => "get",
            (None, false) => "list",
        };
        return forbidden(target.res, verb, target.namespace.as_deref());
    }
    if let Some(name) = &target.name {
        return get(&shared, &target, name);
    }
    let streaming = is_watch && params.get("sendInitialEvents").map(String::as_str) == Some("true");
    if is_watch && !streaming {
        return start_watch(&shared, &target, &params, false);
    }
    if streaming {
        let watch_list = *shared.watch_list.lock().unwrap();
        if let Some(refusal) = refuse_streaming(watch_list, &params) {
            return refusal;
        }
        if watch_list == WatchList::Ignored {
            return start_watch(&shared, &target, &params, false);
        }
    }
    // A streaming list is a list: it waits and fails as lists do.
    let (delay, error) = {
        let f = shared.faults.lock().unwrap();
        (f.list_delay, f.list_error)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(code) = error {
        let reason = if code == 500 {
            "InternalError"
        } else {
            "Error"
        };
        return status_response(
            code,
            reason,
            "etcdserver: request timed out (injected by the test API server)",
            None,
        );
    }
    if streaming {
        return start_watch(&shared, &target, &params, true);
    }
    list(&shared, &target, &params)
}

/// The API server's validation of a watch with `sendInitialEvents=true` (apimachinery's
/// `ValidateListOptions`): 422 Invalid, naming the field, when the gate is off or the request
/// lacks what streaming needs.
fn refuse_streaming(
    watch_list: WatchList,
    params: &HashMap<String, String>,
) -> Option<Response<Body>> {
    let invalid = |field: &str, message: &str| {
        Some(status_response(
            422,
            "Invalid",
            &format!("ListOptions.meta.k8s.io \"\" is invalid: {field}: Forbidden: {message}"),
            Some(
                json!({"group": "meta.k8s.io", "kind": "ListOptions", "causes": [
                    {"reason": "FieldValueForbidden", "message": format!("Forbidden: {message}"), "field": field}
                ]}),
            ),
        ))
    };
    let version_match = params.get("resourceVersionMatch").map(String::as_str);
    match watch_list {
        WatchList::Ignored => None,
        WatchList::RefusedByCache => Some(status_response(
            500,
            "InternalError",
            "Internal error occurred: sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
            None,
        )),
        _ if version_match.is_none_or(str::is_empty) => invalid(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless resourceVersionMatch is provided",
        ),
        WatchList::Refused => invalid(
            "sendInitialEvents",
            "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
        ),
        WatchList::Offered
            if params.get("allowWatchBookmarks").map(String::as_str) != Some("true") =>
        {
            invalid(
                "allowWatchBookmarks",
                "allowWatchBookmarks must be set to true when sendInitialEvents is set",
            )
        }
        WatchList::Offered if version_match != Some("NotOlderThan") => invalid(
            "resourceVersionMatch",
            "sendInitialEvents requires resourceVersionMatch=NotOlderThan",
        ),
        WatchList::Offered => None,
    }
}

fn get(shared: &Shared, target: &Target, name: &str) -> Response<Body> {
    let state = shared.lock();
    let key = (
        target.namespace.clone().unwrap_or_default(),
        name.to_string(),
    );
    match state.objects.get(&target.res).and_then(|m| m.get(&key)) {
        Some(bytes) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(bytes.clone()).boxed_unsync())
            .expect("valid response"),
        None => status_response(
            404,
            "NotFound",
            &format!("{} \"{name}\" not found", target.res.plural()),
            Some(json!({"name": name, "kind": target.res.plural()})),
        ),
    }
}

fn too_large(requested: u64, current: u64) -> Response<Body> {
    let mut response = status_response(
        504,
        "Timeout",
        &format!("Too large resource version: {requested}, current: {current}"),
        Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1,
        })),
    );
    // As the API server does for any Status with retryAfterSeconds.
    response
        .headers_mut()
        .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    response
}

fn list(shared: &Shared, target: &Target, params: &HashMap<String, String>) -> Response<Body> {
    let mut state = shared.lock();
    let limit = params
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    let storm = shared.faults.lock().unwrap().storm_410;
    let (rv, items, offset) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(_) if storm => {
            return json_response(
                410,
                &expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()),
            )
        }
        Some(token) => {
            let parsed = token
                .split_once(':')
                .and_then(|(id, off)| Some((id.parse::<u64>().ok()?, off.parse::<usize>().ok()?)));
            let Some((id, offset)) = parsed else {
                return status_response(400, "BadRequest", "invalid continue token", None);
            };
            match state.snapshots.get(&id) {
                Some(s) => (s.rv, s.items.clone(), offset),
                None => {
                    return json_response(
                        410,
                        &expired("The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter.".into()),
                    )
                }
            }
        }
        None => {
            let requested = params
                .get("resourceVersion")
                .filter(|v| !v.is_empty() && v.as_str() != "0")
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(requested) = requested {
                if requested > state.rv {
                    return too_large(requested, state.rv);
                }
                let exact = params.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
                if exact && requested != state.rv {
                    return json_response(
                        410,
                        &expired(format!(
                            "too old resource version: {requested} ({})",
                            state.rv
                        )),
                    );
                }
            }
            let items = Arc::new(state.items(target.res, target.namespace.as_deref()));
            (state.rv, items, 0)
        }
    };
    let end = limit.map_or(items.len(), |l| (offset + l).min(items.len()));
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if end < items.len() {
        let id = match params.get("continue").and_then(|t| t.split_once(':')) {
            Some((id, _)) => id.parse::<u64>().unwrap_or(0),
            None => {
                let id = state.next_snapshot;
                state.next_snapshot += 1;
                state.snapshots.insert(
                    id,
                    ListSnapshot {
                        rv,
                        items: items.clone(),
                    },
                );
                id
            }
        };
        metadata["continue"] = json!(format!("{id}:{end}"));
        metadata["remainingItemCount"] = json!(items.len() - end);
    }
    drop(state);
    let head = json!({
        "kind": format!("{}List", target.res.kind()),
        "apiVersion": target.res.api_version(),
        "metadata": metadata,
    });
    let mut body = serde_json::to_vec(&head).expect("JSON");
    body.pop(); // the closing brace: items follow
    body.extend_from_slice(b",\"items\":[");
    for (i, item) in items[offset.min(end)..end].iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(item);
    }
    body.extend_from_slice(b"]}");
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed_unsync())
        .expect("valid response")
}

/// Ends every open watch with 410 Expired, as when the watch cache drops old history.
fn expire_watches(state: &mut State) {
    let line = event_line(
        "ERROR",
        &serde_json::to_vec(&expired(format!(
            "too old resource version: {} ({})",
            state.oldest, state.rv
        )))
        .expect("JSON"),
    );
    for w in state.watches.drain(..) {
        let _ = w.tx.send(line.clone());
    }
}

/// A watch; with `initial_events` (a streaming list), one that starts with the current state
/// as ADDED events and a BOOKMARK annotated `k8s.io/initial-events-end` at its
/// resourceVersion, then goes on with the changes.
fn start_watch(
    shared: &Shared,
    target: &Target,
    params: &HashMap<String, String>,
    initial_events: bool,
) -> Response<Body> {
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let stalled = shared.watches_stalled.subscribe();
    {
        let mut state = shared.lock();
        let storm = shared.faults.lock().unwrap().storm_410;
        let requested = params
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && v.as_str() != "0")
            .map(|v| v.parse::<u64>());
        match requested {
            Some(Err(_)) => {
                return status_response(400, "BadRequest", "invalid resourceVersion", None);
            }
            Some(Ok(rv)) if initial_events && rv > state.rv => return too_large(rv, state.rv),
            // NotOlderThan any version we have: the current state, then the end bookmark.
            _ if initial_events => {
                for item in state.items(target.res, target.namespace.as_deref()) {
                    let _ = tx.send(event_line("ADDED", &item));
                }
                let end = json!({
                    "kind": target.res.kind(),
                    "apiVersion": target.res.api_version(),
                    "metadata": {
                        "resourceVersion": state.rv.to_string(),
                        "annotations": {"k8s.io/initial-events-end": "true"},
                    },
                });
                let _ = tx.send(event_line(
                    "BOOKMARK",
                    &serde_json::to_vec(&end).expect("JSON"),
                ));
            }
            // No version: the current state as ADDED events, then changes.
            None => {
                for item in state.items(target.res, target.namespace.as_deref()) {
                    let _ = tx.send(event_line("ADDED", &item));
                }
            }
            Some(Ok(rv)) if rv > state.rv => return too_large(rv, state.rv),
            Some(Ok(rv)) if rv < state.oldest || storm => {
                // The API server answers 200 and sends the 410 as an ERROR event.
                let oldest = if storm { state.rv + 1 } else { state.oldest };
                let status = expired(format!("too old resource version: {rv} ({oldest})"));
                let _ = tx.send(event_line(
                    "ERROR",
                    &serde_json::to_vec(&status).expect("JSON"),
                ));
                drop(tx);
                return watch_response(rx, None, stalled);
            }
            Some(Ok(rv)) => {
                for e in state.history.iter().filter(|e| {
                    e.rv > rv
                        && e.res == target.res
                        && target.namespace.as_deref().is_none_or(|n| n == e.namespace)
                }) {
                    let _ = tx.send(e.line.clone());
                }
            }
        }
        state.watches.push(OpenWatch {
            res: target.res,
            namespace: target.namespace.clone(),
            bookmarks: params.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
            tx,
        });
    }
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .map(Duration::from_secs);
    watch_response(rx, timeout, stalled)
}

/// A chunked body of watch event lines, ending when the server drops the watch or the
/// requested `timeoutSeconds` pass; while watches are stalled, neither lines nor the end.
fn watch_response(
    rx: mpsc::UnboundedReceiver<Bytes>,
    timeout: Option<Duration>,
    stalled: watch::Receiver<bool>,
) -> Response<Body> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let stream = futures::stream::unfold((rx, stalled), move |(mut rx, mut stalled)| async move {
        let next = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx.recv()).await.ok().flatten(),
            None => rx.recv().await,
        };
        // A stuck connection: hold until released (or the connection is dropped).
        let _ = stalled.wait_for(|s| !*s).await;
        next.map(|line| (Ok::<_, Infallible>(Frame::data(line)), (rx, stalled)))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed_unsync())
        .expect("valid response")
}
