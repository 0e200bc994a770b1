//! CoreDNS's own `plugin/kubernetes` test tables replayed against us: each table's fake
//! controller is a manifest in tests/fixtures/coredns/, its configuration a Corefile, and each
//! row a query over UDP to a running server with hickory's client. Sections are compared
//! sorted, as CoreDNS's `test.SortAndCheck` does, and a duplicate record is a failure.
//!
//! Source tables (coredns/coredns, plugin/kubernetes): handler_test.go (`dnsTestCases`,
//! `nsTestCases`), handler_case_test.go, handler_pod_{insecure,verified,disabled}_test.go,
//! handler_ignore_emptyservice_test.go, kubernetes_apex_test.go, reverse_test.go. TTLs are
//! CoreDNS's current defaults (5; SOA TTL min(ttl, 300), SOA minimum = ttl); the serials are
//! not compared. Rows that do not apply, and why:
//! - handler_test "CNAME External Truncated Lookup" (`external.testns... A` with `Upstub`):
//!   CoreDNS asks its upstream for the target's addresses; our kubernetes handler answers the
//!   CNAME alone and leaves a target outside our zones to the client (tests/dns.rs golden).
//! - kubernetes_apex_test NS glue: CoreDNS takes `ns.dns` addresses from the local interface
//!   (127.0.0.1 in its test writer) when no DNS service endpoint is local; ours come from the
//!   kube-system/kube-dns Service, which this fake does not have, so only the NS record is
//!   compared.
//! - handler_test `notSyncedTestCases`: an unsynced API source is covered by tests/kube.rs and
//!   tests/serve_kube.rs (a manifest source is synced when it starts).
//! - ns_test.go (`nsAddrs` from local IPs), external_test.go (the `k8s_external` plugin),
//!   xfr_test.go (we refuse AXFR), autopath_test.go and the parse/setup tests: unit tests of
//!   CoreDNS internals or plugins with their own tests here (tests/autopath.rs,
//!   tests/corefile.rs).
//!
//! Below the CoreDNS tables: issue 16's rows (noendpoints, duplicate records, SOA below a
//! reverse apex with fallthrough), derived from CoreDNS's code and documentation.

mod dnsclient;
mod support;

use std::path::{Path, PathBuf};

use clusterdns::app::{self, ServeOptions};
use dnsclient::{query, rcode_name, section, Transport};
use hickory_proto::rr::RecordType;
use hickory_proto::rr::RecordType::{A, AAAA, CNAME, HINFO, NS, PTR, SOA, SRV, TXT};
use support::golden::{norm, sorted};

struct Row {
    name: &'static str,
    qtype: RecordType,
    rcode: &'static str,
    answer: &'static [&'static str],
    ns: &'static [&'static str],
    /// None: not compared.
    extra: Option<&'static [&'static str]>,
}

const fn row(name: &'static str, qtype: RecordType, rcode: &'static str) -> Row {
    Row {
        name,
        qtype,
        rcode,
        answer: &[],
        ns: &[],
        extra: Some(&[]),
    }
}

impl Row {
    const fn answer(mut self, a: &'static [&'static str]) -> Row {
        self.answer = a;
        self
    }
    const fn ns(mut self, n: &'static [&'static str]) -> Row {
        self.ns = n;
        self
    }
    const fn extra(mut self, e: &'static [&'static str]) -> Row {
        self.extra = Some(e);
        self
    }
    const fn any_extra(mut self) -> Row {
        self.extra = None;
        self
    }
}

const SOA_CL: &[&str] =
    &["cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. SERIAL 7200 1800 86400 5"];

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/coredns")
        .join(name)
}

/// Serves `manifest` with `kubernetes_block` (the lines of a server block after `bind`) and
/// asks every row; panics listing every row that differs.
async fn replay(table: &str, manifest: &str, kubernetes_block: &str, rows: &[Row]) {
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(".:0 {{\n    bind 127.0.0.1\n{kubernetes_block}\n}}\n"),
    )
    .unwrap();
    let server = app::start(ServeOptions {
        corefile: Some(corefile),
        manifests: Some(fixture(manifest)),
        ..ServeOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{table}: server starts: {e:#}"));
    let mut failures = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let resp = query(server.dns_addr, Transport::Udp, r.name, r.qtype).await;
        let mut problems = Vec::new();
        let rcode = rcode_name(&resp);
        if rcode != r.rcode {
            problems.push(format!("rcode {rcode}, want {}", r.rcode));
        }
        let mut check = |what: &str, got: Vec<String>, want: &[&str]| {
            let (got, want) = (sorted(got), sorted(norm(want)));
            if got != want {
                problems.push(format!("{what} {got:#?}\n    want {want:#?}"));
            }
        };
        check("answer", section(&resp.answers), r.answer);
        check("authority", section(&resp.authorities), r.ns);
        if let Some(extra) = r.extra {
            check("additional", section(&resp.additionals), extra);
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{table} row {i}: {} {}:\n  {}",
                r.name,
                r.qtype,
                problems.join("\n  ")
            ));
        }
    }
    server.shutdown().await;
    assert!(
        failures.is_empty(),
        "{} rows differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// handler_test.go `dnsTestCases` (TestServeDNS: zone cluster.local, `namespaces testns`),
/// plus the portless headless SRV row of its earlier versions.
#[tokio::test]
async fn handler_test_dns_test_cases() {
    const ROWS: &[Row] = &[
        row("svc1.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("svcempty.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("svc1.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."])
            .extra(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("svcempty.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local."])
            .extra(&["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("svc6.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."])
            .extra(&["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
        row("_http._tcp.svc1.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."])
            .extra(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("_http._tcp.svcempty.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["_http._tcp.svcempty.testns.svc.cluster.local. 5 IN SRV 0 100 80 svcempty.testns.svc.cluster.local."])
            .extra(&["svcempty.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("hdls1.testns.svc.cluster.local.", A, "NOERROR").answer(&[
            "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
            "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
            "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
            "hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
        ]),
        row("hdlsprtls.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"]),
        row("172-0-0-20.hdlsprtls.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["172-0-0-20.hdlsprtls.testns.svc.cluster.local. 5 IN A 172.0.0.20"]),
        row("172-0-0-2.hdls1.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2"]),
        row("172-0-0-3.hdls1.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3"]),
        row("dup-name.hdls1.testns.svc.cluster.local.", A, "NOERROR").answer(&[
            "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
            "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
        ]),
        // Six endpoint x port records share the weight; dup-name's second is then dropped.
        row("_http._tcp.hdls1.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&[
                "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-0-2.hdls1.testns.svc.cluster.local.",
                "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 172-0-0-3.hdls1.testns.svc.cluster.local.",
                "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 5678-abcd--1.hdls1.testns.svc.cluster.local.",
                "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 5678-abcd--2.hdls1.testns.svc.cluster.local.",
                "_http._tcp.hdls1.testns.svc.cluster.local. 5 IN SRV 0 16 80 dup-name.hdls1.testns.svc.cluster.local.",
            ])
            .extra(&[
                "172-0-0-2.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.2",
                "172-0-0-3.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.3",
                "5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
                "5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
                "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.4",
                "dup-name.hdls1.testns.svc.cluster.local. 5 IN A 172.0.0.5",
            ]),
        row("*.*.hdlsprtls.testns.svc.cluster.local.", SRV, "NOERROR").ns(SOA_CL),
        row("5678-abcd--2.hdls1.testns.svc.cluster.local.", AAAA, "NOERROR")
            .answer(&["5678-abcd--2.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2"]),
        row("external.testns.svc.cluster.local.", CNAME, "NOERROR")
            .answer(&["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]),
        row("external-to-service.testns.svc.cluster.local.", A, "NOERROR").answer(&[
            "external-to-service.testns.svc.cluster.local. 5 IN CNAME svc1.testns.svc.cluster.local.",
            "svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1",
        ]),
        row("svc1.testns.svc.cluster.local.", AAAA, "NOERROR").ns(SOA_CL),
        row("svc0.testns.svc.cluster.local.", AAAA, "NXDOMAIN").ns(SOA_CL),
        row("svc0.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("svc0.svc-nons.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("dns-version.cluster.local.", TXT, "NOERROR")
            .answer(&["dns-version.cluster.local. 28800 IN TXT \"1.1.0\""]),
        row("bogusendpoint.hdls1.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("bogusendpoint.svc0.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("svc6.testns.svc.cluster.local.", AAAA, "NOERROR")
            .answer(&["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
        row("_http._tcp.svc6.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["_http._tcp.svc6.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc6.testns.svc.cluster.local."])
            .extra(&["svc6.testns.svc.cluster.local. 5 IN AAAA 1234:abcd::1"]),
        row("hdls1.testns.svc.cluster.local.", AAAA, "NOERROR").answer(&[
            "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1",
            "hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::2",
        ]),
        row("5678-abcd--1.hdls1.testns.svc.cluster.local.", AAAA, "NOERROR")
            .answer(&["5678-abcd--1.hdls1.testns.svc.cluster.local. 5 IN AAAA 5678:abcd::1"]),
        row("svc.cluster.local.", A, "NOERROR").ns(SOA_CL),
        row("pod.cluster.local.", A, "NOERROR").ns(SOA_CL),
        row("testns.svc.cluster.local.", A, "NOERROR").ns(SOA_CL),
        row("svc.cluster.local.", NS, "NOERROR").ns(SOA_CL),
        row("testns.svc.cluster.local.", NS, "NOERROR").ns(SOA_CL),
        row("foo.cluster.local.", NS, "NXDOMAIN").ns(SOA_CL),
        row("foo.svc.cluster.local.", NS, "NXDOMAIN").ns(SOA_CL),
        row("svc-dual-stack.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3"]),
        row("svc-dual-stack.testns.svc.cluster.local.", AAAA, "NOERROR")
            .answer(&["svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3"]),
        // One record per IP family shares the weight before the duplicate target is dropped.
        row("svc-dual-stack.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["svc-dual-stack.testns.svc.cluster.local. 5 IN SRV 0 50 80 svc-dual-stack.testns.svc.cluster.local."])
            .extra(&[
                "svc-dual-stack.testns.svc.cluster.local. 5 IN A 10.0.0.3",
                "svc-dual-stack.testns.svc.cluster.local. 5 IN AAAA 10::3",
            ]),
        row("svc1.testns.svc.cluster.local.", SOA, "NOERROR").ns(SOA_CL),
        row("endpoint.external.testns.svc.cluster.local.", CNAME, "NXDOMAIN").ns(SOA_CL),
    ];
    replay(
        "dnsTestCases",
        "serve-test.yaml",
        "    kubernetes cluster.local {\n        namespaces testns\n    }",
        ROWS,
    )
    .await;
}

/// handler_test.go `nsTestCases` (TestServeNamespaceDNS: every namespace exposed).
#[tokio::test]
async fn handler_test_ns_test_cases() {
    const ROWS: &[Row] = &[
        row("svc1.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("svc1.nsnoexist.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
    ];
    replay(
        "nsTestCases",
        "serve-test.yaml",
        "    kubernetes cluster.local",
        ROWS,
    )
    .await;
}

/// handler_case_test.go (TestPreserveCase: `ignore empty_service`): names derived from the
/// zone keep the question's case; names from the objects stay as the objects have them.
#[tokio::test]
async fn handler_case_test_preserve_case() {
    const ROWS: &[Row] = &[
        row("not-a-service.testns.svc.ClUsTeR.lOcAl.", A, "NXDOMAIN").ns(&[
            "ClUsTeR.lOcAl. 5 IN SOA ns.dns.ClUsTeR.lOcAl. hostmaster.ClUsTeR.lOcAl. SERIAL 7200 1800 86400 5",
        ]),
        row("SvC1.TeStNs.SvC.cLuStEr.LoCaL.", A, "NOERROR")
            .answer(&["SvC1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]),
        row("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", SRV, "NOERROR")
            .answer(&["_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN SRV 0 100 80 svc1.testns.svc.cLuStEr.LoCaL."])
            .extra(&["svc1.testns.svc.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]),
        row("Cluster.local.", SOA, "NOERROR").answer(&[
            "Cluster.local. 5 IN SOA ns.dns.Cluster.local. hostmaster.Cluster.local. SERIAL 7200 1800 86400 5",
        ]),
        // Not in CoreDNS's table, from its code (nsAddrs and SRV build on the asked zone):
        // the same names in another case get their own case, also from the response cache.
        row("_http._tcp.svc1.testns.svc.CLUSTER.LOCAL.", SRV, "NOERROR")
            .answer(&["_http._tcp.svc1.testns.svc.CLUSTER.LOCAL. 5 IN SRV 0 100 80 svc1.testns.svc.CLUSTER.LOCAL."])
            .extra(&["svc1.testns.svc.CLUSTER.LOCAL. 5 IN A 10.0.0.1"]),
        row("_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL.", SRV, "NOERROR")
            .answer(&["_HtTp._TcP.sVc1.TeStNs.SvC.cLuStEr.LoCaL. 5 IN SRV 0 100 80 svc1.testns.svc.cLuStEr.LoCaL."])
            .extra(&["svc1.testns.svc.cLuStEr.LoCaL. 5 IN A 10.0.0.1"]),
        row("CLUSTER.local.", NS, "NOERROR")
            .answer(&["CLUSTER.local. 5 IN NS ns.dns.CLUSTER.local."])
            .any_extra(),
        row("svc0.testns.svc.Cluster.Local.", AAAA, "NXDOMAIN").ns(&[
            "Cluster.Local. 5 IN SOA ns.dns.Cluster.Local. hostmaster.Cluster.Local. SERIAL 7200 1800 86400 5",
        ]),
    ];
    replay(
        "dnsPreserveCaseCases",
        "serve-test.yaml",
        "    kubernetes cluster.local {\n        ignore empty_service\n    }",
        ROWS,
    )
    .await;
}

/// handler_pod_insecure_test.go.
#[tokio::test]
async fn handler_pod_insecure_test() {
    const ROWS: &[Row] = &[
        row("10-240-0-1.podns.pod.cluster.local.", A, "NOERROR")
            .answer(&["10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"]),
        row("172-0-0-2.podns.pod.cluster.local.", A, "NOERROR")
            .answer(&["172-0-0-2.podns.pod.cluster.local. 5 IN A 172.0.0.2"]),
        row("blah.podns.pod.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("blah.podns.pod.cluster.local.", AAAA, "NXDOMAIN").ns(SOA_CL),
        row("blah.podns.pod.cluster.local.", HINFO, "NXDOMAIN").ns(SOA_CL),
        row("blah.pod-nons.pod.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("podns.pod.cluster.local.", A, "NOERROR").ns(SOA_CL),
    ];
    replay(
        "podModeInsecureCases",
        "serve-test.yaml",
        "    kubernetes cluster.local {\n        pods insecure\n    }",
        ROWS,
    )
    .await;
}

/// handler_pod_verified_test.go.
#[tokio::test]
async fn handler_pod_verified_test() {
    const ROWS: &[Row] = &[
        row("10-240-0-1.podns.pod.cluster.local.", A, "NOERROR")
            .answer(&["10-240-0-1.podns.pod.cluster.local. 5 IN A 10.240.0.1"]),
        row("podns.pod.cluster.local.", A, "NOERROR").ns(SOA_CL),
        row("svcns.svc.cluster.local.", A, "NOERROR").ns(SOA_CL),
        row("pod-nons.pod.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("172-0-0-2.podns.pod.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
    ];
    replay(
        "podModeVerifiedCases",
        "serve-test.yaml",
        "    kubernetes cluster.local {\n        pods verified\n    }",
        ROWS,
    )
    .await;
}

/// handler_pod_disabled_test.go (the default).
#[tokio::test]
async fn handler_pod_disabled_test() {
    const ROWS: &[Row] = &[
        row("10-240-0-1.podns.pod.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("172-0-0-2.podns.pod.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
    ];
    replay(
        "podModeDisabledCases",
        "serve-test.yaml",
        "    kubernetes cluster.local",
        ROWS,
    )
    .await;
}

/// handler_ignore_emptyservice_test.go.
#[tokio::test]
async fn handler_ignore_emptyservice_test() {
    const ROWS: &[Row] = &[
        row("svcempty.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("external.testns.svc.cluster.local.", CNAME, "NOERROR")
            .answer(&["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]),
    ];
    replay(
        "dnsEmptyServiceTestCases",
        "serve-test.yaml",
        "    kubernetes cluster.local {\n        ignore empty_service\n    }",
        ROWS,
    )
    .await;
}

/// kubernetes_apex_test.go.
#[tokio::test]
async fn kubernetes_apex_test() {
    const ROWS: &[Row] = &[
        row("cluster.local.", SOA, "NOERROR").answer(SOA_CL),
        row("cluster.local.", HINFO, "NOERROR").ns(SOA_CL),
        row("cluster.local.", NS, "NOERROR")
            .answer(&["cluster.local. 5 IN NS ns.dns.cluster.local."])
            .any_extra(),
        row("cluster.local.", A, "NOERROR").ns(SOA_CL),
        row("cluster.local.", AAAA, "NOERROR").ns(SOA_CL),
        row("cluster.local.", SRV, "NOERROR").ns(SOA_CL),
    ];
    replay(
        "kubeApexCases",
        "serve-test.yaml",
        "    kubernetes cluster.local",
        ROWS,
    )
    .await;
}

/// reverse_test.go (TestReverse), with its zones.
#[tokio::test]
async fn reverse_test() {
    const SOA_10: &[&str] = &["0.10.in-addr.arpa. 5 IN SOA ns.dns.0.10.in-addr.arpa. hostmaster.0.10.in-addr.arpa. SERIAL 7200 1800 86400 5"];
    const ROWS: &[Row] = &[
        // Two slices list 10.0.0.100 (EndpointSlice skew): one PTR.
        row("100.0.0.10.in-addr.arpa.", PTR, "NOERROR")
            .answer(&["100.0.0.10.in-addr.arpa. 5 IN PTR ep1a.svc1.testns.svc.cluster.local."]),
        row("100.1.168.192.in-addr.arpa.", PTR, "NOERROR")
            .answer(&["100.1.168.192.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local."]),
        row("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa.", PTR, "NOERROR")
            .answer(&["1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa. 5 IN PTR ep1b.svc1.testns.svc.cluster.local."]),
        row("a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa.", PTR, "NOERROR")
            .answer(&["a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa. 5 IN PTR ip6svc1ex.svc1.testns.svc.cluster.local."]),
        row("6.a.b.9.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa.", PTR, "NOERROR")
            .answer(&["6.a.b.9.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa. 5 IN PTR ip6svc1in.svc1.testns.svc.cluster.local."]),
        row("101.0.0.10.in-addr.arpa.", PTR, "NXDOMAIN").ns(SOA_10),
        row("example.org.cluster.local.", PTR, "NXDOMAIN").ns(SOA_CL),
        row("svc1.testns.svc.cluster.local.", PTR, "NOERROR").ns(SOA_CL),
        row("svc1.testns.svc.0.10.in-addr.arpa.", A, "NXDOMAIN").ns(SOA_10),
        row("100.0.0.10.cluster.local.", PTR, "NXDOMAIN").ns(SOA_CL),
        row("99.0.0.10.in-addr.arpa.", PTR, "NOERROR").answer(&[
            "99.0.0.10.in-addr.arpa. 5 IN PTR double-ep.svc1.testns.svc.cluster.local.",
            "99.0.0.10.in-addr.arpa. 5 IN PTR double-ep.svc2.testns.svc.cluster.local.",
        ]),
    ];
    replay(
        "TestReverse",
        "reverse-test.yaml",
        "    kubernetes cluster.local 0.10.in-addr.arpa 168.192.in-addr.arpa \
         0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa \
         0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.3.0.0.7.7.0.0.0.0.d.f.ip6.arpa",
        ROWS,
    )
    .await;
}

/// Issue 16 item 1: under `noendpoints` "all endpoint queries and headless service queries
/// will result in an NXDOMAIN" (CoreDNS README); CoreDNS then keeps no endpoints at all, so
/// endpoint addresses have no PTR either. ClusterIP and ExternalName answers are unchanged.
#[tokio::test]
async fn noendpoints_hides_every_name_that_reads_endpoints() {
    const SOA_IN: &[&str] = &["in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5"];
    const SOA_IP6: &[&str] =
        &["ip6.arpa. 5 IN SOA ns.dns.ip6.arpa. hostmaster.ip6.arpa. SERIAL 7200 1800 86400 5"];
    const ROWS: &[Row] = &[
        row("hdls1.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("hdls1.testns.svc.cluster.local.", AAAA, "NXDOMAIN").ns(SOA_CL),
        row("hdls1.testns.svc.cluster.local.", SRV, "NXDOMAIN").ns(SOA_CL),
        row("_http._tcp.hdls1.testns.svc.cluster.local.", SRV, "NXDOMAIN").ns(SOA_CL),
        row("hdlsprtls.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("172-0-0-2.hdls1.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("5678-abcd--1.hdls1.testns.svc.cluster.local.", AAAA, "NXDOMAIN").ns(SOA_CL),
        row("dup-name.hdls1.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("dup-name.hdls1.testns.svc.cluster.local.", SRV, "NXDOMAIN").ns(SOA_CL),
        row("ep1a.svc1.testns.svc.cluster.local.", A, "NXDOMAIN").ns(SOA_CL),
        row("2.0.0.172.in-addr.arpa.", PTR, "NXDOMAIN").ns(SOA_IN),
        row("1.0.0.172.in-addr.arpa.", PTR, "NXDOMAIN").ns(SOA_IN),
        row("1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.c.b.a.8.7.6.5.ip6.arpa.", PTR, "NXDOMAIN").ns(SOA_IP6),
        // What does not read endpoints still answers.
        row("svc1.testns.svc.cluster.local.", A, "NOERROR")
            .answer(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("_http._tcp.svc1.testns.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["_http._tcp.svc1.testns.svc.cluster.local. 5 IN SRV 0 100 80 svc1.testns.svc.cluster.local."])
            .extra(&["svc1.testns.svc.cluster.local. 5 IN A 10.0.0.1"]),
        row("external.testns.svc.cluster.local.", CNAME, "NOERROR")
            .answer(&["external.testns.svc.cluster.local. 5 IN CNAME ext.interwebs.test."]),
        row("10.0.0.10.in-addr.arpa.", PTR, "NOERROR")
            .answer(&["10.0.0.10.in-addr.arpa. 5 IN PTR kubedns.kube-system.svc.cluster.local."]),
    ];
    replay(
        "noendpoints",
        "serve-test.yaml",
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        noendpoints\n    }",
        ROWS,
    )
    .await;
}

/// Issue 16 item 2: no record twice in an RRset (RFC 2181 section 5). The weight is computed
/// over every (address, port) first, as CoreDNS does, then duplicates are dropped. One
/// difference on purpose: an address listed in two slices of a service (slice skew) counts
/// once here; CoreDNS counts it twice in the weight.
#[tokio::test]
async fn srv_and_address_answers_hold_no_duplicates() {
    const KD: &str = "kube-dns.kube-system.svc.cluster.local.";
    const ROWS: &[Row] = &[
        // dns/UDP 53 and dns-tcp/TCP 53 make one record; metrics 9153 the other.
        row("kube-dns.kube-system.svc.cluster.local.", SRV, "NOERROR")
            .answer(&[
                "kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 33 53 kube-dns.kube-system.svc.cluster.local.",
                "kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 33 9153 kube-dns.kube-system.svc.cluster.local.",
            ])
            .extra(&["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]),
        row("*.*.kube-dns.kube-system.svc.cluster.local.", SRV, "NOERROR")
            .answer(&[
                "*.*.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 33 53 kube-dns.kube-system.svc.cluster.local.",
                "*.*.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 33 9153 kube-dns.kube-system.svc.cluster.local.",
            ])
            .extra(&["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]),
        row("any._tcp.kube-dns.kube-system.svc.cluster.local.", SRV, "NOERROR")
            .answer(&[
                "any._tcp.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 50 53 kube-dns.kube-system.svc.cluster.local.",
                "any._tcp.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 50 9153 kube-dns.kube-system.svc.cluster.local.",
            ])
            .extra(&["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]),
        row("_dns._any.kube-dns.kube-system.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["_dns._any.kube-dns.kube-system.svc.cluster.local. 5 IN SRV 0 100 53 kube-dns.kube-system.svc.cluster.local."])
            .extra(&["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]),
        // Headless: two endpoints x two protocols on port 53.
        row("dns-hl.kube-system.svc.cluster.local.", SRV, "NOERROR")
            .answer(&[
                "dns-hl.kube-system.svc.cluster.local. 5 IN SRV 0 25 53 10-1-0-2.dns-hl.kube-system.svc.cluster.local.",
                "dns-hl.kube-system.svc.cluster.local. 5 IN SRV 0 25 53 10-1-0-3.dns-hl.kube-system.svc.cluster.local.",
            ])
            .extra(&[
                "10-1-0-2.dns-hl.kube-system.svc.cluster.local. 5 IN A 10.1.0.2",
                "10-1-0-3.dns-hl.kube-system.svc.cluster.local. 5 IN A 10.1.0.3",
            ]),
        row("10-1-0-3.dns-hl.kube-system.svc.cluster.local.", SRV, "NOERROR")
            .answer(&["10-1-0-3.dns-hl.kube-system.svc.cluster.local. 5 IN SRV 0 50 53 10-1-0-3.dns-hl.kube-system.svc.cluster.local."])
            .extra(&["10-1-0-3.dns-hl.kube-system.svc.cluster.local. 5 IN A 10.1.0.3"]),
        // 10.1.0.3 is in two slices of dns-hl.
        row("dns-hl.kube-system.svc.cluster.local.", A, "NOERROR").answer(&[
            "dns-hl.kube-system.svc.cluster.local. 5 IN A 10.1.0.2",
            "dns-hl.kube-system.svc.cluster.local. 5 IN A 10.1.0.3",
        ]),
        row("10-1-0-3.dns-hl.kube-system.svc.cluster.local.", A, "NOERROR")
            .answer(&["10-1-0-3.dns-hl.kube-system.svc.cluster.local. 5 IN A 10.1.0.3"]),
        // An endpoint of kube-dns and of dns-hl: one PTR per service.
        row("3.0.1.10.in-addr.arpa.", PTR, "NOERROR").answer(&[
            "3.0.1.10.in-addr.arpa. 5 IN PTR 10-1-0-3.dns-hl.kube-system.svc.cluster.local.",
            "3.0.1.10.in-addr.arpa. 5 IN PTR 10-1-0-3.kube-dns.kube-system.svc.cluster.local.",
        ]),
        row(KD, A, "NOERROR").answer(&["kube-dns.kube-system.svc.cluster.local. 5 IN A 10.96.0.10"]),
    ];
    replay(
        "duplicates",
        "duplicates.yaml",
        "    kubernetes cluster.local in-addr.arpa ip6.arpa",
        ROWS,
    )
    .await;
}

/// Issue 16 item 3: an SOA question for a name below a zone's apex is NODATA from the
/// kubernetes plugin itself (CoreDNS's handler answers SOA only at the apex and never falls
/// through for it), even with `fallthrough` for the reverse zones and nothing after it.
#[tokio::test]
async fn soa_below_an_apex_is_nodata_without_fallthrough() {
    const SOA_IN: &[&str] = &["in-addr.arpa. 5 IN SOA ns.dns.in-addr.arpa. hostmaster.in-addr.arpa. SERIAL 7200 1800 86400 5"];
    const ROWS: &[Row] = &[
        row("in-addr.arpa.", SOA, "NOERROR").answer(SOA_IN),
        row("10.in-addr.arpa.", SOA, "NOERROR").ns(SOA_IN),
        // An address with no PTR, and one with.
        row("9.9.9.10.in-addr.arpa.", SOA, "NOERROR").ns(SOA_IN),
        row("1.0.0.10.in-addr.arpa.", SOA, "NOERROR").ns(SOA_IN),
        row("8.b.d.0.1.0.0.2.ip6.arpa.", SOA, "NOERROR").ns(&[
            "ip6.arpa. 5 IN SOA ns.dns.ip6.arpa. hostmaster.ip6.arpa. SERIAL 7200 1800 86400 5",
        ]),
        row("10.IN-ADDR.ARPA.", SOA, "NOERROR").ns(&[
            "IN-ADDR.ARPA. 5 IN SOA ns.dns.IN-ADDR.ARPA. hostmaster.IN-ADDR.ARPA. SERIAL 7200 1800 86400 5",
        ]),
        row("svc0.testns.svc.cluster.local.", SOA, "NOERROR").ns(SOA_CL),
        row("svc1.testns.svc.cluster.local.", SOA, "NOERROR").ns(SOA_CL),
        // Other types still fall through (and find nothing after: SERVFAIL), as before.
        row("1.0.0.10.in-addr.arpa.", PTR, "NOERROR")
            .answer(&[
                "1.0.0.10.in-addr.arpa. 5 IN PTR svc1.testns.svc.cluster.local.",
                "1.0.0.10.in-addr.arpa. 5 IN PTR svcempty.testns.svc.cluster.local.",
            ]),
    ];
    replay(
        "soa-below-apex",
        "serve-test.yaml",
        "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n        fallthrough in-addr.arpa ip6.arpa\n    }",
        ROWS,
    )
    .await;
}
