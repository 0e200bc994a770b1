//! The image built by .ci/build-image, run from its root filesystem (target/clusterdns-image/rootfs, as
//! `podman export` gives it) with chroot, as the non-root user of the image:
//!
//! ```text
//!  target/clusterdns-image/rootfs ──chroot --userspec 65532──> /clusterdns serve ──> dig
//!      (FROM scratch:        demo: port 53 in a network namespace of its own (file capability)
//!       static binary)       kubeconfig: the fake API server of tests/support, in this process
//! ```
//!
//! Without the root filesystem the tests skip, except under CI=true, where they fail: CI must
//! have built the image.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::apiserver::ApiServer;
use support::process::wait_for_line;
use support::{namespace, service, slice};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// The image's user (Dockerfile and .ci/build-image: USER 65532:65532).
const NONROOT: u32 = 65532;

fn rootfs() -> Option<PathBuf> {
    let dir = std::env::var_os("CLUSTERDNS_IMAGE_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(REPO).join("target/clusterdns-image/rootfs"));
    if dir.join("clusterdns").is_file() {
        return Some(dir);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !ci,
        "{}: no image root filesystem (CI=true): .ci/build-image must run before the tests",
        dir.display()
    );
    eprintln!(
        "skipped: {} missing; run .ci/build-image first",
        dir.display()
    );
    None
}

/// A child process killed on drop, so a failing assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The uid the process runs as (the `Uid:` line of /proc/PID/status: real, effective, ...).
fn uids(pid: u32) -> Vec<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .expect("Uid line")
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect()
}

fn dig(prefix: &[&str], server: &str, port: u16, name: &str, tcp: bool) -> (String, String) {
    let mut cmd = Command::new(prefix.first().copied().unwrap_or("dig"));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg("dig");
    }
    cmd.arg(format!("@{server}")).args([
        "-p",
        &port.to_string(),
        "+short",
        "+time=1",
        "+tries=1",
        name,
    ]);
    if tcp {
        cmd.arg("+tcp");
    }
    let out = cmd.output().expect("dig");
    (
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls dig until the answer is `want`, with a deadline.
fn until_answer(prefix: &[&str], port: u16, name: &str, tcp: bool, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, err) = dig(prefix, "127.0.0.1", port, name, tcp);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dig {name} (tcp={tcp}): {got:?}, want {want:?}; {err}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_image_holds_a_static_nonroot_binary_with_only_cap_net_bind_service() {
    let Some(root) = rootfs() else { return };
    let bin = root.join("clusterdns");
    // Static: no program interpreter (PT_INTERP) to look for in an image that has no libc.
    let elf = Command::new("readelf")
        .arg("-l")
        .arg(&bin)
        .output()
        .expect("readelf");
    let headers = String::from_utf8_lossy(&elf.stdout);
    assert!(elf.status.success(), "readelf {}", bin.display());
    assert!(
        !headers.contains("program interpreter"),
        "{} is dynamically linked: {headers}",
        bin.display()
    );
    let caps = Command::new("getcap").arg(&bin).output().expect("getcap");
    let caps = String::from_utf8_lossy(&caps.stdout);
    assert!(
        caps.contains("cap_net_bind_service=ep"),
        "the binary must carry cap_net_bind_service=ep (and nothing else): {caps:?}"
    );
    assert!(
        !caps.contains(','),
        "more than one file capability: {caps:?}"
    );
    // Only what the image is meant to hold.
    let mut files = BTreeSet::new();
    for entry in walk(&root) {
        // The kubeconfig test's directory, if it runs at the same time.
        if entry
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .starts_with("kubeconfig-")
        {
            continue;
        }
        files.insert(
            entry
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        );
    }
    let want: BTreeSet<String> = [
        "clusterdns",
        "etc/passwd",
        "etc/group",
        "etc/ssl/certs/ca-certificates.crt",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(files, want, "files in the image");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(passwd.contains(&format!("nonroot:x:{NONROOT}:{NONROOT}:")));
    // The image config built beside it: runs as the non-root user.
    let config =
        std::fs::read_to_string(Path::new(REPO).join("target/clusterdns-image/config.txt"))
            .unwrap_or_default();
    if !config.is_empty() {
        assert!(
            config.starts_with(&format!("{NONROOT}:{NONROOT} ")),
            "{config}"
        );
    }
}

/// `(key, address)` of every code symbol of `bin`, the key as build/link-ordered computes it:
/// demangled, without `.llvm.N` suffixes and crate hashes.
fn code_symbols(bin: &Path) -> Vec<(String, u64)> {
    let nm = Command::new("nm")
        .args(["--defined-only", "-f", "posix"])
        .arg(bin)
        .output()
        .expect("nm (binutils)");
    assert!(nm.status.success(), "nm {}", bin.display());
    let mut syms = Vec::new();
    for line in String::from_utf8_lossy(&nm.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 3 && matches!(f[1], "t" | "T" | "W" | "w") {
            let name = f[0].split(".llvm.").next().unwrap().to_string();
            syms.push((name, u64::from_str_radix(f[2], 16).unwrap()));
        }
    }
    let mut filt = Command::new("c++filt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("c++filt (binutils)");
    let input: String = syms.iter().map(|(n, _)| format!("{n}\n")).collect();
    let mut stdin = filt.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(input.as_bytes()).unwrap();
    });
    let out = filt.wait_with_output().unwrap();
    writer.join().unwrap();
    let demangled = String::from_utf8_lossy(&out.stdout);
    let keys: Vec<String> = demangled.lines().map(without_crate_hashes).collect();
    assert_eq!(keys.len(), syms.len(), "c++filt: one line per symbol");
    keys.into_iter()
        .zip(syms)
        .map(|(k, (_, addr))| (k, addr))
        .collect()
}

/// `core[c1f1a4ba060b9bfa]::str` -> `core::str`.
fn without_crate_hashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('[') {
        let tail = &rest[i + 1..];
        let hex = tail
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(tail.len());
        out.push_str(&rest[..i]);
        if hex > 0 && tail[hex..].starts_with(']') {
            rest = &tail[hex + 1..];
        } else {
            out.push('[');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The image's binary is linked by build/link-ordered: the functions build/code-order.txt lists
/// (what `serve` and `sidecar` run) sit together at the start of .text instead of being spread
/// over its 26 MB, so each process keeps a few MiB less code resident (bench/RESULTS.md).
#[test]
fn the_image_binary_places_the_code_it_runs_first() {
    if rootfs().is_none() {
        return;
    }
    // The unstripped binary the image's was stripped from (.ci/build-image).
    let bin = Path::new(REPO).join("target/x86_64-unknown-linux-gnu/image/clusterdns");
    let list = std::fs::read_to_string(Path::new(REPO).join("build/code-order.txt")).unwrap();
    let hottest: BTreeSet<&str> = list
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains("::"))
        .take(300)
        .collect();
    let sections = Command::new("readelf")
        .args(["-S", "-W"])
        .arg(&bin)
        .output()
        .expect("readelf");
    let sections = String::from_utf8_lossy(&sections.stdout);
    let text = sections
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let i = f.iter().position(|w| *w == ".text")?;
            u64::from_str_radix(f.get(i + 2)?, 16).ok()
        })
        .expect(".text in readelf -S");
    let found: Vec<u64> = code_symbols(&bin)
        .into_iter()
        .filter(|(k, _)| hottest.contains(k.as_str()))
        .map(|(_, addr)| addr - text)
        .collect();
    assert!(
        found.len() >= hottest.len() * 3 / 4,
        "only {} of the {} hottest functions of build/code-order.txt are in {}: regenerate it \
         (bench/code_order.py)",
        found.len(),
        hottest.len(),
        bin.display()
    );
    // In the linker's own order they are spread over the whole .text (26 MB); placed first,
    // all of them lie within the few MiB the listed functions take.
    let far: Vec<u64> = found.iter().copied().filter(|o| *o >= 4 << 20).collect();
    assert!(
        far.is_empty(),
        "{} of the hottest functions lie beyond the first 4 MiB of .text (offsets {:x?}): \
         the binary was not linked by build/link-ordered",
        far.len(),
        &far[..far.len().min(10)]
    );
}

/// Regular files under `dir`, recursively.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The embedded demo on port 53, as the image's non-root user, in a network namespace of its
/// own: binding 53 works only through the binary's file capability.
#[test]
fn the_image_serves_the_demo_on_port_53_as_nonroot() {
    let Some(root) = rootfs() else { return };
    let ok = Command::new("unshare")
        .args(["--net", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(ok || !ci, "unshare --net failed (CI=true): needs root");
    if !ok {
        eprintln!("skipped: cannot create a network namespace");
        return;
    }
    let child = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(concat!(
            r#"ip link set lo up && exec chroot --userspec=65532:65532 "$0" /clusterdns "#,
            "serve --dns-addr 127.0.0.1:53 --upstream none"
        ))
        .arg(&root)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("unshare");
    let mut server = Running(child);
    wait_for_line(
        &mut server.0,
        "serving DNS on 127.0.0.1:53",
        Duration::from_secs(20),
    );
    let pid = server.0.id();
    assert_eq!(uids(pid), vec![NONROOT; 4], "runs as the image's user");
    let ns = ["nsenter", "--target", &pid.to_string(), "--net"];
    let prefix: Vec<&str> = ns.to_vec();
    until_answer(
        &prefix,
        53,
        "nginx.demo.svc.cluster.local",
        false,
        "10.100.12.34",
    );
    until_answer(
        &prefix,
        53,
        "nginx.demo.svc.cluster.local",
        true,
        "10.100.12.34",
    );
}

/// From a kubeconfig: the fake API server runs in this process, the kubeconfig is written
/// into the root filesystem, and the chrooted binary follows the API; a new Service shows up
/// in its answers. Every request it made is one the base ClusterRole grants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_image_follows_the_api_from_a_kubeconfig() {
    let Some(root) = rootfs() else { return };
    let api = ApiServer::start().await;
    api.apply_all([
        namespace("demo"),
        service("demo", "web", "10.96.0.20"),
        slice("demo", "web-abc", "web", &["10.1.0.7"]),
    ]);
    // Inside the root filesystem, readable by the image's user; removed on drop.
    let dir = tempfile::Builder::new()
        .prefix("kubeconfig-")
        .tempdir_in(&root)
        .expect("tempdir in the rootfs");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("kubeconfig");
    std::fs::write(&file, api.kubeconfig()).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let inside = Path::new("/").join(file.strip_prefix(&root).unwrap());

    let child = Command::new("chroot")
        .arg(format!("--userspec={NONROOT}:{NONROOT}"))
        .arg(&root)
        .arg("/clusterdns")
        .args(["serve", "--kubeconfig"])
        .arg(&inside)
        .args([
            "--dns-addr",
            "127.0.0.1:0",
            "--upstream",
            "none",
            "--pods",
            "verified",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("chroot");
    let mut server = Running(child);
    let pid = server.0.id();
    // Blocking reads off the runtime's workers.
    let line = tokio::task::block_in_place(|| {
        wait_for_line(&mut server.0, "serving DNS on", Duration::from_secs(20))
    });
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    assert_eq!(uids(pid), vec![NONROOT; 4], "runs as the image's user");
    tokio::task::block_in_place(|| {
        until_answer(
            &[],
            addr.port(),
            "web.demo.svc.cluster.local",
            false,
            "10.96.0.20",
        )
    });
    // A watch that ends with 410 Gone: the retry waits a jittered backoff (random numbers,
    // which a static binary must get without /dev/urandom: the root filesystem has no /dev),
    // relists, and carries on.
    api.compact();
    api.expire_watches();
    api.apply(service("demo", "api", "10.96.0.21"));
    tokio::task::block_in_place(|| {
        until_answer(
            &[],
            addr.port(),
            "api.demo.svc.cluster.local",
            true,
            "10.96.0.21",
        )
    });

    // Least privilege, end to end: what the binary asked the API is what RBAC grants.
    let granted = base_clusterrole_grants();
    let asked = api.requests();
    assert!(!asked.is_empty());
    for request in &asked {
        let grant = grant_for(request)
            .unwrap_or_else(|| panic!("request {request:?} is not a list or watch"));
        assert!(
            granted.contains(&grant),
            "request {request:?} needs {grant:?}, which manifests/base's ClusterRole lacks"
        );
    }
    drop(server);
}

type Grant = (String, String, String);

/// (group, resource, verb) of a collection GET such as `GET /apis/discovery.k8s.io/v1/
/// endpointslices?watch=true&...`.
fn grant_for(request: &str) -> Option<Grant> {
    let (method, rest) = request.split_once(' ')?;
    if method != "GET" {
        return None;
    }
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, tail) = match parts.as_slice() {
        ["api", _version, tail @ ..] => ("", tail),
        ["apis", group, _version, tail @ ..] => (*group, tail),
        _ => return None,
    };
    // Cluster-wide collections only: `namespaces` itself, or `<resource>`.
    let resource = match tail {
        [resource] => *resource,
        _ => return None,
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = if watch { "watch" } else { "list" };
    Some((group.into(), resource.into(), verb.into()))
}

fn base_clusterrole_grants() -> BTreeSet<Grant> {
    let text = std::fs::read_to_string(Path::new(REPO).join("manifests/base/rbac.yaml")).unwrap();
    let mut out = BTreeSet::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v = <serde_json::Value as serde::Deserialize>::deserialize(doc).unwrap();
        if v["kind"] != "ClusterRole" {
            continue;
        }
        let role: k8s_openapi::api::rbac::v1::ClusterRole = serde_json::from_value(v).unwrap();
        for rule in role.rules.into_iter().flatten() {
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        out.insert((g.clone(), r.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no ClusterRole in manifests/base/rbac.yaml"
    );
    out
}

#[test]
fn requests_map_to_rbac_grants() {
    let g = |a: &str, b: &str, c: &str| Some((a.to_string(), b.to_string(), c.to_string()));
    assert_eq!(
        grant_for("GET /api/v1/namespaces?limit=500"),
        g("", "namespaces", "list")
    );
    assert_eq!(
        grant_for("GET /apis/discovery.k8s.io/v1/endpointslices?allowWatchBookmarks=true&watch=true&resourceVersion=3"),
        g("discovery.k8s.io", "endpointslices", "watch")
    );
    assert_eq!(grant_for("GET /api/v1/namespaces/demo/secrets/x"), None);
    assert_eq!(grant_for("POST /api/v1/services"), None);
}
