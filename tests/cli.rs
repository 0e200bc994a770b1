//! The binary as a user runs it: `clusterdns serve` on port 0, queried with `dig`, with its
//! manifests edited (and broken) while it runs.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(args: &[&str]) -> Server {
    start_env(args, &[])
}

fn start_env(args: &[&str], env: &[(&str, &str)]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .envs(env.iter().copied())
        .arg("serve")
        // Nothing leaves this machine: no upstream (the built-in default forwards to
        // /etc/resolv.conf).
        .args(["--dns-addr", "127.0.0.1:0", "--upstream", "none"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("clusterdns starts");
    let stderr = support::process::collect_stderr(&mut child);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).expect("startup line");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| {
            panic!(
                "no address in {line:?}; stderr: {:?}",
                stderr.lock().unwrap()
            )
        });
    Server {
        child,
        addr,
        stderr,
    }
}

fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new("dig")
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string(), "+tries=1", "+time=2"])
        .args(args)
        .output()
        .expect("dig is installed (apt-get install bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// (status, flags, answer lines) from dig's default output.
fn parse_dig(out: &str) -> (String, Vec<String>, Vec<String>) {
    let status = out
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let flags = out
        .split(";; flags: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut answers = Vec::new();
    let mut in_answer = false;
    for line in out.lines() {
        if line.starts_with(";; ANSWER SECTION:") {
            in_answer = true;
            continue;
        }
        if in_answer {
            if line.trim().is_empty() || line.starts_with(";;") {
                break;
            }
            answers.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    (status, flags, answers)
}

fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn dig_against_the_embedded_demo() {
    let server = start(&[]);
    let (status, flags, answers) =
        dig(server.addr, &["nginx.demo.svc.cluster.local"]).pipe(|o| parse_dig(&o));
    assert_eq!(status, "NOERROR");
    assert!(flags.contains(&"aa".to_string()), "{flags:?}");
    assert_eq!(
        answers,
        vec!["nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34"]
    );

    let (status, _, answers) = parse_dig(&dig(
        server.addr,
        &["+tcp", "_http._tcp.web.demo.svc.cluster.local", "SRV"],
    ));
    assert_eq!(status, "NOERROR");
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers[0].ends_with("web-0.web.demo.svc.cluster.local."),
        "{answers:?}"
    );

    let (status, _, answers) = parse_dig(&dig(server.addr, &["-x", "10.100.0.10"]));
    assert_eq!(status, "NOERROR");
    assert_eq!(
        answers,
        vec!["10.0.100.10.in-addr.arpa. 5 IN PTR kube-dns.kube-system.svc.cluster.local."]
    );

    let (status, flags, _) = parse_dig(&dig(server.addr, &["missing.demo.svc.cluster.local"]));
    assert_eq!(status, "NXDOMAIN");
    assert!(flags.contains(&"aa".to_string()));

    let (status, _, answers) = parse_dig(&dig(server.addr, &["search.demo.svc.cluster.local"]));
    assert_eq!(status, "NOERROR");
    assert_eq!(
        answers,
        vec!["search.demo.svc.cluster.local. 5 IN CNAME search.example.com."]
    );
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl Pipe for String {}

const EXTRA: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: added, namespace: demo}\nspec: {clusterIP: 10.100.99.99, ports: [{name: http, port: 80}]}\n";

#[test]
fn manifest_edits_apply_without_restart_and_a_broken_file_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/demo-cluster.yaml");
    std::fs::copy(&demo, dir.path().join("demo.yaml")).unwrap();
    let server = start(&["--manifests", dir.path().to_str().unwrap()]);
    let added = |addr| parse_dig(&dig(addr, &["added.demo.svc.cluster.local"]));
    assert_eq!(added(server.addr).0, "NXDOMAIN");

    // A new file in the directory is picked up.
    std::fs::write(dir.path().join("extra.yaml"), EXTRA).unwrap();
    let answers = poll(
        "the added service to resolve",
        Duration::from_secs(10),
        || {
            let (status, _, answers) = added(server.addr);
            (status == "NOERROR").then_some(answers)
        },
    );
    assert_eq!(
        answers,
        vec!["added.demo.svc.cluster.local. 5 IN A 10.100.99.99"]
    );

    // Break the file: the error names the file and the object; the old answers stay.
    std::fs::write(
        dir.path().join("extra.yaml"),
        EXTRA.replace("ports: [{name: http, port: 80}]", "ports: 80"),
    )
    .unwrap();
    let line = poll(
        "the reload error in the log",
        Duration::from_secs(10),
        || {
            server
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains("not reloaded"))
                .cloned()
        },
    );
    assert!(line.contains("extra.yaml"), "{line}");
    assert!(line.contains("Service demo/added"), "{line}");
    assert_eq!(
        added(server.addr).0,
        "NOERROR",
        "last good state keeps serving"
    );
    assert_eq!(
        parse_dig(&dig(server.addr, &["nginx.demo.svc.cluster.local"])).2,
        vec!["nginx.demo.svc.cluster.local. 5 IN A 10.100.12.34"]
    );

    // Fixed again, and the service removed: NXDOMAIN.
    std::fs::remove_file(dir.path().join("extra.yaml")).unwrap();
    poll(
        "the removed service to disappear",
        Duration::from_secs(10),
        || (added(server.addr).0 == "NXDOMAIN").then_some(()),
    );
}

#[test]
fn a_broken_manifest_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: x, namespace: y}\nspec: {ports: 80}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args([
            "serve",
            "--dns-addr",
            "127.0.0.1:0",
            "--upstream",
            "none",
            "--manifests",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml: document 1: Service y/x:"), "{err}");
}

#[test]
fn help_explains_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--manifests", "--dns-addr", "--zone", "--ttl", "--pods"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
}

#[test]
fn export_zone_prints_zones_nsd_accepts() {
    let dir = tempfile::tempdir().unwrap();
    for (zone, args) in [
        ("cluster.local", vec!["export-zone"]),
        (
            "in-addr.arpa",
            vec!["export-zone", "--reverse", "in-addr.arpa"],
        ),
        ("ip6.arpa", vec!["export-zone", "--reverse", "ip6.arpa"]),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_clusterdns"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.starts_with(&format!("$ORIGIN {zone}.")), "{text}");
        let file = dir.path().join(format!("{zone}.zone"));
        std::fs::write(&file, &text).unwrap();
        // NSD's own zone checker is the judge of the syntax (.ci/run installs nsd).
        let check = Command::new("nsd-checkzone")
            .arg(zone)
            .arg(&file)
            .output()
            .expect("nsd-checkzone is installed (apt-get install nsd)");
        assert!(
            check.status.success(),
            "{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
    }
}

const LATER: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: demo}\nspec: {clusterIP: 10.100.99.98, ports: [{name: http, port: 80}]}\n";

/// A server following a copy of the demo cluster that the test edits: (server, its directory,
/// the file, the demo text).
fn serve_editable_demo() -> (Server, tempfile::TempDir, std::path::PathBuf, String) {
    let demo = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/examples/demo-cluster.yaml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    std::fs::write(&file, &demo).unwrap();
    let server = start(&["--manifests", file.to_str().unwrap()]);
    (server, dir, file, demo)
}

/// One manifest file edited the ways editors and kubelet do: replaced by a rename, written in
/// two parts (the half-written file does not stick), and a ConfigMap volume's `..data` swap.
#[test]
fn a_manifest_replaced_by_rename_half_written_or_swapped_like_a_configmap_is_reloaded() {
    let (server, dir, file, demo) = serve_editable_demo();
    let status = |name: &str| parse_dig(&dig(server.addr, &[name])).0;
    assert_eq!(status("added.demo.svc.cluster.local"), "NXDOMAIN");

    // An editor's save: a temporary file renamed over the manifest.
    let tmp = dir.path().join(".cluster.yaml.swp");
    std::fs::write(&tmp, format!("{demo}{EXTRA}")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    poll("the renamed-in service", Duration::from_secs(10), || {
        (status("added.demo.svc.cluster.local") == "NOERROR").then_some(())
    });

    // A write in two parts: the first ends inside a flow mapping, so that state cannot load.
    let full = format!("{demo}{EXTRA}{LATER}");
    let cut = full.find("name: later,").unwrap() + "name: later,".len();
    let mut f = std::fs::File::create(&file).unwrap();
    std::io::Write::write_all(&mut f, &full.as_bytes()[..cut]).unwrap();
    poll(
        "the half-written file's error",
        Duration::from_secs(10),
        || {
            let log = server.stderr.lock().unwrap();
            log.iter().any(|l| l.contains("not reloaded")).then_some(())
        },
    );
    assert_eq!(
        status("added.demo.svc.cluster.local"),
        "NOERROR",
        "last good state"
    );
    std::io::Write::write_all(&mut f, &full.as_bytes()[cut..]).unwrap();
    drop(f);
    poll("the completed write", Duration::from_secs(10), || {
        (status("later.demo.svc.cluster.local") == "NOERROR").then_some(())
    });

    // A ConfigMap volume: `cluster.yaml -> ..data/cluster.yaml`, `..data -> ..v1`; kubelet
    // updates it by renaming a new `..data` link over the old one.
    let cm = tempfile::tempdir().unwrap();
    std::fs::create_dir(cm.path().join("..v1")).unwrap();
    std::fs::write(cm.path().join("..v1/cluster.yaml"), &demo).unwrap();
    std::os::unix::fs::symlink("..v1", cm.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/cluster.yaml", cm.path().join("cluster.yaml")).unwrap();
    let server2 = start(&["--manifests", cm.path().to_str().unwrap()]);
    let status2 = |name: &str| parse_dig(&dig(server2.addr, &[name])).0;
    assert_eq!(status2("added.demo.svc.cluster.local"), "NXDOMAIN");
    std::fs::create_dir(cm.path().join("..v2")).unwrap();
    std::fs::write(
        cm.path().join("..v2/cluster.yaml"),
        format!("{demo}{EXTRA}"),
    )
    .unwrap();
    std::os::unix::fs::symlink("..v2", cm.path().join("..data_tmp")).unwrap();
    std::fs::rename(cm.path().join("..data_tmp"), cm.path().join("..data")).unwrap();
    poll("the swapped-in ConfigMap", Duration::from_secs(10), || {
        (status2("added.demo.svc.cluster.local") == "NOERROR").then_some(())
    });
}

/// `kubectl get ... -o yaml > cluster.yaml` (the README's refresh) truncates the file, then
/// writes it when the API answers, maybe seconds later. The empty file in between is not a
/// cluster with no services: answers keep coming from the last good state until it is written.
#[test]
fn a_manifest_truncated_for_rewriting_keeps_serving_until_written() {
    let (server, _dir, file, demo) = serve_editable_demo();
    let status = |name: &str| parse_dig(&dig(server.addr, &[name])).0;
    assert_eq!(status("nginx.demo.svc.cluster.local"), "NOERROR");

    // The shell's `>`: truncated and held open, nothing written yet.
    let mut f = std::fs::File::create(&file).unwrap();
    // Until the server has looked at the empty file (it says so), or has emptied the cluster.
    poll(
        "the server to see the empty file",
        Duration::from_secs(10),
        || {
            let said = server
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("is empty"));
            (said || status("nginx.demo.svc.cluster.local") != "NOERROR").then_some(())
        },
    );
    assert_eq!(
        status("nginx.demo.svc.cluster.local"),
        "NOERROR",
        "an emptied file replaced the last good state"
    );

    std::io::Write::write_all(&mut f, format!("{demo}{EXTRA}").as_bytes()).unwrap();
    drop(f);
    poll("the rewritten file", Duration::from_secs(10), || {
        (status("added.demo.svc.cluster.local") == "NOERROR").then_some(())
    });
    assert_eq!(status("nginx.demo.svc.cluster.local"), "NOERROR");
}

/// `loop` with a `forward` that points back at this server: CoreDNS's loop plugin exits with
/// a message naming the upstream; so do we, exit status 1.
#[test]
fn a_forwarding_loop_is_detected_and_exits_naming_the_upstream() {
    // A port free for UDP and TCP right now (the Corefile must name its own port).
    let port = loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let p = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            break p;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let corefile = dir.path().join("Corefile");
    std::fs::write(
        &corefile,
        format!(".:{port} {{\n    bind 127.0.0.1\n    loop\n    forward . 127.0.0.1:{port}\n}}\n"),
    )
    .unwrap();
    // Killed on drop, should the loop go unnoticed and the test fail.
    struct Guard(Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Guard(
        Command::new(env!("CARGO_BIN_EXE_clusterdns"))
            .args(["serve", "--corefile"])
            .arg(&corefile)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = poll("the loop to be detected", Duration::from_secs(30), || {
        child.0.try_wait().unwrap()
    });
    let mut err = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("Loop") && err.contains(&format!("dns://127.0.0.1:{port}")),
        "{err}"
    );
}

/// glibc's per-thread malloc arenas in a process's memory map: each is a heap of its own,
/// reserved as 64 MiB (HEAP_MAX_SIZE on 64-bit) at a 64 MiB-aligned address, read-write from
/// its start and PROT_NONE for the part not yet used.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn thread_arenas(pid: u32) -> usize {
    const HEAP: u64 = 64 << 20;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let regions: Vec<(u64, u64, String, bool)> = maps
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let perms = f.next()?.to_string();
            let named = f.nth(3).is_some();
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                perms,
                named,
            ))
        })
        .collect();
    regions
        .iter()
        .enumerate()
        .filter(|(i, (start, end, perms, named))| {
            if *named || perms != "rw-p" || start % HEAP != 0 {
                return false;
            }
            // The unused rest of the reservation follows as PROT_NONE, unless all is in use.
            let reserved_end = match regions.get(i + 1) {
                Some((next, next_end, p, false)) if next == end && p == "---p" => *next_end,
                _ => *end,
            };
            reserved_end - start == HEAP
        })
        .count()
}

/// The binary caps glibc at one malloc arena (src/malloc.rs: an arena per runtime thread kept
/// what API lists left behind, a third of the API source's memory), and the user's
/// MALLOC_ARENA_MAX still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn one_malloc_arena_unless_malloc_arena_max_says_otherwise() {
    let arenas_under_load = |env: &[(&str, &str)]| {
        let server = start_env(&[], env);
        // Queries over UDP and TCP from several clients at once, so that every runtime thread
        // allocates.
        std::thread::scope(|s| {
            for i in 0..8 {
                let addr = server.addr;
                s.spawn(move || {
                    let tcp = if i % 2 == 0 { "+tcp" } else { "+notcp" };
                    let out = dig(addr, &[tcp, "nginx.demo.svc.cluster.local"]);
                    assert!(out.contains("status: NOERROR"), "{out}");
                });
            }
        });
        thread_arenas(server.child.id())
    };
    assert_eq!(
        arenas_under_load(&[]),
        0,
        "thread arenas without MALLOC_ARENA_MAX"
    );
    // The check itself sees arenas when glibc makes them.
    assert!(arenas_under_load(&[("MALLOC_ARENA_MAX", "8")]) > 0);
}
