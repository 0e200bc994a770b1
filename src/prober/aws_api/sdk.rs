//! The AWS API calls themselves (the `aws-api` cargo feature, on by default): the SDK clients,
//! every Describe/List call with its paginator, and the SDK-to-CLI-JSON conversions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::Filter;
use serde_json::{json, Map, Value};

use super::{ApiOptions, DeniedCall, Fetched};
use crate::fargate::FargateProfile;
use crate::prober::ProbeError;

/// Counts the HTTP requests the SDK sends (each retry is one), for the summary and benchmark.
#[derive(Debug, Default, Clone)]
struct RequestCounter(Arc<AtomicUsize>);

impl aws_sdk_ec2::config::Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "clusterdns-request-counter"
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &aws_sdk_ec2::config::RuntimeComponents,
        _cfg: &mut aws_sdk_ec2::config::ConfigBag,
    ) -> Result<(), aws_sdk_ec2::error::BoxError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

struct Clients {
    eks: aws_sdk_eks::Client,
    ec2: aws_sdk_ec2::Client,
    counter: RequestCounter,
    endpoint: String,
}

async fn clients(opts: &ApiOptions) -> Result<Clients, ProbeError> {
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls;
    // rustls over ring, which the rest of the binary already uses: the SDK's default client
    // would build aws-lc (a C and assembly library) for nothing.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5).min(opts.timeout))
                .operation_timeout(opts.timeout)
                .build(),
        );
    // Standard retries (exponential backoff with jitter, throttling and transient errors),
    // with more attempts than the SDK's 3 because a large VPC is many pages; AWS_MAX_ATTEMPTS
    // and AWS_RETRY_MODE still win, as in every AWS tool.
    if std::env::var_os("AWS_MAX_ATTEMPTS").is_none()
        && std::env::var_os("AWS_RETRY_MODE").is_none()
    {
        loader = loader.retry_config(RetryConfig::standard().with_max_attempts(5));
    }
    if let Some(region) = &opts.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &opts.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(url) = &opts.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let conf = loader.load().await;
    if conf.region().is_none() {
        return Err(ProbeError::Api(
            "no AWS region: give --region, set AWS_REGION, or use a profile with a region".into(),
        ));
    }
    let endpoint = conf
        .endpoint_url()
        .map(str::to_owned)
        .unwrap_or_else(|| "the AWS endpoints".into());
    let counter = RequestCounter::default();
    let eks = aws_sdk_eks::Client::from_conf(
        aws_sdk_eks::config::Builder::from(&conf)
            .interceptor(counter.clone())
            .build(),
    );
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&conf)
            .interceptor(counter.clone())
            .build(),
    );
    Ok(Clients {
        eks,
        ec2,
        counter,
        endpoint,
    })
}

/// How one call failed: denied (the read goes on without it) or anything else (fatal).
enum CallError {
    Denied(DeniedCall),
    Fatal(ProbeError),
}

impl From<CallError> for ProbeError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::Denied(d) => ProbeError::Api(format!(
                "{} denied ({}): {}; the prober needs it (see manifests/examples/iam/clusterdns-prober-policy.json)",
                d.action, d.code, d.message
            )),
            CallError::Fatal(e) => e,
        }
    }
}

/// Error codes AWS answers when IAM does not allow a call (EC2 says UnauthorizedOperation).
fn is_denied_code(code: &str) -> bool {
    matches!(
        code,
        "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "UnauthorizedException"
    )
}

fn classify<E, R>(err: SdkError<E, R>, action: &str, input: &str, endpoint: &str) -> CallError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    if is_denied_code(&code) {
        return CallError::Denied(DeniedCall {
            action: action.into(),
            input: input.into(),
            message: err.message().unwrap_or_default().to_owned(),
            code,
        });
    }
    let what = match &err {
        SdkError::DispatchFailure(_) => format!("cannot reach {endpoint}"),
        SdkError::TimeoutError(_) => format!("no answer from {endpoint} in time (--aws-timeout)"),
        _ => "failed".into(),
    };
    CallError::Fatal(ProbeError::Api(format!(
        "{action}: {what}: {}",
        DisplayErrorContext(&err)
    )))
}

/// Reads everything the prober needs for `opts.cluster`.
pub async fn fetch(opts: &ApiOptions) -> Result<Fetched, ProbeError> {
    let start = Instant::now();
    let c = clients(opts).await?;
    let ep = c.endpoint.as_str();
    let mut out = Fetched::default();

    // The cluster first: everything else is filtered by its VPC.
    let cluster = c
        .eks
        .describe_cluster()
        .name(&opts.cluster)
        .send()
        .await
        .map_err(|e| {
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception())
            {
                return ProbeError::Api(format!(
                    "eks:DescribeCluster: no EKS cluster {:?} in this account and region",
                    opts.cluster
                ));
            }
            ProbeError::from(classify(e, "eks:DescribeCluster", "cluster", ep))
        })?
        .cluster
        .ok_or_else(|| ProbeError::Api("eks:DescribeCluster: empty answer".into()))?;
    let vpc_id = cluster
        .resources_vpc_config
        .as_ref()
        .and_then(|v| v.vpc_id.clone());
    out.docs
        .push(("eks-describe-cluster.json".into(), cluster_json(&cluster)));
    let Some(vpc_id) = vpc_id else {
        return Err(ProbeError::Api(format!(
            "eks:DescribeCluster: cluster {:?} has no resourcesVpcConfig.vpcId",
            opts.cluster
        )));
    };

    let page = opts.page_size;
    let vpc_filter = || Filter::builder().name("vpc-id").values(&vpc_id).build();
    let (profiles, nodegroups, vpcs, subnets, groups, acls, enis) = tokio::join!(
        fargate_profiles(&c, &opts.cluster, page),
        nodegroups(&c, &opts.cluster, page),
        async {
            // DescribeVpcs takes at most 5..1000 per page too; one VPC, one page.
            c.ec2
                .describe_vpcs()
                .vpc_ids(&vpc_id)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| classify(e, "ec2:DescribeVpcs", "Vpcs", ep))
        },
        async {
            c.ec2
                .describe_subnets()
                .filters(vpc_filter())
                .set_max_results(page.or(Some(1000)))
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| classify(e, "ec2:DescribeSubnets", "Subnets", ep))
        },
        async {
            c.ec2
                .describe_security_groups()
                .filters(vpc_filter())
                .set_max_results(page.or(Some(1000)))
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| classify(e, "ec2:DescribeSecurityGroups", "SecurityGroups", ep))
        },
        async {
            c.ec2
                .describe_network_acls()
                .filters(vpc_filter())
                // This one pages by at most 100.
                .set_max_results(page.or(Some(100)))
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| classify(e, "ec2:DescribeNetworkAcls", "NetworkAcls", ep))
        },
        async {
            // By VPC rather than by the cluster's subnets: pods of custom networking
            // (ENIConfig) and node groups may sit in subnets the cluster was not created with.
            c.ec2
                .describe_network_interfaces()
                .filters(vpc_filter())
                .set_max_results(page.or(Some(1000)))
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| classify(e, "ec2:DescribeNetworkInterfaces", "NetworkInterfaces", ep))
        },
    );
    let keep = |out: &mut Fetched, r: Result<(String, Value), CallError>| match r {
        Ok(doc) => {
            out.docs.push(doc);
            Ok(())
        }
        Err(CallError::Denied(d)) => {
            out.denied.push(d);
            Ok(())
        }
        Err(CallError::Fatal(e)) => Err(e),
    };
    match profiles {
        Ok((names, described)) => {
            out.docs.push((
                "eks-list-fargate-profiles.json".into(),
                json!({ "fargateProfileNames": names }),
            ));
            for p in described {
                match p {
                    Ok(p) => out.docs.push((
                        format!(
                            "eks-describe-fargate-profile-{}.json",
                            file_part(p.fargate_profile_name().unwrap_or("unnamed"))
                        ),
                        fargate_profile_json(&p),
                    )),
                    Err(e) => keep(&mut out, Err(e))?,
                }
            }
        }
        Err(e) => keep(&mut out, Err(e))?,
    }
    let mut templates: Vec<(String, String)> = Vec::new();
    match nodegroups {
        Ok(list) => {
            for ng in list {
                match ng {
                    Ok(ng) => {
                        if let Some(lt) = &ng.launch_template {
                            if let (Some(id), Some(version)) = (&lt.id, &lt.version) {
                                templates.push((id.clone(), version.clone()));
                            }
                        }
                        out.docs.push((
                            format!(
                                "eks-describe-nodegroup-{}.json",
                                file_part(ng.nodegroup_name().unwrap_or("unnamed"))
                            ),
                            nodegroup_json(&ng),
                        ));
                    }
                    Err(e) => keep(&mut out, Err(e))?,
                }
            }
        }
        Err(e) => keep(&mut out, Err(e))?,
    }
    for doc in [
        vpcs.map(|v| ec2_doc("Vpcs", &v, vpc_json)),
        subnets.map(|v| ec2_doc("Subnets", &v, subnet_json)),
        groups.map(|v| ec2_doc("SecurityGroups", &v, security_group_json)),
        acls.map(|v| ec2_doc("NetworkAcls", &v, network_acl_json)),
        enis.map(|v| ec2_doc("NetworkInterfaces", &v, interface_json)),
    ] {
        keep(&mut out, doc)?;
    }

    // Only the template versions node groups use (a template id has many versions).
    templates.sort();
    templates.dedup();
    if !templates.is_empty() {
        let mut versions = Vec::new();
        let mut denied = None;
        for (id, version) in &templates {
            let r = c
                .ec2
                .describe_launch_template_versions()
                .launch_template_id(id)
                .versions(version)
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
                .map_err(|e| {
                    classify(
                        e,
                        "ec2:DescribeLaunchTemplateVersions",
                        "LaunchTemplateVersions",
                        ep,
                    )
                });
            match r {
                Ok(v) => versions.extend(v.iter().map(launch_template_version_json)),
                Err(CallError::Denied(d)) => {
                    denied = Some(d);
                    break;
                }
                Err(CallError::Fatal(e)) => return Err(e),
            }
        }
        match denied {
            Some(d) => out.denied.push(d),
            None => out
                .docs
                .push(ec2_doc("LaunchTemplateVersions", &versions, Value::clone)),
        }
    }
    out.requests = c.counter.0.load(Ordering::Relaxed);
    out.elapsed = start.elapsed();
    Ok(out)
}

type Described<T> = Vec<Result<T, CallError>>;

async fn fargate_profiles(
    c: &Clients,
    cluster: &str,
    page: Option<i32>,
) -> Result<(Vec<String>, Described<aws_sdk_eks::types::FargateProfile>), CallError> {
    let ep = c.endpoint.as_str();
    let names: Vec<String> = c
        .eks
        .list_fargate_profiles()
        .cluster_name(cluster)
        .set_max_results(page)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| classify(e, "eks:ListFargateProfiles", "fargateProfileNames", ep))?;
    let described = describe_each(&names, "eks:DescribeFargateProfile", |name| async move {
        c.eks
            .describe_fargate_profile()
            .cluster_name(cluster)
            .fargate_profile_name(name)
            .send()
            .await
            .map(|o| o.fargate_profile)
            .map_err(|e| classify(e, "eks:DescribeFargateProfile", "fargateProfile", ep))
    })
    .await;
    Ok((names, described))
}

async fn nodegroups(
    c: &Clients,
    cluster: &str,
    page: Option<i32>,
) -> Result<Described<aws_sdk_eks::types::Nodegroup>, CallError> {
    let ep = c.endpoint.as_str();
    let names: Vec<String> = c
        .eks
        .list_nodegroups()
        .cluster_name(cluster)
        .set_max_results(page)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| classify(e, "eks:ListNodegroups", "nodegroup", ep))?;
    Ok(
        describe_each(&names, "eks:DescribeNodegroup", |name| async move {
            c.eks
                .describe_nodegroup()
                .cluster_name(cluster)
                .nodegroup_name(name)
                .send()
                .await
                .map(|o| o.nodegroup)
                .map_err(|e| classify(e, "eks:DescribeNodegroup", "nodegroup", ep))
        })
        .await,
    )
}

/// `describe(name)` for every name at once; an answer without the object is an error.
async fn describe_each<'a, T, F, Fut>(
    names: &'a [String],
    action: &str,
    describe: F,
) -> Described<T>
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, CallError>>,
{
    futures::future::join_all(names.iter().map(|name| {
        let answer = describe(name);
        async move {
            answer.await?.ok_or_else(|| {
                CallError::Fatal(ProbeError::Api(format!("{action} {name}: empty answer")))
            })
        }
    }))
    .await
}

/// Only the Fargate profiles (for `placement`).
pub async fn fetch_fargate_profiles(opts: &ApiOptions) -> Result<Vec<FargateProfile>, ProbeError> {
    let c = clients(opts).await?;
    let (_, described) = fargate_profiles(&c, &opts.cluster, opts.page_size)
        .await
        .map_err(ProbeError::from)?;
    let mut out = Vec::new();
    for p in described {
        let p = p.map_err(ProbeError::from)?;
        let doc = fargate_profile_json(&p);
        let profile: FargateProfile = serde_json::from_value(doc["fargateProfile"].clone())
            .map_err(|e| ProbeError::Api(format!("eks:DescribeFargateProfile: {e}")))?;
        out.push(profile);
    }
    Ok(out)
}

/// A name made safe for a file name (profile and node group names are `[A-Za-z0-9_-]`, but
/// a saved directory must never escape itself).
fn file_part(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---- SDK types -> AWS CLI JSON ----
//
// Field names are those of the service's wire format, which the AWS CLI prints unchanged.
// Absent values are left out, as the CLI does. Each type is a table of (field, value): the
// SDK types implement serde only behind the `aws_sdk_unstable` cfg, and then with Rust field
// names, not the CLI's.

/// `aws ec2 describe-<key>` output, `{"<Key>": [items...]}`, and the file it is saved as:
/// `("SecurityGroups", ..)` is `ec2-describe-security-groups.json`.
fn ec2_doc<T>(key: &str, items: &[T], f: impl Fn(&T) -> Value) -> (String, Value) {
    let mut file = String::from("ec2-describe");
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            file.push('-');
        }
        file.push(c.to_ascii_lowercase());
    }
    file.push_str(".json");
    let items: Vec<Value> = items.iter().map(f).collect();
    (file, json!({ key: items }))
}

/// An object from (key, value) pairs, leaving out `None`s.
fn obj<const N: usize>(fields: [(&str, Option<Value>); N]) -> Value {
    let mut m = Map::new();
    for (k, v) in fields {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

fn s(v: Option<&str>) -> Option<Value> {
    v.map(|v| Value::String(v.to_owned()))
}

/// An SDK enum by its wire name.
fn name<T: AsRef<str>>(v: Option<&T>) -> Option<Value> {
    s(v.map(AsRef::as_ref))
}

/// A number (ports, rule numbers, ICMP codes).
fn num<T: Into<Value>>(v: Option<T>) -> Option<Value> {
    v.map(Into::into)
}

fn strings(v: &[String]) -> Option<Value> {
    Some(Value::Array(
        v.iter().map(|s| Value::String(s.clone())).collect(),
    ))
}

fn list<T>(v: &[T], f: impl Fn(&T) -> Value) -> Option<Value> {
    Some(Value::Array(v.iter().map(f).collect()))
}

fn string_map(m: Option<&HashMap<String, String>>) -> Option<Value> {
    m.map(|m| {
        // Sorted: saved files diff cleanly between two reads.
        let sorted: std::collections::BTreeMap<_, _> = m.iter().collect();
        json!(sorted)
    })
}

fn time(t: Option<&aws_sdk_eks::primitives::DateTime>) -> Option<Value> {
    t.and_then(|t| {
        t.fmt(aws_sdk_eks::primitives::DateTimeFormat::DateTime)
            .ok()
    })
    .map(Value::String)
}

pub fn cluster_json(c: &aws_sdk_eks::types::Cluster) -> Value {
    let vpc = c.resources_vpc_config.as_ref().map(|v| {
        obj([
            ("subnetIds", strings(v.subnet_ids())),
            ("securityGroupIds", strings(v.security_group_ids())),
            ("clusterSecurityGroupId", s(v.cluster_security_group_id())),
            ("vpcId", s(v.vpc_id())),
            (
                "endpointPublicAccess",
                Some(json!(v.endpoint_public_access)),
            ),
            (
                "endpointPrivateAccess",
                Some(json!(v.endpoint_private_access)),
            ),
            ("publicAccessCidrs", strings(v.public_access_cidrs())),
        ])
    });
    let net = c.kubernetes_network_config.as_ref().map(|k| {
        obj([
            ("serviceIpv4Cidr", s(k.service_ipv4_cidr())),
            ("serviceIpv6Cidr", s(k.service_ipv6_cidr())),
            ("ipFamily", name(k.ip_family())),
        ])
    });
    json!({ "cluster": obj([
        ("name", s(c.name())),
        ("arn", s(c.arn())),
        ("createdAt", time(c.created_at())),
        ("version", s(c.version())),
        ("endpoint", s(c.endpoint())),
        ("roleArn", s(c.role_arn())),
        ("resourcesVpcConfig", vpc),
        ("kubernetesNetworkConfig", net),
        ("status", name(c.status())),
        ("platformVersion", s(c.platform_version())),
        ("tags", string_map(c.tags())),
    ]) })
}

pub fn fargate_profile_json(p: &aws_sdk_eks::types::FargateProfile) -> Value {
    json!({ "fargateProfile": obj([
        ("fargateProfileName", s(p.fargate_profile_name())),
        ("fargateProfileArn", s(p.fargate_profile_arn())),
        ("clusterName", s(p.cluster_name())),
        ("createdAt", time(p.created_at())),
        ("podExecutionRoleArn", s(p.pod_execution_role_arn())),
        ("subnets", strings(p.subnets())),
        ("selectors", list(p.selectors(), |sel| obj([
            ("namespace", s(sel.namespace())),
            ("labels", string_map(sel.labels())),
        ]))),
        ("status", name(p.status())),
        ("tags", string_map(p.tags())),
    ]) })
}

pub fn nodegroup_json(n: &aws_sdk_eks::types::Nodegroup) -> Value {
    let resources = n.resources.as_ref().map(|r| {
        obj([
            (
                "autoScalingGroups",
                list(r.auto_scaling_groups(), |g| obj([("name", s(g.name()))])),
            ),
            (
                "remoteAccessSecurityGroup",
                s(r.remote_access_security_group()),
            ),
        ])
    });
    let lt = n.launch_template.as_ref().map(|l| {
        obj([
            ("name", s(l.name())),
            ("version", s(l.version())),
            ("id", s(l.id())),
        ])
    });
    json!({ "nodegroup": obj([
        ("nodegroupName", s(n.nodegroup_name())),
        ("nodegroupArn", s(n.nodegroup_arn())),
        ("clusterName", s(n.cluster_name())),
        ("version", s(n.version())),
        ("releaseVersion", s(n.release_version())),
        ("createdAt", time(n.created_at())),
        ("status", name(n.status())),
        ("capacityType", name(n.capacity_type())),
        ("instanceTypes", strings(n.instance_types())),
        ("subnets", strings(n.subnets())),
        ("amiType", name(n.ami_type())),
        ("nodeRole", s(n.node_role())),
        ("labels", string_map(n.labels())),
        ("resources", resources),
        ("launchTemplate", lt),
        ("tags", string_map(n.tags())),
    ]) })
}

fn tags(t: &[aws_sdk_ec2::types::Tag]) -> Option<Value> {
    if t.is_empty() {
        return None;
    }
    list(t, |t| obj([("Key", s(t.key())), ("Value", s(t.value()))]))
}

pub fn vpc_json(v: &aws_sdk_ec2::types::Vpc) -> Value {
    obj([
        ("CidrBlock", s(v.cidr_block())),
        ("DhcpOptionsId", s(v.dhcp_options_id())),
        ("State", name(v.state())),
        ("VpcId", s(v.vpc_id())),
        ("OwnerId", s(v.owner_id())),
        (
            "CidrBlockAssociationSet",
            list(v.cidr_block_association_set(), |a| {
                obj([
                    ("AssociationId", s(a.association_id())),
                    ("CidrBlock", s(a.cidr_block())),
                    (
                        "CidrBlockState",
                        a.cidr_block_state()
                            .map(|st| obj([("State", name(st.state()))])),
                    ),
                ])
            }),
        ),
        ("IsDefault", v.is_default().map(Value::Bool)),
        ("Tags", tags(v.tags())),
    ])
}

pub fn subnet_json(n: &aws_sdk_ec2::types::Subnet) -> Value {
    obj([
        ("AvailabilityZone", s(n.availability_zone())),
        ("AvailabilityZoneId", s(n.availability_zone_id())),
        ("CidrBlock", s(n.cidr_block())),
        ("State", name(n.state())),
        ("SubnetId", s(n.subnet_id())),
        ("VpcId", s(n.vpc_id())),
        ("OwnerId", s(n.owner_id())),
        (
            "Ipv6CidrBlockAssociationSet",
            list(n.ipv6_cidr_block_association_set(), |a| {
                obj([
                    ("AssociationId", s(a.association_id())),
                    ("Ipv6CidrBlock", s(a.ipv6_cidr_block())),
                    (
                        "Ipv6CidrBlockState",
                        a.ipv6_cidr_block_state()
                            .map(|st| obj([("State", name(st.state()))])),
                    ),
                ])
            }),
        ),
        ("Tags", tags(n.tags())),
        ("SubnetArn", s(n.subnet_arn())),
    ])
}

fn permission_json(p: &aws_sdk_ec2::types::IpPermission) -> Value {
    obj([
        ("IpProtocol", s(p.ip_protocol())),
        ("FromPort", num(p.from_port())),
        ("ToPort", num(p.to_port())),
        (
            "IpRanges",
            list(p.ip_ranges(), |r| {
                obj([
                    ("CidrIp", s(r.cidr_ip())),
                    ("Description", s(r.description())),
                ])
            }),
        ),
        (
            "Ipv6Ranges",
            list(p.ipv6_ranges(), |r| {
                obj([
                    ("CidrIpv6", s(r.cidr_ipv6())),
                    ("Description", s(r.description())),
                ])
            }),
        ),
        (
            "PrefixListIds",
            list(p.prefix_list_ids(), |r| {
                obj([
                    ("PrefixListId", s(r.prefix_list_id())),
                    ("Description", s(r.description())),
                ])
            }),
        ),
        (
            "UserIdGroupPairs",
            list(p.user_id_group_pairs(), |g| {
                obj([
                    ("GroupId", s(g.group_id())),
                    ("UserId", s(g.user_id())),
                    ("VpcId", s(g.vpc_id())),
                    ("Description", s(g.description())),
                ])
            }),
        ),
    ])
}

pub fn security_group_json(g: &aws_sdk_ec2::types::SecurityGroup) -> Value {
    obj([
        ("Description", s(g.description())),
        ("GroupName", s(g.group_name())),
        ("IpPermissions", list(g.ip_permissions(), permission_json)),
        ("OwnerId", s(g.owner_id())),
        ("GroupId", s(g.group_id())),
        (
            "IpPermissionsEgress",
            list(g.ip_permissions_egress(), permission_json),
        ),
        ("Tags", tags(g.tags())),
        ("VpcId", s(g.vpc_id())),
    ])
}

pub fn network_acl_json(a: &aws_sdk_ec2::types::NetworkAcl) -> Value {
    obj([
        (
            "Associations",
            list(a.associations(), |x| {
                obj([
                    ("NetworkAclAssociationId", s(x.network_acl_association_id())),
                    ("NetworkAclId", s(x.network_acl_id())),
                    ("SubnetId", s(x.subnet_id())),
                ])
            }),
        ),
        (
            "Entries",
            list(a.entries(), |e| {
                obj([
                    ("CidrBlock", s(e.cidr_block())),
                    ("Ipv6CidrBlock", s(e.ipv6_cidr_block())),
                    ("Egress", e.egress().map(Value::Bool)),
                    (
                        "IcmpTypeCode",
                        e.icmp_type_code()
                            .map(|i| obj([("Code", num(i.code())), ("Type", num(i.r#type()))])),
                    ),
                    (
                        "PortRange",
                        e.port_range()
                            .map(|r| obj([("From", num(r.from())), ("To", num(r.to()))])),
                    ),
                    ("Protocol", s(e.protocol())),
                    ("RuleAction", name(e.rule_action())),
                    ("RuleNumber", num(e.rule_number())),
                ])
            }),
        ),
        ("IsDefault", a.is_default().map(Value::Bool)),
        ("NetworkAclId", s(a.network_acl_id())),
        ("Tags", tags(a.tags())),
        ("VpcId", s(a.vpc_id())),
        ("OwnerId", s(a.owner_id())),
    ])
}

pub fn interface_json(n: &aws_sdk_ec2::types::NetworkInterface) -> Value {
    obj([
        ("AvailabilityZone", s(n.availability_zone())),
        ("Description", s(n.description())),
        (
            "Groups",
            list(n.groups(), |g| {
                obj([
                    ("GroupName", s(g.group_name())),
                    ("GroupId", s(g.group_id())),
                ])
            }),
        ),
        ("InterfaceType", name(n.interface_type())),
        (
            "Ipv6Addresses",
            list(n.ipv6_addresses(), |a| {
                obj([("Ipv6Address", s(a.ipv6_address()))])
            }),
        ),
        ("MacAddress", s(n.mac_address())),
        ("NetworkInterfaceId", s(n.network_interface_id())),
        ("OwnerId", s(n.owner_id())),
        ("PrivateDnsName", s(n.private_dns_name())),
        ("PrivateIpAddress", s(n.private_ip_address())),
        (
            "PrivateIpAddresses",
            list(n.private_ip_addresses(), |a| {
                obj([
                    ("Primary", a.primary().map(Value::Bool)),
                    ("PrivateDnsName", s(a.private_dns_name())),
                    ("PrivateIpAddress", s(a.private_ip_address())),
                ])
            }),
        ),
        (
            "Ipv4Prefixes",
            list(n.ipv4_prefixes(), |p| {
                obj([("Ipv4Prefix", s(p.ipv4_prefix()))])
            }),
        ),
        (
            "Ipv6Prefixes",
            list(n.ipv6_prefixes(), |p| {
                obj([("Ipv6Prefix", s(p.ipv6_prefix()))])
            }),
        ),
        ("RequesterId", s(n.requester_id())),
        ("RequesterManaged", n.requester_managed().map(Value::Bool)),
        ("SourceDestCheck", n.source_dest_check().map(Value::Bool)),
        ("Status", name(n.status())),
        ("SubnetId", s(n.subnet_id())),
        ("TagSet", tags(n.tag_set())),
        ("VpcId", s(n.vpc_id())),
    ])
}

pub fn launch_template_version_json(v: &aws_sdk_ec2::types::LaunchTemplateVersion) -> Value {
    let data = v.launch_template_data().map(|d| {
        obj([
            ("SecurityGroupIds", strings(d.security_group_ids())),
            (
                "NetworkInterfaces",
                list(d.network_interfaces(), |n| {
                    obj([
                        ("DeviceIndex", num(n.device_index())),
                        ("Groups", strings(n.groups())),
                    ])
                }),
            ),
        ])
    });
    obj([
        ("LaunchTemplateId", s(v.launch_template_id())),
        ("LaunchTemplateName", s(v.launch_template_name())),
        ("VersionNumber", num(v.version_number())),
        ("DefaultVersion", v.default_version().map(Value::Bool)),
        ("LaunchTemplateData", data),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types as ec2;
    use aws_sdk_eks::types as eks;

    #[test]
    fn ec2_documents_are_named_as_the_cli_commands() {
        let (file, doc) = ec2_doc("SecurityGroups", &[1, 2], |n| json!(n));
        assert_eq!(file, "ec2-describe-security-groups.json");
        assert_eq!(doc, json!({"SecurityGroups": [1, 2]}));
        let (file, _) = ec2_doc::<Value>("Vpcs", &[], Value::clone);
        assert_eq!(file, "ec2-describe-vpcs.json");
    }

    /// SDK values -> CLI JSON -> model: every field the prober reads survives.
    #[test]
    fn conversions_feed_the_json_parser() {
        let sg = ec2::SecurityGroup::builder()
            .group_id("sg-1")
            .group_name("web")
            .vpc_id("vpc-1")
            .ip_permissions(
                ec2::IpPermission::builder()
                    .ip_protocol("udp")
                    .from_port(53)
                    .to_port(53)
                    .user_id_group_pairs(ec2::UserIdGroupPair::builder().group_id("sg-2").build())
                    .ip_ranges(ec2::IpRange::builder().cidr_ip("10.0.0.0/8").build())
                    .prefix_list_ids(ec2::PrefixListId::builder().prefix_list_id("pl-1").build())
                    .build(),
            )
            .ip_permissions_egress(
                ec2::IpPermission::builder()
                    .ip_protocol("-1")
                    .ipv6_ranges(ec2::Ipv6Range::builder().cidr_ipv6("::/0").build())
                    .build(),
            )
            .build();
        let acl = ec2::NetworkAcl::builder()
            .network_acl_id("acl-1")
            .vpc_id("vpc-1")
            .is_default(true)
            .associations(
                ec2::NetworkAclAssociation::builder()
                    .subnet_id("subnet-1")
                    .build(),
            )
            .entries(
                ec2::NetworkAclEntry::builder()
                    .rule_number(100)
                    .protocol("17")
                    .rule_action(ec2::RuleAction::Deny)
                    .egress(false)
                    .cidr_block("0.0.0.0/0")
                    .port_range(ec2::PortRange::builder().from(53).to(53).build())
                    .build(),
            )
            .build();
        let eni = ec2::NetworkInterface::builder()
            .network_interface_id("eni-1")
            .subnet_id("subnet-1")
            .description("[EKS] fargate-ip-10-0-0-5")
            .private_ip_address("10.0.0.5")
            .private_ip_addresses(
                ec2::NetworkInterfacePrivateIpAddress::builder()
                    .private_ip_address("10.0.0.6")
                    .build(),
            )
            .ipv4_prefixes(
                ec2::Ipv4PrefixSpecification::builder()
                    .ipv4_prefix("10.0.1.0/28")
                    .build(),
            )
            .groups(ec2::GroupIdentifier::builder().group_id("sg-1").build())
            .requester_managed(true)
            .build();
        let lt = ec2::LaunchTemplateVersion::builder()
            .launch_template_id("lt-1")
            .version_number(3)
            .launch_template_data(
                ec2::ResponseLaunchTemplateData::builder()
                    .security_group_ids("sg-9")
                    .build(),
            )
            .build();
        let cluster = eks::Cluster::builder()
            .name("demo")
            .resources_vpc_config(
                eks::VpcConfigResponse::builder()
                    .vpc_id("vpc-1")
                    .cluster_security_group_id("sg-1")
                    .subnet_ids("subnet-1")
                    .build(),
            )
            .kubernetes_network_config(
                eks::KubernetesNetworkConfigResponse::builder()
                    .service_ipv4_cidr("10.100.0.0/16")
                    .build(),
            )
            .build();
        let ng = eks::Nodegroup::builder()
            .nodegroup_name("ng")
            .subnets("subnet-1")
            .launch_template(
                eks::LaunchTemplateSpecification::builder()
                    .id("lt-1")
                    .version("3")
                    .build(),
            )
            .build();
        let fetched = Fetched {
            docs: vec![
                ("c.json".into(), cluster_json(&cluster)),
                ("n.json".into(), nodegroup_json(&ng)),
                (
                    "sg.json".into(),
                    json!({"SecurityGroups": [security_group_json(&sg)]}),
                ),
                (
                    "acl.json".into(),
                    json!({"NetworkAcls": [network_acl_json(&acl)]}),
                ),
                (
                    "eni.json".into(),
                    json!({"NetworkInterfaces": [interface_json(&eni)]}),
                ),
                (
                    "lt.json".into(),
                    json!({"LaunchTemplateVersions": [launch_template_version_json(&lt)]}),
                ),
            ],
            denied: vec![DeniedCall {
                action: "ec2:DescribeVpcs".into(),
                input: "Vpcs".into(),
                code: "UnauthorizedOperation".into(),
                message: "no".into(),
            }],
            ..Default::default()
        };
        let m = fetched.model().unwrap();
        let c = m.cluster().unwrap();
        assert_eq!(c.cluster_security_group_id.as_deref(), Some("sg-1"));
        assert_eq!(c.vpc_id.as_deref(), Some("vpc-1"));
        assert_eq!(c.service_ipv4_cidr.unwrap().to_string(), "10.100.0.0/16");
        let g = &m.security_groups["sg-1"];
        assert_eq!(g.ingress[0].groups, vec!["sg-2".to_string()]);
        assert_eq!(g.ingress[0].prefix_lists, vec!["pl-1".to_string()]);
        assert_eq!(g.ingress[0].from_port, Some(53));
        assert_eq!(g.egress[0].cidrs[0].to_string(), "::/0");
        let a = &m.network_acls[0];
        assert!(a.is_default && !a.entries[0].allow && a.entries[0].ports == Some((53, 53)));
        let e = &m.interfaces[0];
        assert!(e.requester_managed && e.is_micro_vm());
        assert_eq!(e.addresses.len(), 2);
        assert_eq!(e.prefixes[0].to_string(), "10.0.1.0/28");
        assert_eq!(m.launch_template_versions[0].version.as_deref(), Some("3"));
        assert_eq!(m.launch_template_versions[0].security_group_ids, ["sg-9"]);
        assert_eq!(
            m.nodegroups[0]
                .launch_template
                .as_ref()
                .unwrap()
                .id
                .as_deref(),
            Some("lt-1")
        );
        assert!(m.unavailable("Vpcs").unwrap().contains("ec2:DescribeVpcs"));

        // --save-aws writes the same documents; reading the directory gives the same model.
        let dir = tempfile::tempdir().unwrap();
        fetched.save(dir.path()).unwrap();
        let again = crate::prober::aws::load(dir.path()).unwrap();
        assert_eq!(again.security_groups, m.security_groups);
        assert_eq!(again.network_acls, m.network_acls);
        assert_eq!(again.interfaces, m.interfaces);
        assert_eq!(again.clusters, m.clusters);
        assert_eq!(again.denied, m.denied);
    }

    #[test]
    fn denied_codes() {
        assert!(is_denied_code("UnauthorizedOperation"));
        assert!(is_denied_code("AccessDeniedException"));
        assert!(!is_denied_code("Throttling"));
        assert_eq!(file_part("a/../b c"), "a____b_c");
    }
}
