//! The shared handle through which sources publish snapshots and queries read them.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::{now_serial, Snapshot, Store};

/// Readers call [`ClusterView::snapshot`] (lock-free); sources call [`ClusterView::publish`].
#[derive(Debug)]
pub struct ClusterView {
    current: ArcSwap<Snapshot>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            current: ArcSwap::from_pointee(Snapshot::unsynced()),
        }
    }
}

impl ClusterView {
    pub fn new() -> Arc<ClusterView> {
        Arc::new(ClusterView::default())
    }

    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn snapshot_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot of `store` and swaps it in. `synced` marks the first complete view.
    pub fn publish(&self, store: Arc<Store>, synced: bool) {
        let snapshot = Snapshot::build(store, now_serial(), synced);
        self.current.store(Arc::new(snapshot));
    }

    pub fn is_synced(&self) -> bool {
        self.current.load().synced
    }
}
