//! The binary: flags -> options -> tracing -> app -> serve until a signal -> drain.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clusterdns::app::{self, ServeOptions};
use clusterdns::cluster::objects::ObjectSet;
use clusterdns::dns::PodMode;

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
    Placement(PlacementArgs),
    /// Judge from AWS CLI JSON whether micro-VM pods and node-group pods can reach each other
    /// and the DNS servers, and name the missing rule. Exit 0 all allowed, 1 one blocked, 2
    /// bad input.
    Probe(ProbeArgs),
    /// Print the cluster zone (or a reverse zone) as an RFC 1035 zone file, e.g. to serve the
    /// same records from NSD or Knot.
    ExportZone(ExportArgs),
    /// Print a synthetic cluster (namespaces, services, endpoint slices, pods, nodes) as
    /// `kubectl get -A -o yaml` does, for benchmarks; deterministic for a seed.
    GenCluster(clusterdns::gen::GenArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// Kubernetes objects as `kubectl get -o yaml` prints them; default: the embedded demo.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// The cluster domain.
    #[arg(long, default_value = "cluster.local")]
    zone: String,
    /// Print this reverse zone instead: in-addr.arpa or ip6.arpa.
    #[arg(long, value_name = "ZONE")]
    reverse: Option<String>,
    #[arg(long, default_value_t = 5)]
    ttl: u32,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(clap::Args)]
struct PlacementArgs {
    /// Kubernetes objects (pods, nodes) as `kubectl get -o yaml` prints them; default: the
    /// embedded demo cluster.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// `aws eks describe-fargate-profile` JSON: a file or a directory of them.
    #[arg(long, value_name = "PATH")]
    fargate_profiles: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(clap::Args)]
struct ProbeArgs {
    /// A directory (or file) of AWS CLI JSON: eks describe-cluster, describe-fargate-profile,
    /// describe-nodegroup, ec2 describe-subnets, describe-security-groups,
    /// describe-network-acls, describe-network-interfaces.
    #[arg(long, value_name = "PATH")]
    aws: PathBuf,
    /// Kubernetes objects as `kubectl get -o yaml` prints them; default: the embedded demo.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(clap::Parser)]
struct ServeArgs {
    /// Serve the Kubernetes objects in this file or directory (YAML or JSON as `kubectl get
    /// -o yaml|json` prints them: single objects, Lists, multi-document files). Edits are
    /// picked up without a restart. Without it, the embedded demo cluster is served.
    #[arg(long, value_name = "PATH")]
    manifests: Option<PathBuf>,
    /// Address for DNS over UDP and TCP. Port 0 picks a free port (printed on start).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:1053")]
    dns_addr: SocketAddr,
    /// The cluster domain.
    #[arg(long, value_name = "ZONE", default_value = "cluster.local")]
    zone: String,
    /// TTL of cluster records, 0-3600 seconds (CoreDNS default 5; kubeadm sets 30).
    #[arg(long, value_name = "N", default_value_t = 5)]
    ttl: u32,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: disabled (NXDOMAIN), insecure (answer the IP
    /// in the name, the EKS and kubeadm default) or verified (only IPs of existing pods).
    #[arg(long, value_name = "MODE", default_value = "insecure")]
    pods: PodMode,
    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `clusterdns=debug`.
    #[arg(long, env = "CLUSTERDNS_LOG", default_value = "info")]
    log: String,
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_tracing(&args.log);
    let running = app::start(ServeOptions {
        manifests: args.manifests,
        dns_addr: args.dns_addr,
        zone: args.zone,
        ttl: args.ttl,
        pods: args.pods,
    })
    .await?;
    // Tests and scripts read this line to find the port chosen for `--dns-addr ...:0`.
    println!("clusterdns: serving DNS on {} (udp+tcp)", running.dns_addr);
    let _ = std::io::stdout().flush();
    shutdown_signal().await;
    tracing::info!("shutting down: draining queries in flight");
    running.shutdown().await;
    Ok(())
}

fn objects(manifests: Option<&std::path::Path>) -> anyhow::Result<ObjectSet> {
    Ok(match manifests {
        Some(p) => clusterdns::cluster::objects::load_path(p)?,
        None => clusterdns::cluster::file_source::embedded_objects()?,
    })
}

fn placement(args: PlacementArgs) -> anyhow::Result<u8> {
    let objects = objects(args.manifests.as_deref())?;
    let profiles = clusterdns::fargate::load_profiles(&args.fargate_profiles)?;
    let json = matches!(args.format, Format::Json);
    print!(
        "{}",
        clusterdns::fargate::placement::run_placement(&objects, &profiles, json)
    );
    Ok(0)
}

fn probe(args: ProbeArgs) -> anyhow::Result<u8> {
    let objects = objects(args.manifests.as_deref())?;
    let json = matches!(args.format, Format::Json);
    match clusterdns::prober::report::run_static(&args.aws, &objects, json) {
        Ok((out, code)) => {
            print!("{out}");
            Ok(code)
        }
        Err(e) => {
            eprintln!("clusterdns probe: {e}");
            Ok(e.exit_code())
        }
    }
}

fn export_zone(args: ExportArgs) -> anyhow::Result<u8> {
    use clusterdns::cluster::{Snapshot, Store};
    let objects = objects(args.manifests.as_deref())?;
    let snap = Snapshot::build(
        std::sync::Arc::new(Store::from_objects(&objects)),
        clusterdns::cluster::snapshot::now_serial(),
        true,
    );
    let text = match args.reverse.as_deref() {
        None => clusterdns::export::forward_zone(&snap, &args.zone, args.ttl),
        Some(r @ ("in-addr.arpa" | "ip6.arpa" | "in-addr.arpa." | "ip6.arpa.")) => {
            clusterdns::export::reverse_zone(&snap, r, &args.zone, args.ttl)
        }
        Some(other) => anyhow::bail!("--reverse {other}: expected in-addr.arpa or ip6.arpa"),
    };
    print!("{text}");
    Ok(0)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Serve(args) => serve(args).await.map(|()| 0),
            Command::Placement(args) => placement(args),
            Command::Probe(args) => probe(args),
            Command::ExportZone(args) => export_zone(args),
            Command::GenCluster(args) => clusterdns::gen::run(&args),
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("clusterdns: {e:#}");
            ExitCode::from(2)
        }
    }
}
