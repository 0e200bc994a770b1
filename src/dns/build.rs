//! Corefile [`Config`] -> pipelines and listeners.
//!
//! ```text
//!  Config ─┬─ per server block: handlers in CoreDNS's fixed order -> Pipeline
//!          └─ per listen address (bind IP, port): the blocks served there -> Router
//!  query on a listener ─> Router: longest matching zone (Config::block_for) ─> that Pipeline
//!                                 (no block: REFUSED)
//! ```
//! A [`Router`] holds its routes behind `ArcSwap`, so `reload` swaps in new pipelines while
//! queries keep flowing.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;

use super::answer::Answer;
use super::cache::Cache;
use super::fastpath::{Meta, Peek};
use super::forward::Forward;
use super::interfaces;
use super::kubernetes::{parse_zone, Kubernetes, KubernetesConfig, PodMode};
use super::pipeline::{FastCache, FastLookup, Handler, Pipeline, Request, Responder, Stamp};
use super::plugins::autopath::{self, Autopath};
use super::plugins::loop_detect::{Fatal, LoopDetect};
use super::plugins::{acl, errors, hosts, loadbalance, log, rewrite, template};
use crate::cluster::labels::Selector;
use crate::cluster::ClusterView;
use crate::corefile::{
    self, BindAddr, Config, Fallthrough, PluginConfig, PluginKind, PodsMode, ServerBlock,
    Transport, Upstream,
};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Where in the Corefile, and what cannot be served.
    #[error("{pos}: {message}")]
    Block { pos: String, message: String },
}

fn block_err(block: &ServerBlock, message: impl Into<String>) -> BuildError {
    BuildError::Block {
        pos: block.pos.to_string(),
        message: message.into(),
    }
}

/// An error of one plugin's configuration, at the line that uses it.
fn plugin_err(block: &ServerBlock, kind: PluginKind, message: impl Into<String>) -> BuildError {
    BuildError::Block {
        pos: block
            .plugin_pos
            .get(&kind)
            .unwrap_or(&block.pos)
            .to_string(),
        message: message.into(),
    }
}

/// What the handlers share across blocks.
#[derive(Clone)]
pub struct BuildEnv {
    pub view: Arc<ClusterView>,
    pub fatal: Arc<Fatal>,
}

/// One server block, built.
pub struct BuiltBlock {
    pub pipeline: Arc<Pipeline>,
    /// Set when the block has `loop`: the probe to send once the listeners are up.
    pub loop_detect: Option<Arc<LoopDetect>>,
    /// Kept for their statistics (metrics).
    pub forward: Option<Arc<Forward>>,
    pub cache: Option<Arc<Cache>>,
}

/// Maps the Corefile's `kubernetes` options to the handler's (destructured so a new option
/// cannot be forgotten here).
pub fn kubernetes_config(c: &corefile::KubernetesConfig) -> Result<KubernetesConfig, String> {
    let corefile::KubernetesConfig {
        zones,
        endpoint,
        tls,
        kubeconfig,
        namespaces,
        namespace_labels,
        labels,
        pods,
        endpoint_pod_names,
        ttl,
        noendpoints,
        fallthrough,
        ignore_empty_service,
        startup_timeout: _,
        zonal,
        zone_first,
    } = c;
    // The API source (endpoint, tls, kubeconfig, startup_timeout) is chosen by the caller;
    // here only the answer-shaping options matter.
    if endpoint.is_some() || tls.is_some() || kubeconfig.is_some() {
        tracing::info!(
            "kubernetes: API server options are kept for the API source; answers come from the current cluster view"
        );
    }
    // The parser has checked both selectors; a Config built by hand gets the same message.
    let selector = |option: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| Selector::parse(t).map_err(|e| format!("kubernetes: {option}: {e}")))
            .transpose()
    };
    let labels = selector("labels", labels)?;
    let namespace_labels = selector("namespace_labels", namespace_labels)?;
    let zones = zones
        .iter()
        .map(|z| parse_zone(z))
        .collect::<Result<Vec<Name>, _>>()?;
    let fallthrough = match fallthrough {
        Fallthrough::Off => None,
        Fallthrough::Zones(z) => Some(
            z.iter()
                .map(|z| parse_zone(z))
                .collect::<Result<Vec<Name>, _>>()?,
        ),
    };
    Ok(KubernetesConfig {
        zones,
        ttl: *ttl,
        pods: match pods {
            PodsMode::Disabled => PodMode::Disabled,
            PodsMode::Insecure => PodMode::Insecure,
            PodsMode::Verified => PodMode::Verified,
        },
        endpoint_pod_names: *endpoint_pod_names,
        fallthrough,
        ignore_empty_service: *ignore_empty_service,
        noendpoints: *noendpoints,
        namespaces: namespaces.clone(),
        labels,
        namespace_labels,
        zonal: *zonal,
        zone_first: *zone_first,
    })
}

/// The nameservers of a resolv.conf, for messages.
pub fn resolv_conf_nameservers(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next().map(str::to_string))?
        })
        .collect()
}

fn describe_upstreams(block: &ServerBlock) -> String {
    let Some(f) = block.forward() else {
        return "(none: no forward plugin)".into();
    };
    let names: Vec<String> =
        f.to.iter()
            .map(|u| match u {
                Upstream::Addr { transport, addr } => format!("{}{addr}", transport.scheme()),
                Upstream::ResolvConf(p) => format!(
                    "{} ({})",
                    p.display(),
                    resolv_conf_nameservers(p).join(", ")
                ),
            })
            .collect();
    names.join(", ")
}

/// `autopath @kubernetes` needs the pods' namespaces by IP: a `kubernetes` plugin in the
/// same block with `pods verified` (CoreDNS silently does nothing otherwise). A resolv.conf
/// search path needs nothing else.
fn check_autopath(block: &ServerBlock, ap: &corefile::AutopathConfig) -> Result<(), BuildError> {
    if let corefile::AutopathSource::ResolvConf(_) = &ap.source {
        return Ok(());
    }
    match block.kubernetes() {
        None => Err(plugin_err(
            block,
            PluginKind::Autopath,
            "autopath @kubernetes needs a kubernetes plugin in the same server block",
        )),
        Some(k) if k.pods != PodsMode::Verified => Err(plugin_err(
            block,
            PluginKind::Autopath,
            "autopath @kubernetes needs 'pods verified' in the kubernetes block (it finds the client's namespace by pod IP)",
        )),
        Some(_) => Ok(()),
    }
}

fn autopath_handler(
    block: &ServerBlock,
    c: &corefile::AutopathConfig,
    env: &BuildEnv,
) -> Result<Autopath, BuildError> {
    let zones = c
        .zones
        .iter()
        .map(|z| parse_zone(z))
        .collect::<Result<Vec<Name>, _>>()
        .map_err(|m| plugin_err(block, PluginKind::Autopath, format!("autopath: {m}")))?;
    if let corefile::AutopathSource::ResolvConf(path) = &c.source {
        // Read when the Corefile is loaded (and reloaded), as CoreDNS does.
        let search = autopath::resolv_conf_search(path)
            .map_err(|m| plugin_err(block, PluginKind::Autopath, format!("autopath: {m}")))?;
        return Ok(Autopath::with_search(zones, search));
    }
    let k = block.kubernetes().ok_or_else(|| {
        plugin_err(
            block,
            PluginKind::Autopath,
            "autopath @kubernetes needs a kubernetes plugin",
        )
    })?;
    let cluster_zones = k
        .zones
        .iter()
        .map(|z| parse_zone(z))
        .collect::<Result<Vec<Name>, _>>()
        .map_err(|m| plugin_err(block, PluginKind::Kubernetes, format!("kubernetes: {m}")))?;
    let labels = k
        .labels
        .as_deref()
        .map(Selector::parse)
        .transpose()
        .map_err(|e| {
            plugin_err(
                block,
                PluginKind::Kubernetes,
                format!("kubernetes: labels: {e}"),
            )
        })?;
    Ok(Autopath::new(
        zones,
        cluster_zones,
        env.view.clone(),
        labels,
    ))
}

/// Builds one block's handlers in CoreDNS's order (the parser already sorted them).
pub fn build_block(block: &ServerBlock, env: &BuildEnv) -> Result<BuiltBlock, BuildError> {
    if let Some(ap) = block.autopath() {
        check_autopath(block, ap)?;
    }
    let mut handlers: Vec<Arc<dyn Handler>> = Vec::new();
    let mut loop_detect = None;
    let mut forward = None;
    // The cache wraps the handlers after it; it gets them once they are all built.
    let mut cache: Option<(Arc<Cache>, usize)> = None;
    // Likewise autopath, which walks the search path through the handlers after it.
    let mut autopath: Option<(Arc<Autopath>, usize)> = None;
    for plugin in &block.plugins {
        match plugin {
            // Server-level plugins: listeners and their TCP timeouts, HTTP endpoints, the
            // reload loop.
            PluginConfig::Timeouts(_)
            | PluginConfig::Reload(_)
            | PluginConfig::Bind(_)
            | PluginConfig::Ready(_)
            | PluginConfig::Health(_)
            | PluginConfig::Prometheus(_) => {}
            PluginConfig::Errors(c) => handlers.push(Arc::new(errors::Errors::new(c))),
            PluginConfig::Log(c) => handlers.push(Arc::new(log::Log::new(c))),
            PluginConfig::Loadbalance(_) => handlers.push(Arc::new(loadbalance::Loadbalance)),
            PluginConfig::Rewrite(c) => handlers.push(Arc::new(rewrite::Rewrite::new(c))),
            PluginConfig::Acl(c) => handlers.push(Arc::new(acl::Acl::new(c))),
            PluginConfig::Template(c) => handlers.push(Arc::new(template::Templates::new(c))),
            PluginConfig::Hosts(c) => handlers.push(Arc::new(hosts::Hosts::new(c.clone()))),
            PluginConfig::Kubernetes(c) => {
                let cfg = kubernetes_config(c)
                    .map_err(|m| plugin_err(block, PluginKind::Kubernetes, m))?;
                handlers.push(Arc::new(Kubernetes::new(cfg, env.view.clone())));
            }
            PluginConfig::Loop(_) => {
                let zone = block.zones.first().map(|z| z.zone.as_str()).unwrap_or(".");
                let l = Arc::new(LoopDetect::new(
                    zone,
                    describe_upstreams(block),
                    env.fatal.clone(),
                ));
                loop_detect = Some(l.clone());
                handlers.push(l);
            }
            PluginConfig::Cache(c) => {
                let zones: Vec<String> = block.zones.iter().map(|z| z.zone.clone()).collect();
                let c = Arc::new(Cache::new(c, &zones));
                handlers.push(c.clone());
                cache = Some((c, handlers.len()));
            }
            PluginConfig::Forward(c) => {
                let f = Arc::new(
                    Forward::new(c)
                        .map_err(|e| plugin_err(block, PluginKind::Forward, e.to_string()))?,
                );
                handlers.push(f.clone());
                forward = Some(f);
            }
            PluginConfig::Autopath(c) => {
                let a = Arc::new(autopath_handler(block, c, env)?);
                handlers.push(a.clone());
                autopath = Some((a, handlers.len()));
            }
        }
    }
    if let Some((c, next)) = &cache {
        c.set_next(Pipeline::new(handlers[*next..].to_vec()));
    }
    if let Some((a, next)) = &autopath {
        a.set_next(Pipeline::new(handlers[*next..].to_vec()));
    }
    Ok(BuiltBlock {
        pipeline: Arc::new(Pipeline::new(handlers)),
        loop_detect,
        forward,
        cache: cache.map(|(c, _)| c),
    })
}

/// A DNS listen address as configured: the port is the Corefile's (0 stays 0 here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenKey {
    pub ip: IpAddr,
    /// The interface index of a link-local IPv6 address from `bind IFACE`; 0 otherwise.
    pub scope: u32,
    pub port: u16,
}

impl ListenKey {
    pub fn socket_addr(&self, port: u16) -> SocketAddr {
        match self.ip {
            IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, self.scope)),
            ip => SocketAddr::new(ip, port),
        }
    }
}

impl std::fmt::Display for ListenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.socket_addr(self.port))
    }
}

/// The addresses (with their IPv6 scope) a block listens on: `bind`'s addresses and every
/// address of its interfaces, minus `except` (addresses or interfaces too), as CoreDNS does.
fn bind_ips(block: &ServerBlock) -> Result<Vec<(IpAddr, u32)>, BuildError> {
    let Some(bind) = block.bind() else {
        // CoreDNS's default: every interface, both families.
        return Ok(vec![
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        ]);
    };
    let by_name = bind
        .addrs
        .iter()
        .chain(&bind.except)
        .any(|a| matches!(a, BindAddr::Interface(_)));
    let ifaces = if by_name {
        interfaces::list().map_err(|e| {
            plugin_err(
                block,
                PluginKind::Bind,
                format!("bind: cannot list the network interfaces: {e}"),
            )
        })?
    } else {
        Vec::new()
    };
    let expand = |a: &BindAddr| -> Result<Vec<(IpAddr, u32)>, BuildError> {
        let name = match a {
            BindAddr::Ip(ip) => return Ok(vec![(*ip, 0)]),
            BindAddr::Interface(name) => name,
        };
        let found: Vec<&interfaces::IfAddr> =
            ifaces.iter().filter(|i| &i.interface == name).collect();
        if found.is_empty() {
            let mut known: Vec<&str> = ifaces.iter().map(|i| i.interface.as_str()).collect();
            known.sort_unstable();
            known.dedup();
            return Err(plugin_err(
                block,
                PluginKind::Bind,
                format!(
                    "bind: '{name}' is not an IP address nor a network interface of this host (interfaces: {})",
                    known.join(", ")
                ),
            ));
        }
        Ok(found
            .iter()
            .filter_map(|i| i.ip.map(|ip| (ip, i.scope)))
            .collect())
    };
    let mut except = Vec::new();
    for a in &bind.except {
        except.extend(expand(a)?.into_iter().map(|(ip, _)| ip));
    }
    let mut ips = Vec::new();
    for a in &bind.addrs {
        for (ip, scope) in expand(a)? {
            if !except.contains(&ip) && !ips.iter().any(|(i, _)| *i == ip) {
                ips.push((ip, scope));
            }
        }
    }
    if ips.is_empty() {
        return Err(plugin_err(
            block,
            PluginKind::Bind,
            "bind: no address left to listen on (the interfaces named have no IP address, or 'except' removes them all)",
        ));
    }
    Ok(ips)
}

/// Which blocks each listener serves (indexes into `config.servers`).
pub fn listeners(config: &Config) -> Result<BTreeMap<ListenKey, Vec<usize>>, BuildError> {
    let mut out: BTreeMap<ListenKey, Vec<usize>> = BTreeMap::new();
    for (i, block) in config.servers.iter().enumerate() {
        if let Some(z) = block.zones.iter().find(|z| z.transport != Transport::Dns) {
            return Err(block_err(
                block,
                format!(
                    "transport {} is not supported yet (only dns://)",
                    z.transport.scheme()
                ),
            ));
        }
        let ips = bind_ips(block)?;
        for z in &block.zones {
            for &(ip, scope) in &ips {
                let blocks = out
                    .entry(ListenKey {
                        ip,
                        scope,
                        port: z.port,
                    })
                    .or_default();
                if !blocks.contains(&i) {
                    blocks.push(i);
                }
            }
        }
    }
    Ok(out)
}

/// One listener's view of the configuration.
pub struct Routes {
    port: u16,
    /// Only the blocks served on this listener, for `Config::block_for`.
    config: Config,
    pipelines: Vec<Arc<Pipeline>>,
}

impl Routes {
    pub fn new(config: &Config, blocks: &[usize], built: &[BuiltBlock], port: u16) -> Routes {
        Routes {
            port,
            config: Config {
                servers: blocks.iter().map(|&i| config.servers[i].clone()).collect(),
            },
            pipelines: blocks.iter().map(|&i| built[i].pipeline.clone()).collect(),
        }
    }

    pub fn pipeline_for(&self, qname: &Name) -> Option<Arc<Pipeline>> {
        self.route(qname).map(|(p, _)| p)
    }

    /// The pipeline for `qname` and the zone that chose it (the `zone` metric label).
    pub fn route(&self, qname: &Name) -> Option<(Arc<Pipeline>, Arc<str>)> {
        let name = super::plugins::lower_fqdn(qname);
        let block = self.config.block_for(&name, self.port)?;
        let i = self
            .config
            .servers
            .iter()
            .position(|b| std::ptr::eq(b, block))?;
        let zone = block
            .zones
            .iter()
            .filter(|z| z.port == self.port && corefile::name_in_zone(&name, &z.zone))
            .max_by_key(|z| z.zone.len())
            .map(|z| z.zone.as_str())
            .unwrap_or(".");
        Some((self.pipelines.get(i)?.clone(), zone.into()))
    }
}

/// Dispatches each query to the pipeline of the block with the longest matching zone.
pub struct Router {
    routes: ArcSwap<(Routes, FastCache)>,
}

impl Router {
    pub fn new(routes: Routes, view: Arc<ClusterView>) -> Router {
        Router {
            routes: ArcSwap::from_pointee((routes, Self::fast_cache(view, 0))),
        }
    }

    fn fast_cache(view: Arc<ClusterView>, epoch: u64) -> FastCache {
        FastCache {
            cache: Default::default(),
            view,
            epoch,
        }
    }

    /// Queries already routed finish on the old pipelines; new ones see these. The response
    /// cache starts empty with them: answers of the old configuration are never replayed.
    pub fn swap(&self, routes: Routes) {
        let old = self.routes.load();
        let fresh = Self::fast_cache(old.1.view.clone(), old.1.epoch + 1);
        drop(old);
        self.routes.store(Arc::new((routes, fresh)));
    }
}

impl Responder for Router {
    fn fast_get(&self, p: &Peek, max_len: usize, out: &mut Vec<u8>) -> FastLookup {
        self.routes.load().1.get(p, max_len, out)
    }

    fn fast_put(&self, p: &Peek, stamp: Stamp, response: &[u8], meta: Meta) {
        self.routes.load().1.put(p, stamp, response, meta)
    }

    fn respond<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Answer> {
        let route = self.routes.load().0.route(&req.qname);
        Box::pin(async move {
            match route {
                Some((p, zone)) => {
                    let mut answer = p.resolve(req).await;
                    answer.zone = Some(zone);
                    answer
                }
                // No block takes the name: counted under zone "dropped", as CoreDNS does.
                None => Answer::rcode(ResponseCode::Refused, ""),
            }
        })
    }
}

/// Builds every block; the first error wins.
pub fn build_all(config: &Config, env: &BuildEnv) -> Result<Vec<BuiltBlock>, BuildError> {
    config.servers.iter().map(|b| build_block(b, env)).collect()
}
