//! The stripped object types DNS needs ("only the items we need", as CoreDNS says), converted
//! from the k8s-openapi API types. Everything else of an object is dropped on arrival, which is
//! what keeps memory small in clusters with 100 000 pods.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;

use super::labels::Labels;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Security groups for pods on micro-VMs.
pub const POD_SG_ANNOTATION: &str = "fargate.amazonaws.com/pod-sg";
/// The node label Fargate sets on micro-VM nodes.
pub const COMPUTE_TYPE_LABEL: &str = "eks.amazonaws.com/compute-type";
/// The node label naming its availability zone (and its pre-1.17 name).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const LEGACY_ZONE_LABEL: &str = "failure-domain.beta.kubernetes.io/zone";
/// The annotation that asked for topology-aware routing before `trafficDistribution`
/// (`Auto`), and its older name (`auto`).
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
pub const TOPOLOGY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    ClusterIp,
    Headless,
    ExternalName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(s: Option<&str>) -> Protocol {
        match s.map(|s| s.to_ascii_uppercase()).as_deref() {
            Some("UDP") => Protocol::Udp,
            Some("SCTP") => Protocol::Sctp,
            _ => Protocol::Tcp, // the API default
        }
    }

    /// The label form used in SRV names (`_tcp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Port {
    /// Empty for an unnamed port.
    pub name: Box<str>,
    pub protocol: Protocol,
    pub port: u16,
}

impl Port {
    /// From any of the API's port shapes (Service, EndpointSlice, v1 Endpoints); None for a
    /// missing or out-of-range number.
    fn new(name: Option<&str>, protocol: Option<&str>, port: Option<i32>) -> Option<Port> {
        Some(Port {
            name: boxed(name.unwrap_or("")),
            protocol: Protocol::parse(protocol),
            port: u16::try_from(port?).ok()?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Interned ([`intern`]): shared by every object of the namespace and the store's keys.
    pub namespace: Arc<str>,
    /// Shared with the store's key of the object.
    pub name: Arc<str>,
    pub kind: ServiceKind,
    /// `spec.clusterIPs` (or `spec.clusterIP`), in the API's order; empty when headless.
    pub cluster_ips: Vec<IpAddr>,
    pub external_name: Option<Box<str>>,
    /// Interned ([`port_list`]).
    pub ports: Arc<[Port]>,
    pub publish_not_ready: bool,
    pub has_selector: bool,
    /// For the `kubernetes` plugin's `labels SELECTOR`.
    pub labels: Labels,
    /// `spec.trafficDistribution: PreferClose` (or `PreferSameZone`), or the older
    /// topology-mode annotation `Auto`: its owner asked for in-zone traffic, so its headless
    /// answers are zone-aware (dns::zonal).
    pub prefer_close: bool,
}

/// A cluster has more endpoints than anything else the store keeps: 56 bytes each, with no
/// allocation of their own in the common case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Addresses,
    /// `conditions.ready`; absent counts as ready.
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// `targetRef.name` when the target is a Pod, in its slice's `pod_names`
    /// ([`EndpointSlice::pod_name`]).
    pub pod_name: Option<NameRef>,
    /// `nodeName` and `zone` ([`Placement::new`]).
    pub placement: Option<Arc<Placement>>,
    /// `hostname` and `hints.forZones`, which most endpoints do not have.
    pub extra: Option<Box<EndpointExtra>>,
}

/// Where a name is in a buffer of names (`start..start + len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameRef {
    start: u32,
    len: u32,
}

/// A slice's endpoints as they are converted, with their pod names in one buffer: one
/// allocation per slice instead of one per endpoint saves the allocator's overhead on each
/// (16 bytes and the rounding, about half again of a typical pod name) and 8 bytes of pointer.
#[derive(Default)]
pub struct EndpointsBuilder {
    endpoints: Vec<Endpoint>,
    names: String,
}

impl EndpointsBuilder {
    /// Adds `e` (its `pod_name` is set here) unless it has no address.
    pub fn push(&mut self, mut e: Endpoint, pod_name: Option<&str>) {
        if e.addresses.is_empty() {
            return;
        }
        e.pod_name = pod_name.map(|p| {
            let start = self.names.len() as u32;
            self.names.push_str(p);
            NameRef {
                start,
                len: p.len() as u32,
            }
        });
        self.endpoints.push(e.with_lowercase_names(pod_name));
    }

    /// The endpoints and the buffer of their pod names, with no room to spare: they are kept
    /// as long as the slice.
    pub fn finish(mut self) -> (Vec<Endpoint>, Box<str>) {
        self.endpoints.shrink_to_fit();
        (self.endpoints, self.names.into_boxed_str())
    }
}

/// Where an endpoint runs: its node and zone, interned as a pair. Tens of endpoints share a
/// node and thousands a zone, so an endpoint holds one thin pointer to the shared pair (8
/// bytes) instead of two `Arc<str>` (32).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// Both interned ([`intern`]).
    pub node: Option<Arc<str>>,
    pub zone: Option<Arc<str>>,
}

impl Placement {
    /// The shared pair; None when there is neither.
    pub fn new(node: Option<&str>, zone: Option<&str>) -> Option<Arc<Placement>> {
        static PLACEMENTS: Interner<Placement> = Mutex::new(None);
        if node.is_none() && zone.is_none() {
            return None;
        }
        let p = Placement {
            node: node.map(intern),
            zone: zone.map(intern),
        };
        Some(intern_in(&PLACEMENTS, &p, |p| {
            Arc::new(Placement {
                node: p.node.clone(),
                zone: p.zone.clone(),
            })
        }))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointExtra {
    pub hostname: Option<Box<str>>,
    /// `hints.forZones`: the zones this endpoint should serve (topology-aware routing).
    /// None when the slice gives no hints.
    pub for_zones: Option<Box<[Arc<str>]>>,
    /// The hostname and the pod name lowercased (DNS answers with those), only when one of
    /// them is not lowercase already: names the API never gives, that a hand-written file
    /// can. Set by [`Endpoint::with_lowercase_names`]; derived from the other fields.
    lowercase: Option<Lowercase>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Lowercase {
    hostname: Option<Box<str>>,
    pod_name: Option<Box<str>>,
}

impl EndpointExtra {
    /// None when there is neither.
    pub fn new(
        hostname: Option<Box<str>>,
        for_zones: Option<Box<[Arc<str>]>>,
    ) -> Option<Box<EndpointExtra>> {
        (hostname.is_some() || for_zones.is_some()).then(|| {
            Box::new(EndpointExtra {
                hostname,
                for_zones,
                lowercase: None,
            })
        })
    }
}

fn has_upper(s: Option<&str>) -> bool {
    s.is_some_and(|s| s.bytes().any(|b| b.is_ascii_uppercase()))
}

impl Endpoint {
    /// The endpoint with lowercase copies of its names when they are not lowercase (see
    /// [`EndpointExtra`]); `pod` is its pod name ([`EndpointsBuilder::push`] calls this).
    fn with_lowercase_names(mut self, pod: Option<&str>) -> Endpoint {
        let host = self.hostname();
        if has_upper(host) || has_upper(pod) {
            let lower = |s: &str| Box::<str>::from(s.to_ascii_lowercase());
            let lowercase = Some(Lowercase {
                hostname: host.map(lower),
                pod_name: pod.map(lower),
            });
            self.extra.get_or_insert_with(Default::default).lowercase = lowercase;
        }
        self
    }

    /// `hostname`, lowercased.
    pub fn hostname_lowercase(&self) -> Option<&str> {
        match self.extra.as_deref() {
            Some(EndpointExtra {
                lowercase: Some(l), ..
            }) => l.hostname.as_deref(),
            _ => self.hostname(),
        }
    }

    /// The lowercase copy of the pod name, when the name is not lowercase (else None).
    fn pod_name_lowercase(&self) -> Option<Option<&str>> {
        match self.extra.as_deref() {
            Some(EndpointExtra {
                lowercase: Some(l), ..
            }) => Some(l.pod_name.as_deref()),
            _ => None,
        }
    }

    pub fn hostname(&self) -> Option<&str> {
        self.extra.as_ref()?.hostname.as_deref()
    }

    /// `nodeName`.
    pub fn node_name(&self) -> Option<&str> {
        self.placement.as_ref()?.node.as_deref()
    }

    /// The EndpointSlice's `zone` of this endpoint.
    pub fn zone(&self) -> Option<&str> {
        self.placement.as_ref()?.zone.as_deref()
    }

    pub fn for_zones(&self) -> Option<&[Arc<str>]> {
        self.extra.as_ref()?.for_zones.as_deref()
    }
}

/// An endpoint's addresses: the first inline (the API allows up to 100, the EndpointSlice
/// controller writes exactly one), so the common endpoint allocates nothing for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    One([IpAddr; 1]),
    Many(Box<[IpAddr]>),
}

impl From<Vec<IpAddr>> for Addresses {
    fn from(v: Vec<IpAddr>) -> Addresses {
        match v[..] {
            [one] => Addresses::One([one]),
            _ => Addresses::Many(v.into_boxed_slice()),
        }
    }
}

impl std::ops::Deref for Addresses {
    type Target = [IpAddr];
    fn deref(&self) -> &[IpAddr] {
        match self {
            Addresses::One(a) => a,
            Addresses::Many(v) => v,
        }
    }
}

impl<'a> IntoIterator for &'a Addresses {
    type Item = &'a IpAddr;
    type IntoIter = std::slice::Iter<'a, IpAddr>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSlice {
    /// Interned; the name is shared with the store's key (as for [`Service`]).
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// The service this slice belongs to (its `kubernetes.io/service-name` label).
    pub service: Box<str>,
    pub endpoints: Vec<Endpoint>,
    /// The endpoints' pod names ([`EndpointsBuilder`]).
    pub pod_names: Box<str>,
    /// Interned ([`port_list`]).
    pub ports: Arc<[Port]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// Interned; the name is shared with the store's key (as for [`Service`]).
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub ips: Vec<IpAddr>,
    pub node_name: Option<Box<str>>,
    pub hostname: Option<Box<str>>,
    pub subdomain: Option<Box<str>>,
    /// Kept for Fargate profile selection (which selects by labels).
    pub labels: BTreeMap<String, String>,
    /// The `fargate.amazonaws.com/pod-sg` annotation (security groups for pods), for the
    /// prober.
    pub pod_security_groups: Option<Box<str>>,
    /// What the pod asks for (the larger of its containers' sum and its largest init
    /// container), for micro-VM sizing: two numbers instead of every container spec.
    pub demand: Option<super::demand::Demand>,
    /// The `CapacityProvisioned` annotation Fargate sets.
    pub capacity: Option<Box<str>>,
    pub phase: Option<Box<str>>,
    pub scheduler_name: Option<Box<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Interned: the store's key and every endpoint on the node share it.
    pub name: Arc<str>,
    /// Runs a single micro-VM pod (Fargate), not an EC2 worker.
    pub micro_vm: bool,
    pub labels: BTreeMap<String, String>,
    /// The `topology.kubernetes.io/zone` label (interned), kept even when labels are not.
    pub zone: Option<Arc<str>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// Interned, as every object's namespace.
    pub name: Arc<str>,
    pub labels: BTreeMap<String, String>,
}

fn boxed(s: &str) -> Box<str> {
    s.into()
}

fn ips<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for v in values {
        if let Ok(ip) = v.trim().parse::<IpAddr>() {
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
    }
    // Kept for the object's life: without this one address holds room for four.
    out.shrink_to_fit();
    out
}

/// Names many objects repeat (namespaces, node names, zones), shared: one allocation per
/// distinct name.
pub fn intern(s: &str) -> Arc<str> {
    static NAMES: Interner<str> = Mutex::new(None);
    intern_in(&NAMES, s, |s| Arc::from(s))
}

/// A port list, shared: most services and their slices have one of a few lists (`http 80`,
/// `https 443`, ...), so one allocation each.
pub fn port_list(ports: Vec<Port>) -> Arc<[Port]> {
    static PORTS: Interner<[Port]> = Mutex::new(None);
    intern_in(&PORTS, &ports, |p| Arc::from(p))
}

/// A set of shared values, and its length after the last sweep.
type Interner<T> = Mutex<Option<(HashSet<Arc<T>>, usize)>>;

/// The shared copy of `value` in `set` (made by `make` the first time). Values no object uses
/// any more are dropped once the set has doubled since the last sweep.
fn intern_in<T: ?Sized + Eq + std::hash::Hash>(
    set: &Interner<T>,
    value: &T,
    make: impl FnOnce(&T) -> Arc<T>,
) -> Arc<T> {
    let mut guard = set.lock().unwrap_or_else(|e| e.into_inner());
    let (values, swept) = guard.get_or_insert_with(|| (HashSet::new(), 0));
    if let Some(v) = values.get(value) {
        return v.clone();
    }
    if values.len() >= 2 * *swept + 1024 {
        values.retain(|v| Arc::strong_count(v) > 1);
        *swept = values.len();
    }
    let v = make(value);
    values.insert(v.clone());
    v
}

/// Whether the Service asks for in-zone traffic: `trafficDistribution` `PreferClose` (or its
/// 1.33 alias `PreferSameZone`), else the topology-mode annotation `Auto` (or the older
/// topology-aware-hints `auto`), as kube-proxy reads them.
fn prefer_close(svc: &core::Service) -> bool {
    let td = svc
        .spec
        .as_ref()
        .and_then(|s| s.traffic_distribution.as_deref());
    if let Some(td) = td {
        return matches!(td, "PreferClose" | "PreferSameZone");
    }
    let ann = svc.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).map(String::as_str);
    match get(TOPOLOGY_MODE_ANNOTATION).or_else(|| get(TOPOLOGY_HINTS_ANNOTATION)) {
        Some(v) => v.eq_ignore_ascii_case("auto"),
        None => false,
    }
}

impl Service {
    /// None when the object has no name (nothing DNS could serve).
    pub fn from_api(svc: &core::Service) -> Option<Service> {
        let name = svc.metadata.name.as_deref()?;
        let namespace = svc.metadata.namespace.as_deref().unwrap_or("default");
        let spec = svc.spec.clone().unwrap_or_default();
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            ServiceKind::ExternalName
        } else if spec.cluster_ip.as_deref() == Some("None")
            || spec
                .cluster_ips
                .as_ref()
                .is_some_and(|v| v.first().map(String::as_str) == Some("None"))
        {
            ServiceKind::Headless
        } else {
            ServiceKind::ClusterIp
        };
        let cluster_ips = match kind {
            ServiceKind::ClusterIp => match &spec.cluster_ips {
                Some(list) if !list.is_empty() => ips(list),
                _ => ips(spec.cluster_ip.iter()),
            },
            _ => Vec::new(),
        };
        let ports: Vec<Port> = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Port::new(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
            .collect();
        Some(Service {
            namespace: intern(namespace),
            name: name.into(),
            kind,
            cluster_ips,
            external_name: spec
                .external_name
                .as_deref()
                .filter(|_| kind == ServiceKind::ExternalName)
                .map(|n| boxed(n.trim_end_matches('.'))),
            ports: port_list(ports),
            publish_not_ready: spec.publish_not_ready_addresses.unwrap_or(false),
            has_selector: spec.selector.as_ref().is_some_and(|s| !s.is_empty()),
            labels: Labels::from_map(svc.metadata.labels.as_ref()),
            prefer_close: prefer_close(svc),
        })
    }
}

/// The pod name of an endpoint's `targetRef`, when it refers to a Pod.
fn pod_target(r: Option<&core::ObjectReference>) -> Option<&str> {
    r.filter(|r| r.kind.as_deref().unwrap_or("Pod") == "Pod")
        .and_then(|r| r.name.as_deref())
}

impl EndpointSlice {
    /// The pod name of `e`, one of this slice's endpoints.
    /// (For an endpoint of another slice, the name is garbage or None, never a panic.)
    pub fn pod_name(&self, e: &Endpoint) -> Option<&str> {
        let r = e.pod_name?;
        self.pod_names
            .get(r.start as usize..r.start as usize + r.len as usize)
    }

    /// [`EndpointSlice::pod_name`], lowercased.
    pub fn pod_name_lowercase<'a>(&'a self, e: &'a Endpoint) -> Option<&'a str> {
        match e.pod_name_lowercase() {
            Some(lower) => lower,
            None => self.pod_name(e),
        }
    }

    pub fn from_api(slice: &discovery::EndpointSlice) -> Option<EndpointSlice> {
        let name = slice.metadata.name.as_deref()?;
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        let service = slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
        if slice.address_type == "FQDN" {
            return None; // deprecated, never served by CoreDNS either
        }
        let mut endpoints = EndpointsBuilder::default();
        for e in slice.endpoints.iter().flatten() {
            let c = e.conditions.clone().unwrap_or_default();
            let endpoint = Endpoint {
                addresses: ips(&e.addresses).into(),
                ready: c.ready.unwrap_or(true),
                serving: c.serving.unwrap_or(true),
                terminating: c.terminating.unwrap_or(false),
                pod_name: None,
                placement: Placement::new(e.node_name.as_deref(), e.zone.as_deref()),
                extra: EndpointExtra::new(
                    e.hostname.as_deref().map(boxed),
                    e.hints
                        .as_ref()
                        .and_then(|h| h.for_zones.as_ref())
                        .map(|z| z.iter().map(|z| intern(&z.name)).collect()),
                ),
            };
            endpoints.push(endpoint, pod_target(e.target_ref.as_ref()));
        }
        let (endpoints, pod_names) = endpoints.finish();
        let ports: Vec<Port> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| Port::new(p.name.as_deref(), p.protocol.as_deref(), p.port))
            .collect();
        Some(EndpointSlice {
            namespace: intern(namespace),
            name: name.into(),
            service: boxed(service),
            endpoints,
            pod_names,
            ports: port_list(ports),
        })
    }

    /// v1 Endpoints as slices (one per subset), for services that have no EndpointSlice.
    pub fn from_endpoints(ep: &core::Endpoints) -> Vec<EndpointSlice> {
        let Some(name) = ep.metadata.name.as_deref() else {
            return Vec::new();
        };
        let namespace = ep.metadata.namespace.as_deref().unwrap_or("default");
        let mut out = Vec::new();
        for (i, subset) in ep.subsets.iter().flatten().enumerate() {
            let mut endpoints = EndpointsBuilder::default();
            let ready = subset.addresses.iter().flatten().map(|a| (a, true));
            let not_ready = subset.not_ready_addresses.iter().flatten();
            for (a, ready) in ready.chain(not_ready.map(|a| (a, false))) {
                let endpoint = Endpoint {
                    addresses: ips(std::iter::once(&a.ip)).into(),
                    ready,
                    serving: ready,
                    terminating: false,
                    pod_name: None,
                    placement: Placement::new(a.node_name.as_deref(), None),
                    extra: EndpointExtra::new(a.hostname.as_deref().map(boxed), None),
                };
                endpoints.push(endpoint, pod_target(a.target_ref.as_ref()));
            }
            let (endpoints, pod_names) = endpoints.finish();
            let ports: Vec<Port> = subset
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Port::new(p.name.as_deref(), p.protocol.as_deref(), Some(p.port)))
                .collect();
            out.push(EndpointSlice {
                namespace: intern(namespace),
                name: format!("{name}-v1-{i}").into(),
                service: boxed(name),
                endpoints,
                pod_names,
                ports: port_list(ports),
            });
        }
        out
    }
}

impl Pod {
    pub fn from_api(pod: &core::Pod) -> Option<Pod> {
        let name = pod.metadata.name.as_deref()?;
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut addrs = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| ips(v.iter().map(|p| &p.ip)))
            .unwrap_or_default();
        if addrs.is_empty() {
            addrs = ips(status.and_then(|s| s.pod_ip.as_ref()));
        }
        // hostNetwork pods share the node's IP; they must not claim it in `pods verified`.
        if spec.and_then(|s| s.host_network).unwrap_or(false) {
            addrs.clear();
        }
        Some(Pod {
            namespace: intern(namespace),
            name: name.into(),
            ips: addrs,
            node_name: spec.and_then(|s| s.node_name.as_deref()).map(boxed),
            hostname: spec.and_then(|s| s.hostname.as_deref()).map(boxed),
            subdomain: spec.and_then(|s| s.subdomain.as_deref()).map(boxed),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            pod_security_groups: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(POD_SG_ANNOTATION))
                .map(|v| boxed(v)),
            demand: spec.and_then(|s| super::demand::pod_demand(s).ok()),
            capacity: pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(super::demand::CAPACITY_ANNOTATION))
                .map(|v| boxed(v)),
            phase: status.and_then(|s| s.phase.as_deref()).map(boxed),
            scheduler_name: spec.and_then(|s| s.scheduler_name.as_deref()).map(boxed),
        })
    }
}

impl Node {
    pub fn from_api(node: &core::Node) -> Option<Node> {
        let name = node.metadata.name.as_deref()?;
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let micro_vm = labels.get(COMPUTE_TYPE_LABEL).map(String::as_str) == Some("fargate")
            || name.starts_with("fargate-");
        let zone = labels
            .get(ZONE_LABEL)
            .or_else(|| labels.get(LEGACY_ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .map(|z| intern(z));
        Some(Node {
            name: intern(name),
            micro_vm,
            labels,
            zone,
        })
    }
}

impl Namespace {
    pub fn from_api(ns: &core::Namespace) -> Option<Namespace> {
        Some(Namespace {
            name: intern(ns.metadata.name.as_deref()?),
            labels: ns.metadata.labels.clone().unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal pairs are one shared value that reads back what went in; names are shared
    /// with everything else interned.
    #[test]
    fn placements_are_shared_pairs() {
        let a = Placement::new(Some("node-1"), Some("eu-west-1a")).unwrap();
        let b = Placement::new(Some("node-1"), Some("eu-west-1a")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(a.node.as_ref().unwrap(), &intern("node-1")));
        let c = Placement::new(Some("node-1"), None).unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(
            (c.node.as_deref(), c.zone.as_deref()),
            (Some("node-1"), None)
        );
        assert!(Placement::new(None, None).is_none());
        let ep = Endpoint {
            addresses: Addresses::One(["10.0.0.1".parse().unwrap()]),
            ready: true,
            serving: true,
            terminating: false,
            pod_name: None,
            placement: Placement::new(None, Some("eu-west-1b")),
            extra: None,
        };
        assert_eq!((ep.node_name(), ep.zone()), (None, Some("eu-west-1b")));
    }

    #[test]
    fn equal_port_lists_are_one() {
        let http = || Port::new(Some("http"), None, Some(80)).unwrap();
        let a = port_list(vec![http()]);
        assert!(Arc::ptr_eq(&a, &port_list(vec![http()])));
        let udp = Port::new(Some("http"), Some("UDP"), Some(80)).unwrap();
        let b = port_list(vec![udp]);
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!((b[0].port, b[0].protocol), (80, Protocol::Udp));
        assert!(port_list(Vec::new()).is_empty());
    }

    /// What the interner holds is dropped once nothing uses it (checked through a sweep).
    #[test]
    fn unused_names_are_swept() {
        static SET: Interner<str> = Mutex::new(None);
        let kept = intern_in(&SET, "kept", |s| Arc::from(s));
        for i in 0..3000 {
            intern_in(&SET, &format!("gone-{i}"), |s| Arc::from(s));
        }
        let len = SET.lock().unwrap().as_ref().unwrap().0.len();
        assert!(len < 3000, "{len} names kept");
        assert!(Arc::ptr_eq(
            &kept,
            &intern_in(&SET, "kept", |s| Arc::from(s))
        ));
    }
}
