//! Prometheus metrics with CoreDNS's names, labels and buckets (../shared/reference/metrics.md),
//! so existing dashboards and alerts keep working, plus our own under `clusterdns_`. One
//! registry per server instance, passed down (no global registry: tests run several servers).

use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::proto::{self, MetricFamily, MetricType};

use crate::dns::cache::{Cache, Kind};
use crate::dns::forward::Forward;
use crate::dns::server::{Observed, QueryObserver};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// 0.00025 s doubling to 8.192 s, CoreDNS's time buckets.
pub fn time_buckets() -> Vec<f64> {
    (0..16).map(|i| 0.00025 * f64::from(1u32 << i)).collect()
}

/// CoreDNS's size buckets.
pub const SIZE_BUCKETS: [f64; 14] = [
    0.0, 100.0, 200.0, 300.0, 400.0, 511.0, 1023.0, 2047.0, 4095.0, 8291.0, 16000.0, 32000.0,
    48000.0, 64000.0,
];

/// The query types CoreDNS reports by name; the rest are `other`.
pub fn type_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A => "A",
        RecordType::AAAA => "AAAA",
        RecordType::CNAME => "CNAME",
        RecordType::DNSKEY => "DNSKEY",
        RecordType::DS => "DS",
        RecordType::MX => "MX",
        RecordType::NSEC3 => "NSEC3",
        RecordType::NSEC => "NSEC",
        RecordType::NS => "NS",
        RecordType::PTR => "PTR",
        RecordType::RRSIG => "RRSIG",
        RecordType::SOA => "SOA",
        RecordType::SRV => "SRV",
        RecordType::TXT => "TXT",
        RecordType::HTTPS => "HTTPS",
        RecordType::IXFR => "IXFR",
        RecordType::AXFR => "AXFR",
        RecordType::ANY => "ANY",
        _ => "other",
    }
}

/// Rcode names as Go's miekg/dns prints them (CoreDNS's `rcode` label values).
pub fn rcode_label(r: ResponseCode) -> &'static str {
    match u16::from(r) {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADSIG",
        17 => "BADKEY",
        18 => "BADTIME",
        19 => "BADMODE",
        20 => "BADNAME",
        21 => "BADALG",
        22 => "BADTRUNC",
        23 => "BADCOOKIE",
        _ => "other",
    }
}

/// `dns://:53`, or `dns://10.0.0.10:53` when bound to one address, as CoreDNS labels servers.
pub fn server_label(addr: SocketAddr, bound_to_all: bool) -> String {
    if bound_to_all {
        format!("dns://:{}", addr.port())
    } else {
        format!("dns://{addr}")
    }
}

/// A server block's handlers whose statistics become metrics at scrape time.
pub struct BlockStats {
    pub server: String,
    /// The block's zones joined with `,` (CoreDNS's `zones` label).
    pub zones: String,
    pub cache: Option<Arc<Cache>>,
    pub forward: Option<Arc<Forward>>,
}

type Refresher = Box<dyn Fn(&Metrics) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    blocks: ArcSwap<Vec<BlockStats>>,
    refreshers: Mutex<Vec<Refresher>>,
    /// Also export the names older dashboards query (before CoreDNS 1.7 and 1.11).
    legacy: std::sync::atomic::AtomicBool,
    pub requests: IntCounterVec,
    pub responses: IntCounterVec,
    pub duration: HistogramVec,
    pub request_size: HistogramVec,
    pub response_size: HistogramVec,
    pub do_requests: IntCounterVec,
    /// Queries answered by autopath's search-path walk.
    pub autopath_success: IntCounterVec,
    pub panics: IntCounter,
    pub plugin_enabled: IntGaugeVec,
    pub programming_duration: HistogramVec,
    pub health_duration: Histogram,
    pub health_failures: IntCounter,
    pub reload_failed: IntCounter,
    /// clusterdns_*: the data source's state.
    pub source_synced: IntGauge,
    pub source_stale_seconds: prometheus::Gauge,
    pub objects: IntGaugeVec,
    pub endpoints_by_compute: IntGaugeVec,
    pub placement_mismatches: IntGauge,
    /// The prober's latest verdicts: findings per path and verdict.
    pub probe_paths: IntGaugeVec,
    /// Seconds since the prober last read its AWS input (files or the AWS APIs); 0 when the
    /// latest read succeeded. The verdicts are those of the last good read.
    pub probe_aws_stale_seconds: prometheus::Gauge,
    pub probe_up: IntGaugeVec,
    pub probe_latency: prometheus::GaugeVec,
    /// Every live DNS probe by outcome (ok, timeout, refused, error): failures between scrapes
    /// are counted even when the latest probe answered.
    pub probe_results: IntCounterVec,
    /// DNS-over-TCP connections open now, and those refused (dns::tcp).
    pub tcp_connections: IntGauge,
    pub tcp_refused: IntCounterVec,
    /// Zone-aware answers by result (in_zone, fallback, unknown_client), indexed in
    /// `ZonalResult::ALL` order.
    pub zonal_answers: [IntCounter; 3],
}

/// One answered query, as the server saw it.
pub struct QueryRecord<'a> {
    pub server: &'a str,
    pub zone: &'a str,
    pub proto: &'static str,
    pub ipv6_client: bool,
    pub qtype: RecordType,
    pub rcode: ResponseCode,
    pub plugin: &'a str,
    pub duration: Duration,
    pub request_size: usize,
    pub response_size: usize,
    pub do_bit: bool,
}

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    reg.register(Box::new(c.clone())).expect("registered once");
    c
}

fn histogram(
    reg: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .expect("valid metric");
    reg.register(Box::new(h.clone())).expect("registered once");
    h
}

impl Metrics {
    /// One live DNS probe of `target` (`ip:port`) over `protocol`: the latest state in
    /// `clusterdns_probe_up` / `_latency_seconds`, and the count by result.
    pub fn record_probe(
        &self,
        target: &str,
        protocol: &str,
        result: &str,
        latency: std::time::Duration,
    ) {
        let labels = [target, protocol];
        self.probe_up
            .with_label_values(&labels)
            .set(i64::from(result == "ok"));
        self.probe_latency
            .with_label_values(&labels)
            .set(latency.as_secs_f64());
        self.probe_results
            .with_label_values(&[target, protocol, result])
            .inc();
    }

    /// Builds every metric into a new registry. Names and labels are constants: the
    /// `expect`s can only fail on a programming error, caught by the tests.
    pub fn new() -> Metrics {
        let reg = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("coredns_build_info", "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built."),
            &["version", "revision", "goversion"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), "clusterdns", rustc_version()])
            .set(1);
        reg.register(Box::new(build_info)).expect("registered once");
        let panics = IntCounter::new(
            "coredns_panics_total",
            "A metrics that counts the number of panics.",
        )
        .expect("valid metric");
        reg.register(Box::new(panics.clone()))
            .expect("registered once");
        let plugin_enabled = IntGaugeVec::new(
            Opts::new(
                "coredns_plugin_enabled",
                "A metric that indicates whether a plugin is enabled on per server and zone basis.",
            ),
            &["server", "zone", "view", "name"],
        )
        .expect("valid metric");
        reg.register(Box::new(plugin_enabled.clone()))
            .expect("registered once");
        let health_duration = Histogram::with_opts(
            HistogramOpts::new(
                "coredns_health_request_duration_seconds",
                "Histogram of the time (in seconds) each request took.",
            )
            .buckets(vec![0.00025, 0.0025, 0.025, 0.25, 2.5]),
        )
        .expect("valid metric");
        reg.register(Box::new(health_duration.clone()))
            .expect("registered once");
        let health_failures = IntCounter::new(
            "coredns_health_request_failures_total",
            "The number of times the health check failed.",
        )
        .expect("valid metric");
        reg.register(Box::new(health_failures.clone()))
            .expect("registered once");
        let reload_failed = IntCounter::new(
            "coredns_reload_failed_total",
            "Counter of the number of failed reload attempts.",
        )
        .expect("valid metric");
        reg.register(Box::new(reload_failed.clone()))
            .expect("registered once");
        let source_synced = IntGauge::new(
            "clusterdns_source_synced",
            "1 once the cluster data source has completed its first full load.",
        )
        .expect("valid metric");
        reg.register(Box::new(source_synced.clone()))
            .expect("registered once");
        let source_stale_seconds = prometheus::Gauge::new("clusterdns_source_stale_seconds", "Seconds since the cluster data source last saw the API server healthy; 0 when current.")
            .expect("valid metric");
        reg.register(Box::new(source_stale_seconds.clone()))
            .expect("registered once");
        let objects = IntGaugeVec::new(
            Opts::new("clusterdns_objects", "Objects held per kind."),
            &["kind"],
        )
        .expect("valid metric");
        reg.register(Box::new(objects.clone()))
            .expect("registered once");
        let endpoints_by_compute = IntGaugeVec::new(
            Opts::new(
                "clusterdns_endpoints",
                "Service endpoints by the kind of compute they run on (ec2, micro-vm, unknown).",
            ),
            &["compute"],
        )
        .expect("valid metric");
        reg.register(Box::new(endpoints_by_compute.clone()))
            .expect("registered once");
        let placement_mismatches = IntGauge::new(
            "clusterdns_placement_mismatches",
            "Pods whose placement disagrees with the Fargate profiles.",
        )
        .expect("valid metric");
        reg.register(Box::new(placement_mismatches.clone()))
            .expect("registered once");
        let probe_paths = IntGaugeVec::new(
            Opts::new("clusterdns_probe_paths", "The prober's latest verdicts: findings per path (fargate-to-dns, ...) and verdict (allowed, blocked, unknown)."),
            &["path", "verdict"],
        )
        .expect("valid metric");
        reg.register(Box::new(probe_paths.clone()))
            .expect("registered once");
        let probe_aws_stale_seconds = prometheus::Gauge::new("clusterdns_probe_aws_stale_seconds", "Seconds since the prober last read its AWS input successfully (0 when the latest read succeeded); its verdicts are those of the last good read.")
            .expect("valid metric");
        reg.register(Box::new(probe_aws_stale_seconds.clone()))
            .expect("registered once");
        let probe_up = IntGaugeVec::new(
            Opts::new(
                "clusterdns_probe_up",
                "1 when the latest live DNS probe of the target answered.",
            ),
            &["target", "protocol"],
        )
        .expect("valid metric");
        reg.register(Box::new(probe_up.clone()))
            .expect("registered once");
        let probe_latency = prometheus::GaugeVec::new(
            Opts::new(
                "clusterdns_probe_latency_seconds",
                "Latency of the latest live DNS probe of the target.",
            ),
            &["target", "protocol"],
        )
        .expect("valid metric");
        reg.register(Box::new(probe_latency.clone()))
            .expect("registered once");
        let probe_results = IntCounterVec::new(
            Opts::new(
                "clusterdns_probe_results_total",
                "Live DNS probes of the target by result (ok, timeout, refused, error).",
            ),
            &["target", "protocol", "result"],
        )
        .expect("valid metric");
        reg.register(Box::new(probe_results.clone()))
            .expect("registered once");
        let tcp_connections = IntGauge::new(
            "clusterdns_tcp_connections",
            "DNS-over-TCP connections open now, over all listeners.",
        )
        .expect("valid metric");
        reg.register(Box::new(tcp_connections.clone()))
            .expect("registered once");
        let tcp_refused = counter(
            &reg,
            "clusterdns_tcp_refused_total",
            "DNS-over-TCP connections closed at once over a limit (reason total or per_client), \
             and accepts that failed for want of file descriptors (reason descriptors).",
            &["reason"],
        );
        for reason in ["total", "per_client", "descriptors"] {
            tcp_refused.with_label_values(&[reason]);
        }
        let zonal = IntCounterVec::new(
            Opts::new(
                "clusterdns_zonal_answers_total",
                "Zone-aware headless answers by result: in_zone (the client's or the named zone), fallback (no endpoint there: all), unknown_client (client zone unknown: all).",
            ),
            &["result"],
        )
        .expect("valid metric");
        reg.register(Box::new(zonal.clone()))
            .expect("registered once");
        let zonal_answers =
            crate::dns::zonal::ZonalResult::ALL.map(|r| zonal.with_label_values(&[r.as_str()]));
        let process = prometheus::process_collector::ProcessCollector::for_self();
        let _ = reg.register(Box::new(process));

        let t = time_buckets();
        let sizes = SIZE_BUCKETS.to_vec();
        let programming_duration = histogram(
            &reg,
            "coredns_kubernetes_dns_programming_duration_seconds",
            "Histogram of the time (in seconds) it took to program a dns instance.",
            &["service_kind"],
            (0..20).map(|i| 0.001 * f64::from(1u32 << i)).collect(),
        );
        // Present from the start (at zero) so dashboards see the series before any change.
        for kind in [
            "cluster_ip",
            "headless_with_selector",
            "headless_without_selector",
        ] {
            programming_duration.with_label_values(&[kind]);
        }
        Metrics {
            requests: counter(
                &reg,
                "coredns_dns_requests_total",
                "Counter of DNS requests made per zone, protocol and family.",
                &["server", "zone", "view", "proto", "family", "type"],
            ),
            responses: counter(
                &reg,
                "coredns_dns_responses_total",
                "Counter of response status codes.",
                &["server", "zone", "view", "rcode", "plugin"],
            ),
            duration: histogram(
                &reg,
                "coredns_dns_request_duration_seconds",
                "Histogram of the time (in seconds) each request took per zone.",
                &["server", "zone", "view"],
                t,
            ),
            request_size: histogram(
                &reg,
                "coredns_dns_request_size_bytes",
                "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
                &["server", "zone", "view", "proto"],
                sizes.clone(),
            ),
            response_size: histogram(
                &reg,
                "coredns_dns_response_size_bytes",
                "Size of the returned response in bytes.",
                &["server", "zone", "view", "proto"],
                sizes,
            ),
            do_requests: counter(
                &reg,
                "coredns_dns_do_requests_total",
                "Counter of DNS requests with DO bit set per zone.",
                &["server", "zone", "view"],
            ),
            autopath_success: counter(
                &reg,
                "coredns_autopath_success_total",
                "Counter of requests that did autopath.",
                &["server"],
            ),
            programming_duration,
            panics,
            plugin_enabled,
            health_duration,
            health_failures,
            reload_failed,
            source_synced,
            source_stale_seconds,
            objects,
            endpoints_by_compute,
            placement_mismatches,
            probe_paths,
            probe_aws_stale_seconds,
            probe_up,
            probe_latency,
            probe_results,
            tcp_connections,
            tcp_refused,
            zonal_answers,
            registry: reg,
            blocks: ArcSwap::from_pointee(Vec::new()),
            refreshers: Mutex::new(Vec::new()),
            legacy: Default::default(),
        }
    }

    /// Export the renamed metrics under their old names too (see [`legacy_families`]).
    pub fn set_legacy(&self, on: bool) {
        self.legacy.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The blocks whose cache and forward statistics are exported (replaced on reload).
    pub fn set_blocks(&self, blocks: Vec<BlockStats>) {
        self.blocks.store(Arc::new(blocks));
    }

    /// Runs before every scrape: for gauges that mirror state kept elsewhere.
    pub fn on_scrape(&self, f: impl Fn(&Metrics) + Send + Sync + 'static) {
        if let Ok(mut r) = self.refreshers.lock() {
            r.push(Box::new(f));
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn observe(&self, q: &QueryRecord) {
        let family = if q.ipv6_client { "2" } else { "1" };
        self.requests
            .with_label_values(&[q.server, q.zone, "", q.proto, family, type_label(q.qtype)])
            .inc();
        self.responses
            .with_label_values(&[q.server, q.zone, "", rcode_label(q.rcode), q.plugin])
            .inc();
        self.duration
            .with_label_values(&[q.server, q.zone, ""])
            .observe(q.duration.as_secs_f64());
        self.request_size
            .with_label_values(&[q.server, q.zone, "", q.proto])
            .observe(q.request_size as f64);
        self.response_size
            .with_label_values(&[q.server, q.zone, "", q.proto])
            .observe(q.response_size as f64);
        if q.plugin == crate::dns::plugins::autopath::PLUGIN {
            self.autopath_success.with_label_values(&[q.server]).inc();
        }
        if q.do_bit {
            self.do_requests
                .with_label_values(&[q.server, q.zone, ""])
                .inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        // Held through the gather: a concurrent scrape's refresh (which may reset a family
        // and fill it again) does not interleave with this one's reading.
        let refreshers = self.refreshers.lock();
        if let Ok(r) = &refreshers {
            for f in r.iter() {
                f(self);
            }
        }
        let mut families = self.registry.gather();
        drop(refreshers);
        families.extend(self.block_families());
        if self.legacy.load(std::sync::atomic::Ordering::Relaxed) {
            let old = legacy_families(&families);
            families.extend(old);
        }
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&families, &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Cache and forward statistics as CoreDNS names them.
    fn block_families(&self) -> Vec<MetricFamily> {
        let blocks = self.blocks.load();
        let mut f = Families::default();
        let mut broken = 0u64;
        let mut rejects = 0u64;
        let mut in_flight = 0u64;
        let mut any_forward = false;
        for b in blocks.iter() {
            if let Some(c) = &b.cache {
                let st = c.stats();
                let base = [
                    ("server", b.server.as_str()),
                    ("view", ""),
                    ("zones", b.zones.as_str()),
                ];
                let with_type = |t: &'static str| {
                    let mut l = base.to_vec();
                    l.push(("type", t));
                    l
                };
                let get =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                f.gauge(
                    "coredns_cache_entries",
                    "The number of elements in the cache.",
                    &with_type("success"),
                    c.entries(Kind::Success) as f64,
                );
                f.gauge(
                    "coredns_cache_entries",
                    "The number of elements in the cache.",
                    &with_type("denial"),
                    c.entries(Kind::Denial) as f64,
                );
                f.counter(
                    "coredns_cache_requests_total",
                    "The count of cache requests.",
                    &base,
                    get(&st.requests),
                );
                f.counter(
                    "coredns_cache_hits_total",
                    "The count of cache hits.",
                    &with_type("success"),
                    get(&st.success_hits),
                );
                f.counter(
                    "coredns_cache_hits_total",
                    "The count of cache hits.",
                    &with_type("denial"),
                    get(&st.denial_hits),
                );
                f.counter("coredns_cache_misses_total", "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.", &base, get(&st.misses));
                f.counter(
                    "coredns_cache_prefetch_total",
                    "The number of times the cache has prefetched a cached item.",
                    &base,
                    get(&st.prefetches),
                );
                f.counter(
                    "coredns_cache_served_stale_total",
                    "The number of requests served from stale cache entries.",
                    &base,
                    get(&st.served_stale),
                );
                f.counter(
                    "coredns_cache_drops_total",
                    "The number responses that are not cached, because the reply is malformed.",
                    &base,
                    0,
                );
                f.counter(
                    "coredns_cache_evictions_total",
                    "The count of cache evictions.",
                    &with_type("success"),
                    get(&st.success_evictions),
                );
                f.counter(
                    "coredns_cache_evictions_total",
                    "The count of cache evictions.",
                    &with_type("denial"),
                    get(&st.denial_evictions),
                );
            }
            if let Some(fw) = &b.forward {
                any_forward = true;
                let st = fw.stats();
                let get =
                    |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
                broken += get(&st.healthcheck_broken);
                rejects += get(&st.max_concurrent_rejects);
                in_flight += u64::from(st.in_flight.load(std::sync::atomic::Ordering::Relaxed));
                for up in &st.upstreams {
                    let to = up.addr.to_string();
                    let base = [("proxy_name", "forward"), ("to", to.as_str())];
                    f.counter(
                        "coredns_proxy_healthcheck_failures_total",
                        "Counter of the number of failed healthchecks.",
                        &base,
                        get(&up.healthcheck_failures),
                    );
                    for reason in crate::dns::forward::DropReason::ALL {
                        let mut l = base.to_vec();
                        l.push(("reason", reason.as_str()));
                        f.counter(
                            "clusterdns_forward_dropped_replies_total",
                            "Replies from an upstream dropped because they do not answer the query sent (reason: id, question, malformed).",
                            &l,
                            up.dropped(reason),
                        );
                    }
                    for (proto_name, hits, misses) in [
                        (
                            if up.tls { "tcp-tls" } else { "tcp" },
                            get(&up.conn_cache_hits_tcp),
                            get(&up.conn_cache_misses_tcp),
                        ),
                        ("udp", 0, get(&up.conn_cache_misses_udp)),
                    ] {
                        let mut l = base.to_vec();
                        l.push(("proto", proto_name));
                        f.counter(
                            "coredns_proxy_conn_cache_hits_total",
                            "Counter of connection cache hits per upstream and protocol.",
                            &l,
                            hits,
                        );
                        f.counter(
                            "coredns_proxy_conn_cache_misses_total",
                            "Counter of connection cache misses per upstream and protocol.",
                            &l,
                            misses,
                        );
                    }
                    for (slot, h) in up.durations.iter().enumerate() {
                        let count = get(&h.count);
                        if count == 0 {
                            continue;
                        }
                        let rcode = if slot < 16 {
                            rcode_label(ResponseCode::from(0, slot as u8))
                        } else {
                            "other"
                        };
                        let mut l = base.to_vec();
                        l.push(("rcode", rcode));
                        let buckets: Vec<(f64, u64)> = time_buckets()
                            .into_iter()
                            .zip(h.buckets.iter().map(get))
                            .collect();
                        f.histogram(
                            "coredns_proxy_request_duration_seconds",
                            "Histogram of the time each request took.",
                            &l,
                            &buckets,
                            count,
                            get(&h.sum_micros) as f64 / 1e6,
                        );
                    }
                }
            }
        }
        if any_forward {
            f.counter(
                "coredns_forward_healthcheck_broken_total",
                "Counter of the number of complete failures of the healthchecks.",
                &[],
                broken,
            );
            f.counter("coredns_forward_max_concurrent_rejects_total", "Counter of the number of queries rejected because the concurrent queries were at maximum.", &[], rejects);
            f.gauge(
                "clusterdns_forward_in_flight",
                "Forwarded queries waiting for an upstream (bounded by max_concurrent, else 10000 per forward block).",
                &[],
                in_flight as f64,
            );
        }
        f.0
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The names dashboards written for older CoreDNS still query, derived from the current
/// families: before 1.7 (`coredns_dns_request_count_total`, ...) and before 1.11
/// (`coredns_forward_*` per upstream).
pub fn legacy_families(current: &[MetricFamily]) -> Vec<MetricFamily> {
    let find = |name: &str| current.iter().find(|f| f.name() == name);
    let mut out = Vec::new();
    // Counters summed over the labels the old name did not have.
    let sums: [(&str, &str, &[&str], &str); 8] = [
        (
            "coredns_dns_requests_total",
            "coredns_dns_request_count_total",
            &["server", "zone", "proto", "family"],
            "Counter of DNS requests made per zone, protocol and family.",
        ),
        (
            "coredns_dns_requests_total",
            "coredns_dns_request_type_count_total",
            &["server", "zone", "type"],
            "Counter of DNS requests per type, per zone.",
        ),
        (
            "coredns_dns_responses_total",
            "coredns_dns_response_rcode_count_total",
            &["server", "zone", "rcode"],
            "Counter of response status codes.",
        ),
        (
            "coredns_panics_total",
            "coredns_panic_count_total",
            &[],
            "A metrics that counts the number of panics.",
        ),
        (
            "coredns_proxy_healthcheck_failures_total",
            "coredns_forward_healthcheck_failures_total",
            &["to"],
            "Counter of the number of failed healthchecks.",
        ),
        (
            "coredns_proxy_request_duration_seconds",
            "coredns_forward_requests_total",
            &["to"],
            "Counter of requests made per upstream.",
        ),
        (
            "coredns_proxy_request_duration_seconds",
            "coredns_forward_request_count_total",
            &["to"],
            "Counter of requests made per upstream.",
        ),
        (
            "coredns_proxy_request_duration_seconds",
            "coredns_forward_responses_total",
            &["to", "rcode"],
            "Counter of responses received per upstream.",
        ),
    ];
    for (from, to, keep, help) in sums {
        let Some(f) = find(from) else { continue };
        let mut groups: Vec<(Vec<(String, String)>, f64)> = Vec::new();
        for m in f.get_metric() {
            let labels: Vec<(String, String)> = m
                .get_label()
                .iter()
                .filter(|l| keep.contains(&l.name()))
                .map(|l| (l.name().to_string(), l.value().to_string()))
                .collect();
            let v = match f.get_field_type() {
                MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
                _ => m.get_counter().get_value(),
            };
            match groups.iter_mut().find(|(l, _)| *l == labels) {
                Some((_, sum)) => *sum += v,
                None => groups.push((labels, v)),
            }
        }
        let mut fam = Families::default();
        for (labels, v) in groups {
            let l: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            fam.counter(to, help, &l, v as u64);
        }
        out.extend(fam.0);
    }
    // Renamed outright.
    if let Some(f) = find("coredns_cache_entries") {
        let mut g = f.clone();
        g.set_name("coredns_cache_size".into());
        out.push(g);
    }
    if let Some(f) = find("coredns_proxy_request_duration_seconds") {
        let mut g = f.clone();
        g.set_name("coredns_forward_request_duration_seconds".into());
        for m in g.mut_metric() {
            let kept: Vec<proto::LabelPair> = m
                .get_label()
                .iter()
                .filter(|l| l.name() != "proxy_name")
                .cloned()
                .collect();
            m.set_label(kept);
        }
        out.push(g);
    }
    out
}

/// Metric families built by hand from statistics kept outside the registry.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn family(&mut self, name: &str, help: &str, t: MetricType) -> &mut MetricFamily {
        if let Some(i) = self.0.iter().position(|f| f.name() == name) {
            return &mut self.0[i];
        }
        let mut f = MetricFamily::default();
        f.set_name(name.to_string());
        f.set_help(help.to_string());
        f.set_field_type(t);
        self.0.push(f);
        self.0.last_mut().expect("just pushed")
    }

    fn metric(labels: &[(&str, &str)]) -> proto::Metric {
        let mut m = proto::Metric::default();
        let mut pairs: Vec<proto::LabelPair> = labels
            .iter()
            .map(|(k, v)| {
                let mut p = proto::LabelPair::default();
                p.set_name(k.to_string());
                p.set_value(v.to_string());
                p
            })
            .collect();
        pairs.sort_by(|a, b| a.name().cmp(b.name()));
        m.set_label(pairs);
        m
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: u64) {
        let mut m = Self::metric(labels);
        let mut c = proto::Counter::default();
        c.set_value(v as f64);
        m.set_counter(c);
        self.family(name, help, MetricType::COUNTER)
            .mut_metric()
            .push(m);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        let mut m = Self::metric(labels);
        let mut g = proto::Gauge::default();
        g.set_value(v);
        m.set_gauge(g);
        self.family(name, help, MetricType::GAUGE)
            .mut_metric()
            .push(m);
    }

    /// `buckets` are (upper bound, non-cumulative count); the rest counts above the last.
    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        let mut m = Self::metric(labels);
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let mut out = Vec::new();
        for (upper, n) in buckets {
            cumulative += n;
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*upper);
            b.set_cumulative_count(cumulative);
            out.push(b);
        }
        h.set_bucket(out);
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        m.set_histogram(h);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }
}

/// The metric handles of one label combination, so that a query costs one lookup here instead
/// of one per metric vector (each hashes every label value and takes a lock).
struct Series {
    zone: Box<str>,
    plugin: Box<str>,
    proto: &'static str,
    family: &'static str,
    qtype: &'static str,
    rcode: &'static str,
    requests: IntCounter,
    responses: IntCounter,
    duration: Histogram,
    request_size: Histogram,
    response_size: Histogram,
    /// Made on the first query with DO set, so the series appears only then (as before).
    do_requests: std::sync::OnceLock<IntCounter>,
    autopath: Option<IntCounter>,
}

/// Label combinations are few (zones x types x rcodes x plugins); past this many, queries
/// are counted through the vectors directly.
const MAX_SERIES: usize = 4096;

/// The metrics of one DNS listener: `server` is its CoreDNS label (`dns://:53`).
pub struct ServerObserver {
    pub metrics: Arc<Metrics>,
    pub server: String,
    series: std::sync::RwLock<std::collections::HashMap<u64, Arc<Series>>>,
    hasher: foldhash::fast::RandomState,
}

impl ServerObserver {
    pub fn new(metrics: Arc<Metrics>, server: String) -> ServerObserver {
        ServerObserver {
            metrics,
            server,
            series: Default::default(),
            hasher: Default::default(),
        }
    }

    fn series(&self, q: &QueryRecord) -> Option<Arc<Series>> {
        let family = if q.ipv6_client { "2" } else { "1" };
        let (qtype, rcode) = (type_label(q.qtype), rcode_label(q.rcode));
        let hash = self
            .hasher
            .hash_one((q.zone, q.plugin, q.proto, family, qtype, rcode));
        let same = |s: &Series| {
            *s.zone == *q.zone
                && *s.plugin == *q.plugin
                && s.proto == q.proto
                && s.family == family
                && s.qtype == qtype
                && s.rcode == rcode
        };
        if let Some(s) = self.series.read().ok()?.get(&hash) {
            return same(s).then(|| s.clone());
        }
        let mut map = self.series.write().ok()?;
        if map.len() >= MAX_SERIES {
            return None;
        }
        let m = &self.metrics;
        let (server, zone) = (self.server.as_str(), q.zone);
        let s = map.entry(hash).or_insert_with(|| {
            Arc::new(Series {
                zone: zone.into(),
                plugin: q.plugin.into(),
                proto: q.proto,
                family,
                qtype,
                rcode,
                requests: m
                    .requests
                    .with_label_values(&[server, zone, "", q.proto, family, qtype]),
                responses: m
                    .responses
                    .with_label_values(&[server, zone, "", rcode, q.plugin]),
                duration: m.duration.with_label_values(&[server, zone, ""]),
                request_size: m
                    .request_size
                    .with_label_values(&[server, zone, "", q.proto]),
                response_size: m
                    .response_size
                    .with_label_values(&[server, zone, "", q.proto]),
                do_requests: Default::default(),
                autopath: (q.plugin == crate::dns::plugins::autopath::PLUGIN)
                    .then(|| m.autopath_success.with_label_values(&[server])),
            })
        });
        same(s).then(|| s.clone())
    }
}

impl crate::dns::tcp::TcpObserver for Metrics {
    fn connections(&self, open: usize) {
        self.tcp_connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    fn refused(&self, reason: &'static str) {
        self.tcp_refused.with_label_values(&[reason]).inc();
    }
}

impl QueryObserver for ServerObserver {
    fn observe(&self, q: &Observed) {
        let record = QueryRecord {
            server: &self.server,
            zone: q.zone,
            proto: q.proto.as_str(),
            ipv6_client: q.src.is_ipv6() && !is_mapped_v4(q.src),
            qtype: q.qtype.unwrap_or(RecordType::Unknown(0)),
            rcode: q.rcode,
            plugin: q.plugin,
            duration: q.duration,
            request_size: q.request_size,
            response_size: q.response_size,
            do_bit: q.do_bit,
        };
        if let Some(r) = q.zonal {
            self.metrics.zonal_answers[r as usize].inc();
        }
        let Some(s) = self.series(&record) else {
            self.metrics.observe(&record);
            return;
        };
        s.requests.inc();
        s.responses.inc();
        s.duration.observe(record.duration.as_secs_f64());
        s.request_size.observe(record.request_size as f64);
        s.response_size.observe(record.response_size as f64);
        if let Some(a) = &s.autopath {
            a.inc();
        }
        if record.do_bit {
            s.do_requests
                .get_or_init(|| {
                    self.metrics
                        .do_requests
                        .with_label_values(&[&self.server, record.zone, ""])
                })
                .inc();
        }
    }
}

fn is_mapped_v4(addr: SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => v6.ip().to_ipv4_mapped().is_some(),
        SocketAddr::V4(_) => false,
    }
}

fn rustc_version() -> &'static str {
    option_env!("CLUSTERDNS_RUSTC_VERSION").unwrap_or("rust")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_buckets_match_coredns() {
        let m = Metrics::new();
        m.observe(&QueryRecord {
            server: "dns://:53",
            zone: "cluster.local.",
            proto: "udp",
            ipv6_client: false,
            qtype: RecordType::A,
            rcode: ResponseCode::NXDomain,
            plugin: "kubernetes",
            duration: Duration::from_micros(300),
            request_size: 60,
            response_size: 120,
            do_bit: false,
        });
        let text = m.render();
        assert!(text.contains(r#"coredns_dns_requests_total{family="1",proto="udp",server="dns://:53",type="A",view="",zone="cluster.local."} 1"#), "{text}");
        assert!(text.contains(r#"coredns_dns_responses_total{plugin="kubernetes",rcode="NXDOMAIN",server="dns://:53",view="",zone="cluster.local."} 1"#));
        assert!(text.contains(r#"coredns_dns_request_duration_seconds_bucket{server="dns://:53",view="",zone="cluster.local.",le="0.0005"} 1"#));
        assert!(text.contains(r#"le="8.192""#));
        assert!(text.contains("coredns_build_info{"));
        assert_eq!(type_label(RecordType::NULL), "other");
    }
}
