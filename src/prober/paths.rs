//! The paths of ../shared/reference/fargate.md, judged for the real endpoints:
//!
//! 1. micro-VM pods (each Fargate profile's pods, or a representative per profile subnet when
//!    none run) -> every cluster DNS endpoint, UDP and TCP 53;
//! 2. node-group pods -> cluster DNS endpoints on micro-VMs;
//! 3. micro-VM pods -> service endpoints on node groups on each port, and the reverse;
//! 4. control plane -> micro-VM kubelets on 10250 (probes run inside the micro-VM, so no other
//!    port crosses the network);
//! 5. cluster DNS pods -> the VPC resolver on 53 and -> the API server on 443.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Pod};

use super::analysis::{judge_planned, Addr, FixPlanner, Flow, Groups, Judgement, Party, PartyKind};
use super::aws::{protocol_name, VpcModel, SCTP, TCP, UDP};
use crate::cluster::objects::ObjectSet;
use crate::fargate::profile::PROFILE_LABEL;
use crate::fargate::select_profile;

/// The annotation Fargate puts on a micro-VM pod that got security groups for pods.
pub const POD_SG_ANNOTATION: &str = "fargate.amazonaws.com/pod-sg";
const COMPUTE_TYPE_LABEL: &str = "eks.amazonaws.com/compute-type";
const NODEGROUP_LABEL: &str = "eks.amazonaws.com/nodegroup";
const EKSCTL_NODEGROUP_LABEL: &str = "alpha.eksctl.io/nodegroup-name";
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The Amazon-provided DNS server's link-local address, reachable from every ENI.
const LINK_LOCAL_RESOLVER: [u8; 4] = [169, 254, 169, 253];

/// The paths, in report order: (id, what it is).
pub const PATHS: &[(&str, &str)] = &[
    ("fargate-to-dns", "micro-VM pods -> cluster DNS"),
    (
        "nodegroup-to-dns",
        "node-group pods -> cluster DNS on micro-VMs",
    ),
    (
        "fargate-to-nodegroup-services",
        "micro-VM pods -> service endpoints on node groups",
    ),
    (
        "nodegroup-to-fargate-services",
        "node-group pods -> service endpoints on micro-VMs",
    ),
    (
        "control-plane-to-fargate-kubelet",
        "control plane -> micro-VM kubelets",
    ),
    ("dns-to-vpc-resolver", "cluster DNS -> VPC resolver"),
    ("dns-to-api-server", "cluster DNS -> API server"),
];

/// One judged flow.
#[derive(Debug, Clone)]
pub struct Finding {
    /// One of [`PATHS`]' ids.
    pub path: &'static str,
    pub from: Party,
    pub from_addr: Addr,
    pub to: Party,
    pub to_addr: Addr,
    pub protocol: u8,
    pub port: u16,
    /// `namespace/name` of the Service whose endpoint `to` is, where there is one.
    pub service: Option<String>,
    pub judgement: Judgement,
}

/// Where a pod runs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Placement {
    MicroVm { profile: Option<String> },
    Node { node: String, group: Option<String> },
    Unknown,
}

/// A pod, or an endpoint address we could not tie to a pod.
struct PodInfo<'a> {
    namespace: String,
    name: String,
    ips: Vec<IpAddr>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    node_name: Option<String>,
    pod: Option<&'a Pod>,
}

/// Protocol number, port, and the port's name in the slice.
pub(crate) type Port = (u8, u16, Option<String>);

/// A target address with the service port(s) to try on it.
struct Target {
    party: Party,
    placement: Placement,
    addr: Addr,
    ports: Vec<Port>,
    service: Option<String>,
}

struct View<'a> {
    model: &'a VpcModel,
    objects: &'a ObjectSet,
    nodes: HashMap<&'a str, &'a Node>,
    pods_by_ip: HashMap<IpAddr, &'a Pod>,
    notes: BTreeSet<String>,
}

fn labels_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    for text in status.pod_ip.as_deref().into_iter().chain(listed) {
        if let Ok(ip) = text.parse::<IpAddr>() {
            if !ips.contains(&ip) {
                ips.push(ip);
            }
        }
    }
    ips
}

fn protocol_number(text: Option<&str>) -> Option<u8> {
    match text.unwrap_or("TCP") {
        "TCP" => Some(TCP),
        "UDP" => Some(UDP),
        "SCTP" => Some(SCTP),
        _ => None,
    }
}

/// A ready address behind a Service, as its EndpointSlices (else its v1 Endpoints) list it.
pub(crate) struct ServiceEndpoint {
    pub ip: IpAddr,
    pub node_name: Option<String>,
    /// The pod (namespace, name); a targetRef without a namespace is in the service's.
    pub target_ref: Option<(String, String)>,
    /// (IP protocol number, port, port name); ports of unknown protocols are left out.
    pub ports: Vec<Port>,
}

/// The ready addresses behind `namespace/service`: its EndpointSlices, else (old dumps) its
/// v1 Endpoints. Shared by the static judgement and the live probe targets.
pub(crate) fn service_endpoints(
    objects: &ObjectSet,
    namespace: &str,
    service: &str,
) -> Vec<ServiceEndpoint> {
    let target = |r: &k8s_openapi::api::core::v1::ObjectReference| {
        Some((
            r.namespace.clone().unwrap_or_else(|| namespace.to_owned()),
            r.name.clone()?,
        ))
    };
    let mut out = Vec::new();
    for slice in &objects.endpoint_slices {
        let ns = slice.metadata.namespace.as_deref().unwrap_or("");
        let owner = labels_of(&slice.metadata).get(SERVICE_NAME_LABEL).cloned();
        if ns != namespace || owner.as_deref() != Some(service) {
            continue;
        }
        let ports: Vec<Port> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((
                    protocol_number(p.protocol.as_deref())?,
                    port,
                    p.name.clone(),
                ))
            })
            .collect();
        for ep in slice.endpoints.iter().flatten() {
            if ep.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in &ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.push(ServiceEndpoint {
                        ip,
                        node_name: ep.node_name.clone(),
                        target_ref: ep.target_ref.as_ref().and_then(target),
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    if !out.is_empty() {
        return out;
    }
    for eps in &objects.endpoints {
        if eps.metadata.namespace.as_deref() != Some(namespace)
            || eps.metadata.name.as_deref() != Some(service)
        {
            continue;
        }
        for subset in eps.subsets.iter().flatten() {
            let ports: Vec<Port> = subset
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let port = u16::try_from(p.port).ok()?;
                    Some((
                        protocol_number(p.protocol.as_deref())?,
                        port,
                        p.name.clone(),
                    ))
                })
                .collect();
            for a in subset.addresses.iter().flatten() {
                if let Ok(ip) = a.ip.parse::<IpAddr>() {
                    out.push(ServiceEndpoint {
                        ip,
                        node_name: a.node_name.clone(),
                        target_ref: a.target_ref.as_ref().and_then(target),
                        ports: ports.clone(),
                    });
                }
            }
        }
    }
    out
}

impl<'a> View<'a> {
    fn new(model: &'a VpcModel, objects: &'a ObjectSet) -> Self {
        let nodes = objects
            .nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref().map(|name| (name, n)))
            .collect();
        let mut pods_by_ip = HashMap::new();
        for pod in &objects.pods {
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let host_network = pod
                .spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false);
            if finished || host_network {
                continue;
            }
            for ip in pod_ips(pod) {
                pods_by_ip.insert(ip, pod);
            }
        }
        View {
            model,
            objects,
            nodes,
            pods_by_ip,
            notes: BTreeSet::new(),
        }
    }

    fn info(&self, pod: &'a Pod) -> PodInfo<'a> {
        PodInfo {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            ips: pod_ips(pod),
            labels: labels_of(&pod.metadata),
            annotations: pod.metadata.annotations.clone().unwrap_or_default(),
            node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            pod: Some(pod),
        }
    }

    fn node_is_micro_vm(&self, node_name: &str) -> bool {
        let labelled = self.nodes.get(node_name).is_some_and(|n| {
            labels_of(&n.metadata)
                .get(COMPUTE_TYPE_LABEL)
                .map(String::as_str)
                == Some("fargate")
        });
        labelled || node_name.starts_with("fargate-")
    }

    fn placement(&self, info: &PodInfo) -> Placement {
        let scheduled_to_fargate = info
            .pod
            .and_then(|p| p.spec.as_ref())
            .and_then(|s| s.scheduler_name.as_deref())
            == Some("fargate-scheduler");
        let micro_vm = match &info.node_name {
            Some(node) => self.node_is_micro_vm(node),
            None => scheduled_to_fargate,
        };
        if micro_vm {
            let profile = info.labels.get(PROFILE_LABEL).cloned().or_else(|| {
                select_profile(&self.model.fargate_profiles, &info.namespace, &info.labels)
                    .map(|p| p.fargate_profile_name.clone())
            });
            return Placement::MicroVm { profile };
        }
        match &info.node_name {
            Some(node) => {
                let labels = self
                    .nodes
                    .get(node.as_str())
                    .map(|n| labels_of(&n.metadata))
                    .unwrap_or_default();
                let group = labels
                    .get(NODEGROUP_LABEL)
                    .or_else(|| labels.get(EKSCTL_NODEGROUP_LABEL))
                    .cloned();
                Placement::Node {
                    node: node.clone(),
                    group,
                }
            }
            None => Placement::Unknown,
        }
    }

    fn node_ip(&self, node: &str) -> Option<IpAddr> {
        let n = self.nodes.get(node)?;
        n.status
            .as_ref()?
            .addresses
            .iter()
            .flatten()
            .filter(|a| a.type_ == "InternalIP")
            .find_map(|a| a.address.parse().ok())
    }

    fn cluster_sg(&self) -> Groups {
        match self
            .model
            .cluster()
            .and_then(|c| c.cluster_security_group_id.clone())
        {
            Some(sg) => Groups::Known {
                ids: vec![sg],
                source: "cluster security group".into(),
            },
            None => Groups::Unknown(
                "no describe-cluster input (or no clusterSecurityGroupId): the cluster security group is unknown"
                    .into(),
            ),
        }
    }

    fn eni_groups(&self, ip: IpAddr, what: &str) -> Option<(Groups, Option<String>)> {
        let eni = self.model.interface_holding(ip)?;
        Some((
            Groups::Known {
                ids: eni.groups.clone(),
                source: format!("{what} {}", eni.id),
            },
            eni.subnet_id.clone(),
        ))
    }

    fn micro_vm_groups(&mut self, info: &PodInfo) -> Groups {
        if let Some(list) = info.annotations.get(POD_SG_ANNOTATION) {
            let ids: Vec<String> = list
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if !ids.is_empty() {
                return Groups::Known {
                    ids,
                    source: format!("annotation {POD_SG_ANNOTATION}"),
                };
            }
        }
        let mut ids = Vec::new();
        let mut names = Vec::new();
        for policy in &self.model.policies {
            if policy.namespace != info.namespace {
                continue;
            }
            let by_pod = policy
                .pod_selector
                .as_ref()
                .map(|s| s.matches(&info.labels));
            if policy.has_service_account_selector && by_pod != Some(true) {
                return Groups::Unknown(format!(
                    "SecurityGroupPolicy {}/{} selects by service account, which is not evaluated",
                    policy.namespace, policy.name
                ));
            }
            if by_pod == Some(true) {
                names.push(format!("{}/{}", policy.namespace, policy.name));
                for g in &policy.group_ids {
                    if !ids.contains(g) {
                        ids.push(g.clone());
                    }
                }
            }
        }
        if !ids.is_empty() {
            return Groups::Known {
                ids,
                source: format!("SecurityGroupPolicy {}", names.join(", ")),
            };
        }
        self.cluster_sg()
    }

    /// The groups EKS gives a managed node group's nodes.
    fn nodegroup_groups(&self, name: &str) -> Groups {
        let Some(ng) = self.model.nodegroups.iter().find(|n| n.name == name) else {
            return Groups::Unknown(format!(
                "node group {name} is not in the describe-nodegroup input (self-managed?) and no describe-network-interfaces entry holds its nodes' IPs"
            ));
        };
        let mut sources = Vec::new();
        let mut ids = Vec::new();
        if let Some(lt) = &ng.launch_template {
            let version = self.model.launch_template_versions.iter().find(|v| {
                let same =
                    (lt.id.is_some() && v.id == lt.id) || (lt.name.is_some() && v.name == lt.name);
                same && (lt.version.is_none() || v.version == lt.version)
            });
            let label = lt.name.clone().or(lt.id.clone()).unwrap_or_default();
            match version {
                // EKS adds the cluster SG only when the template names no groups.
                Some(v) if !v.security_group_ids.is_empty() => {
                    ids.extend(v.security_group_ids.iter().cloned());
                    sources.push(format!("launch template {label}"));
                }
                Some(_) => {}
                None => {
                    return Groups::Unknown(match self.model.unavailable("LaunchTemplateVersions") {
                        Some(why) => format!("node group {name} uses launch template {label}, whose security groups are unknown: {why}"),
                        None => format!("node group {name} uses launch template {label}, whose security groups are not in the input (give describe-launch-template-versions or describe-network-interfaces)"),
                    })
                }
            }
        }
        if ids.is_empty() {
            match self.cluster_sg() {
                Groups::Known { ids: c, .. } => {
                    ids.extend(c);
                    sources.push("cluster security group (managed node group)".into());
                }
                other => return other,
            }
        }
        if let Some(ra) = &ng.remote_access_security_group {
            ids.push(ra.clone());
            sources.push("remote access security group".into());
        }
        Groups::Known {
            ids,
            source: sources.join(" + "),
        }
    }

    fn subnet_for(&self, ip: IpAddr) -> Option<String> {
        self.model.subnet_of(ip).map(|s| s.id.clone())
    }

    /// A pod as a party, with its groups and subnet.
    fn pod_party(&mut self, info: &PodInfo, placement: &Placement) -> Party {
        let first = info.ips.first().copied();
        let eni = first.and_then(|ip| self.eni_groups(ip, "ENI"));
        let (groups, eni_subnet) = match (eni, placement) {
            (Some((g, s)), _) => (g, s),
            (None, Placement::MicroVm { .. }) => (self.micro_vm_groups(info), None),
            (None, Placement::Node { node, group }) => {
                let by_node_eni = self
                    .node_ip(node)
                    .and_then(|ip| self.eni_groups(ip, "node ENI"));
                match (by_node_eni, group) {
                    (Some((g, _)), _) => (g, None),
                    (None, Some(group)) => (self.nodegroup_groups(group), None),
                    (None, None) => (
                        Groups::Unknown(format!(
                            "node {node} has no node group label and no describe-network-interfaces entry holds its IP"
                        )),
                        None,
                    ),
                }
            }
            (None, Placement::Unknown) => {
                (Groups::Unknown("the pod's node is unknown".into()), None)
            }
        };
        let subnet = eni_subnet.or_else(|| first.and_then(|ip| self.subnet_for(ip)));
        Party {
            name: format!("{}/{}", info.namespace, info.name),
            kind: PartyKind::Pod,
            compute: compute_text(placement),
            addrs: info.ips.iter().map(|ip| Addr::Ip(*ip)).collect(),
            subnet,
            groups,
        }
    }

    /// Representatives for a subnet: any address of its blocks.
    fn subnet_addrs(&mut self, subnet: &str, whose: &str) -> Vec<Addr> {
        let Some(s) = self.model.subnet(subnet) else {
            self.notes.insert(format!(
                "{whose}: subnet {subnet} is not in the describe-subnets input, so pods there are not judged"
            ));
            return Vec::new();
        };
        s.cidr
            .map(|c| Addr::Block(c.into()))
            .into_iter()
            .chain(s.ipv6_cidrs.iter().map(|c| Addr::Block((*c).into())))
            .collect()
    }

    /// Running pods with an IP, placed.
    fn pods(&mut self) -> Vec<(Party, Placement)> {
        let objects = self.objects;
        let mut out = Vec::new();
        for pod in &objects.pods {
            let info = self.info(pod);
            let finished = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            if info.ips.is_empty() || finished {
                continue;
            }
            let placement = self.placement(&info);
            let party = self.pod_party(&info, &placement);
            out.push((party, placement));
        }
        out
    }

    /// Micro-VM pods, plus a representative per subnet of every profile with none running.
    fn micro_vm_sources(&mut self, pods: &[(Party, Placement)]) -> Vec<(Party, Placement)> {
        let mut out: Vec<(Party, Placement)> = pods
            .iter()
            .filter(|(_, p)| matches!(p, Placement::MicroVm { .. }))
            .cloned()
            .collect();
        for profile in &self.model.fargate_profiles {
            let name = profile.fargate_profile_name.clone();
            let running = out
                .iter()
                .any(|(_, p)| matches!(p, Placement::MicroVm { profile: Some(n) } if *n == name));
            if running {
                continue;
            }
            let placement = Placement::MicroVm {
                profile: Some(name.clone()),
            };
            for subnet in &profile.subnets {
                let addrs = self.subnet_addrs(subnet, &format!("fargate profile {name}"));
                if addrs.is_empty() {
                    continue;
                }
                let party = Party {
                    name: format!("fargate profile {name} (any new pod)"),
                    kind: PartyKind::FargateProfile,
                    compute: compute_text(&placement),
                    addrs,
                    subnet: Some(subnet.clone()),
                    groups: self.cluster_sg(),
                };
                out.push((party, placement.clone()));
            }
        }
        for listed in &self.model.listed_profile_names {
            if !self
                .model
                .fargate_profiles
                .iter()
                .any(|p| &p.fargate_profile_name == listed)
            {
                self.notes.insert(format!(
                    "fargate profile {listed} is listed but not described (aws eks describe-fargate-profile): its pods are placed without it"
                ));
            }
        }
        out
    }

    /// Node-group pods, plus a representative per subnet of every described node group that
    /// runs none of them.
    fn node_group_sources(&mut self, pods: &[(Party, Placement)]) -> Vec<(Party, Placement)> {
        let mut out: Vec<(Party, Placement)> = pods
            .iter()
            .filter(|(_, p)| matches!(p, Placement::Node { .. }))
            .cloned()
            .collect();
        for ng in &self.model.nodegroups {
            let running = out
                .iter()
                .any(|(_, p)| matches!(p, Placement::Node { group: Some(g), .. } if *g == ng.name));
            if running {
                continue;
            }
            let placement = Placement::Node {
                node: String::new(),
                group: Some(ng.name.clone()),
            };
            for subnet in &ng.subnets {
                let addrs = self.subnet_addrs(subnet, &format!("node group {}", ng.name));
                if addrs.is_empty() {
                    continue;
                }
                let party = Party {
                    name: format!("node group {} (any pod)", ng.name),
                    kind: PartyKind::NodeGroup,
                    compute: compute_text(&placement),
                    addrs,
                    subnet: Some(subnet.clone()),
                    groups: self.nodegroup_groups(&ng.name),
                };
                out.push((party, placement.clone()));
            }
        }
        out
    }

    /// The addresses behind a service, with their ports: EndpointSlices, else v1 Endpoints.
    fn service_targets(&mut self, namespace: &str, service: &str) -> Vec<Target> {
        let objects = self.objects;
        let raw = service_endpoints(objects, namespace, service);
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for ServiceEndpoint {
            ip,
            node_name,
            target_ref,
            ports,
        } in raw
        {
            if !seen.insert(ip) {
                continue;
            }
            let pod = self.pods_by_ip.get(&ip).copied().or_else(|| {
                let (ns, name) = target_ref.as_ref()?;
                objects.pods.iter().find(|p| {
                    p.metadata.namespace.as_deref() == Some(ns.as_str())
                        && p.metadata.name.as_deref() == Some(name.as_str())
                })
            });
            let mut info = match pod {
                Some(pod) => self.info(pod),
                None => PodInfo {
                    namespace: namespace.to_owned(),
                    name: format!("{service} endpoint {ip}"),
                    ips: vec![ip],
                    labels: BTreeMap::new(),
                    annotations: BTreeMap::new(),
                    node_name: None,
                    pod: None,
                },
            };
            if info.node_name.is_none() {
                info.node_name = node_name;
            }
            // The endpoint's own address first, so groups and subnet are looked up by it.
            info.ips.retain(|i| *i != ip);
            info.ips.insert(0, ip);
            let placement = self.placement(&info);
            let party = self.pod_party(&info, &placement);
            out.push(Target {
                party,
                placement,
                addr: Addr::Ip(ip),
                ports,
                service: Some(format!("{namespace}/{service}")),
            });
        }
        out
    }

    /// The cluster DNS endpoints and the ports the kube-dns Service sends 53 to.
    fn dns_targets(&mut self) -> Vec<Target> {
        let service = self.objects.services.iter().find(|s| {
            s.metadata.namespace.as_deref() == Some("kube-system")
                && s.metadata.name.as_deref() == Some("kube-dns")
        });
        let dns_port_names: Vec<Option<String>> = service
            .and_then(|s| s.spec.as_ref())
            .map(|spec| {
                spec.ports
                    .iter()
                    .flatten()
                    .filter(|p| p.port == 53)
                    .map(|p| p.name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let mut targets = self.service_targets("kube-system", "kube-dns");
        for t in &mut targets {
            // The endpoint ports the Service's port 53 leads to (by name), else 53 itself.
            let named: Vec<Port> = t
                .ports
                .iter()
                .filter(|(proto, port, name)| {
                    (*proto == UDP || *proto == TCP)
                        && if dns_port_names.is_empty() {
                            *port == 53
                        } else {
                            dns_port_names.contains(name)
                        }
                })
                .cloned()
                .collect();
            t.ports = if named.is_empty() {
                vec![(UDP, 53, None), (TCP, 53, None)]
            } else {
                named
            };
        }
        if targets.is_empty() {
            self.notes.insert(
                "kube-system/kube-dns has no ready endpoints in the cluster input: DNS paths not judged"
                    .into(),
            );
        }
        targets
    }

    /// The API server's addresses in the VPC: the `kubernetes` service endpoints, else the
    /// control-plane ENIs, else a representative per cluster subnet.
    fn control_plane(&mut self) -> Vec<Party> {
        let cluster = self.model.cluster().cloned();
        let groups_for = |view: &View, ip: Option<IpAddr>| -> (Groups, Option<String>) {
            if let Some(found) = ip.and_then(|ip| view.eni_groups(ip, "ENI")) {
                return found;
            }
            match &cluster {
                Some(c) => {
                    let mut ids: Vec<String> =
                        c.cluster_security_group_id.iter().cloned().collect();
                    ids.extend(c.security_group_ids.iter().cloned());
                    (
                        Groups::Known {
                            ids,
                            source: "cluster security group + resourcesVpcConfig.securityGroupIds (EKS puts them on its control-plane ENIs)".into(),
                        },
                        None,
                    )
                }
                None => (Groups::Unknown("no describe-cluster input".into()), None),
            }
        };
        let mut out = Vec::new();
        let mut ips: Vec<IpAddr> = self
            .service_targets("default", "kubernetes")
            .into_iter()
            .filter_map(|t| match t.addr {
                Addr::Ip(ip) => Some(ip),
                Addr::Block(_) => None,
            })
            .collect();
        if ips.is_empty() {
            ips = self
                .model
                .interfaces
                .iter()
                .filter(|e| e.is_control_plane())
                .filter_map(|e| e.addresses.first().copied())
                .collect();
        }
        for ip in ips {
            let (groups, subnet) = groups_for(self, Some(ip));
            out.push(Party {
                name: "API server".into(),
                kind: PartyKind::ControlPlane,
                compute: "EKS control plane".into(),
                addrs: vec![Addr::Ip(ip)],
                subnet: subnet.or_else(|| self.subnet_for(ip)),
                groups,
            });
        }
        if out.is_empty() {
            if let Some(c) = &cluster {
                for subnet in &c.subnet_ids {
                    let addrs = self.subnet_addrs(subnet, "control plane");
                    if addrs.is_empty() {
                        continue;
                    }
                    let (groups, _) = groups_for(self, None);
                    out.push(Party {
                        name: format!("control plane ENI in {subnet}"),
                        kind: PartyKind::ControlPlane,
                        compute: "EKS control plane".into(),
                        addrs,
                        subnet: Some(subnet.clone()),
                        groups,
                    });
                }
            } else {
                self.notes.insert(
                    "no kubernetes service endpoints, control-plane ENIs or describe-cluster input: control-plane paths not judged".into(),
                );
            }
        }
        out
    }
}

fn compute_text(placement: &Placement) -> String {
    match placement {
        Placement::MicroVm {
            profile: Some(profile),
        } => format!("micro-VM (fargate profile {profile})"),
        Placement::MicroVm { profile: None } => "micro-VM (no matching fargate profile)".into(),
        Placement::Node {
            node,
            group: Some(group),
        } if node.is_empty() => format!("node group {group}"),
        Placement::Node {
            node,
            group: Some(group),
        } => format!("node group {group} (node {node})"),
        Placement::Node { node, group: None } => format!("node {node} (no node group label)"),
        Placement::Unknown => "unknown node".into(),
    }
}

struct Judge<'m> {
    model: &'m VpcModel,
    planner: FixPlanner,
    findings: Vec<Finding>,
}

impl Judge<'_> {
    #[allow(clippy::too_many_arguments)]
    fn flow(
        &mut self,
        path: &'static str,
        from: &Party,
        to: &Party,
        to_addr: Addr,
        protocol: u8,
        port: u16,
        service: Option<&String>,
    ) {
        let Some(from_addr) = from.addr_like(&to_addr) else {
            return; // no address of that family: the flow cannot exist
        };
        if from_addr == to_addr {
            return; // a pod talking to itself crosses nothing
        }
        let judgement = judge_planned(
            self.model,
            &Flow {
                src: from,
                src_addr: from_addr,
                dst: to,
                dst_addr: to_addr,
                protocol,
                port,
            },
            &mut self.planner,
        );
        self.findings.push(Finding {
            path,
            from: from.clone(),
            from_addr,
            to: to.clone(),
            to_addr,
            protocol,
            port,
            service: service.cloned(),
            judgement,
        });
    }
}

/// (namespace, name) of every service but kube-dns (its paths are the DNS paths) and the API
/// server (not a pod), sorted, each once: the application services whose endpoints are judged
/// and probed.
pub fn app_services(objects: &ObjectSet) -> Vec<(String, String)> {
    let mut services: Vec<(String, String)> = objects
        .services
        .iter()
        .filter_map(|s| Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?)))
        .filter(|(ns, name)| {
            !(ns == "kube-system" && name == "kube-dns" || ns == "default" && name == "kubernetes")
        })
        .collect();
    services.sort();
    services.dedup();
    services
}

/// Judges every path for the cluster's real endpoints. Returns the findings (in [`PATHS`]
/// order) and notes about what the input could not cover.
pub fn judge_all(model: &VpcModel, objects: &ObjectSet) -> (Vec<Finding>, Vec<String>) {
    let mut view = View::new(model, objects);
    for d in &model.denied {
        view.notes.insert(format!(
            "{} was denied ({}): what needs its {} is judged unknown; grant it (manifests/examples/iam/clusterdns-prober-policy.json)",
            d.action, d.code, d.input
        ));
    }
    if model.network_acls.is_empty() && model.unavailable("NetworkAcls").is_none() {
        view.notes
            .insert("no describe-network-acls input: network ACLs not checked".into());
    }
    for policy in &model.policies {
        if policy.has_service_account_selector {
            view.notes.insert(format!(
                "SecurityGroupPolicy {}/{} selects by service account: pods it may select are judged unknown",
                policy.namespace, policy.name
            ));
        }
    }
    let pods = view.pods();
    let micro_vm = view.micro_vm_sources(&pods);
    let node_group = view.node_group_sources(&pods);
    let dns = view.dns_targets();
    let control_plane = view.control_plane();
    let mut j = Judge {
        model,
        planner: FixPlanner::default(),
        findings: Vec::new(),
    };

    // 1 and 2: DNS.
    for t in &dns {
        for (from, _) in &micro_vm {
            for &(proto, port, _) in &t.ports {
                j.flow(
                    "fargate-to-dns",
                    from,
                    &t.party,
                    t.addr,
                    proto,
                    port,
                    t.service.as_ref(),
                );
            }
        }
        if matches!(t.placement, Placement::MicroVm { .. }) {
            for (from, _) in &node_group {
                for &(proto, port, _) in &t.ports {
                    j.flow(
                        "nodegroup-to-dns",
                        from,
                        &t.party,
                        t.addr,
                        proto,
                        port,
                        t.service.as_ref(),
                    );
                }
            }
        }
    }

    // 3: every other service's endpoints across the two worlds, on each port.
    for (ns, name) in &app_services(objects) {
        for t in view.service_targets(ns, name) {
            let (path, sources) = match t.placement {
                Placement::Node { .. } => ("fargate-to-nodegroup-services", &micro_vm),
                Placement::MicroVm { .. } => ("nodegroup-to-fargate-services", &node_group),
                Placement::Unknown => continue,
            };
            for (from, _) in sources {
                for &(proto, port, _) in &t.ports {
                    j.flow(
                        path,
                        from,
                        &t.party,
                        t.addr,
                        proto,
                        port,
                        t.service.as_ref(),
                    );
                }
            }
        }
    }

    // 4: the control plane reaches each micro-VM's kubelet.
    for cp in &control_plane {
        for (to, _) in &micro_vm {
            for addr in &to.addrs {
                j.flow(
                    "control-plane-to-fargate-kubelet",
                    cp,
                    to,
                    *addr,
                    TCP,
                    10250,
                    None,
                );
            }
        }
    }

    // 5: the DNS pods' own upstreams.
    let resolver_ip = model
        .vpc_resolver()
        .unwrap_or(IpAddr::from(LINK_LOCAL_RESOLVER));
    let resolver = Party {
        name: format!("VPC resolver {resolver_ip}"),
        kind: PartyKind::VpcResolver,
        compute: "Amazon-provided DNS".into(),
        addrs: vec![Addr::Ip(resolver_ip)],
        subnet: None,
        groups: Groups::NotEni,
    };
    for t in &dns {
        for proto in [UDP, TCP] {
            j.flow(
                "dns-to-vpc-resolver",
                &t.party,
                &resolver,
                Addr::Ip(resolver_ip),
                proto,
                53,
                None,
            );
        }
        for cp in &control_plane {
            for addr in &cp.addrs {
                j.flow("dns-to-api-server", &t.party, cp, *addr, TCP, 443, None);
            }
        }
    }

    let mut findings = j.findings;
    let order = |id: &str| {
        PATHS
            .iter()
            .position(|(p, _)| *p == id)
            .unwrap_or(usize::MAX)
    };
    findings.sort_by(|a, b| {
        (
            order(a.path),
            a.judgement.verdict,
            &a.from.name,
            &a.to.name,
            a.to_addr.to_string(),
            protocol_name(a.protocol),
            a.port,
        )
            .cmp(&(
                order(b.path),
                b.judgement.verdict,
                &b.from.name,
                &b.to.name,
                b.to_addr.to_string(),
                protocol_name(b.protocol),
                b.port,
            ))
    });
    (findings, view.notes.into_iter().collect())
}
