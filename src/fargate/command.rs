//! `clusterdns placement`: where every pod runs, which profile selects it, its micro-VM size
//! and every mismatch, for a cluster read once.

use std::path::PathBuf;

use crate::output::{emit, Format};

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
    #[arg(long, value_name = "PATH")]
    pub fargate_profiles: PathBuf,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

/// `clusterdns placement`.
pub async fn run(args: PlacementArgs) -> anyhow::Result<u8> {
    let objects =
        crate::cluster::one_shot::load(args.manifests.as_deref(), args.kubeconfig.as_deref())
            .await?;
    let profiles = super::load_profiles(&args.fargate_profiles)?;
    let json = matches!(args.format, Format::Json);
    emit(&super::placement::run_placement(&objects, &profiles, json));
    Ok(0)
}
