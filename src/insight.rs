//! What the serve mode learns about the cluster beyond its DNS data, from the live view:
//! Fargate placement (`/debug/placement`, `clusterdns_placement_mismatches`) and the periodic
//! prober (`clusterdns_probe_paths`, and with active probes `clusterdns_probe_up` /
//! `clusterdns_probe_latency_seconds`).
//!
//! ```text
//! cluster view --+-> fargate::place  (at every scrape) -> mismatch gauge, /debug/placement
//!                +-> prober::paths   (every interval)  -> path verdicts
//! AWS JSON / API +-> prober::active  (every interval)  -> DNS probe results
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::admin;
use crate::cluster::ClusterView;
use crate::metrics::Metrics;
use crate::prober::aws_api::{ApiOptions, AwsSource};

/// The serve flags that turn insight on; all off by default.
#[derive(Debug, Clone, Copy)]
pub struct InsightOptions<'a> {
    /// `aws eks describe-fargate-profile` JSON: placement.
    pub fargate_profiles: Option<&'a PathBuf>,
    /// AWS CLI JSON for the prober.
    pub aws: Option<&'a PathBuf>,
    /// The same, read from the AWS APIs at every run.
    pub aws_api: Option<&'a ApiOptions>,
    pub probe_interval: Duration,
    /// Also probe every DNS endpoint and the DNS service live.
    pub probe_active: bool,
}

/// Placement (`/debug/placement`, the mismatch gauge) and the periodic prober.
/// Returns the `/debug` renderer for the HTTP endpoints, if placement is on.
pub fn start(
    opts: &InsightOptions,
    view: &Arc<ClusterView>,
    metrics: &Arc<Metrics>,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<admin::DebugRender>> {
    let mut debug = None;
    if let Some(path) = opts.fargate_profiles {
        let profiles = Arc::new(
            crate::fargate::load_profiles(path)
                .with_context(|| format!("--fargate-profiles {}", path.display()))?,
        );
        let v = view.clone();
        let p = profiles.clone();
        metrics.on_scrape(move |m| {
            let objects = v.snapshot().store.to_objects();
            let rows = crate::fargate::place(&objects.pods, &objects.nodes, &p);
            let bad = rows.iter().filter(|r| !r.mismatches.is_empty()).count();
            m.placement_mismatches.set(bad as i64);
        });
        let v = view.clone();
        debug = Some(Arc::new(move |path: &str| {
            (path == "/debug/placement").then(|| {
                crate::fargate::run_placement(&v.snapshot().store.to_objects(), &profiles, true)
            })
        }) as admin::DebugRender);
    }
    let source = match (opts.aws, opts.aws_api) {
        (Some(aws), _) => {
            // Bad AWS JSON is a start-up error, said once with the file and path.
            let model = crate::prober::aws::load(aws)
                .with_context(|| format!("--aws {}", aws.display()))?;
            // Where clients that are no known pod are: their subnet's zone (zone-aware answers).
            view.set_subnet_zones(crate::prober::aws::subnet_zones(&model));
            Some(AwsSource::Dir(aws.clone()))
        }
        // Not read here: DNS must not wait for AWS; the first run reads it (and sets the
        // subnet zones).
        (None, Some(api)) => Some(AwsSource::Api(api.clone())),
        (None, None) => None,
    };
    if let Some(aws) = source {
        tokio::spawn(probe_loop(
            aws,
            view.clone(),
            metrics.clone(),
            opts.probe_interval.max(Duration::from_secs(1)),
            opts.probe_active,
            cancel.clone(),
        ));
    }
    Ok(debug)
}

/// Re-judges the paths (and, with `active`, probes DNS) every `interval`, into metrics.
async fn probe_loop(
    aws: AwsSource,
    view: Arc<ClusterView>,
    metrics: Arc<Metrics>,
    interval: Duration,
    active: bool,
    cancel: CancellationToken,
) {
    use crate::prober::active::{self, ActiveOptions, ProbeKind};
    let mut ticker = tokio::time::interval(interval);
    // The latest read, exported at each scrape as a whole: set here one label at a time, the
    // gauges showed a scrape a half-filled set of verdicts (and "not stale" before any).
    let latest = Arc::new(std::sync::Mutex::new(Latest {
        // Stale from the start until the first good read.
        stale_since: Some(std::time::Instant::now()),
        ..Latest::default()
    }));
    let shown = latest.clone();
    metrics.on_scrape(move |m| {
        let Ok(l) = shown.lock() else { return };
        m.probe_aws_stale_seconds
            .set(l.stale_since.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        if let Some(paths) = &l.paths {
            m.probe_paths.reset();
            for ((path, verdict), n) in paths {
                m.probe_paths
                    .with_label_values(&[path, verdict.as_str()])
                    .set(*n);
            }
        }
        if let Some(probes) = &l.probes {
            m.probe_up.reset();
            m.probe_latency.reset();
            for (target, protocol, up, latency) in probes {
                let labels = [target.as_str(), protocol];
                m.probe_up.with_label_values(&labels).set(i64::from(*up));
                m.probe_latency.with_label_values(&labels).set(*latency);
            }
        }
    });
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let objects = view.snapshot().store.to_objects();
        match aws.load().await {
            Ok(model) => {
                if matches!(aws, AwsSource::Api(_)) {
                    // Read from AWS at run time: subnets (and their zones) may have changed.
                    view.set_subnet_zones(crate::prober::aws::subnet_zones(&model));
                }
                let (findings, _) = crate::prober::paths::judge_all(&model, &objects);
                let mut paths = std::collections::BTreeMap::new();
                for f in &findings {
                    *paths
                        .entry((f.path, f.judgement.verdict.to_string()))
                        .or_insert(0) += 1;
                }
                if let Ok(mut l) = latest.lock() {
                    l.paths = Some(paths);
                    l.stale_since = None;
                }
            }
            Err(e) => {
                if let Ok(mut l) = latest.lock() {
                    l.stale_since.get_or_insert_with(std::time::Instant::now);
                }
                warn!("prober: {e}; keeping the last verdicts")
            }
        }
        if active {
            // DNS targets only: a bounded set of label values (endpoints of every service
            // would make a metric per pod).
            let (targets, _) = active::targets(&objects);
            let targets: Vec<_> = targets
                .into_iter()
                .filter(|t| t.kind == ProbeKind::Dns)
                .collect();
            let results = active::probe_all(&targets, &ActiveOptions::default()).await;
            let mut probes = Vec::with_capacity(results.len());
            for r in &results {
                let target = format!("{}:{}", r.target.ip, r.target.port);
                let protocol = r.target.protocol.as_str();
                let outcome = r.outcome.as_str();
                metrics
                    .probe_results
                    .with_label_values(&[&target, protocol, outcome])
                    .inc();
                probes.push((target, protocol, outcome == "ok", r.latency.as_secs_f64()));
            }
            if let Ok(mut l) = latest.lock() {
                l.probes = Some(probes);
            }
        }
    }
}

/// What the insight loop last learnt, for the scrape to export.
#[derive(Default)]
struct Latest {
    /// Since when AWS could not be read (None after a good read).
    stale_since: Option<std::time::Instant>,
    /// Findings per (path, verdict) of the last good read.
    paths: Option<std::collections::BTreeMap<(&'static str, String), i64>>,
    /// The last active probes: target, protocol, up, latency in seconds.
    probes: Option<Vec<(String, &'static str, bool, f64)>>,
}
