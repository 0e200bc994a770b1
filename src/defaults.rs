//! The serve mode's built-in configuration: the Corefile `clusterdns serve` runs when no
//! `--corefile` is given, made from the flags (listen address, zone, TTL, pod mode,
//! upstreams). The sidecar's generated Corefile lives with the sidecar.

use std::net::SocketAddr;

use tracing::warn;

use crate::corefile;
use crate::dns::kubernetes::{parse_zone, PodMode};

/// What the built-in Corefile is made from (the serve flags of the same names).
#[derive(Debug, Clone, Copy)]
pub struct BuiltIn<'a> {
    /// Where DNS listens.
    pub dns_addr: SocketAddr,
    /// The cluster zone.
    pub zone: &'a str,
    /// Record TTL, 0-3600 seconds.
    pub ttl: u32,
    /// Pod records mode.
    pub pods: PodMode,
    /// `forward . <these>` (addresses or resolv.conf files); empty: cluster zones only.
    pub upstreams: &'a [String],
}

fn pods_word(p: PodMode) -> &'static str {
    match p {
        PodMode::Disabled => "disabled",
        PodMode::Insecure => "insecure",
        PodMode::Verified => "verified",
    }
}

/// The built-in configuration: the EKS Corefile on non-privileged localhost ports.
///
/// DNS on `opts.dns_addr` (default 127.0.0.1:1053); health 127.0.0.1:8080, ready
/// 127.0.0.1:8181, prometheus 127.0.0.1:9153. When the DNS port is 0 (tests and scripts
/// asking for a free port) the HTTP ports are 0 too, so instances never collide.
/// `forward . /etc/resolv.conf` (and with it `fallthrough in-addr.arpa ip6.arpa`) is added
/// once the forward plugin exists; without a forwarder, reverse names outside the cluster are
/// answered NXDOMAIN by `kubernetes`.
pub fn corefile(opts: &BuiltIn) -> anyhow::Result<String> {
    if opts.ttl > 3600 {
        anyhow::bail!("--ttl {}: must be between 0 and 3600 seconds", opts.ttl);
    }
    // The zone is spliced into Corefile text: only a valid DNS name may go there.
    let zone = parse_zone(opts.zone).map_err(anyhow::Error::msg)?;
    let zone = zone.to_ascii();
    if !corefile::one_corefile_word(&zone) {
        anyhow::bail!("invalid zone {:?}", opts.zone);
    }
    let ip = opts.dns_addr.ip();
    let port = opts.dns_addr.port();
    let (health, ready, metrics) = if port == 0 {
        (0, 0, 0)
    } else {
        (8080, 8181, 9153)
    };
    let http = |p: u16| format!("127.0.0.1:{p}");
    // Upstreams that are resolv.conf files without a nameserver are left out, with a word.
    let mut upstreams = Vec::new();
    for u in opts.upstreams {
        if !corefile::one_corefile_word(u) {
            anyhow::bail!("invalid upstream {u:?}");
        }
        let path = std::path::Path::new(u);
        if u.contains('/')
            && path.is_file()
            && crate::dns::build::resolv_conf_nameservers(path).is_empty()
        {
            warn!("{u} lists no nameserver: names outside the cluster will be refused");
            continue;
        }
        upstreams.push(u.clone());
    }
    let (fallthrough, forward) = if upstreams.is_empty() {
        (String::new(), String::new())
    } else {
        (
            "\n        fallthrough in-addr.arpa ip6.arpa".to_string(),
            format!(
                "\n    forward . {}\n    cache 30\n    loop",
                upstreams.join(" ")
            ),
        )
    };
    // Without a forwarder the block serves only the cluster's zones, so other names match no
    // block and are REFUSED (a `.` block would answer them SERVFAIL: no next plugin).
    let keys = if upstreams.is_empty() {
        format!("{zone}:{port} in-addr.arpa:{port} ip6.arpa:{port}")
    } else {
        format!(".:{port}")
    };
    Ok(format!(
        "{keys} {{
    bind {ip}
    errors
    health {}
    ready {}
    kubernetes {zone} in-addr.arpa ip6.arpa {{
        pods {}
        ttl {}{fallthrough}
    }}
    prometheus {}{forward}
    loadbalance
}}
",
        http(health),
        http(ready),
        pods_word(opts.pods),
        opts.ttl,
        http(metrics),
    ))
}
