//! The store of stripped objects (changed by the sources) and the immutable, indexed snapshot
//! built from it (read by every query). Queries are a few hash lookups into the snapshot; a
//! change builds a new snapshot and swaps it in whole, so readers never wait for writers.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use super::model::{EndpointSlice, Namespace, Node, Pod, Port, Service, ServiceKind};
use super::objects::ObjectSet;

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
            .map(|ns| (Arc::from(&*ns.name), Arc::new(ns)))
            .collect();
        let services = objects
            .services
            .iter()
            .filter_map(Service::from_api)
            .map(|svc| (key(&svc.namespace, &svc.name), Arc::new(svc)))
            .collect();
        let slices = objects
            .endpoint_slices
            .iter()
            .filter_map(EndpointSlice::from_api)
            .map(|slice| (key(&slice.namespace, &slice.name), Arc::new(slice)))
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
            .map(|pod| (key(&pod.namespace, &pod.name), Arc::new(pod)))
            .collect();
        let nodes = objects
            .nodes
            .iter()
            .filter_map(Node::from_api)
            .map(|node| (Arc::from(&*node.name), Arc::new(node)))
            .collect();
        Store {
            namespaces: Arc::new(namespaces),
            services: Arc::new(services),
            slices: Arc::new(slices),
            legacy_endpoints: Arc::new(legacy),
            pods: Arc::new(pods),
            nodes: Arc::new(nodes),
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
    /// Objects of kinds DNS does not use.
    pub skipped: usize,
    pub drop_pods: bool,
}

impl StoreBuilder {
    pub fn finish(self) -> Store {
        Store {
            namespaces: Arc::new(self.namespaces),
            services: Arc::new(self.services),
            slices: Arc::new(self.slices),
            legacy_endpoints: Arc::new(self.legacy),
            pods: Arc::new(self.pods),
            nodes: Arc::new(self.nodes),
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
        self.skipped += later.skipped;
    }
}

impl super::objects::Sink for StoreBuilder {
    fn namespace(&mut self, o: k8s_openapi::api::core::v1::Namespace) {
        if let Some(ns) = Namespace::from_api(&o) {
            self.namespaces.insert(Arc::from(&*ns.name), Arc::new(ns));
        }
    }
    fn service(&mut self, o: k8s_openapi::api::core::v1::Service) {
        if let Some(svc) = Service::from_api(&o) {
            self.services
                .insert(key(&svc.namespace, &svc.name), Arc::new(svc));
        }
    }
    fn endpoint_slice(&mut self, o: k8s_openapi::api::discovery::v1::EndpointSlice) {
        if let Some(slice) = EndpointSlice::from_api(&o) {
            self.slices
                .insert(key(&slice.namespace, &slice.name), Arc::new(slice));
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
            return;
        }
        if let Some(pod) = Pod::from_api(&o) {
            self.pods
                .insert(key(&pod.namespace, &pod.name), Arc::new(pod));
        }
    }
    fn node(&mut self, o: k8s_openapi::api::core::v1::Node) {
        if let Some(node) = Node::from_api(&o) {
            self.nodes.insert(Arc::from(&*node.name), Arc::new(node));
        }
    }
    fn skip(&mut self) {
        self.skipped += 1;
    }
    fn wants(&self, api_version: &str, kind: &str) -> bool {
        !(self.drop_pods && api_version == "v1" && kind == "Pod")
    }
}

/// One endpoint address of a service, merged over all its slices.
#[derive(Debug, Clone)]
pub struct EndpointEntry {
    pub address: IpAddr,
    /// Counts `publishNotReadyAddresses`: every endpoint of such a service is ready.
    pub ready: bool,
    /// The endpoint's own `hostname`, lowercased.
    pub hostname: Option<Box<str>>,
    /// The target pod's name, lowercased (for `endpoint_pod_names`).
    pub pod_name: Option<Box<str>>,
    /// The address with `.`/`:` replaced by `-` (`10-3-0-1`, `fd00--1` -> `fd00--1`).
    pub dashed: Box<str>,
    pub ports: Arc<[Port]>,
    pub node_name: Option<Box<str>>,
}

impl EndpointEntry {
    /// The name label of this endpoint: its hostname, else (with `endpoint_pod_names`) the pod
    /// name when shorter than 64 characters, else the dashed IP.
    pub fn label(&self, endpoint_pod_names: bool) -> &str {
        if let Some(h) = &self.hostname {
            return h;
        }
        if endpoint_pod_names {
            if let Some(p) = self.pod_name.as_deref().filter(|p| p.len() < 64) {
                return p;
            }
        }
        &self.dashed
    }
}

#[derive(Debug, Clone)]
pub struct ServiceEntry {
    pub service: Arc<Service>,
    /// De-duplicated by address, in slice-name order for stable answers.
    pub endpoints: Vec<EndpointEntry>,
    /// Ready endpoints by name label (hostname or dashed IP), and by the label they get with
    /// `endpoint_pod_names`: an endpoint-name query is one hash lookup even for services with
    /// thousands of endpoints.
    by_label: HashMap<Box<str>, Vec<u32>>,
    by_pod_label: HashMap<Box<str>, Vec<u32>>,
}

impl ServiceEntry {
    fn new(service: Arc<Service>) -> ServiceEntry {
        ServiceEntry {
            service,
            endpoints: Vec::new(),
            by_label: HashMap::new(),
            by_pod_label: HashMap::new(),
        }
    }

    fn index(&mut self) {
        for (i, e) in self.endpoints.iter().enumerate() {
            if !e.ready {
                continue;
            }
            self.by_label
                .entry(e.label(false).into())
                .or_default()
                .push(i as u32);
            self.by_pod_label
                .entry(e.label(true).into())
                .or_default()
                .push(i as u32);
        }
    }

    pub fn ready_endpoints(&self) -> impl Iterator<Item = &EndpointEntry> {
        self.endpoints.iter().filter(|e| e.ready)
    }

    /// Ready endpoints whose name label is `label` (lowercase).
    pub fn endpoints_named(
        &self,
        label: &str,
        endpoint_pod_names: bool,
    ) -> impl Iterator<Item = &EndpointEntry> {
        let index = if endpoint_pod_names {
            &self.by_pod_label
        } else {
            &self.by_label
        };
        index
            .get(label)
            .into_iter()
            .flatten()
            .filter_map(|&i| self.endpoints.get(i as usize))
    }
}

/// What a reverse lookup of an IP finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PtrTarget {
    /// A service cluster IP: `<svc>.<ns>`.
    /// Names are shared (`Arc`) by every entry of a service: rebuilding the reverse map
    /// after a change allocates nothing per endpoint.
    Service {
        service: Arc<str>,
        namespace: Arc<str>,
    },
    /// An endpoint address: `<hostname>.<svc>.<ns>`, one per service selecting it.
    Endpoint {
        service: Arc<str>,
        namespace: Arc<str>,
        /// Index into the service's endpoints.
        index: usize,
    },
}

/// The immutable view every query reads. All keys are lowercase.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Unix time of the last change, the SOA serial.
    pub serial: u32,
    /// The first complete load has happened; until then NXDOMAIN becomes SERVFAIL.
    pub synced: bool,
    index: Arc<ServiceIndex>,
    pods_by_ip: Arc<HashMap<IpAddr, Vec<Box<str>>>>,
    pub dns_service_ips: Vec<IpAddr>,
    /// The store the snapshot was built from, for placement and debugging views.
    pub store: Arc<Store>,
}

/// Everything built from services and endpoints; shared between snapshots while only pods
/// or nodes change.
#[derive(Debug, Default)]
struct ServiceIndex {
    namespaces: HashSet<Box<str>>,
    /// Keyed `<name>.<namespace>`, which is how the labels stand in a query name. Entries
    /// are shared with the previous snapshot unless their service changed.
    services: HashMap<Box<str>, Arc<ServiceEntry>>,
    ptr: HashMap<IpAddr, Vec<PtrTarget>>,
}

pub fn now_serial() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}

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
        Snapshot::assemble(store, index, pods_by_ip, serial, synced)
    }

    /// Like [`Snapshot::build`], reusing `prev`'s indexes whose tables did not change: a pod
    /// event does not rebuild the service index, a service event not the pod index.
    pub fn rebuild(prev: &Snapshot, store: Arc<Store>, serial: u32, synced: bool) -> Snapshot {
        let index = if prev.store.same_services(&store) {
            prev.index.clone()
        } else {
            Arc::new(
                ServiceIndex::update(&prev.index, &prev.store, &store)
                    .unwrap_or_else(|| ServiceIndex::build(&store)),
            )
        };
        let pods_by_ip = if Arc::ptr_eq(&prev.store.pods, &store.pods) {
            prev.pods_by_ip.clone()
        } else {
            Arc::new(pods_by_ip(&store))
        };
        Snapshot::assemble(store, index, pods_by_ip, serial, synced)
    }

    fn assemble(
        store: Arc<Store>,
        index: Arc<ServiceIndex>,
        pods_by_ip: Arc<HashMap<IpAddr, Vec<Box<str>>>>,
        serial: u32,
        synced: bool,
    ) -> Snapshot {
        let dns_service_ips = index
            .services
            .get(format!("{}.{}", DNS_SERVICE.1, DNS_SERVICE.0).as_str())
            .map(|e| e.service.cluster_ips.clone())
            .unwrap_or_default();
        Snapshot {
            serial,
            synced,
            index,
            pods_by_ip,
            dns_service_ips,
            store,
        }
    }
}

fn pods_by_ip(store: &Store) -> HashMap<IpAddr, Vec<Box<str>>> {
    let mut pods_by_ip: HashMap<IpAddr, Vec<Box<str>>> = HashMap::new();
    for pod in store.pods.values() {
        for ip in &pod.ips {
            let list = pods_by_ip.entry(*ip).or_default();
            let ns = lower(&pod.namespace);
            if !list.contains(&ns) {
                list.push(ns);
            }
        }
    }
    pods_by_ip
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
    fn build(svc: Arc<Service>, slices: &[&Arc<EndpointSlice>]) -> ServiceEntry {
        let mut entry = ServiceEntry::new(svc);
        let publish = entry.service.publish_not_ready;
        let mut seen: HashSet<IpAddr> = HashSet::new();
        for slice in slices {
            for ep in &slice.endpoints {
                for &address in &ep.addresses {
                    if !seen.insert(address) {
                        continue;
                    }
                    entry.endpoints.push(EndpointEntry {
                        address,
                        ready: ep.ready || publish,
                        hostname: ep.hostname.as_deref().map(lower),
                        pod_name: ep.pod_name.as_deref().map(lower),
                        dashed: dashed_ip(address).into(),
                        ports: slice.ports.clone(),
                        node_name: ep.node_name.clone(),
                    });
                }
            }
        }
        entry.index();
        entry
    }
}

/// The slices of each service, in slice-name order (so answers come out the same on every
/// rebuild); v1 Endpoints only for services without a slice. `only`: just these services.
fn slices_by_service<'a>(
    store: &'a Store,
    only: Option<&HashSet<Key>>,
) -> HashMap<(&'a str, &'a str), Vec<&'a Arc<EndpointSlice>>> {
    let wanted = |ns: &str, svc: &str| {
        only.is_none_or(|set| set.contains(&(Arc::<str>::from(ns), Arc::<str>::from(svc))))
    };
    let mut groups: HashMap<(&str, &str), Vec<&Arc<EndpointSlice>>> = HashMap::new();
    for slice in store.slices.values() {
        if wanted(&slice.namespace, &slice.service) {
            groups
                .entry((&*slice.namespace, &*slice.service))
                .or_default()
                .push(slice);
        }
    }
    for list in groups.values_mut() {
        list.sort_by(|a, b| a.name.cmp(&b.name));
    }
    for ((ns, svc), legacy) in store.legacy_endpoints.iter() {
        if wanted(ns, svc) && !groups.contains_key(&(&**ns, &**svc)) {
            groups.insert((&**ns, &**svc), legacy.iter().collect());
        }
    }
    groups
}

/// Calls `f` for every key whose value differs (by pointer) between two tables, with the
/// value on either side.
fn diff<K: std::hash::Hash + Eq, V>(
    old: &HashMap<K, Arc<V>>,
    new: &HashMap<K, Arc<V>>,
    mut f: impl FnMut(&K, &V),
) {
    for (k, v) in new {
        if old.get(k).is_none_or(|o| !Arc::ptr_eq(o, v)) {
            f(k, v);
        }
    }
    for (k, v) in old {
        if !new.contains_key(k) {
            f(k, v);
        }
    }
}

impl ServiceIndex {
    fn build(store: &Store) -> ServiceIndex {
        let groups = slices_by_service(store, None);
        let mut services: HashMap<Box<str>, Arc<ServiceEntry>> =
            HashMap::with_capacity(store.services.len());
        for ((ns, name), svc) in store.services.iter() {
            let slices = groups
                .get(&(&**ns, &**name))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            services.insert(
                service_key(ns, name),
                Arc::new(ServiceEntry::build(svc.clone(), slices)),
            );
        }
        Self::finish(store, services)
    }

    /// Rebuilds only the entries of services whose Service or slices changed since
    /// `prev_store`; None when a full build is as good (many changes, v1 Endpoints).
    fn update(prev: &ServiceIndex, prev_store: &Store, store: &Store) -> Option<ServiceIndex> {
        if !Arc::ptr_eq(&prev_store.legacy_endpoints, &store.legacy_endpoints) {
            return None;
        }
        let mut affected: HashSet<Key> = HashSet::new();
        diff(&prev_store.services, &store.services, |k, _| {
            affected.insert(k.clone());
        });
        diff(&prev_store.slices, &store.slices, |_, s| {
            affected.insert((Arc::from(&*s.namespace), Arc::from(&*s.service)));
        });
        if affected.len() > INCREMENTAL_LIMIT {
            return None;
        }
        let groups = slices_by_service(store, Some(&affected));
        let mut services = prev.services.clone();
        for (ns, name) in &affected {
            let key = service_key(ns, name);
            services.remove(&*key);
            if let Some(svc) = store.services.get(&(ns.clone(), name.clone())) {
                let slices = groups
                    .get(&(&**ns, &**name))
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                services.insert(key, Arc::new(ServiceEntry::build(svc.clone(), slices)));
            }
        }
        Some(Self::finish(store, services))
    }

    /// Namespaces and reverse entries over the final service entries.
    fn finish(store: &Store, services: HashMap<Box<str>, Arc<ServiceEntry>>) -> ServiceIndex {
        let mut namespaces: HashSet<Box<str>> = store.namespaces.keys().map(|n| lower(n)).collect();
        for entry in services.values() {
            namespaces.insert(lower(&entry.service.namespace));
        }
        let mut ptr: HashMap<IpAddr, Vec<PtrTarget>> = HashMap::with_capacity(services.len() * 4);
        let mut keys: Vec<&Box<str>> = services.keys().collect();
        keys.sort();
        let names: Vec<(Arc<str>, Arc<str>)> = keys
            .iter()
            .map(|k| {
                let svc = &services[*k].service;
                (
                    Arc::from(svc.name.to_ascii_lowercase()),
                    Arc::from(svc.namespace.to_ascii_lowercase()),
                )
            })
            .collect();
        for (k, (name, ns)) in keys.iter().zip(&names) {
            let entry = &services[*k];
            for ip in &entry.service.cluster_ips {
                ptr.entry(*ip).or_default().push(PtrTarget::Service {
                    service: name.clone(),
                    namespace: ns.clone(),
                });
            }
        }
        for (k, (name, ns)) in keys.iter().zip(&names) {
            let entry = &services[*k];
            if entry.service.kind == ServiceKind::ExternalName {
                continue;
            }
            for (index, ep) in entry.endpoints.iter().enumerate() {
                if !ep.ready {
                    continue;
                }
                let targets = ptr.entry(ep.address).or_default();
                // Service cluster IPs are checked first: an IP that is a cluster IP answers
                // only as the service.
                if targets
                    .iter()
                    .any(|t| matches!(t, PtrTarget::Service { .. }))
                {
                    continue;
                }
                targets.push(PtrTarget::Endpoint {
                    service: name.clone(),
                    namespace: ns.clone(),
                    index,
                });
            }
        }
        ServiceIndex {
            namespaces,
            services,
            ptr,
        }
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
        self.index.namespaces.contains(namespace)
    }

    /// `key` is `<name>.<namespace>`, lowercase.
    pub fn service(&self, key: &str) -> Option<&ServiceEntry> {
        self.index.services.get(key).map(|e| &**e)
    }

    pub fn services(&self) -> impl Iterator<Item = &ServiceEntry> {
        self.index.services.values().map(|e| &**e)
    }

    /// Every reverse entry (for zone export).
    pub fn ptr_entries(&self) -> impl Iterator<Item = (&IpAddr, &[PtrTarget])> {
        self.index.ptr.iter().map(|(ip, t)| (ip, t.as_slice()))
    }

    pub fn ptr(&self, ip: &IpAddr) -> &[PtrTarget] {
        self.index.ptr.get(ip).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether a pod with this IP exists in this (lowercase) namespace.
    pub fn pod_ip_in_namespace(&self, ip: &IpAddr, namespace: &str) -> bool {
        self.pods_by_ip
            .get(ip)
            .is_some_and(|list| list.iter().any(|n| &**n == namespace))
    }

    /// The namespace of a pod with this IP (the first, when several share it: host network).
    pub fn namespace_of_pod_ip(&self, ip: &IpAddr) -> Option<&str> {
        self.pods_by_ip.get(ip)?.first().map(|n| &**n)
    }

    pub fn service_count(&self) -> usize {
        self.index.services.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
                    .map(|x| format!("{}:{}:{}", x.address, x.ready, x.label(false)))
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
        slice.endpoints[0].addresses = vec!["10.1.0.9".parse().unwrap()];
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

    #[test]
    fn an_ip_selected_by_several_services_gets_one_ptr_per_service() {
        let snap = snapshot();
        let targets = snap.ptr(&"10.1.0.5".parse().unwrap());
        assert_eq!(targets.len(), 2, "{targets:?}");
        // A cluster IP answers only as the service, even when it is also an endpoint.
        let targets = snap.ptr(&"10.0.0.9".parse().unwrap());
        assert_eq!(
            targets,
            &[PtrTarget::Service {
                service: "c".into(),
                namespace: "x".into()
            }]
        );
    }

    #[test]
    fn endpoints_merge_across_slices_deduplicated_by_address() {
        let snap = snapshot();
        let b = snap.service("b.x").unwrap();
        let addrs: Vec<String> = b.endpoints.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addrs, ["10.1.0.5", "10.0.0.9", "10.1.0.6"]);
        assert_eq!(b.ready_endpoints().count(), 2);
        assert_eq!(b.endpoints_named("10-1-0-5", false).count(), 1);
        assert_eq!(b.endpoints_named("10-1-0-6", false).count(), 0, "not ready");
        let a = snap.service("a.x").unwrap();
        assert_eq!(a.endpoints_named("h", false).count(), 1);
    }
}
