//! The authoritative answers, end to end: golden query -> answer rows run against a real
//! server over UDP and over TCP with hickory's client.

mod dnsclient;
mod support;

use std::path::{Path, PathBuf};

use clusterdns::app::{self, ServeOptions};
use clusterdns::dns::PodMode;
use dnsclient::{query, section, Transport};
use hickory_proto::rr::RecordType;
use serde::Deserialize;
use support::golden::{self, norm};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Golden {
    #[serde(default)]
    pods: Option<String>,
    #[serde(default)]
    ttl: Option<u32>,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The checklist row or rule the case covers.
    rule: String,
    name: String,
    #[serde(rename = "type", default = "default_type")]
    qtype: String,
    rcode: String,
    #[serde(default = "yes")]
    aa: bool,
    #[serde(default)]
    answer: Vec<String>,
    /// Absent: not checked.
    authority: Option<Vec<String>>,
    additional: Option<Vec<String>>,
    /// Compare the answer section ignoring order (shuffled by nothing today, but order is
    /// not part of the contract).
    #[serde(default)]
    unordered: bool,
    /// TCP only (AXFR).
    #[serde(default)]
    tcp_only: bool,
}

fn default_type() -> String {
    "A".into()
}
fn yes() -> bool {
    true
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden")
}

async fn run_golden(file: &str) {
    let golden: Golden = golden::load(&fixtures().join(file));
    let opts = ServeOptions {
        manifests: Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/demo-cluster.yaml"),
        ),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        pods: golden
            .pods
            .as_deref()
            .map(|p| p.parse::<PodMode>().unwrap())
            .unwrap_or(PodMode::Insecure),
        ttl: golden.ttl.unwrap_or(5),
        ..ServeOptions::default()
    };
    let server = app::start(opts).await.expect("server starts");
    let mut failures = Vec::new();
    for case in &golden.cases {
        let qtype: RecordType = case.qtype.parse().expect("record type");
        for transport in [Transport::Udp, Transport::Tcp] {
            if case.tcp_only && transport == Transport::Udp {
                continue;
            }
            let resp = query(server.dns_addr, transport, &case.name, qtype).await;
            let mut problems = Vec::new();
            let rcode = dnsclient::rcode_name(&resp);
            let want_rcode = case.rcode.to_uppercase();
            if rcode != want_rcode {
                problems.push(format!("rcode {rcode}, want {want_rcode}"));
            }
            if resp.metadata.authoritative != case.aa {
                problems.push(format!(
                    "aa {}, want {}",
                    resp.metadata.authoritative, case.aa
                ));
            }
            let mut got = section(&resp.answers);
            let mut want = norm(&case.answer);
            if case.unordered {
                got.sort();
                want.sort();
            }
            if got != want {
                problems.push(format!("answer {got:#?}\n  want {want:#?}"));
            }
            let (authority, additional) = (case.authority.as_deref(), case.additional.as_deref());
            golden::compare(
                &mut problems,
                "authority",
                section(&resp.authorities),
                authority,
            );
            golden::compare(
                &mut problems,
                "additional",
                section(&resp.additionals),
                additional,
            );
            // The question is echoed exactly as asked (case included).
            if resp
                .queries
                .first()
                .map(|q| q.name().to_ascii().replace("\\*", "*"))
                != Some(if case.name.ends_with('.') {
                    case.name.clone()
                } else {
                    format!("{}.", case.name)
                })
            {
                problems.push(format!("question not echoed: {:?}", resp.queries));
            }
            if !problems.is_empty() {
                failures.push(format!(
                    "[{}] {} {} over {:?}:\n  {}",
                    case.rule,
                    case.name,
                    case.qtype,
                    transport,
                    problems.join("\n  ")
                ));
            }
        }
    }
    server.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} failing rows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn golden_demo_pods_insecure() {
    run_golden("demo.yaml").await;
}

#[tokio::test]
async fn golden_demo_pods_verified() {
    run_golden("demo-pods-verified.yaml").await;
}

#[tokio::test]
async fn golden_demo_pods_disabled_ttl_30() {
    run_golden("demo-pods-disabled.yaml").await;
}
