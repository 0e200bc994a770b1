//! The Kubernetes source (`clusterdns::cluster::kube_source`) run against the fake API server,
//! as tests/kube.rs and tests/reliability_peers.rs drive it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clusterdns::cluster::kube_source::{self, KubeSourceOptions};
use clusterdns::cluster::status::SourceStatus;
use clusterdns::cluster::ClusterView;
use tokio::task::JoinHandle;

use super::apiserver::ApiServer;
use super::eventually;

/// A running source; dropping it stops it.
pub struct Source {
    pub view: Arc<ClusterView>,
    pub status: Arc<SourceStatus>,
    pub task: JoinHandle<()>,
}

impl Drop for Source {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Source {
    pub fn has_service(&self, key: &str) -> bool {
        self.view.snapshot().service(key).is_some()
    }

    pub fn cluster_ips(&self, key: &str) -> Vec<IpAddr> {
        self.view
            .snapshot()
            .service(key)
            .map(|e| e.service.cluster_ips.clone())
            .unwrap_or_default()
    }

    /// The ready endpoint addresses of a service, sorted.
    pub fn endpoints(&self, key: &str) -> Vec<IpAddr> {
        let snapshot = self.view.snapshot();
        let mut v: Vec<IpAddr> = snapshot
            .service(key)
            .map(|e| e.ready_endpoints().map(|ep| ep.address()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn stale(&self) -> bool {
        self.status.stale_since().is_some()
    }

    /// Waits for the initial sync (readiness), then checks the view says so too.
    pub async fn wait_ready(&self, timeout: Duration) {
        let status = self.status.clone();
        eventually("the initial sync", timeout, || status.ready()).await;
        assert!(self.view.is_synced());
    }
}

/// Nodes watched and quick retries, so that faults and recoveries play out in a test's time;
/// production keeps client-go's backoff.
pub fn quick_options(server: &ApiServer) -> KubeSourceOptions {
    KubeSourceOptions {
        watch_nodes: true,
        api_url: Some(server.url()),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..KubeSourceOptions::default()
    }
}

/// Starts a source on the fake server's kubeconfig (it does not wait for the sync).
pub async fn start(server: &ApiServer, opts: KubeSourceOptions) -> Source {
    // RUST_LOG=clusterdns=debug shows the source's view of a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
    let client = kube_source::client(Some(&server.kubeconfig_path()), None)
        .await
        .expect("client from the fake server's kubeconfig");
    let view = ClusterView::new();
    let status = Arc::new(SourceStatus::new());
    let task = kube_source::spawn(client, view.clone(), status.clone(), opts);
    Source { view, status, task }
}
