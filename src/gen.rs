//! `clusterdns gen-cluster`: a synthetic cluster as `kubectl get namespaces,services,
//! endpointslices,pods,nodes -A -o yaml` prints it (one `v1/List`), for the memory, start-up and
//! throughput benchmarks. Deterministic for a seed: the same flags print the same bytes.
//!
//! Shape, modelled on what the EndpointSlice controller and EKS produce:
//! - Services: about 88% ClusterIP, 10% headless (every fourth of them with exactly 10
//!   endpoints, the rest StatefulSet-style with hostnames), 2% ExternalName; `kube-system/
//!   kube-dns` at 10.96.0.10 always.
//! - Endpoints: most services 2-10, some 1, one in 500 (at least one) with 1 000; the pods
//!   left over run behind no service (jobs, daemons).
//! - EndpointSlices of at most 100 endpoints, with nodeName, zone and a Pod targetRef; about 2%
//!   of endpoints not ready.
//! - Pods on EC2 worker nodes (~30 a node, three zones) and about 10% on micro-VMs: each on
//!   its own `fargate-ip-*` node labelled `eks.amazonaws.com/compute-type: fargate`.
//!
//! Addresses: services in 10.96.0.0/12, pods in 10.128.0.0/9, EC2 nodes in 192.168.0.0/16.

use std::io::{self, Write};
use std::net::Ipv4Addr;

/// `clusterdns gen-cluster` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct GenArgs {
    /// Number of Services (kube-system/kube-dns included).
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// Number of Pods.
    #[arg(long, default_value_t = 10_000)]
    pub pods: usize,
    /// Seed of the pseudo-random choices: the same seed prints the same cluster.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Number of application namespaces besides default and kube-system (default: one per
    /// 50 services).
    #[arg(long)]
    pub namespaces: Option<usize>,
    /// Give every headless Service `trafficDistribution: PreferClose` (zone-aware answers).
    #[arg(long)]
    pub prefer_close: bool,
    /// Add a pod `bench-client` with this IP on the first EC2 node (zone eu-west-1a), so a
    /// client on this address is located in a zone.
    #[arg(long)]
    pub client_pod: Option<Ipv4Addr>,
}

/// What was generated, printed on stderr.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub namespaces: usize,
    pub cluster_ip: usize,
    pub headless: usize,
    pub external_name: usize,
    pub endpoint_slices: usize,
    pub endpoints: usize,
    pub pods: usize,
    pub ec2_nodes: usize,
    pub fargate_nodes: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} namespaces, {} services ({} ClusterIP, {} headless, {} ExternalName), {} \
             endpoint slices with {} endpoints, {} pods, {} nodes ({} EC2, {} micro-VM)",
            self.namespaces,
            self.cluster_ip + self.headless + self.external_name,
            self.cluster_ip,
            self.headless,
            self.external_name,
            self.endpoint_slices,
            self.endpoints,
            self.pods,
            self.ec2_nodes + self.fargate_nodes,
            self.ec2_nodes,
            self.fargate_nodes
        )
    }
}

/// The subcommand: the cluster on stdout, a summary on stderr.
pub fn run(args: &GenArgs) -> anyhow::Result<u8> {
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let summary = write_cluster(args, &mut out)?;
    out.flush()?;
    eprintln!("clusterdns gen-cluster: {summary}");
    Ok(0)
}

/// SplitMix64: tiny, and stable across crate versions (unlike `rand`'s seeded generators),
/// so a seed means the same cluster forever.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent`/100.
    fn percent(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    /// `n` characters the way Kubernetes names generated objects (`nginx-7c5dd-x7k2p`).
    fn suffix(&mut self, n: usize) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..n)
            .map(|_| ALPHABET[self.below(ALPHABET.len())] as char)
            .collect()
    }
}

const APPS: &[&str] = &[
    "api",
    "web",
    "checkout",
    "cart",
    "catalog",
    "search",
    "payments",
    "orders",
    "users",
    "auth",
    "billing",
    "inventory",
    "shipping",
    "notify",
    "ledger",
    "reports",
    "media",
    "gateway",
    "pricing",
    "reviews",
    "session",
    "profile",
    "events",
    "metrics",
    "queue",
    "worker",
    "cache",
    "config",
    "audit",
    "export",
];
const TEAMS: &[&str] = &[
    "shop", "platform", "data", "identity", "finance", "growth", "ml", "ops", "mobile", "ads",
];
const ZONES: &[&str] = &["eu-west-1a", "eu-west-1b", "eu-west-1c"];
const REGION: &str = "eu-west-1";
const PODS_PER_NODE: usize = 30;
const SLICE_MAX: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ClusterIp,
    Headless,
    /// Headless with pods named `<svc>-<n>` that set hostname and subdomain.
    StatefulSet,
    ExternalName,
}

struct Svc {
    ns: usize,
    name: String,
    kind: Kind,
    ip: Ipv4Addr,
    grpc: bool,
    metrics: bool,
    /// Indices into the pod table.
    pods: std::ops::Range<usize>,
    slice_names: Vec<String>,
}

struct PodPlan {
    ns: usize,
    name: String,
    app: String,
    ip: Ipv4Addr,
    /// Index into the EC2 node table, or None for a micro-VM of its own.
    node: Option<usize>,
    ready: bool,
    /// StatefulSet pods: (hostname, subdomain).
    hostname: Option<(String, String)>,
}

fn add(base: Ipv4Addr, offset: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base).wrapping_add(offset as u32))
}

fn dashed(ip: Ipv4Addr) -> String {
    ip.to_string().replace('.', "-")
}

fn ec2_node_ip(i: usize) -> Ipv4Addr {
    add(Ipv4Addr::new(192, 168, 0, 10), i)
}

fn ec2_node_name(i: usize) -> String {
    format!("ip-{}.{REGION}.compute.internal", dashed(ec2_node_ip(i)))
}

fn fargate_node_name(ip: Ipv4Addr) -> String {
    format!("fargate-ip-{}.{REGION}.compute.internal", dashed(ip))
}

/// The pod address of pod `i`: consecutive, skipping .0 and .255 of each /24.
fn pod_ip(i: usize) -> Ipv4Addr {
    let per24 = 254;
    add(
        Ipv4Addr::new(10, 128, 0, 0),
        (i / per24) * 256 + i % per24 + 1,
    )
}

struct Plan {
    namespaces: Vec<String>,
    services: Vec<Svc>,
    pods: Vec<PodPlan>,
    ec2_nodes: usize,
}

fn plan(args: &GenArgs) -> Plan {
    let mut rng = Rng(args.seed);
    let app_namespaces = args
        .namespaces
        .unwrap_or((args.services / 50).max(1))
        .max(1);
    let mut namespaces = vec!["default".to_string(), "kube-system".to_string()];
    for i in 0..app_namespaces {
        namespaces.push(format!("{}-{i}", TEAMS[i % TEAMS.len()]));
    }

    let big_every = 500;
    let mut services = Vec::with_capacity(args.services);
    let mut pods: Vec<PodPlan> = Vec::with_capacity(args.pods);
    let mut headless_seen = 0usize;
    let svc_base = Ipv4Addr::new(10, 96, 1, 0);
    for i in 0..args.services {
        let (ns, name, mut kind) = if i == 0 {
            (1, "kube-dns".to_string(), Kind::ClusterIp)
        } else {
            let ns = 2 + rng.below(app_namespaces);
            let app = APPS[rng.below(APPS.len())];
            let r = rng.below(100);
            let kind = if r < 2 {
                Kind::ExternalName
            } else if r < 12 {
                Kind::Headless
            } else {
                Kind::ClusterIp
            };
            (ns, format!("{app}-{i}"), kind)
        };
        // The big services are spread evenly and are always ClusterIP.
        let big = i > 0
            && if args.services >= big_every {
                i % big_every == big_every / 2
            } else {
                i == args.services / 2
            };
        if big {
            kind = Kind::ClusterIp;
        }
        let want = match kind {
            Kind::ExternalName => 0,
            _ if i == 0 => 2,
            _ if big => 1000,
            Kind::Headless => {
                headless_seen += 1;
                if headless_seen % 4 == 1 {
                    10
                } else {
                    kind = Kind::StatefulSet;
                    2 + rng.below(4)
                }
            }
            _ if rng.percent(5) => 1,
            _ => 2 + rng.below(9),
        };
        let ip = if i == 0 {
            Ipv4Addr::new(10, 96, 0, 10)
        } else {
            add(svc_base, i)
        };
        let grpc = kind != Kind::ExternalName && rng.percent(30);
        let metrics = kind != Kind::ExternalName && rng.percent(20);
        let start = pods.len();
        let n = want.min(args.pods - pods.len());
        let hash = rng.suffix(10);
        let app = name.clone();
        for k in 0..n {
            let idx = pods.len();
            let (pod_name, hostname) = if kind == Kind::StatefulSet {
                (
                    format!("{name}-{k}"),
                    Some((format!("{name}-{k}"), name.clone())),
                )
            } else if i == 0 {
                (format!("coredns-{hash}-{}", rng.suffix(5)), None)
            } else {
                (format!("{name}-{hash}-{}", rng.suffix(5)), None)
            };
            pods.push(PodPlan {
                ns,
                name: pod_name,
                app: if i == 0 {
                    "kube-dns".into()
                } else {
                    app.clone()
                },
                ip: pod_ip(idx),
                node: None,
                ready: !rng.percent(2),
                hostname,
            });
        }
        let slice_count = n
            .div_ceil(SLICE_MAX)
            .max(usize::from(kind != Kind::ExternalName));
        let slice_names = (0..slice_count)
            .map(|_| format!("{name}-{}", rng.suffix(5)))
            .collect();
        services.push(Svc {
            ns,
            name,
            kind,
            ip,
            grpc,
            metrics,
            pods: start..pods.len(),
            slice_names,
        });
    }
    // Pods behind no service.
    while pods.len() < args.pods {
        let idx = pods.len();
        let ns = if namespaces.len() > 2 {
            2 + rng.below(app_namespaces)
        } else {
            0
        };
        let app = format!("{}-job", APPS[rng.below(APPS.len())]);
        pods.push(PodPlan {
            ns,
            name: format!("{app}-{}-{}", rng.suffix(8), rng.suffix(5)),
            app,
            ip: pod_ip(idx),
            node: None,
            ready: true,
            hostname: None,
        });
    }
    // Placement: about 10% on micro-VMs, the rest ~30 a node on EC2.
    let fargate: Vec<bool> = (0..pods.len()).map(|_| rng.percent(10)).collect();
    let ec2_pods = fargate.iter().filter(|f| !**f).count();
    let ec2_nodes = ec2_pods.div_ceil(PODS_PER_NODE).max(1);
    for (pod, on_fargate) in pods.iter_mut().zip(fargate) {
        if !on_fargate {
            pod.node = Some(rng.below(ec2_nodes));
        }
    }
    Plan {
        namespaces,
        services,
        pods,
        ec2_nodes,
    }
}

fn node_zone(pod: &PodPlan) -> &'static str {
    match pod.node {
        Some(n) => ZONES[n % ZONES.len()],
        None => ZONES[(u32::from(pod.ip) as usize / 7) % ZONES.len()],
    }
}

fn node_name(pod: &PodPlan) -> String {
    match pod.node {
        Some(n) => ec2_node_name(n),
        None => fargate_node_name(pod.ip),
    }
}

/// (name, service port, target port, protocol)
fn ports(svc: &Svc) -> Vec<(&'static str, u16, u16, &'static str)> {
    if svc.name == "kube-dns" && svc.ns == 1 {
        return vec![
            ("dns", 53, 53, "UDP"),
            ("dns-tcp", 53, 53, "TCP"),
            ("metrics", 9153, 9153, "TCP"),
        ];
    }
    let mut p = vec![("http", 80, 8080, "TCP")];
    if svc.grpc {
        p.push(("grpc", 9090, 9090, "TCP"));
    }
    if svc.metrics {
        p.push(("metrics", 9100, 9100, "TCP"));
    }
    p
}

/// Writes the whole cluster as one `v1/List`.
pub fn write_cluster<W: Write>(args: &GenArgs, out: &mut W) -> io::Result<Summary> {
    let plan = plan(args);
    let mut s = Summary {
        namespaces: plan.namespaces.len(),
        ec2_nodes: plan.ec2_nodes,
        pods: plan.pods.len(),
        ..Summary::default()
    };
    writeln!(out, "apiVersion: v1")?;
    writeln!(out, "items:")?;
    for ns in &plan.namespaces {
        write!(
            out,
            "- apiVersion: v1\n  kind: Namespace\n  metadata:\n    labels:\n      \
             kubernetes.io/metadata.name: {ns}\n    name: {ns}\n  spec:\n    finalizers:\n    \
             - kubernetes\n  status:\n    phase: Active\n"
        )?;
    }
    for svc in &plan.services {
        let ns = &plan.namespaces[svc.ns];
        let name = &svc.name;
        write!(
            out,
            "- apiVersion: v1\n  kind: Service\n  metadata:\n    labels:\n      app: {name}\n    \
             name: {name}\n    namespace: {ns}\n  spec:\n"
        )?;
        match svc.kind {
            Kind::ExternalName => {
                s.external_name += 1;
                write!(
                    out,
                    "    externalName: {name}.example.com\n    sessionAffinity: None\n    \
                     type: ExternalName\n"
                )?;
                continue;
            }
            Kind::ClusterIp => {
                s.cluster_ip += 1;
                let ip = svc.ip;
                write!(out, "    clusterIP: {ip}\n    clusterIPs:\n    - {ip}\n")?;
            }
            Kind::Headless | Kind::StatefulSet => {
                s.headless += 1;
                write!(out, "    clusterIP: None\n    clusterIPs:\n    - None\n")?;
                if args.prefer_close {
                    writeln!(out, "    trafficDistribution: PreferClose")?;
                }
            }
        }
        write!(
            out,
            "    internalTrafficPolicy: Cluster\n    ipFamilies:\n    - IPv4\n    \
             ipFamilyPolicy: SingleStack\n    ports:\n"
        )?;
        for (pname, port, target, proto) in ports(svc) {
            write!(
                out,
                "    - name: {pname}\n      port: {port}\n      protocol: {proto}\n      \
                 targetPort: {target}\n"
            )?;
        }
        let app = if svc.ns == 1 && name == "kube-dns" {
            "kube-dns"
        } else {
            name
        };
        write!(
            out,
            "    selector:\n      app: {app}\n    sessionAffinity: None\n    type: ClusterIP\n  \
             status:\n    loadBalancer: {{}}\n"
        )?;
    }
    for svc in &plan.services {
        if svc.kind == Kind::ExternalName {
            continue;
        }
        let ns = &plan.namespaces[svc.ns];
        let pods = &plan.pods[svc.pods.clone()];
        let chunks: Vec<&[PodPlan]> = if pods.is_empty() {
            vec![&[]]
        } else {
            pods.chunks(SLICE_MAX).collect()
        };
        for (chunk, slice_name) in chunks.into_iter().zip(&svc.slice_names) {
            s.endpoint_slices += 1;
            write!(
                out,
                "- addressType: IPv4\n  apiVersion: discovery.k8s.io/v1\n  endpoints:{}\n",
                if chunk.is_empty() { " []" } else { "" }
            )?;
            for pod in chunk {
                s.endpoints += 1;
                let ready = pod.ready;
                write!(
                    out,
                    "  - addresses:\n    - {}\n    conditions:\n      ready: {ready}\n      \
                     serving: {ready}\n      terminating: false\n",
                    pod.ip
                )?;
                if let Some((host, _)) = &pod.hostname {
                    writeln!(out, "    hostname: {host}")?;
                }
                write!(
                    out,
                    "    nodeName: {}\n    targetRef:\n      kind: Pod\n      name: {}\n      \
                     namespace: {ns}\n    zone: {}\n",
                    node_name(pod),
                    pod.name,
                    node_zone(pod)
                )?;
            }
            write!(
                out,
                "  kind: EndpointSlice\n  metadata:\n    generateName: {}-\n    labels:\n      \
                 endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io\n      \
                 kubernetes.io/service-name: {}\n    name: {slice_name}\n    namespace: {ns}\n  \
                 ports:\n",
                svc.name, svc.name
            )?;
            for (pname, _, target, proto) in ports(svc) {
                write!(
                    out,
                    "  - name: {pname}\n    port: {target}\n    protocol: {proto}\n"
                )?;
            }
        }
    }
    for pod in &plan.pods {
        let ns = &plan.namespaces[pod.ns];
        let ready = if pod.ready { "'True'" } else { "'False'" };
        write!(
            out,
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    labels:\n      app: {}\n    name: \
             {}\n    namespace: {ns}\n    uid: uid-{ns}-{}\n  spec:\n    containers:\n    - \
             image: public.ecr.aws/docker/library/{}:latest\n      name: main\n",
            pod.app, pod.name, pod.name, pod.app
        )?;
        if let Some((host, sub)) = &pod.hostname {
            write!(out, "    hostname: {host}\n    subdomain: {sub}\n")?;
        }
        write!(
            out,
            "    nodeName: {}\n  status:\n    conditions:\n    - status: {ready}\n      type: \
             Ready\n    phase: Running\n    podIP: {}\n    podIPs:\n    - ip: {}\n",
            node_name(pod),
            pod.ip,
            pod.ip
        )?;
    }
    if let Some(ip) = args.client_pod {
        write!(
            out,
            "- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: bench-client\n    namespace: \
             default\n  spec:\n    containers:\n    - image: busybox\n      name: main\n    \
             nodeName: {}\n  status:\n    phase: Running\n    podIP: {ip}\n    podIPs:\n    \
             - ip: {ip}\n",
            ec2_node_name(0)
        )?;
    }
    for i in 0..plan.ec2_nodes {
        let name = ec2_node_name(i);
        let zone = ZONES[i % ZONES.len()];
        write!(
            out,
            "- apiVersion: v1\n  kind: Node\n  metadata:\n    labels:\n      \
             eks.amazonaws.com/nodegroup: ng-{}\n      kubernetes.io/hostname: {name}\n      \
             kubernetes.io/os: linux\n      node.kubernetes.io/instance-type: m5.xlarge\n      \
             topology.kubernetes.io/region: {REGION}\n      topology.kubernetes.io/zone: {zone}\n    \
             name: {name}\n  spec:\n    providerID: aws:///{zone}/{name}\n  status:\n    \
             addresses:\n    - address: {}\n      type: InternalIP\n    - address: {name}\n      \
             type: Hostname\n",
            i % 4,
            ec2_node_ip(i)
        )?;
    }
    for pod in plan.pods.iter().filter(|p| p.node.is_none()) {
        s.fargate_nodes += 1;
        let name = fargate_node_name(pod.ip);
        let zone = node_zone(pod);
        write!(
            out,
            "- apiVersion: v1\n  kind: Node\n  metadata:\n    labels:\n      \
             eks.amazonaws.com/compute-type: fargate\n      kubernetes.io/hostname: {name}\n      \
             kubernetes.io/os: linux\n      topology.kubernetes.io/region: {REGION}\n      \
             topology.kubernetes.io/zone: {zone}\n    name: {name}\n  spec:\n    providerID: \
             aws:///{zone}/{name}\n  status:\n    addresses:\n    - address: {}\n      type: \
             InternalIP\n    - address: {name}\n      type: Hostname\n",
            pod.ip
        )?;
    }
    write!(out, "kind: List\nmetadata:\n  resourceVersion: \"\"\n")?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::objects::ObjectSet;
    use crate::cluster::{Snapshot, Store};
    use std::path::Path;
    use std::sync::Arc;

    fn args(services: usize, pods: usize, seed: u64) -> GenArgs {
        GenArgs {
            services,
            pods,
            seed,
            namespaces: None,
            prefer_close: false,
            client_pod: None,
        }
    }

    fn generate(a: &GenArgs) -> (String, Summary) {
        let mut buf = Vec::new();
        let s = write_cluster(a, &mut buf).unwrap();
        (String::from_utf8(buf).unwrap(), s)
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let (a, _) = generate(&args(200, 2000, 7));
        let (b, _) = generate(&args(200, 2000, 7));
        let (c, _) = generate(&args(200, 2000, 8));
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_output_loads_and_has_the_promised_shape() {
        let a = args(1000, 10_000, 1);
        let (text, s) = generate(&a);
        let mut set = ObjectSet::default();
        set.add_text(&text, Path::new("gen.yaml")).unwrap();
        assert_eq!(set.services.len(), 1000);
        assert_eq!(set.pods.len(), 10_000);
        assert_eq!(set.namespaces.len(), s.namespaces);
        assert_eq!(set.endpoint_slices.len(), s.endpoint_slices);
        assert_eq!(set.nodes.len(), s.ec2_nodes + s.fargate_nodes);
        assert!(s.headless > 50 && s.external_name > 5, "{s}");
        assert!(s.fargate_nodes > 500, "{s}");
        for slice in &set.endpoint_slices {
            let n = slice.endpoints.as_ref().map_or(0, Vec::len);
            assert!(n <= SLICE_MAX, "slice of {n}");
        }
        // A big service: 1 000 endpoints in 10 slices.
        let snap = Snapshot::build(Arc::new(Store::from_objects(&set)), 1, true);
        let biggest = snap
            .services()
            .map(|e| e.endpoints.len())
            .max()
            .unwrap_or(0);
        assert_eq!(biggest, 1000);
        let ten = snap
            .services()
            .filter(|e| e.endpoints.len() == 10 && e.service.cluster_ips.is_empty())
            .count();
        assert!(ten > 5, "headless services with 10 endpoints: {ten}");
        assert_eq!(
            snap.dns_service_ips,
            vec![std::net::IpAddr::from([10, 96, 0, 10])]
        );
    }

    #[test]
    fn fewer_pods_than_endpoints_wanted_is_fine() {
        let (text, s) = generate(&args(50, 20, 3));
        assert_eq!(s.pods, 20);
        let mut set = ObjectSet::default();
        set.add_text(&text, Path::new("gen.yaml")).unwrap();
        assert_eq!(set.services.len(), 50);
    }
}
