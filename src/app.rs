//! Builds a running server from options: data source -> view -> pipeline -> sockets. Shared
//! by the binary and the tests (which run several side by side on port 0).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::cluster::file_source::{self, DEFAULT_INTERVAL};
use crate::cluster::{ClusterView, Store};
use crate::dns::kubernetes::{parse_zone, Kubernetes, KubernetesConfig, PodMode};
use crate::dns::server::Bound;
use crate::dns::{Handler, Pipeline};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Kubernetes objects from these files; None serves the embedded demo cluster.
    pub manifests: Option<PathBuf>,
    pub dns_addr: SocketAddr,
    pub zone: String,
    pub ttl: u32,
    pub pods: PodMode,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            manifests: None,
            dns_addr: SocketAddr::from(([127, 0, 0, 1], 1053)),
            zone: "cluster.local".into(),
            ttl: 5,
            pods: PodMode::Insecure,
        }
    }
}

pub struct Running {
    pub dns_addr: SocketAddr,
    pub view: Arc<ClusterView>,
    cancel: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, drains queries in flight, and returns when done.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.server.await;
    }

    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits until the server stops (after [`Running::cancel_token`] fires).
    pub async fn wait(self) {
        let _ = self.server.await;
    }
}

pub async fn start(opts: ServeOptions) -> anyhow::Result<Running> {
    if opts.ttl > 3600 {
        anyhow::bail!("--ttl {}: must be between 0 and 3600 seconds", opts.ttl);
    }
    let cancel = CancellationToken::new();
    let view = ClusterView::new();
    match &opts.manifests {
        Some(path) => {
            file_source::start(path.clone(), view.clone(), DEFAULT_INTERVAL, cancel.clone())
                .with_context(|| format!("cannot load --manifests {}", path.display()))?;
        }
        None => {
            let set = file_source::embedded_objects().context("embedded demo cluster")?;
            view.publish(Arc::new(Store::from_objects(&set)), true);
        }
    }
    let mut kcfg = KubernetesConfig::for_zone(&opts.zone).map_err(anyhow::Error::msg)?;
    kcfg.ttl = opts.ttl;
    kcfg.pods = opts.pods;
    parse_zone(&opts.zone).map_err(anyhow::Error::msg)?;
    let handlers: Vec<Arc<dyn Handler>> = vec![Arc::new(Kubernetes::new(kcfg, view.clone()))];
    let pipeline = Arc::new(Pipeline::new(handlers));
    let bound = Bound::bind(opts.dns_addr).await?;
    let dns_addr = bound.local_addr();
    let server = tokio::spawn(bound.serve(pipeline, cancel.clone()));
    Ok(Running {
        dns_addr,
        view,
        cancel,
        server,
    })
}
