//! What the Kubernetes source knows about its own health, shared with readiness (`/ready`),
//! metrics and the debug endpoint. Written by the source, read by anyone; every method takes
//! a short lock and copies out, so readers never hold the source up.

use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

/// A kind of object the Kubernetes source watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    Namespaces,
    Services,
    EndpointSlices,
    Pods,
    Nodes,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 5] = [
        ResourceKind::Namespaces,
        ResourceKind::Services,
        ResourceKind::EndpointSlices,
        ResourceKind::Pods,
        ResourceKind::Nodes,
    ];

    /// The resource name as RBAC rules and the API paths spell it.
    pub fn resource(self) -> &'static str {
        match self {
            ResourceKind::Namespaces => "namespaces",
            ResourceKind::Services => "services",
            ResourceKind::EndpointSlices => "endpointslices",
            ResourceKind::Pods => "pods",
            ResourceKind::Nodes => "nodes",
        }
    }

    /// The API group ("" is the core group, as RBAC writes it).
    pub fn group(self) -> &'static str {
        match self {
            ResourceKind::EndpointSlices => "discovery.k8s.io",
            _ => "",
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.resource())
    }
}

/// One watched kind, as copied out of [`SourceStatus::kinds`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindStatus {
    pub kind: ResourceKind,
    /// The first complete list has been published.
    pub listed: bool,
    /// Objects of this kind in the published view.
    pub count: usize,
    /// The most recent failure, in words for an operator; cleared when the API answers again.
    pub last_error: Option<String>,
    /// Since when this kind's list/watch has been failing.
    pub failing_since: Option<SystemTime>,
}

#[derive(Debug, Default)]
struct Inner {
    started_at: Option<SystemTime>,
    kinds: Vec<KindStatus>,
    synced_at: Option<SystemTime>,
    sync_duration: Option<Duration>,
    /// The startup timeout passed before every kind had listed.
    startup_timed_out: bool,
    /// Failed list/watch attempts (errors and stalls) since start.
    failed_attempts: u64,
    /// `failed_attempts` when the source last went stale.
    failed_before_stale: u64,
}

impl Inner {
    fn kind_mut(&mut self, kind: ResourceKind) -> Option<&mut KindStatus> {
        self.kinds.iter_mut().find(|k| k.kind == kind)
    }
}

/// Shared, thread-safe health of the Kubernetes source.
#[derive(Debug, Default)]
pub struct SourceStatus {
    inner: Mutex<Inner>,
}

impl SourceStatus {
    pub fn new() -> SourceStatus {
        SourceStatus::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by the source when it starts: these are the kinds readiness waits for.
    pub fn start(&self, kinds: &[ResourceKind]) {
        let mut inner = self.lock();
        *inner = Inner {
            started_at: Some(SystemTime::now()),
            kinds: kinds
                .iter()
                .map(|&kind| KindStatus {
                    kind,
                    listed: false,
                    count: 0,
                    last_error: None,
                    failing_since: None,
                })
                .collect(),
            ..Inner::default()
        };
    }

    /// Ready once every watched kind's first list has been published. An API outage after
    /// that does not make the source unready: it keeps serving the last complete view.
    pub fn ready(&self) -> bool {
        let inner = self.lock();
        inner.started_at.is_some() && inner.kinds.iter().all(|k| k.listed)
    }

    /// Why the source is not ready, one line per cause; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let inner = self.lock();
        if inner.started_at.is_none() {
            return vec!["kubernetes: source not started".to_string()];
        }
        inner
            .kinds
            .iter()
            .filter(|k| !k.listed)
            .map(|k| match &k.last_error {
                Some(e) => format!("kubernetes: waiting for initial list of {}: {e}", k.kind),
                None => format!("kubernetes: waiting for initial list of {}", k.kind),
            })
            .collect()
    }

    /// When every kind had listed for the first time.
    pub fn synced_at(&self) -> Option<SystemTime> {
        self.lock().synced_at
    }

    /// How long the first complete sync took from start.
    pub fn sync_duration(&self) -> Option<Duration> {
        self.lock().sync_duration
    }

    /// Whether the startup timeout passed before the first complete sync.
    pub fn startup_timed_out(&self) -> bool {
        self.lock().startup_timed_out
    }

    /// Since when some watch has been failing (the earliest such kind); `None` when all are
    /// healthy. While set, the view being served may be out of date.
    pub fn stale_since(&self) -> Option<SystemTime> {
        self.lock()
            .kinds
            .iter()
            .filter_map(|k| k.failing_since)
            .min()
    }

    pub fn kinds(&self) -> Vec<KindStatus> {
        self.lock().kinds.clone()
    }

    pub fn kind(&self, kind: ResourceKind) -> Option<KindStatus> {
        self.lock().kinds.iter().find(|k| k.kind == kind).cloned()
    }

    /// Objects of `kind` in the published view (0 for a kind not watched).
    pub fn count(&self, kind: ResourceKind) -> usize {
        self.kind(kind).map_or(0, |k| k.count)
    }

    pub fn last_error(&self, kind: ResourceKind) -> Option<String> {
        self.kind(kind).and_then(|k| k.last_error)
    }

    // Writers, used by the source.

    /// A list/watch attempt for `kind` failed. Returns true when this makes the source stale
    /// (no kind was failing before): the moment to say so, once.
    pub(crate) fn set_error(&self, kind: ResourceKind, error: String) -> bool {
        let mut inner = self.lock();
        inner.failed_attempts += 1;
        let was_stale = inner.kinds.iter().any(|k| k.failing_since.is_some());
        if !was_stale {
            inner.failed_before_stale = inner.failed_attempts - 1;
        }
        if let Some(k) = inner.kind_mut(kind) {
            k.failing_since.get_or_insert_with(SystemTime::now);
            k.last_error = Some(error);
        }
        !was_stale && inner.kinds.iter().any(|k| k.failing_since.is_some())
    }

    /// `kind`'s watch is current again (it delivered an event or a bookmark). Returns how long
    /// the source was stale and how many attempts failed meanwhile, when this ends it (no kind
    /// is failing any more).
    pub(crate) fn set_healthy(&self, kind: ResourceKind) -> Option<(Duration, u64)> {
        let mut inner = self.lock();
        let since = inner.kinds.iter().filter_map(|k| k.failing_since).min()?;
        if let Some(k) = inner.kind_mut(kind) {
            k.failing_since = None;
            k.last_error = None;
        }
        if inner.kinds.iter().any(|k| k.failing_since.is_some()) {
            return None;
        }
        Some((
            since.elapsed().unwrap_or_default(),
            inner.failed_attempts - inner.failed_before_stale,
        ))
    }

    /// Failed list/watch attempts (errors and stalls) since start.
    pub fn failed_attempts(&self) -> u64 {
        self.lock().failed_attempts
    }

    /// The failing kinds and their errors, kinds with the same error on one line:
    /// `services, endpointslices: API server unreachable: connection refused to ...`.
    pub fn failures(&self) -> Vec<String> {
        let inner = self.lock();
        let mut out: Vec<(String, Vec<ResourceKind>)> = Vec::new();
        for k in inner.kinds.iter().filter(|k| k.failing_since.is_some()) {
            let error = k.last_error.clone().unwrap_or_default();
            match out.iter_mut().find(|(e, _)| *e == error) {
                Some((_, kinds)) => kinds.push(k.kind),
                None => out.push((error, vec![k.kind])),
            }
        }
        out.into_iter()
            .map(|(error, kinds)| {
                let kinds: Vec<&str> = kinds.iter().map(|k| k.resource()).collect();
                format!("{}: {error}", kinds.join(", "))
            })
            .collect()
    }

    /// Cheap (no copy): asked for every watch line.
    pub(crate) fn is_failing(&self, kind: ResourceKind) -> bool {
        self.lock()
            .kinds
            .iter()
            .any(|k| k.kind == kind && k.failing_since.is_some())
    }

    /// A published view holds `counts`; the kinds in `listed` have completed a list.
    pub(crate) fn published(&self, counts: &[(ResourceKind, usize)], listed: &[ResourceKind]) {
        let mut inner = self.lock();
        for &(kind, count) in counts {
            if let Some(k) = inner.kind_mut(kind) {
                k.count = count;
            }
        }
        for &kind in listed {
            if let Some(k) = inner.kind_mut(kind) {
                k.listed = true;
            }
        }
        if inner.synced_at.is_none() && inner.kinds.iter().all(|k| k.listed) {
            let now = SystemTime::now();
            inner.synced_at = Some(now);
            inner.sync_duration = inner.started_at.and_then(|s| now.duration_since(s).ok());
        }
    }

    pub(crate) fn set_startup_timed_out(&self) {
        self.lock().startup_timed_out = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_waits_for_every_kind_and_names_errors() {
        let s = SourceStatus::new();
        assert!(!s.ready());
        assert_eq!(s.not_ready_reasons(), ["kubernetes: source not started"]);
        s.start(&[ResourceKind::Services, ResourceKind::EndpointSlices]);
        s.set_error(
            ResourceKind::EndpointSlices,
            "403 forbidden: cannot list resource \"endpointslices\"".into(),
        );
        assert!(s.stale_since().is_some());
        s.published(&[(ResourceKind::Services, 3)], &[ResourceKind::Services]);
        assert_eq!(
            s.failures(),
            ["endpointslices: 403 forbidden: cannot list resource \"endpointslices\""]
        );
        assert!(!s.ready());
        assert_eq!(
            s.not_ready_reasons(),
            ["kubernetes: waiting for initial list of endpointslices: 403 forbidden: cannot list resource \"endpointslices\""]
        );
        assert!(s.synced_at().is_none());
        assert!(s.set_healthy(ResourceKind::EndpointSlices).is_some());
        s.published(&[], &[ResourceKind::EndpointSlices]);
        assert!(s.ready());
        assert!(s.not_ready_reasons().is_empty());
        assert!(s.synced_at().is_some());
        assert!(s.stale_since().is_none());
        assert_eq!(s.count(ResourceKind::Services), 3);
        assert_eq!(s.count(ResourceKind::Pods), 0);
    }

    #[test]
    fn the_source_goes_stale_once_and_recovers_once() {
        let s = SourceStatus::new();
        s.start(&[ResourceKind::Services, ResourceKind::Nodes]);
        let down = "API server unreachable".to_string();
        assert!(
            s.set_error(ResourceKind::Services, down.clone()),
            "goes stale"
        );
        assert!(
            !s.set_error(ResourceKind::Nodes, down.clone()),
            "already stale"
        );
        assert!(
            !s.set_error(ResourceKind::Services, down.clone()),
            "already stale"
        );
        assert_eq!(s.failed_attempts(), 3);
        assert_eq!(s.failures(), ["services, nodes: API server unreachable"]);
        assert_eq!(
            s.set_healthy(ResourceKind::Services),
            None,
            "nodes still fail"
        );
        let (_, failed) = s.set_healthy(ResourceKind::Nodes).expect("recovered");
        assert_eq!(failed, 3);
        assert!(s.set_error(ResourceKind::Nodes, down), "stale again");
        assert_eq!(s.set_healthy(ResourceKind::Nodes).map(|r| r.1), Some(1));
        assert_eq!(s.set_healthy(ResourceKind::Nodes), None, "was not stale");
        assert!(s.failures().is_empty());
    }
}
