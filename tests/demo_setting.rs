//! The demo setting end to end, through the binary as the README shows it: the embedded demo
//! cluster (manifests/examples/demo-cluster.yaml) with the AWS CLI JSON of
//! manifests/examples/aws (healthy) and manifests/examples/aws-udp53-missing (the node group's
//! own security group gets only TCP 53 into the cluster security group of the micro-VMs that
//! run CoreDNS), and `clusterdns placement` with the example Fargate profile.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const CLUSTER_SG: &str = "sg-0e1f2a3b4c5d60001";
const NODE_SG: &str = "sg-0e1f2a3b4c5d6node";
const DNS_PODS: [&str; 2] = [
    "kube-system/coredns-6f9c6c7d4-b6xg4",
    "kube-system/coredns-6f9c6c7d4-t8pqm",
];
/// The demo's pods on the two EC2 nodes of ng-general.
const NODE_GROUP_PODS: [&str; 9] = [
    "demo/api-6b7c8d9e0f-abcde",
    "demo/batch-0",
    "demo/gateway-5d8f7b9c6-q2w3e",
    "demo/nginx-7c5ddbdf54-2xkqp",
    "demo/nginx-7c5ddbdf54-8hvzl",
    "demo/peers-0",
    "demo/web-0",
    "demo/web-1",
    "demo/web-2",
];
const PATHS: [&str; 6] = [
    "fargate-to-dns",
    "nodegroup-to-dns",
    "fargate-to-nodegroup-services",
    "control-plane-to-fargate-kubelet",
    "dns-to-vpc-resolver",
    "dns-to-api-server",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the binary from the repository root with README-style relative paths:
/// (stdout, exit code).
fn clusterdns(args: &[&str]) -> (String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(args)
        .current_dir(root())
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the binary runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.trim().is_empty(),
        "clusterdns {args:?} wrote to stderr: {stderr}"
    );
    (
        String::from_utf8(out.stdout).expect("UTF-8 output"),
        out.status.code().expect("an exit code, not a signal"),
    )
}

fn probe_json(dir: &str) -> (Vec<Value>, i32) {
    let (out, code) = clusterdns(&["probe", "--aws", dir, "--format", "json"]);
    let findings: Vec<Value> = serde_json::from_str(&out).expect("--format json parses");
    (findings, code)
}

/// Every finding has the documented fields; a blocked one also has its fix.
fn assert_shape(findings: &[Value]) {
    assert!(!findings.is_empty());
    for f in findings {
        for end in ["from", "to"] {
            for key in ["name", "ip", "compute"] {
                assert!(f[end][key].is_string(), "{end}.{key} in {f:#}");
            }
        }
        assert!(f["protocol"] == "udp" || f["protocol"] == "tcp", "{f:#}");
        assert!(f["port"].as_u64().is_some_and(|p| p > 0), "{f:#}");
        assert!(
            ["allowed", "blocked", "unknown"].contains(&f["verdict"].as_str().unwrap_or("")),
            "{f:#}"
        );
        assert!(f["reason"].as_str().is_some_and(|r| !r.is_empty()), "{f:#}");
        if f["verdict"] == "blocked" {
            assert!(f["fix"].as_str().is_some_and(|x| !x.is_empty()), "{f:#}");
        } else {
            assert!(f.get("fix").is_none(), "{f:#}");
        }
    }
}

fn count(findings: &[Value], path: &str) -> usize {
    findings.iter().filter(|f| f["path"] == path).count()
}

#[test]
fn healthy_demo_setting_allows_every_path() {
    let (table, code) = clusterdns(&["probe", "--aws", "manifests/examples/aws"]);
    assert_eq!(code, 0, "{table}");
    assert!(
        !table.contains("BLOCKED") && !table.contains("UNKNOWN"),
        "{table}"
    );
    assert!(!table.contains("note:"), "nothing left unjudged: {table}");
    for path in PATHS {
        assert!(
            table.contains(&format!("({path}): 0 blocked, 0 unknown,")),
            "{path} missing: {table}"
        );
    }

    let (findings, code) = probe_json("manifests/examples/aws");
    assert_eq!(code, 0);
    assert_shape(&findings);
    assert!(findings.iter().all(|f| f["verdict"] == "allowed"));
    // busybox -> 2 DNS pods, each DNS pod -> the other; UDP and TCP.
    assert_eq!(count(&findings, "fargate-to-dns"), 8);
    assert_eq!(
        count(&findings, "nodegroup-to-dns"),
        NODE_GROUP_PODS.len() * 2 * 2
    );
    // Two API server ENIs -> three micro-VMs on 10250.
    assert_eq!(count(&findings, "control-plane-to-fargate-kubelet"), 6);
    // The resolver is the VPC's base + 2 (describe-vpcs is given).
    assert!(findings
        .iter()
        .filter(|f| f["path"] == "dns-to-vpc-resolver")
        .all(|f| f["to"]["ip"] == "192.168.0.2"));
    // The micro-VMs and the node group's ENIs carry the cluster security group.
    for f in &findings {
        for end in ["from", "to"] {
            if f[end]["kind"] == "pod" {
                assert_eq!(
                    f[end]["security_groups"],
                    serde_json::json!([CLUSTER_SG]),
                    "{f:#}"
                );
            }
        }
    }
    // busybox (micro-VM) reaches nginx on the node group.
    assert!(findings
        .iter()
        .any(|f| f["path"] == "fargate-to-nodegroup-services"
            && f["from"]["name"] == "default/busybox"
            && f["to"]["name"] == "demo/nginx-7c5ddbdf54-2xkqp"
            && f["protocol"] == "tcp"
            && f["port"] == 80));
}

#[test]
fn udp53_missing_blocks_node_group_pods_dns_over_udp_only() {
    let dir = "manifests/examples/aws-udp53-missing";
    let fix = format!(
        "aws ec2 authorize-security-group-ingress --group-id {CLUSTER_SG} --protocol udp --port 53 --source-group {NODE_SG}"
    );
    let (table, code) = clusterdns(&["probe", "--aws", dir]);
    assert_eq!(code, 1, "{table}");
    assert!(
        table.starts_with("== node-group pods -> cluster DNS on micro-VMs (nodegroup-to-dns): 18 blocked, 0 unknown, 18 allowed\n"),
        "{table}"
    );
    assert!(table.contains(&format!("         fix: {fix}\n")), "{table}");
    assert!(table.contains(&format!(
        "{CLUSTER_SG} ingress lacks UDP 53 from {NODE_SG} (has tcp 53 from {NODE_SG})"
    )));
    assert!(!table.contains("UNKNOWN"), "{table}");

    let (findings, code) = probe_json(dir);
    assert_eq!(code, 1);
    assert_shape(&findings);
    let blocked: Vec<&Value> = findings
        .iter()
        .filter(|f| f["verdict"] == "blocked")
        .collect();
    assert_eq!(blocked.len(), NODE_GROUP_PODS.len() * DNS_PODS.len());
    for f in &blocked {
        assert_eq!(f["path"], "nodegroup-to-dns", "{f:#}");
        assert_eq!(f["protocol"], "udp");
        assert_eq!(f["port"], 53);
        assert!(NODE_GROUP_PODS.contains(&f["from"]["name"].as_str().unwrap()));
        assert!(DNS_PODS.contains(&f["to"]["name"].as_str().unwrap()));
        assert_eq!(f["from"]["security_groups"], serde_json::json!([NODE_SG]));
        assert_eq!(f["fix"], fix.as_str());
    }
    // The same pods still reach the DNS pods over TCP, and everything else passes.
    for f in findings.iter().filter(|f| f["verdict"] != "blocked") {
        assert_eq!(f["verdict"], "allowed", "{f:#}");
    }
    assert_eq!(
        findings
            .iter()
            .filter(|f| f["path"] == "nodegroup-to-dns" && f["protocol"] == "tcp")
            .count(),
        NODE_GROUP_PODS.len() * DNS_PODS.len()
    );
}

#[test]
fn placement_puts_busybox_and_coredns_on_micro_vms_with_fp_default() {
    let (table, code) = clusterdns(&[
        "placement",
        "--fargate-profiles",
        "manifests/examples/fargate-profiles",
    ]);
    assert_eq!(code, 0, "{table}");
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .find(|cells| cells.get(1).map(String::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
    };
    for (ns, name, ip) in [
        ("default", "busybox", "192.168.101.33"),
        ("kube-system", "coredns-6f9c6c7d4-b6xg4", "192.168.100.21"),
        ("kube-system", "coredns-6f9c6c7d4-t8pqm", "192.168.130.22"),
    ] {
        let cells = row(name);
        let node = format!(
            "fargate-ip-{}.eu-west-1.compute.internal",
            ip.replace('.', "-")
        );
        // NAMESPACE NAME IP NODE COMPUTE PROFILE SIZE(2 words) CAPACITY(2 words) MISMATCH
        assert_eq!(
            cells,
            [
                ns,
                name,
                ip,
                &node,
                "micro-vm",
                "fp-default",
                "0.25vCPU",
                "0.5GB",
                "0.25vCPU",
                "0.5GB",
                "-"
            ],
            "{table}"
        );
    }
    for name in ["nginx-7c5ddbdf54-2xkqp", "nginx-7c5ddbdf54-8hvzl"] {
        let cells = row(name);
        assert_eq!(cells[0], "demo");
        assert_eq!(cells[4], "ec2", "{table}");
        assert_eq!(cells[5], "-", "{table}");
    }
}

#[test]
fn the_aws_directories_describe_the_demo_profile_and_cluster() {
    let examples = root().join("manifests/examples");
    let read =
        |p: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap() };
    let profile = read(&examples.join("fargate-profiles/fp-default.json"));
    for dir in ["aws", "aws-udp53-missing"] {
        let d = examples.join(dir);
        assert_eq!(
            read(&d.join("eks-describe-fargate-profile-fp-default.json")),
            profile,
            "{dir}"
        );
        assert_eq!(
            read(&d.join("eks-list-fargate-profiles.json")),
            serde_json::json!({"fargateProfileNames": ["fp-default"]})
        );
        let cluster = read(&d.join("eks-describe-cluster.json"));
        assert_eq!(cluster["cluster"]["name"], "demo");
        assert_eq!(
            cluster["cluster"]["resourcesVpcConfig"]["clusterSecurityGroupId"],
            CLUSTER_SG
        );
        // The profile's subnets are the Fargate subnets of the VPC.
        let subnets = read(&d.join("ec2-describe-subnets.json"));
        for (id, cidr) in [
            ("subnet-0a1b2c3d4e5f60001", "192.168.96.0/19"),
            ("subnet-0a1b2c3d4e5f60002", "192.168.128.0/19"),
        ] {
            assert!(profile["fargateProfile"]["subnets"]
                .as_array()
                .unwrap()
                .contains(&Value::from(id)));
            assert!(subnets["Subnets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["SubnetId"] == id && s["CidrBlock"] == cidr));
        }
    }
}
