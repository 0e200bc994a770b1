//! Sidecar mode: the node-local DNS cache, moved into the pod.
//!
//! Micro-VM (Fargate) pods run no DaemonSets, so NodeLocal DNSCache cannot serve them. The
//! sidecar is the same idea per pod: a caching forwarder on 127.0.0.1 that the pod's
//! resolv.conf points at (`dnsPolicy: None`), talking to the cluster DNS service over
//! persistent TCP connections. TCP matters on two counts: it sidesteps the conntrack race
//! that drops one of the parallel A/AAAA UDP packets (the 5 s timeouts of
//! kubernetes/kubernetes#56903), and one connection carries all of the pod's queries.
//! The cache serves stale answers while the cluster DNS is unreachable, and every upstream
//! is probed over UDP and TCP on a timer so dashboards see the path break before the
//! application does.
//!
//! It runs the ordinary pipeline from a generated Corefile (`errors`, `health`, `ready`,
//! `prometheus`, `cache`, `forward`), so the forwarder and cache behave, and are measured,
//! exactly as in the server.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use tokio_util::sync::CancellationToken;

use crate::corefile::{Transport, Upstream};
use crate::metrics::Metrics;
use crate::prober::active::{self, ActiveOptions, Outcome, ProbeKind, Protocol, Target};

#[derive(Debug, Clone)]
pub struct SidecarOptions {
    /// Where the pod's resolver sends its queries (UDP and TCP).
    pub listen: SocketAddr,
    /// The cluster DNS service (kube-dns ClusterIP) or other upstreams: `IP`, `IP:PORT`,
    /// `tls://IP[:PORT]`.
    pub upstreams: Vec<String>,
    /// Send queries upstream over UDP (retrying over TCP when truncated) instead of TCP.
    pub udp_upstream: bool,
    /// Longest time an answer is kept fresh (the cache plugin's TTL cap).
    pub cache_ttl: u32,
    /// How long past expiry an answer may be served while no upstream answers; 0 disables.
    pub serve_stale: Duration,
    /// HTTP endpoints: `host:port` (empty host: every interface, which kubelet probes need).
    pub health: String,
    pub ready: String,
    pub metrics: String,
    /// Probe every upstream over UDP and TCP this often; zero disables the probes.
    pub probe_interval: Duration,
    /// The name the probes ask for (any answer, even NXDOMAIN, proves the path).
    pub probe_name: String,
    /// Walk this resolv.conf's search path here (`autopath`): a name the pod's resolver
    /// would try under each search domain in turn (ndots:5 sends `www.example.com` as
    /// `www.example.com.<ns>.svc.cluster.local` first) is answered at the first try with a
    /// CNAME to the name that exists, so the pod sends one query instead of one per domain.
    pub autopath: Option<std::path::PathBuf>,
}

impl Default for SidecarOptions {
    fn default() -> Self {
        SidecarOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 53)),
            upstreams: Vec::new(),
            udp_upstream: false,
            cache_ttl: 30,
            serve_stale: Duration::from_secs(3600),
            // Not 8080/8181: those are the application's ports in many pods.
            health: ":8054".into(),
            ready: ":8055".into(),
            metrics: ":9153".into(),
            probe_interval: Duration::from_secs(10),
            probe_name: active::DEFAULT_QUERY.into(),
            autopath: None,
        }
    }
}

/// Text that is spliced into the Corefile must stay one word.
fn word(what: &str, s: &str) -> anyhow::Result<()> {
    if !crate::corefile::one_corefile_word(s) {
        anyhow::bail!("{what} {s:?} is not a single word");
    }
    Ok(())
}

/// The Corefile the sidecar runs.
pub fn corefile(opts: &SidecarOptions) -> anyhow::Result<String> {
    if opts.upstreams.is_empty() {
        anyhow::bail!(
            "sidecar: no upstream; pass --upstream with the cluster DNS service IP \
             (kubectl -n kube-system get svc kube-dns -o jsonpath='{{.spec.clusterIP}}')"
        );
    }
    for u in &opts.upstreams {
        word("upstream", u)?;
        if u.contains('/') && !u.starts_with("tls://") && !u.starts_with("dns://") {
            // resolv.conf files: the pod's own would point back at the sidecar.
            anyhow::bail!(
                "sidecar: upstream {u:?}: give addresses, not a resolv.conf (the pod's \
                 resolv.conf points at the sidecar itself)"
            );
        }
    }
    for (what, v) in [
        ("--health", &opts.health),
        ("--ready", &opts.ready),
        ("--metrics", &opts.metrics),
    ] {
        word(what, v)?;
    }
    let stale = if opts.serve_stale.is_zero() {
        String::new()
    } else {
        // verify: ask upstream first and fall back to the stale entry only when that fails, so
        // a changed service IP is never answered from an expired entry while DNS is healthy.
        format!(
            "\n        serve_stale {}s verify",
            opts.serve_stale.as_secs().max(1)
        )
    };
    let autopath = match &opts.autopath {
        Some(p) => {
            let p = p.to_string_lossy();
            word("--autopath", &p)?;
            format!("\n    autopath {p}")
        }
        None => String::new(),
    };
    let transport = if opts.udp_upstream {
        "prefer_udp"
    } else {
        "force_tcp"
    };
    Ok(format!(
        ".:{port} {{
    bind {ip}
    errors
    health {health}
    ready {ready}
    prometheus {metrics}{autopath}
    cache {ttl} {{
        prefetch 10 1m 20%{stale}
    }}
    forward . {upstreams} {{
        {transport}
        max_concurrent 1000
        health_check 5s
    }}
}}
",
        port = opts.listen.port(),
        ip = opts.listen.ip(),
        health = opts.health,
        ready = opts.ready,
        metrics = opts.metrics,
        ttl = opts.cache_ttl,
        upstreams = opts.upstreams.join(" "),
    ))
}

/// The plain-DNS upstream addresses of the sidecar's parsed Corefile (its `forward`, which
/// already resolved ports and transports); TLS upstreams are probed by the forwarder's own
/// health checks only.
pub fn probe_targets(config: &crate::corefile::Config) -> Vec<SocketAddr> {
    config
        .servers
        .iter()
        .filter_map(|b| b.forward())
        .flat_map(|f| &f.to)
        .filter_map(|u| match u {
            Upstream::Addr {
                transport: Transport::Dns,
                addr,
            } => Some(*addr),
            _ => None,
        })
        .collect()
}

/// Probes every upstream over UDP and TCP every `interval` into `clusterdns_probe_up`,
/// `clusterdns_probe_latency_seconds` and `clusterdns_probe_results_total`.
pub async fn probe_loop(
    upstreams: Vec<SocketAddr>,
    name: String,
    interval: Duration,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) {
    let targets: Vec<Target> = upstreams
        .iter()
        .flat_map(|a| {
            [Protocol::Udp, Protocol::Tcp].map(|protocol| Target {
                name: format!("upstream {a}"),
                service: None,
                ip: a.ip(),
                port: a.port(),
                protocol,
                kind: ProbeKind::Dns,
            })
        })
        .collect();
    let opts = ActiveOptions {
        // Shorter than the interval, so a probe round never overlaps the next.
        timeout: interval
            .mul_f32(0.8)
            .clamp(Duration::from_millis(100), Duration::from_secs(2)),
        query: name,
        ..ActiveOptions::default()
    };
    let qname = Name::from_str(&opts.query).unwrap_or_else(|_| Name::root());
    // Said on a change only: a dead upstream must not fill the log every interval.
    let mut last_ok: std::collections::HashMap<(SocketAddr, Protocol), bool> = Default::default();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let results =
            futures::future::join_all(targets.iter().map(|t| active::probe_one(t, &opts, &qname)))
                .await;
        for r in results {
            let target = SocketAddr::new(r.target.ip, r.target.port).to_string();
            let proto = r.target.protocol.as_str();
            let ok = r.outcome == Outcome::Ok;
            metrics.record_probe(&target, proto, r.outcome.as_str(), r.latency);
            let key = (
                SocketAddr::new(r.target.ip, r.target.port),
                r.target.protocol,
            );
            let was = last_ok.insert(key, ok);
            if !ok && was != Some(false) {
                tracing::warn!(
                    "sidecar probe: {} over {proto} to {target} failed: {}",
                    opts.query,
                    match &r.outcome {
                        Outcome::Error(e) => e.clone(),
                        o => o.as_str().to_string(),
                    }
                );
            } else if ok && was == Some(false) {
                tracing::info!("sidecar probe: {target} answers over {proto} again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corefile_is_tcp_cached_and_stale_by_default() {
        let o = SidecarOptions {
            upstreams: vec!["172.20.0.10".into()],
            ..Default::default()
        };
        let text = corefile(&o).unwrap();
        assert!(text.starts_with(".:53 {\n    bind 127.0.0.1\n"), "{text}");
        assert!(
            text.contains("forward . 172.20.0.10 {\n        force_tcp"),
            "{text}"
        );
        assert!(text.contains("serve_stale 3600s verify"), "{text}");
        let cfg = crate::corefile::parse_str(&text, std::path::Path::new("x"), &|_| None);
        assert!(cfg.is_ok(), "{cfg:?}");
    }

    #[test]
    fn bad_upstreams_are_refused() {
        for (ups, want) in [
            (vec![], "no upstream"),
            (vec!["/etc/resolv.conf".to_string()], "not a resolv.conf"),
            (vec!["1.2.3.4 }".to_string()], "single word"),
        ] {
            let o = SidecarOptions {
                upstreams: ups,
                ..Default::default()
            };
            let e = corefile(&o).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn probe_targets_default_to_port_53() {
        let o = SidecarOptions {
            upstreams: vec![
                "172.20.0.10".into(),
                "10.0.0.2:5353".into(),
                "dns://[fd00::a]:53".into(),
                "[fd00::b]".into(),
                "tls://9.9.9.9".into(),
            ],
            ..Default::default()
        };
        let text = corefile(&o).unwrap();
        let cfg = crate::corefile::parse_str(&text, std::path::Path::new("x"), &|_| None).unwrap();
        let t = probe_targets(&cfg);
        let want: Vec<SocketAddr> = [
            "172.20.0.10:53",
            "10.0.0.2:5353",
            "[fd00::a]:53",
            "[fd00::b]:53",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        assert_eq!(t, want);
    }
}
