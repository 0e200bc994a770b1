//! The binary: flags -> options -> tracing -> app -> serve until a signal -> drain.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use clusterdns::app::{self, ServeOptions};
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
            Command::Serve(args) => serve(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("clusterdns: {e:#}");
            ExitCode::from(2)
        }
    }
}
