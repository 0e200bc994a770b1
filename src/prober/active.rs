//! Live probes: from where the prober runs (a pod, the sidecar, a Job, a test namespace), ask
//! every cluster DNS endpoint and the DNS service IP a question over UDP and TCP, connect to
//! every service endpoint (HTTP GET where the port is HTTP), and set what got through beside
//! what the static analysis said.
//!
//! ```text
//!  ObjectSet ──targets──> [Target] ──probe_all (Semaphore, timeout each)──> [LiveResult]
//!                                                                               │
//!  AWS JSON ──judge_all──> [Finding] ─────────────────── compare ─────────> [LiveCheck]
//!                                                                               │
//!                                                   DISAGREEMENTS first ─> table | JSON
//! ```
//!
//! A live result is compared with the static findings for the same destination IP, protocol
//! and port, preferring those whose source covers the address the probe left from.

use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use super::analysis::{Addr, Verdict};
use super::aws::{self, TCP, UDP};
use super::paths::{app_services, judge_all, Finding};
use super::report::{self, FindingJson};
use super::ProbeError;
use crate::cluster::objects::ObjectSet;

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CONCURRENCY: usize = 32;
/// Answered by every cluster DNS server of the default domain; any answer (even NXDOMAIN in
/// another domain) proves the path.
pub const DEFAULT_QUERY: &str = "kubernetes.default.svc.cluster.local.";
/// An HTTP status line is short; a server sending more before a line break is not HTTP.
const MAX_STATUS_LINE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Udp,
    Tcp,
}

impl Protocol {
    /// The IP protocol number, as the static findings carry it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Udp => UDP,
            Protocol::Tcp => TCP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeKind {
    /// A DNS query; success is any well-formed response with the query's id.
    Dns,
    /// A TCP handshake.
    TcpConnect,
    /// `GET /` over HTTP/1.1; success is a status line, whatever the status.
    Http,
}

impl ProbeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Dns => "dns",
            ProbeKind::TcpConnect => "tcp-connect",
            ProbeKind::Http => "http",
        }
    }
}

/// Something to probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    /// The pod (`namespace/name`) or what the address is (`kube-system/kube-dns service IP`).
    pub name: String,
    /// `namespace/name` of the Service the address serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub kind: ProbeKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// No answer within the timeout: what a security group or a `drop` rule does.
    Timeout,
    /// A TCP reset or an ICMP port unreachable: the packet got there, nothing listens.
    Refused,
    Error(String),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::Error(_) => "error",
        }
    }
}

/// What one probe saw.
#[derive(Debug, Clone)]
pub struct LiveResult {
    pub target: Target,
    /// The address the probe left from (`--source`, else the kernel's choice for the route).
    pub source: Option<IpAddr>,
    pub outcome: Outcome,
    /// What answered: `NoError, 1 answer`, `HTTP/1.1 200 OK`, `connected`.
    pub detail: Option<String>,
    pub latency: Duration,
}

#[derive(Debug, Clone)]
pub struct ActiveOptions {
    /// Per probe, connect and exchange together.
    pub timeout: Duration,
    /// Probes in flight at once, over all targets.
    pub concurrency: usize,
    /// Bind every probe to this address (so a test can probe from inside a namespace).
    pub source: Option<IpAddr>,
    /// The name asked (type A) in DNS probes.
    pub query: String,
}

impl Default for ActiveOptions {
    fn default() -> Self {
        ActiveOptions {
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            source: None,
            query: DEFAULT_QUERY.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Targets from the cluster view.

/// (protocol, port, port name) of an endpoint.
type Port = (Option<Protocol>, u16, Option<String>);

/// (ip, target pod `ns/name`, ports) per ready endpoint address of a service.
fn endpoints(
    objects: &ObjectSet,
    namespace: &str,
    service: &str,
) -> Vec<(IpAddr, Option<String>, Vec<Port>)> {
    let proto = |n: u8| match n {
        TCP => Some(Protocol::Tcp),
        UDP => Some(Protocol::Udp),
        _ => None, // SCTP: no probe for it
    };
    crate::prober::paths::service_endpoints(objects, namespace, service)
        .into_iter()
        .map(|e| {
            let pod = e.target_ref.map(|(ns, name)| format!("{ns}/{name}"));
            let ports = e
                .ports
                .into_iter()
                .map(|(n, port, name)| (proto(n), port, name))
                .collect();
            (e.ip, pod, ports)
        })
        .collect()
}

fn is_http(port: u16, name: Option<&str>) -> bool {
    let named = name.is_some_and(|n| n == "http" || n.starts_with("http-"));
    named || port == 80 || port == 8080
}

/// Every target the cluster objects name: the DNS service IPs and every DNS endpoint on UDP
/// and TCP (the endpoint port the Service's port 53 leads to), then every other service's
/// endpoints on each TCP port. Returns the targets and notes on what is not probed.
pub fn targets(objects: &ObjectSet) -> (Vec<Target>, Vec<String>) {
    let mut out: Vec<Target> = Vec::new();
    let mut notes = Vec::new();
    let dns_service = objects.services.iter().find(|s| {
        s.metadata.namespace.as_deref() == Some("kube-system")
            && s.metadata.name.as_deref() == Some("kube-dns")
    });
    let spec = dns_service.and_then(|s| s.spec.as_ref());
    let mut cluster_ips: Vec<IpAddr> = Vec::new();
    if let Some(spec) = spec {
        let listed = spec.cluster_ips.iter().flatten();
        for text in spec.cluster_ip.iter().chain(listed) {
            if let Ok(ip) = text.parse::<IpAddr>() {
                if !cluster_ips.contains(&ip) {
                    cluster_ips.push(ip);
                }
            }
        }
    }
    for ip in cluster_ips {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            out.push(Target {
                name: "kube-system/kube-dns service IP".into(),
                service: Some("kube-system/kube-dns".into()),
                ip,
                port: 53,
                protocol,
                kind: ProbeKind::Dns,
            });
        }
    }
    // The endpoint ports the Service's port 53 names; without names, port 53 itself.
    let dns_names: Vec<String> = spec
        .map(|s| {
            s.ports
                .iter()
                .flatten()
                .filter(|p| p.port == 53)
                .filter_map(|p| p.name.clone())
                .collect()
        })
        .unwrap_or_default();
    let dns_endpoints = endpoints(objects, "kube-system", "kube-dns");
    if dns_endpoints.is_empty() {
        notes.push(
            "kube-system/kube-dns has no ready endpoints: only the service IP is probed".into(),
        );
    }
    for (ip, pod, ports) in dns_endpoints {
        let mut chosen: Vec<(Protocol, u16)> = ports
            .iter()
            .filter(|(_, port, name)| match name {
                Some(n) if !dns_names.is_empty() => dns_names.contains(n),
                _ => *port == 53,
            })
            .filter_map(|(proto, port, _)| Some(((*proto)?, *port)))
            .collect();
        if chosen.is_empty() {
            chosen = vec![(Protocol::Udp, 53), (Protocol::Tcp, 53)];
        }
        for (protocol, port) in chosen {
            out.push(Target {
                name: pod
                    .clone()
                    .unwrap_or_else(|| format!("kube-system/kube-dns endpoint {ip}")),
                service: Some("kube-system/kube-dns".into()),
                ip,
                port,
                protocol,
                kind: ProbeKind::Dns,
            });
        }
    }

    // kube-dns is probed above; the same services as the static paths judge.
    for (ns, name) in app_services(objects) {
        for (ip, pod, ports) in endpoints(objects, &ns, &name) {
            for (proto, port, port_name) in ports {
                if proto != Some(Protocol::Tcp) {
                    notes.push(format!(
                        "{ns}/{name} {ip} port {port}: only TCP service ports are probed (no generic UDP or SCTP probe)"
                    ));
                    continue;
                }
                out.push(Target {
                    name: pod
                        .clone()
                        .unwrap_or_else(|| format!("{ns}/{name} endpoint {ip}")),
                    service: Some(format!("{ns}/{name}")),
                    ip,
                    port,
                    protocol: Protocol::Tcp,
                    kind: if is_http(port, port_name.as_deref()) {
                        ProbeKind::Http
                    } else {
                        ProbeKind::TcpConnect
                    },
                });
            }
        }
    }
    // One probe per (ip, protocol, port): the first (DNS before services) wins.
    let mut seen = std::collections::HashSet::new();
    out.retain(|t| seen.insert((t.ip, t.protocol, t.port)));
    notes.sort();
    notes.dedup();
    (out, notes)
}

// ---------------------------------------------------------------------------------------
// Probes.

/// Checks that `source` is an address of this host, so a typo fails once, up front.
pub fn check_source(source: IpAddr) -> io::Result<()> {
    std::net::UdpSocket::bind((source, 0)).map(drop)
}

fn bind_addr(source: Option<IpAddr>, dst: IpAddr) -> io::Result<SocketAddr> {
    match source {
        Some(s) if s.is_ipv4() != dst.is_ipv4() => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source {s} is not of the address family of {dst}"),
        )),
        Some(s) => Ok(SocketAddr::new(s, 0)),
        None if dst.is_ipv4() => Ok(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0)),
        None => Ok(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)),
    }
}

/// The address the kernel would send from: connecting a UDP socket is a route lookup and
/// sends nothing.
fn route_source(source: Option<IpAddr>, dst: IpAddr) -> Option<IpAddr> {
    if source.is_some() {
        return source;
    }
    let sock = std::net::UdpSocket::bind(bind_addr(None, dst).ok()?).ok()?;
    sock.connect((dst, 9)).ok()?;
    sock.local_addr().ok().map(|a| a.ip())
}

async fn tcp_connect(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<TcpStream> {
    let sock = if dst.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if source.is_some() {
        sock.bind(bind_addr(source, dst.ip())?)?;
    }
    sock.connect(dst).await
}

fn dns_query(name: &Name) -> (u16, Vec<u8>) {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(name.clone(), RecordType::A));
    // Encoding a single question with a valid name cannot fail; an empty packet would
    // surface as a probe error, not a panic.
    (msg.metadata.id, msg.to_vec().unwrap_or_default())
}

fn describe_response(msg: &Message) -> String {
    let n = msg.answers.len();
    format!(
        "{:?}, {n} answer{}",
        msg.metadata.response_code,
        if n == 1 { "" } else { "s" }
    )
}

fn is_response_to(msg: &Message, id: u16) -> bool {
    msg.metadata.id == id && msg.metadata.message_type == MessageType::Response
}

async fn dns_udp(dst: SocketAddr, source: Option<IpAddr>, name: &Name) -> io::Result<String> {
    let sock = UdpSocket::bind(bind_addr(source, dst.ip())?).await?;
    // Connected, so an ICMP port unreachable comes back as ECONNREFUSED and only the
    // target's datagrams are received.
    sock.connect(dst).await?;
    let (id, query) = dns_query(name);
    sock.send(&query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Malformed or foreign datagrams are ignored as a resolver would; the timeout ends it.
        if let Ok(msg) = Message::from_vec(&buf[..n]) {
            if is_response_to(&msg, id) {
                return Ok(describe_response(&msg));
            }
        }
    }
}

async fn dns_tcp(dst: SocketAddr, source: Option<IpAddr>, name: &Name) -> io::Result<String> {
    let mut stream = tcp_connect(dst, source).await?;
    let (id, query) = dns_query(name);
    let len = u16::try_from(query.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "query too long"))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    stream.write_all(&framed).await?;
    let len = stream.read_u16().await?;
    let mut body = vec![0u8; usize::from(len)];
    stream.read_exact(&mut body).await?;
    let msg = Message::from_vec(&body).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("malformed DNS response: {e}"),
        )
    })?;
    if !is_response_to(&msg, id) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "response id {} does not match query id {id}",
                msg.metadata.id
            ),
        ));
    }
    Ok(describe_response(&msg))
}

async fn http_get(dst: SocketAddr, source: Option<IpAddr>) -> io::Result<String> {
    let mut stream = tcp_connect(dst, source).await?;
    let host = match dst.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", dst.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", dst.port()),
    };
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: clusterdns-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    let line_end = loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            break end;
        }
        if buf.len() >= MAX_STATUS_LINE {
            break buf.len();
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let line = String::from_utf8_lossy(&buf[..line_end.min(buf.len())]).into_owned();
    let mut words = line.split(' ');
    let version_ok = words.next().is_some_and(|v| v.starts_with("HTTP/1."));
    let status_ok = words
        .next()
        .is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()));
    if version_ok && status_ok {
        Ok(line)
    } else {
        let shown: String = line.chars().take(60).collect();
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP status line: {shown:?}"),
        ))
    }
}

async fn attempt(t: &Target, source: Option<IpAddr>, name: &Name) -> io::Result<String> {
    let dst = SocketAddr::new(t.ip, t.port);
    match (t.kind, t.protocol) {
        (ProbeKind::Dns, Protocol::Udp) => dns_udp(dst, source, name).await,
        (ProbeKind::Dns, Protocol::Tcp) => dns_tcp(dst, source, name).await,
        (ProbeKind::TcpConnect, Protocol::Tcp) => {
            tcp_connect(dst, source).await.map(|_| "connected".into())
        }
        (ProbeKind::Http, Protocol::Tcp) => http_get(dst, source).await,
        (kind, proto) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("no {} probe over {}", kind.as_str(), proto.as_str()),
        )),
    }
}

/// One probe, bounded by `timeout`.
pub async fn probe_one(t: &Target, opts: &ActiveOptions, name: &Name) -> LiveResult {
    let start = Instant::now();
    let result = tokio::time::timeout(opts.timeout, attempt(t, opts.source, name)).await;
    let latency = start.elapsed();
    let (outcome, detail) = match result {
        Err(_) => (Outcome::Timeout, None),
        Ok(Ok(detail)) => (Outcome::Ok, Some(detail)),
        Ok(Err(e)) => match e.kind() {
            io::ErrorKind::ConnectionRefused => (Outcome::Refused, None),
            io::ErrorKind::TimedOut => (Outcome::Timeout, None),
            _ => (Outcome::Error(e.to_string()), None),
        },
    };
    LiveResult {
        target: t.clone(),
        source: route_source(opts.source, t.ip),
        outcome,
        detail,
        latency,
    }
}

/// Probes every target, at most `opts.concurrency` at once; results in target order.
pub async fn probe_all(targets: &[Target], opts: &ActiveOptions) -> Vec<LiveResult> {
    let name = Name::from_str(&opts.query).unwrap_or_else(|_| Name::root());
    let permits = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let name = &name;
    futures::future::join_all(targets.iter().map(|t| {
        let permits = permits.clone();
        async move {
            // The semaphore is never closed, so acquiring cannot fail; without a permit the
            // probe would still run, only unthrottled.
            let _permit = permits.acquire().await.ok();
            probe_one(t, opts, name).await
        }
    }))
    .await
}

// ---------------------------------------------------------------------------------------
// Static verdicts beside live results.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Agreement {
    Agree,
    Disagree,
    /// Nothing to agree with: no static verdict, `unknown`, mixed verdicts, or the probe
    /// could not run.
    Info,
}

impl Agreement {
    pub fn as_str(self) -> &'static str {
        match self {
            Agreement::Agree => "agree",
            Agreement::Disagree => "disagree",
            Agreement::Info => "info",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LiveCheck {
    pub result: LiveResult,
    /// The static verdict compared with, when there is one.
    pub static_verdict: Option<Verdict>,
    pub agreement: Agreement,
    pub note: String,
    /// Indices of the findings compared with.
    pub findings: Vec<usize>,
}

fn covers(addr: &Addr, ip: IpAddr) -> bool {
    match addr {
        Addr::Ip(a) => *a == ip,
        Addr::Block(net) => net.contains(&ip),
    }
}

fn judge_pair(verdict: Verdict, outcome: &Outcome) -> (Agreement, &'static str) {
    match (verdict, outcome) {
        (_, Outcome::Error(_)) => (Agreement::Info, "the probe could not run"),
        (Verdict::Unknown, _) => (
            Agreement::Info,
            "the static verdict is unknown; the live result decides",
        ),
        (Verdict::Allowed, Outcome::Ok) | (Verdict::Blocked, Outcome::Timeout) => {
            (Agreement::Agree, "")
        }
        (Verdict::Allowed, Outcome::Refused) => (
            Agreement::Agree,
            "the packets got through, but nothing listens on the port",
        ),
        (Verdict::Allowed, Outcome::Timeout) => (
            Agreement::Disagree,
            "the security groups and ACLs allow it, but nothing came back: something else drops it (host firewall, network policy, kube-proxy rules) or the AWS input is stale",
        ),
        (Verdict::Blocked, Outcome::Ok) | (Verdict::Blocked, Outcome::Refused) => (
            Agreement::Disagree,
            "the security groups or ACLs block it, but the target answered: the AWS input is stale, or the probe did not cross the security group judged",
        ),
    }
}

/// Sets every live result beside the static findings for the same (destination IP, protocol,
/// port): those whose source covers the probe's source address when there are any, else all.
pub fn compare(findings: &[Finding], results: Vec<LiveResult>) -> Vec<LiveCheck> {
    results
        .into_iter()
        .map(|result| {
            let t = &result.target;
            let same_dst: Vec<usize> = findings
                .iter()
                .enumerate()
                .filter(|(_, f)| {
                    f.to_addr == Addr::Ip(t.ip)
                        && f.protocol == t.protocol.number()
                        && f.port == t.port
                })
                .map(|(i, _)| i)
                .collect();
            let from_here: Vec<usize> = match result.source {
                Some(src) => same_dst
                    .iter()
                    .copied()
                    .filter(|&i| covers(&findings[i].from_addr, src))
                    .collect(),
                None => Vec::new(),
            };
            let (chosen, elsewhere) = if from_here.is_empty() {
                (same_dst, true)
            } else {
                (from_here, false)
            };
            let mut verdicts: Vec<Verdict> = chosen.iter().map(|&i| findings[i].judgement.verdict).collect();
            verdicts.sort();
            verdicts.dedup();
            let (static_verdict, agreement, note) = match verdicts.as_slice() {
                // The row says "no static verdict"; a note would repeat it.
                [] => (None, Agreement::Info, String::new()),
                [v] => {
                    let (agreement, why) = judge_pair(*v, &result.outcome);
                    let mut note = why.to_string();
                    if elsewhere && result.source.is_some() {
                        // The static findings judge other sources: say so beside the verdict.
                        if !note.is_empty() {
                            note.push_str("; ");
                        }
                        note.push_str("no static finding from this source: compared with the verdict for other sources");
                    }
                    (Some(*v), agreement, note)
                }
                many => {
                    let list: Vec<String> = many.iter().map(Verdict::to_string).collect();
                    (
                        None,
                        Agreement::Info,
                        format!(
                            "the static verdicts differ by source ({}) and none covers this source",
                            list.join(", ")
                        ),
                    )
                }
            };
            LiveCheck {
                result,
                static_verdict,
                agreement,
                note,
                findings: chosen,
            }
        })
        .collect()
}

/// 1 when a live probe failed (every target is on a path the cluster needs: DNS, or a
/// service port) or a live result disagrees with the static verdict; else 0.
pub fn exit_code(checks: &[LiveCheck]) -> u8 {
    let failed = checks
        .iter()
        .any(|c| c.result.outcome != Outcome::Ok || c.agreement == Agreement::Disagree);
    u8::from(failed)
}

// ---------------------------------------------------------------------------------------
// Rendering.

#[derive(Debug, Serialize)]
pub struct StaticJson {
    pub verdict: Option<Verdict>,
    pub agreement: Agreement,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct LiveJson {
    pub target: Target,
    pub source: Option<IpAddr>,
    pub outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub latency_ms: f64,
    #[serde(rename = "static")]
    pub static_: StaticJson,
}

pub fn live_json(c: &LiveCheck) -> LiveJson {
    let r = &c.result;
    LiveJson {
        target: r.target.clone(),
        source: r.source,
        outcome: r.outcome.as_str(),
        error: match &r.outcome {
            Outcome::Error(e) => Some(e.clone()),
            _ => None,
        },
        detail: r.detail.clone(),
        // Microsecond precision is plenty and keeps the JSON readable.
        latency_ms: (r.latency.as_micros() as f64) / 1000.0,
        static_: StaticJson {
            verdict: c.static_verdict,
            agreement: c.agreement,
            note: c.note.clone(),
        },
    }
}

#[derive(Debug, Serialize)]
struct FindingWithLive {
    #[serde(flatten)]
    finding: FindingJson,
    /// The live probe of the same destination from this finding's source, if one ran.
    live: Option<LiveJson>,
}

#[derive(Debug, Serialize)]
struct ActiveJson {
    findings: Vec<FindingWithLive>,
    live: Vec<LiveJson>,
    disagreements: Vec<LiveJson>,
    notes: Vec<String>,
}

pub fn render_json(findings: &[Finding], checks: &[LiveCheck], notes: &[String]) -> String {
    let findings = findings
        .iter()
        .enumerate()
        .map(|(i, f)| FindingWithLive {
            finding: report::finding_json(f),
            live: checks
                .iter()
                .find(|c| c.findings.contains(&i))
                .map(live_json),
        })
        .collect();
    let doc = ActiveJson {
        findings,
        live: checks.iter().map(live_json).collect(),
        disagreements: checks
            .iter()
            .filter(|c| c.agreement == Agreement::Disagree)
            .map(live_json)
            .collect(),
        notes: notes.to_vec(),
    };
    // Plain strings and numbers cannot fail to serialise; `{}` is the safe fallback.
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "{}".into());
    text.push('\n');
    text
}

fn target_cell(t: &Target) -> String {
    let addr = SocketAddr::new(t.ip, t.port);
    match &t.service {
        // Unless the name already is the service's (`ns/svc service IP`, `ns/svc endpoint IP`).
        Some(svc) if !t.name.starts_with(&format!("{svc} ")) => {
            format!(
                "{} {}/{} {} ({svc}) {addr}",
                t.kind.as_str(),
                t.protocol.as_str(),
                t.port,
                t.name
            )
        }
        _ => format!(
            "{} {}/{} {} {addr}",
            t.kind.as_str(),
            t.protocol.as_str(),
            t.port,
            t.name
        ),
    }
}

fn result_cell(r: &LiveResult) -> String {
    let ms = (r.latency.as_micros() as f64) / 1000.0;
    let what = match (&r.outcome, &r.detail) {
        (Outcome::Error(e), _) => e.clone(),
        (_, Some(d)) => d.clone(),
        (_, None) => r.outcome.as_str().into(),
    };
    format!("{what} in {ms:.1}ms")
}

fn source_text(r: &LiveResult) -> String {
    r.source.map_or_else(|| "?".into(), |s| s.to_string())
}

/// The table: disagreements first (when there is a static part), then the static table,
/// then every live result.
pub fn render_table(
    findings: Option<(&[Finding], &[String])>,
    checks: &[LiveCheck],
    notes: &[String],
) -> String {
    let mut out = String::new();
    if findings.is_some() {
        let bad: Vec<&LiveCheck> = checks
            .iter()
            .filter(|c| c.agreement == Agreement::Disagree)
            .collect();
        if bad.is_empty() {
            out.push_str("== DISAGREEMENTS between static verdicts and live probes: none\n\n");
        } else {
            let _ = writeln!(
                out,
                "== DISAGREEMENTS between static verdicts and live probes: {}",
                bad.len()
            );
            for c in bad {
                let _ = writeln!(
                    out,
                    "DISAGREE {} from {}: static {}, live {} ({})",
                    target_cell(&c.result.target),
                    source_text(&c.result),
                    c.static_verdict
                        .map_or_else(|| "none".into(), |v| v.to_string()),
                    c.result.outcome.as_str(),
                    result_cell(&c.result)
                );
                let _ = writeln!(out, "         {}", c.note);
            }
            out.push('\n');
        }
    }
    if let Some((findings, static_notes)) = findings {
        out.push_str(&report::render_table(findings, static_notes));
        out.push('\n');
    }
    let ok = checks
        .iter()
        .filter(|c| c.result.outcome == Outcome::Ok)
        .count();
    let _ = writeln!(out, "== live probes: {ok} ok, {} failed", checks.len() - ok);
    for c in checks {
        let r = &c.result;
        let mut line = format!(
            "{:<8} {} from {}: {}",
            r.outcome.as_str().to_uppercase(),
            target_cell(&r.target),
            source_text(r),
            result_cell(r)
        );
        if findings.is_some() {
            match c.static_verdict {
                Some(v) => {
                    let _ = write!(line, "; static {v}: {}", c.agreement.as_str());
                }
                None => line.push_str("; no static verdict"),
            }
        }
        let _ = writeln!(out, "{line}");
        if !c.note.is_empty() && findings.is_some() && c.agreement != Agreement::Disagree {
            let _ = writeln!(out, "         {}", c.note);
        }
    }
    if checks.is_empty() {
        out.push_str("no live targets: the cluster input has no DNS service, DNS endpoints or service endpoints\n");
    }
    for note in notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

pub fn render_targets(targets: &[Target], json: bool) -> String {
    if json {
        let mut text = serde_json::to_string_pretty(targets).unwrap_or_else(|_| "[]".into());
        text.push('\n');
        return text;
    }
    let mut out = String::new();
    for t in targets {
        let _ = writeln!(out, "{}", target_cell(t));
    }
    out
}

/// `clusterdns probe --active`: the static part when `aws_dir` is given, live probes of every
/// target the cluster objects name, and the two side by side. Exit status: 2 bad input, 1 a
/// path blocked, a live probe failed or a disagreement, else 0.
pub async fn run_active(
    aws_dir: Option<&Path>,
    objects: &ObjectSet,
    opts: &ActiveOptions,
    json: bool,
) -> Result<(String, u8), ProbeError> {
    let model = aws_dir.map(aws::load).transpose()?;
    Ok(run_active_model(model.as_ref(), objects, opts, json).await)
}

/// `run_active` with the AWS side already read (from a directory or the AWS APIs).
pub async fn run_active_model(
    model: Option<&aws::VpcModel>,
    objects: &ObjectSet,
    opts: &ActiveOptions,
    json: bool,
) -> (String, u8) {
    let static_part = model.map(|m| judge_all(m, objects));
    let (targets, notes) = targets(objects);
    let results = probe_all(&targets, opts).await;
    let no_findings: Vec<Finding> = Vec::new();
    let findings = static_part.as_ref().map_or(&no_findings, |(f, _)| f);
    let checks = compare(findings, results);
    let static_code = static_part
        .as_ref()
        .map_or(0, |(f, _)| report::exit_code(f));
    let code = static_code.max(exit_code(&checks));
    let text = if json {
        let mut all_notes = static_part
            .as_ref()
            .map_or_else(Vec::new, |(_, n)| n.clone());
        all_notes.extend(notes);
        render_json(findings, &checks, &all_notes)
    } else {
        let part = static_part
            .as_ref()
            .map(|(f, n)| (f.as_slice(), n.as_slice()));
        render_table(part, &checks, &notes)
    };
    (text, code)
}

#[cfg(test)]
mod tests {
    //! Targets and comparisons as pure functions; probes against servers on 127.0.0.1 only.

    use std::path::PathBuf;

    use tokio::net::TcpListener;

    use super::*;
    use crate::app::{self, ServeOptions};
    use crate::cluster::objects::load_path;

    const SHORT: Duration = Duration::from_millis(300);

    fn live_fixture() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws/live-udp53")
    }

    fn target(ip: &str, port: u16, protocol: Protocol, kind: ProbeKind) -> Target {
        Target {
            name: "t".into(),
            service: None,
            ip: ip.parse().unwrap(),
            port,
            protocol,
            kind,
        }
    }

    fn opts(timeout: Duration) -> ActiveOptions {
        ActiveOptions {
            timeout,
            ..Default::default()
        }
    }

    #[test]
    fn targets_are_the_dns_service_ip_the_dns_endpoints_and_service_ports() {
        let objects = load_path(&live_fixture().join("cluster")).unwrap();
        let (list, notes) = targets(&objects);
        let rows: Vec<String> = list.iter().map(target_cell).collect();
        assert_eq!(
            rows,
            [
                "dns udp/53 kube-system/kube-dns service IP 10.250.2.10:53",
                "dns tcp/53 kube-system/kube-dns service IP 10.250.2.10:53",
                "dns udp/53 kube-system/coredns-a (kube-system/kube-dns) 10.250.2.2:53",
                "dns tcp/53 kube-system/coredns-a (kube-system/kube-dns) 10.250.2.2:53",
                "http tcp/80 demo/nginx-0 (demo/nginx) 10.250.2.3:80",
            ]
        );
        assert!(notes.is_empty(), "{notes:?}");
    }

    #[test]
    fn http_by_port_name_or_number_udp_ports_noted_and_v1_endpoints_used() {
        let mut objects = ObjectSet::default();
        objects
            .add_text(
                "apiVersion: v1\nkind: Service\nmetadata: {name: app, namespace: x}\nspec: {clusterIP: 10.0.0.9}\n---\n\
apiVersion: v1\nkind: Endpoints\nmetadata: {name: app, namespace: x}\nsubsets:\n- addresses: [{ip: 127.0.0.9}]\n  \
ports: [{name: http-web, port: 9000}, {name: metrics, port: 9153}, {port: 8080}, {name: syslog, port: 514, protocol: UDP}]\n",
                Path::new("test.yaml"),
            )
            .unwrap();
        let (list, notes) = targets(&objects);
        let kinds: Vec<(u16, ProbeKind)> = list.iter().map(|t| (t.port, t.kind)).collect();
        assert_eq!(
            kinds,
            [
                (9000, ProbeKind::Http),
                (9153, ProbeKind::TcpConnect),
                (8080, ProbeKind::Http)
            ]
        );
        assert_eq!(list[0].name, "x/app endpoint 127.0.0.9");
        // No kube-dns at all: said, not an error.
        assert!(notes
            .iter()
            .any(|n| n.contains("kube-dns has no ready endpoints")));
        assert!(notes.iter().any(|n| n.contains("port 514: only TCP")));
    }

    #[tokio::test]
    async fn dns_over_udp_and_tcp_get_an_answer_from_clusterdns() {
        let running = app::start(ServeOptions {
            dns_addr: "127.0.0.1:0".parse().unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
        let port = running.dns_addr.port();
        let list = [
            target("127.0.0.1", port, Protocol::Udp, ProbeKind::Dns),
            target("127.0.0.1", port, Protocol::Tcp, ProbeKind::Dns),
        ];
        let mut o = opts(DEFAULT_TIMEOUT);
        o.source = Some("127.0.0.1".parse().unwrap());
        for r in probe_all(&list, &o).await {
            assert_eq!(r.outcome, Outcome::Ok, "{r:?}");
            // The embedded demo has the kubernetes service.
            assert_eq!(r.detail.as_deref(), Some("NoError, 1 answer"), "{r:?}");
            assert_eq!(r.source, o.source);
        }
        running.shutdown().await;
    }

    #[tokio::test]
    async fn http_get_reads_a_status_line_and_rejects_other_protocols() {
        async fn serve_once(reply: &'static [u8]) -> u16 {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move {
                if let Ok((mut conn, _)) = listener.accept().await {
                    let mut buf = [0u8; 512];
                    let _ = conn.read(&mut buf).await;
                    let _ = conn.write_all(reply).await;
                }
            });
            port
        }
        let good = serve_once(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").await;
        let bad = serve_once(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        let silent_eof = serve_once(b"").await;
        let list = [
            target("127.0.0.1", good, Protocol::Tcp, ProbeKind::Http),
            target("127.0.0.1", bad, Protocol::Tcp, ProbeKind::Http),
            target("127.0.0.1", silent_eof, Protocol::Tcp, ProbeKind::Http),
        ];
        let r = probe_all(&list, &opts(DEFAULT_TIMEOUT)).await;
        assert_eq!(r[0].outcome, Outcome::Ok);
        assert_eq!(r[0].detail.as_deref(), Some("HTTP/1.1 404 Not Found"));
        assert_eq!(
            r[1].outcome,
            Outcome::Error("not an HTTP status line: \"SSH-2.0-OpenSSH_9.6\"".into())
        );
        assert!(matches!(r[2].outcome, Outcome::Error(_)), "{:?}", r[2]);
    }

    #[tokio::test]
    async fn closed_ports_are_refused_and_silence_times_out() {
        // Ports that were just free: nothing listens on them.
        let tcp_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let udp_port = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap().port()
        };
        // Bound and never read: a UDP "server" behind a drop rule looks like this.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let list = [
            target("127.0.0.1", tcp_port, Protocol::Tcp, ProbeKind::TcpConnect),
            target("127.0.0.1", udp_port, Protocol::Udp, ProbeKind::Dns),
            target("127.0.0.1", silent_port, Protocol::Udp, ProbeKind::Dns),
            target("127.0.0.1", 53, Protocol::Udp, ProbeKind::Http),
        ];
        let r = probe_all(&list, &opts(SHORT)).await;
        assert_eq!(r[0].outcome, Outcome::Refused, "{:?}", r[0]);
        assert_eq!(r[1].outcome, Outcome::Refused, "{:?}", r[1]);
        assert_eq!(r[2].outcome, Outcome::Timeout, "{:?}", r[2]);
        assert!(r[2].latency >= SHORT);
        assert_eq!(
            r[3].outcome,
            Outcome::Error("no http probe over udp".into())
        );
        drop(silent);
    }

    #[tokio::test]
    async fn the_concurrency_limit_holds_probes_back() {
        let silent: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let list: Vec<Target> = silent
            .iter()
            .map(|s| {
                let port = s.local_addr().unwrap().port();
                target("127.0.0.1", port, Protocol::Udp, ProbeKind::Dns)
            })
            .collect();
        let mut o = opts(Duration::from_millis(100));
        o.concurrency = 1;
        let start = Instant::now();
        let r = probe_all(&list, &o).await;
        // One at a time: three timeouts back to back (a lower bound only, never flaky).
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert!(r.iter().all(|r| r.outcome == Outcome::Timeout));
    }

    #[tokio::test]
    async fn a_source_of_the_other_family_is_an_error_not_a_panic() {
        let mut o = opts(SHORT);
        o.source = Some("::1".parse().unwrap());
        let r = probe_all(&[target("127.0.0.1", 9, Protocol::Udp, ProbeKind::Dns)], &o).await;
        assert!(
            matches!(&r[0].outcome, Outcome::Error(e) if e.contains("not of the address family")),
            "{:?}",
            r[0]
        );
    }

    fn result(
        ip: &str,
        protocol: Protocol,
        port: u16,
        source: &str,
        outcome: Outcome,
    ) -> LiveResult {
        LiveResult {
            target: target(ip, port, protocol, ProbeKind::Dns),
            source: Some(source.parse().unwrap()),
            outcome,
            detail: None,
            latency: Duration::ZERO,
        }
    }

    #[test]
    fn live_results_are_compared_with_the_static_verdict_for_their_source() {
        let dir = live_fixture();
        let objects = load_path(&dir.join("cluster")).unwrap();
        let (findings, _) = judge_all(&aws::load(&dir).unwrap(), &objects);
        let a = "10.250.1.10";
        let checks = compare(
            &findings,
            vec![
                result("10.250.2.2", Protocol::Udp, 53, a, Outcome::Timeout),
                result("10.250.2.2", Protocol::Udp, 53, a, Outcome::Ok),
                result("10.250.2.2", Protocol::Tcp, 53, a, Outcome::Ok),
                result("10.250.2.2", Protocol::Tcp, 53, a, Outcome::Timeout),
                result("10.250.2.2", Protocol::Tcp, 53, a, Outcome::Refused),
                result(
                    "10.250.2.2",
                    Protocol::Tcp,
                    53,
                    a,
                    Outcome::Error("x".into()),
                ),
                result("10.250.2.10", Protocol::Udp, 53, a, Outcome::Ok),
                // From an address no finding starts at: the other sources' verdict.
                result(
                    "10.250.2.2",
                    Protocol::Udp,
                    53,
                    "10.250.9.9",
                    Outcome::Timeout,
                ),
            ],
        );
        let got: Vec<(Option<Verdict>, Agreement)> = checks
            .iter()
            .map(|c| (c.static_verdict, c.agreement))
            .collect();
        use Agreement::*;
        use Verdict::*;
        assert_eq!(
            got,
            [
                (Some(Blocked), Agree),
                (Some(Blocked), Disagree),
                (Some(Allowed), Agree),
                (Some(Allowed), Disagree),
                (Some(Allowed), Agree),
                (Some(Allowed), Info),
                (None, Info),
                (Some(Blocked), Agree),
            ]
        );
        assert!(checks[4].note.contains("nothing listens"));
        assert!(checks[7]
            .note
            .contains("no static finding from this source"));
        // Each live result points at the findings it was compared with.
        for c in &checks[..6] {
            assert!(!c.findings.is_empty());
            for &i in &c.findings {
                assert_eq!(findings[i].from_addr, Addr::Ip(a.parse().unwrap()));
            }
        }
        assert_eq!(exit_code(&checks[2..3]), 0);
        assert_eq!(exit_code(&checks[0..1]), 1, "a failed probe exits 1");
        assert_eq!(exit_code(&checks[1..2]), 1, "a disagreement exits 1");

        let table = render_table(Some((&findings, &[])), &checks, &[]);
        assert!(
            table.starts_with("== DISAGREEMENTS between static verdicts and live probes: 2\nDISAGREE dns udp/53 t 10.250.2.2:53 from 10.250.1.10: static blocked, live ok"),
            "{table}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render_json(&findings, &checks, &[])).unwrap();
        assert_eq!(json["disagreements"].as_array().unwrap().len(), 2);
        assert_eq!(json["live"].as_array().unwrap().len(), checks.len());
    }

    #[test]
    fn mixed_static_verdicts_for_an_uncovered_source_are_information() {
        let dir = live_fixture();
        let objects = load_path(&dir.join("cluster")).unwrap();
        let (mut findings, _) = judge_all(&aws::load(&dir).unwrap(), &objects);
        // A second source with the opposite verdict for the same destination.
        let mut other = findings
            .iter()
            .find(|f| f.to_addr == Addr::Ip("10.250.2.2".parse().unwrap()) && f.protocol == UDP)
            .unwrap()
            .clone();
        other.from_addr = Addr::Ip("10.250.1.11".parse().unwrap());
        other.judgement.verdict = Verdict::Allowed;
        findings.push(other);
        let checks = compare(
            &findings,
            vec![result(
                "10.250.2.2",
                Protocol::Udp,
                53,
                "10.250.9.9",
                Outcome::Ok,
            )],
        );
        assert_eq!(checks[0].agreement, Agreement::Info);
        assert_eq!(checks[0].static_verdict, None);
        assert!(
            checks[0]
                .note
                .contains("differ by source (blocked, allowed)"),
            "{}",
            checks[0].note
        );
    }
}
