//! Where each pod runs against where the Fargate rules say it should, and at what size:
//!
//! ```text
//! pod --nodeName--> node --label/name--> compute (micro-VM | EC2 | unknown)
//!  |--namespace+labels--> select_profile --> profile (or none)
//!  |--containers--> pod_size --> expected size <--compare--> CapacityProvisioned
//!  `--> mismatches where the two disagree
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use k8s_openapi::api::core::v1::{Node, Pod};
use serde::Serialize;

use super::profile::{select_profile, FargateProfile, PROFILE_LABEL};
use super::sizing::{capacity_annotation, pod_size, Size};
use crate::cluster::objects::ObjectSet;

/// The node label Fargate sets on every micro-VM node.
pub const COMPUTE_TYPE_LABEL: &str = "eks.amazonaws.com/compute-type";
/// The scheduler the Fargate admission webhook assigns to the pods a profile selects.
pub const FARGATE_SCHEDULER: &str = "fargate-scheduler";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Compute {
    MicroVm,
    Ec2,
    /// Not scheduled yet, or scheduled to a node the input does not contain.
    Unknown,
}

impl fmt::Display for Compute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compute::MicroVm => "micro-vm",
            Compute::Ec2 => "ec2",
            Compute::Unknown => "unknown",
        })
    }
}

/// A way in which a pod's actual placement or size disagrees with the Fargate rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Mismatch {
    /// A profile selects the pod, yet it runs on an EC2 node: typically created before the
    /// profile existed (profiles apply only when a pod is created).
    ProfileSelectedOnEc2 { profile: String },
    /// The pod runs on a micro-VM, yet no profile selects it now (profile deleted or changed).
    MicroVmWithoutProfile,
    /// Pending for `fargate-scheduler` with no profile selecting it: it will stay Pending.
    PendingWithoutProfile,
    /// Pending; a profile selects the pod, but its profile label names no existing profile.
    PendingUnknownProfileLabel { label: String },
    /// The pod's `eks.amazonaws.com/fargate-profile` label is not the profile the rules pick.
    ProfileLabelDisagrees {
        label: String,
        selected: Option<String>,
    },
    /// `CapacityProvisioned` is not the size the sizing rules give.
    SizeMismatch { expected: Size, provisioned: Size },
    /// `CapacityProvisioned` could not be read.
    UnreadableCapacity { value: String },
    /// No size can be computed: a bad quantity, or more than the largest micro-VM.
    Unsizable { reason: String },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::ProfileSelectedOnEc2 { profile } => {
                write!(f, "profile-selected-on-ec2({profile})")
            }
            Mismatch::MicroVmWithoutProfile => f.write_str("micro-vm-without-profile"),
            Mismatch::PendingWithoutProfile => f.write_str("pending-without-profile"),
            Mismatch::PendingUnknownProfileLabel { label } => {
                write!(f, "pending-unknown-profile-label({label})")
            }
            Mismatch::ProfileLabelDisagrees { label, selected } => write!(
                f,
                "profile-label({label} != {})",
                selected.as_deref().unwrap_or("none")
            ),
            Mismatch::SizeMismatch {
                expected,
                provisioned,
            } => write!(f, "size(expected {expected}, provisioned {provisioned})"),
            Mismatch::UnreadableCapacity { value } => write!(f, "unreadable-capacity({value})"),
            Mismatch::Unsizable { reason } => write!(f, "unsizable({reason})"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    pub namespace: String,
    pub name: String,
    pub ip: Option<String>,
    pub node: Option<String>,
    pub phase: Option<String>,
    pub compute: Compute,
    /// The profile the selection rules pick for the pod's namespace and labels.
    pub profile: Option<String>,
    /// Computed for pods that run, or would run, on a micro-VM; EC2 pods have no size.
    pub expected_size: Option<Size>,
    pub capacity_provisioned: Option<String>,
    /// Whether `capacity_provisioned` equals `expected_size`; None unless both are known.
    pub capacity_agrees: Option<bool>,
    pub mismatches: Vec<Mismatch>,
}

fn is_micro_vm(node: &Node) -> bool {
    let labelled = node
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(COMPUTE_TYPE_LABEL))
        .is_some_and(|v| v == "fargate");
    let named = node
        .metadata
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("fargate-"));
    labelled || named
}

/// DaemonSets cannot run on micro-VMs, so their pods on EC2 nodes are expected even in a
/// namespace a profile selects (kube-proxy, aws-node in kube-system).
fn owned_by_daemon_set(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
}

fn non_empty(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

/// Places every pod; rows sorted by namespace and name.
pub fn place(pods: &[Pod], nodes: &[Node], profiles: &[FargateProfile]) -> Vec<Placement> {
    let nodes: HashMap<&str, &Node> = nodes
        .iter()
        .filter_map(|n| Some((n.metadata.name.as_deref()?, n)))
        .collect();
    let mut rows: Vec<Placement> = pods
        .iter()
        .map(|pod| place_pod(pod, &nodes, profiles))
        .collect();
    rows.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    rows
}

fn place_pod(pod: &Pod, nodes: &HashMap<&str, &Node>, profiles: &[FargateProfile]) -> Placement {
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    // A manifest without a namespace is applied to `default`.
    let namespace = non_empty(pod.metadata.namespace.as_ref()).unwrap_or("default");
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    let node_name = non_empty(spec.and_then(|s| s.node_name.as_ref()));
    let phase = non_empty(status.and_then(|s| s.phase.as_ref()));

    let compute = match node_name.and_then(|n| nodes.get(n)) {
        Some(node) if is_micro_vm(node) => Compute::MicroVm,
        Some(_) => Compute::Ec2,
        None => Compute::Unknown,
    };
    let profile = select_profile(profiles, namespace, labels).map(|p| &p.fargate_profile_name);
    let capacity = capacity_annotation(pod);

    let mut mismatches = Vec::new();
    let fargate_bound = compute == Compute::MicroVm || profile.is_some() || capacity.is_some();
    let expected_size = if fargate_bound {
        match pod_size(pod) {
            Ok(size) => Some(size),
            Err(e) => {
                mismatches.push(Mismatch::Unsizable {
                    reason: e.to_string(),
                });
                None
            }
        }
    } else {
        None
    };

    match (compute, profile) {
        (Compute::Ec2, Some(p)) if !owned_by_daemon_set(pod) => {
            mismatches.push(Mismatch::ProfileSelectedOnEc2 { profile: p.clone() })
        }
        (Compute::MicroVm, None) => mismatches.push(Mismatch::MicroVmWithoutProfile),
        _ => {}
    }

    let unscheduled = node_name.is_none() && !matches!(phase, Some("Succeeded" | "Failed"));
    let pending = phase == Some("Pending") || unscheduled;
    let scheduler = spec.and_then(|s| s.scheduler_name.as_deref());
    if pending && profile.is_none() && scheduler == Some(FARGATE_SCHEDULER) {
        mismatches.push(Mismatch::PendingWithoutProfile);
    }

    if let Some(label) = labels.get(PROFILE_LABEL) {
        if profile != Some(label) {
            let exists = profiles.iter().any(|p| &p.fargate_profile_name == label);
            mismatches.push(if pending && profile.is_some() && !exists {
                Mismatch::PendingUnknownProfileLabel {
                    label: label.clone(),
                }
            } else {
                Mismatch::ProfileLabelDisagrees {
                    label: label.clone(),
                    selected: profile.cloned(),
                }
            });
        }
    }

    let mut capacity_agrees = None;
    if let Some(value) = capacity {
        match value.parse::<Size>() {
            Ok(provisioned) => {
                if let Some(expected) = expected_size {
                    capacity_agrees = Some(expected == provisioned);
                    if expected != provisioned {
                        mismatches.push(Mismatch::SizeMismatch {
                            expected,
                            provisioned,
                        });
                    }
                }
            }
            Err(_) => mismatches.push(Mismatch::UnreadableCapacity {
                value: value.to_owned(),
            }),
        }
    }

    Placement {
        namespace: namespace.to_owned(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        ip: non_empty(status.and_then(|s| s.pod_ip.as_ref())).map(str::to_owned),
        node: node_name.map(str::to_owned),
        phase: phase.map(str::to_owned),
        compute,
        profile: profile.cloned(),
        expected_size,
        capacity_provisioned: capacity.map(str::to_owned),
        capacity_agrees,
        mismatches,
    }
}

/// Aligned columns, as kubectl prints them; `-` for nothing.
pub fn render_table(placements: &[Placement]) -> String {
    const HEADER: [&str; 9] = [
        "NAMESPACE",
        "NAME",
        "IP",
        "NODE",
        "COMPUTE",
        "PROFILE",
        "SIZE",
        "CAPACITY",
        "MISMATCH",
    ];
    // Empty cells would shift the columns for anyone splitting on whitespace.
    let dash = |s: Option<String>| {
        s.filter(|s| !s.is_empty())
            .unwrap_or_else(|| "-".to_owned())
    };
    let mut rows: Vec<[String; 9]> = vec![HEADER.map(str::to_owned)];
    for p in placements {
        let mismatches = p
            .mismatches
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        rows.push([
            dash(Some(p.namespace.clone())),
            dash(Some(p.name.clone())),
            dash(p.ip.clone()),
            dash(p.node.clone()),
            p.compute.to_string(),
            dash(p.profile.clone()),
            dash(p.expected_size.map(|s| s.to_string())),
            dash(p.capacity_provisioned.clone()),
            dash(Some(mismatches)),
        ]);
    }
    let mut widths = [0usize; 9];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `clusterdns placement`: every pod of `objects` placed, as a table or as JSON.
pub fn run_placement(objects: &ObjectSet, profiles: &[FargateProfile], json: bool) -> String {
    let placements = place(&objects.pods, &objects.nodes, profiles);
    if json {
        // Plain strings, numbers and lists: serialization cannot fail, but never panic on it.
        let mut text = serde_json::to_string_pretty(&placements)
            .unwrap_or_else(|e| format!("{{\"error\": {:?}}}", e.to_string()));
        text.push('\n');
        text
    } else {
        render_table(&placements)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(yaml: &str) -> Node {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn micro_vm_by_label_or_name() {
        assert!(is_micro_vm(&node(
            "metadata: {name: x, labels: {eks.amazonaws.com/compute-type: fargate}}"
        )));
        assert!(is_micro_vm(&node(
            "metadata: {name: fargate-ip-10-0-0-1.x}"
        )));
        assert!(!is_micro_vm(&node(
            "metadata: {name: ip-10-0-0-1.x, labels: {eks.amazonaws.com/compute-type: ec2}}"
        )));
        assert!(!is_micro_vm(&node("metadata: {}")));
    }

    #[test]
    fn a_bare_pod_is_placed_without_panicking() {
        let pod: Pod = serde_yaml::from_str("metadata: {}").unwrap();
        let rows = place(&[pod], &[], &[]);
        assert_eq!(rows[0].namespace, "default");
        assert_eq!(rows[0].compute, Compute::Unknown);
        assert!(rows[0].mismatches.is_empty());
        let table = render_table(&rows);
        let last = table.lines().nth(1).unwrap();
        assert_eq!(
            last.split_whitespace().collect::<Vec<_>>(),
            ["default", "-", "-", "-", "unknown", "-", "-", "-", "-"]
        );
    }

    #[test]
    fn table_joins_several_mismatches() {
        let row = Placement {
            namespace: "ns".into(),
            name: "p".into(),
            ip: None,
            node: None,
            phase: None,
            compute: Compute::Ec2,
            profile: Some("fp".into()),
            expected_size: None,
            capacity_provisioned: None,
            capacity_agrees: None,
            mismatches: vec![
                Mismatch::ProfileSelectedOnEc2 {
                    profile: "fp".into(),
                },
                Mismatch::ProfileLabelDisagrees {
                    label: "fp-x".into(),
                    selected: None,
                },
            ],
        };
        let table = render_table(&[row]);
        assert!(
            table.ends_with("profile-selected-on-ec2(fp),profile-label(fp-x != none)\n"),
            "{table}"
        );
    }
}
