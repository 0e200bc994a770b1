//! The `kubernetes` handler: `cluster.local` (and the reverse zones) answered from the
//! snapshot, following the Kubernetes DNS specification (schema 1.1.0) and, where it is
//! silent, CoreDNS's plugin/kubernetes (parse.go, kubernetes.go, reverse.go).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::answer::Answer;
use super::pipeline::{Flow, Handler, Request};
use crate::cluster::labels::Selector;
use crate::cluster::model::{Port, Service, ServiceKind};
use crate::cluster::snapshot::{EndpointEntry, Label, PtrTarget, ServiceEntry, Snapshot};
use crate::cluster::ClusterView;

mod zone_aware;

const PLUGIN: &str = "kubernetes";
/// dns-version TXT TTL, fixed by the specification.
const VERSION_TTL: u32 = 28800;
/// Bounds the chase of ExternalName targets that point back into the cluster zone.
const MAX_CNAME_CHAIN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodMode {
    /// CoreDNS's default: `*.pod.<zone>` is NXDOMAIN.
    #[default]
    Disabled,
    /// Answer the IP encoded in the name without checking (EKS and kubeadm default).
    Insecure,
    /// Answer only when a pod with that IP exists in that namespace.
    Verified,
}

impl std::str::FromStr for PodMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "disabled" => Ok(PodMode::Disabled),
            "insecure" => Ok(PodMode::Insecure),
            "verified" => Ok(PodMode::Verified),
            other => Err(format!(
                "unknown pods mode {other:?}: expected disabled, insecure or verified"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// Zones served (lowercase FQDNs): the cluster zone(s) and the reverse zones.
    pub zones: Vec<Name>,
    pub ttl: u32,
    pub pods: PodMode,
    pub endpoint_pod_names: bool,
    /// `fallthrough [ZONES]`: None = off; Some(empty) = every zone.
    pub fallthrough: Option<Vec<Name>>,
    pub ignore_empty_service: bool,
    pub noendpoints: bool,
    /// `namespaces NS...`: when non-empty only these are exposed.
    pub namespaces: Vec<String>,
    /// `labels SELECTOR`: only Services (and, for `pods verified`, Pods) whose labels match
    /// are exposed.
    pub labels: Option<Selector>,
    /// `namespace_labels SELECTOR`: only Namespaces whose labels match are exposed.
    pub namespace_labels: Option<Selector>,
    /// `zonal`: CoreDNS's zone-scoped names `<az>.pin|prefer._zone.<svc>.<ns>.svc.<zone>`.
    pub zonal: bool,
    /// `zone_first`: every headless Service answers with the client's zone first.
    pub zone_first: bool,
}

impl KubernetesConfig {
    /// `kubernetes <zone> in-addr.arpa ip6.arpa` with CoreDNS's defaults.
    pub fn for_zone(zone: &str) -> Result<KubernetesConfig, String> {
        let mut zones = vec![parse_zone(zone)?];
        for z in ["in-addr.arpa.", "ip6.arpa."] {
            zones.push(Name::from_ascii(z).map_err(|e| e.to_string())?);
        }
        Ok(KubernetesConfig {
            zones,
            ttl: 5,
            pods: PodMode::Disabled,
            endpoint_pod_names: false,
            fallthrough: None,
            ignore_empty_service: false,
            noendpoints: false,
            namespaces: Vec::new(),
            labels: None,
            namespace_labels: None,
            zonal: false,
            zone_first: false,
        })
    }
}

/// A zone as typed by a user (`cluster.local`, `Cluster.Local.`) as a lowercase FQDN.
pub fn parse_zone(zone: &str) -> Result<Name, String> {
    let mut name = Name::from_ascii(zone).map_err(|e| format!("invalid zone {zone:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

pub struct Kubernetes {
    cfg: KubernetesConfig,
    view: Arc<ClusterView>,
}

fn is_reverse(zone: &Name) -> bool {
    let z = zone.to_ascii();
    z.ends_with("in-addr.arpa.") || z.ends_with("ip6.arpa.")
}

/// Every label of `name`: hickory's `num_labels` leaves out a leading `*`, which SRV names
/// use as a wildcard port (`*.*.svc.ns.svc.<zone>`).
fn label_count(name: &Name) -> usize {
    name.iter().count()
}

/// Lowercase labels of `name` left of its last `zone_labels` labels.
fn relative_labels(name: &Name, zone_labels: usize) -> Option<Vec<String>> {
    let n = label_count(name);
    let mut out = Vec::with_capacity(n.saturating_sub(zone_labels));
    for label in name.iter().take(n - zone_labels) {
        out.push(std::str::from_utf8(label).ok()?.to_ascii_lowercase());
    }
    Some(out)
}

/// SRV names carry `_port` and `_proto`; CoreDNS strips one leading underscore.
fn strip_underscore(s: &str) -> &str {
    s.strip_prefix('_').unwrap_or(s)
}

/// `*`, `any` and the empty label match anything.
fn wildcard(s: &str) -> bool {
    s.is_empty() || s == "*" || s == "any"
}

fn port_matches(want_port: &str, want_proto: &str, p: &Port) -> bool {
    (wildcard(want_port) || (!p.name.is_empty() && p.name.eq_ignore_ascii_case(want_port)))
        && (wildcard(want_proto) || p.protocol.as_str().eq_ignore_ascii_case(want_proto))
}

/// The IP a pod-record label encodes: `10-0-0-1`, or dashed IPv6 (`fd00--1`).
fn pod_label_ip(label: &str) -> Option<IpAddr> {
    if label.matches('-').count() == 3 && !label.contains("--") {
        label
            .replace('-', ".")
            .parse::<Ipv4Addr>()
            .ok()
            .map(IpAddr::V4)
    } else {
        label
            .replace('-', ":")
            .parse::<Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }
}

fn address_record(name: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(name.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

/// Adds `record` unless the RRset has it already: RFC 2181 section 5 forbids duplicates.
/// Answers hold a few records, so a scan is cheaper than a set.
fn push_once(records: &mut Vec<Record>, record: Record) {
    if !records.contains(&record) {
        records.push(record);
    }
}

fn family_matches(qtype: RecordType, ip: &IpAddr) -> bool {
    matches!(
        (qtype, ip),
        (RecordType::A, IpAddr::V4(_)) | (RecordType::AAAA, IpAddr::V6(_)) | (RecordType::ANY, _)
    )
}

/// Internal result before SOA and flags are added.
enum Outcome {
    Records {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists but has no records of the asked type.
    NoData,
    NxDomain,
}

impl Outcome {
    fn records(answers: Vec<Record>) -> Outcome {
        Outcome::Records {
            answers,
            additionals: Vec::new(),
        }
    }

    /// Answers, or NODATA when the (existing) name has none of the asked type.
    fn or_nodata(answers: Vec<Record>, additionals: Vec<Record>) -> Outcome {
        if answers.is_empty() {
            Outcome::NoData
        } else {
            Outcome::Records {
                answers,
                additionals,
            }
        }
    }
}

struct Ctx<'a> {
    snap: &'a Snapshot,
    zone: &'a Name,
    qname: &'a Name,
    qtype: RecordType,
    /// Who asked, for zone-aware answers (None: answer as for an unknown client).
    client: Option<IpAddr>,
    /// What a zone-aware answer adds to the Answer (kubernetes/zone_aware.rs).
    zonal: std::cell::Cell<crate::dns::zonal::ZonalTag>,
}

impl Kubernetes {
    pub fn new(cfg: KubernetesConfig, view: Arc<ClusterView>) -> Kubernetes {
        Kubernetes { cfg, view }
    }

    pub fn config(&self) -> &KubernetesConfig {
        &self.cfg
    }

    /// The most specific configured zone holding `qname`.
    pub fn zone_for(&self, qname: &Name) -> Option<&Name> {
        self.cfg
            .zones
            .iter()
            .filter(|z| z.zone_of(qname))
            .max_by_key(|z| z.num_labels())
    }

    /// Answers `qname`/`qtype`, or None when the name is outside every zone served.
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        self.lookup_from(qname, qtype, None)
    }

    /// [`Kubernetes::lookup`] for a client at `client`: zone-aware answers depend on it.
    pub fn lookup_from(
        &self,
        qname: &Name,
        qtype: RecordType,
        client: Option<IpAddr>,
    ) -> Option<Answer> {
        let zone = self.zone_for(qname)?;
        let snap = self.view.snapshot();
        // Names derived from the zone (SOA owner, mname and rname, SRV and NS targets) keep
        // the letter case of the question, as CoreDNS's do.
        let asked_zone = qname.trim_to(zone.num_labels() as usize);
        let ctx = Ctx {
            snap: &snap,
            zone: &asked_zone,
            qname,
            qtype,
            client,
            zonal: Default::default(),
        };
        let outcome = if qtype == RecordType::AXFR || qtype == RecordType::IXFR {
            return Some(Answer::rcode(ResponseCode::Refused, PLUGIN));
        } else if qtype == RecordType::SOA && label_count(qname) != label_count(zone) {
            // CoreDNS answers SOA itself for any name in its zones: the record at the apex,
            // NODATA below it (existing name or not), never NXDOMAIN or fallthrough.
            Outcome::NoData
        } else if is_reverse(zone) {
            self.reverse(&ctx)
        } else {
            self.forward(&ctx)
        };
        let mut answer = self.finish(&ctx, outcome);
        answer.zonal = ctx.zonal.take();
        Some(answer)
    }

    /// Flags, SOA in negative answers, SERVFAIL before the first sync.
    fn finish(&self, ctx: &Ctx, outcome: Outcome) -> Answer {
        let mut answer = Answer {
            authoritative: true,
            plugin: PLUGIN,
            ..Default::default()
        };
        match outcome {
            Outcome::Records {
                answers,
                additionals,
            } => {
                answer.answers = answers;
                answer.additionals = additionals;
            }
            Outcome::NoData => answer.authorities.push(self.soa(ctx)),
            Outcome::NxDomain if !ctx.snap.synced => {
                return Answer::rcode(ResponseCode::ServFail, PLUGIN);
            }
            Outcome::NxDomain => {
                answer.rcode = ResponseCode::NXDomain;
                answer.authorities.push(self.soa(ctx));
            }
        }
        answer
    }

    fn soa(&self, ctx: &Ctx) -> Record {
        let ttl = self.cfg.ttl;
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(ctx.zone))
            .unwrap_or_else(|_| ctx.zone.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(ctx.zone))
            .unwrap_or_else(|_| ctx.zone.clone());
        Record::from_rdata(
            ctx.zone.clone(),
            ttl.min(300),
            RData::SOA(SOA::new(
                mname,
                rname,
                ctx.snap.serial,
                7200,
                1800,
                86400,
                ttl,
            )),
        )
    }

    fn fqdn(&self, ctx: &Ctx, labels: &[&str]) -> Name {
        let mut name = Name::root();
        for l in labels.iter().rev() {
            name = match name.prepend_label(*l) {
                Ok(n) => n,
                Err(_) => return ctx.zone.clone(),
            };
        }
        name.append_domain(ctx.zone)
            .unwrap_or_else(|_| ctx.zone.clone())
    }

    fn namespace_exposed(&self, snap: &Snapshot, ns: &str) -> bool {
        (self.cfg.namespaces.is_empty()
            || self
                .cfg
                .namespaces
                .iter()
                .any(|n| n.eq_ignore_ascii_case(ns)))
            && snap.namespace_exists(ns)
            && self.namespace_labels_match(snap, ns)
    }

    /// With `namespace_labels`, only a Namespace object whose labels match exists for
    /// CoreDNS (it lists Namespaces with that selector); one merely implied by its
    /// services does not.
    fn namespace_labels_match(&self, snap: &Snapshot, ns: &str) -> bool {
        let Some(sel) = &self.cfg.namespace_labels else {
            return true;
        };
        snap.store
            .namespaces
            .get(ns)
            .is_some_and(|n| sel.matches(&n.labels))
    }

    /// With `labels`, a Service whose labels do not match does not exist (CoreDNS lists
    /// Services and their EndpointSlices with that selector).
    fn service_exposed(&self, service: &Service) -> bool {
        self.cfg
            .labels
            .as_ref()
            .is_none_or(|sel| sel.matches(&service.labels))
    }

    /// `pods verified`: a pod with this IP in this namespace whose labels match `labels`
    /// (CoreDNS lists Pods with that selector too).
    fn pod_verified(&self, snap: &Snapshot, ip: &IpAddr, ns: &str) -> bool {
        snap.pods_at(ip).iter().any(|p| {
            p.namespace.eq_ignore_ascii_case(ns)
                && self
                    .cfg
                    .labels
                    .as_ref()
                    .is_none_or(|sel| sel.matches(&p.labels))
        })
    }

    /// Whether a reverse entry of `namespace`/`service` may be answered. As in CoreDNS's
    /// reverse.go, the namespace is checked only when `namespaces` is set: `namespace_labels`
    /// alone does not hide reverse entries (CoreDNS behaviour, kept on purpose).
    fn ptr_exposed(&self, snap: &Snapshot, namespace: &str, service: &str) -> bool {
        if !self.cfg.namespaces.is_empty() && !self.namespace_exposed(snap, namespace) {
            return false;
        }
        self.cfg.labels.is_none()
            || snap
                .service(&format!("{service}.{namespace}"))
                .is_some_and(|e| self.service_exposed(&e.service))
    }

    fn forward(&self, ctx: &Ctx) -> Outcome {
        let Some(labels) = relative_labels(ctx.qname, ctx.zone.num_labels() as usize) else {
            return Outcome::NxDomain;
        };
        let l: Vec<&str> = labels.iter().map(String::as_str).collect();
        let ttl = self.cfg.ttl;
        match l.as_slice() {
            [] => self.apex(ctx),
            ["dns-version"] => match ctx.qtype {
                RecordType::TXT | RecordType::ANY => Outcome::records(vec![Record::from_rdata(
                    ctx.qname.clone(),
                    VERSION_TTL,
                    RData::TXT(TXT::new(vec!["1.1.0".into()])),
                )]),
                _ => Outcome::NoData,
            },
            ["dns"] => Outcome::NoData,
            ["ns", "dns"] => {
                let records = ctx
                    .snap
                    .dns_service_ips
                    .iter()
                    .filter(|ip| family_matches(ctx.qtype, ip))
                    .map(|ip| address_record(ctx.qname, ttl, *ip))
                    .collect();
                Outcome::or_nodata(records, Vec::new())
            }
            [.., "svc"] => self.svc(ctx, &l[..l.len() - 1]),
            [.., "pod"] => self.pod(ctx, &l[..l.len() - 1]),
            _ => Outcome::NxDomain,
        }
    }

    fn apex(&self, ctx: &Ctx) -> Outcome {
        match ctx.qtype {
            RecordType::SOA => Outcome::records(vec![self.soa(ctx)]),
            RecordType::NS => {
                let ns_name = self.fqdn(ctx, &["ns", "dns"]);
                let glue = ctx
                    .snap
                    .dns_service_ips
                    .iter()
                    .map(|ip| address_record(&ns_name, self.cfg.ttl, *ip))
                    .collect();
                Outcome::Records {
                    answers: vec![Record::from_rdata(
                        ctx.qname.clone(),
                        self.cfg.ttl,
                        RData::NS(NS(ns_name)),
                    )],
                    additionals: glue,
                }
            }
            _ => Outcome::NoData,
        }
    }

    /// `l` holds the labels left of `svc`: `[.., service, namespace]`.
    fn svc(&self, ctx: &Ctx, l: &[&str]) -> Outcome {
        let snap = ctx.snap;
        match l {
            [] => Outcome::NoData,
            [ns] => {
                if self.namespace_exposed(snap, ns) {
                    Outcome::NoData
                } else {
                    Outcome::NxDomain
                }
            }
            [rest @ .., svc, ns] => {
                if !self.namespace_exposed(snap, ns) {
                    return Outcome::NxDomain;
                }
                let key = format!("{svc}.{ns}");
                let Some(entry) = snap
                    .service(&key)
                    .filter(|e| self.service_exposed(&e.service))
                else {
                    return Outcome::NxDomain;
                };
                match rest {
                    [] => self.service(ctx, entry, svc, ns, "*", "*"),
                    [endpoint] => self.endpoint(ctx, entry, svc, ns, endpoint),
                    [port, proto] => self.service(
                        ctx,
                        entry,
                        svc,
                        ns,
                        strip_underscore(port),
                        strip_underscore(proto),
                    ),
                    [az @ .., directive, "_zone"] if self.cfg.zonal => {
                        self.zonal_name(ctx, entry, svc, ns, az, directive)
                    }
                    _ => Outcome::NxDomain,
                }
            }
        }
    }

    fn srv_weight(count: usize) -> u16 {
        if count == 0 {
            return 0;
        }
        ((100 / count) as u16).max(1)
    }

    fn service(
        &self,
        ctx: &Ctx,
        entry: &ServiceEntry,
        svc: &str,
        ns: &str,
        port: &str,
        proto: &str,
    ) -> Outcome {
        let ttl = self.cfg.ttl;
        let qtype = ctx.qtype;
        let explicit_port = !(wildcard(port) && wildcard(proto));
        let service = &entry.service;
        match service.kind {
            ServiceKind::ExternalName => {
                if explicit_port {
                    return Outcome::NxDomain;
                }
                let Some(target) = service.external_name.as_deref() else {
                    return Outcome::NxDomain;
                };
                match qtype {
                    RecordType::A
                    | RecordType::AAAA
                    | RecordType::CNAME
                    | RecordType::TXT
                    | RecordType::MX
                    | RecordType::ANY => {}
                    _ => return Outcome::NoData,
                }
                let Ok(mut target_name) = Name::from_ascii(target) else {
                    return Outcome::NoData;
                };
                target_name.set_fqdn(true);
                let mut answers = vec![Record::from_rdata(
                    ctx.qname.clone(),
                    ttl,
                    RData::CNAME(CNAME(target_name.clone())),
                )];
                if matches!(qtype, RecordType::A | RecordType::AAAA) {
                    answers.extend(self.chase(ctx, &target_name));
                }
                Outcome::records(answers)
            }
            ServiceKind::ClusterIp => {
                let ports: Vec<&Port> = service
                    .ports
                    .iter()
                    .filter(|p| port_matches(port, proto, p))
                    .collect();
                if explicit_port && ports.is_empty() {
                    return Outcome::NxDomain;
                }
                // Under `noendpoints` CoreDNS keeps no endpoints, so every service is empty.
                if self.cfg.ignore_empty_service
                    && (self.cfg.noendpoints || entry.ready_endpoints().next().is_none())
                {
                    return Outcome::NxDomain;
                }
                match qtype {
                    RecordType::A | RecordType::AAAA | RecordType::ANY => {
                        let mut records = Vec::new();
                        for ip in service
                            .cluster_ips
                            .iter()
                            .filter(|ip| family_matches(qtype, ip))
                        {
                            push_once(&mut records, address_record(ctx.qname, ttl, *ip));
                        }
                        Outcome::or_nodata(records, Vec::new())
                    }
                    RecordType::SRV => {
                        let target = self.fqdn(ctx, &[svc, ns, "svc"]);
                        // As CoreDNS: one SRV per cluster IP and port, the weight shared
                        // among all of them, then the duplicates (same port on each IP,
                        // or one port number over UDP and TCP) dropped (RFC 2181 5).
                        let weight = Self::srv_weight(ports.len() * service.cluster_ips.len());
                        let mut answers = Vec::new();
                        for p in &ports {
                            let srv = SRV::new(0, weight, p.port, target.clone());
                            push_once(
                                &mut answers,
                                Record::from_rdata(ctx.qname.clone(), ttl, RData::SRV(srv)),
                            );
                        }
                        let mut additionals = Vec::new();
                        if !ports.is_empty() {
                            for ip in &service.cluster_ips {
                                push_once(&mut additionals, address_record(&target, ttl, *ip));
                            }
                        }
                        Outcome::or_nodata(answers, additionals)
                    }
                    _ => Outcome::NoData,
                }
            }
            ServiceKind::Headless => {
                // CoreDNS: "all endpoint queries and headless service queries will result in
                // an NXDOMAIN" under `noendpoints`.
                if self.cfg.noendpoints {
                    return Outcome::NxDomain;
                }
                let ready: Vec<&EndpointEntry> = entry.ready_endpoints().collect();
                if ready.is_empty() {
                    return Outcome::NxDomain;
                }
                if let Some(o) = self.zone_aware(ctx, entry, &ready, svc, ns, port, proto) {
                    return o;
                }
                self.endpoint_records(ctx, &ready, svc, ns, port, proto, explicit_port)
            }
        }
    }

    /// Records for a set of endpoints: addresses, or SRV per endpoint x matching port.
    #[allow(clippy::too_many_arguments)]
    fn endpoint_records(
        &self,
        ctx: &Ctx,
        endpoints: &[&EndpointEntry],
        svc: &str,
        ns: &str,
        port: &str,
        proto: &str,
        explicit_port: bool,
    ) -> Outcome {
        let ttl = self.cfg.ttl;
        let pairs: Vec<(&EndpointEntry, &Port)> = endpoints
            .iter()
            .flat_map(|e| {
                e.ports()
                    .iter()
                    .filter(|p| port_matches(port, proto, p))
                    .map(move |p| (*e, p))
            })
            .collect();
        if explicit_port && pairs.is_empty() {
            return Outcome::NxDomain;
        }
        match ctx.qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let mut records = Vec::new();
                for e in endpoints {
                    if explicit_port && !pairs.iter().any(|(pe, _)| pe.address() == e.address()) {
                        continue;
                    }
                    if family_matches(ctx.qtype, &e.address()) {
                        // A service's endpoints are unique by address (the snapshot merges
                        // its slices so), so no record repeats here.
                        records.push(address_record(ctx.qname, ttl, e.address()));
                    }
                }
                Outcome::or_nodata(records, Vec::new())
            }
            RecordType::SRV => {
                // The weight counts every endpoint x port before duplicates (endpoints that
                // share a hostname, one port number over two protocols) are dropped, as
                // CoreDNS computes it.
                let weight = Self::srv_weight(pairs.len());
                let mut answers = Vec::with_capacity(pairs.len());
                let mut additionals: Vec<Record> = Vec::new();
                // Sets, not scans: a headless service may have thousands of endpoints.
                let mut seen_srv: HashSet<(Label, u16)> = HashSet::new();
                let mut seen_glue: HashSet<IpAddr> = HashSet::new();
                for (e, p) in &pairs {
                    let label = e.label(self.cfg.endpoint_pod_names);
                    let new_srv = seen_srv.insert((label, p.port));
                    let new_glue = seen_glue.insert(e.address());
                    if !new_srv && !new_glue {
                        continue;
                    }
                    let target = self.fqdn(ctx, &[&label, svc, ns, "svc"]);
                    if new_glue {
                        additionals.push(address_record(&target, ttl, e.address()));
                    }
                    if new_srv {
                        let srv = SRV::new(0, weight, p.port, target);
                        answers.push(Record::from_rdata(ctx.qname.clone(), ttl, RData::SRV(srv)));
                    }
                }
                Outcome::or_nodata(answers, additionals)
            }
            _ => Outcome::NoData,
        }
    }

    fn endpoint(
        &self,
        ctx: &Ctx,
        entry: &ServiceEntry,
        svc: &str,
        ns: &str,
        label: &str,
    ) -> Outcome {
        if self.cfg.noendpoints || entry.service.kind == ServiceKind::ExternalName {
            return Outcome::NxDomain;
        }
        let matching: Vec<&EndpointEntry> = entry
            .endpoints_named(label, self.cfg.endpoint_pod_names)
            .collect();
        if matching.is_empty() {
            return Outcome::NxDomain;
        }
        self.endpoint_records(ctx, &matching, svc, ns, "*", "*", false)
    }

    /// `l` holds the labels left of `pod`: `[.., ip, namespace]`.
    fn pod(&self, ctx: &Ctx, l: &[&str]) -> Outcome {
        let snap = ctx.snap;
        match l {
            [] => Outcome::NoData,
            _ if self.cfg.pods == PodMode::Disabled => Outcome::NxDomain,
            [ns] => {
                if self.namespace_exposed(snap, ns) {
                    Outcome::NoData
                } else {
                    Outcome::NxDomain
                }
            }
            [label, ns] => {
                if !self.namespace_exposed(snap, ns) {
                    return Outcome::NxDomain;
                }
                let Some(ip) = pod_label_ip(label) else {
                    return Outcome::NxDomain;
                };
                if self.cfg.pods == PodMode::Verified && !self.pod_verified(snap, &ip, ns) {
                    return Outcome::NxDomain;
                }
                if family_matches(ctx.qtype, &ip) {
                    Outcome::records(vec![address_record(ctx.qname, self.cfg.ttl, ip)])
                } else {
                    Outcome::NoData
                }
            }
            _ => Outcome::NxDomain,
        }
    }

    fn reverse(&self, ctx: &Ctx) -> Outcome {
        if label_count(ctx.qname) == label_count(ctx.zone) {
            return self.apex(ctx);
        }
        let ip = match ctx.qname.parse_arpa_name() {
            Ok(net) if net.prefix_len() == net.max_prefix_len() => net.addr(),
            _ => return Outcome::NxDomain,
        };
        let targets: Vec<&PtrTarget> = ctx
            .snap
            .ptr(&ip)
            .iter()
            .filter(|t| {
                // Under `noendpoints` CoreDNS has no endpoints to reverse-map.
                (t.endpoint().is_none() || !self.cfg.noendpoints)
                    && self.ptr_exposed(ctx.snap, t.namespace(), t.service())
            })
            .collect();
        if targets.is_empty() {
            return Outcome::NxDomain;
        }
        if !matches!(ctx.qtype, RecordType::PTR | RecordType::ANY) {
            return Outcome::NoData;
        }
        // PTR targets live in the cluster zone: the first forward zone configured.
        let Some(cluster_zone) = self.cfg.zones.iter().find(|z| !is_reverse(z)) else {
            return Outcome::NxDomain;
        };
        let zctx = Ctx {
            snap: ctx.snap,
            zone: cluster_zone,
            qname: ctx.qname,
            qtype: ctx.qtype,
            client: None,
            zonal: Default::default(),
        };
        let mut answers = Vec::with_capacity(targets.len());
        for target in targets {
            let (service, namespace) = (target.service(), target.namespace());
            let name = match target.endpoint() {
                None => self.fqdn(&zctx, &[service, namespace, "svc"]),
                Some(index) => {
                    let key = format!("{service}.{namespace}");
                    let Some(e) = ctx.snap.service(&key).and_then(|s| s.endpoints.get(index))
                    else {
                        continue;
                    };
                    self.fqdn(
                        &zctx,
                        &[
                            &e.label(self.cfg.endpoint_pod_names),
                            service,
                            namespace,
                            "svc",
                        ],
                    )
                }
            };
            push_once(
                &mut answers,
                Record::from_rdata(ctx.qname.clone(), self.cfg.ttl, RData::PTR(PTR(name))),
            );
        }
        Outcome::or_nodata(answers, Vec::new())
    }

    /// Address records of an ExternalName target inside our own zones (others are left to the
    /// client or the forwarder).
    fn chase(&self, ctx: &Ctx, target: &Name) -> Vec<Record> {
        let mut out = Vec::new();
        let mut name = target.clone();
        for _ in 0..MAX_CNAME_CHAIN {
            let Some(zone) = self.zone_for(&name) else {
                break;
            };
            if is_reverse(zone) {
                break;
            }
            let sub = Ctx {
                snap: ctx.snap,
                zone,
                qname: &name,
                qtype: ctx.qtype,
                client: None,
                zonal: Default::default(),
            };
            match self.forward(&sub) {
                Outcome::Records { answers, .. } => {
                    let next = answers.iter().find_map(|r| match &r.data {
                        RData::CNAME(c) if r.record_type() == RecordType::CNAME => {
                            Some(c.0.clone())
                        }
                        _ => None,
                    });
                    out.extend(answers);
                    match next {
                        Some(n) => name = n,
                        None => break,
                    }
                }
                _ => break,
            }
        }
        out
    }

    fn in_fallthrough(&self, qname: &Name) -> bool {
        match &self.cfg.fallthrough {
            None => false,
            Some(zones) if zones.is_empty() => true,
            Some(zones) => zones.iter().any(|z| z.zone_of(qname)),
        }
    }
}

impl Handler for Kubernetes {
    fn name(&self) -> &'static str {
        PLUGIN
    }

    fn pure(&self) -> bool {
        true
    }

    fn handle(&self, req: &Request) -> Flow {
        let Some(answer) = self.lookup_from(&req.qname, req.qtype, Some(req.src.ip())) else {
            return Flow::Next;
        };
        if answer.rcode == ResponseCode::NXDomain && self.in_fallthrough(&req.qname) {
            return Flow::Next;
        }
        Flow::Answer(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_labels() {
        assert_eq!(pod_label_ip("10-0-0-1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(pod_label_ip("fd00--1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(
            pod_label_ip("2001-db8--0"),
            Some("2001:db8::".parse().unwrap())
        );
        assert_eq!(pod_label_ip("10-0-0"), None);
        assert_eq!(pod_label_ip("nginx"), None);
    }

    #[test]
    fn weights() {
        assert_eq!(Kubernetes::srv_weight(1), 100);
        assert_eq!(Kubernetes::srv_weight(3), 33);
        assert_eq!(Kubernetes::srv_weight(200), 1);
    }
}
