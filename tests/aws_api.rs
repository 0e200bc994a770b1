//! `clusterdns probe|serve --cluster NAME` reading AWS through the AWS SDK, against moto (a real
//! AWS API emulator) in server mode on loopback, seeded through the AWS APIs by
//! tests/support/moto_seed.py with the demo VPC and its broken variant.
//!
//! moto makes its own IDs, so the seeding script prints the old -> new ID map and the SDK
//! run's output is mapped back before it is compared with the run on the JSON directory: the
//! comparison is then of every verdict, reason, fix, address and security group, not of
//! counts. Each test seeds its own region (moto keeps one backend per region).
//!
//! A small HTTP proxy in front of moto plays what moto cannot: throttling, IAM denial, an
//! endpoint that goes away.
//!
//! moto is `MOTO_URL` when set, else `moto_server` started here on a free port; without it the
//! tests skip, except under `CI=true`, where they fail.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---- moto ----

static MOTO: OnceLock<Option<String>> = OnceLock::new();

/// The emulator's URL, or `None` (test skipped) when moto is not installed outside CI.
fn moto() -> Option<String> {
    MOTO.get_or_init(|| {
        if let Ok(url) = std::env::var("MOTO_URL") {
            return Some(url.trim_end_matches('/').to_owned());
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Started from a thread that lives as long as the test process, so that the child
        // (which dies with that thread, PR_SET_PDEATHSIG) outlives every test.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::os::unix::process::CommandExt;
            let mut cmd = Command::new("moto_server");
            cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let child = cmd.spawn();
            let ok = child.is_ok();
            tx.send(child.map_err(|e| e.to_string())).unwrap();
            if ok {
                loop {
                    std::thread::park();
                }
            }
        });
        match rx.recv().unwrap() {
            Ok(_child) => {}
            Err(e) => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "moto_server cannot start under CI: {e} (.ci/run installs moto[server])"
                    );
                }
                eprintln!("skipping: moto_server not available ({e}); pip install 'moto[server]'");
                return None;
            }
        }
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&format!("127.0.0.1:{port}"), "/moto-api/").is_none() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer on {url} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(url)
    })
    .clone()
}

/// A plain HTTP/1.0 GET; `None` when nothing answers.
fn http_get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.starts_with("HTTP/1").then_some(text)
}

/// Seeds `region` from an AWS CLI JSON directory; the old -> new ID map.
fn seed(url: &str, region: &str, dir: &Path, extra: &[&str]) -> HashMap<String, String> {
    let out = Command::new("python3")
        .arg(root().join("tests/support/moto_seed.py"))
        .args(["--endpoint", url, "--region", region])
        .args(extra)
        .arg(dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "seeding failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("an ID map")
}

/// Runs the binary with only the AWS settings given here (nothing from this machine's
/// ~/.aws or environment).
fn clusterdns(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clusterdns"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            "/nonexistent/aws-credentials",
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    for (k, v) in env {
        if v.is_empty() {
            cmd.env_remove(k);
        } else {
            cmd.env(k, v);
        }
    }
    cmd.args(args).output().expect("clusterdns runs")
}

fn probe_api(cluster: &str, region: &str, endpoint: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "probe",
        "--cluster",
        cluster,
        "--region",
        region,
        "--endpoint-url",
        endpoint,
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    clusterdns(&args, &[])
}

fn probe_dir(dir: &Path) -> Output {
    clusterdns(
        &["probe", "--aws", dir.to_str().unwrap(), "--format", "json"],
        &[],
    )
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// moto's IDs replaced by those of the JSON directory.
fn unmap(s: &str, ids: &HashMap<String, String>) -> String {
    let mut s = s.to_owned();
    for (old, new) in ids {
        s = s.replace(new.as_str(), old.as_str());
    }
    s
}

/// The request count from the summary line on stderr.
fn requests(out: &Output) -> usize {
    let err = text(&out.stderr);
    err.split(" with ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in {err:?}"))
}

fn demo() -> PathBuf {
    root().join("manifests/examples/aws")
}

fn broken() -> PathBuf {
    root().join("manifests/examples/aws-udp53-missing")
}

// ---- the proxy double ----

/// What the proxy does instead of forwarding.
#[derive(Default)]
struct Rules {
    /// Action -> how many more times to answer `Throttling`.
    throttle: Mutex<HashMap<String, usize>>,
    /// Action -> error code to answer with HTTP 403.
    deny: Mutex<HashMap<String, String>>,
    /// Close every connection unanswered (AWS unreachable).
    down: AtomicBool,
    throttled: AtomicUsize,
    denied: AtomicUsize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = http_body_util::Full<hyper::body::Bytes>;

/// An HTTP proxy in front of moto on a thread of its own; its URL.
fn proxy(upstream: &str, rules: Arc<Rules>) -> String {
    let upstream: SocketAddr = upstream
        .trim_start_matches("http://")
        .parse()
        .expect("moto on an IP:port");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                if rules.down.load(Ordering::SeqCst) {
                    drop(conn);
                    continue;
                }
                let rules = rules.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(req, rules.clone(), upstream));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(conn), service)
                        .await;
                });
            }
        });
    });
    format!("http://{addr}")
}

/// An EC2 error as EC2 answers it (query protocol, XML).
fn ec2_error(status: u16, code: &str, message: &str) -> hyper::Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>00000000-0000-0000-0000-000000000000</RequestID></Response>"
    );
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/xml")
        .body(Body::from(xml))
        .unwrap()
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    rules: Arc<Rules>,
    upstream: SocketAddr,
) -> Result<hyper::Response<Body>, BoxError> {
    use http_body_util::BodyExt;
    if rules.down.load(Ordering::SeqCst) {
        // Also on connections the client keeps open: the connection is dropped unanswered.
        return Err("down".into());
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    // EC2 is the query protocol: `Action=...` in a form body (EKS is REST-JSON; no rule here
    // targets it).
    let action = std::str::from_utf8(&body)
        .ok()
        .and_then(|b| b.split('&').find_map(|kv| kv.strip_prefix("Action=")))
        .unwrap_or("")
        .to_owned();
    if let Some(n) = rules
        .throttle
        .lock()
        .unwrap()
        .get_mut(&action)
        .filter(|n| **n > 0)
    {
        *n -= 1;
        rules.throttled.fetch_add(1, Ordering::SeqCst);
        return Ok(ec2_error(400, "Throttling", "Rate exceeded"));
    }
    let denied = rules.deny.lock().unwrap().get(&action).cloned();
    if let Some(code) = denied {
        rules.denied.fetch_add(1, Ordering::SeqCst);
        let message = format!(
            "You are not authorized to perform this operation. User: arn:aws:sts::123456789012:assumed-role/clusterdns/x is not authorized to perform: ec2:{action} because no identity-based policy allows the ec2:{action} action"
        );
        return Ok(ec2_error(403, &code, &message));
    }
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = send
        .send_request(hyper::Request::from_parts(parts, Body::new(body)))
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok(hyper::Response::from_parts(parts, Body::new(body)))
}

// ---- the tests ----

#[test]
fn verdicts_through_the_sdk_equal_those_of_the_json_directories_and_save_round_trips() {
    let Some(url) = moto() else { return };
    for (dir, region, code) in [(demo(), "eu-west-1", 0), (broken(), "eu-west-2", 1)] {
        let ids = seed(&url, region, &dir, &[]);
        let saved = tempfile::tempdir().unwrap();
        let api = probe_api(
            "demo",
            region,
            &url,
            &["--save-aws", saved.path().to_str().unwrap()],
        );
        let files = probe_dir(&dir);
        assert_eq!(
            api.status.code(),
            Some(code),
            "{region}: {}",
            text(&api.stderr)
        );
        assert_eq!(files.status.code(), Some(code));
        let api_json: Value = serde_json::from_str(&unmap(&text(&api.stdout), &ids)).unwrap();
        let files_json: Value = serde_json::from_slice(&files.stdout).unwrap();
        assert!(api_json.as_array().is_some_and(|a| a.len() > 10));
        assert_eq!(
            api_json,
            files_json,
            "{region}: verdicts via the SDK differ from those of {}",
            dir.display()
        );
        if code == 1 {
            let blocked_udp53 =
                files_json.as_array().unwrap().iter().any(|f| {
                    f["verdict"] == "blocked" && f["protocol"] == "udp" && f["port"] == 53
                });
            assert!(blocked_udp53, "the broken variant blocks UDP 53");
        }
        // --save-aws wrote the CLI shapes: reading them back judges byte for byte the same.
        let replay = probe_dir(saved.path());
        assert_eq!(replay.status.code(), Some(code));
        assert_eq!(text(&replay.stdout), text(&api.stdout));
        for f in [
            "eks-describe-cluster.json",
            "eks-list-fargate-profiles.json",
            "eks-describe-fargate-profile-fp-default.json",
            "eks-describe-nodegroup-ng-general.json",
            "ec2-describe-vpcs.json",
            "ec2-describe-subnets.json",
            "ec2-describe-security-groups.json",
            "ec2-describe-network-acls.json",
            "ec2-describe-network-interfaces.json",
        ] {
            assert!(saved.path().join(f).is_file(), "{f} saved");
        }
    }
}

#[test]
fn every_page_is_read() {
    let Some(url) = moto() else { return };
    let region = "us-east-2";
    seed(&url, region, &demo(), &["--extra-fargate-profiles", "11"]);
    let saved = tempfile::tempdir().unwrap();
    let small = probe_api(
        "demo",
        region,
        &url,
        &[
            "--aws-page-size",
            "5",
            "--save-aws",
            saved.path().to_str().unwrap(),
        ],
    );
    assert_eq!(small.status.code(), Some(0), "{}", text(&small.stderr));
    let list: Value = serde_json::from_str(
        &std::fs::read_to_string(saved.path().join("eks-list-fargate-profiles.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(list["fargateProfileNames"].as_array().unwrap().len(), 12);
    let described = std::fs::read_dir(saved.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("eks-describe-fargate-profile-")
        })
        .count();
    assert_eq!(described, 12);
    // 12 names in pages of 5 is three ListFargateProfiles calls; in pages of 100, one.
    let large = probe_api("demo", region, &url, &["--aws-page-size", "100"]);
    assert_eq!(requests(&small), requests(&large) + 2);
    assert_eq!(small.stdout, large.stdout);
}

#[test]
fn throttling_is_retried_with_backoff() {
    let Some(url) = moto() else { return };
    let region = "us-west-1";
    seed(&url, region, &demo(), &[]);
    let direct = probe_api("demo", region, &url, &[]);
    let rules = Arc::new(Rules::default());
    rules
        .throttle
        .lock()
        .unwrap()
        .insert("DescribeSecurityGroups".into(), 2);
    let via = proxy(&url, rules.clone());
    let out = probe_api("demo", region, &via, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(rules.throttled.load(Ordering::SeqCst), 2);
    assert_eq!(out.stdout, direct.stdout);
    assert_eq!(requests(&out), requests(&direct) + 2);
}

#[test]
fn denied_network_acls_turn_only_the_acl_checks_unknown_and_name_the_action() {
    let Some(url) = moto() else { return };
    let region = "us-west-2";
    let ids = seed(&url, region, &broken(), &[]);
    let direct = probe_api("demo", region, &url, &[]);
    let rules = Arc::new(Rules::default());
    rules
        .deny
        .lock()
        .unwrap()
        .insert("DescribeNetworkAcls".into(), "UnauthorizedOperation".into());
    let via = proxy(&url, rules.clone());
    let saved = tempfile::tempdir().unwrap();
    let out = probe_api(
        "demo",
        region,
        &via,
        &["--save-aws", saved.path().to_str().unwrap()],
    );
    assert!(rules.denied.load(Ordering::SeqCst) >= 1);
    // Still judged: the security-group block of UDP 53 is found (exit 1), not a crash.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("ec2:DescribeNetworkAcls denied (UnauthorizedOperation)"));
    let with: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let without: Vec<Value> = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(with.len(), without.len());
    let mut unknown = 0;
    let mut blocked = 0;
    for (a, b) in with.iter().zip(&without) {
        if a == b {
            continue;
        }
        // Only what the ACLs decide changed, and says which permission is missing.
        assert_eq!(a["from"], b["from"]);
        assert_eq!(a["to"], b["to"]);
        let reason = a["reason"].as_str().unwrap();
        if a["verdict"] == "unknown" {
            unknown += 1;
            assert!(
                reason.contains("ec2:DescribeNetworkAcls was denied"),
                "{reason}"
            );
        } else {
            // Blocked by a security group either way; the ACL part of the reason differs.
            assert_eq!(a["verdict"], "blocked", "{a}");
            assert_eq!(b["verdict"], "blocked");
            blocked += 1;
        }
    }
    assert!(unknown > 0, "allowed paths crossing subnets became unknown");
    assert!(
        with.iter().any(|f| f["verdict"] == "blocked"),
        "SG verdicts still judged ({blocked} blocked rows changed reason)"
    );
    // The table names the action; the saved directory replays the same verdicts.
    let table = clusterdns(
        &[
            "probe",
            "--aws",
            saved.path().to_str().unwrap(),
            "--format",
            "table",
        ],
        &[],
    );
    assert!(text(&table.stdout).contains("ec2:DescribeNetworkAcls was denied"));
    let replay = probe_dir(saved.path());
    assert_eq!(text(&replay.stdout), text(&out.stdout));
    let _ = ids;

    // EC2 says UnauthorizedOperation; other services (and SCPs) say AccessDenied: same.
    rules
        .deny
        .lock()
        .unwrap()
        .insert("DescribeNetworkAcls".into(), "AccessDenied".into());
    let again = probe_api("demo", region, &via, &[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("ec2:DescribeNetworkAcls denied (AccessDenied)"));
    assert_eq!(
        text(&again.stdout).replace("(AccessDenied)", "(UnauthorizedOperation)"),
        text(&out.stdout)
    );
}

#[test]
fn unreachable_endpoint_and_unknown_cluster_are_clear_errors_exit_2() {
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Bound and dropped: nothing listens there now.
    let out = clusterdns(
        &[
            "probe",
            "--cluster",
            "demo",
            "--region",
            "eu-west-1",
            "--endpoint-url",
            &format!("http://{closed}"),
        ],
        &[("AWS_MAX_ATTEMPTS", "2")],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("eks:DescribeCluster: cannot reach") && err.contains(&closed.to_string()),
        "{err}"
    );
    let out = clusterdns(&["probe", "--cluster", "demo"], &[("AWS_REGION", "")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no AWS region"),
        "{}",
        text(&out.stderr)
    );

    let Some(url) = moto() else { return };
    let out = probe_api("no-such-cluster", "ap-south-1", &url, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no EKS cluster \"no-such-cluster\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_named_profile_and_aws_endpoint_url_are_honoured() {
    let Some(url) = moto() else { return };
    let region = "ca-central-1";
    seed(&url, region, &demo(), &[]);
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("config");
    let creds = home.path().join("credentials");
    std::fs::write(&config, format!("[profile ci]\nregion = {region}\n")).unwrap();
    std::fs::write(
        &creds,
        "[ci]\naws_access_key_id = testing\naws_secret_access_key = testing\n",
    )
    .unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", ""),
        ("AWS_SECRET_ACCESS_KEY", ""),
        ("AWS_CONFIG_FILE", config.to_str().unwrap()),
        ("AWS_SHARED_CREDENTIALS_FILE", creds.to_str().unwrap()),
        ("AWS_ENDPOINT_URL", url.as_str()),
    ];
    let out = clusterdns(
        &[
            "probe",
            "--cluster",
            "demo",
            "--profile",
            "ci",
            "--format",
            "json",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Without the profile there are no credentials at all: a clear error, not a hang.
    let out = clusterdns(&["probe", "--cluster", "demo", "--region", region], &env);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("eks:DescribeCluster"),
        "{}",
        text(&out.stderr)
    );

    // placement reads the Fargate profiles the same way.
    let out = clusterdns(&["placement", "--cluster", "demo", "--profile", "ci"], &env);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("fp-default"),
        "{}",
        text(&out.stdout)
    );
}

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn metric(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect()
}

fn poll(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_rereads_aws_and_keeps_the_last_good_view_while_it_is_unreachable() {
    let Some(url) = moto() else { return };
    let region = "sa-east-1";
    seed(&url, region, &broken(), &[]);
    let rules = Arc::new(Rules::default());
    let via = proxy(&url, rules.clone());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clusterdns"));
    for (k, _) in std::env::vars() {
        if k.starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", "/nonexistent/aws-config")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        // One attempt: a failed read shows at once instead of after the backoff.
        .env("AWS_MAX_ATTEMPTS", "1")
        .args(["serve", "--dns-addr", "127.0.0.1:0", "--upstream", "none"])
        .args([
            "--cluster",
            "demo",
            "--region",
            region,
            "--endpoint-url",
            &via,
        ])
        .args(["--probe-interval", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let serve = Serve(child);
    let mut prometheus = None;
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(rest) = line.strip_prefix("clusterdns: serving prometheus on http://") {
            prometheus = Some(rest.trim().to_owned());
            break;
        }
    }
    let prom = prometheus.expect("a prometheus address in the banner");
    let scrape = || http_get(&prom, "/metrics").unwrap_or_default();
    poll("verdicts from AWS", Duration::from_secs(60), || {
        let body = scrape();
        metric(&body, "clusterdns_probe_paths")
            .iter()
            .any(|(k, v)| k.contains("verdict=\"blocked\"") && *v > 0.0)
            && metric(&body, "clusterdns_probe_aws_stale_seconds")
                == [("clusterdns_probe_aws_stale_seconds".to_string(), 0.0)]
    });
    let before = metric(&scrape(), "clusterdns_probe_paths");
    rules.down.store(true, Ordering::SeqCst);
    poll(
        "staleness while AWS is unreachable",
        Duration::from_secs(60),
        || {
            metric(&scrape(), "clusterdns_probe_aws_stale_seconds")
                .first()
                .is_some_and(|(_, v)| *v >= 1.0)
        },
    );
    assert_eq!(
        metric(&scrape(), "clusterdns_probe_paths"),
        before,
        "the last good verdicts are kept"
    );
    rules.down.store(false, Ordering::SeqCst);
    poll("fresh again", Duration::from_secs(60), || {
        metric(&scrape(), "clusterdns_probe_aws_stale_seconds")
            .first()
            .is_some_and(|(_, v)| *v == 0.0)
    });
    drop(serve);
}
