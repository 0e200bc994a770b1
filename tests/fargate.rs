//! Fargate placement and sizing, table-driven: every selection rule, every mismatch, the
//! sizing table's edges, and the demo cluster with its fp-default profile.

use std::path::Path;

use clusterdns::cluster::objects::{load_path, ObjectSet};
use clusterdns::fargate::sizing::Size;
use clusterdns::fargate::{
    load_profiles, place, pod_size, render_table, run_placement, Compute, FargateProfile, Placement,
};
use k8s_openapi::api::core::v1::{Node, Pod};

fn pod(yaml: &str) -> Pod {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad test pod {yaml}: {e}"))
}

fn profiles(json: &str) -> Vec<FargateProfile> {
    serde_json::from_str(json).unwrap()
}

fn nodes() -> Vec<Node> {
    serde_yaml::from_str(
        r#"
- metadata: {name: ip-10-0-1-1.eu-west-1.compute.internal, labels: {eks.amazonaws.com/nodegroup: ng}}
- metadata:
    name: fargate-ip-10-0-2-2.eu-west-1.compute.internal
    labels: {eks.amazonaws.com/compute-type: fargate}
# Named like a micro-VM, without the label.
- metadata: {name: fargate-ip-10-0-3-3.eu-west-1.compute.internal}
# Labelled as a micro-VM, named otherwise.
- metadata: {name: vm-4, labels: {eks.amazonaws.com/compute-type: fargate}}
"#,
    )
    .unwrap()
}

const EC2: &str = "ip-10-0-1-1.eu-west-1.compute.internal";
const VM: &str = "fargate-ip-10-0-2-2.eu-west-1.compute.internal";
const VM_BY_NAME: &str = "fargate-ip-10-0-3-3.eu-west-1.compute.internal";
const VM_BY_LABEL: &str = "vm-4";

/// The profiles every placement row is judged against.
const PROFILES: &str = r#"[
  {"fargateProfileName": "fp-a", "selectors": [{"namespace": "team-*"}]},
  {"fargateProfileName": "fp-b", "selectors": [
    {"namespace": "ns-?"},
    {"namespace": "prod", "labels": {"app": "web", "tier": "front*"}}]},
  {"fargateProfileName": "fp-c", "selectors": [{"namespace": "team-*", "labels": {"compute": "fargate"}}]},
  {"fargateProfileName": "fp-k", "selectors": [{"namespace": "batch", "labels": {"comp?te": "farg*"}}]},
  {"fargateProfileName": "zz-shared", "selectors": [{"namespace": "shared"}]},
  {"fargateProfileName": "aa-shared", "selectors": [{"namespace": "shared"}]}
]"#;

struct Row {
    what: &'static str,
    namespace: &'static str,
    /// YAML flow mapping of labels, e.g. `{app: web}`.
    labels: &'static str,
    node: Option<&'static str>,
    phase: &'static str,
    /// Extra YAML under `spec:` (scheduler, containers) and `metadata:` (annotations, owners).
    spec: &'static str,
    metadata: &'static str,
    compute: Compute,
    profile: Option<&'static str>,
    mismatches: &'static [&'static str],
}

const R: Row = Row {
    what: "",
    namespace: "team-x",
    labels: "{}",
    node: Some(VM),
    phase: "Running",
    spec: "",
    metadata: "",
    compute: Compute::MicroVm,
    profile: Some("fp-a"),
    mismatches: &[],
};

fn rows() -> Vec<Row> {
    vec![
        Row { what: "namespace wildcard *", ..R },
        Row { what: "* matches zero characters", namespace: "team-", ..R },
        Row { what: "namespace wildcard ?", namespace: "ns-1", profile: Some("fp-b"), ..R },
        Row {
            what: "? is exactly one character",
            namespace: "ns-12",
            node: Some(EC2),
            compute: Compute::Ec2,
            profile: None,
            ..R
        },
        Row {
            what: "all labels of a selector are required",
            namespace: "prod",
            labels: "{app: web}",
            node: Some(EC2),
            compute: Compute::Ec2,
            profile: None,
            ..R
        },
        Row {
            what: "label value wildcard, second selector of a profile",
            namespace: "prod",
            labels: "{app: web, tier: frontend, extra: x}",
            profile: Some("fp-b"),
            ..R
        },
        Row {
            what: "label key wildcard",
            namespace: "batch",
            labels: "{compute: fargate-spot}",
            profile: Some("fp-k"),
            ..R
        },
        Row {
            what: "label key wildcard needs a key that fits",
            namespace: "batch",
            labels: "{compte: fargate}",
            node: Some(EC2),
            compute: Compute::Ec2,
            profile: None,
            ..R
        },
        Row {
            what: "two profiles match: alphanumerically first (fp-a before fp-c)",
            labels: "{compute: fargate}",
            ..R
        },
        Row {
            what: "two profiles match: aa-shared before zz-shared",
            namespace: "shared",
            profile: Some("aa-shared"),
            ..R
        },
        Row {
            what: "the override label picks the later profile",
            namespace: "shared",
            labels: "{eks.amazonaws.com/fargate-profile: zz-shared}",
            profile: Some("zz-shared"),
            ..R
        },
        Row {
            what: "override label among fp-a and fp-c",
            labels: "{compute: fargate, eks.amazonaws.com/fargate-profile: fp-c}",
            profile: Some("fp-c"),
            ..R
        },
        Row {
            what: "a label naming a profile that does not select the pod disagrees",
            labels: "{eks.amazonaws.com/fargate-profile: fp-b}",
            mismatches: &["profile-label(fp-b != fp-a)"],
            ..R
        },
        Row {
            what: "profile-selected pod on EC2",
            node: Some(EC2),
            compute: Compute::Ec2,
            mismatches: &["profile-selected-on-ec2(fp-a)"],
            ..R
        },
        Row {
            what: "DaemonSet pods cannot run on micro-VMs: expected on EC2",
            node: Some(EC2),
            compute: Compute::Ec2,
            metadata: "ownerReferences: [{apiVersion: apps/v1, kind: DaemonSet, name: kube-proxy, uid: u1}]",
            ..R
        },
        Row {
            what: "micro-VM pod no profile selects",
            namespace: "other",
            profile: None,
            mismatches: &["micro-vm-without-profile"],
            ..R
        },
        Row { what: "micro-VM known by node name alone", node: Some(VM_BY_NAME), ..R },
        Row { what: "micro-VM known by node label alone", node: Some(VM_BY_LABEL), ..R },
        Row {
            what: "node missing from the input",
            node: Some("gone-node"),
            compute: Compute::Unknown,
            ..R
        },
        Row {
            what: "pending, selected: waiting for its micro-VM",
            node: None,
            phase: "Pending",
            spec: "schedulerName: fargate-scheduler",
            compute: Compute::Unknown,
            ..R
        },
        Row {
            what: "pending for fargate-scheduler, no profile: stays Pending",
            namespace: "other",
            node: None,
            phase: "Pending",
            spec: "schedulerName: fargate-scheduler",
            compute: Compute::Unknown,
            profile: None,
            mismatches: &["pending-without-profile"],
            ..R
        },
        Row {
            what: "unscheduled without a status, fargate-scheduler, no profile",
            namespace: "other",
            node: None,
            phase: "",
            spec: "schedulerName: fargate-scheduler",
            compute: Compute::Unknown,
            profile: None,
            mismatches: &["pending-without-profile"],
            ..R
        },
        Row {
            what: "pending for the default scheduler, no profile: not Fargate's",
            namespace: "other",
            node: None,
            phase: "Pending",
            compute: Compute::Unknown,
            profile: None,
            ..R
        },
        Row {
            what: "pending, selected, label names a profile that does not exist",
            labels: "{eks.amazonaws.com/fargate-profile: fp-gone}",
            node: None,
            phase: "Pending",
            spec: "schedulerName: fargate-scheduler",
            compute: Compute::Unknown,
            mismatches: &["pending-unknown-profile-label(fp-gone)"],
            ..R
        },
        Row {
            what: "running, label names a deleted profile",
            labels: "{eks.amazonaws.com/fargate-profile: fp-gone}",
            mismatches: &["profile-label(fp-gone != fp-a)"],
            ..R
        },
        Row {
            what: "capacity annotation agrees",
            metadata: "annotations: {CapacityProvisioned: 2vCPU 9GB}",
            spec: "containers: [{name: app, resources: {requests: {cpu: '1', memory: 8Gi}}}]",
            ..R
        },
        Row {
            what: "capacity annotation disagrees",
            metadata: "annotations: {CapacityProvisioned: 1vCPU 8GB}",
            spec: "containers: [{name: app, resources: {requests: {cpu: '1', memory: 8Gi}}}]",
            mismatches: &["size(expected 2vCPU 9GB, provisioned 1vCPU 8GB)"],
            ..R
        },
        Row {
            what: "capacity annotation unreadable",
            metadata: "annotations: {CapacityProvisioned: big}",
            mismatches: &["unreadable-capacity(big)"],
            ..R
        },
        Row {
            what: "too large for any micro-VM, reported",
            spec: "containers: [{name: app, resources: {requests: {cpu: '17'}}}]",
            mismatches: &["unsizable(needs 17 vCPU and 256 MiB with overhead: more than the largest size (16vCPU 120GB))"],
            ..R
        },
    ]
}

fn row_pod(row: &Row, index: usize) -> Pod {
    let node = row
        .node
        .map(|n| format!("nodeName: {n}"))
        .unwrap_or_default();
    let spec = if row.spec.contains("containers:") {
        format!("{node}\n  {}", row.spec)
    } else {
        format!("{node}\n  {}\n  containers: [{{name: app}}]", row.spec)
    };
    let status = if row.phase.is_empty() {
        String::new()
    } else {
        format!("status: {{phase: {}, podIP: 10.9.0.{index}}}", row.phase)
    };
    pod(&format!(
        "metadata:\n  name: pod-{index:02}\n  namespace: {}\n  labels: {}\n  {}\nspec:\n  {spec}\n{status}\n",
        row.namespace, row.labels, row.metadata,
    ))
}

#[test]
fn placement_table() {
    let profiles = profiles(PROFILES);
    let nodes = nodes();
    let rows = rows();
    let pods: Vec<Pod> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| row_pod(r, i))
        .collect();
    let placed = place(&pods, &nodes, &profiles);
    assert_eq!(placed.len(), rows.len());
    for (i, row) in rows.iter().enumerate() {
        // Rows come back sorted by namespace and name; find this one by name.
        let name = format!("pod-{i:02}");
        let p = placed.iter().find(|p| p.name == name).unwrap();
        let what = row.what;
        assert_eq!(p.namespace, row.namespace, "{what}");
        assert_eq!(p.compute, row.compute, "{what}");
        assert_eq!(p.profile.as_deref(), row.profile, "{what}");
        let mismatches: Vec<String> = p.mismatches.iter().map(ToString::to_string).collect();
        assert_eq!(mismatches, row.mismatches, "{what}");
        assert_eq!(p.node.as_deref(), row.node, "{what}");
        if !row.phase.is_empty() {
            assert_eq!(p.ip, Some(format!("10.9.0.{i}")), "{what}");
        }
    }
    let sorted = placed
        .windows(2)
        .all(|w| (&w[0].namespace, &w[0].name) <= (&w[1].namespace, &w[1].name));
    assert!(sorted);
}

#[test]
fn placement_sizes_only_fargate_pods() {
    let profiles = profiles(PROFILES);
    let pods = [
        pod("metadata: {name: a, namespace: team-x}\nspec: {nodeName: fargate-ip-10-0-2-2.eu-west-1.compute.internal, containers: [{name: c}]}"),
        pod("metadata: {name: b, namespace: other}\nspec: {nodeName: ip-10-0-1-1.eu-west-1.compute.internal, containers: [{name: c}]}"),
        pod("metadata: {name: c, namespace: team-x, annotations: {CapacityProvisioned: 0.25vCPU 0.5GB}}\nspec: {containers: [{name: c}]}"),
    ];
    let placed = place(&pods, &nodes(), &profiles);
    let by_name = |name: &str| placed.iter().find(|p| p.name == name).unwrap();
    let quarter = Some("0.25vCPU 0.5GB".parse::<Size>().unwrap());
    assert_eq!(by_name("a").expected_size, quarter);
    assert_eq!(by_name("a").capacity_agrees, None);
    assert_eq!(
        by_name("b").expected_size,
        None,
        "EC2 pods get no micro-VM size"
    );
    assert_eq!(by_name("c").capacity_agrees, Some(true));
}

struct SizeRow {
    what: &'static str,
    /// YAML flow sequences for `containers` and `initContainers`.
    containers: &'static str,
    init: &'static str,
    want: Result<&'static str, &'static str>,
}

#[test]
fn sizing_table() {
    let rows = [
        SizeRow {
            what: "nothing requested",
            containers: "[{name: a}, {name: b}]",
            init: "[]",
            want: Ok("0.25vCPU 0.5GB"),
        },
        SizeRow {
            what: "exactly 512 MiB with the overhead still fits 0.5 GB",
            containers: "[{name: a, resources: {requests: {cpu: 250m, memory: 256Mi}, limits: {cpu: '2', memory: 4Gi}}}]",
            init: "[]",
            want: Ok("0.25vCPU 0.5GB"),
        },
        SizeRow {
            what: "one byte more does not",
            containers: "[{name: a, resources: {requests: {memory: '268435457'}}}]",
            init: "[]",
            want: Ok("0.25vCPU 1GB"),
        },
        SizeRow {
            what: "limits only stand in for requests",
            containers: "[{name: a, resources: {limits: {cpu: '1', memory: 2Gi}}}]",
            init: "[]",
            want: Ok("1vCPU 3GB"),
        },
        SizeRow {
            what: "limit for one resource, request for the other",
            containers: "[{name: a, resources: {requests: {cpu: 100m}, limits: {cpu: '4', memory: 1Gi}}}]",
            init: "[]",
            want: Ok("0.25vCPU 2GB"),
        },
        SizeRow {
            what: "containers are summed",
            containers: "[{name: a, resources: {requests: {cpu: 300m}}}, {name: b, resources: {requests: {cpu: 0.3}}}]",
            init: "[]",
            want: Ok("1vCPU 2GB"),
        },
        SizeRow {
            what: "init container larger than the sum",
            containers: "[{name: a, resources: {requests: {cpu: 250m, memory: 256Mi}}}]",
            init: "[{name: i, resources: {requests: {cpu: '2', memory: 1Gi}}}, {name: j, resources: {requests: {cpu: 1}}}]",
            want: Ok("2vCPU 4GB"),
        },
        SizeRow {
            what: "init containers are not summed",
            containers: "[{name: a}]",
            init: "[{name: i, resources: {requests: {cpu: 400m}}}, {name: j, resources: {requests: {cpu: 400m}}}]",
            want: Ok("0.5vCPU 1GB"),
        },
        SizeRow {
            what: "sidecar init containers count in the sum",
            containers: "[{name: a, resources: {requests: {cpu: 300m}}}]",
            init: "[{name: s, restartPolicy: Always, resources: {requests: {cpu: 300m}}}, {name: i, resources: {requests: {cpu: 400m}}}]",
            want: Ok("1vCPU 2GB"),
        },
        SizeRow {
            what: "AWS's example: 1 vCPU with 8 GB becomes 2 vCPU / 9 GB",
            containers: "[{name: a, resources: {requests: {cpu: '1', memory: 8Gi}}}]",
            init: "[]",
            want: Ok("2vCPU 9GB"),
        },
        SizeRow {
            what: "memory alone lifts the vCPU",
            containers: "[{name: a, resources: {requests: {cpu: 250m, memory: 2Gi}}}]",
            init: "[]",
            want: Ok("0.5vCPU 3GB"),
        },
        SizeRow {
            what: "decimal gigabytes",
            containers: "[{name: a, resources: {requests: {memory: 1G}}}]",
            init: "[]",
            want: Ok("0.25vCPU 2GB"),
        },
        SizeRow {
            what: "4 vCPU / 30 GB edge: fits exactly",
            containers: "[{name: a, resources: {requests: {cpu: '4', memory: 30464Mi}}}]",
            init: "[]",
            want: Ok("4vCPU 30GB"),
        },
        SizeRow {
            what: "4 vCPU / 30 GB edge: one MiB more needs 8 vCPU",
            containers: "[{name: a, resources: {requests: {cpu: '4', memory: 30465Mi}}}]",
            init: "[]",
            want: Ok("8vCPU 32GB"),
        },
        SizeRow {
            what: "8 vCPU in 4 GB steps",
            containers: "[{name: a, resources: {requests: {cpu: '5', memory: 17Gi}}}]",
            init: "[]",
            want: Ok("8vCPU 20GB"),
        },
        SizeRow {
            what: "8 vCPU top",
            containers: "[{name: a, resources: {requests: {cpu: 8000m, memory: 59Gi}}}]",
            init: "[]",
            want: Ok("8vCPU 60GB"),
        },
        SizeRow {
            what: "16 vCPU in 8 GB steps",
            containers: "[{name: a, resources: {requests: {cpu: '9', memory: 33Gi}}}]",
            init: "[]",
            want: Ok("16vCPU 40GB"),
        },
        SizeRow {
            what: "too large: CPU",
            containers: "[{name: a, resources: {requests: {cpu: '17'}}}]",
            init: "[]",
            want: Err("more than the largest size"),
        },
        SizeRow {
            what: "too large: memory with overhead",
            containers: "[{name: a, resources: {requests: {memory: 120Gi}}}]",
            init: "[]",
            want: Err("more than the largest size"),
        },
        SizeRow {
            what: "bad quantity is an error, not a panic",
            containers: "[{name: a, resources: {requests: {cpu: lots}}}]",
            init: "[]",
            want: Err("container a: cpu: \"lots\": not a number"),
        },
    ];
    for row in rows {
        let p = pod(&format!(
            "metadata: {{name: p}}\nspec: {{containers: {}, initContainers: {}}}",
            row.containers, row.init
        ));
        let got = pod_size(&p);
        match row.want {
            Ok(want) => assert_eq!(
                got.as_ref()
                    .map(ToString::to_string)
                    .map_err(ToString::to_string),
                Ok(want.to_owned()),
                "{}",
                row.what
            ),
            Err(want) => {
                let err = got.expect_err(row.what).to_string();
                assert!(err.contains(want), "{}: {err}", row.what);
            }
        }
    }
}

#[test]
fn annotation_compare() {
    let two_nine: Size = "2vCPU 9GB".parse().unwrap();
    let p = pod("metadata: {name: p}\nspec: {containers: [{name: a, resources: {requests: {cpu: '1', memory: 8Gi}}}]}");
    assert_eq!(pod_size(&p), Ok(two_nine));
    assert_ne!(pod_size(&p).unwrap(), "1vCPU 8GB".parse::<Size>().unwrap());
}

fn demo() -> (ObjectSet, Vec<FargateProfile>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples");
    let objects = load_path(&root.join("demo-cluster.yaml")).unwrap();
    let profiles = load_profiles(&root.join("fargate-profiles")).unwrap();
    (objects, profiles)
}

#[test]
fn demo_cluster_with_fp_default() {
    let (objects, profiles) = demo();
    assert_eq!(profiles.len(), 1);
    let placed = place(&objects.pods, &objects.nodes, &profiles);
    let row = |name: &str| -> &Placement {
        placed
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no row for {name}"))
    };
    for name in [
        "busybox",
        "coredns-6f9c6c7d4-b6xg4",
        "coredns-6f9c6c7d4-t8pqm",
    ] {
        let p = row(name);
        assert_eq!(p.compute, Compute::MicroVm, "{name}");
        assert_eq!(p.profile.as_deref(), Some("fp-default"), "{name}");
        assert_eq!(
            p.expected_size.map(|s| s.to_string()).as_deref(),
            Some("0.25vCPU 0.5GB"),
            "{name}"
        );
        assert_eq!(p.capacity_agrees, Some(true), "{name}");
        assert!(
            p.node.as_deref().unwrap().starts_with("fargate-ip-"),
            "{name}"
        );
    }
    for name in [
        "nginx-7c5ddbdf54-2xkqp",
        "nginx-7c5ddbdf54-8hvzl",
        "web-0",
        "web-1",
        "web-2",
    ] {
        let p = row(name);
        assert_eq!(p.namespace, "demo");
        assert_eq!(p.compute, Compute::Ec2, "{name}");
        assert_eq!(p.profile, None, "{name}");
        assert_eq!(p.expected_size, None, "{name}");
    }
    for p in &placed {
        assert!(
            p.mismatches.is_empty(),
            "{}/{}: {:?}",
            p.namespace,
            p.name,
            p.mismatches
        );
        assert_ne!(p.compute, Compute::Unknown, "{}", p.name);
    }
    assert_eq!(
        placed
            .iter()
            .filter(|p| p.compute == Compute::MicroVm)
            .count(),
        3
    );
}

#[test]
fn demo_cluster_rendered() {
    let (objects, profiles) = demo();
    let table = run_placement(&objects, &profiles, false);
    let lines: Vec<&str> = table.lines().collect();
    let header = lines[0];
    assert!(header.starts_with("NAMESPACE"), "{table}");
    for (column, next) in [("NAME", "IP"), ("NODE", "COMPUTE"), ("SIZE", "CAPACITY")] {
        assert!(header.contains(column) && header.contains(next), "{header}");
    }
    // Columns are aligned: every row's COMPUTE cell starts where the header's does.
    let at = header.find("COMPUTE").unwrap();
    for line in &lines[1..] {
        let cell = line.get(at..).unwrap_or("");
        assert!(
            cell.starts_with("micro-vm ") || cell.starts_with("ec2 "),
            "misaligned: {line}"
        );
    }
    let busybox = lines.iter().find(|l| l.contains("busybox")).unwrap();
    let cells: Vec<&str> = busybox.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "default",
            "busybox",
            "192.168.101.33",
            "fargate-ip-192-168-101-33.eu-west-1.compute.internal",
            "micro-vm",
            "fp-default",
            "0.25vCPU",
            "0.5GB",
            "0.25vCPU",
            "0.5GB",
            "-",
        ]
    );
    assert_eq!(lines.len(), objects.pods.len() + 1);
    assert!(table.ends_with('\n'));
    let empty = render_table(&[]);
    assert_eq!(
        empty.split_whitespace().collect::<Vec<_>>(),
        header.split_whitespace().collect::<Vec<_>>()
    );

    let json: serde_json::Value =
        serde_json::from_str(&run_placement(&objects, &profiles, true)).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), objects.pods.len());
    let busybox = rows.iter().find(|r| r["name"] == "busybox").unwrap();
    assert_eq!(busybox["compute"], "micro-vm");
    assert_eq!(busybox["profile"], "fp-default");
    assert_eq!(busybox["expectedSize"], "0.25vCPU 0.5GB");
    assert_eq!(busybox["capacityProvisioned"], "0.25vCPU 0.5GB");
    assert_eq!(busybox["capacityAgrees"], true);
    assert_eq!(busybox["mismatches"], serde_json::json!([]));
}

#[test]
fn mismatches_serialize_with_a_kind() {
    let profiles = profiles(PROFILES);
    let p = pod("metadata: {name: a, namespace: team-x, annotations: {CapacityProvisioned: 1vCPU 2GB}}\nspec: {nodeName: ip-10-0-1-1.eu-west-1.compute.internal, containers: [{name: c}]}");
    let placed = place(&[p], &nodes(), &profiles);
    let json = serde_json::to_value(&placed[0].mismatches).unwrap();
    assert_eq!(
        json,
        serde_json::json!([
            {"kind": "profile-selected-on-ec2", "profile": "fp-a"},
            {"kind": "size-mismatch", "expected": "0.25vCPU 0.5GB", "provisioned": "1vCPU 2GB"},
        ])
    );
}
