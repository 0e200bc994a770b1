//! Live probes (`clusterdns probe --active`) in network namespaces the test builds, so no
//! packet leaves the machine:
//!
//! ```text
//!  netns <..>-a  "micro-VM subnet"          netns <..>-b  "node-group subnet"
//!  va 10.250.1.10/24  <──── veth ────>  vb 10.250.2.2/24   clusterdns serve :53
//!  (web/frontend-0)                        10.250.2.3/24   HTTP :80 (demo/nginx-0)
//!                                          10.250.2.10/32  kube-dns service IP, DNAT -> .2
//!                                          nftables: drop what the security groups drop
//! ```
//!
//! The addresses are those of tests/fixtures/aws/live-udp53 (the udp53-missing case moved to
//! 10.250.0.0/16), so the static verdicts and the live results can be compared. Needs root and
//! iproute2 + nftables (CI: `.ci/run`); elsewhere the namespace tests say why and return.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use clusterdns::cluster::objects::load_path;
use clusterdns::prober::run_static;
use serde_json::Value;

const A_IP: &str = "10.250.1.10";
const DNS_IP: &str = "10.250.2.2";
const HTTP_IP: &str = "10.250.2.3";
const SERVICE_IP: &str = "10.250.2.10";
/// Long enough for a veth round trip, short enough that the dropped probes end quickly.
const TIMEOUT_MS: &str = "500";
const STARTUP: Duration = Duration::from_secs(10);

/// Allows TCP 53 and 80 but drops UDP 53 from the micro-VM subnet: what sg-0node does (it
/// admits tcp 53 and tcp 80 from the cluster security group, nothing on udp 53). The NAT
/// table is kube-proxy's part: the DNS service IP leads to the DNS pod.
const RULES_AS_THE_SGS: &str = "
table ip cdns_nat {
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        ip daddr 10.250.2.10 udp dport 53 dnat to 10.250.2.2
        ip daddr 10.250.2.10 tcp dport 53 dnat to 10.250.2.2
    }
}
table inet cdns_filter {
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr 10.250.1.0/24 udp dport 53 drop
    }
}
";

/// Deliberately not what the security groups say: UDP 53 passes, TCP 80 is dropped.
const RULES_WRONG: &str = "
flush table inet cdns_filter
table inet cdns_filter {
    chain input {
        ip saddr 10.250.1.0/24 tcp dport 80 drop
    }
}
";

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aws/live-udp53")
}

fn fixture_str(sub: &str) -> String {
    fixture().join(sub).display().to_string()
}

/// Why the namespace tests cannot run here, if they cannot.
fn cannot_run() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root: network namespaces need CAP_NET_ADMIN (CI runs as root)");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("`ip` (iproute2) is not installed");
    }
    None
}

fn check(what: &str, out: io::Result<Output>) -> Output {
    let out = out.unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    check(
        &format!("ip {}", args.join(" ")),
        Command::new("ip").args(args).output(),
    );
}

/// An HTTP server thread inside a namespace: setns(2) moves only that thread, and the
/// listener it binds stays in the namespace.
struct HttpServer {
    fd: RawFd,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    fn start(netns: &str, addr: SocketAddr) -> HttpServer {
        let (tx, rx) = mpsc::channel();
        let path = format!("/run/netns/{netns}");
        let thread = std::thread::spawn(move || {
            let bound = (|| -> io::Result<TcpListener> {
                let ns = File::open(&path)?;
                // SAFETY: a valid namespace fd; only this thread changes namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                TcpListener::bind(addr)
            })();
            let listener = match bound {
                Ok(l) => l,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let _ = tx.send(Ok(listener.as_raw_fd()));
            // Drop's shutdown(2) makes accept fail, which ends the loop.
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { break };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
            }
        });
        let fd = rx
            .recv_timeout(STARTUP)
            .expect("the HTTP thread reports")
            .unwrap_or_else(|e| panic!("HTTP server on {addr} in {netns}: {e}"));
        HttpServer {
            fd,
            thread: Some(thread),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // SAFETY: the fd is the listener, open until the thread (joined below) returns.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Two namespaces joined by a veth pair, a clusterdns DNS server and an HTTP server in `b`.
/// Dropping it stops the servers and deletes the namespaces, also when a test fails.
struct Lab {
    a: String,
    b: String,
    created: Vec<String>,
    dns: Option<Child>,
    http: Option<HttpServer>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.dns.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.http = None;
        for ns in &self.created {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

impl Lab {
    fn new(tag: &str) -> Lab {
        let base = format!("cdns-t-{}-{tag}", std::process::id());
        let mut lab = Lab {
            a: format!("{base}-a"),
            b: format!("{base}-b"),
            created: Vec::new(),
            dns: None,
            http: None,
        };
        for ns in [lab.a.clone(), lab.b.clone()] {
            ip(&["netns", "add", &ns]);
            lab.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        let (a, b) = (lab.a.clone(), lab.b.clone());
        // Created directly in the namespaces, so parallel tests never clash on names.
        ip(&[
            "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
        ]);
        ip(&["-n", &a, "addr", "add", &format!("{A_IP}/24"), "dev", "va"]);
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{DNS_IP}/24"),
            "dev",
            "vb",
        ]);
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{HTTP_IP}/24"),
            "dev",
            "vb",
        ]);
        ip(&[
            "-n",
            &b,
            "addr",
            "add",
            &format!("{SERVICE_IP}/32"),
            "dev",
            "vb",
        ]);
        ip(&["-n", &a, "link", "set", "va", "up"]);
        ip(&["-n", &b, "link", "set", "vb", "up"]);
        // Each side reaches the other's /24 over the link; there is no other route.
        ip(&["-n", &a, "route", "add", "10.250.2.0/24", "dev", "va"]);
        ip(&["-n", &b, "route", "add", "10.250.1.0/24", "dev", "vb"]);
        lab.start_dns();
        lab.http = Some(HttpServer::start(
            &b,
            SocketAddr::new(HTTP_IP.parse().unwrap(), 80),
        ));
        lab
    }

    fn start_dns(&mut self) {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.b,
                env!("CARGO_BIN_EXE_clusterdns"),
                "serve",
            ])
            .args(["--dns-addr", &format!("{DNS_IP}:53"), "--upstream", "none"])
            .args(["--manifests", &fixture_str("cluster")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ip netns exec clusterdns serve");
        let stdout = child.stdout.take().expect("piped stdout");
        self.dns = Some(child);
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(STARTUP)
            .expect("clusterdns prints its address within 10 s");
        assert!(
            line.contains("serving DNS on"),
            "clusterdns serve: {line:?}"
        );
    }

    fn nft(&self, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.b, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("nft is installed (apt-get install nftables; .ci/run does)");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .expect("nft reads the rules");
        }
        check("nft -f -", child.wait_with_output());
    }

    /// `clusterdns probe ARGS --source A_IP` run inside namespace `a`: (exit code, stdout).
    fn probe(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.a,
                env!("CARGO_BIN_EXE_clusterdns"),
                "probe",
            ])
            .args(args)
            .args(["--source", A_IP, "--timeout", TIMEOUT_MS])
            .output()
            .expect("ip netns exec clusterdns probe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.trim().is_empty(), "probe stderr: {stderr}");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

/// The live entry for (ip, protocol, port).
fn live<'a>(doc: &'a Value, list: &str, ip: &str, proto: &str, port: u64) -> &'a Value {
    doc[list]
        .as_array()
        .unwrap_or_else(|| panic!("no {list} list in {doc:#}"))
        .iter()
        .find(|l| {
            l["target"]["ip"] == ip
                && l["target"]["protocol"] == proto
                && l["target"]["port"] == port
        })
        .unwrap_or_else(|| panic!("no {list} entry for {ip} {proto}/{port} in {doc:#}"))
}

/// The fixture judged statically, without namespaces: the verdicts the live tests expect.
#[test]
fn the_live_fixture_blocks_udp_53_from_the_micro_vm_subnet() {
    let dir = fixture();
    let objects = load_path(&dir.join("cluster")).expect("cluster objects load");
    let (json, code) = run_static(&dir, &objects, true).expect("static probe runs");
    assert_eq!(code, 1);
    let findings: Vec<Value> = serde_json::from_str(&json).unwrap();
    let verdict = |to: &str, proto: &str, port: u64| -> Vec<&Value> {
        findings
            .iter()
            .filter(|f| {
                f["from"]["ip"] == A_IP
                    && f["to"]["ip"] == to
                    && f["protocol"] == proto
                    && f["port"] == port
            })
            .map(|f| &f["verdict"])
            .collect()
    };
    assert_eq!(verdict(DNS_IP, "udp", 53), ["blocked"]);
    assert_eq!(verdict(DNS_IP, "tcp", 53), ["allowed"]);
    assert_eq!(verdict(HTTP_IP, "tcp", 80), ["allowed"]);
}

#[test]
fn live_only_udp_53_times_out_while_tcp_53_and_http_get_through() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let lab = Lab::new("lo");
    lab.nft(RULES_AS_THE_SGS);
    let (code, out) = lab.probe(&[
        "--live-only",
        "--manifests",
        &fixture_str("cluster"),
        "--format",
        "json",
    ]);
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(code, 1, "a failed live probe exits 1: {out}");
    for ip in [DNS_IP, SERVICE_IP] {
        let udp = live(&doc, "live", ip, "udp", 53);
        assert_eq!(udp["outcome"], "timeout", "{udp:#}");
        assert_eq!(udp["source"], A_IP);
        let tcp = live(&doc, "live", ip, "tcp", 53);
        assert_eq!(tcp["outcome"], "ok", "{tcp:#}");
        assert_eq!(tcp["target"]["kind"], "dns");
        // The test's manifests have no `kubernetes` service: a well-formed NXDOMAIN.
        assert!(
            tcp["detail"].as_str().unwrap().starts_with("NXDomain"),
            "{tcp:#}"
        );
    }
    let http = live(&doc, "live", HTTP_IP, "tcp", 80);
    assert_eq!(http["target"]["kind"], "http");
    assert_eq!(http["outcome"], "ok", "{http:#}");
    assert_eq!(http["detail"], "HTTP/1.1 200 OK");
    assert_eq!(doc["live"].as_array().unwrap().len(), 5);
    assert_eq!(doc["findings"], Value::Array(vec![]));
    assert_eq!(doc["disagreements"], Value::Array(vec![]));
}

#[test]
fn static_and_live_agree_and_a_wrong_rule_set_disagrees() {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return;
    }
    let lab = Lab::new("sl");
    lab.nft(RULES_AS_THE_SGS);
    let aws = fixture_str("");
    let cluster = fixture_str("cluster");
    let both = ["--aws", aws.as_str(), "--manifests", &cluster, "--active"];

    let (code, out) = lab.probe(&[&both[..], &["--format", "json"]].concat());
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(code, 1, "UDP 53 is blocked: {out}");
    assert_eq!(doc["disagreements"], Value::Array(vec![]), "{doc:#}");
    for (ip, proto, port, verdict, outcome) in [
        (DNS_IP, "udp", 53, "blocked", "timeout"),
        (DNS_IP, "tcp", 53, "allowed", "ok"),
        (HTTP_IP, "tcp", 80, "allowed", "ok"),
    ] {
        let l = live(&doc, "live", ip, proto, port);
        assert_eq!(l["outcome"], outcome, "{l:#}");
        assert_eq!(l["static"]["verdict"], verdict, "{l:#}");
        assert_eq!(l["static"]["agreement"], "agree", "{l:#}");
    }
    // The service IP is not an ENI: no static verdict, reported as information.
    let svc = live(&doc, "live", SERVICE_IP, "udp", 53);
    assert_eq!(svc["static"]["agreement"], "info");
    assert_eq!(svc["static"]["verdict"], Value::Null);
    // The finding from the micro-VM pod carries the live result.
    let finding = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["from"]["ip"] == A_IP && f["to"]["ip"] == DNS_IP && f["protocol"] == "udp")
        .expect("frontend-0 -> coredns-a udp/53");
    assert_eq!(finding["verdict"], "blocked");
    assert_eq!(finding["live"]["outcome"], "timeout");

    let (_, table) = lab.probe(&both);
    assert!(
        table.starts_with("== DISAGREEMENTS between static verdicts and live probes: none\n"),
        "{table}"
    );

    lab.nft(RULES_WRONG);
    let (code, out) = lab.probe(&[&both[..], &["--format", "json"]].concat());
    let doc: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(code, 1);
    assert_eq!(doc["disagreements"].as_array().unwrap().len(), 2, "{doc:#}");
    let udp = live(&doc, "disagreements", DNS_IP, "udp", 53);
    assert_eq!(udp["static"]["verdict"], "blocked");
    assert_eq!(udp["outcome"], "ok");
    let http = live(&doc, "disagreements", HTTP_IP, "tcp", 80);
    assert_eq!(http["static"]["verdict"], "allowed");
    assert_eq!(http["outcome"], "timeout");

    let (_, table) = lab.probe(&both);
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some("== DISAGREEMENTS between static verdicts and live probes: 2"),
        "{table}"
    );
    assert!(lines.next().unwrap().starts_with("DISAGREE "), "{table}");
}

fn clusterdns(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(args)
        .output()
        .expect("clusterdns runs")
}

/// Flags only: nothing here sends a packet (`--targets-only` lists, the others fail first).
#[test]
fn probe_flags_targets_only_lists_and_bad_combinations_exit_2() {
    let cluster = fixture_str("cluster");
    let out = clusterdns(&[
        "probe",
        "--targets-only",
        "--manifests",
        &cluster,
        "--format",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 5);
    assert_eq!(list[0]["ip"], SERVICE_IP);
    assert_eq!(list[0]["kind"], "dns");
    assert_eq!(list[4]["kind"], "http");

    // The static part needs --aws; --live-only goes without it, not with it.
    let out = clusterdns(&["probe", "--manifests", &cluster]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--aws"));
    let aws = fixture_str("");
    let out = clusterdns(&["probe", "--aws", &aws, "--live-only"]);
    assert_eq!(out.status.code(), Some(2));

    // A source that is not ours fails up front; with no targets nothing could be sent anyway.
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(
        empty.path().join("empty.yaml"),
        "apiVersion: v1\nkind: List\nitems: []\n",
    )
    .unwrap();
    let manifests = empty.path().display().to_string();
    let out = clusterdns(&[
        "probe",
        "--live-only",
        "--manifests",
        &manifests,
        "--source",
        "192.0.2.1",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--source 192.0.2.1: not usable here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = clusterdns(&["probe", "--live-only", "--manifests", &manifests]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no live targets"));
}
