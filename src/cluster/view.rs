//! The shared handle through which sources publish snapshots and queries read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::snapshot::{now_serial, Changed, Snapshot, Store};
use super::zones::SubnetZones;

/// Readers call [`ClusterView::snapshot`] (lock-free); sources call [`ClusterView::publish`].
#[derive(Debug)]
pub struct ClusterView {
    current: ArcSwap<Snapshot>,
    /// Bumped after every publish: answers cached by generation are invalid once it moves.
    generation: AtomicU64,
    /// VPC subnets and their zones: where clients that are no known pod are (zones.rs).
    subnets: ArcSwap<SubnetZones>,
}

impl Default for ClusterView {
    fn default() -> Self {
        ClusterView {
            current: ArcSwap::from_pointee(Snapshot::unsynced()),
            generation: AtomicU64::new(0),
            subnets: ArcSwap::from_pointee(SubnetZones::default()),
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
        self.publish_changed(store, synced, None, None);
    }

    /// [`ClusterView::publish`] from a source that knows which service and slice keys it
    /// changed since it published `base`; the keys are used only if `base` is still the
    /// current snapshot's store (otherwise every key is compared).
    pub fn publish_changed(
        &self,
        store: Arc<Store>,
        synced: bool,
        base: Option<&Arc<Store>>,
        changed: Option<&Changed>,
    ) {
        let prev = self.current.load();
        let changed = changed.filter(|_| base.is_some_and(|b| Arc::ptr_eq(b, &prev.store)));
        let snapshot = Snapshot::rebuild_changed(&prev, store, changed, now_serial(), synced);
        drop(prev);
        self.current.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes whenever a new snapshot is published. Read it BEFORE answering from a
    /// snapshot: an answer stored under an older generation can only be a miss later.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets the subnet -> zone fallback; answers cached before are invalid after it.
    pub fn set_subnet_zones(&self, subnets: SubnetZones) {
        self.subnets.store(Arc::new(subnets));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The availability zone of a client: the zone of its pod's node in `snap`, else that of
    /// the VPC subnet holding the address, else None (unknown).
    pub fn client_zone(&self, snap: &Snapshot, ip: &std::net::IpAddr) -> Option<Arc<str>> {
        let ip = canonical(ip);
        if let Some(z) = snap.pod_zone(&ip) {
            return Some(z.clone());
        }
        let subnets = self.subnets.load();
        if subnets.is_empty() {
            return None;
        }
        subnets.zone(&ip).cloned()
    }

    pub fn is_synced(&self) -> bool {
        self.current.load().synced
    }
}

/// An IPv4 client on a dual-stack socket arrives as `::ffff:a.b.c.d`.
fn canonical(ip: &std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(*ip),
        v4 => *v4,
    }
}
