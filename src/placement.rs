//! `clusterdns placement` (a mode of its own: it reads Fargate profiles from files or, through
//! the prober's AWS client, from AWS):  where every pod runs, which profile selects it, its micro-VM size
//! and every mismatch, for a cluster read once.

use std::path::PathBuf;

use crate::output::{emit, Format};
use crate::prober::aws_api::{self, AwsApiArgs};

#[derive(clap::Args)]
pub struct PlacementArgs {
    /// Kubernetes objects (pods, nodes) as `kubectl get -o yaml` prints them; default: the
    /// embedded demo cluster.
    #[arg(long, value_name = "PATH")]
    pub manifests: Option<PathBuf>,
    /// Read pods and nodes from a live cluster through this kubeconfig instead.
    #[arg(long, value_name = "FILE", conflicts_with = "manifests")]
    pub kubeconfig: Option<PathBuf>,
    /// `aws eks describe-fargate-profile` JSON: a file or a directory of them.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub fargate_profiles: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Or read the Fargate profiles from the AWS APIs (`--cluster NAME`).
    #[command(flatten)]
    pub aws_api: AwsApiArgs,
}

/// `clusterdns placement`.
pub async fn run(args: PlacementArgs) -> anyhow::Result<u8> {
    let objects =
        crate::cluster::one_shot::load(args.manifests.as_deref(), args.kubeconfig.as_deref())
            .await?;
    let profiles = match (&args.fargate_profiles, args.aws_api.options()) {
        (Some(path), _) => crate::fargate::load_profiles(path)?,
        (None, Some(opts)) => aws_api::fetch_fargate_profiles(&opts).await?,
        (None, None) => anyhow::bail!("--fargate-profiles PATH or --cluster NAME is required"),
    };
    let json = matches!(args.format, Format::Json);
    emit(&crate::fargate::placement::run_placement(
        &objects, &profiles, json,
    ));
    Ok(0)
}
