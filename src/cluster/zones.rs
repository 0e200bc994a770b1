//! Which availability zone a client IP is in, for zone-aware answers (dns::zonal).
//!
//! ```text
//!  pod IP ─> its node (PodNodes: sorted (IP, node index), 8 bytes a pod)
//!         ─> the node's topology.kubernetes.io/zone label (ClientZones)
//!  else   ─> the VPC subnet holding the IP and its AZ (--aws DIR; ClusterView)
//!  else   ─> unknown
//! ```
//!
//! Only IP -> node index is kept per pod, in sorted arrays searched by bisection: at 100 000
//! pods that is under 1 MB, where a `HashMap<IpAddr, Arc<str>>` would take about six. The
//! node -> zone step is resolved per snapshot, so a node that gets its zone label changes
//! the answers without touching the pod table.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::model::{Node, Pod};

/// Pod IPs and the node each runs on, sorted by IP.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodNodes {
    v4: Box<[(u32, u32)]>,
    v6: Box<[(u128, u32)]>,
    /// Node names by index.
    nodes: Box<[Arc<str>]>,
}

/// Node names numbered in the order first seen, so a pod entry holds a u32, not a name.
#[derive(Debug, Default)]
struct NodeIndex {
    nodes: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
}

impl NodeIndex {
    fn of(&mut self, node: &str) -> u32 {
        if let Some(i) = self.index.get(node) {
            return *i;
        }
        let i = self.nodes.len() as u32;
        let name: Arc<str> = super::model::intern(node);
        self.nodes.push(name.clone());
        self.index.insert(name, i);
        i
    }
}

/// Collects pod IP -> node while objects are parsed (also in parallel: see [`join`]).
#[derive(Debug, Default)]
pub struct PodNodesBuilder {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u32)>,
    nodes: NodeIndex,
}

impl PodNodesBuilder {
    fn node_index(&mut self, node: &str) -> u32 {
        self.nodes.of(node)
    }

    /// A pod's addresses on `node`; pods not scheduled yet (no node) are no one's client.
    pub fn add(&mut self, ips: &[IpAddr], node: Option<&str>) {
        let Some(node) = node.filter(|n| !n.is_empty()) else {
            return;
        };
        if ips.is_empty() {
            return;
        }
        let i = self.node_index(node);
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => self.v4.push((u32::from(*v4), i)),
                IpAddr::V6(v6) => self.v6.push((u128::from(*v6), i)),
            }
        }
    }

    pub fn add_pod(&mut self, pod: &Pod) {
        self.add(&pod.ips, pod.node_name.as_deref());
    }

    /// Takes in what another builder (of a later part of the input) collected.
    pub fn join(&mut self, later: PodNodesBuilder) {
        let remap: Vec<u32> = later
            .nodes
            .nodes
            .iter()
            .map(|n| self.node_index(n))
            .collect();
        self.v4
            .extend(later.v4.into_iter().map(|(ip, i)| (ip, remap[i as usize])));
        self.v6
            .extend(later.v6.into_iter().map(|(ip, i)| (ip, remap[i as usize])));
    }

    pub fn finish(mut self) -> PodNodes {
        // Stable, so with several pods on one IP (host network) the last one parsed wins,
        // as with a map.
        self.v4.sort_by_key(|e| e.0);
        self.v6.sort_by_key(|e| e.0);
        dedup_last(&mut self.v4);
        dedup_last(&mut self.v6);
        PodNodes {
            v4: self.v4.into_boxed_slice(),
            v6: self.v6.into_boxed_slice(),
            nodes: self.nodes.nodes.into_boxed_slice(),
        }
    }
}

fn dedup_last<K: PartialEq + Copy>(v: &mut Vec<(K, u32)>) {
    let mut out: Vec<(K, u32)> = Vec::with_capacity(v.len());
    for e in v.drain(..) {
        match out.last_mut() {
            Some(last) if last.0 == e.0 => *last = e,
            _ => out.push(e),
        }
    }
    *v = out;
}

impl PodNodes {
    pub fn from_pods<'a>(pods: impl IntoIterator<Item = &'a Arc<Pod>>) -> PodNodes {
        let mut b = PodNodesBuilder::default();
        for p in pods {
            b.add_pod(p);
        }
        b.finish()
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn node_of(&self, ip: &IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(v4) => {
                let k = u32::from(*v4);
                self.v4
                    .binary_search_by_key(&k, |e| e.0)
                    .ok()
                    .map(|i| self.v4[i].1)
            }
            IpAddr::V6(v6) => {
                let k = u128::from(*v6);
                self.v6
                    .binary_search_by_key(&k, |e| e.0)
                    .ok()
                    .map(|i| self.v6[i].1)
            }
        }
    }
}

/// Pod IP -> node, changed by watch events: what the API source keeps of pods when only
/// zone-aware answers need them (`pods insecure` with a PreferClose Service, or
/// `zone_first`). 12 bytes an IPv4 pod plus the table's overhead, no names: a pod is known by a
/// hash of its namespace/name, so that the delete of a pod whose IP was already reused by a
/// newer pod does not remove the newer one's entry. A pod's addresses do not change while it
/// lives (it gets them once, when it starts), so an update only adds.
#[derive(Debug, Default)]
pub struct PodIpTable {
    v4: HashMap<u32, (u32, u32)>,
    v6: HashMap<u128, (u32, u32)>,
    nodes: NodeIndex,
}

fn pod_hash(namespace: &str, name: &str) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    h.finish() as u32
}

impl PodIpTable {
    /// A pod's addresses on `node`; an unscheduled pod or one without addresses adds nothing.
    pub fn insert(&mut self, namespace: &str, name: &str, ips: &[IpAddr], node: Option<&str>) {
        let Some(node) = node.filter(|n| !n.is_empty()) else {
            return;
        };
        if ips.is_empty() {
            return;
        }
        let i = self.nodes.of(node);
        let pod = pod_hash(namespace, name);
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => self.v4.insert(u32::from(*v4), (i, pod)),
                IpAddr::V6(v6) => self.v6.insert(u128::from(*v6), (i, pod)),
            };
        }
    }

    /// Removes the deleted pod's addresses, unless another pod holds them by now.
    pub fn remove(&mut self, namespace: &str, name: &str, ips: &[IpAddr]) {
        let pod = pod_hash(namespace, name);
        for ip in ips {
            match ip {
                IpAddr::V4(v4) => {
                    let k = u32::from(*v4);
                    if self.v4.get(&k).is_some_and(|e| e.1 == pod) {
                        self.v4.remove(&k);
                    }
                }
                IpAddr::V6(v6) => {
                    let k = u128::from(*v6);
                    if self.v6.get(&k).is_some_and(|e| e.1 == pod) {
                        self.v6.remove(&k);
                    }
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sorted, immutable form a snapshot searches.
    pub fn pod_nodes(&self) -> PodNodes {
        let mut v4: Vec<(u32, u32)> = self.v4.iter().map(|(ip, (n, _))| (*ip, *n)).collect();
        let mut v6: Vec<(u128, u32)> = self.v6.iter().map(|(ip, (n, _))| (*ip, *n)).collect();
        v4.sort_unstable_by_key(|e| e.0);
        v6.sort_unstable_by_key(|e| e.0);
        PodNodes {
            v4: v4.into_boxed_slice(),
            v6: v6.into_boxed_slice(),
            nodes: self.nodes.nodes.clone().into_boxed_slice(),
        }
    }
}

/// Pod IP -> zone for one snapshot: the pod table and each of its nodes' zone.
#[derive(Debug, Default)]
pub struct ClientZones {
    pods: Arc<PodNodes>,
    /// By node index of `pods`; None: the node is unknown or has no zone label.
    node_zone: Box<[Option<Arc<str>>]>,
}

impl ClientZones {
    pub fn new(pods: Arc<PodNodes>, nodes: &HashMap<Arc<str>, Arc<Node>>) -> ClientZones {
        let node_zone = pods
            .nodes
            .iter()
            .map(|n| nodes.get(n).and_then(|node| node.zone.clone()))
            .collect();
        ClientZones { pods, node_zone }
    }

    /// The zone of the pod with this IP, through its node's label.
    pub fn pod_zone(&self, ip: &IpAddr) -> Option<&Arc<str>> {
        let node = self.pods.node_of(ip)?;
        self.node_zone.get(node as usize)?.as_ref()
    }

    pub fn pods(&self) -> &Arc<PodNodes> {
        &self.pods
    }
}

/// VPC subnets and their availability zones (from the prober's AWS data), the fallback for
/// clients that are no pod we know: a sidecar's node address, a node, a pod not watched.
#[derive(Debug, Default, Clone)]
pub struct SubnetZones {
    /// Most specific first, so a nested range wins.
    subnets: Vec<(IpNet, Arc<str>)>,
}

impl SubnetZones {
    pub fn new(mut subnets: Vec<(IpNet, Arc<str>)>) -> SubnetZones {
        subnets.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        SubnetZones { subnets }
    }

    pub fn is_empty(&self) -> bool {
        self.subnets.is_empty()
    }

    pub fn zone(&self, ip: &IpAddr) -> Option<&Arc<str>> {
        self.subnets
            .iter()
            .find(|(net, _)| net.contains(ip))
            .map(|(_, z)| z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, zone: Option<&str>) -> (Arc<str>, Arc<Node>) {
        (
            Arc::from(name),
            Arc::new(Node {
                name: name.into(),
                micro_vm: false,
                labels: Default::default(),
                zone: zone.map(Arc::from),
            }),
        )
    }

    #[test]
    fn pod_ip_to_node_to_zone_with_parallel_parts_and_missing_labels() {
        let mut a = PodNodesBuilder::default();
        a.add(&["10.0.0.1".parse().unwrap()], Some("n1"));
        a.add(&["10.0.0.9".parse().unwrap()], None);
        let mut b = PodNodesBuilder::default();
        b.add(
            &["10.0.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
            Some("n2"),
        );
        b.add(&["10.0.0.3".parse().unwrap()], Some("n1"));
        b.add(&["10.0.0.4".parse().unwrap()], Some("n3"));
        a.join(b);
        let pods = Arc::new(a.finish());
        assert_eq!(pods.len(), 5, "the unscheduled pod is left out");
        let nodes: HashMap<_, _> = [
            node("n1", Some("eu-west-1a")),
            node("n2", Some("eu-west-1b")),
            node("n3", None),
        ]
        .into_iter()
        .collect();
        let z = ClientZones::new(pods, &nodes);
        let zone = |ip: &str| z.pod_zone(&ip.parse().unwrap()).map(|z| z.to_string());
        assert_eq!(zone("10.0.0.1").as_deref(), Some("eu-west-1a"));
        assert_eq!(zone("10.0.0.3").as_deref(), Some("eu-west-1a"));
        assert_eq!(zone("10.0.0.2").as_deref(), Some("eu-west-1b"));
        assert_eq!(zone("fd00::2").as_deref(), Some("eu-west-1b"));
        assert_eq!(zone("10.0.0.4"), None, "node without the label");
        assert_eq!(zone("10.0.0.9"), None);
        assert_eq!(zone("10.9.9.9"), None);
    }

    #[test]
    fn pod_ip_table_follows_adds_deletes_and_reused_addresses() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut t = PodIpTable::default();
        t.insert("ns", "a", &[ip("10.0.0.1"), ip("fd00::1")], Some("n1"));
        t.insert("ns", "b", &[ip("10.0.0.2")], Some("n2"));
        t.insert("ns", "pending", &[], Some("n2"));
        t.insert("ns", "unscheduled", &[ip("10.0.0.9")], None);
        assert_eq!(t.len(), 3);
        // b's address goes to c before b's delete is seen: c keeps it.
        t.insert("ns", "c", &[ip("10.0.0.2")], Some("n1"));
        t.remove("ns", "b", &[ip("10.0.0.2")]);
        t.remove("ns", "a", &[ip("fd00::1")]);
        let nodes: HashMap<_, _> = [node("n1", Some("z1")), node("n2", Some("z2"))]
            .into_iter()
            .collect();
        let z = ClientZones::new(Arc::new(t.pod_nodes()), &nodes);
        let zone = |s: &str| z.pod_zone(&ip(s)).map(|z| z.to_string());
        assert_eq!(zone("10.0.0.1").as_deref(), Some("z1"));
        assert_eq!(zone("10.0.0.2").as_deref(), Some("z1"), "c's, not b's");
        assert_eq!(zone("fd00::1"), None);
        assert_eq!(zone("10.0.0.9"), None);
    }

    #[test]
    fn the_most_specific_subnet_wins() {
        let s = SubnetZones::new(vec![
            ("10.0.0.0/16".parse().unwrap(), Arc::from("a")),
            ("10.0.1.0/24".parse().unwrap(), Arc::from("b")),
        ]);
        assert_eq!(
            s.zone(&"10.0.1.7".parse().unwrap()).map(|z| &**z),
            Some("b")
        );
        assert_eq!(
            s.zone(&"10.0.2.7".parse().unwrap()).map(|z| &**z),
            Some("a")
        );
        assert_eq!(s.zone(&"10.1.0.1".parse().unwrap()), None);
    }
}
