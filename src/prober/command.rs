//! `clusterdns probe`: reachability verdicts from AWS CLI JSON and, with `--active`, live
//! probes, for a cluster read once.

use std::path::PathBuf;

use super::aws_api::{self, AwsApiArgs};
use crate::output::{emit, Format};

#[derive(clap::Args)]
pub struct ProbeArgs {
    /// A directory (or file) of AWS CLI JSON: eks describe-cluster, describe-fargate-profile,
    /// describe-nodegroup, ec2 describe-subnets, describe-security-groups,
    /// describe-network-acls, describe-network-interfaces.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["live_only", "targets_only", "cluster"], conflicts_with = "cluster")]
    pub aws: Option<PathBuf>,
    /// Or read them straight from the AWS APIs (`--region R --cluster NAME`).
    #[command(flatten)]
    pub aws_api: AwsApiArgs,
    /// Kubernetes objects as `kubectl get -o yaml` prints them; default: the embedded demo.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// Read the cluster from a live API server through this kubeconfig instead.
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also probe live from here: DNS over UDP and TCP to every DNS endpoint and the DNS
    /// service IP, TCP connect / HTTP GET to service endpoints; every disagreement with the
    /// static verdict is listed first. Exit 1 on a failed probe or a disagreement.
    #[arg(long)]
    pub active: bool,
    /// Live probes only, without AWS JSON (implies --active).
    #[arg(long, conflicts_with_all = ["aws", "cluster"])]
    pub live_only: bool,
    /// List the live targets and exit without sending anything.
    #[arg(long)]
    pub targets_only: bool,
    /// Per-probe timeout in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub timeout: u64,
    /// Probes in flight at once.
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub concurrency: u64,
    /// Send every probe from this local address.
    #[arg(long, value_name = "IP")]
    pub source: Option<std::net::IpAddr>,
}

/// `clusterdns probe`: the exit code is the verdict (0 all allowed, 1 one blocked or a live
/// probe failed or disagreed, 2 bad input).
pub async fn run(args: ProbeArgs) -> anyhow::Result<u8> {
    use super::active;
    let objects =
        crate::cluster::one_shot::load(args.manifests.as_deref(), args.kubeconfig.as_deref())
            .await?;
    let json = matches!(args.format, Format::Json);
    if args.targets_only {
        emit(&active::render_targets(&active::targets(&objects).0, json));
        return Ok(0);
    }
    let model = match args.aws_api.options() {
        Some(opts) => match aws_api::read(&opts).await {
            Ok((model, summary)) => {
                eprintln!("clusterdns probe: {summary}");
                Some(model)
            }
            Err(e) => {
                eprintln!("clusterdns probe: {e}");
                return Ok(e.exit_code());
            }
        },
        None => None,
    };
    let result = match (&args.aws, &model, args.active || args.live_only) {
        (_, Some(m), false) => Ok(super::report::run_model(m, &objects, json)),
        (Some(aws), None, false) => super::report::run_static(aws, &objects, json),
        (aws, model, true) => {
            if let Some(ip) = args.source {
                active::check_source(ip)
                    .map_err(|e| anyhow::anyhow!("--source {ip}: not usable here: {e}"))?;
            }
            let opts = active::ActiveOptions {
                timeout: std::time::Duration::from_millis(args.timeout),
                concurrency: usize::try_from(args.concurrency).unwrap_or(1),
                source: args.source,
                ..Default::default()
            };
            match model {
                Some(m) => Ok(active::run_active_model(Some(m), &objects, &opts, json).await),
                None => active::run_active(aws.as_deref(), &objects, &opts, json).await,
            }
        }
        (None, None, false) => {
            anyhow::bail!("--aws PATH or --cluster NAME is required without --live-only")
        }
    };
    match result {
        Ok((out, code)) => {
            emit(&out);
            Ok(code)
        }
        Err(e) => {
            eprintln!("clusterdns probe: {e}");
            Ok(e.exit_code())
        }
    }
}
