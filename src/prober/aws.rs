//! The VPC as the AWS CLI describes it: `aws eks describe-cluster`, `describe-fargate-profile`,
//! `describe-nodegroup`, `aws ec2 describe-subnets`, `describe-security-groups`,
//! `describe-network-acls`, `describe-network-interfaces` (and, when given, `describe-vpcs` and
//! `describe-launch-template-versions`), plus SecurityGroupPolicy objects. Files are recognised
//! by their top-level key, never by name; unknown fields are ignored; a missing required field
//! is reported with its JSON path (`FILE: $.SecurityGroups[2].GroupId: missing`).
//!
//! The JSON is walked by hand rather than with serde derives so that every error can name the
//! exact path, which is what a user needs to find the bad entry in a 5,000-line dump.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;
use serde_json::Value;

use super::ProbeError;
use crate::fargate::FargateProfile;

/// Top-level keys of the AWS CLI outputs this module reads, in the order error messages list
/// them.
pub const KNOWN_KEYS: &[&str] = &[
    "cluster",
    "fargateProfile",
    "fargateProfileNames",
    "nodegroup",
    "Subnets",
    "SecurityGroups",
    "NetworkAcls",
    "NetworkInterfaces",
    "Vpcs",
    "LaunchTemplateVersions",
    "DeniedCalls",
];

/// A call the credentials were not allowed to make when the input was read from the AWS APIs
/// (`--save-aws` writes them as `{"DeniedCalls": [...]}` so a replay judges the same).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeniedCall {
    /// The IAM action, e.g. `ec2:DescribeNetworkAcls`.
    pub action: String,
    /// The top-level key of the CLI output it would have produced (`NetworkAcls`).
    pub input: String,
    pub code: String,
    pub message: String,
}

/// `aws eks describe-cluster`: what matters for traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub vpc_id: Option<String>,
    /// The security group EKS creates and attaches to its control-plane ENIs, managed node
    /// groups and micro-VM pods. Absent on very old clusters.
    pub cluster_security_group_id: Option<String>,
    /// Additional groups the user gave at creation: attached to the control-plane ENIs only.
    pub security_group_ids: Vec<String>,
    pub subnet_ids: Vec<String>,
    pub service_ipv4_cidr: Option<Ipv4Net>,
}

/// `aws eks describe-nodegroup`: managed node groups only (self-managed ones have no EKS
/// record; their nodes are known from describe-network-interfaces or not at all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodegroup {
    pub name: String,
    pub subnets: Vec<String>,
    pub remote_access_security_group: Option<String>,
    pub launch_template: Option<LaunchTemplateRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplateRef {
    pub id: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
}

/// One entry of `aws ec2 describe-launch-template-versions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplateVersion {
    pub id: Option<String>,
    pub name: Option<String>,
    pub version: Option<String>,
    /// `SecurityGroupIds` plus the groups of any `NetworkInterfaces` entries.
    pub security_group_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: Option<String>,
    pub cidr: Option<Ipv4Net>,
    pub ipv6_cidrs: Vec<Ipv6Net>,
    pub availability_zone: Option<String>,
}

impl Subnet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => self.cidr.is_some_and(|c| c.contains(&v4)),
            IpAddr::V6(v6) => self.ipv6_cidrs.iter().any(|c| c.contains(&v6)),
        }
    }

    /// The subnet's block of the given family, for rules and fixes that name it.
    pub fn block(&self, v6: bool) -> Option<IpNet> {
        if v6 {
            self.ipv6_cidrs.first().map(|c| IpNet::V6(*c))
        } else {
            self.cidr.map(IpNet::V4)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub cidr: Ipv4Net,
}

/// An IP protocol as security groups and network ACLs name it: `-1` (all) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    All,
    Number(u8),
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;
pub const SCTP: u8 = 132;

impl Protocol {
    /// `-1`, `all`, `tcp`, `udp`, `icmp`, `icmpv6` or a protocol number as a string.
    pub fn parse(text: &str) -> Option<Protocol> {
        match text.to_ascii_lowercase().as_str() {
            "-1" | "all" => Some(Protocol::All),
            "tcp" => Some(Protocol::Number(TCP)),
            "udp" => Some(Protocol::Number(UDP)),
            "icmp" => Some(Protocol::Number(ICMP)),
            "icmpv6" => Some(Protocol::Number(ICMPV6)),
            other => other.parse::<u8>().ok().map(Protocol::Number),
        }
    }

    pub fn matches(self, number: u8) -> bool {
        match self {
            Protocol::All => true,
            Protocol::Number(n) => n == number,
        }
    }

    /// Whether rules of this protocol carry a port range (TCP, UDP) rather than ICMP
    /// type/code or nothing.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Number(TCP | UDP))
    }
}

/// Lower-case protocol name, as the AWS CLI accepts it.
pub fn protocol_name(number: u8) -> String {
    match number {
        TCP => "tcp".into(),
        UDP => "udp".into(),
        ICMP => "icmp".into(),
        ICMPV6 => "icmpv6".into(),
        SCTP => "sctp".into(),
        n => format!("proto {n}"),
    }
}

/// One `IpPermissions` / `IpPermissionsEgress` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub protocol: Protocol,
    /// For TCP/UDP the inclusive port range; for ICMP the type and code; absent for `-1`.
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub cidrs: Vec<IpNet>,
    pub groups: Vec<String>,
    pub prefix_lists: Vec<String>,
}

impl Permission {
    /// Whether this permission covers `port` of protocol `number` (peer not considered).
    pub fn covers(&self, number: u8, port: u16) -> bool {
        if !self.protocol.matches(number) {
            return false;
        }
        if !self.protocol.has_ports() {
            // `-1` and protocols without ports (e.g. "50") cover every port of what they match.
            return true;
        }
        let from = self.from_port.unwrap_or(0);
        let to = self.to_port.unwrap_or(65535);
        // -1 for a TCP/UDP range does not occur in the API, but means "all" where it does.
        if from < 0 || to < 0 {
            return true;
        }
        (from..=to).contains(&i64::from(port))
    }

    /// `all`, `udp 53`, `tcp 8080-8090`, `icmp`.
    pub fn describe_protocol(&self) -> String {
        match self.protocol {
            Protocol::All => "all".into(),
            Protocol::Number(n) if self.protocol.has_ports() => {
                let from = self.from_port.unwrap_or(0);
                let to = self.to_port.unwrap_or(65535);
                if from == to {
                    format!("{} {from}", protocol_name(n))
                } else {
                    format!("{} {from}-{to}", protocol_name(n))
                }
            }
            Protocol::Number(n) => protocol_name(n),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: Option<String>,
    pub vpc_id: Option<String>,
    pub ingress: Vec<Permission>,
    pub egress: Vec<Permission>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub rule_number: u32,
    pub egress: bool,
    pub protocol: Protocol,
    pub allow: bool,
    pub cidr: IpNet,
    /// Inclusive; `None` when every port matches (the CLI omits `PortRange`).
    pub ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkAcl {
    pub id: String,
    pub vpc_id: Option<String>,
    pub is_default: bool,
    pub subnets: Vec<String>,
    pub entries: Vec<AclEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInterface {
    pub id: String,
    pub subnet_id: Option<String>,
    pub description: String,
    /// Primary first, then secondary addresses (the pod IPs the VPC CNI hands out), then IPv6.
    pub addresses: Vec<IpAddr>,
    /// Prefixes delegated to the ENI (VPC CNI prefix mode): pod IPs come from these.
    pub prefixes: Vec<IpNet>,
    pub groups: Vec<String>,
    pub requester_managed: bool,
}

impl NetworkInterface {
    pub fn holds(&self, ip: IpAddr) -> bool {
        self.addresses.contains(&ip) || self.prefixes.iter().any(|p| p.contains(&ip))
    }

    /// A micro-VM's ENI: requester-managed and described `[EKS] fargate-ip-...`.
    pub fn is_micro_vm(&self) -> bool {
        self.description.starts_with("[EKS] fargate-")
    }

    /// The ENIs EKS creates in the customer VPC for its control plane: `Amazon EKS <cluster>`.
    pub fn is_control_plane(&self) -> bool {
        self.description.starts_with("Amazon EKS ")
    }
}

/// A Kubernetes label selector (matchLabels and matchExpressions).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub match_expressions: Vec<(String, String, Vec<String>)>,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .match_expressions
                .iter()
                .all(|(key, op, values)| match op.as_str() {
                    "In" => labels.get(key).is_some_and(|v| values.contains(v)),
                    "NotIn" => labels.get(key).is_none_or(|v| !values.contains(v)),
                    "Exists" => labels.contains_key(key),
                    "DoesNotExist" => !labels.contains_key(key),
                    // An operator Kubernetes does not define selects nothing.
                    _ => false,
                })
    }
}

/// `vpcresources.k8s.aws/v1beta1 SecurityGroupPolicy`: pods it selects get these groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroupPolicy {
    pub namespace: String,
    pub name: String,
    /// `None` when the policy has no podSelector; `Some(default)` (empty) selects every pod.
    pub pod_selector: Option<LabelSelector>,
    /// Service-account selectors need ServiceAccount objects we do not read.
    pub has_service_account_selector: bool,
    pub group_ids: Vec<String>,
}

/// Each subnet's CIDRs and availability zone, for locating clients that are no known pod
/// (zone-aware answers: cluster::zones).
pub fn subnet_zones(model: &VpcModel) -> crate::cluster::zones::SubnetZones {
    let mut out = Vec::new();
    for s in &model.subnets {
        let Some(az) = s.availability_zone.as_deref().filter(|z| !z.is_empty()) else {
            continue;
        };
        let az: std::sync::Arc<str> = crate::cluster::model::intern(az);
        out.extend(s.cidr.map(|c| (IpNet::V4(c), az.clone())));
        out.extend(s.ipv6_cidrs.iter().map(|c| (IpNet::V6(*c), az.clone())));
    }
    crate::cluster::zones::SubnetZones::new(out)
}

/// Everything read from the AWS CLI files.
#[derive(Debug, Clone, Default)]
pub struct VpcModel {
    pub files: Vec<PathBuf>,
    pub clusters: Vec<Cluster>,
    pub fargate_profiles: Vec<FargateProfile>,
    /// From `aws eks list-fargate-profiles`: used only to say which profiles lack a describe.
    pub listed_profile_names: Vec<String>,
    pub nodegroups: Vec<Nodegroup>,
    pub launch_template_versions: Vec<LaunchTemplateVersion>,
    pub subnets: Vec<Subnet>,
    pub vpcs: Vec<Vpc>,
    pub security_groups: BTreeMap<String, SecurityGroup>,
    pub network_acls: Vec<NetworkAcl>,
    pub interfaces: Vec<NetworkInterface>,
    pub policies: Vec<SecurityGroupPolicy>,
    /// Inputs that are missing because reading them was denied.
    pub denied: Vec<DeniedCall>,
}

impl VpcModel {
    /// Why an input (by its CLI top-level key, e.g. `NetworkAcls`) is missing, when reading it
    /// was denied: the sentence names the IAM action to grant.
    pub fn unavailable(&self, input: &str) -> Option<String> {
        self.denied.iter().find(|d| d.input == input).map(|d| {
            format!(
                "{} was denied ({}): grant it to read this",
                d.action, d.code
            )
        })
    }

    /// The one cluster the files describe (the first, if several were given).
    pub fn cluster(&self) -> Option<&Cluster> {
        self.clusters.first()
    }

    pub fn subnet(&self, id: &str) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.id == id)
    }

    pub fn subnet_of(&self, ip: IpAddr) -> Option<&Subnet> {
        self.subnets.iter().find(|s| s.contains(ip))
    }

    pub fn interface_holding(&self, ip: IpAddr) -> Option<&NetworkInterface> {
        // An exact address beats a delegated prefix, should both exist.
        self.interfaces
            .iter()
            .find(|e| e.addresses.contains(&ip))
            .or_else(|| self.interfaces.iter().find(|e| e.holds(ip)))
    }

    /// The ACL a subnet uses: the one associated with it, else its VPC's default ACL.
    pub fn acl_for_subnet(&self, subnet_id: &str) -> Option<&NetworkAcl> {
        if let Some(acl) = self
            .network_acls
            .iter()
            .find(|a| a.subnets.iter().any(|s| s == subnet_id))
        {
            return Some(acl);
        }
        let vpc = self
            .subnet(subnet_id)
            .and_then(|s| s.vpc_id.clone())
            .or_else(|| self.cluster().and_then(|c| c.vpc_id.clone()));
        let defaults: Vec<&NetworkAcl> =
            self.network_acls.iter().filter(|a| a.is_default).collect();
        match vpc {
            Some(vpc) => defaults
                .iter()
                .find(|a| a.vpc_id.as_deref() == Some(vpc.as_str()))
                .copied(),
            // Without a VPC id only an unambiguous default ACL can be used.
            None if defaults.len() == 1 => Some(defaults[0]),
            None => None,
        }
    }

    /// The VPC's Amazon-provided DNS server: the primary CIDR's base + 2, when describe-vpcs
    /// was given.
    pub fn vpc_resolver(&self) -> Option<IpAddr> {
        let vpc_id = self.cluster().and_then(|c| c.vpc_id.as_deref());
        let vpc = self
            .vpcs
            .iter()
            .find(|v| Some(v.id.as_str()) == vpc_id)
            .or(self.vpcs.first())?;
        let base = u32::from(vpc.cidr.network());
        Some(IpAddr::V4(std::net::Ipv4Addr::from(base.checked_add(2)?)))
    }

    /// Reads one file's text: AWS CLI JSON (by top-level key) or SecurityGroupPolicy
    /// YAML/JSON.
    pub fn add_text(&mut self, text: &str, file: &Path) -> Result<(), ProbeError> {
        let is_yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if is_yaml {
            for document in serde_yaml::Deserializer::from_str(text) {
                let value = Value::deserialize(document).map_err(|e| ProbeError::Syntax {
                    file: file.to_owned(),
                    message: e.to_string(),
                })?;
                if !value.is_null() {
                    self.add_kubernetes(&value, file)?;
                }
            }
        } else {
            let value: Value = serde_json::from_str(text).map_err(|e| ProbeError::Syntax {
                file: file.to_owned(),
                message: e.to_string(),
            })?;
            self.add_value(&value, file)?;
        }
        self.files.push(file.to_owned());
        Ok(())
    }

    fn add_value(&mut self, value: &Value, file: &Path) -> Result<(), ProbeError> {
        let Some(object) = value.as_object() else {
            return Err(ProbeError::UnknownKind {
                file: file.to_owned(),
                found: vec![format!("(a JSON {}, not an object)", kind_of(value))],
            });
        };
        if object.contains_key("apiVersion") && object.contains_key("kind") {
            return self.add_kubernetes(value, file);
        }
        let cx = Cx { file };
        let root = Node::root(value);
        let mut recognised = false;
        if let Some(n) = root.get("cluster") {
            recognised = true;
            self.clusters.push(parse_cluster(&n, cx)?);
        }
        if let Some(n) = root.get("fargateProfile") {
            recognised = true;
            // FargateProfile is shared with crate::fargate; check its required field first so
            // the error has the same path style as every other.
            n.req_str("fargateProfileName", cx)?;
            let profile: FargateProfile =
                serde_json::from_value(n.v.clone()).map_err(|e| cx.err(&n.path, e.to_string()))?;
            self.fargate_profiles.push(profile);
        }
        if root.get("fargateProfileNames").is_some() {
            recognised = true;
            for n in root.items("fargateProfileNames", cx)? {
                self.listed_profile_names.push(n.string(cx)?);
            }
        }
        if let Some(n) = root.get("nodegroup") {
            recognised = true;
            self.nodegroups.push(parse_nodegroup(&n, cx)?);
        }
        if root.get("Subnets").is_some() {
            recognised = true;
            for n in root.items("Subnets", cx)? {
                self.subnets.push(parse_subnet(&n, cx)?);
            }
        }
        if root.get("SecurityGroups").is_some() {
            recognised = true;
            for n in root.items("SecurityGroups", cx)? {
                let sg = parse_security_group(&n, cx)?;
                self.security_groups.insert(sg.id.clone(), sg);
            }
        }
        if root.get("NetworkAcls").is_some() {
            recognised = true;
            for n in root.items("NetworkAcls", cx)? {
                self.network_acls.push(parse_network_acl(&n, cx)?);
            }
        }
        if root.get("NetworkInterfaces").is_some() {
            recognised = true;
            for n in root.items("NetworkInterfaces", cx)? {
                self.interfaces.push(parse_interface(&n, cx)?);
            }
        }
        if root.get("Vpcs").is_some() {
            recognised = true;
            for n in root.items("Vpcs", cx)? {
                self.vpcs.push(Vpc {
                    id: n.req_str("VpcId", cx)?,
                    cidr: n.req("CidrBlock", cx)?.parse(cx)?,
                });
            }
        }
        if root.get("LaunchTemplateVersions").is_some() {
            recognised = true;
            for n in root.items("LaunchTemplateVersions", cx)? {
                self.launch_template_versions
                    .push(parse_launch_template_version(&n, cx)?);
            }
        }
        if root.get("DeniedCalls").is_some() {
            recognised = true;
            for n in root.items("DeniedCalls", cx)? {
                self.denied.push(DeniedCall {
                    action: n.req_str("Action", cx)?,
                    input: n.req_str("Input", cx)?,
                    code: n.opt_str("Code", cx)?.unwrap_or_default(),
                    message: n.opt_str("Message", cx)?.unwrap_or_default(),
                });
            }
        }
        if !recognised {
            return Err(ProbeError::UnknownKind {
                file: file.to_owned(),
                found: object.keys().cloned().collect(),
            });
        }
        Ok(())
    }

    fn add_kubernetes(&mut self, value: &Value, file: &Path) -> Result<(), ProbeError> {
        let cx = Cx { file };
        let root = Node::root(value);
        let kind = root.req_str("kind", cx)?;
        if kind.ends_with("List") {
            for item in root.items("items", cx)? {
                self.add_policy(&item, cx)?;
            }
            return Ok(());
        }
        self.add_policy(&root, cx)
    }

    fn add_policy(&mut self, n: &Node, cx: Cx) -> Result<(), ProbeError> {
        let kind = n.req_str("kind", cx)?;
        let api = n.req_str("apiVersion", cx)?;
        if kind != "SecurityGroupPolicy" || !api.starts_with("vpcresources.k8s.aws/") {
            return Err(cx.err(
                &n.path,
                format!("{api} {kind}: only vpcresources.k8s.aws SecurityGroupPolicy objects are read here (cluster objects go with the other input)"),
            ));
        }
        let meta = n.req("metadata", cx)?;
        let spec = n.req("spec", cx)?;
        let pod_selector = match spec.get("podSelector") {
            Some(s) => Some(parse_selector(&s, cx)?),
            None => None,
        };
        let groups = spec.req("securityGroups", cx)?;
        let mut group_ids = Vec::new();
        for g in groups.items("groupIds", cx)? {
            group_ids.push(g.string(cx)?);
        }
        self.policies.push(SecurityGroupPolicy {
            namespace: meta.req_str("namespace", cx)?,
            name: meta.req_str("name", cx)?,
            pod_selector,
            has_service_account_selector: spec.get("serviceAccountSelector").is_some(),
            group_ids,
        });
        Ok(())
    }
}

/// Loads a file, or every `.json`/`.yaml`/`.yml` file in a directory (sorted; hidden entries,
/// subdirectories and other files such as a README are skipped).
pub fn load(path: &Path) -> Result<VpcModel, ProbeError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| ProbeError::Io { path: p, source }
    };
    let meta = std::fs::metadata(path).map_err(io(path))?;
    let mut files = Vec::new();
    if meta.is_dir() {
        // Not recursive: a case directory may hold other inputs (cluster dumps) below it.
        for entry in std::fs::read_dir(path).map_err(io(path))? {
            let entry = entry.map_err(io(path))?;
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') || p.is_dir() {
                continue;
            }
            if p.extension()
                .is_some_and(|e| e == "json" || e == "yaml" || e == "yml")
            {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            return Err(ProbeError::NoInput {
                path: path.to_owned(),
            });
        }
    } else {
        files.push(path.to_owned());
    }
    let mut model = VpcModel::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(io(&file))?;
        model.add_text(&text, &file)?;
    }
    Ok(model)
}

// ---- the path-tracking JSON walker ----

#[derive(Clone, Copy)]
struct Cx<'a> {
    file: &'a Path,
}

impl Cx<'_> {
    fn err(&self, path: &str, problem: impl Into<String>) -> ProbeError {
        ProbeError::Field {
            file: self.file.to_owned(),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }
}

struct Node<'a> {
    v: &'a Value,
    path: String,
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl<'a> Node<'a> {
    fn root(v: &'a Value) -> Self {
        Node {
            v,
            path: "$".into(),
        }
    }

    /// The field, if present and not null.
    fn get(&self, key: &str) -> Option<Node<'a>> {
        match self.v.get(key) {
            None | Some(Value::Null) => None,
            Some(v) => Some(Node {
                v,
                path: format!("{}.{key}", self.path),
            }),
        }
    }

    fn req(&self, key: &str, cx: Cx) -> Result<Node<'a>, ProbeError> {
        self.get(key)
            .ok_or_else(|| cx.err(&format!("{}.{key}", self.path), "missing"))
    }

    fn string(&self, cx: Cx) -> Result<String, ProbeError> {
        self.v.as_str().map(str::to_owned).ok_or_else(|| {
            cx.err(
                &self.path,
                format!("expected a string, found {}", kind_of(self.v)),
            )
        })
    }

    fn req_str(&self, key: &str, cx: Cx) -> Result<String, ProbeError> {
        self.req(key, cx)?.string(cx)
    }

    fn opt_str(&self, key: &str, cx: Cx) -> Result<Option<String>, ProbeError> {
        self.get(key).map(|n| n.string(cx)).transpose()
    }

    fn opt_bool(&self, key: &str, cx: Cx) -> Result<Option<bool>, ProbeError> {
        self.get(key)
            .map(|n| {
                n.v.as_bool().ok_or_else(|| {
                    cx.err(
                        &n.path,
                        format!("expected a boolean, found {}", kind_of(n.v)),
                    )
                })
            })
            .transpose()
    }

    fn opt_int(&self, key: &str, cx: Cx) -> Result<Option<i64>, ProbeError> {
        self.get(key)
            .map(|n| {
                n.v.as_i64().ok_or_else(|| {
                    cx.err(
                        &n.path,
                        format!("expected an integer, found {}", kind_of(n.v)),
                    )
                })
            })
            .transpose()
    }

    /// Array elements; a missing or null field is an empty list.
    fn items(&self, key: &str, cx: Cx) -> Result<Vec<Node<'a>>, ProbeError> {
        let Some(n) = self.get(key) else {
            return Ok(Vec::new());
        };
        let Some(items) = n.v.as_array() else {
            return Err(cx.err(
                &n.path,
                format!("expected an array, found {}", kind_of(n.v)),
            ));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| Node {
                v,
                path: format!("{}[{i}]", n.path),
            })
            .collect())
    }

    fn strings(&self, key: &str, cx: Cx) -> Result<Vec<String>, ProbeError> {
        self.items(key, cx)?.iter().map(|n| n.string(cx)).collect()
    }

    fn parse<T: std::str::FromStr>(&self, cx: Cx) -> Result<T, ProbeError>
    where
        T::Err: std::fmt::Display,
    {
        let text = self.string(cx)?;
        text.parse()
            .map_err(|e| cx.err(&self.path, format!("{text:?}: {e}")))
    }
}

fn parse_cluster(n: &Node, cx: Cx) -> Result<Cluster, ProbeError> {
    let vpc = n.req("resourcesVpcConfig", cx)?;
    let service_ipv4_cidr = match n.get("kubernetesNetworkConfig") {
        Some(k) => k.get("serviceIpv4Cidr").map(|c| c.parse(cx)).transpose()?,
        None => None,
    };
    Ok(Cluster {
        name: n.req_str("name", cx)?,
        vpc_id: vpc.opt_str("vpcId", cx)?,
        cluster_security_group_id: vpc.opt_str("clusterSecurityGroupId", cx)?,
        security_group_ids: vpc.strings("securityGroupIds", cx)?,
        subnet_ids: vpc.strings("subnetIds", cx)?,
        service_ipv4_cidr,
    })
}

fn parse_nodegroup(n: &Node, cx: Cx) -> Result<Nodegroup, ProbeError> {
    let remote_access_security_group = match n.get("resources") {
        Some(r) => r.opt_str("remoteAccessSecurityGroup", cx)?,
        None => None,
    };
    let launch_template = match n.get("launchTemplate") {
        Some(lt) => Some(LaunchTemplateRef {
            id: lt.opt_str("id", cx)?,
            name: lt.opt_str("name", cx)?,
            version: lt.opt_str("version", cx)?,
        }),
        None => None,
    };
    Ok(Nodegroup {
        name: n.req_str("nodegroupName", cx)?,
        subnets: n.strings("subnets", cx)?,
        remote_access_security_group,
        launch_template,
    })
}

fn parse_launch_template_version(n: &Node, cx: Cx) -> Result<LaunchTemplateVersion, ProbeError> {
    let mut groups = Vec::new();
    if let Some(data) = n.get("LaunchTemplateData") {
        groups.extend(data.strings("SecurityGroupIds", cx)?);
        for ni in data.items("NetworkInterfaces", cx)? {
            groups.extend(ni.strings("Groups", cx)?);
        }
    }
    let version = n.get("VersionNumber").map(|v| match v.v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    Ok(LaunchTemplateVersion {
        id: n.opt_str("LaunchTemplateId", cx)?,
        name: n.opt_str("LaunchTemplateName", cx)?,
        version,
        security_group_ids: groups,
    })
}

fn parse_subnet(n: &Node, cx: Cx) -> Result<Subnet, ProbeError> {
    let mut ipv6_cidrs = Vec::new();
    for a in n.items("Ipv6CidrBlockAssociationSet", cx)? {
        // Only associated blocks carry traffic; a disassociated one lingers in the output.
        let state = a
            .get("Ipv6CidrBlockState")
            .and_then(|s| s.v.get("State"))
            .and_then(Value::as_str);
        if state.is_none_or(|s| s == "associated") {
            ipv6_cidrs.push(a.req("Ipv6CidrBlock", cx)?.parse(cx)?);
        }
    }
    Ok(Subnet {
        id: n.req_str("SubnetId", cx)?,
        vpc_id: n.opt_str("VpcId", cx)?,
        cidr: n.get("CidrBlock").map(|c| c.parse(cx)).transpose()?,
        ipv6_cidrs,
        availability_zone: n.opt_str("AvailabilityZone", cx)?,
    })
}

fn parse_permission(n: &Node, cx: Cx) -> Result<Permission, ProbeError> {
    let proto_node = n.req("IpProtocol", cx)?;
    let proto_text = proto_node.string(cx)?;
    let protocol = Protocol::parse(&proto_text)
        .ok_or_else(|| cx.err(&proto_node.path, format!("unknown protocol {proto_text:?}")))?;
    let mut cidrs = Vec::new();
    for r in n.items("IpRanges", cx)? {
        cidrs.push(IpNet::V4(r.req("CidrIp", cx)?.parse(cx)?));
    }
    for r in n.items("Ipv6Ranges", cx)? {
        cidrs.push(IpNet::V6(r.req("CidrIpv6", cx)?.parse(cx)?));
    }
    let mut groups = Vec::new();
    for g in n.items("UserIdGroupPairs", cx)? {
        groups.push(g.req_str("GroupId", cx)?);
    }
    let mut prefix_lists = Vec::new();
    for p in n.items("PrefixListIds", cx)? {
        prefix_lists.push(p.req_str("PrefixListId", cx)?);
    }
    Ok(Permission {
        protocol,
        from_port: n.opt_int("FromPort", cx)?,
        to_port: n.opt_int("ToPort", cx)?,
        cidrs,
        groups,
        prefix_lists,
    })
}

fn parse_security_group(n: &Node, cx: Cx) -> Result<SecurityGroup, ProbeError> {
    let id = n.req_str("GroupId", cx)?;
    let ingress = n
        .items("IpPermissions", cx)?
        .iter()
        .map(|p| parse_permission(p, cx))
        .collect::<Result<_, _>>()?;
    let egress = n
        .items("IpPermissionsEgress", cx)?
        .iter()
        .map(|p| parse_permission(p, cx))
        .collect::<Result<_, _>>()?;
    Ok(SecurityGroup {
        id,
        name: n.opt_str("GroupName", cx)?,
        vpc_id: n.opt_str("VpcId", cx)?,
        ingress,
        egress,
    })
}

fn parse_network_acl(n: &Node, cx: Cx) -> Result<NetworkAcl, ProbeError> {
    let id = n.req_str("NetworkAclId", cx)?;
    let mut subnets = Vec::new();
    for a in n.items("Associations", cx)? {
        subnets.push(a.req_str("SubnetId", cx)?);
    }
    let mut entries = Vec::new();
    for e in n.items("Entries", cx)? {
        let rule = e.req("RuleNumber", cx)?;
        let rule_number = rule
            .v
            .as_u64()
            .and_then(|r| u32::try_from(r).ok())
            .ok_or_else(|| cx.err(&rule.path, "expected a rule number 1-32767"))?;
        let proto_node = e.req("Protocol", cx)?;
        let proto_text = proto_node.string(cx)?;
        let protocol = Protocol::parse(&proto_text)
            .ok_or_else(|| cx.err(&proto_node.path, format!("unknown protocol {proto_text:?}")))?;
        let action_node = e.req("RuleAction", cx)?;
        let allow = match action_node.string(cx)?.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                return Err(cx.err(
                    &action_node.path,
                    format!("expected \"allow\" or \"deny\", found {other:?}"),
                ))
            }
        };
        let cidr = match (e.get("CidrBlock"), e.get("Ipv6CidrBlock")) {
            (Some(c), _) => IpNet::V4(c.parse(cx)?),
            (None, Some(c)) => IpNet::V6(c.parse(cx)?),
            (None, None) => return Err(cx.err(&format!("{}.CidrBlock", e.path), "missing")),
        };
        let ports = match e.get("PortRange") {
            Some(r) => {
                let port = |key: &str| -> Result<u16, ProbeError> {
                    let p = r.req(key, cx)?;
                    p.v.as_u64()
                        .and_then(|v| u16::try_from(v).ok())
                        .ok_or_else(|| cx.err(&p.path, "expected a port 0-65535"))
                };
                Some((port("From")?, port("To")?))
            }
            None => None,
        };
        let egress_node = e.req("Egress", cx)?;
        let egress = egress_node.v.as_bool().ok_or_else(|| {
            cx.err(
                &egress_node.path,
                format!("expected a boolean, found {}", kind_of(egress_node.v)),
            )
        })?;
        entries.push(AclEntry {
            rule_number,
            egress,
            protocol,
            allow,
            cidr,
            ports,
        });
    }
    Ok(NetworkAcl {
        id,
        vpc_id: n.opt_str("VpcId", cx)?,
        is_default: n.opt_bool("IsDefault", cx)?.unwrap_or(false),
        subnets,
        entries,
    })
}

fn parse_interface(n: &Node, cx: Cx) -> Result<NetworkInterface, ProbeError> {
    let id = n.req_str("NetworkInterfaceId", cx)?;
    let mut addresses: Vec<IpAddr> = Vec::new();
    if let Some(p) = n.get("PrivateIpAddress") {
        addresses.push(p.parse(cx)?);
    }
    for a in n.items("PrivateIpAddresses", cx)? {
        let ip: IpAddr = a.req("PrivateIpAddress", cx)?.parse(cx)?;
        if !addresses.contains(&ip) {
            addresses.push(ip);
        }
    }
    for a in n.items("Ipv6Addresses", cx)? {
        addresses.push(a.req("Ipv6Address", cx)?.parse(cx)?);
    }
    let mut prefixes = Vec::new();
    for p in n.items("Ipv4Prefixes", cx)? {
        prefixes.push(IpNet::V4(p.req("Ipv4Prefix", cx)?.parse(cx)?));
    }
    for p in n.items("Ipv6Prefixes", cx)? {
        prefixes.push(IpNet::V6(p.req("Ipv6Prefix", cx)?.parse(cx)?));
    }
    let mut groups = Vec::new();
    for g in n.items("Groups", cx)? {
        groups.push(g.req_str("GroupId", cx)?);
    }
    Ok(NetworkInterface {
        id,
        subnet_id: n.opt_str("SubnetId", cx)?,
        description: n.opt_str("Description", cx)?.unwrap_or_default(),
        addresses,
        prefixes,
        groups,
        requester_managed: n.opt_bool("RequesterManaged", cx)?.unwrap_or(false),
    })
}

fn parse_selector(n: &Node, cx: Cx) -> Result<LabelSelector, ProbeError> {
    let mut selector = LabelSelector::default();
    if let Some(m) = n.get("matchLabels") {
        let Some(map) = m.v.as_object() else {
            return Err(cx.err(&m.path, "expected an object"));
        };
        for (k, v) in map {
            let value = v
                .as_str()
                .ok_or_else(|| cx.err(&format!("{}.{k}", m.path), "expected a string"))?;
            selector.match_labels.insert(k.clone(), value.to_owned());
        }
    }
    for e in n.items("matchExpressions", cx)? {
        selector.match_expressions.push((
            e.req_str("key", cx)?,
            e.req_str("operator", cx)?,
            e.strings("values", cx)?,
        ));
    }
    Ok(selector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Result<VpcModel, ProbeError> {
        let mut m = VpcModel::default();
        m.add_text(text, Path::new("x.json"))?;
        Ok(m)
    }

    #[test]
    fn errors_carry_the_json_path() {
        let err = model(r#"{"SecurityGroups":[{"GroupId":"sg-1"},{"IpPermissions":[]}]}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(err, "x.json: $.SecurityGroups[1].GroupId: missing");
        let err = model(
            r#"{"SecurityGroups":[{"GroupId":"sg-1","IpPermissions":[{"IpProtocol":"tcp","UserIdGroupPairs":[{"UserId":"1"}]}]}]}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "x.json: $.SecurityGroups[0].IpPermissions[0].UserIdGroupPairs[0].GroupId: missing"
        );
        let err = model(r#"{"Subnets":[{"SubnetId":"s","CidrBlock":"10.0.0.0/33"}]}"#)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.json: $.Subnets[0].CidrBlock: \"10.0.0.0/33\""),
            "{err}"
        );
    }

    #[test]
    fn protocols_and_ports() {
        assert_eq!(Protocol::parse("-1"), Some(Protocol::All));
        assert_eq!(Protocol::parse("17"), Some(Protocol::Number(UDP)));
        assert_eq!(Protocol::parse("UDP"), Some(Protocol::Number(UDP)));
        assert_eq!(Protocol::parse("icmpv6"), Some(Protocol::Number(ICMPV6)));
        assert_eq!(Protocol::parse("tcpx"), None);
        let p = Permission {
            protocol: Protocol::Number(TCP),
            from_port: Some(8080),
            to_port: Some(8090),
            cidrs: vec![],
            groups: vec![],
            prefix_lists: vec![],
        };
        assert!(p.covers(TCP, 8080) && p.covers(TCP, 8090) && !p.covers(TCP, 8091));
        assert!(!p.covers(UDP, 8080));
        assert_eq!(p.describe_protocol(), "tcp 8080-8090");
    }

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "pay".to_string())]
            .into_iter()
            .collect();
        let s = LabelSelector {
            match_labels: labels.clone(),
            match_expressions: vec![("tier".into(), "DoesNotExist".into(), vec![])],
        };
        assert!(s.matches(&labels));
        assert!(LabelSelector::default().matches(&BTreeMap::new()));
    }
}
