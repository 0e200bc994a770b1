//! The prober's AWS input read straight from the AWS APIs, through the official SDK.
//!
//! ```text
//!  aws-config: default chain (env, --profile, web identity/IRSA, Pod Identity, instance role),
//!              region, AWS_ENDPOINT_URL / --endpoint-url, retries (standard, throttling backoff),
//!              timeouts
//!    EKS DescribeCluster ──> vpcId, subnets, cluster security group
//!      ├─ EKS ListFargateProfiles + DescribeFargateProfile, ListNodegroups + DescribeNodegroup
//!      ├─ EC2 DescribeVpcs / Subnets / SecurityGroups / NetworkAcls / NetworkInterfaces
//!      │        (filtered server-side by vpc-id; every listing through the SDK paginators)
//!      └─ EC2 DescribeLaunchTemplateVersions (only the versions node groups use)
//!            ──> documents in the AWS CLI's JSON shapes ──> aws::VpcModel (the parser of --aws DIR)
//!                                                      └──> --save-aws DIR (the same files)
//! ```
//!
//! The SDK's types are not serde types, so each is converted by hand into the shape `aws ...
//! --output json` prints (PascalCase for EC2, camelCase for EKS). Going through those documents
//! rather than building the model directly means one parser, one set of verdicts, and a saved
//! directory that replays exactly what was judged.
//!
//! A denied call (AccessDenied, UnauthorizedOperation) is not fatal: it is recorded as a
//! `DeniedCalls` document naming the IAM action, and the paths that needed that input are
//! judged `unknown` with that reason. Only DescribeCluster is required: without it the VPC is
//! not known.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

pub use super::aws::DeniedCall;
use super::aws::VpcModel;
use super::ProbeError;
#[cfg(not(feature = "aws-api"))]
use crate::fargate::FargateProfile;

/// Flags shared by `probe`, `serve` and `placement`: read AWS through its APIs.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AwsApiArgs {
    /// Read the AWS side (EKS cluster, Fargate profiles, node groups, VPC, subnets, security
    /// groups, network ACLs, ENIs, launch templates) from the AWS APIs for this EKS cluster,
    /// with the credentials every AWS tool finds (environment, --profile, IRSA, Pod Identity,
    /// instance role). Needs the read-only IAM policy in manifests/examples/iam.
    #[arg(long, value_name = "NAME")]
    pub cluster: Option<String>,
    /// AWS region of the cluster (default: AWS_REGION or the profile's region).
    #[arg(long, value_name = "REGION", requires = "cluster")]
    pub region: Option<String>,
    /// Named profile of ~/.aws/config and ~/.aws/credentials (default: AWS_PROFILE or default).
    #[arg(long, value_name = "PROFILE", requires = "cluster")]
    pub profile: Option<String>,
    /// Send every AWS API call here instead (e.g. a VPC endpoint or an emulator);
    /// AWS_ENDPOINT_URL is honoured too.
    #[arg(long, value_name = "URL", requires = "cluster")]
    pub endpoint_url: Option<String>,
    /// Longest time, in seconds, one AWS API operation may take, retries included.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub aws_timeout: u64,
    /// Also write what was read, in the AWS CLI JSON shapes `--aws DIR` reads, to this
    /// directory (for a bug report or an offline replay).
    #[arg(long, value_name = "DIR", requires = "cluster")]
    pub save_aws: Option<PathBuf>,
    /// Items per page of every paginated call (tests; the default is each API's maximum).
    #[arg(long, value_name = "N", hide = true, requires = "cluster")]
    pub aws_page_size: Option<i32>,
}

impl AwsApiArgs {
    /// `None` without `--cluster`.
    pub fn options(&self) -> Option<ApiOptions> {
        Some(ApiOptions {
            cluster: self.cluster.clone()?,
            region: self.region.clone(),
            profile: self.profile.clone(),
            endpoint_url: self.endpoint_url.clone(),
            timeout: Duration::from_secs(self.aws_timeout),
            page_size: self.aws_page_size,
            save: self.save_aws.clone(),
        })
    }
}

#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub cluster: String,
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
    pub timeout: Duration,
    pub page_size: Option<i32>,
    pub save: Option<PathBuf>,
}

/// What one read of AWS produced: CLI-shaped documents (file name, JSON).
#[derive(Debug, Clone, Default)]
pub struct Fetched {
    pub docs: Vec<(String, Value)>,
    pub denied: Vec<DeniedCall>,
    /// HTTP requests sent, retries included.
    pub requests: usize,
    pub elapsed: Duration,
}

impl Fetched {
    /// The model, through the same parser as `--aws DIR`.
    pub fn model(&self) -> Result<VpcModel, ProbeError> {
        let mut model = VpcModel::default();
        for (name, doc) in self.all_docs() {
            let text = serde_json::to_string(&doc).unwrap_or_default();
            model.add_text(&text, Path::new(&format!("aws-api:{name}")))?;
        }
        Ok(model)
    }

    fn all_docs(&self) -> Vec<(String, Value)> {
        let mut docs = self.docs.clone();
        if !self.denied.is_empty() {
            let calls: Vec<Value> = self
                .denied
                .iter()
                .map(|d| {
                    json!({"Action": d.action, "Input": d.input, "Code": d.code, "Message": d.message})
                })
                .collect();
            docs.push((
                "clusterdns-denied-calls.json".into(),
                json!({ "DeniedCalls": calls }),
            ));
        }
        docs
    }

    /// Writes every document as a `.json` file into `dir` (created if needed).
    pub fn save(&self, dir: &Path) -> Result<(), ProbeError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| ProbeError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for (name, doc) in self.all_docs() {
            let path = dir.join(&name);
            let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            text.push('\n');
            std::fs::write(&path, text).map_err(io(&path))?;
        }
        Ok(())
    }

    /// One line for people: how much was read, how, and what was denied.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "read AWS in {} ms with {} API requests",
            self.elapsed.as_millis(),
            self.requests
        );
        for d in &self.denied {
            s.push_str(&format!("; {} denied ({})", d.action, d.code));
        }
        s
    }
}

#[cfg(feature = "aws-api")]
mod sdk;
#[cfg(feature = "aws-api")]
pub use sdk::*;

/// Without the `aws-api` feature (the fuzz build leaves the SDK out: over a million lines of
/// generated code that no fuzz target reaches), `--cluster` says how to get it.
#[cfg(not(feature = "aws-api"))]
pub async fn fetch(_opts: &ApiOptions) -> Result<Fetched, ProbeError> {
    Err(ProbeError::Api(
        "this clusterdns was built without the `aws-api` feature; rebuild with default features to use --cluster".into(),
    ))
}

/// Without the `aws-api` feature: see `fetch`.
#[cfg(not(feature = "aws-api"))]
pub async fn fetch_fargate_profiles(opts: &ApiOptions) -> Result<Vec<FargateProfile>, ProbeError> {
    fetch(opts).await.map(|_| Vec::new())
}

/// `probe --cluster`: one read of AWS, saved when `--save-aws` asks, as a model, with the
/// one-line summary for stderr.
pub async fn read(opts: &ApiOptions) -> Result<(VpcModel, String), ProbeError> {
    let fetched = fetch(opts).await?;
    if let Some(dir) = &opts.save {
        fetched.save(dir)?;
    }
    Ok((fetched.model()?, fetched.summary()))
}

/// Where `serve` reads the AWS side from on every prober run.
#[derive(Debug, Clone)]
pub enum AwsSource {
    /// `--aws DIR`: AWS CLI JSON files, re-read every time (they may be refreshed).
    Dir(PathBuf),
    /// `--cluster NAME`: the AWS APIs.
    Api(ApiOptions),
}

impl AwsSource {
    pub async fn load(&self) -> Result<VpcModel, ProbeError> {
        match self {
            AwsSource::Dir(dir) => super::aws::load(dir),
            AwsSource::Api(opts) => {
                let (model, summary) = read(opts).await?;
                tracing::debug!("prober: {summary}");
                if !model.denied.is_empty() {
                    let actions: Vec<&str> =
                        model.denied.iter().map(|d| d.action.as_str()).collect();
                    tracing::warn!(
                        "prober: denied {}: the paths that need them are judged unknown",
                        actions.join(", ")
                    );
                }
                Ok(model)
            }
        }
    }
}
