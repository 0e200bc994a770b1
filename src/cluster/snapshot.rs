//! The store of stripped objects (changed by the sources) and the immutable, indexed snapshot
//! built from it (read by every query). Queries are a few hash lookups into the snapshot; a
//! change builds a new snapshot and swaps it in whole, so readers never wait for writers.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::model::{Endpoint, EndpointSlice, Namespace, Node, Pod, Port, Service, ServiceKind};
use super::objects::ObjectSet;
use super::zones::{ClientZones, PodNodes, PodNodesBuilder};

/// (namespace, name)
pub type Key = (Arc<str>, Arc<str>);

/// The DNS service whose addresses answer `ns.dns.<zone>` and the apex NS glue.
pub const DNS_SERVICE: (&str, &str) = ("kube-system", "kube-dns");

/// Every object the sources know, stripped. Cloned (cheaply: values are `Arc`s) by sources
/// that build a new snapshot while the old one serves.
#[derive(Debug, Default, Clone)]
pub struct Store {
    pub namespaces: Arc<HashMap<Arc<str>, Arc<Namespace>>>,
    pub services: Arc<HashMap<Key, Arc<Service>>>,
    pub slices: Arc<HashMap<Key, Arc<EndpointSlice>>>,
    /// v1 Endpoints converted to slices, keyed by service; used only for a service that has
    /// no EndpointSlice, so dumps holding both never double an address.
    pub legacy_endpoints: Arc<HashMap<Key, Vec<Arc<EndpointSlice>>>>,
    /// Each kind's table behind its own `Arc`: a copy of the store is a few reference counts,
    /// a change copies only its kind's table (`Arc::make_mut`), and a snapshot rebuilds only
    /// the indexes whose tables changed (compared by pointer).
    pub pods: Arc<HashMap<Key, Arc<Pod>>>,
    pub nodes: Arc<HashMap<Arc<str>, Arc<Node>>>,
    /// Pod IP -> node of the pods not kept in `pods` (file source without a need for pods):
    /// all that zone-aware answers need of them (cluster::zones).
    pub pod_nodes: Arc<PodNodes>,
}

fn key(ns: &str, name: &str) -> Key {
    (ns.into(), name.into())
}

impl Store {
    pub fn from_objects(objects: &ObjectSet) -> Store {
        let namespaces = objects
            .namespaces
            .iter()
            .filter_map(Namespace::from_api)
            .map(|ns| (ns.name.clone(), Arc::new(ns)))
            .collect();
        let services = objects
            .services
            .iter()
            .filter_map(Service::from_api)
            .map(|svc| ((svc.namespace.clone(), svc.name.clone()), Arc::new(svc)))
            .collect();
        let slices = objects
            .endpoint_slices
            .iter()
            .filter_map(EndpointSlice::from_api)
            .map(|slice| {
                (
                    (slice.namespace.clone(), slice.name.clone()),
                    Arc::new(slice),
                )
            })
            .collect();
        let mut legacy = HashMap::new();
        for ep in &objects.endpoints {
            let slices = EndpointSlice::from_endpoints(ep);
            if let Some(first) = slices.first() {
                let k = key(&first.namespace, &first.service);
                legacy.insert(k, slices.into_iter().map(Arc::new).collect());
            }
        }
        let pods = objects
            .pods
            .iter()
            .filter_map(Pod::from_api)
            .map(|pod| ((pod.namespace.clone(), pod.name.clone()), Arc::new(pod)))
            .collect();
        let nodes = objects
            .nodes
            .iter()
            .filter_map(Node::from_api)
            .map(|node| (node.name.clone(), Arc::new(node)))
            .collect();
        Store {
            namespaces: Arc::new(namespaces),
            services: Arc::new(services),
            slices: Arc::new(slices),
            legacy_endpoints: Arc::new(legacy),
            pods: Arc::new(pods),
            nodes: Arc::new(nodes),
            pod_nodes: Arc::default(),
        }
    }

    /// Reads every object below `path` straight into stripped form (see `objects::Sink`).
    pub fn load_path(
        path: &std::path::Path,
        keep_pods: bool,
    ) -> Result<Store, super::objects::LoadError> {
        let mut b = StoreBuilder {
            drop_pods: !keep_pods,
            ..Default::default()
        };
        for file in super::objects::manifest_files(path)? {
            let text =
                std::fs::read_to_string(&file).map_err(|source| super::objects::LoadError::Io {
                    path: file.clone(),
                    source,
                })?;
            super::objects::add_text_to(&mut b, &text, &file)?;
        }
        Ok(b.finish())
    }

    /// Whether `other` has the same service-side tables (the ones DNS service answers use).
    fn same_services(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.namespaces, &other.namespaces)
            && Arc::ptr_eq(&self.services, &other.services)
            && Arc::ptr_eq(&self.slices, &other.slices)
            && Arc::ptr_eq(&self.legacy_endpoints, &other.legacy_endpoints)
    }
}

/// A [`Sink`](super::objects::Sink) that strips every object as it is parsed.
#[derive(Default)]
pub struct StoreBuilder {
    namespaces: HashMap<Arc<str>, Arc<Namespace>>,
    services: HashMap<Key, Arc<Service>>,
    slices: HashMap<Key, Arc<EndpointSlice>>,
    legacy: HashMap<Key, Vec<Arc<EndpointSlice>>>,
    pods: HashMap<Key, Arc<Pod>>,
    nodes: HashMap<Arc<str>, Arc<Node>>,
    pod_nodes: PodNodesBuilder,
    /// Objects of kinds DNS does not use.
    pub skipped: usize,
    pub drop_pods: bool,
}

impl StoreBuilder {
    pub fn finish(self) -> Store {
        // The joins grew each table by doubling: kept as long as the objects, so trimmed to
        // what they hold.
        fn fit<K: std::hash::Hash + Eq, V>(mut map: HashMap<K, V>) -> Arc<HashMap<K, V>> {
            map.shrink_to_fit();
            Arc::new(map)
        }
        Store {
            namespaces: fit(self.namespaces),
            services: fit(self.services),
            slices: fit(self.slices),
            legacy_endpoints: fit(self.legacy),
            pods: fit(self.pods),
            nodes: fit(self.nodes),
            pod_nodes: Arc::new(self.pod_nodes.finish()),
        }
    }
}

impl super::objects::Fork for StoreBuilder {
    fn fork(&self) -> Self {
        StoreBuilder {
            drop_pods: self.drop_pods,
            ..Default::default()
        }
    }
    fn join(&mut self, later: Self) {
        self.namespaces.extend(later.namespaces);
        self.services.extend(later.services);
        self.slices.extend(later.slices);
        self.legacy.extend(later.legacy);
        self.pods.extend(later.pods);
        self.nodes.extend(later.nodes);
        self.pod_nodes.join(later.pod_nodes);
        self.skipped += later.skipped;
    }
}

impl super::objects::Sink for StoreBuilder {
    fn namespace(&mut self, o: k8s_openapi::api::core::v1::Namespace) {
        if let Some(ns) = Namespace::from_api(&o) {
            self.namespaces.insert(ns.name.clone(), Arc::new(ns));
        }
    }
    fn service(&mut self, o: k8s_openapi::api::core::v1::Service) {
        if let Some(svc) = Service::from_api(&o) {
            self.services
                .insert((svc.namespace.clone(), svc.name.clone()), Arc::new(svc));
        }
    }
    fn endpoint_slice(&mut self, o: k8s_openapi::api::discovery::v1::EndpointSlice) {
        if let Some(slice) = EndpointSlice::from_api(&o) {
            self.slices.insert(
                (slice.namespace.clone(), slice.name.clone()),
                Arc::new(slice),
            );
        }
    }
    fn endpoints(&mut self, o: k8s_openapi::api::core::v1::Endpoints) {
        let slices = EndpointSlice::from_endpoints(&o);
        if let Some(first) = slices.first() {
            let k = key(&first.namespace, &first.service);
            self.legacy
                .insert(k, slices.into_iter().map(Arc::new).collect());
        }
    }
    fn pod(&mut self, o: k8s_openapi::api::core::v1::Pod) {
        if self.drop_pods {
            if let Some(pod) = Pod::from_api(&o) {
                self.pod_nodes.add_pod(&pod);
            }
            return;
        }
        if let Some(pod) = Pod::from_api(&o) {
            self.pods
                .insert((pod.namespace.clone(), pod.name.clone()), Arc::new(pod));
        }
    }
    fn node(&mut self, o: k8s_openapi::api::core::v1::Node) {
        if let Some(mut node) = Node::from_api(&o) {
            // Labels serve placement and the prober, the users of pods; DNS needs `micro_vm`.
            if self.drop_pods {
                node.labels = Default::default();
            }
            self.nodes.insert(node.name.clone(), Arc::new(node));
        }
    }
    fn skip(&mut self) {
        self.skipped += 1;
    }
    fn wants(&self, api_version: &str, kind: &str) -> bool {
        !(self.drop_pods && api_version == "v1" && kind == "Pod")
    }
    fn wants_pod_placement(&self) -> bool {
        self.drop_pods
    }
    fn pod_placement(&mut self, ips: &[IpAddr], node: Option<&str>) {
        self.pod_nodes.add(ips, node);
    }
}

/// One endpoint address of a service, merged over all its slices. Its names are read from the
/// slice it came from (shared with the store), not copied, and its dashed address is formatted
/// when a query needs it: a cluster has far more endpoints than anything else DNS keeps, and
/// this is 16 bytes.
#[derive(Debug, Clone)]
pub struct EndpointEntry {
    /// The slice the endpoint came from (its names, addresses and ports are read from there).
    slice: Arc<EndpointSlice>,
    /// Index into `slice.endpoints`.
    endpoint: u32,
    /// Index into the endpoint's addresses (the API allows 100; a file could hold more).
    address: u16,
    /// Counts `publishNotReadyAddresses`: every endpoint of such a service is ready.
    pub ready: bool,
}

/// An address with `.`/`:` replaced by `-` (`10-3-0-1`, `fd00::1` -> `fd00--1`, `::1` ->
/// `0--1`), formatted on the stack: no allocation on the query path, nothing stored per
/// endpoint.
#[derive(Clone, Copy)]
pub struct DashedIp {
    /// The text is `buf[start..end]`: `start` is 1 unless a `0` had to go before a leading `-`.
    start: u8,
    end: u8,
    /// std formats an IPv6 address in at most 45 characters (with an embedded IPv4), plus
    /// the two `0`s around it.
    buf: [u8; 48],
}

impl DashedIp {
    pub fn new(ip: IpAddr) -> DashedIp {
        use std::io::Write;
        let mut buf = [0u8; 48];
        let mut w = std::io::Cursor::new(&mut buf[1..47]);
        // Cannot fail: the longest address fits (see `buf`).
        let _ = write!(w, "{ip}");
        let mut end = 1 + w.position() as usize;
        let (mut start, text) = (1, &mut buf[1..end]);
        // Only the family's own separator, as `dashed_ip` (an IPv4-mapped IPv6 address
        // keeps its dots).
        let sep = if ip.is_ipv6() { b':' } else { b'.' };
        for b in text.iter_mut() {
            if *b == sep {
                *b = b'-';
            }
        }
        if ip.is_ipv6() {
            // A name label cannot start or end with `-`.
            if buf[end - 1] == b'-' {
                buf[end] = b'0';
                end += 1;
            }
            if buf[1] == b'-' {
                buf[0] = b'0';
                start = 0;
            }
        }
        DashedIp {
            start,
            end: end as u8,
            buf,
        }
    }

    pub fn as_str(&self) -> &str {
        // ASCII only (digits, hex letters, `-`).
        std::str::from_utf8(&self.buf[self.start as usize..self.end as usize]).unwrap_or_default()
    }
}

/// An endpoint's name label: its hostname or pod name (borrowed from the store) or its
/// dashed address. Compares, hashes and prints as the text.
#[derive(Clone, Copy)]
pub enum Label<'a> {
    Name(&'a str),
    Dashed(DashedIp),
}

impl std::ops::Deref for Label<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Label::Name(s) => s,
            Label::Dashed(d) => d.as_str(),
        }
    }
}

impl PartialEq for Label<'_> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Label<'_> {}

impl PartialOrd for Label<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Label<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Label<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl std::fmt::Display for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Label<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl EndpointEntry {
    /// The `address`th address of the `endpoint`th endpoint of `slice`.
    fn new(
        slice: &Arc<EndpointSlice>,
        endpoint: usize,
        address: u16,
        ready: bool,
    ) -> EndpointEntry {
        EndpointEntry {
            slice: slice.clone(),
            endpoint: endpoint as u32,
            address,
            ready,
        }
    }

    fn source(&self) -> &Endpoint {
        &self.slice.endpoints[self.endpoint as usize]
    }

    pub fn address(&self) -> IpAddr {
        self.source().addresses[self.address as usize]
    }

    /// The ports of the endpoint's slice.
    pub fn ports(&self) -> &Arc<[Port]> {
        &self.slice.ports
    }

    /// The endpoint's own `hostname`, lowercased.
    pub fn hostname(&self) -> Option<&str> {
        self.source().hostname_lowercase()
    }

    /// The target pod's name, lowercased (for `endpoint_pod_names`).
    pub fn pod_name(&self) -> Option<&str> {
        self.slice.pod_name_lowercase(self.source())
    }

    /// The EndpointSlice's `zone` of this endpoint.
    pub fn zone(&self) -> Option<&str> {
        self.source().zone()
    }

    /// The slice's `hints.forZones` for this endpoint.
    pub fn for_zones(&self) -> Option<&[Arc<str>]> {
        self.source().for_zones()
    }

    pub fn node_name(&self) -> Option<&str> {
        self.source().node_name()
    }

    pub fn dashed(&self) -> DashedIp {
        DashedIp::new(self.address())
    }

    /// The name label of this endpoint: its hostname, else (with `endpoint_pod_names`) the pod
    /// name when shorter than 64 characters, else the dashed IP.
    pub fn label(&self, endpoint_pod_names: bool) -> Label<'_> {
        if let Some(h) = self.hostname() {
            return Label::Name(h);
        }
        if endpoint_pod_names {
            if let Some(p) = self.pod_name().filter(|p| p.len() < 64) {
                return Label::Name(p);
            }
        }
        Label::Dashed(self.dashed())
    }
}

#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub service: Arc<Service>,
    /// De-duplicated by address, in slice-name order for stable answers.
    pub endpoints: Vec<EndpointEntry>,
    /// The lowercase `<name>.<namespace>`: the entry's key and what its reverse targets
    /// answer with (they point at the entry).
    names: PtrNames,
    /// The slices (or converted v1 Endpoints) the entry was built from, in name order: what
    /// an incremental update starts from.
    slices: Box<[Arc<EndpointSlice>]>,
    /// Ready endpoints (indexes) sorted by name label (hostname or dashed IP), and by the
    /// label they get with `endpoint_pod_names` (None: the same order): an endpoint-name
    /// query is a binary search even for services with thousands of endpoints, at 4 bytes
    /// an endpoint.
    by_label: Box<[u32]>,
    by_pod_label: Option<Box<[u32]>>,
}

impl ServiceEntry {
    pub fn ready_endpoints(&self) -> impl Iterator<Item = &EndpointEntry> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    /// Ready endpoints whose name label is `label` (lowercase).
    pub fn endpoints_named(
        &self,
        label: &str,
        endpoint_pod_names: bool,
    ) -> impl Iterator<Item = &EndpointEntry> {
        let index = match (&self.by_pod_label, endpoint_pod_names) {
            (Some(pod), true) => pod,
            _ => &self.by_label,
        };
        let of = |i: &u32| self.endpoints[*i as usize].label(endpoint_pod_names);
        let start = index.partition_point(|i| &*of(i) < label);
        let len = index[start..]
            .iter()
            .take_while(|i| &*of(i) == label)
            .count();
        index[start..start + len]
            .iter()
            .map(|&i| &self.endpoints[i as usize])
    }
}

/// A service's lowercase `<name>.<namespace>`, kept in its entry: the entry's key in the
/// snapshot and the names its reverse targets (which point at the entry) answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PtrNames {
    key: Box<str>,
    /// Where the name ends (the `.`): a name could hold a `.` when it came from a file.
    dot: u32,
}

impl PtrNames {
    fn new(name: &str, namespace: &str) -> PtrNames {
        PtrNames {
            key: service_key(namespace, name),
            dot: name.len() as u32,
        }
    }

    pub fn service(&self) -> &str {
        &self.key[..self.dot as usize]
    }

    pub fn namespace(&self) -> &str {
        &self.key[self.dot as usize + 1..]
    }
}

/// An entry of the snapshot's service table, a set looked up by `&str` (`<name>.<namespace>`,
/// the entry's own [`PtrNames`]): the table costs no key of its own, 8 bytes a slot.
#[derive(Debug, Clone)]
struct ServiceKey(Arc<ServiceEntry>);

impl std::borrow::Borrow<str> for ServiceKey {
    fn borrow(&self) -> &str {
        &self.0.names.key
    }
}

impl PartialEq for ServiceKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.names.key == other.0.names.key
    }
}

impl Eq for ServiceKey {}

impl std::hash::Hash for ServiceKey {
    /// As `str` hashes: `Borrow<str>` requires it.
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self.0.names.key).hash(state)
    }
}

/// What a reverse lookup of an IP finds: a service cluster IP (`<svc>.<ns>`), or an
/// endpoint address (`<hostname>.<svc>.<ns>`, one per service selecting it). 16 bytes: the
/// reverse map holds one for every address in the cluster.
#[derive(Clone)]
pub struct PtrTarget {
    /// The service's entry (its names).
    entry: Arc<ServiceEntry>,
    /// Index into the service's endpoints; `SERVICE_IP` for a cluster IP.
    index: u32,
}

impl PartialEq for PtrTarget {
    fn eq(&self, other: &Self) -> bool {
        self.index == other.index && self.names() == other.names()
    }
}

impl Eq for PtrTarget {}

impl std::fmt::Debug for PtrTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PtrTarget")
            .field("service", &self.service())
            .field("namespace", &self.namespace())
            .field("index", &self.index)
            .finish()
    }
}

const SERVICE_IP: u32 = u32::MAX;

impl PtrTarget {
    /// The service's name (lowercase).
    pub fn service(&self) -> &str {
        self.entry.names.service()
    }

    /// The service's namespace (lowercase).
    pub fn namespace(&self) -> &str {
        self.entry.names.namespace()
    }

    /// The endpoint's index in the service's endpoints; None for a cluster IP.
    pub fn endpoint(&self) -> Option<usize> {
        (self.index != SERVICE_IP).then_some(self.index as usize)
    }

    fn is_service(&self) -> bool {
        self.index == SERVICE_IP
    }

    fn names(&self) -> (&str, &str) {
        (self.service(), self.namespace())
    }

    /// Service targets first, then by `<name>.<namespace>`: the order answers list them in.
    fn order(&self, other: &PtrTarget) -> std::cmp::Ordering {
        let key = |t: &PtrTarget| {
            let (s, n) = t.names();
            let (s, n) = (s.as_bytes(), n.as_bytes());
            s.iter().chain(b".").chain(n).copied().collect::<Vec<u8>>()
        };
        other
            .is_service()
            .cmp(&self.is_service())
            .then_with(|| key(self).cmp(&key(other)))
    }
}

/// What a query sees of an address's targets: an IP that is a service cluster IP answers
/// only as the service(s). Endpoint targets are kept even when a service owns the IP (and
/// hides them), so that deleting that service brings them back without a rebuild.
fn visible(all: &[PtrTarget]) -> &[PtrTarget] {
    let services = all.iter().take_while(|t| t.is_service()).count();
    if services > 0 {
        &all[..services]
    } else {
        all
    }
}

/// One shard of the reverse map: per address family, two flat arrays sorted by address, each
/// address's targets side by side in [`PtrTarget::order`]. Not a hash map of lists: 20 bytes
/// an IPv4 target instead of ~110 (hash table slack, a list per address, a 17-byte `IpAddr`
/// where 4 bytes do), and a lookup is a binary search of a few hundred addresses.
#[derive(Debug, Default, Clone)]
struct PtrShard {
    v4: PtrRows<Ipv4Addr>,
    v6: PtrRows<Ipv6Addr>,
}

#[derive(Debug, Clone)]
struct PtrRows<A> {
    ips: Vec<A>,
    targets: Vec<PtrTarget>,
}

impl<A> Default for PtrRows<A> {
    fn default() -> Self {
        PtrRows {
            ips: Vec::new(),
            targets: Vec::new(),
        }
    }
}

impl<A: Ord + Copy> PtrRows<A> {
    fn push(&mut self, ip: A, t: PtrTarget) {
        self.ips.push(ip);
        self.targets.push(t);
    }

    /// Restores the order after pushes.
    fn sort(&mut self) {
        let mut pairs: Vec<(A, PtrTarget)> =
            self.ips.drain(..).zip(self.targets.drain(..)).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.order(&b.1)));
        let (ips, targets): (Vec<A>, Vec<PtrTarget>) = pairs.into_iter().unzip();
        self.ips = ips;
        self.targets = targets;
        self.ips.shrink_to_fit();
        self.targets.shrink_to_fit();
    }

    /// Keeps the targets `keep` says yes to, in order.
    fn retain(&mut self, keep: &impl Fn(&PtrTarget) -> bool) {
        let mut w = 0;
        for r in 0..self.targets.len() {
            if keep(&self.targets[r]) {
                self.ips.swap(w, r);
                self.targets.swap(w, r);
                w += 1;
            }
        }
        self.ips.truncate(w);
        self.targets.truncate(w);
    }

    /// Every target of `ip`.
    fn get(&self, ip: &A) -> &[PtrTarget] {
        let start = self.ips.partition_point(|x| x < ip);
        let len = self.ips[start..].partition_point(|x| x == ip);
        &self.targets[start..start + len]
    }

    /// Each address with all its targets.
    fn entries(&self) -> impl Iterator<Item = (A, &[PtrTarget])> {
        let mut i = 0;
        std::iter::from_fn(move || {
            let ip = *self.ips.get(i)?;
            let len = self.ips[i..].partition_point(|x| *x == ip);
            let targets = &self.targets[i..i + len];
            i += len;
            Some((ip, targets))
        })
    }
}

impl PtrShard {
    fn push(&mut self, ip: IpAddr, t: PtrTarget) {
        match ip {
            IpAddr::V4(ip) => self.v4.push(ip, t),
            IpAddr::V6(ip) => self.v6.push(ip, t),
        }
    }

    /// Restores the order after pushes.
    fn sort(&mut self) {
        self.v4.sort();
        self.v6.sort();
    }

    /// Keeps the targets `keep` says yes to, in order.
    fn retain(&mut self, keep: impl Fn(&PtrTarget) -> bool) {
        self.v4.retain(&keep);
        self.v6.retain(&keep);
    }

    /// Every target of `ip`.
    fn get(&self, ip: &IpAddr) -> &[PtrTarget] {
        match ip {
            IpAddr::V4(ip) => self.v4.get(ip),
            IpAddr::V6(ip) => self.v6.get(ip),
        }
    }

    /// Each address with all its targets (IPv4 first, as `IpAddr` orders them).
    fn entries(&self) -> impl Iterator<Item = (IpAddr, &[PtrTarget])> {
        let v4 = self.v4.entries().map(|(ip, t)| (IpAddr::V4(ip), t));
        v4.chain(self.v6.entries().map(|(ip, t)| (IpAddr::V6(ip), t)))
    }
}

/// The reverse map in shards behind their own `Arc`s: a change copies only the shards of the
/// addresses it touches, not one map of every address in the cluster.
const PTR_SHARDS: usize = 256;

fn ptr_shard(ip: &IpAddr) -> usize {
    // The low bytes vary most between addresses of one cluster.
    let low = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            u16::from_be_bytes([o[2], o[3]])
        }
        IpAddr::V6(v6) => {
            let o = v6.octets();
            u16::from_be_bytes([o[14], o[15]])
        }
    };
    (low as usize) % PTR_SHARDS
}

/// The immutable view every query reads. All keys are lowercase.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Unix time of the last change, the SOA serial.
    pub serial: u32,
    /// The first complete load has happened; until then NXDOMAIN becomes SERVFAIL.
    pub synced: bool,
    index: Arc<ServiceIndex>,
    pods_by_ip: Arc<HashMap<IpAddr, Vec<Arc<Pod>>>>,
    /// Pod IP -> zone, for zone-aware answers (cluster::zones).
    client_zones: Arc<ClientZones>,
    pub dns_service_ips: Vec<IpAddr>,
    /// The store the snapshot was built from, for placement and debugging views.
    pub store: Arc<Store>,
}

/// Everything built from services and endpoints; shared between snapshots while only pods
/// or nodes change.
#[derive(Debug, Default)]
struct ServiceIndex {
    /// Namespace objects (lowercase), rebuilt only when they change.
    object_namespaces: Arc<HashSet<Box<str>>>,
    /// Services per (lowercase) namespace: a namespace with a service exists even without
    /// a Namespace object.
    service_namespaces: HashMap<Arc<str>, u32>,
    /// Keyed `<name>.<namespace>`, which is how the labels stand in a query name. Entries
    /// are shared with the previous snapshot unless their service changed.
    services: HashSet<ServiceKey>,
    /// `PTR_SHARDS` shards (empty in the default index).
    ptr: Box<[Arc<PtrShard>]>,
}

pub fn now_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

/// The dashed form as a `String`: the reference [`DashedIp`] is tested against (and for callers
/// that keep the text).
pub fn dashed_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => {
            let mut s = v6.to_string().replace(':', "-");
            if s.ends_with('-') {
                s.push('0');
            }
            if s.starts_with('-') {
                s.insert(0, '0');
            }
            s
        }
    }
}

fn lower(s: &str) -> Box<str> {
    s.to_ascii_lowercase().into()
}

impl Snapshot {
    pub fn build(store: Arc<Store>, serial: u32, synced: bool) -> Snapshot {
        let index = Arc::new(ServiceIndex::build(&store));
        let pods_by_ip = Arc::new(pods_by_ip(&store));
        let zones = Arc::new(client_zones(&store, None));
        Snapshot::assemble(store, index, pods_by_ip, zones, serial, synced)
    }

    /// Like [`Snapshot::build`], reusing `prev`'s indexes whose tables did not change: a pod
    /// event does not rebuild the service index, a service event not the pod index.
    pub fn rebuild(prev: &Snapshot, store: Arc<Store>, serial: u32, synced: bool) -> Snapshot {
        Snapshot::rebuild_changed(prev, store, None, serial, synced)
    }

    /// [`Snapshot::rebuild`] told which service and slice keys may differ from `prev`'s
    /// store (`None`: unknown, so every key is compared): an update then looks only at them.
    pub fn rebuild_changed(
        prev: &Snapshot,
        store: Arc<Store>,
        changed: Option<&Changed>,
        serial: u32,
        synced: bool,
    ) -> Snapshot {
        let index = if prev.store.same_services(&store) {
            prev.index.clone()
        } else {
            Arc::new(
                ServiceIndex::update(&prev.index, &prev.store, &store, changed)
                    .unwrap_or_else(|| ServiceIndex::build(&store)),
            )
        };
        let pods_by_ip = if Arc::ptr_eq(&prev.store.pods, &store.pods) {
            prev.pods_by_ip.clone()
        } else {
            Arc::new(pods_by_ip(&store))
        };
        let client_zones = if Arc::ptr_eq(&prev.store.pods, &store.pods)
            && Arc::ptr_eq(&prev.store.nodes, &store.nodes)
            && Arc::ptr_eq(&prev.store.pod_nodes, &store.pod_nodes)
        {
            prev.client_zones.clone()
        } else {
            Arc::new(client_zones(
                &store,
                Some((&prev.store, &prev.client_zones)),
            ))
        };
        Snapshot::assemble(store, index, pods_by_ip, client_zones, serial, synced)
    }

    fn assemble(
        store: Arc<Store>,
        index: Arc<ServiceIndex>,
        pods_by_ip: Arc<HashMap<IpAddr, Vec<Arc<Pod>>>>,
        client_zones: Arc<ClientZones>,
        serial: u32,
        synced: bool,
    ) -> Snapshot {
        let dns_service_ips = index
            .services
            .get(format!("{}.{}", DNS_SERVICE.1, DNS_SERVICE.0).as_str())
            .map(|e| e.0.service.cluster_ips.clone())
            .unwrap_or_default();
        Snapshot {
            serial,
            synced,
            index,
            pods_by_ip,
            client_zones,
            dns_service_ips,
            store,
        }
    }
}

/// Every pod by each of its IPs (several share a host-network address). The pods
/// themselves, not just their namespaces: the `labels` selector applies to them too.
fn pods_by_ip(store: &Store) -> HashMap<IpAddr, Vec<Arc<Pod>>> {
    let mut pods_by_ip: HashMap<IpAddr, Vec<Arc<Pod>>> = HashMap::new();
    for pod in store.pods.values() {
        for ip in &pod.ips {
            pods_by_ip.entry(*ip).or_default().push(pod.clone());
        }
    }
    pods_by_ip
}

/// Pod IP -> zone from the kept pods and the placement-only ones; the pod table of `prev`
/// (the previous store and its zones) is reused when only nodes changed.
fn client_zones(store: &Store, prev: Option<(&Store, &ClientZones)>) -> ClientZones {
    let pods = match prev {
        Some((old, zones))
            if Arc::ptr_eq(&old.pods, &store.pods)
                && Arc::ptr_eq(&old.pod_nodes, &store.pod_nodes) =>
        {
            zones.pods().clone()
        }
        _ if store.pods.is_empty() => store.pod_nodes.clone(),
        _ => Arc::new(PodNodes::from_pods(store.pods.values())),
    };
    ClientZones::new(pods, &store.nodes)
}

/// `<name>.<namespace>` lowercased: how the labels stand in a query name.
fn service_key(ns: &str, name: &str) -> Box<str> {
    format!("{name}.{ns}").to_ascii_lowercase().into()
}

/// More changed services than this in one publish: a full rebuild costs no more.
const INCREMENTAL_LIMIT: usize = 256;

impl ServiceEntry {
    /// The entry of `svc` from its slices (in name order): endpoints merged and de-duplicated
    /// by address, name labels indexed.
    fn build(svc: Arc<Service>, slices: Vec<Arc<EndpointSlice>>) -> ServiceEntry {
        let publish = svc.publish_not_ready;
        let mut endpoints = Vec::new();
        let mut seen: HashSet<IpAddr> = HashSet::new();
        for slice in &slices {
            for (i, ep) in slice.endpoints.iter().enumerate() {
                // The API allows 100 addresses; a file with more than 65 536 in one endpoint
                // has the rest ignored.
                for (j, &address) in ep.addresses.iter().enumerate().take(1 << 16) {
                    if seen.insert(address) {
                        let ready = ep.ready || publish;
                        endpoints.push(EndpointEntry::new(slice, i, j as u16, ready));
                    }
                }
            }
        }
        endpoints.shrink_to_fit();
        let sorted_by = |pod_names: bool| -> Box<[u32]> {
            let mut idx: Vec<u32> = (0..endpoints.len() as u32)
                .filter(|&i| endpoints[i as usize].ready)
                .collect();
            // Stable: endpoints of one label stay in endpoint order. Cached: a dashed label
            // is formatted once, not at every comparison.
            idx.sort_by_cached_key(|i| endpoints[*i as usize].label(pod_names));
            idx.into_boxed_slice()
        };
        let by_label = sorted_by(false);
        let differs = endpoints
            .iter()
            .any(|e| e.ready && e.label(false) != e.label(true));
        let by_pod_label = differs.then(|| sorted_by(true));
        ServiceEntry {
            names: PtrNames::new(&svc.name, &svc.namespace),
            service: svc,
            endpoints,
            slices: slices.into_boxed_slice(),
            by_label,
            by_pod_label,
        }
    }

    /// The entry's (lowercase) namespace, for counting services per namespace.
    fn namespace(&self) -> Arc<str> {
        super::model::intern(self.names.namespace())
    }

    /// The reverse targets of this service: cluster IPs, then ready endpoints.
    fn ptr_targets(self: &Arc<Self>) -> impl Iterator<Item = (IpAddr, PtrTarget)> + '_ {
        let services = self.service.cluster_ips.iter().map(|ip| {
            (
                *ip,
                PtrTarget {
                    entry: self.clone(),
                    index: SERVICE_IP,
                },
            )
        });
        let endpoints = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.ready && self.service.kind != ServiceKind::ExternalName)
            .map(|(index, e)| {
                (
                    e.address(),
                    PtrTarget {
                        entry: self.clone(),
                        index: index as u32,
                    },
                )
            });
        services.chain(endpoints)
    }
}

/// The slices of each service, in slice-name order (so answers come out the same on every
/// rebuild); v1 Endpoints only for services without a slice.
fn slices_by_service(store: &Store) -> HashMap<(&str, &str), Vec<Arc<EndpointSlice>>> {
    let mut groups: HashMap<(&str, &str), Vec<Arc<EndpointSlice>>> = HashMap::new();
    for slice in store.slices.values() {
        groups
            .entry((&*slice.namespace, &*slice.service))
            .or_default()
            .push(slice.clone());
    }
    for list in groups.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for ((ns, svc), legacy) in store.legacy_endpoints.iter() {
        groups
            .entry((&**ns, &**svc))
            .or_insert_with(|| legacy.clone());
    }
    groups
}

/// The service and EndpointSlice keys a source changed since its last publish: every key
/// whose value may differ between the two stores (extra keys are harmless).
#[derive(Debug, Default, Clone)]
pub struct Changed {
    pub services: HashSet<Key>,
    pub slices: HashSet<Key>,
}

impl Changed {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.slices.is_empty()
    }
}

/// [`diff`] over only `keys` (the keys that may have changed), instead of both tables.
fn diff_keys<'a, K: std::hash::Hash + Eq, V>(
    old: &'a HashMap<K, Arc<V>>,
    new: &'a HashMap<K, Arc<V>>,
    keys: &'a HashSet<K>,
    mut f: impl FnMut(&'a K, Option<&'a V>, Option<&'a V>),
) {
    for k in keys {
        match (old.get(k), new.get(k)) {
            (Some(o), Some(n)) if Arc::ptr_eq(o, n) => {}
            (None, None) => {}
            (o, n) => f(k, o.map(|o| &**o), n.map(|n| &**n)),
        }
    }
}

/// Calls `f` for every key whose value differs (by pointer) between two tables, with the
/// old and the new value (either absent when the key was added or removed).
fn diff<'a, K: std::hash::Hash + Eq, V>(
    old: &'a HashMap<K, Arc<V>>,
    new: &'a HashMap<K, Arc<V>>,
    mut f: impl FnMut(&'a K, Option<&'a V>, Option<&'a V>),
) {
    if std::ptr::eq(old, new) {
        return;
    }
    for (k, v) in new {
        match old.get(k) {
            Some(o) if Arc::ptr_eq(o, v) => {}
            o => f(k, o.map(|o| &**o), Some(v)),
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            f(k, Some(v), None);
        }
    }
}

fn namespace_set(store: &Store) -> HashSet<Box<str>> {
    store.namespaces.keys().map(|n| lower(n)).collect()
}

impl ServiceIndex {
    fn build(store: &Store) -> ServiceIndex {
        let mut groups = slices_by_service(store);
        let mut services: HashSet<ServiceKey> = HashSet::with_capacity(store.services.len());
        let mut service_namespaces: HashMap<Arc<str>, u32> = HashMap::new();
        for ((ns, name), svc) in store.services.iter() {
            let slices = groups.remove(&(&**ns, &**name)).unwrap_or_default();
            let entry = ServiceEntry::build(svc.clone(), slices);
            *service_namespaces.entry(entry.namespace()).or_default() += 1;
            // `replace`: a later service of the same lowercase name wins, as a map insert.
            services.replace(ServiceKey(Arc::new(entry)));
        }
        let mut shards: Vec<PtrShard> = (0..PTR_SHARDS).map(|_| PtrShard::default()).collect();
        for ServiceKey(e) in services.iter() {
            for (ip, t) in e.ptr_targets() {
                shards[ptr_shard(&ip)].push(ip, t);
            }
        }
        shards.iter_mut().for_each(PtrShard::sort);
        ServiceIndex {
            object_namespaces: Arc::new(namespace_set(store)),
            service_namespaces,
            services,
            ptr: shards.into_iter().map(Arc::new).collect(),
        }
    }

    /// Rebuilds only the entries of services whose Service or slices changed since
    /// `prev_store`, and the reverse entries of their addresses; None when a full build is
    /// as good (many changes, v1 Endpoints).
    fn update<'a>(
        prev: &ServiceIndex,
        prev_store: &'a Store,
        store: &'a Store,
        changed: Option<&'a Changed>,
    ) -> Option<ServiceIndex> {
        if !Arc::ptr_eq(&prev_store.legacy_endpoints, &store.legacy_endpoints)
            || prev.ptr.len() != PTR_SHARDS
        {
            return None;
        }
        let mut affected: HashSet<(&str, &str)> = HashSet::new();
        // The names of the changed slices of each affected service.
        let mut changed_slices: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
        let mut on_service =
            |(ns, name): &'a Key, _: Option<&'a Service>, _: Option<&'a Service>| {
                affected.insert((ns, name));
            };
        match changed {
            Some(c) => diff_keys(
                &prev_store.services,
                &store.services,
                &c.services,
                &mut on_service,
            ),
            None => diff(&prev_store.services, &store.services, &mut on_service),
        }
        let mut on_slice = |(ns, name): &'a Key,
                            old: Option<&'a EndpointSlice>,
                            new: Option<&'a EndpointSlice>| {
            // A slice that moved to another service changes both.
            for s in old.into_iter().chain(new) {
                let svc = (&**ns, &*s.service);
                affected.insert(svc);
                changed_slices.entry(svc).or_default().push(name);
            }
        };
        match changed {
            Some(c) => diff_keys(&prev_store.slices, &store.slices, &c.slices, &mut on_slice),
            None => diff(&prev_store.slices, &store.slices, &mut on_slice),
        }
        if affected.len() > INCREMENTAL_LIMIT {
            return None;
        }
        // Slices of services that had no entry yet (a Service created after its slices)
        // can only be found by a scan of the table.
        let unknown: HashSet<(&str, &str)> = affected
            .iter()
            .filter(|(ns, name)| !prev.services.contains(&*service_key(ns, name)))
            .copied()
            .collect();
        let mut scanned: HashMap<(&str, &str), Vec<Arc<EndpointSlice>>> = HashMap::new();
        if !unknown.is_empty() {
            for slice in store.slices.values() {
                let k = (&*slice.namespace, &*slice.service);
                if unknown.contains(&k) {
                    scanned.entry(k).or_default().push(slice.clone());
                }
            }
        }

        let mut services = prev.services.clone();
        let mut service_namespaces = prev.service_namespaces.clone();
        let mut old_entries: Vec<Arc<ServiceEntry>> = Vec::new();
        let mut new_entries: Vec<Arc<ServiceEntry>> = Vec::new();
        for &(ns, name) in &affected {
            let skey = service_key(ns, name);
            if let Some(ServiceKey(old)) = services.take(&*skey) {
                let ns = old.names.namespace();
                if let Some(n) = service_namespaces.get_mut(ns) {
                    *n -= 1;
                    if *n == 0 {
                        service_namespaces.remove(ns);
                    }
                }
                old_entries.push(old);
            }
            let Some(svc) = store.services.get(&key(ns, name)) else {
                continue;
            };
            let mut slices: Vec<Arc<EndpointSlice>> = match scanned.remove(&(ns, name)) {
                Some(list) => list,
                None => {
                    // The previous entry's slices, as the store has them now, plus the
                    // changed ones.
                    let mut list: Vec<Arc<EndpointSlice>> = Vec::new();
                    let prev_entry = prev.services.get(&*skey).map(|k| &k.0);
                    let names = prev_entry
                        .iter()
                        .flat_map(|e| e.slices.iter().map(|s| &*s.name))
                        .chain(
                            changed_slices
                                .get(&(ns, name))
                                .into_iter()
                                .flatten()
                                .copied(),
                        );
                    for slice_name in names {
                        // Converted v1 Endpoints are not in the table: they come back below
                        // if the service still has no slice.
                        if let Some(now) = store.slices.get(&key(ns, slice_name)) {
                            if &*now.service == name && !list.iter().any(|x| x.name == now.name) {
                                list.push(now.clone());
                            }
                        }
                    }
                    list
                }
            };
            slices.sort_by(|a, b| a.name.cmp(&b.name));
            if slices.is_empty() {
                if let Some(legacy) = store.legacy_endpoints.get(&key(ns, name)) {
                    slices = legacy.clone();
                }
            }
            let entry = Arc::new(ServiceEntry::build(svc.clone(), slices));
            *service_namespaces.entry(entry.namespace()).or_default() += 1;
            services.replace(ServiceKey(entry.clone()));
            new_entries.push(entry);
        }

        // Reverse entries: every address an old or new entry names loses the old entries'
        // targets and gains the new ones'.
        let mut ptr: Vec<Arc<PtrShard>> = prev.ptr.to_vec();
        let gone: HashSet<(&str, &str)> = old_entries
            .iter()
            .map(|e| (e.names.service(), e.names.namespace()))
            .collect();
        // The old entries' targets are only in the shards of their addresses.
        let mut touched: HashSet<usize> = HashSet::new();
        for e in &old_entries {
            for (ip, _) in e.ptr_targets() {
                touched.insert(ptr_shard(&ip));
            }
        }
        for &i in &touched {
            Arc::make_mut(&mut ptr[i]).retain(|t| !gone.contains(&t.names()));
        }
        let mut grown: HashSet<usize> = HashSet::new();
        for e in &new_entries {
            for (ip, t) in e.ptr_targets() {
                let i = ptr_shard(&ip);
                Arc::make_mut(&mut ptr[i]).push(ip, t);
                grown.insert(i);
            }
        }
        for &i in &grown {
            Arc::make_mut(&mut ptr[i]).sort();
        }

        let object_namespaces = if Arc::ptr_eq(&prev_store.namespaces, &store.namespaces) {
            prev.object_namespaces.clone()
        } else {
            Arc::new(namespace_set(store))
        };
        Some(ServiceIndex {
            object_namespaces,
            service_namespaces,
            services,
            ptr: ptr.into_boxed_slice(),
        })
    }
}

impl Snapshot {
    /// An empty snapshot that has not synced: every would-be NXDOMAIN is SERVFAIL.
    pub fn unsynced() -> Snapshot {
        Snapshot {
            serial: now_serial(),
            ..Default::default()
        }
    }

    /// `namespace` must be lowercase.
    pub fn namespace_exists(&self, namespace: &str) -> bool {
        self.index.object_namespaces.contains(namespace)
            || self.index.service_namespaces.contains_key(namespace)
    }

    /// `key` is `<name>.<namespace>`, lowercase.
    pub fn service(&self, key: &str) -> Option<&ServiceEntry> {
        self.index.services.get(key).map(|k| &*k.0)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.index.services.iter().map(|k| &*k.0)
    }

    /// Every reverse entry (for zone export).
    pub fn ptr_entries(&self) -> impl Iterator<Item = (IpAddr, &[PtrTarget])> {
        self.index
            .ptr
            .iter()
            .flat_map(|shard| shard.entries().map(|(ip, t)| (ip, visible(t))))
    }

    pub fn ptr(&self, ip: &IpAddr) -> &[PtrTarget] {
        self.index
            .ptr
            .get(ptr_shard(ip))
            .map(|shard| visible(shard.get(ip)))
            .unwrap_or(&[])
    }

    /// Whether a pod with this IP exists in this (lowercase) namespace.
    pub fn pod_ip_in_namespace(&self, ip: &IpAddr, namespace: &str) -> bool {
        self.pods_at(ip)
            .iter()
            .any(|p| p.namespace.eq_ignore_ascii_case(namespace))
    }

    /// The namespace of a pod with this IP (the first, when several share it: host network).
    pub fn namespace_of_pod_ip(&self, ip: &IpAddr) -> Option<&str> {
        self.pods_at(ip).first().map(|p| &*p.namespace)
    }

    /// The pods with this IP.
    /// The zone of the pod with this IP, through its node's `topology.kubernetes.io/zone`.
    pub fn pod_zone(&self, ip: &IpAddr) -> Option<&Arc<str>> {
        self.client_zones.pod_zone(ip)
    }

    pub fn pods_at(&self, ip: &IpAddr) -> &[Arc<Pod>] {
        self.pods_by_ip.get(ip).map_or(&[], Vec::as_slice)
    }

    pub fn service_count(&self) -> usize {
        self.index.services.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::{EndpointExtra, EndpointsBuilder};
    use std::path::Path;

    const TWO_SERVICES_ONE_POD: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: a, namespace: x}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: x}
spec: {clusterIP: None}
---
apiVersion: v1
kind: Service
metadata: {name: c, namespace: x}
spec: {clusterIP: 10.0.0.9}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: x, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.5], hostname: h}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, namespace: x, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.5]}, {addresses: [10.0.0.9]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-2, namespace: x, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.5], conditions: {ready: false}}, {addresses: [10.1.0.6], conditions: {ready: false}}]
"#;

    fn snapshot() -> Snapshot {
        let mut set = ObjectSet::default();
        set.add_text(TWO_SERVICES_ONE_POD, Path::new("t.yaml"))
            .unwrap();
        Snapshot::build(Arc::new(Store::from_objects(&set)), 1, true)
    }

    /// Everything a query can see, in a comparable form.
    fn dump(snap: &Snapshot) -> Vec<String> {
        let mut out: Vec<String> = snap
            .services()
            .map(|e| {
                let eps: Vec<String> = e
                    .endpoints
                    .iter()
                    .map(|x| format!("{}:{}:{}", x.address(), x.ready, x.label(false)))
                    .collect();
                format!(
                    "{}/{} {:?} {:?}",
                    e.service.namespace, e.service.name, e.service.cluster_ips, eps
                )
            })
            .collect();
        let mut ptrs: Vec<String> = snap
            .ptr_entries()
            .map(|(ip, t)| format!("{ip} {t:?}"))
            .collect();
        out.append(&mut ptrs);
        out.sort();
        out
    }

    #[test]
    fn an_incremental_rebuild_equals_a_full_one() {
        let mut set = ObjectSet::default();
        set.add_text(TWO_SERVICES_ONE_POD, Path::new("t.yaml"))
            .unwrap();
        let store = Store::from_objects(&set);
        let first = Snapshot::build(Arc::new(store.clone()), 1, true);
        // Change one slice, delete one service, add one: as the API source does.
        let mut next = store.clone();
        let key: Key = ("x".into(), "b-2".into());
        let mut slice = (*next.slices[&key]).clone();
        slice.endpoints[0].ready = true;
        slice.endpoints[0].addresses = vec!["10.1.0.9".parse().unwrap()].into();
        Arc::make_mut(&mut next.slices).insert(key, Arc::new(slice));
        Arc::make_mut(&mut next.services).remove(&("x".into(), "a".into()) as &Key);
        let mut c2 = (*next.services[&("x".into(), "c".into()) as &Key]).clone();
        c2.name = "c2".into();
        c2.cluster_ips = vec!["10.0.0.10".parse().unwrap()];
        Arc::make_mut(&mut next.services).insert(("x".into(), "c2".into()), Arc::new(c2));
        let next = Arc::new(next);
        let incremental = Snapshot::rebuild(&first, next.clone(), 2, true);
        let full = Snapshot::build(next, 2, true);
        assert_eq!(dump(&incremental), dump(&full));
        assert!(incremental.service("a.x").is_none());
        assert!(incremental.service("c2.x").is_some());
        // Unchanged services share their entries with the previous snapshot.
        assert!(std::ptr::eq(
            first.service("c.x").unwrap(),
            incremental.service("c.x").unwrap()
        ));
    }

    fn slice_of(
        ns: &str,
        name: &str,
        service: &str,
        eps: &[(&str, Option<&str>, bool)],
    ) -> Arc<EndpointSlice> {
        let mut endpoints = EndpointsBuilder::default();
        for (ip, host, ready) in eps {
            let e = Endpoint {
                addresses: vec![ip.parse().unwrap()].into(),
                ready: *ready,
                serving: *ready,
                terminating: false,
                pod_name: None,
                placement: None,
                extra: EndpointExtra::new(host.map(Into::into), None),
            };
            endpoints.push(e, Some(&format!("Pod-{ip}")));
        }
        let (endpoints, pod_names) = endpoints.finish();
        Arc::new(EndpointSlice {
            namespace: ns.into(),
            name: name.into(),
            service: service.into(),
            endpoints,
            pod_names,
            ports: Arc::from(Vec::new()),
        })
    }

    fn service_of(ns: &str, name: &str, ip: Option<&str>) -> Arc<Service> {
        Arc::new(Service {
            namespace: ns.into(),
            name: name.into(),
            kind: if ip.is_some() {
                ServiceKind::ClusterIp
            } else {
                ServiceKind::Headless
            },
            cluster_ips: ip.iter().map(|ip| ip.parse().unwrap()).collect(),
            external_name: None,
            ports: Arc::from(Vec::new()),
            publish_not_ready: false,
            has_selector: true,
            prefer_close: false,
            labels: Default::default(),
        })
    }

    /// Endpoint-name lookups of every label of every service, both label kinds.
    fn named(snap: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        for e in snap.services() {
            for pod_names in [false, true] {
                for ep in &e.endpoints {
                    let label = ep.label(pod_names);
                    let hits: Vec<String> = e
                        .endpoints_named(&label, pod_names)
                        .map(|h| h.address().to_string())
                        .collect();
                    out.push(format!(
                        "{}/{} {pod_names} {label} {hits:?}",
                        e.service.namespace, e.service.name
                    ));
                }
            }
        }
        out.sort();
        out
    }

    /// The service and slice keys whose values differ (by value, not by pointer).
    fn changed_between(a: &Store, b: &Store) -> Changed {
        fn keys<V: PartialEq>(a: &HashMap<Key, Arc<V>>, b: &HashMap<Key, Arc<V>>) -> HashSet<Key> {
            a.keys()
                .chain(b.keys())
                .filter(|k| a.get(*k).map(|v| &**v) != b.get(*k).map(|v| &**v))
                .cloned()
                .collect()
        }
        Changed {
            services: keys(&a.services, &b.services),
            slices: keys(&a.slices, &b.slices),
        }
    }

    #[test]
    fn every_kind_of_change_updates_like_a_full_build() {
        let mut store = Store::default();
        let t = Arc::make_mut(&mut store.services);
        t.insert(key("x", "a"), service_of("x", "a", Some("10.0.0.1")));
        t.insert(key("x", "b"), service_of("x", "b", None));
        let t = Arc::make_mut(&mut store.slices);
        t.insert(
            key("x", "a-1"),
            slice_of(
                "x",
                "a-1",
                "a",
                &[("10.1.0.1", None, true), ("10.1.0.2", Some("Web-0"), true)],
            ),
        );
        t.insert(
            key("x", "a-2"),
            slice_of(
                "x",
                "a-2",
                "a",
                &[("10.1.0.3", None, false), ("10.1.0.1", None, true)],
            ),
        );
        t.insert(
            key("x", "b-1"),
            slice_of(
                "x",
                "b-1",
                "b",
                &[("10.1.0.1", Some("h"), true), ("10.0.0.9", None, true)],
            ),
        );
        // Slices of a service that does not exist yet.
        t.insert(
            key("y", "c-1"),
            slice_of("y", "c-1", "c", &[("10.1.0.7", None, true)]),
        );
        let mut snap = Snapshot::build(Arc::new(store.clone()), 1, true);
        type Step = fn(&mut Store);
        let steps: Vec<Step> = vec![
            // The service of orphan slices arrives.
            |s| {
                Arc::make_mut(&mut s.services).insert(key("y", "c"), service_of("y", "c", None));
            },
            // A slice moves from one service to another.
            |s| {
                Arc::make_mut(&mut s.slices).insert(
                    key("x", "a-2"),
                    slice_of("x", "a-2", "b", &[("10.1.0.4", None, true)]),
                );
            },
            // A service takes a cluster IP that is another's endpoint, then goes away.
            |s| {
                Arc::make_mut(&mut s.services)
                    .insert(key("y", "d"), service_of("y", "d", Some("10.1.0.1")));
            },
            |s| {
                Arc::make_mut(&mut s.services).remove(&key("y", "d"));
            },
            // A service goes away and comes back: its slices are found again.
            |s| {
                Arc::make_mut(&mut s.services).remove(&key("x", "a"));
            },
            |s| {
                Arc::make_mut(&mut s.services)
                    .insert(key("x", "a"), service_of("x", "a", Some("10.0.0.2")));
            },
            // An endpoint becomes ready, a slice is deleted, a namespace appears.
            |s| {
                Arc::make_mut(&mut s.slices).insert(
                    key("x", "a-1"),
                    slice_of(
                        "x",
                        "a-1",
                        "a",
                        &[("10.1.0.1", None, true), ("10.1.0.3", Some("web-0"), true)],
                    ),
                );
                Arc::make_mut(&mut s.slices).remove(&key("x", "b-1"));
                Arc::make_mut(&mut s.namespaces).insert(
                    "z".into(),
                    Arc::new(Namespace {
                        name: "z".into(),
                        labels: Default::default(),
                    }),
                );
            },
        ];
        // The same steps told the changed keys (as the API source tells them), and told
        // those plus keys that did not change or never existed.
        let mut by_keys = Snapshot::build(snap.store.clone(), 1, true);
        let mut by_more_keys = Snapshot::build(snap.store.clone(), 1, true);
        for (i, step) in steps.into_iter().enumerate() {
            step(&mut store);
            let next = Arc::new(store.clone());
            let incremental = Snapshot::rebuild(&snap, next.clone(), 2, true);
            let changed = changed_between(&by_keys.store, &next);
            assert!(!changed.is_empty(), "step {i}");
            by_keys = Snapshot::rebuild_changed(&by_keys, next.clone(), Some(&changed), 2, true);
            let mut more = changed.clone();
            more.services.extend(next.services.keys().cloned());
            more.services.insert(key("nowhere", "a"));
            more.slices.insert(key("x", "nothing"));
            by_more_keys =
                Snapshot::rebuild_changed(&by_more_keys, next.clone(), Some(&more), 2, true);
            let full = Snapshot::build(next, 2, true);
            assert_eq!(dump(&incremental), dump(&full), "step {i}");
            assert_eq!(named(&incremental), named(&full), "step {i}");
            for s in [&by_keys, &by_more_keys] {
                assert_eq!(dump(s), dump(&full), "step {i} by keys");
                assert_eq!(named(s), named(&full), "step {i} by keys");
            }
            for ns in ["x", "y", "z", "w"] {
                assert_eq!(
                    incremental.namespace_exists(ns),
                    full.namespace_exists(ns),
                    "step {i} {ns}"
                );
            }
            snap = incremental;
        }
        // The orphan slice was found when its service came.
        assert_eq!(snap.service("c.y").unwrap().endpoints.len(), 1);
        // Names are lowercased for answers.
        assert!(named(&snap).iter().any(|l| l.contains("pod-10.1.0.1")));
    }

    /// The rows kept once per address in the cluster stay small (issue 17: these sizes are
    /// most of the memory at 100 000 endpoints).
    /// The labels formatted on demand are the text the entries used to store.
    #[test]
    fn dashed_addresses_match_the_stored_form() {
        let ips = [
            "10.3.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "fd00::1",
            "::",
            "::1",
            "fd00::",
            "1::",
            "::ffff:10.0.0.1",
            "2001:db8:85a3:8d3:1319:8a2e:370:7348",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "fe80::1:0:0:0",
            "0:1::",
        ];
        for ip in ips {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(DashedIp::new(ip).as_str(), dashed_ip(ip), "{ip}");
        }
        assert_eq!(DashedIp::new("::1".parse().unwrap()).as_str(), "0--1");
        assert_eq!(DashedIp::new("fd00::".parse().unwrap()).as_str(), "fd00--0");
        // Every shape of IPv6 text: a pseudo-random walk over addresses with runs of zeros.
        let mut x: u128 = 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
        for _ in 0..2000 {
            x = x
                .wrapping_mul(0x2545_f491_4f6c_dd1d)
                .wrapping_add(1442695040888963407);
            // Each 16-bit group kept or zeroed by one bit of `x`.
            let mask = (0..8)
                .filter(|g| (x >> (120 + g)) & 1 == 1)
                .fold(0u128, |m, g| m | (0xffff << (16 * g)));
            let ip = IpAddr::V6((x & mask).into());
            assert_eq!(DashedIp::new(ip).as_str(), dashed_ip(ip), "{ip}");
            let ip = IpAddr::V4(((x >> 32) as u32).into());
            assert_eq!(DashedIp::new(ip).as_str(), dashed_ip(ip), "{ip}");
        }
    }

    /// Names a file gives in uppercase answer lowercase, from the copies the store keeps.
    #[test]
    fn uppercase_names_in_a_file_answer_lowercase() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {clusterIP: None}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints:
- {addresses: [10.1.0.1], hostname: Web-0, targetRef: {kind: Pod, name: Web-Pod-0}}
- {addresses: [10.1.0.2], targetRef: {kind: Pod, name: Web-Pod-1}}
- {addresses: [10.1.0.3], targetRef: {kind: Pod, name: web-pod-2}}
"#;
        let mut set = ObjectSet::default();
        set.add_text(yaml, Path::new("t.yaml")).unwrap();
        let snap = Snapshot::build(Arc::new(Store::from_objects(&set)), 1, true);
        let e = snap.service("s.x").unwrap();
        let labels = |pods: bool| -> Vec<String> {
            e.endpoints
                .iter()
                .map(|x| x.label(pods).to_string())
                .collect()
        };
        assert_eq!(labels(false), ["web-0", "10-1-0-2", "10-1-0-3"]);
        assert_eq!(labels(true), ["web-0", "web-pod-1", "web-pod-2"]);
        assert_eq!(e.endpoints_named("web-pod-1", true).count(), 1);
        assert_eq!(e.endpoints_named("10-1-0-2", false).count(), 1);
        assert_eq!(e.endpoints_named("10-1-0-2", true).count(), 0);
        // The store keeps the names as given (for the views that print objects back).
        let slice = &set_slice(&snap);
        assert_eq!(slice.endpoints[0].hostname(), Some("Web-0"));
        assert_eq!(slice.pod_name(&slice.endpoints[1]), Some("Web-Pod-1"));
        assert_eq!(slice.pod_name(&slice.endpoints[2]), Some("web-pod-2"));
        assert_eq!(&*slice.pod_names, "Web-Pod-0Web-Pod-1web-pod-2");
        assert!(
            slice.endpoints[2].extra.is_none(),
            "a lowercase endpoint has no extra box"
        );
    }

    fn set_slice(snap: &Snapshot) -> Arc<EndpointSlice> {
        snap.store.slices[&key("x", "s-1")].clone()
    }

    /// Reverse entries of both families, from a full build and after an incremental update.
    #[test]
    fn reverse_entries_of_both_families() {
        let yaml = r#"
apiVersion: v1
kind: Service
metadata: {name: d, namespace: x}
spec: {clusterIPs: [10.0.0.1, "fd00::1"]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: d-4, namespace: x, labels: {kubernetes.io/service-name: d}}
addressType: IPv4
endpoints: [{addresses: [10.1.0.1]}, {addresses: [10.0.1.1], hostname: h}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: d-6, namespace: x, labels: {kubernetes.io/service-name: d}}
addressType: IPv6
endpoints: [{addresses: ["fd00::1:1"]}]
"#;
        let mut set = ObjectSet::default();
        set.add_text(yaml, Path::new("t.yaml")).unwrap();
        let store = Store::from_objects(&set);
        let snap = Snapshot::build(Arc::new(store.clone()), 1, true);
        let ptr = |snap: &Snapshot, ip: &str| -> Vec<Option<usize>> {
            let ip: IpAddr = ip.parse().unwrap();
            snap.ptr(&ip).iter().map(PtrTarget::endpoint).collect()
        };
        assert_eq!(ptr(&snap, "10.0.0.1"), [None]);
        assert_eq!(ptr(&snap, "fd00::1"), [None]);
        assert_eq!(ptr(&snap, "10.0.1.1"), [Some(1)]);
        assert_eq!(ptr(&snap, "fd00::1:1"), [Some(2)]);
        assert!(ptr(&snap, "fd00::1:2").is_empty());
        let ips: Vec<IpAddr> = snap.ptr_entries().map(|(ip, _)| ip).collect();
        assert_eq!(ips.len(), 5);
        assert!(ips.iter().any(IpAddr::is_ipv6) && ips.iter().any(IpAddr::is_ipv4));
        // The IPv6 slice goes: its address leaves the reverse map, the IPv4 ones stay.
        let mut next = store;
        Arc::make_mut(&mut next.slices).remove(&key("x", "d-6"));
        let next = Snapshot::rebuild(&snap, Arc::new(next), 2, true);
        assert!(ptr(&next, "fd00::1:1").is_empty());
        assert_eq!(ptr(&next, "fd00::1"), [None]);
        assert_eq!(ptr(&next, "10.0.1.1"), [Some(1)]);
    }

    #[test]
    fn per_address_rows_stay_small() {
        assert_eq!(std::mem::size_of::<PtrTarget>(), 16);
        assert!(
            std::mem::size_of::<Endpoint>() <= 56,
            "{}",
            std::mem::size_of::<Endpoint>()
        );
        assert!(
            std::mem::size_of::<EndpointEntry>() <= 16,
            "{}",
            std::mem::size_of::<EndpointEntry>()
        );
    }

    #[test]
    fn an_ip_selected_by_several_services_gets_one_ptr_per_service() {
        let snap = snapshot();
        let targets = snap.ptr(&"10.1.0.5".parse().unwrap());
        assert_eq!(targets.len(), 2, "{targets:?}");
        // A cluster IP answers only as the service, even when it is also an endpoint.
        let targets: Vec<_> = snap
            .ptr(&"10.0.0.9".parse().unwrap())
            .iter()
            .map(|t| (t.service(), t.namespace(), t.endpoint()))
            .collect();
        assert_eq!(targets, [("c", "x", None)]);
    }

    #[test]
    fn endpoints_merge_across_slices_deduplicated_by_address() {
        let snap = snapshot();
        let b = snap.service("b.x").unwrap();
        let addrs: Vec<String> = b
            .endpoints
            .iter()
            .map(|e| e.address().to_string())
            .collect();
        assert_eq!(addrs, ["10.1.0.5", "10.0.0.9", "10.1.0.6"]);
        assert_eq!(b.ready_endpoints().count(), 2);
        assert_eq!(b.endpoints_named("10-1-0-5", false).count(), 1);
        assert_eq!(b.endpoints_named("10-1-0-6", false).count(), 0, "not ready");
        let a = snap.service("a.x").unwrap();
        assert_eq!(a.endpoints_named("h", false).count(), 1);
    }
}

#[cfg(test)]
mod zone_tests {
    use super::*;

    /// Pods not kept still give their IP -> node, from a List item (YAML fast path), a
    /// document of their own and JSON; the snapshot turns that into zones through the nodes.
    #[test]
    fn pods_not_kept_still_locate_clients_in_zones() {
        let yaml = "apiVersion: v1\nkind: List\nitems:\n\
- apiVersion: v1\n  kind: Pod\n  metadata: {name: a, namespace: x}\n  spec: {nodeName: n1}\n  status: {podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}\n\
- apiVersion: v1\n  kind: Pod\n  metadata: {name: h, namespace: x}\n  spec: {nodeName: n1, hostNetwork: true}\n  status: {podIP: 10.9.0.1}\n\
- apiVersion: v1\n  kind: Node\n  metadata: {name: n1, labels: {topology.kubernetes.io/zone: z1}}\n\
---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec: {nodeName: n2}\nstatus: {podIP: 10.0.0.2}\n\
---\napiVersion: v1\nkind: Node\nmetadata: {name: n2, labels: {failure-domain.beta.kubernetes.io/zone: z2}}\n";
        let json = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "c", "namespace": "x"},
            "spec": {"nodeName": "n2"}, "status": {"podIPs": [{"ip": "fd00::3"}]}}"#;
        let mut b = StoreBuilder {
            drop_pods: true,
            ..Default::default()
        };
        let path = std::path::Path::new("test.yaml");
        crate::cluster::objects::add_text_to(&mut b, yaml, path).unwrap();
        crate::cluster::objects::add_text_to(&mut b, json, std::path::Path::new("c.json")).unwrap();
        let store = b.finish();
        assert!(store.pods.is_empty(), "pods are not kept");
        assert_eq!(
            store.pod_nodes.len(),
            3,
            "host-network pods claim no address"
        );
        let snap = Snapshot::build(Arc::new(store), 1, true);
        let zone = |ip: &str| snap.pod_zone(&ip.parse().unwrap()).map(|z| z.to_string());
        assert_eq!(zone("10.0.0.1").as_deref(), Some("z1"));
        assert_eq!(zone("10.0.0.2").as_deref(), Some("z2"));
        assert_eq!(zone("fd00::3").as_deref(), Some("z2"));
        assert_eq!(zone("10.9.0.1"), None);
    }
}
