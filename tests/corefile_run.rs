//! Corefiles run for real: the stock EKS and kubeadm files, every local plugin, the query log,
//! reload under load, and the `-conf` flag. Servers listen on 127.0.0.1 port 0.

mod dnsclient;
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clusterdns::app::{self, ServeOptions};
use dnsclient::{
    dot_upstream, http_get, pki, query_message, rcode_name, section, upstream, Transport,
};
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/demo-cluster.yaml")
}

/// Log lines emitted by every server in this test binary (one global subscriber).
fn find_log(pred: impl Fn(&str) -> bool) -> Option<String> {
    support::logs::global("info").find(pred)
}

struct Server {
    running: app::Running,
    _dir: tempfile::TempDir,
    corefile: PathBuf,
}

async fn serve(corefile: &str) -> Server {
    support::logs::global("info");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Corefile");
    std::fs::write(&path, corefile).unwrap();
    let running = app::start(ServeOptions {
        corefile: Some(path.clone()),
        manifests: Some(demo()),
        ..ServeOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("server starts: {e:#}\n{corefile}"));
    Server {
        running,
        _dir: dir,
        corefile: path,
    }
}

/// One UDP exchange; None when nothing comes back within `wait`.
async fn ask_raw(addr: SocketAddr, msg: &Message, wait: Duration) -> Option<Message> {
    let local = if addr.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    };
    let sock = tokio::net::UdpSocket::bind(local).await.unwrap();
    sock.send_to(&msg.to_vec().unwrap(), addr).await.unwrap();
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(wait, sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buf[..n]).ok()
}

async fn ask(addr: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let msg = query_message(name, qtype, None);
    ask_raw(addr, &msg, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("no answer for {name} {qtype}"))
}

/// A stock Corefile made runnable in a test: localhost, free ports.
fn localize(corefile: &str) -> String {
    corefile
        .replace(".:53 {", ".:0 {\n    bind 127.0.0.1")
        .replace("health {", "health 127.0.0.1:0 {")
        .replace("    ready\n", "    ready 127.0.0.1:0\n")
        .replace("prometheus :9153", "prometheus 127.0.0.1:0")
}

const EKS: &str = include_str!("fixtures/corefiles/eks.Corefile");

const KUBEADM: &str = include_str!("fixtures/corefiles/kubeadm.Corefile");

async fn stock_corefile_answers(corefile: &str, ttl: u32) {
    // The stock file unchanged, but for the ports (localize) and the resolv.conf it forwards
    // to, which the test writes so that nothing leaves this machine.
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "search example.internal\nnameserver {}\noptions ndots:2\n",
            up.ip
        ),
    )
    .unwrap();
    let text = localize(corefile).replace("/etc/resolv.conf", resolv.to_str().unwrap());
    let s = serve(&text).await;
    let r = ask(
        s.running.dns_addr,
        "nginx.demo.svc.cluster.local",
        RecordType::A,
    )
    .await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert!(r.metadata.authoritative);
    assert_eq!(
        section(&r.answers),
        vec![format!(
            "nginx.demo.svc.cluster.local. {ttl} IN A 10.100.12.34"
        )]
    );
    // pods insecure
    let r = ask(
        s.running.dns_addr,
        "10-1-2-3.demo.pod.cluster.local",
        RecordType::A,
    )
    .await;
    assert_eq!(section(&r.answers).len(), 1);
    // External names go through forward to the upstream in resolv.conf, then the cache.
    let before = up.queries.load(std::sync::atomic::Ordering::SeqCst);
    let r = ask(s.running.dns_addr, "example.com", RecordType::A).await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert!(!r.metadata.authoritative);
    assert_eq!(section(&r.answers), vec!["example.com. 30 IN A 192.0.2.1"]);
    let r = ask(s.running.dns_addr, "Example.COM", RecordType::A).await;
    assert_eq!(section(&r.answers).len(), 1, "served from the cache");
    assert_eq!(
        up.queries.load(std::sync::atomic::Ordering::SeqCst) - before,
        1,
        "the second query is a cache hit"
    );
    // Reverse lookups of cluster IPs answer from the cluster; others fall through to forward.
    let r = ask(
        s.running.dns_addr,
        "34.12.100.10.in-addr.arpa",
        RecordType::PTR,
    )
    .await;
    assert_eq!(
        section(&r.answers),
        vec![format!(
            "34.12.100.10.in-addr.arpa. {ttl} IN PTR nginx.demo.svc.cluster.local."
        )]
    );
    let before = up.queries.load(std::sync::atomic::Ordering::SeqCst);
    let r = ask(s.running.dns_addr, "9.9.9.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(rcode_name(&r), "NXDOMAIN");
    assert!(!r.metadata.authoritative, "the upstream's answer, not ours");
    assert_eq!(
        up.queries.load(std::sync::atomic::Ordering::SeqCst) - before,
        1
    );
    for (kind, path, want) in [
        ("health", "/health", 200),
        ("ready", "/ready", 200),
        ("prometheus", "/metrics", 200),
    ] {
        let addr = s.running.http_addr(kind).expect(kind);
        assert_eq!(http_get(addr, path).await.0, want, "{kind}");
    }
    s.running.cancel_token().cancel();
    s.running.wait().await;
}

#[tokio::test]
async fn eks_corefile_answers_cluster_names() {
    stock_corefile_answers(EKS, 5).await;
}

#[tokio::test]
async fn kubeadm_corefile_answers_cluster_names() {
    stock_corefile_answers(KUBEADM, 30).await;
}

const BASE: &str = ".:0 {\n    bind 127.0.0.1\n";

#[tokio::test]
async fn hosts_inline_file_reverse_and_fallthrough() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "10.9.9.9 filehost.example\n").unwrap();
    let s = serve(&format!(
        "{BASE}    hosts {} {{\n        10.0.0.7 inline.example\n        fd00::7 inline.example\n        ttl 60\n        reload 0\n        fallthrough\n    }}\n    kubernetes cluster.local\n}}\n",
        hosts.display()
    ))
    .await;
    let a = s.running.dns_addr;
    let r = ask(a, "inline.example", RecordType::A).await;
    assert_eq!(
        section(&r.answers),
        vec!["inline.example. 60 IN A 10.0.0.7"]
    );
    assert!(r.metadata.authoritative);
    let r = ask(a, "inline.example", RecordType::AAAA).await;
    assert_eq!(
        section(&r.answers),
        vec!["inline.example. 60 IN AAAA fd00::7"]
    );
    let r = ask(a, "FileHost.Example", RecordType::A).await;
    assert_eq!(
        section(&r.answers),
        vec!["FileHost.Example. 60 IN A 10.9.9.9"]
    );
    let r = ask(a, "7.0.0.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(
        section(&r.answers),
        vec!["7.0.0.10.in-addr.arpa. 60 IN PTR inline.example."]
    );
    // Not in hosts: falls through to kubernetes.
    let r = ask(a, "nginx.demo.svc.cluster.local", RecordType::A).await;
    assert_eq!(section(&r.answers).len(), 1);
}

/// As CoreDNS's hosts: a PTR is answered by address whatever the hosts zones, and a PTR for
/// an address not listed passes on even without `fallthrough`.
#[tokio::test]
async fn hosts_ptr_ignores_zones_and_passes_unknown_addresses_on() {
    let s = serve(&format!(
        "{BASE}    hosts /nonexistent/hosts example {{\n        10.0.0.7 inline.example\n    }}\n    kubernetes cluster.local in-addr.arpa\n}}\n"
    ))
    .await;
    let a = s.running.dns_addr;
    let r = ask(a, "7.0.0.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(
        section(&r.answers),
        vec!["7.0.0.10.in-addr.arpa. 3600 IN PTR inline.example."]
    );
    let r = ask(a, "34.12.100.10.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(
        section(&r.answers),
        vec!["34.12.100.10.in-addr.arpa. 5 IN PTR nginx.demo.svc.cluster.local."]
    );
}

#[tokio::test]
async fn hosts_without_fallthrough_denies() {
    let s = serve(&format!(
        "{BASE}    hosts /nonexistent/hosts example {{\n        10.0.0.7 inline.example\n    }}\n}}\n"
    ))
    .await;
    let r = ask(s.running.dns_addr, "other.example", RecordType::A).await;
    assert_eq!(rcode_name(&r), "NXDOMAIN");
    // Existing name, other type: NODATA.
    let r = ask(s.running.dns_addr, "inline.example", RecordType::AAAA).await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert!(r.answers.is_empty());
}

#[tokio::test]
async fn rewrite_aliases_an_external_name_with_answer_auto() {
    let s = serve(&format!(
        "{BASE}    rewrite name exact db.example.com nginx.demo.svc.cluster.local answer auto\n    rewrite name suffix .corp.internal. .demo.svc.cluster.local.\n    kubernetes cluster.local\n}}\n"
    ))
    .await;
    let r = ask(s.running.dns_addr, "db.example.com", RecordType::A).await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert_eq!(
        section(&r.answers),
        vec!["db.example.com. 5 IN A 10.100.12.34"]
    );
    assert_eq!(r.queries[0].name().to_ascii(), "db.example.com.");
    // Without `answer auto` the owner is the rewritten name, as with CoreDNS.
    let r = ask(s.running.dns_addr, "nginx.corp.internal", RecordType::A).await;
    assert_eq!(
        section(&r.answers),
        vec!["nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34"]
    );
}

#[tokio::test]
async fn loadbalance_shuffles_addresses_and_keeps_cnames_first() {
    let s = serve(&format!(
        "{BASE}    loadbalance\n    template IN A lb.test {{\n        answer \"{{{{ .Name }}}} 60 IN A 10.0.0.1\"\n        answer \"{{{{ .Name }}}} 60 IN A 10.0.0.2\"\n        answer \"{{{{ .Name }}}} 60 IN CNAME target.lb.test.\"\n        answer \"{{{{ .Name }}}} 60 IN A 10.0.0.3\"\n        answer \"{{{{ .Name }}}} 60 IN A 10.0.0.4\"\n    }}\n}}\n"
    ))
    .await;
    let mut orders = std::collections::HashSet::new();
    for _ in 0..30 {
        let r = ask(s.running.dns_addr, "x.lb.test", RecordType::A).await;
        let lines = section(&r.answers);
        assert_eq!(lines.len(), 5);
        assert!(lines[0].contains("CNAME"), "{lines:?}");
        orders.insert(lines);
    }
    assert!(orders.len() > 1, "30 answers, always the same order");
}

#[tokio::test]
async fn acl_block_filter_drop_and_allow() {
    let s = serve(&format!(
        "{BASE}    acl blocked.test {{\n        block\n    }}\n    acl filtered.test {{\n        filter type A\n    }}\n    acl dropped.test {{\n        drop net 127.0.0.0/8\n    }}\n    acl allowed.test {{\n        allow net 127.0.0.1/32\n        block\n    }}\n    template ANY ANY {{\n        answer \"{{{{ .Name }}}} 60 IN A 10.1.1.1\"\n    }}\n}}\n"
    ))
    .await;
    let a = s.running.dns_addr;
    assert_eq!(
        rcode_name(&ask(a, "x.blocked.test", RecordType::A).await),
        "REFUSED"
    );
    let r = ask(a, "x.filtered.test", RecordType::A).await;
    assert_eq!(rcode_name(&r), "NOERROR");
    assert!(r.answers.is_empty());
    // filter only applies to A
    let r = ask(a, "x.filtered.test", RecordType::TXT).await;
    assert_eq!(r.answers.len(), 1);
    let msg = query_message("x.dropped.test", RecordType::A, None);
    assert!(
        ask_raw(a, &msg, Duration::from_millis(500)).await.is_none(),
        "drop sends nothing"
    );
    let r = ask(a, "x.allowed.test", RecordType::A).await;
    assert_eq!(r.answers.len(), 1);
}

#[tokio::test]
async fn template_answers_with_regex_groups() {
    let s = serve(&format!(
        "{BASE}    template IN A example {{\n        match ^ip-(?P<a>[0-9]+)-([0-9]+)-([0-9]+)-([0-9]+)[.]example[.]$\n        answer \"{{{{ .Name }}}} 60 IN A {{{{ .Group.a }}}}.{{{{ index .Match 2 }}}}.{{{{ index .Match 3 }}}}.{{{{ index .Match 4 }}}}\"\n    }}\n    template IN TXT example {{\n        answer \"{{{{ .Name }}}} 30 {{{{ .Class }}}} TXT \\\"zone={{{{ .Zone }}}} type={{{{ .Type }}}}\\\"\"\n        rcode NOERROR\n    }}\n}}\n"
    ))
    .await;
    let a = s.running.dns_addr;
    let r = ask(a, "ip-10-1-2-3.example", RecordType::A).await;
    assert_eq!(
        section(&r.answers),
        vec!["ip-10-1-2-3.example. 60 IN A 10.1.2.3"]
    );
    assert!(r.metadata.authoritative);
    // No match and no fallthrough: NXDOMAIN, as CoreDNS.
    assert_eq!(
        rcode_name(&ask(a, "other.example", RecordType::A).await),
        "NXDOMAIN"
    );
    let r = ask(a, "t.example", RecordType::TXT).await;
    assert_eq!(section(&r.answers).len(), 1);
    assert!(
        section(&r.answers)[0].contains("zone=example. type=TXT"),
        "{:?}",
        section(&r.answers)
    );
    // A query of type ANY is taken by the first template whose zone and regex match (CoreDNS).
    let r = ask(a, "ip-10-1-2-4.example", RecordType::ANY).await;
    assert_eq!(
        section(&r.answers),
        vec!["ip-10-1-2-4.example. 60 IN A 10.1.2.4"]
    );
}

/// A name in a block's zones that every plugin passes on is SERVFAIL (CoreDNS's
/// `plugin.NextOrFailure`: "no next plugin found"), logged by `errors`; a name in no block's
/// zones is REFUSED.
#[tokio::test]
async fn no_next_plugin_is_servfail_no_block_is_refused() {
    let s = serve(
        ".:0 {\n    bind 127.0.0.1\n    errors\n    kubernetes cluster.local\n}\nexample.net:0 {\n    bind 127.0.0.1\n    kubernetes cluster.local\n}\n",
    )
    .await;
    let a = s.running.dns_addr;
    let r = ask(a, "nginx.demo.svc.cluster.local", RecordType::A).await;
    assert_eq!(section(&r.answers).len(), 1);
    let r = ask(a, "nowhere.example.com", RecordType::A).await;
    assert_eq!(rcode_name(&r), "SERVFAIL");
    let deadline = Instant::now() + Duration::from_secs(5);
    while find_log(|l| l.contains("nowhere.example.com. A: no next plugin found")).is_none() {
        assert!(Instant::now() < deadline, "errors logs the SERVFAIL");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s2 = serve("example.net:0 {\n    bind 127.0.0.1\n    kubernetes cluster.local\n}\n").await;
    let r = ask(s2.running.dns_addr, "nowhere.example.com", RecordType::A).await;
    assert_eq!(rcode_name(&r), "REFUSED");
    let r = ask(s2.running.dns_addr, "x.example.net", RecordType::A).await;
    assert_eq!(rcode_name(&r), "SERVFAIL");
}

/// The rest of CoreDNS's template data: the question as asked, the message id, `.Meta` (empty
/// without a metadata plugin), comments and trim markers.
#[tokio::test]
async fn template_question_message_meta_and_trim() {
    let s = serve(&format!(
        "{BASE}    template IN TXT example {{\n        answer \"{{{{ .Name }}}} 30 IN TXT \\\"{{{{ .Question.Name }}}}|{{{{ .Question.Qtype }}}}|{{{{ .Question.Qclass }}}}|{{{{ .Message.Id }}}}|{{{{ .Meta \\\"kubernetes/client-namespace\\\" }}}}|{{{{/* note */}}}}| {{{{- .Type -}}}} |\\\"\"\n    }}\n}}\n"
    ))
    .await;
    let r = ask(s.running.dns_addr, "Mixed.Example", RecordType::TXT).await;
    let answers = section(&r.answers);
    assert_eq!(answers.len(), 1, "{answers:?}");
    let id = r.metadata.id;
    assert!(
        answers[0].contains(&format!("Mixed.Example.|16|1|{id}|||TXT|")),
        "{answers:?}"
    );
}

#[tokio::test]
async fn log_lines_use_the_coredns_format() {
    let s = serve(&format!(
        "{BASE}    log\n    template IN A logged.test {{\n        answer \"{{{{ .Name }}}} 60 IN A 10.2.2.2\"\n    }}\n}}\n"
    ))
    .await;
    let msg = query_message("q1.logged.test", RecordType::A, None);
    let id = msg.metadata.id;
    ask_raw(s.running.dns_addr, &msg, Duration::from_secs(5))
        .await
        .expect("answer");
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        if let Some(l) = find_log(|l| l.contains("q1.logged.test.")) {
            break l;
        }
        assert!(Instant::now() < deadline, "no log line");
        tokio::task::yield_now().await;
    };
    let re = regex::Regex::new(&format!(
        r#"INFO .*127\.0\.0\.1:\d+ - {id} "A IN q1\.logged\.test\. udp \d+ false 512" NOERROR qr,aa,rd \d+ \d+\.\d+s$"#
    ))
    .unwrap();
    assert!(re.is_match(&line), "{line}");
}

#[tokio::test]
async fn reload_swaps_pipelines_without_dropping_queries_and_keeps_a_good_one() {
    let corefile = |ip: &str| {
        format!(
            "{BASE}    reload 2s 1s\n    ready 127.0.0.1:0\n    template IN A reload.test {{\n        answer \"{{{{ .Name }}}} 60 IN A {ip}\"\n    }}\n}}\n"
        )
    };
    let s = serve(&corefile("10.0.0.1")).await;
    let addr = s.running.dns_addr;
    let ready = s.running.http_addr("ready").unwrap();

    // Queries run continuously while the Corefile changes; every one must be answered.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let worker = {
        let (stop, seen) = (stop.clone(), seen.clone());
        tokio::spawn(async move {
            let mut unanswered = 0;
            let mut not_ready = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = query_message("x.reload.test", RecordType::A, None);
                match ask_raw(addr, &msg, Duration::from_secs(2)).await {
                    Some(r) => seen.lock().unwrap().extend(section(&r.answers)),
                    None => unanswered += 1,
                }
                if http_get(ready, "/ready").await.0 != 200 {
                    not_ready += 1;
                }
            }
            (unanswered, not_ready)
        })
    };
    let wait_for = |want: &'static str| {
        let seen = seen.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if seen.lock().unwrap().iter().any(|l| l.ends_with(want)) {
                    return;
                }
                assert!(Instant::now() < deadline, "never saw {want}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for("10.0.0.1").await;
    std::fs::write(&s.corefile, corefile("10.0.0.2")).unwrap();
    wait_for("10.0.0.2").await;

    // A broken Corefile is reported with its position; the running one stays.
    std::fs::write(
        &s.corefile,
        corefile("10.0.0.3").replace("template", "templat"),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        if let Some(l) =
            find_log(|l| l.contains("ERROR") && l.contains("reload:") && l.contains("templat"))
        {
            break l;
        }
        assert!(Instant::now() < deadline, "no reload error logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(line.contains("unknown plugin 'templat'"), "{line}");
    assert!(line.contains(":5:"), "file:line:col in {line}");
    seen.lock().unwrap().clear();
    wait_for("10.0.0.2").await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (unanswered, not_ready) = worker.await.unwrap();
    assert_eq!(unanswered, 0, "queries lost during reload");
    assert_eq!(not_ready, 0, "readiness dropped during reload");
}

#[test]
fn conf_flag_runs_a_corefile_like_coredns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Corefile");
    std::fs::write(&path, format!("{BASE}    kubernetes cluster.local\n}}\n")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(["-conf", path.to_str().unwrap()])
        .arg("--manifests")
        .arg(demo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(ask(addr, "nginx.demo.svc.cluster.local", RecordType::A));
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(section(&r.answers).len(), 1);

    // The built-in configuration's flags do not mix with a Corefile.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args([
            "serve",
            "--corefile",
            path.to_str().unwrap(),
            "--zone",
            "x.local",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--zone applies to the built-in"));
}

/// `bind IFACE` listens on every address of the interface (CoreDNS), `except` takes some
/// away, and a name that is neither an address nor an interface is an error naming it.
#[tokio::test]
async fn bind_interface_listens_on_each_of_its_addresses() {
    let template =
        "    template IN A {\n        answer \"{{ .Name }} 60 IN A 10.0.0.1\"\n    }\n}\n";
    let s = serve(&format!(".:0 {{\n    bind lo\n{template}")).await;
    let mut addrs = s.running.dns_addrs.clone();
    addrs.sort();
    let port = s.running.dns_addr.port();
    assert_eq!(
        addrs,
        vec![
            SocketAddr::from(([127, 0, 0, 1], port)),
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        ]
    );
    for a in addrs {
        let r = ask(a, "x.example", RecordType::A).await;
        assert_eq!(
            section(&r.answers),
            vec!["x.example. 60 IN A 10.0.0.1"],
            "{a}"
        );
    }

    let s = serve(&format!(
        ".:0 {{\n    bind lo {{\n        except ::1\n    }}\n{template}"
    ))
    .await;
    assert_eq!(s.running.dns_addrs.len(), 1);
    assert!(s.running.dns_addr.ip().is_loopback() && s.running.dns_addr.is_ipv4());

    // Errors found when the block is built name the plugin's line, not the block's.
    for (corefile, want) in [
        (
            format!(".:0 {{\n    bind nosuch0\n{template}"),
            "Corefile:2:5: bind: 'nosuch0' is not an IP address nor a network interface of this host (interfaces: ",
        ),
        (
            format!(".:0 {{\n    bind lo {{\n        except lo\n    }}\n{template}"),
            "Corefile:2:5: bind: no address left to listen on",
        ),
        (
            ".:0 {\n    bind 127.0.0.1\n    forward . /nonexistent/resolv.conf\n}\n".to_string(),
            "Corefile:3:5: forward: cannot read /nonexistent/resolv.conf",
        ),
        (
            ".:0 {\n    bind 127.0.0.1\n    kubernetes cluster.local\n    autopath @kubernetes\n}\n".to_string(),
            "Corefile:4:5: autopath @kubernetes needs 'pods verified'",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Corefile");
        std::fs::write(&path, &corefile).unwrap();
        let err = match app::start(ServeOptions {
            corefile: Some(path),
            manifests: Some(demo()),
            ..ServeOptions::default()
        })
        .await
        {
            Ok(_) => panic!("started with\n{corefile}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(want), "{err}");
    }
}

/// `forward` over DNS over TLS, end to end: the Corefile's `tls://`, `tls CA` and
/// `tls_servername`, and the `tcp-tls` connection metric.
#[tokio::test]
async fn forward_over_tls_end_to_end() {
    let pki = pki(&["dot.test"]);
    let up = dot_upstream(&pki).await;
    let s = serve(&format!(
        "{BASE}    prometheus 127.0.0.1:0\n    forward . tls://{} {{\n        tls_servername dot.test\n        tls {}\n    }}\n}}\n",
        up.addr,
        pki.ca.display()
    ))
    .await;
    let r = ask(s.running.dns_addr, "example.com", RecordType::A).await;
    assert_eq!(section(&r.answers), vec!["example.com. 300 IN A 192.0.2.1"]);
    let r = ask(s.running.dns_addr, "missing.example.com", RecordType::A).await;
    assert_eq!(rcode_name(&r), "NXDOMAIN");
    assert_eq!(up.queries.load(std::sync::atomic::Ordering::SeqCst), 2);
    let (_, metrics) = http_get(s.running.http_addr("prometheus").unwrap(), "/metrics").await;
    let hits = format!(
        "coredns_proxy_conn_cache_hits_total{{proto=\"tcp-tls\",proxy_name=\"forward\",to=\"{}\"}} 1",
        up.addr
    );
    assert!(metrics.contains(&hits), "{hits} not in\n{metrics}");
}

#[tokio::test]
async fn queries_go_to_the_block_with_the_longest_zone_and_others_are_refused() {
    let block = |zone: &str, ip: &str| {
        format!(
            "{zone}:0 {{\n    bind 127.0.0.1\n    template IN A {{\n        answer \"{{{{ .Name }}}} 60 IN A {ip}\"\n    }}\n}}\n"
        )
    };
    let s = serve(&format!(
        "{}{}",
        block("example", "10.0.0.1"),
        block("sub.example", "10.0.0.2")
    ))
    .await;
    let a = s.running.dns_addr;
    assert_eq!(s.running.dns_addrs.len(), 1, "one listener for both blocks");
    let r = ask(a, "a.sub.example", RecordType::A).await;
    assert_eq!(section(&r.answers), vec!["a.sub.example. 60 IN A 10.0.0.2"]);
    let r = ask(a, "a.example", RecordType::A).await;
    assert_eq!(section(&r.answers), vec!["a.example. 60 IN A 10.0.0.1"]);
    assert_eq!(
        rcode_name(&ask(a, "a.other", RecordType::A).await),
        "REFUSED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lameduck_drops_readiness_first_and_keeps_health_and_answers() {
    let s = serve(&format!(
        "{BASE}    health 127.0.0.1:0 {{\n        lameduck 2s\n    }}\n    ready 127.0.0.1:0\n    kubernetes cluster.local\n}}\n"
    ))
    .await;
    let dns = s.running.dns_addr;
    let health = s.running.http_addr("health").unwrap();
    let ready = s.running.http_addr("ready").unwrap();
    assert_eq!(http_get(ready, "/ready").await.0, 200);
    let shutdown = tokio::spawn(s.running.shutdown());
    let deadline = Instant::now() + Duration::from_secs(2);
    while http_get(ready, "/ready").await.0 != 503 {
        assert!(
            Instant::now() < deadline,
            "readiness did not drop at shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Draining: health says OK and queries are still answered.
    assert_eq!(http_get(health, "/health").await.0, 200);
    let r = ask(dns, "nginx.demo.svc.cluster.local", RecordType::A).await;
    assert_eq!(section(&r.answers).len(), 1);
    assert!(!shutdown.is_finished(), "lameduck lasts 2 s");
    shutdown.await.unwrap();
}

/// A block without `bind` (`.:53` in both stock Corefiles) listens on every address, IPv4 and
/// IPv6, UDP and TCP, like CoreDNS: the v4 and v6 wildcard sockets must not collide.
#[tokio::test]
async fn a_block_without_bind_listens_on_all_addresses() {
    let s = serve(
        ".:0 {\n    template IN A example.org {\n        answer \"{{ .Name }} 60 IN A 192.0.2.7\"\n    }\n}\n",
    )
    .await;
    let addrs = &s.running.dns_addrs;
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs.iter().all(|a| a.ip().is_unspecified()), "{addrs:?}");
    let port = addrs[0].port();
    for ip in ["127.0.0.1", "::1"] {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        for t in [Transport::Udp, Transport::Tcp] {
            let m = dnsclient::query(addr, t, "www.example.org.", RecordType::A).await;
            assert_eq!(
                dnsclient::section(&m.answers),
                vec!["www.example.org. 60 IN A 192.0.2.7"],
                "{ip} {t:?}"
            );
        }
    }
    s.running.shutdown().await;
}

/// The sum of a metric's samples whose line contains every one of `labels`.
fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn cache_hits_replayed_by_the_server_count_down_and_end_with_the_entry() {
    // The server replays cache hits from its response cache (dns::fastpath leases): the TTLs
    // must still count down, the entry's expiry must still send the query upstream, and the
    // cache metrics must count every replay as a hit.
    let up = upstream().await;
    let corefile = format!(
        ".:0 {{\n    bind 127.0.0.1\n    errors\n    prometheus 127.0.0.1:0\n    cache {{\n        success 1000 3 1\n    }}\n    forward . {}\n}}\n",
        up.ip
    );
    let s = serve(&corefile).await;
    let addr = s.running.dns_addr;
    let count = || up.queries.load(std::sync::atomic::Ordering::SeqCst);
    let mut ttls = std::collections::BTreeSet::new();
    let mut asked = 0u32;
    let deadline = Instant::now() + Duration::from_secs(15);
    // Until the entry has expired and been fetched again.
    while count() < 2 {
        assert!(Instant::now() < deadline, "the cache entry never expired");
        let r = ask(addr, "example.com", RecordType::A).await;
        asked += 1;
        assert_eq!(rcode_name(&r), "NOERROR");
        assert_eq!(r.answers.len(), 1);
        let ttl = r.answers[0].ttl;
        assert!(
            (1..=3).contains(&ttl),
            "TTL {ttl} outside the cache's 1..=3"
        );
        if count() < 2 {
            ttls.insert(ttl);
        }
        // The poll interval, so that every second of the countdown is seen.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ttls.into_iter().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "the TTL counts down"
    );
    let upstream_queries = count() as f64;
    let (_, text) = http_get(s.running.http_addr("prometheus").unwrap(), "/metrics").await;
    let requests = metric_sum(&text, "coredns_cache_requests_total", &[]);
    let hits = metric_sum(&text, "coredns_cache_hits_total", &["type=\"success\""]);
    let misses = metric_sum(&text, "coredns_cache_misses_total", &[]);
    assert_eq!(requests, f64::from(asked), "{text}");
    assert_eq!(misses, upstream_queries, "{text}");
    assert_eq!(hits, f64::from(asked) - upstream_queries, "{text}");
    assert_eq!(
        metric_sum(&text, "coredns_dns_requests_total", &[]),
        f64::from(asked)
    );
    s.running.cancel_token().cancel();
    s.running.wait().await;
}
