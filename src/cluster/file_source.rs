//! The file source: Kubernetes objects from YAML/JSON files, re-read when they change. A file
//! that fails to parse is reported with its path and the object that failed, and the last good
//! state keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::objects::{self, LoadError, ObjectSet};
use super::snapshot::Store;
use super::view::ClusterView;

/// The demo cluster compiled in: what `clusterdns serve` answers with no arguments.
pub const EMBEDDED_DEMO: &str = include_str!("../../manifests/examples/demo-cluster.yaml");

/// Polling (not inotify): it sees edits through ConfigMap symlink swaps and on every
/// filesystem, and a stat of a few files per interval costs nothing.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(250);

pub fn embedded_objects() -> Result<ObjectSet, LoadError> {
    let mut set = ObjectSet::default();
    set.add_text(EMBEDDED_DEMO, Path::new("<embedded demo-cluster.yaml>"))?;
    Ok(set)
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let files = objects::manifest_files(path).unwrap_or_default();
    let mut fp: Fingerprint = files
        .into_iter()
        .map(|f| {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            let len = meta.map(|m| m.len()).unwrap_or(0);
            (f, mtime, len)
        })
        .collect();
    // The directory itself: a file removed or added changes the listing.
    if let Ok(meta) = std::fs::metadata(path) {
        fp.push((path.to_owned(), meta.modified().ok(), meta.len()));
    }
    fp
}

/// Loads `path` and publishes it, then re-reads it whenever a file changes, until `cancel`.
/// A broken initial load is an error (there is no last good state to serve).
/// `keep_pods`: pods are kept only when answers or views need them (`pods verified`,
/// placement, the prober), as the API source watches them only then: in big clusters they are
/// most of the objects.
pub fn start(
    path: PathBuf,
    view: Arc<ClusterView>,
    interval: Duration,
    keep_pods: bool,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, LoadError> {
    let mut last = fingerprint(&path);
    let store = Store::load_path(&path, keep_pods)?;
    info!(path = %path.display(), services = store.services.len(), pods = store.pods.len(), "loaded manifests");
    view.publish(Arc::new(store), true);
    release_freed_memory();
    Ok(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let fp = fingerprint(&path);
            if fp == last {
                continue;
            }
            last = fp;
            match Store::load_path(&path, keep_pods) {
                Ok(store) => {
                    info!(path = %path.display(), services = store.services.len(), pods = store.pods.len(), "manifests changed: reloaded");
                    view.publish(Arc::new(store), true);
                    release_freed_memory();
                }
                Err(e) => error!("manifests not reloaded, still serving the last good state: {e}"),
            }
        }
    }))
}

/// Parsing a large dump allocates far more than the stripped result keeps; glibc holds the
/// freed memory in its arenas unless asked to give it back.
pub fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
