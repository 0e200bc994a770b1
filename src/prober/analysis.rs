//! Exact security-group and network-ACL semantics for one flow.
//!
//! Security groups: stateful and allow-only; a flow needs an egress rule on ANY of the source
//! ENI's groups AND an ingress rule on ANY of the destination ENI's groups. A rule's peer is a
//! CIDR (of the flow's address family), a group (any ENI that has it) or a prefix list (whose
//! entries we do not have: `unknown`, never guessed).
//!
//! Network ACLs: stateless, per subnet (the associated ACL, else the VPC default), rules in
//! number order, first match wins, `*` (32767) denies. Checked outbound on the source subnet
//! and inbound on the destination subnet for the request, and the other way for the return
//! traffic on the ephemeral ports 1024-65535. Traffic within one subnet crosses no ACL.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::aws::{protocol_name, AclEntry, NetworkAcl, Permission, VpcModel, TCP, UDP};

/// The ephemeral ports return traffic goes to, as AWS documents them for network ACLs.
pub const EPHEMERAL: (u16, u16) = (1024, 65535);

/// Where a party sends from or receives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addr {
    Ip(IpAddr),
    /// Any address of this block: a representative for pods not running yet.
    Block(IpNet),
}

impl Addr {
    pub fn is_v6(&self) -> bool {
        match self {
            Addr::Ip(ip) => ip.is_ipv6(),
            Addr::Block(net) => matches!(net, IpNet::V6(_)),
        }
    }

    /// The smallest CIDR covering the address, for rules and fixes.
    pub fn cidr(&self) -> IpNet {
        match self {
            Addr::Ip(ip) => IpNet::from(*ip),
            Addr::Block(net) => *net,
        }
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Ip(ip) => write!(f, "{ip}"),
            Addr::Block(net) => write!(f, "{net}"),
        }
    }
}

/// The security groups of a party's ENI, and how we know them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Groups {
    Known {
        ids: Vec<String>,
        source: String,
    },
    Unknown(String),
    /// Not an ENI in the VPC (the Amazon-provided DNS server): security groups do not apply.
    NotEni,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartyKind {
    Pod,
    FargateProfile,
    NodeGroup,
    ControlPlane,
    VpcResolver,
}

/// One end of a flow: a pod, or the group it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    /// `namespace/name` for pods, the profile / node group name for representatives.
    pub name: String,
    pub kind: PartyKind,
    /// Where it runs: `micro-VM (fargate profile fp-web)`, `node group ng-general`, ...
    pub compute: String,
    pub addrs: Vec<Addr>,
    pub subnet: Option<String>,
    pub groups: Groups,
}

impl Party {
    /// The party's address of the same family as `other`.
    pub fn addr_like(&self, other: &Addr) -> Option<Addr> {
        self.addrs
            .iter()
            .find(|a| a.is_v6() == other.is_v6())
            .copied()
    }

    fn group_ids(&self) -> &[String] {
        match &self.groups {
            Groups::Known { ids, .. } => ids,
            _ => &[],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Blocked,
    Unknown,
    Allowed,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allowed => "allowed",
            Verdict::Blocked => "blocked",
            Verdict::Unknown => "unknown",
        })
    }
}

/// One request: `src` at `src_addr` to `dst` at `dst_addr`, protocol number and port.
#[derive(Debug, Clone, Copy)]
pub struct Flow<'a> {
    pub src: &'a Party,
    pub src_addr: Addr,
    pub dst: &'a Party,
    pub dst_addr: Addr,
    pub protocol: u8,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Allowed: the rules that allow it. Blocked: exactly what is missing. Unknown: why.
    pub reason: String,
    /// AWS CLI commands, one a line, that make a blocked flow pass.
    pub fix: Option<String>,
}

/// What one layer (an SG direction, an ACL check) says about a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layer {
    Allowed(String),
    Blocked {
        missing: String,
        fix: Option<String>,
    },
    Unknown(String),
}

/// Does a CIDR contain the address: yes, no, or (a representative block partly inside) maybe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tri {
    Yes,
    No,
    Maybe,
}

fn cidr_match(cidr: &IpNet, addr: &Addr) -> Tri {
    match addr {
        Addr::Ip(ip) => {
            if cidr.contains(ip) {
                Tri::Yes
            } else {
                Tri::No
            }
        }
        Addr::Block(block) => {
            if cidr.contains(block) {
                Tri::Yes
            } else if block.contains(cidr) {
                Tri::Maybe
            } else {
                // CIDR blocks either nest or are disjoint.
                Tri::No
            }
        }
    }
}

/// Hands out network-ACL rule numbers for fixes, so that the fixes of one report do not
/// collide when applied together and the same fix gets the same number everywhere.
#[derive(Debug, Default)]
pub struct FixPlanner {
    assigned: BTreeMap<String, u32>,
    taken: BTreeMap<(String, bool), BTreeSet<u32>>,
}

/// Judges one flow through every layer.
pub fn judge(model: &VpcModel, flow: &Flow) -> Judgement {
    judge_planned(model, flow, &mut FixPlanner::default())
}

/// [`judge`], with network-ACL fix numbers coordinated across a report.
pub fn judge_planned(model: &VpcModel, flow: &Flow, planner: &mut FixPlanner) -> Judgement {
    if flow.dst.kind == PartyKind::VpcResolver {
        return Judgement {
            verdict: Verdict::Allowed,
            reason: "the Amazon-provided DNS server is not filtered by security groups or network ACLs (mind its limit of 1024 packets/s per network interface)".into(),
            fix: None,
        };
    }
    let mut layers = vec![sg_layer(model, flow, true), sg_layer(model, flow, false)];
    layers.extend(acl_layers(model, flow, planner));
    combine(layers)
}

fn combine(layers: Vec<Layer>) -> Judgement {
    let mut allowed = Vec::new();
    let mut missing = Vec::new();
    let mut fixes = Vec::new();
    let mut unknown = Vec::new();
    // Several checks can report the same thing (both directions of one unknown ACL).
    let push = |list: &mut Vec<String>, item: String| {
        if !list.contains(&item) {
            list.push(item);
        }
    };
    for layer in layers {
        match layer {
            Layer::Allowed(s) => push(&mut allowed, s),
            Layer::Blocked { missing: m, fix } => {
                push(&mut missing, m);
                if let Some(fix) = fix {
                    push(&mut fixes, fix);
                }
            }
            Layer::Unknown(s) => push(&mut unknown, s),
        }
    }
    if !missing.is_empty() {
        Judgement {
            verdict: Verdict::Blocked,
            reason: missing.join("; "),
            fix: (!fixes.is_empty()).then(|| fixes.join("\n")),
        }
    } else if !unknown.is_empty() {
        Judgement {
            verdict: Verdict::Unknown,
            reason: unknown.join("; "),
            fix: None,
        }
    } else {
        Judgement {
            verdict: Verdict::Allowed,
            reason: allowed.join("; "),
            fix: None,
        }
    }
}

// ---- security groups ----

fn rule_text(group: &str, egress: bool, perm: &Permission, peer: &str) -> String {
    let (dir, prep) = if egress {
        ("egress", "to")
    } else {
        ("ingress", "from")
    };
    format!("{group} {dir} {} {prep} {peer}", perm.describe_protocol())
}

fn sg_layer(model: &VpcModel, flow: &Flow, egress: bool) -> Layer {
    let (own, peer, peer_addr) = if egress {
        (flow.src, flow.dst, flow.dst_addr)
    } else {
        (flow.dst, flow.src, flow.src_addr)
    };
    let ids = match &own.groups {
        Groups::Known { ids, .. } => ids,
        Groups::Unknown(why) => {
            return Layer::Unknown(format!("security groups of {} unknown: {why}", own.name))
        }
        Groups::NotEni => return Layer::Allowed(format!("{} has no security groups", own.name)),
    };
    let (proto, port) = (flow.protocol, flow.port);
    let prep = if egress { "to" } else { "from" };
    let mut unknown = Vec::new();
    // Rules that match in all but one way, to show next to what is missing.
    let mut near: Vec<(String, String)> = Vec::new();
    for gid in ids {
        let Some(sg) = model.security_groups.get(gid) else {
            unknown.push(match model.unavailable("SecurityGroups") {
                Some(why) => format!("rules of {gid} unknown: {why}"),
                None => format!("{gid} is not in the describe-security-groups input"),
            });
            continue;
        };
        let perms = if egress { &sg.egress } else { &sg.ingress };
        for perm in perms {
            let covers = perm.covers(proto, port);
            // Same port and peer, other protocol (the TCP-but-not-UDP 53 mistake).
            let other_proto = !covers
                && [TCP, UDP]
                    .iter()
                    .any(|&p| p != proto && perm.covers(p, port));
            for cidr in &perm.cidrs {
                let family_matches = matches!(cidr, IpNet::V6(_)) == peer_addr.is_v6();
                match cidr_match(cidr, &peer_addr) {
                    Tri::Yes if covers => {
                        return Layer::Allowed(rule_text(gid, egress, perm, &cidr.to_string()))
                    }
                    Tri::Maybe if covers => unknown.push(format!(
                        "{} covers only part of {peer_addr}",
                        rule_text(gid, egress, perm, &cidr.to_string())
                    )),
                    Tri::Yes if other_proto => near.push((
                        gid.clone(),
                        format!("{} {prep} {cidr}", perm.describe_protocol()),
                    )),
                    Tri::No if covers && !family_matches => near.push((
                        gid.clone(),
                        format!(
                            "{} {prep} {cidr}, which matches IPv{} only",
                            perm.describe_protocol(),
                            if matches!(cidr, IpNet::V6(_)) { 6 } else { 4 }
                        ),
                    )),
                    _ => {}
                }
            }
            for g in &perm.groups {
                match &peer.groups {
                    Groups::Known { ids: peer_ids, .. } if peer_ids.contains(g) => {
                        if covers {
                            return Layer::Allowed(rule_text(gid, egress, perm, g));
                        }
                        if other_proto {
                            near.push((
                                gid.clone(),
                                format!("{} {prep} {g}", perm.describe_protocol()),
                            ));
                        }
                    }
                    Groups::Unknown(_) if covers => unknown.push(format!(
                        "{} may match: the groups of {} are unknown",
                        rule_text(gid, egress, perm, g),
                        peer.name
                    )),
                    _ => {}
                }
            }
            if covers {
                for pl in &perm.prefix_lists {
                    unknown.push(format!(
                        "{}: prefix list {pl} not evaluated",
                        rule_text(gid, egress, perm, pl)
                    ));
                }
            }
        }
    }
    if !unknown.is_empty() {
        return Layer::Unknown(unknown.join("; "));
    }
    sg_missing(model, flow, egress, own, peer, &peer_addr, ids, &near)
}

#[allow(clippy::too_many_arguments)]
fn sg_missing(
    model: &VpcModel,
    flow: &Flow,
    egress: bool,
    own: &Party,
    peer: &Party,
    peer_addr: &Addr,
    ids: &[String],
    near: &[(String, String)],
) -> Layer {
    let proto = protocol_name(flow.protocol);
    let (dir, prep) = if egress {
        ("egress", "to")
    } else {
        ("ingress", "from")
    };
    if ids.is_empty() {
        return Layer::Blocked {
            missing: format!("{} has no security groups", own.name),
            fix: None,
        };
    }
    let cluster_sg = model
        .cluster()
        .and_then(|c| c.cluster_security_group_id.as_deref());
    // The peer to allow: a group of the peer's (stable across pod restarts), preferring one a
    // near-miss rule already names, then the cluster SG; else the peer's address block.
    let peer_groups = peer.group_ids();
    let peer_ref = peer_groups
        .iter()
        .find(|g| near.iter().any(|(_, text)| text.ends_with(g.as_str())))
        .or_else(|| peer_groups.iter().find(|g| Some(g.as_str()) == cluster_sg))
        .or(peer_groups.first())
        .cloned();
    // The group to change: one that already has a near-miss rule, else the most specific one
    // (not the cluster SG, which every managed node and micro-VM shares).
    let target = near
        .first()
        .map(|(g, _)| g.clone())
        .or_else(|| ids.iter().find(|g| Some(g.as_str()) != cluster_sg).cloned())
        .unwrap_or_else(|| ids[0].clone());
    let peer_text = peer_ref
        .clone()
        .unwrap_or_else(|| peer_addr.cidr().to_string());
    let groups_text = ids.join(", ");
    let verb = if ids.len() == 1 { "lacks" } else { "lack" };
    let mut missing = format!(
        "{groups_text} {dir} {verb} {} {} {prep} {peer_text}",
        proto.to_uppercase(),
        flow.port
    );
    if !near.is_empty() {
        let has: Vec<String> = near
            .iter()
            .map(|(g, text)| {
                if ids.len() == 1 {
                    text.clone()
                } else {
                    format!("{g}: {text}")
                }
            })
            .collect();
        missing.push_str(&format!(" (has {})", has.join(", ")));
    }
    let fix = sg_fix(
        egress,
        &target,
        flow.protocol,
        flow.port,
        peer_ref,
        peer_addr,
    );
    Layer::Blocked {
        missing,
        fix: Some(fix),
    }
}

fn sg_fix(
    egress: bool,
    group: &str,
    protocol: u8,
    port: u16,
    peer_group: Option<String>,
    peer_addr: &Addr,
) -> String {
    let proto = protocol_name(protocol);
    let simple = protocol == TCP || protocol == UDP;
    let cidr = peer_addr.cidr();
    if !egress && simple {
        let source = match (&peer_group, cidr) {
            (Some(g), _) => Some(format!("--source-group {g}")),
            (None, IpNet::V4(c)) => Some(format!("--cidr {c}")),
            // The shorthand has no IPv6 source option: use --ip-permissions below.
            (None, IpNet::V6(_)) => None,
        };
        if let Some(source) = source {
            return format!(
                "aws ec2 authorize-security-group-ingress --group-id {group} --protocol {proto} --port {port} {source}"
            );
        }
    }
    let proto_field = if simple { proto } else { protocol.to_string() };
    let peer_field = match (peer_group, cidr) {
        (Some(g), _) => format!("UserIdGroupPairs=[{{GroupId={g}}}]"),
        (None, IpNet::V4(c)) => format!("IpRanges=[{{CidrIp={c}}}]"),
        (None, IpNet::V6(c)) => format!("Ipv6Ranges=[{{CidrIpv6={c}}}]"),
    };
    let verb = if egress { "egress" } else { "ingress" };
    format!(
        "aws ec2 authorize-security-group-{verb} --group-id {group} --ip-permissions 'IpProtocol={proto_field},FromPort={port},ToPort={port},{peer_field}'"
    )
}

// ---- network ACLs ----

fn acl_layers(model: &VpcModel, flow: &Flow, planner: &mut FixPlanner) -> Vec<Layer> {
    if model.network_acls.is_empty() {
        // Denied is not absent: the user did not choose to skip the ACLs.
        if let Some(why) = model.unavailable("NetworkAcls") {
            return vec![Layer::Unknown(format!("network ACLs unknown: {why}"))];
        }
        return vec![Layer::Allowed(
            "network ACLs not checked (no describe-network-acls input)".into(),
        )];
    }
    let (Some(src_subnet), Some(dst_subnet)) = (&flow.src.subnet, &flow.dst.subnet) else {
        let who = if flow.src.subnet.is_none() {
            flow.src
        } else {
            flow.dst
        };
        return vec![Layer::Unknown(format!(
            "subnet of {} unknown: network ACLs not evaluated",
            who.name
        ))];
    };
    if src_subnet == dst_subnet {
        return vec![Layer::Allowed(format!(
            "same subnet {src_subnet}: no network ACL crossed"
        ))];
    }
    let checks = [
        // request: out of the source subnet, into the destination subnet
        (
            src_subnet,
            true,
            flow.dst_addr,
            flow.dst,
            (flow.port, flow.port),
            false,
        ),
        (
            dst_subnet,
            false,
            flow.src_addr,
            flow.src,
            (flow.port, flow.port),
            false,
        ),
        // return traffic to the client's ephemeral port
        (dst_subnet, true, flow.src_addr, flow.src, EPHEMERAL, true),
        (src_subnet, false, flow.dst_addr, flow.dst, EPHEMERAL, true),
    ];
    let mut allowed = Vec::new();
    let mut out = Vec::new();
    for (subnet, egress, peer_addr, peer, ports, is_return) in checks {
        match acl_check(
            model,
            planner,
            subnet,
            egress,
            flow.protocol,
            &peer_addr,
            peer,
            ports,
            is_return,
        ) {
            Layer::Allowed(text) => allowed.push(text),
            other => out.push(other),
        }
    }
    if out.is_empty() {
        out.push(Layer::Allowed(allowed.join(", ")));
    }
    out
}

/// What the first matching entry does for one port.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Hit {
    Allow(u32),
    /// The entry's number, or `None` when no entry matched (the implicit `*` deny).
    Deny(Option<u32>),
    Unknown(String),
}

fn first_match(entries: &[&AclEntry], protocol: u8, peer: &Addr, port: u16) -> Hit {
    for (i, e) in entries.iter().enumerate() {
        if !e.protocol.matches(protocol) {
            continue;
        }
        if let (Some((from, to)), true) = (e.ports, e.protocol.has_ports()) {
            if !(from..=to).contains(&port) {
                continue;
            }
        }
        let hit = if e.allow {
            Hit::Allow(e.rule_number)
        } else {
            Hit::Deny(Some(e.rule_number))
        };
        match cidr_match(&e.cidr, peer) {
            Tri::No => continue,
            Tri::Yes => return hit,
            Tri::Maybe => {
                // The entry matches part of a representative block: decided only if the rest
                // of the list does the same thing for the other part.
                let rest = first_match(&entries[i + 1..], protocol, peer, port);
                let same = matches!(
                    (&hit, &rest),
                    (Hit::Allow(_), Hit::Allow(_)) | (Hit::Deny(_), Hit::Deny(_))
                );
                return if same {
                    hit
                } else {
                    Hit::Unknown(format!("rule {} covers only part of {peer}", e.rule_number))
                };
            }
        }
    }
    Hit::Deny(None)
}

#[allow(clippy::too_many_arguments)]
fn acl_check(
    model: &VpcModel,
    planner: &mut FixPlanner,
    subnet: &str,
    egress: bool,
    protocol: u8,
    peer_addr: &Addr,
    peer: &Party,
    (lo, hi): (u16, u16),
    is_return: bool,
) -> Layer {
    let Some(acl) = model.acl_for_subnet(subnet) else {
        return Layer::Unknown(format!(
            "no network ACL found for {subnet} (no association and no default ACL in the input)"
        ));
    };
    let mut entries: Vec<&AclEntry> = acl
        .entries
        .iter()
        .filter(|e| e.egress == egress && matches!(e.cidr, IpNet::V6(_)) == peer_addr.is_v6())
        .collect();
    entries.sort_by_key(|e| e.rule_number);
    // Ports between consecutive boundaries behave alike: judge one port per stretch.
    let mut bounds: BTreeSet<u32> = [u32::from(lo), u32::from(hi) + 1].into_iter().collect();
    for e in &entries {
        if let Some((from, to)) = e.ports {
            for b in [u32::from(from), u32::from(to) + 1] {
                if b > u32::from(lo) && b <= u32::from(hi) {
                    bounds.insert(b);
                }
            }
        }
    }
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut allow_rules = BTreeSet::new();
    let mut denied: Vec<(u32, u32, Option<u32>)> = Vec::new();
    let mut unknown = Vec::new();
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1] - 1);
        // Bounds stay within lo..=hi+1, so start fits a port.
        let port = u16::try_from(start).unwrap_or(u16::MAX);
        match first_match(&entries, protocol, peer_addr, port) {
            Hit::Allow(rule) => {
                allow_rules.insert(rule);
            }
            Hit::Deny(rule) => match denied.last_mut() {
                Some(last) if last.1 + 1 == start && last.2 == rule => last.1 = end,
                _ => denied.push((start, end, rule)),
            },
            Hit::Unknown(why) => unknown.push(why),
        }
    }
    let dir = if egress { "outbound" } else { "inbound" };
    let prep = if egress { "to" } else { "from" };
    let what = if is_return { "return traffic " } else { "" };
    let proto = protocol_name(protocol);
    if !denied.is_empty() {
        let rule_text = |rule: &Option<u32>| match rule {
            Some(32767) | None => "rule *".to_string(),
            Some(n) => format!("rule {n}"),
        };
        let ports_text = |s: u32, e: u32| {
            if s == e {
                s.to_string()
            } else {
                format!("{s}-{e}")
            }
        };
        let missing = match denied.as_slice() {
            [(s, e, rule)] => format!(
                "{} ({subnet}) {dir} denies {what}{proto} {} {prep} {peer_addr} ({})",
                acl.id,
                ports_text(*s, *e),
                rule_text(rule)
            ),
            spans => {
                let spans: Vec<String> = spans
                    .iter()
                    .map(|(s, e, rule)| format!("{} ({})", ports_text(*s, *e), rule_text(rule)))
                    .collect();
                format!(
                    "{} ({subnet}) {dir} denies {what}{proto} {prep} {peer_addr} on ports {}",
                    acl.id,
                    spans.join(", ")
                )
            }
        };
        let first_deny = denied
            .iter()
            .map(|d| d.2.unwrap_or(32767))
            .min()
            .unwrap_or(32767);
        let from = denied.iter().map(|d| d.0).min().unwrap_or(u32::from(lo));
        let to = denied.iter().map(|d| d.1).max().unwrap_or(u32::from(hi));
        let cidr = peer
            .subnet
            .as_deref()
            .and_then(|s| model.subnet(s))
            .and_then(|s| s.block(peer_addr.is_v6()))
            .unwrap_or_else(|| peer_addr.cidr());
        let fix = acl_fix(planner, acl, egress, first_deny, protocol, (from, to), cidr);
        return Layer::Blocked { missing, fix };
    }
    if !unknown.is_empty() {
        return Layer::Unknown(format!(
            "{} ({subnet}) {dir} {what}{proto}: {}",
            acl.id,
            unknown.join("; ")
        ));
    }
    let rules: Vec<String> = allow_rules.iter().map(u32::to_string).collect();
    let s = if rules.len() == 1 { "" } else { "s" };
    Layer::Allowed(format!(
        "{} ({subnet}) {dir} {what}rule{s} {}",
        acl.id,
        rules.join(", ")
    ))
}

/// `create-network-acl-entry` with a free rule number below the denying one.
fn acl_fix(
    planner: &mut FixPlanner,
    acl: &NetworkAcl,
    egress: bool,
    below: u32,
    protocol: u8,
    (from, to): (u32, u32),
    cidr: IpNet,
) -> Option<String> {
    let direction = if egress { "--egress" } else { "--ingress" };
    let proto = if protocol == TCP || protocol == UDP {
        protocol_name(protocol)
    } else {
        protocol.to_string()
    };
    let cidr_opt = match cidr {
        IpNet::V4(c) => format!("--cidr-block {c}"),
        IpNet::V6(c) => format!("--ipv6-cidr-block {c}"),
    };
    let rest = format!(
        "--protocol {proto} --port-range From={from},To={to} {cidr_opt} --rule-action allow"
    );
    let key = format!("{} {direction} {rest}", acl.id);
    let number = match planner.assigned.get(&key) {
        Some(n) if *n < below => *n,
        _ => {
            let taken = planner
                .taken
                .entry((acl.id.clone(), egress))
                .or_insert_with(|| {
                    acl.entries
                        .iter()
                        .filter(|e| e.egress == egress)
                        .map(|e| e.rule_number)
                        .collect()
                });
            let highest_below = taken.range(..below).next_back().copied().unwrap_or(0);
            let round = (highest_below / 10 + 1) * 10;
            let n = if round < below && !taken.contains(&round) {
                round
            } else {
                (1..below).rev().find(|n| !taken.contains(n))?
            };
            taken.insert(n);
            planner.assigned.insert(key, n);
            n
        }
    };
    Some(format!(
        "aws ec2 create-network-acl-entry --network-acl-id {} {direction} --rule-number {number} {rest}",
        acl.id
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prober::aws::Protocol;

    fn entry(
        rule: u32,
        egress: bool,
        proto: Protocol,
        allow: bool,
        cidr: &str,
        ports: Option<(u16, u16)>,
    ) -> AclEntry {
        AclEntry {
            rule_number: rule,
            egress,
            protocol: proto,
            allow,
            cidr: cidr.parse().unwrap(),
            ports,
        }
    }

    #[test]
    fn first_match_wins_in_rule_order() {
        let a = entry(
            100,
            false,
            Protocol::Number(UDP),
            false,
            "10.0.0.0/16",
            Some((53, 53)),
        );
        let b = entry(90, false, Protocol::All, true, "10.0.1.0/24", None);
        let entries = vec![&b, &a];
        let ip = Addr::Ip("10.0.1.5".parse().unwrap());
        assert_eq!(first_match(&entries, UDP, &ip, 53), Hit::Allow(90));
        let other = Addr::Ip("10.0.2.5".parse().unwrap());
        assert_eq!(first_match(&entries, UDP, &other, 53), Hit::Deny(Some(100)));
        assert_eq!(first_match(&entries, TCP, &other, 53), Hit::Deny(None));
    }

    #[test]
    fn partial_blocks_are_unknown_unless_the_rest_agrees() {
        let a = entry(100, false, Protocol::All, true, "10.0.1.0/25", None);
        let b = entry(200, false, Protocol::All, true, "10.0.0.0/16", None);
        let block = Addr::Block("10.0.1.0/24".parse().unwrap());
        assert_eq!(first_match(&[&a, &b], UDP, &block, 53), Hit::Allow(100));
        assert!(matches!(
            first_match(&[&a], UDP, &block, 53),
            Hit::Unknown(_)
        ));
    }

    fn model(sgs: &str, acls: &str) -> VpcModel {
        let mut m = VpcModel::default();
        m.add_text(sgs, std::path::Path::new("sgs.json")).unwrap();
        m.add_text(acls, std::path::Path::new("acls.json")).unwrap();
        m.add_text(
            r#"{"Subnets":[{"SubnetId":"subnet-a","CidrBlock":"10.0.0.0/24","VpcId":"vpc-1"},
                           {"SubnetId":"subnet-b","CidrBlock":"10.0.1.0/24","VpcId":"vpc-1"}]}"#,
            std::path::Path::new("subnets.json"),
        )
        .unwrap();
        m
    }

    fn party(name: &str, ip: &str, subnet: &str, groups: &[&str]) -> Party {
        Party {
            name: name.into(),
            kind: PartyKind::Pod,
            compute: String::new(),
            addrs: vec![Addr::Ip(ip.parse().unwrap())],
            subnet: Some(subnet.into()),
            groups: Groups::Known {
                ids: groups.iter().map(|g| g.to_string()).collect(),
                source: "test".into(),
            },
        }
    }

    fn verdict_of(m: &VpcModel, src: &Party, dst: &Party, protocol: u8, port: u16) -> Judgement {
        judge(
            m,
            &Flow {
                src,
                src_addr: src.addrs[0],
                dst,
                dst_addr: dst.addrs[0],
                protocol,
                port,
            },
        )
    }

    const OPEN_ACL: &str = r#"{"NetworkAcls":[{"NetworkAclId":"acl-d","VpcId":"vpc-1","IsDefault":true,"Associations":[],
        "Entries":[{"CidrBlock":"0.0.0.0/0","Egress":false,"Protocol":"-1","RuleAction":"allow","RuleNumber":100},
                   {"CidrBlock":"0.0.0.0/0","Egress":true,"Protocol":"-1","RuleAction":"allow","RuleNumber":100}]}]}"#;

    #[test]
    fn any_source_group_and_any_destination_group_with_inclusive_numeric_ports() {
        let m = model(
            r#"{"SecurityGroups":[
              {"GroupId":"sg-a","IpPermissionsEgress":[{"IpProtocol":"6","FromPort":8000,"ToPort":8080,"IpRanges":[{"CidrIp":"10.0.1.0/24"}]}]},
              {"GroupId":"sg-b","IpPermissions":[]}, {"GroupId":"sg-z"},
              {"GroupId":"sg-c","IpPermissions":[{"IpProtocol":"tcp","FromPort":8080,"ToPort":8080,"UserIdGroupPairs":[{"GroupId":"sg-z"}]}]}]}"#,
            OPEN_ACL,
        );
        let src = party("src", "10.0.0.5", "subnet-a", &["sg-b", "sg-a", "sg-z"]);
        let dst = party("dst", "10.0.1.5", "subnet-b", &["sg-b", "sg-c"]);
        let j = verdict_of(&m, &src, &dst, TCP, 8080);
        assert_eq!(j.verdict, Verdict::Allowed, "{}", j.reason);
        assert!(j.reason.starts_with("sg-a egress tcp 8000-8080 to 10.0.1.0/24; sg-c ingress tcp 8080 from sg-z; acl-d (subnet-a) outbound rule 100"), "{}", j.reason);
        let j = verdict_of(&m, &src, &dst, TCP, 8081);
        assert_eq!(j.verdict, Verdict::Blocked);
        assert_eq!(j.reason, "sg-b, sg-a, sg-z egress lack TCP 8081 to sg-b; sg-b, sg-c ingress lack TCP 8081 from sg-b");
        let j = verdict_of(&m, &src, &dst, UDP, 8080);
        assert_eq!(j.verdict, Verdict::Blocked);
    }

    #[test]
    fn undescribed_groups_and_unknown_peers_are_unknown() {
        let m = model(
            r#"{"SecurityGroups":[{"GroupId":"sg-a","IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}],
                "IpPermissions":[{"IpProtocol":"-1","UserIdGroupPairs":[{"GroupId":"sg-a"}]}]}]}"#,
            OPEN_ACL,
        );
        let src = party("src", "10.0.0.5", "subnet-a", &["sg-a"]);
        let dst = party("dst", "10.0.1.5", "subnet-b", &["sg-gone"]);
        let j = verdict_of(&m, &src, &dst, UDP, 53);
        assert_eq!(j.verdict, Verdict::Unknown);
        assert_eq!(
            j.reason,
            "sg-gone is not in the describe-security-groups input"
        );
        let mut src = src;
        src.groups = Groups::Unknown("no ENI".into());
        let dst = party("dst", "10.0.1.5", "subnet-b", &["sg-a"]);
        let j = verdict_of(&m, &src, &dst, UDP, 53);
        assert_eq!(j.verdict, Verdict::Unknown);
        assert!(
            j.reason.contains("security groups of src unknown: no ENI"),
            "{}",
            j.reason
        );
    }

    #[test]
    fn acl_denies_part_of_the_ephemeral_range_and_the_fix_goes_below_the_deny() {
        let m = model(
            r#"{"SecurityGroups":[{"GroupId":"sg-a","IpPermissionsEgress":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}],
                "IpPermissions":[{"IpProtocol":"-1","IpRanges":[{"CidrIp":"0.0.0.0/0"}]}]}]}"#,
            r#"{"NetworkAcls":[{"NetworkAclId":"acl-d","VpcId":"vpc-1","IsDefault":true,"Associations":[],
                "Entries":[{"CidrBlock":"0.0.0.0/0","Egress":false,"Protocol":"6","PortRange":{"From":53,"To":53},"RuleAction":"allow","RuleNumber":100},
                           {"CidrBlock":"0.0.0.0/0","Egress":false,"Protocol":"6","PortRange":{"From":1024,"To":32767},"RuleAction":"deny","RuleNumber":110},
                           {"CidrBlock":"0.0.0.0/0","Egress":false,"Protocol":"6","PortRange":{"From":1024,"To":65535},"RuleAction":"allow","RuleNumber":120},
                           {"CidrBlock":"0.0.0.0/0","Egress":true,"Protocol":"-1","RuleAction":"allow","RuleNumber":100}]}]}"#,
        );
        let src = party("src", "10.0.0.5", "subnet-a", &["sg-a"]);
        let dst = party("dst", "10.0.1.5", "subnet-b", &["sg-a"]);
        let j = verdict_of(&m, &src, &dst, TCP, 53);
        assert_eq!(j.verdict, Verdict::Blocked);
        assert_eq!(j.reason, "acl-d (subnet-a) inbound denies return traffic tcp 1024-32767 from 10.0.1.5 (rule 110)");
        assert_eq!(
            j.fix.as_deref(),
            Some("aws ec2 create-network-acl-entry --network-acl-id acl-d --ingress --rule-number 109 --protocol tcp --port-range From=1024,To=32767 --cidr-block 10.0.1.0/24 --rule-action allow")
        );
        // Same subnet: no ACL is crossed.
        let near = party("near", "10.0.0.6", "subnet-a", &["sg-a"]);
        assert_eq!(
            verdict_of(&m, &src, &near, TCP, 53).verdict,
            Verdict::Allowed
        );
    }
}
