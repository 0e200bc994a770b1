//! One complete read of the cluster for the one-shot commands (`placement`, `probe`,
//! `export-zone`): from manifests, from the API through a kubeconfig, or the embedded demo.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::kube_source::{self, KubeSourceOptions};
use super::objects::ObjectSet;
use super::status::SourceStatus;
use super::view::ClusterView;

/// The objects of `kubeconfig`'s cluster if given, else of `manifests`, else the demo.
pub async fn load(
    manifests: Option<&Path>,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<ObjectSet> {
    if kubeconfig.is_some() {
        return objects_from_api(kubeconfig, Duration::from_secs(30)).await;
    }
    Ok(match manifests {
        Some(p) => super::objects::load_path(p)?,
        None => super::file_source::embedded_objects()?,
    })
}

/// One complete list of the cluster through the API (for `placement` and `probe`), as the
/// same stripped objects the server keeps. Fails, naming what it waited for, after `timeout`.
pub async fn objects_from_api(
    kubeconfig: Option<&Path>,
    timeout: Duration,
) -> anyhow::Result<ObjectSet> {
    let config = kube_source::config(kubeconfig, None)
        .await
        .context("kubernetes")?;
    let api_url = config.cluster_url.to_string();
    let client = kube_source::client_for(config).context("kubernetes")?;
    let view = ClusterView::new();
    let status = Arc::new(SourceStatus::new());
    let handle = kube_source::spawn(
        client,
        view.clone(),
        status.clone(),
        KubeSourceOptions {
            watch_pods: true,
            watch_nodes: true,
            api_url: Some(api_url),
            startup_timeout: timeout,
            ..KubeSourceOptions::default()
        },
    );
    let deadline = tokio::time::Instant::now() + timeout;
    while !status.ready() {
        if tokio::time::Instant::now() >= deadline {
            handle.abort();
            anyhow::bail!(
                "no complete list from the API server within {timeout:?}: {}",
                status.not_ready_reasons().join("; ")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.abort();
    let objects = view.snapshot().store.to_objects();
    Ok(objects)
}
