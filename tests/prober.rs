//! The static prober against AWS CLI fixtures (tests/fixtures/aws/<case>/, derived from the
//! reference examples by tests/fixtures/aws/generate.py) and their cluster objects
//! (<case>/cluster/). Each case's whole table is compared with <case>/expected.txt; the rows
//! each case exists for are also asserted here, fix text included.
//!
//! After a deliberate change to the output, `UPDATE_EXPECTED=1 cargo test --test prober`
//! rewrites the expected tables; review the diff before committing it.

use std::path::{Path, PathBuf};

use clusterdns::cluster::objects::load_path;
use clusterdns::prober::{run_static, ProbeError};
use serde_json::Value;

fn case_dir(case: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/aws")
        .join(case)
}

/// (table, exit code, JSON findings)
fn run(case: &str) -> (String, u8, Vec<Value>) {
    let dir = case_dir(case);
    let objects = load_path(&dir.join("cluster")).expect("cluster objects load");
    let (table, code) = run_static(&dir, &objects, false).expect("static probe runs");
    let (json, json_code) = run_static(&dir, &objects, true).expect("static probe runs");
    assert_eq!(code, json_code);
    let findings: Vec<Value> = serde_json::from_str(&json).expect("the JSON output parses");
    let expected_path = dir.join("expected.txt");
    if std::env::var_os("UPDATE_EXPECTED").is_some() {
        std::fs::write(&expected_path, &table).unwrap();
    }
    let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
    assert_eq!(
        table,
        expected,
        "{case}: the table differs from {}",
        expected_path.display()
    );
    (table, code, findings)
}

/// The findings from `from` (a name prefix) to `to` (a name prefix) on `proto`/`port`.
fn rows<'a>(findings: &'a [Value], from: &str, to: &str, proto: &str, port: u64) -> Vec<&'a Value> {
    findings
        .iter()
        .filter(|f| {
            f["from"]["name"].as_str().unwrap().starts_with(from)
                && f["to"]["name"].as_str().unwrap().starts_with(to)
                && f["protocol"] == proto
                && f["port"] == port
        })
        .collect()
}

fn verdicts(findings: &[Value], verdict: &str) -> usize {
    findings.iter().filter(|f| f["verdict"] == verdict).count()
}

// One call per expected row reads like the table it checks.
#[allow(clippy::too_many_arguments)]
fn assert_row(
    findings: &[Value],
    from: &str,
    to: &str,
    proto: &str,
    port: u64,
    verdict: &str,
    reason: &str,
    fix: Option<&str>,
) {
    let found = rows(findings, from, to, proto, port);
    assert!(
        !found.is_empty(),
        "no finding {from} -> {to} {proto}/{port}"
    );
    for f in found {
        assert_eq!(
            f["verdict"], verdict,
            "{from} -> {to} {proto}/{port}: {f:#}"
        );
        assert_eq!(f["reason"], reason, "{from} -> {to} {proto}/{port}");
        assert_eq!(f["fix"].as_str(), fix, "{from} -> {to} {proto}/{port}");
    }
}

#[test]
fn a_healthy_default_cluster_allows_every_path() {
    let (_, code, findings) = run("healthy");
    assert_eq!(code, 0);
    assert_eq!(verdicts(&findings, "allowed"), findings.len());
    assert_row(
        &findings,
        "demo/nginx-0",
        "kube-system/coredns-a",
        "udp",
        53,
        "allowed",
        "sg-0a11c1u5 egress all to 0.0.0.0/0; sg-0a11c1u5 ingress all from sg-0a11c1u5; acl-0def (subnet-07aa) outbound rule 100, acl-0def (subnet-07cc) inbound rule 100, acl-0def (subnet-07cc) outbound return traffic rule 100, acl-0def (subnet-07aa) inbound return traffic rule 100",
        None,
    );
    // Every path of fargate.md is judged.
    for path in [
        "fargate-to-dns",
        "nodegroup-to-dns",
        "fargate-to-nodegroup-services",
        "nodegroup-to-fargate-services",
        "control-plane-to-fargate-kubelet",
        "dns-to-vpc-resolver",
        "dns-to-api-server",
    ] {
        assert!(findings.iter().any(|f| f["path"] == path), "{path} missing");
    }
    // The JSON names both ends with subnet and groups.
    let f = &rows(&findings, "web/frontend-0", "demo/nginx-0", "tcp", 80)[0];
    assert_eq!(f["from"]["ip"], "10.20.81.20");
    assert_eq!(f["from"]["kind"], "pod");
    assert_eq!(f["from"]["subnet"], "subnet-07dd");
    assert_eq!(f["from"]["compute"], "micro-VM (fargate profile fp-web)");
    assert_eq!(f["from"]["security_groups"][0], "sg-0a11c1u5");
    assert_eq!(
        f["from"]["security_groups_source"],
        "cluster security group"
    );
    assert_eq!(f["to"]["security_groups_source"], "ENI eni-0aa1");
    assert_eq!(f["service"], "demo/nginx");
}

#[test]
fn b_node_group_sg_allowing_tcp_53_but_not_udp_53() {
    let (table, code, findings) = run("udp53-missing");
    assert_eq!(code, 1);
    let fix = "aws ec2 authorize-security-group-ingress --group-id sg-0node --protocol udp --port 53 --source-group sg-0a11c1u5";
    for dns in ["kube-system/coredns-a", "kube-system/coredns-b"] {
        assert_row(
            &findings,
            "web/frontend-0",
            dns,
            "udp",
            53,
            "blocked",
            "sg-0node ingress lacks UDP 53 from sg-0a11c1u5 (has tcp 53 from sg-0a11c1u5)",
            Some(fix),
        );
        assert_eq!(
            rows(&findings, "web/frontend-0", dns, "tcp", 53)[0]["verdict"],
            "allowed"
        );
        // fp-coredns runs no pod (DNS moved to the node group): a representative per subnet.
        assert_row(
            &findings,
            "fargate profile fp-coredns",
            dns,
            "udp",
            53,
            "blocked",
            "sg-0node ingress lacks UDP 53 from sg-0a11c1u5 (has tcp 53 from sg-0a11c1u5)",
            Some(fix),
        );
    }
    assert_eq!(verdicts(&findings, "blocked"), 6);
    assert!(
        table.starts_with("== micro-VM pods -> cluster DNS (fargate-to-dns): 6 blocked"),
        "{table}"
    );
}

#[test]
fn c_self_managed_node_group_without_the_cluster_sg() {
    let (_, code, findings) = run("self-managed");
    assert_eq!(code, 1);
    assert_row(&findings, "demo/nginx-0", "kube-system/coredns-a", "udp", 53, "blocked",
        "sg-0a11c1u5 ingress lacks UDP 53 from sg-0self",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0a11c1u5 --protocol udp --port 53 --source-group sg-0self"));
    assert_row(&findings, "web/frontend-0", "demo/nginx-0", "tcp", 80, "blocked",
        "sg-0self ingress lacks TCP 80 from sg-0a11c1u5",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0self --protocol tcp --port 80 --source-group sg-0a11c1u5"));
    assert_row(&findings, "demo/nginx-0", "web/frontend-0", "tcp", 8080, "blocked",
        "sg-0a11c1u5 ingress lacks TCP 8080 from sg-0self",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0a11c1u5 --protocol tcp --port 8080 --source-group sg-0self"));
    let f = &rows(&findings, "demo/nginx-0", "web/frontend-0", "tcp", 8080)[0];
    assert_eq!(
        f["from"]["compute"],
        "node group ng-self (node ip-10-20-3-17.eu-west-1.compute.internal)"
    );
    assert_eq!(f["from"]["security_groups_source"], "ENI eni-0aa1");
}

#[test]
fn d_security_groups_for_pods_without_outbound_53() {
    let (_, code, findings) = run("pod-sg-no-dns");
    assert_eq!(code, 1);
    for pod in ["web/payments-0", "web/checkout-0"] {
        assert_row(&findings, pod, "kube-system/coredns-a", "udp", 53, "blocked",
            "sg-0b0pods egress lacks UDP 53 to sg-0a11c1u5",
            Some("aws ec2 authorize-security-group-egress --group-id sg-0b0pods --ip-permissions 'IpProtocol=udp,FromPort=53,ToPort=53,UserIdGroupPairs=[{GroupId=sg-0a11c1u5}]'"));
        assert_row(&findings, pod, "kube-system/coredns-b", "tcp", 53, "blocked",
            "sg-0b0pods egress lacks TCP 53 to sg-0a11c1u5",
            Some("aws ec2 authorize-security-group-egress --group-id sg-0b0pods --ip-permissions 'IpProtocol=tcp,FromPort=53,ToPort=53,UserIdGroupPairs=[{GroupId=sg-0a11c1u5}]'"));
    }
    // The groups come from the SecurityGroupPolicy and from the pod-sg annotation.
    let payments = &rows(
        &findings,
        "web/payments-0",
        "kube-system/coredns-a",
        "udp",
        53,
    )[0];
    assert_eq!(
        payments["from"]["security_groups_source"],
        "SecurityGroupPolicy web/payments"
    );
    let checkout = &rows(
        &findings,
        "web/checkout-0",
        "kube-system/coredns-a",
        "udp",
        53,
    )[0];
    assert_eq!(
        checkout["from"]["security_groups_source"],
        "annotation fargate.amazonaws.com/pod-sg"
    );
    // Both directions missing: two fixes, one a line.
    assert_row(&findings, "web/payments-0", "demo/nginx-0", "tcp", 80, "blocked",
        "sg-0b0pods egress lacks TCP 80 to sg-0a11c1u5; sg-0a11c1u5 ingress lacks TCP 80 from sg-0b0pods",
        Some("aws ec2 authorize-security-group-egress --group-id sg-0b0pods --ip-permissions 'IpProtocol=tcp,FromPort=80,ToPort=80,UserIdGroupPairs=[{GroupId=sg-0a11c1u5}]'\naws ec2 authorize-security-group-ingress --group-id sg-0a11c1u5 --protocol tcp --port 80 --source-group sg-0b0pods"));
}

#[test]
fn e_network_acl_dropping_the_udp_return_traffic() {
    let (_, code, findings) = run("nacl-return");
    assert_eq!(code, 1);
    assert_row(&findings, "web/frontend-0", "kube-system/coredns-a", "udp", 53, "blocked",
        "acl-0f00 (subnet-07dd) inbound denies return traffic udp 1024-65535 from 10.20.7.2 (rule *)",
        Some("aws ec2 create-network-acl-entry --network-acl-id acl-0f00 --ingress --rule-number 210 --protocol udp --port-range From=1024,To=65535 --cidr-block 10.20.0.0/20 --rule-action allow"));
    // A second fix in the same report takes the next free number.
    assert_row(&findings, "web/frontend-0", "kube-system/coredns-b", "udp", 53, "blocked",
        "acl-0f00 (subnet-07dd) inbound denies return traffic udp 1024-65535 from 10.20.22.30 (rule *)",
        Some("aws ec2 create-network-acl-entry --network-acl-id acl-0f00 --ingress --rule-number 220 --protocol udp --port-range From=1024,To=65535 --cidr-block 10.20.16.0/20 --rule-action allow"));
    // TCP answers come back through rule 200 (TCP 1024-65535 from anywhere).
    assert_row(&findings, "web/frontend-0", "kube-system/coredns-a", "tcp", 53, "allowed",
        "sg-0a11c1u5 egress all to 0.0.0.0/0; sg-0a11c1u5 ingress all from sg-0a11c1u5; acl-0f00 (subnet-07dd) outbound rule 100, acl-0def (subnet-07aa) inbound rule 100, acl-0def (subnet-07aa) outbound return traffic rule 100, acl-0f00 (subnet-07dd) inbound return traffic rule 200",
        None);
    assert_eq!(verdicts(&findings, "blocked"), 6);
}

#[test]
fn f_an_ipv6_only_rule_does_not_admit_ipv4_pods() {
    let (_, code, findings) = run("ipv6-only-rule");
    assert_eq!(code, 1);
    assert_row(&findings, "web/frontend-0", "kube-system/coredns-a", "udp", 53, "blocked",
        "sg-0node ingress lacks UDP 53 from sg-0a11c1u5 (has udp 53 from ::/0, which matches IPv6 only)",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0node --protocol udp --port 53 --source-group sg-0a11c1u5"));
    assert_row(&findings, "web/frontend-0", "kube-system/coredns-b", "tcp", 53, "blocked",
        "sg-0node ingress lacks TCP 53 from sg-0a11c1u5 (has tcp 53 from ::/0, which matches IPv6 only)",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0node --protocol tcp --port 53 --source-group sg-0a11c1u5"));
}

#[test]
fn g_a_prefix_list_rule_is_unknown_never_guessed() {
    let (_, code, findings) = run("prefix-list");
    // Unknown is not a failure: nothing is known to be blocked.
    assert_eq!(code, 0);
    assert_row(
        &findings,
        "web/payments-0",
        "demo/ledger-0",
        "tcp",
        5432,
        "unknown",
        "sg-0b0pods egress tcp 5432 to pl-0123abcd: prefix list pl-0123abcd not evaluated",
        None,
    );
    assert_eq!(verdicts(&findings, "unknown"), 1);
    assert_eq!(verdicts(&findings, "blocked"), 0);
}

#[test]
fn the_reference_examples_as_is() {
    let (table, code, findings) = run("reference");
    assert_eq!(code, 1);
    // The payments pods' group may send DNS to the cluster SG, but the DNS pods' cluster SG
    // does not admit it: fargate.md's "security groups for pods" requirement.
    assert_row(&findings, "web/payments-0", "kube-system/coredns-a", "udp", 53, "blocked",
        "sg-0a11c1u5 ingress lacks UDP 53 from sg-0b0pods",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0a11c1u5 --protocol udp --port 53 --source-group sg-0b0pods"));
    assert_row(&findings, "API server", "web/payments-0", "tcp", 10250, "blocked",
        "sg-0b0pods ingress lacks TCP 10250 from sg-0a11c1u5",
        Some("aws ec2 authorize-security-group-ingress --group-id sg-0b0pods --protocol tcp --port 10250 --source-group sg-0a11c1u5"));
    // The examples describe only the custom ACL: the node subnets' default ACL is not in them.
    assert_row(
        &findings,
        "demo/nginx-0",
        "kube-system/coredns-a",
        "udp",
        53,
        "unknown",
        "no network ACL found for subnet-07aa (no association and no default ACL in the input)",
        None,
    );
    // The custom ACL admits in-VPC traffic (rule 100) between the micro-VM subnets.
    assert_eq!(
        rows(
            &findings,
            "web/frontend-0",
            "kube-system/coredns-a",
            "udp",
            53
        )[0]["verdict"],
        "allowed"
    );
    assert!(table.contains("VPC resolver 169.254.169.253"));
}

fn error_of(case: &str) -> ProbeError {
    let dir = case_dir(&format!("errors/{case}"));
    run_static(&dir, &Default::default(), false).expect_err("bad input is an error")
}

#[test]
fn malformed_json_names_the_file() {
    let err = error_of("malformed");
    assert_eq!(err.exit_code(), 2);
    let text = err.to_string();
    assert!(
        text.contains("errors/malformed/sgs.json: invalid JSON/YAML: "),
        "{text}"
    );
    assert!(text.contains("line 2"), "{text}");
}

#[test]
fn a_missing_group_id_names_its_json_path() {
    let text = error_of("missing-group-id").to_string();
    assert!(
        text.ends_with(
            "errors/missing-group-id/security-groups.json: $.SecurityGroups[2].GroupId: missing"
        ),
        "{text}"
    );
}

#[test]
fn an_unknown_top_level_key_names_the_file_and_the_keys_expected() {
    let text = error_of("unknown-key").to_string();
    assert!(text.contains("errors/unknown-key/instances.json: unrecognised top-level key(s) NextToken, Reservations: expected AWS CLI output with one of cluster, fargateProfile, fargateProfileNames, nodegroup, Subnets, SecurityGroups, NetworkAcls, NetworkInterfaces"), "{text}");
}

#[test]
fn files_are_recognised_by_content_not_name() {
    let dir = tempfile::tempdir().unwrap();
    let reference = case_dir("reference");
    for (i, entry) in std::fs::read_dir(&reference).unwrap().enumerate() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            // Swap names around: subnets in "a0.json", security groups in "a1.json", ...
            std::fs::copy(&path, dir.path().join(format!("a{i}.json"))).unwrap();
        }
    }
    let objects = load_path(&reference.join("cluster")).unwrap();
    let (renamed, code) = run_static(dir.path(), &objects, true).unwrap();
    let (original, original_code) = run_static(&reference, &objects, true).unwrap();
    assert_eq!(renamed, original);
    assert_eq!(code, original_code);
}

#[test]
fn node_groups_without_eni_data_use_what_eks_attaches() {
    // Case (b) without describe-network-interfaces: the node group has a launch template whose
    // groups are not in the input, so its pods' groups are unknown, never assumed.
    let case = case_dir("udp53-missing");
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&case).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_owned();
        if path.extension().is_some_and(|e| e == "json") && name != "enis.json" {
            std::fs::copy(&path, dir.path().join(name)).unwrap();
        }
    }
    let objects = load_path(&case.join("cluster")).unwrap();
    let (json, _) = run_static(dir.path(), &objects, true).unwrap();
    let findings: Vec<Value> = serde_json::from_str(&json).unwrap();
    let f = &rows(
        &findings,
        "web/frontend-0",
        "kube-system/coredns-a",
        "udp",
        53,
    )[0];
    assert_eq!(f["verdict"], "unknown");
    assert_eq!(
        f["reason"],
        "security groups of kube-system/coredns-a unknown: node group ng-general uses launch template ng-general-lt, whose security groups are not in the input (give describe-launch-template-versions or describe-network-interfaces)"
    );

    // With the template's version described, its groups are the nodes' groups (EKS adds the
    // cluster SG only to templates that name none).
    std::fs::write(
        dir.path().join("lt.json"),
        r#"{"LaunchTemplateVersions":[{"LaunchTemplateId":"lt-0abc","LaunchTemplateName":"ng-general-lt","VersionNumber":3,
            "LaunchTemplateData":{"SecurityGroupIds":["sg-0node"]}}]}"#,
    )
    .unwrap();
    let (json, code) = run_static(dir.path(), &objects, true).unwrap();
    assert_eq!(code, 1);
    let findings: Vec<Value> = serde_json::from_str(&json).unwrap();
    let f = &rows(
        &findings,
        "web/frontend-0",
        "kube-system/coredns-a",
        "udp",
        53,
    )[0];
    assert_eq!(f["verdict"], "blocked");
    assert_eq!(
        f["to"]["security_groups_source"],
        "launch template ng-general-lt"
    );
    assert_eq!(
        f["reason"],
        "sg-0node ingress lacks UDP 53 from sg-0a11c1u5 (has tcp 53 from sg-0a11c1u5)"
    );
}
