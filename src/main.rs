//! The binary: flags -> options -> tracing -> app -> serve until a signal -> drain.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clusterdns::app::{self, ServeOptions};
use clusterdns::dns::PodMode;
use clusterdns::prober::aws_api::AwsApiArgs;

#[derive(Parser)]
#[command(
    name = "clusterdns",
    version,
    about = "CoreDNS-compatible cluster DNS for Kubernetes clusters with node groups and micro-VMs"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve cluster DNS (with no flags: the embedded demo cluster on 127.0.0.1:1053).
    Serve(ServeArgs),
    /// Where every pod runs (EC2 node or micro-VM), which Fargate profile selects it, the
    /// micro-VM size it gets, and every mismatch.
    Placement(clusterdns::placement::PlacementArgs),
    /// Judge from AWS CLI JSON (or, with --cluster, the AWS APIs) whether micro-VM pods and
    /// node-group pods can reach each other and the DNS servers, and name the missing rule;
    /// with --active, also probe them live and flag every disagreement. Exit 0 all allowed,
    /// 1 one blocked (or a live probe failed or disagreed), 2 bad input.
    Probe(clusterdns::prober::command::ProbeArgs),
    /// Print the cluster zone (or a reverse zone) as an RFC 1035 zone file, e.g. to serve the
    /// same records from NSD or Knot.
    ExportZone(clusterdns::export::ExportArgs),
    /// Run as a per-pod DNS cache (for micro-VM pods, which run no node-local DaemonSet):
    /// a caching forwarder on 127.0.0.1:53 that sends the pod's queries to the cluster DNS
    /// over persistent TCP, serves stale answers while it is unreachable, and probes it.
    Sidecar(SidecarArgs),
    /// Mutating admission webhook (HTTPS, AdmissionReview v1 on POST /mutate) that injects the
    /// DNS sidecar into the pods that will run on micro-VMs (Fargate profiles, fargate-scheduler)
    /// and the pods or namespaces that opt in with clusterdns.io/inject.
    Webhook(Box<WebhookArgs>),
    /// Print a synthetic cluster (namespaces, services, endpoint slices, pods, nodes) as
    /// `kubectl get -A -o yaml` does, for benchmarks; deterministic for a seed.
    GenCluster(clusterdns::gen::GenArgs),
}

#[derive(clap::Args)]
struct SidecarArgs {
    /// The cluster DNS to forward to: the kube-dns service IP (`IP`, `IP:PORT`,
    /// `tls://IP[:PORT]`); repeatable or comma-separated.
    #[arg(
        long,
        value_name = "ADDR",
        env = "CLUSTERDNS_UPSTREAM",
        value_delimiter = ',',
        required = true
    )]
    upstream: Vec<String>,
    /// Where the pod's resolver sends queries (UDP and TCP).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:53")]
    listen: SocketAddr,
    /// Forward over UDP (TCP on truncation) instead of persistent TCP connections.
    #[arg(long)]
    udp_upstream: bool,
    /// Longest time, in seconds, an answer is cached.
    #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=86_400))]
    cache_ttl: u32,
    /// How long, in seconds, expired answers may be served while no upstream answers (0: never).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    serve_stale: u64,
    /// HTTP liveness endpoint, `[HOST]:PORT` (empty host: every interface, for kubelet).
    #[arg(long, value_name = "[HOST]:PORT", default_value = ":8054")]
    health: String,
    /// HTTP readiness endpoint.
    #[arg(long, value_name = "[HOST]:PORT", default_value = ":8055")]
    ready: String,
    /// Prometheus metrics endpoint (CoreDNS names, plus clusterdns_probe_*).
    #[arg(long, value_name = "[HOST]:PORT", default_value = ":9153")]
    metrics: String,
    /// Seconds between probes of every upstream over UDP and TCP (0: no probes).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    probe_interval: u64,
    /// The name the probes ask for.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "kubernetes.default.svc.cluster.local."
    )]
    probe_name: String,
    /// Walk this resolv.conf's search path inside the sidecar (CoreDNS `autopath`): the
    /// pod's first search-path query is answered with a CNAME to the name that exists, so
    /// ndots:5 costs one query instead of one per search domain. Usually /etc/resolv.conf.
    #[arg(long, value_name = "RESOLV-CONF")]
    autopath: Option<PathBuf>,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "CLUSTERDNS_LOG", default_value = "info")]
    log: String,
    /// DNS-over-TCP connection limits and timeouts.
    #[command(flatten)]
    tcp: clusterdns::dns::tcp::TcpLimits,
}

#[derive(clap::Args)]
struct WebhookArgs {
    /// HTTPS address the API server calls.
    #[arg(
        long,
        value_name = "ADDR:PORT",
        required_unless_present = "generate_certs"
    )]
    listen: Option<SocketAddr>,
    /// Serving certificate (PEM, chain allowed); reloaded when the file changes.
    #[arg(long, value_name = "FILE", required_unless_present = "generate_certs")]
    tls_cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1); reloaded with the certificate.
    #[arg(long, value_name = "FILE", required_unless_present = "generate_certs")]
    tls_key: Option<PathBuf>,
    /// The clusterdns image the injected sidecar runs; `self`: the webhook's own image (read
    /// from its Pod, named by POD_NAMESPACE and POD_NAME).
    #[arg(long, value_name = "IMAGE", required_unless_present = "generate_certs")]
    sidecar_image: Option<String>,
    /// `aws eks describe-fargate-profile` JSON (file or directory): pods these select get the
    /// sidecar, and a warning when it makes their micro-VM bigger.
    #[arg(long, value_name = "PATH")]
    fargate_profiles: Option<PathBuf>,
    /// The cluster DNS service IP the sidecar forwards to (repeatable or comma-separated).
    /// Default: read kube-system/kube-dns through the API.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    upstream: Vec<String>,
    /// The cluster domain (the pods' search path).
    #[arg(long, value_name = "ZONE", default_value = "cluster.local")]
    zone: String,
    /// Kubeconfig for the API (default: KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Plain-HTTP Prometheus metrics address (they are also on the HTTPS port at /metrics).
    #[arg(long, value_name = "ADDR:PORT")]
    metrics: Option<SocketAddr>,
    /// Inject a native sidecar (init container with restartPolicy: Always, Kubernetes 1.29+):
    /// auto decides from the API server's version.
    #[arg(long, value_enum, default_value = "auto")]
    native_sidecar: clusterdns::webhook::NativeSidecar,
    /// The sidecar's CPU request.
    #[arg(long, value_name = "QUANTITY", default_value = "10m")]
    sidecar_cpu: String,
    /// The sidecar's memory request.
    #[arg(long, value_name = "QUANTITY", default_value = "16Mi")]
    sidecar_memory: String,
    /// The sidecar's memory limit.
    #[arg(long, value_name = "QUANTITY", default_value = "64Mi")]
    sidecar_memory_limit: String,
    /// The webhook's own namespace (its pods are never injected).
    #[arg(long, value_name = "NS", env = "POD_NAMESPACE")]
    namespace: Option<String>,
    /// The webhook's own pod name (for `--sidecar-image self`).
    #[arg(long, value_name = "NAME", env = "POD_NAME")]
    pod_name: Option<String>,
    /// Seconds between checks of the certificate files.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    cert_reload_interval: f64,
    /// Write a self-signed CA and a serving certificate (ca.crt, tls.crt, tls.key) for
    /// `--service`.`--namespace`.svc into DIR, print how to install them, and exit.
    #[arg(long, value_name = "DIR")]
    generate_certs: Option<PathBuf>,
    /// With --generate-certs: the webhook's Service name.
    #[arg(long, value_name = "NAME", default_value = "clusterdns-webhook")]
    service: String,
    /// With --generate-certs: extra DNS names or IPs in the certificate.
    #[arg(long, value_name = "NAME")]
    extra_name: Vec<String>,
    /// With --generate-certs: validity in days.
    #[arg(long, value_name = "DAYS", default_value_t = 365)]
    days: u32,
    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "CLUSTERDNS_LOG", default_value = "info")]
    log: String,
}

#[derive(clap::Parser)]
struct ServeArgs {
    /// Serve this Corefile (CoreDNS syntax; `-conf FILE` works too). Without it, a built-in
    /// Corefile like Amazon EKS's on localhost ports: DNS 127.0.0.1:1053, health
    /// 127.0.0.1:8080, ready 127.0.0.1:8181, prometheus 127.0.0.1:9153 (all port 0 when
    /// `--dns-addr` has port 0).
    #[arg(long, value_name = "FILE")]
    corefile: Option<PathBuf>,
    /// Serve the Kubernetes objects in this file or directory (YAML or JSON as `kubectl get
    /// -o yaml|json` prints them: single objects, Lists, multi-document files) to the
    /// `kubernetes` plugin. Edits are picked up without a restart. Without it, the embedded
    /// demo cluster is served.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// Follow a live cluster through the Kubernetes API with this kubeconfig (lists and
    /// watches Services, EndpointSlices, Namespaces, Nodes, and Pods for `pods verified`).
    /// With `--corefile` and no `--manifests`, the API is used anyway: `KUBECONFIG` or the
    /// in-cluster service account, as CoreDNS does.
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    kubeconfig: Option<PathBuf>,
    /// How the Kubernetes API source fetches each kind before watching it: `streaming` (one
    /// watch with sendInitialEvents: no list pages on either side, served from the API
    /// server's watch cache; Kubernetes 1.32 and 1.34+), `paged` (lists of 500, then a watch),
    /// or `auto`: streaming, falling back to paged where the API server refuses or ignores it.
    #[arg(
        long,
        value_name = "MODE",
        env = "CLUSTERDNS_INITIAL_LIST",
        default_value = "auto"
    )]
    initial_list: clusterdns::cluster::kube_source::InitialList,
    /// `aws eks describe-fargate-profile` JSON (file or directory): serve `/debug/placement`
    /// (JSON: where each pod runs, its profile and micro-VM size, mismatches) on the HTTP
    /// endpoints, and the `clusterdns_placement_mismatches` gauge.
    #[arg(long, value_name = "PATH")]
    fargate_profiles: Option<PathBuf>,
    /// AWS CLI JSON (see `clusterdns probe --help`): re-judge the connectivity paths for the
    /// live cluster every `--probe-interval` and export `clusterdns_probe_paths`.
    #[arg(long, value_name = "PATH", conflicts_with = "cluster")]
    aws: Option<PathBuf>,
    // With `--cluster`: the prober reads AWS from its APIs every `--probe-interval` instead,
    // keeping the last good verdicts while AWS is unreachable.
    #[command(flatten)]
    aws_api: AwsApiArgs,
    /// Seconds between prober runs.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    probe_interval: u64,
    /// With `--aws`: also send live DNS probes (UDP and TCP 53) to every DNS endpoint and the
    /// DNS service IP: `clusterdns_probe_up`, `clusterdns_probe_latency_seconds`.
    #[arg(long)]
    probe_active: bool,
    /// Also export the metric names of CoreDNS before 1.7 (coredns_dns_request_count_total,
    /// ...) and before 1.11 (coredns_forward_requests_total{to}, ...) for older dashboards.
    #[arg(long)]
    legacy_metrics: bool,
    /// Built-in Corefile only: address for DNS over UDP and TCP. Port 0 picks a free port
    /// (printed on start). Default 127.0.0.1:1053.
    #[arg(long, value_name = "ADDR:PORT")]
    dns_addr: Option<SocketAddr>,
    /// Built-in Corefile only: the cluster domain. Default cluster.local.
    #[arg(long, value_name = "ZONE")]
    zone: Option<String>,
    /// Built-in Corefile only: TTL of cluster records, 0-3600 seconds (CoreDNS default 5;
    /// kubeadm sets 30). Default 5.
    #[arg(long, value_name = "N")]
    ttl: Option<u32>,
    /// Built-in Corefile only: pod records `a-b-c-d.<ns>.pod.<zone>`: disabled (NXDOMAIN),
    /// insecure (answer the IP in the name, the EKS and kubeadm default) or verified (only
    /// IPs of existing pods). Default insecure.
    #[arg(long, value_name = "MODE")]
    pods: Option<PodMode>,
    /// Built-in Corefile only: where names outside the cluster go (`forward . UPSTREAM...`):
    /// addresses (`10.0.0.2`, `127.0.0.1:5300`) or resolv.conf files; repeatable. `none`
    /// serves the cluster zones only and refuses other names. Default /etc/resolv.conf.
    #[arg(long, value_name = "UPSTREAM")]
    upstream: Vec<String>,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `clusterdns=debug`.
    #[arg(long, env = "CLUSTERDNS_LOG", default_value = "info")]
    log: String,
    /// DNS-over-TCP connection limits and timeouts.
    #[command(flatten)]
    tcp: clusterdns::dns::tcp::TcpLimits,
}

/// kube-rs logs every failed API request at ERROR (its HTTP trace layer) and every 403 at WARN,
/// per attempt and resource: 17 lines in 5 s of outage. The Kubernetes source reports outages
/// itself (a line going stale, one recovering, a periodic summary; each attempt at debug), so
/// those two are silenced unless the filter names a kube target.
const QUIET_KUBE: &str = "kube_client::client::builder=off,kube_runtime::watcher=error";

fn init_tracing(filter: &str) {
    let filter = if filter.contains("kube") {
        filter.to_string()
    } else {
        format!("{filter},{QUIET_KUBE}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET_KUBE}")));
    // Colour only on a terminal: logs collected by kubectl or a file stay plain text.
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Registers the SIGTERM and SIGINT handlers at the call, not at the first poll: a mode calls it
/// before it prints the banner that says it is up, so a SIGTERM sent the moment it is ready (a
/// pod deleted right after it started, a test) starts the lameduck instead of killing the
/// process with the default action.
#[cfg(unix)]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut t), Ok(mut i)) => {
                tokio::select! {
                    _ = t.recv() => {}
                    _ = i.recv() => {}
                }
            }
            (Ok(mut s), Err(_)) | (Err(_), Ok(mut s)) => {
                s.recv().await;
            }
            (Err(_), Err(_)) => std::future::pending().await,
        }
    }
}

#[cfg(not(unix))]
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<u8> {
    init_tracing(&args.log);
    if args.corefile.is_some() {
        // These shape the built-in Corefile; with a Corefile, it says what it wants.
        for (set, flag) in [
            (args.dns_addr.is_some(), "--dns-addr"),
            (args.zone.is_some(), "--zone"),
            (args.ttl.is_some(), "--ttl"),
            (args.pods.is_some(), "--pods"),
            (!args.upstream.is_empty(), "--upstream"),
        ] {
            if set {
                anyhow::bail!("{flag} applies to the built-in configuration only; with --corefile, set it in the Corefile");
            }
        }
    }
    let defaults = ServeOptions::default();
    let opts = ServeOptions {
        corefile: args.corefile,
        manifests: args.manifests,
        kubeconfig: args.kubeconfig,
        initial_list: args.initial_list,
        fargate_profiles: args.fargate_profiles,
        aws: args.aws,
        aws_api: args.aws_api.options(),
        probe_interval: std::time::Duration::from_secs(args.probe_interval),
        probe_active: args.probe_active,
        legacy_metrics: args.legacy_metrics,
        dns_addr: args.dns_addr.unwrap_or(defaults.dns_addr),
        zone: args.zone.unwrap_or(defaults.zone),
        ttl: args.ttl.unwrap_or(defaults.ttl),
        pods: args.pods.unwrap_or(defaults.pods),
        upstreams: match args.upstream.as_slice() {
            [] => vec!["/etc/resolv.conf".to_string()],
            [none] if none == "none" => Vec::new(),
            list => list.to_vec(),
        },
        sidecar: None,
        tcp: args.tcp,
    };
    run(opts).await
}

async fn sidecar(args: SidecarArgs) -> anyhow::Result<u8> {
    init_tracing(&args.log);
    let upstreams: Vec<String> = args
        .upstream
        .iter()
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    run(ServeOptions {
        sidecar: Some(clusterdns::sidecar::SidecarOptions {
            listen: args.listen,
            upstreams,
            udp_upstream: args.udp_upstream,
            cache_ttl: args.cache_ttl,
            serve_stale: std::time::Duration::from_secs(args.serve_stale),
            health: args.health,
            ready: args.ready,
            metrics: args.metrics,
            probe_interval: std::time::Duration::from_secs(args.probe_interval),
            probe_name: args.probe_name,
            autopath: args.autopath,
        }),
        tcp: args.tcp,
        ..ServeOptions::default()
    })
    .await
}

async fn webhook(a: WebhookArgs) -> anyhow::Result<u8> {
    use clusterdns::webhook::{run, CertOptions, WebhookOptions};
    init_tracing(&a.log);
    if !(a.cert_reload_interval > 0.0 && a.cert_reload_interval <= 3600.0) {
        anyhow::bail!(
            "--cert-reload-interval {}: expected 0-3600 seconds",
            a.cert_reload_interval
        );
    }
    let generate_certs = a.generate_certs.map(|dir| CertOptions {
        dir,
        service: a.service,
        namespace: a
            .namespace
            .clone()
            .unwrap_or_else(|| "clusterdns-system".into()),
        extra_names: a.extra_name,
        days: a.days,
    });
    let opts = WebhookOptions {
        listen: a.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 8443))),
        tls_cert: a.tls_cert.unwrap_or_default(),
        tls_key: a.tls_key.unwrap_or_default(),
        sidecar_image: a.sidecar_image.unwrap_or_default(),
        fargate_profiles: a.fargate_profiles,
        upstreams: a
            .upstream
            .iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect(),
        zone: a.zone,
        kubeconfig: a.kubeconfig,
        metrics: a.metrics,
        native_sidecar: a.native_sidecar,
        sidecar_cpu: a.sidecar_cpu,
        sidecar_memory: a.sidecar_memory,
        sidecar_memory_limit: a.sidecar_memory_limit,
        namespace: a.namespace,
        pod_name: a.pod_name,
        cert_reload_interval: std::time::Duration::from_secs_f64(a.cert_reload_interval),
        generate_certs,
    };
    run(opts, shutdown_signal()).await
}

/// Starts the server, prints where it listens, and serves until a signal or a fatal error.
async fn run(opts: ServeOptions) -> anyhow::Result<u8> {
    let signalled = shutdown_signal();
    let running = app::start(opts).await?;
    // Tests and scripts read these lines to find the ports chosen for port 0. One write, and
    // errors ignored: a reader that closes the pipe after the first line must not kill us.
    let mut banner = String::new();
    for addr in &running.dns_addrs {
        banner.push_str(&format!("clusterdns: serving DNS on {addr} (udp+tcp)\n"));
    }
    for (kind, addr) in &running.http_addrs {
        banner.push_str(&format!("clusterdns: serving {kind} on http://{addr}\n"));
    }
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(banner.as_bytes());
    let _ = stdout.flush();
    drop(stdout);
    let fatal = running.fatal_token();
    tokio::select! {
        _ = signalled => {}
        _ = fatal.cancelled() => {}
    }
    if let Some(msg) = running.fatal_message() {
        eprintln!("clusterdns: {msg}");
        running.cancel_token().cancel();
        running.wait().await;
        return Ok(1);
    }
    tracing::info!("shutting down: draining queries in flight");
    running.shutdown().await;
    Ok(0)
}

/// CoreDNS is started as `coredns -conf FILE`; accept that spelling (also `-conf=FILE`,
/// `--conf`) by rewriting it to `serve --corefile FILE` before clap parses.
fn rewrite_conf_args(args: Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() + 1);
    let mut conf = false;
    let mut iter = args.into_iter();
    out.extend(iter.next());
    for a in iter {
        if let Some(v) = a
            .strip_prefix("-conf=")
            .or_else(|| a.strip_prefix("--conf="))
        {
            out.push(format!("--corefile={v}"));
            conf = true;
        } else if a == "-conf" || a == "--conf" {
            out.push("--corefile".into());
            conf = true;
        } else {
            out.push(a);
        }
    }
    // `clusterdns -conf FILE` alone (as a CoreDNS image runs it) means serve.
    if conf && !out.iter().skip(1).any(|a| a == "serve") {
        out.insert(1, "serve".into());
    }
    out
}

fn main() -> ExitCode {
    clusterdns::malloc::limit_arenas();
    let cli = Cli::parse_from(rewrite_conf_args(
        std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
    ));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterdns: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let command = cli
        .command
        .unwrap_or(Command::Serve(ServeArgs::parse_from(["serve"])));
    let result = runtime.block_on(async {
        match command {
            Command::Serve(args) => serve(args).await,
            Command::Sidecar(args) => sidecar(args).await,
            Command::Webhook(args) => webhook(*args).await,
            Command::Placement(args) => clusterdns::placement::run(args).await,
            Command::Probe(args) => clusterdns::prober::command::run(args).await,
            Command::ExportZone(args) => clusterdns::export::run(args).await,
            Command::GenCluster(args) => clusterdns::gen::run(&args),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("clusterdns: {}", clusterdns::report::one_line(e.as_ref()));
            ExitCode::from(2)
        }
    }
}
