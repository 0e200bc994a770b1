//! The cluster zone as an RFC 1035 zone file: what `clusterdns export-zone` prints. Useful to
//! serve the same records from another server (the benchmarks compare against NSD and Knot
//! this way) and to see at a glance what the cluster publishes. Pod records (`*.pod.<zone>`)
//! are synthesised per query and cannot be listed; they are left out.

use std::fmt::Write;
use std::net::IpAddr;
use std::path::PathBuf;

use crate::cluster::model::{Port, ServiceKind};
use crate::cluster::snapshot::{EndpointEntry, Label, Snapshot};

fn addr_rr(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("A\t{v4}"),
        IpAddr::V6(v6) => format!("AAAA\t{v6}"),
    }
}

fn weight(n: usize) -> usize {
    (100 / n.max(1)).max(1)
}

fn header(out: &mut String, origin: &str, snap: &Snapshot, ttl: u32) {
    let _ = writeln!(out, "$ORIGIN {origin}");
    let _ = writeln!(out, "$TTL {ttl}");
    let _ = writeln!(
        out,
        "@\t{}\tIN\tSOA\tns.dns.{origin} hostmaster.{origin} {} 7200 1800 86400 {ttl}",
        ttl.min(300),
        snap.serial
    );
    let _ = writeln!(out, "@\t{ttl}\tIN\tNS\tns.dns.{origin}");
}

/// The forward zone (`zone` such as `cluster.local`).
pub fn forward_zone(snap: &Snapshot, zone: &str, ttl: u32) -> String {
    let origin = format!("{}.", zone.trim_end_matches('.').to_ascii_lowercase());
    let mut out = String::new();
    header(&mut out, &origin, snap, ttl);
    for ip in &snap.dns_service_ips {
        let _ = writeln!(out, "ns.dns\t{ttl}\tIN\t{}", addr_rr(ip));
    }
    let _ = writeln!(out, "dns-version\t28800\tIN\tTXT\t\"1.1.0\"");
    let mut services: Vec<_> = snap.services().collect();
    services.sort_by(|a, b| {
        (&a.service.namespace, &a.service.name).cmp(&(&b.service.namespace, &b.service.name))
    });
    for entry in services {
        let svc = &entry.service;
        let base = format!(
            "{}.{}.svc",
            svc.name.to_ascii_lowercase(),
            svc.namespace.to_ascii_lowercase()
        );
        let _ = writeln!(out, "; {}/{}", svc.namespace, svc.name);
        let ready: Vec<&EndpointEntry> = entry.ready_endpoints().collect();
        let named = |ports: &[Port]| -> Vec<Port> {
            ports
                .iter()
                .filter(|p| !p.name.is_empty())
                .cloned()
                .collect()
        };
        match svc.kind {
            ServiceKind::ExternalName => {
                if let Some(target) = &svc.external_name {
                    let _ = writeln!(out, "{base}\t{ttl}\tIN\tCNAME\t{target}.");
                }
                continue;
            }
            ServiceKind::ClusterIp => {
                for ip in &svc.cluster_ips {
                    let _ = writeln!(out, "{base}\t{ttl}\tIN\t{}", addr_rr(ip));
                }
                // The server's weights: shared by every cluster IP x port before equal
                // records (one port number over UDP and TCP, the same on each IP) collapse.
                let ips = svc.cluster_ips.len();
                let w = weight(svc.ports.len() * ips);
                let mut seen: Vec<u16> = Vec::new();
                for p in svc.ports.iter() {
                    if seen.contains(&p.port) {
                        continue;
                    }
                    seen.push(p.port);
                    let _ = writeln!(
                        out,
                        "{base}\t{ttl}\tIN\tSRV\t0 {w} {} {base}.{origin}",
                        p.port
                    );
                }
                for p in named(&svc.ports) {
                    let _ = writeln!(
                        out,
                        "_{}._{}.{base}\t{ttl}\tIN\tSRV\t0 {} {} {base}.{origin}",
                        p.name.to_ascii_lowercase(),
                        p.protocol.as_str(),
                        weight(ips),
                        p.port
                    );
                }
            }
            ServiceKind::Headless => {
                for e in &ready {
                    let _ = writeln!(out, "{base}\t{ttl}\tIN\t{}", addr_rr(&e.address()));
                }
                // SRV per named port over every ready endpoint carrying it.
                let mut by_port: Vec<(Port, Vec<&EndpointEntry>)> = Vec::new();
                for e in &ready {
                    for p in named(e.ports()) {
                        match by_port.iter_mut().find(|(q, _)| *q == p) {
                            Some((_, list)) => list.push(e),
                            None => by_port.push((p, vec![e])),
                        }
                    }
                }
                for (p, eps) in &by_port {
                    // Endpoints sharing a hostname share one record, weighted as before.
                    let w = weight(eps.len());
                    let mut seen: Vec<Label> = Vec::new();
                    for e in eps {
                        if seen.contains(&e.label(false)) {
                            continue;
                        }
                        seen.push(e.label(false));
                        let _ = writeln!(
                            out,
                            "_{}._{}.{base}\t{ttl}\tIN\tSRV\t0 {w} {} {}.{base}.{origin}",
                            p.name.to_ascii_lowercase(),
                            p.protocol.as_str(),
                            p.port,
                            e.label(false)
                        );
                    }
                }
            }
        }
        for e in &ready {
            let _ = writeln!(
                out,
                "{}.{base}\t{ttl}\tIN\t{}",
                e.label(false),
                addr_rr(&e.address())
            );
        }
    }
    out
}

/// A reverse zone (`in-addr.arpa` or `ip6.arpa`) with the PTRs the cluster answers.
pub fn reverse_zone(snap: &Snapshot, reverse: &str, cluster_zone: &str, ttl: u32) -> String {
    let origin = format!("{}.", reverse.trim_end_matches('.').to_ascii_lowercase());
    let zone = cluster_zone.trim_end_matches('.').to_ascii_lowercase();
    let v6 = origin == "ip6.arpa.";
    let mut out = String::new();
    header(&mut out, &origin, snap, ttl);
    let mut entries: Vec<_> = snap
        .ptr_entries()
        .filter(|(ip, _)| ip.is_ipv6() == v6)
        .collect();
    entries.sort_by_key(|(ip, _)| *ip);
    for (ip, targets) in entries {
        let owner = ipnet_reverse(&ip);
        for t in targets {
            let (service, namespace) = (t.service(), t.namespace());
            let name = match t.endpoint() {
                None => format!("{service}.{namespace}.svc.{zone}."),
                Some(index) => {
                    let key = format!("{service}.{namespace}");
                    let Some(e) = snap.service(&key).and_then(|s| s.endpoints.get(index)) else {
                        continue;
                    };
                    format!("{}.{service}.{namespace}.svc.{zone}.", e.label(false))
                }
            };
            let _ = writeln!(out, "{owner}\t{ttl}\tIN\tPTR\t{name}");
        }
    }
    out
}

fn ipnet_reverse(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                let _ = write!(s, "{:x}.{:x}.", b & 0xf, b >> 4);
            }
            s + "ip6.arpa."
        }
    }
}

/// `clusterdns export-zone` flags.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Kubernetes objects as `kubectl get -o yaml` prints them; default: the embedded demo.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// Read the cluster from a live API server through this kubeconfig instead.
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    pub zone: String,
    /// Print this reverse zone instead: in-addr.arpa or ip6.arpa.
    #[arg(long, value_name = "ZONE")]
    pub reverse: Option<String>,
    #[arg(long, default_value_t = 5)]
    pub ttl: u32,
}

/// `clusterdns export-zone`.
pub async fn run(args: ExportArgs) -> anyhow::Result<u8> {
    use crate::cluster::Store;
    let objects =
        crate::cluster::one_shot::load(args.manifests.as_deref(), args.kubeconfig.as_deref())
            .await?;
    let snap = Snapshot::build(
        std::sync::Arc::new(Store::from_objects(&objects)),
        crate::cluster::snapshot::now_serial(),
        true,
    );
    let text = match args.reverse.as_deref() {
        None => forward_zone(&snap, &args.zone, args.ttl),
        Some(r @ ("in-addr.arpa" | "ip6.arpa" | "in-addr.arpa." | "ip6.arpa.")) => {
            reverse_zone(&snap, r, &args.zone, args.ttl)
        }
        Some(other) => anyhow::bail!("--reverse {other}: expected in-addr.arpa or ip6.arpa"),
    };
    crate::output::emit(&text);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::file_source::embedded_objects;
    use crate::cluster::Store;
    use std::sync::Arc;

    #[test]
    fn the_demo_zone_has_the_records_the_server_answers() {
        let snap = Snapshot::build(
            Arc::new(Store::from_objects(&embedded_objects().unwrap())),
            7,
            true,
        );
        let z = forward_zone(&snap, "cluster.local", 5);
        assert!(z.contains("nginx.demo.svc\t5\tIN\tA\t10.100.12.34"), "{z}");
        assert!(z.contains(
            "_http._tcp.web.demo.svc\t5\tIN\tSRV\t0 50 80 web-0.web.demo.svc.cluster.local."
        ));
        assert!(z.contains("search.demo.svc\t5\tIN\tCNAME\tsearch.example.com."));
        assert!(
            !z.contains("web-2"),
            "not-ready endpoints are not published"
        );
        let r = reverse_zone(&snap, "in-addr.arpa", "cluster.local", 5);
        assert!(
            r.contains("34.12.100.10.in-addr.arpa.\t5\tIN\tPTR\tnginx.demo.svc.cluster.local."),
            "{r}"
        );
        let r6 = reverse_zone(&snap, "ip6.arpa", "cluster.local", 5);
        assert!(r6.contains("PTR\tapi.demo.svc.cluster.local."), "{r6}");
    }

    /// RFC 2181 section 5: no RRset holds a record twice. The demo's gateway exposes 443
    /// over TCP and UDP: one bare-name SRV record for it, weighted over all three ports.
    #[test]
    fn no_record_is_exported_twice() {
        let snap = Snapshot::build(
            Arc::new(Store::from_objects(&embedded_objects().unwrap())),
            7,
            true,
        );
        for z in [
            forward_zone(&snap, "cluster.local", 5),
            reverse_zone(&snap, "in-addr.arpa", "cluster.local", 5),
            reverse_zone(&snap, "ip6.arpa", "cluster.local", 5),
        ] {
            let mut seen = std::collections::HashSet::new();
            for line in z.lines().filter(|l| !l.starts_with(';')) {
                assert!(seen.insert(line), "twice: {line}");
            }
        }
        let z = forward_zone(&snap, "cluster.local", 5);
        let bare: Vec<&str> = z
            .lines()
            .filter(|l| l.starts_with("gateway.demo.svc\t5\tIN\tSRV"))
            .collect();
        assert_eq!(
            bare,
            [
                "gateway.demo.svc\t5\tIN\tSRV\t0 33 443 gateway.demo.svc.cluster.local.",
                "gateway.demo.svc\t5\tIN\tSRV\t0 33 514 gateway.demo.svc.cluster.local."
            ]
        );
    }
}
