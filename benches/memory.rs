//! Memory of the Kubernetes API source against the file source on the same objects (issue 17).
//!
//! Generates a cluster with `clusterdns gen-cluster`'s generator, writes it as one JSON
//! `v1/List` (what `kubectl get -o json` prints) and loads the same objects into the fake API
//! server of `tests/support` (with `managedFields`, which a real API server sends and kubectl
//! hides). Then runs the release `clusterdns serve` binary as a child process once per
//! variant: `--manifests FILE`, and `--kubeconfig` (also with extra environment, e.g.
//! `MALLOC_ARENA_MAX=2`). Each child is measured on its own: `VmRSS` 1 s and 5 s after it is
//! ready (`/ready` 200 and the last ClusterIP service answering), `VmHWM` (peak), and under a
//! closed-loop UDP load of ClusterIP queries, queries/s and CPU (utime + stime) per query.
//! The variants run one after the other in the same run, so their ratios are comparable on a
//! shared machine; absolute QPS and CPU figures are not.
//!
//! ```text
//! cargo bench --bench memory -- --services 5000 --pods 25000 [--no-pods] [--seed 1]
//!     [--load-secs 5] [--env KEY=VAL ...] [--json FILE] [--hold] [--prefer-close]
//! ```
//! `--no-pods` keeps the endpoints (addresses taken from the pods) but drops the Pod objects.
//! `--prefer-close` makes every headless Service `trafficDistribution: PreferClose`, so both
//! sources keep the pod IP -> node map of zone-aware answers (issue 14).
//! `--env KEY=VAL` adds an API-source variant with that environment (repeatable, comma
//! separated for several variables). `--hold` keeps the fake API server up after the run and
//! prints its kubeconfig (for a heap profiler run by hand). `--bin LABEL=PATH` also measures
//! another build of clusterdns (say, the commit before a change) in the same run, first;
//! `--only-bins` measures only those (not the bench's own build, a debug binary under
//! `cargo test --bench memory`). `--env-all` gives every `--env` variant a file-source run
//! too (for allocator settings, which apply to both sources).
//! The fake API server offers streaming lists (`sendInitialEvents`), as Kubernetes 1.32 and
//! 1.34+ do, so the API source streams; `--env CLUSTERDNS_INITIAL_LIST=paged` adds a variant
//! with paged lists, and `--refuse-streaming` makes the server refuse them (422, as 1.33).

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterdns::cluster::objects::ObjectSet;
use clusterdns::gen::{write_cluster, GenArgs};
use serde_json::{json, Map, Value};
use support::apiserver::{ApiServer, WatchList};

struct Args {
    services: usize,
    pods: usize,
    no_pods: bool,
    prefer_close: bool,
    seed: u64,
    load_secs: u64,
    envs: Vec<Vec<(String, String)>>,
    json: Option<String>,
    hold: bool,
    /// Other builds to measure beside this one's: (label, binary).
    bins: Vec<(String, String)>,
    only_bins: bool,
    env_all: bool,
    refuse_streaming: bool,
}

fn args() -> Args {
    let mut a = Args {
        services: 5000,
        pods: 25000,
        no_pods: false,
        prefer_close: false,
        seed: 1,
        load_secs: 5,
        envs: Vec::new(),
        json: None,
        hold: false,
        bins: Vec::new(),
        only_bins: false,
        env_all: false,
        refuse_streaming: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--services" => a.services = val().parse().expect("--services N"),
            "--pods" => a.pods = val().parse().expect("--pods M"),
            "--no-pods" => a.no_pods = true,
            "--prefer-close" => a.prefer_close = true,
            "--seed" => a.seed = val().parse().expect("--seed N"),
            "--load-secs" => a.load_secs = val().parse().expect("--load-secs N"),
            "--env" => {
                // Comma separated; a piece without `=` continues the previous value (a
                // jemalloc `_RJEM_MALLOC_CONF` is itself a comma-separated list).
                let mut env: Vec<(String, String)> = Vec::new();
                for piece in val().split(',') {
                    match (piece.split_once('='), env.last_mut()) {
                        (Some((k, v)), _) => env.push((k.to_string(), v.to_string())),
                        (None, Some((_, v))) => {
                            v.push(',');
                            v.push_str(piece);
                        }
                        (None, None) => panic!("--env KEY=VAL"),
                    }
                }
                a.envs.push(env);
            }
            "--json" => a.json = Some(val()),
            "--hold" => a.hold = true,
            "--bin" => {
                let v = val();
                let (label, path) = v.split_once('=').expect("--bin LABEL=PATH");
                a.bins.push((label.to_string(), path.to_string()));
            }
            "--only-bins" => a.only_bins = true,
            "--env-all" => a.env_all = true,
            "--refuse-streaming" => a.refuse_streaming = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// The generated cluster as JSON objects (apiVersion and kind included), and the name and
/// address of a ClusterIP service to wait for.
fn generate(a: &Args) -> (Vec<Value>, Vec<(String, String)>) {
    let mut yaml = Vec::new();
    let gen = GenArgs {
        services: a.services,
        pods: a.pods,
        seed: a.seed,
        namespaces: None,
        prefer_close: a.prefer_close,
        client_pod: None,
    };
    write_cluster(&gen, &mut yaml).expect("generate");
    let text = String::from_utf8(yaml).expect("utf-8");
    let mut set = ObjectSet::default();
    set.add_text(&text, Path::new("generated.yaml"))
        .expect("the generated cluster parses");
    drop(text);
    let mut objects = Vec::new();
    let mut push = |v: Value| objects.push(v);
    set.namespaces.iter().for_each(|o| push(to_json(o)));
    set.nodes.iter().for_each(|o| push(to_json(o)));
    let mut names = Vec::new();
    for s in &set.services {
        let spec = s.spec.as_ref();
        if let (Some(ip), Some(name), Some(ns)) = (
            spec.and_then(|s| s.cluster_ip.as_deref())
                .filter(|ip| *ip != "None"),
            s.metadata.name.as_deref(),
            s.metadata.namespace.as_deref(),
        ) {
            names.push((format!("{name}.{ns}.svc.cluster.local"), ip.to_string()));
        }
        push(to_json(s));
    }
    set.endpoint_slices.iter().for_each(|o| push(to_json(o)));
    if !a.no_pods {
        set.pods.iter().for_each(|o| push(to_json(o)));
    }
    (objects, names)
}

fn to_json<T: serde::Serialize>(o: &T) -> Value {
    serde_json::to_value(o).expect("serialise")
}

/// What a real API server adds and `kubectl get -o json` shows: uid and creationTimestamp.
fn with_metadata(mut o: Value, i: usize) -> Value {
    let m = &mut o["metadata"];
    m["uid"] = json!(format!("{:08x}-7c1e-4d2a-9f3b-{:012x}", i, i * 7919));
    m["creationTimestamp"] = json!("2026-11-30T08:00:00Z");
    o
}

/// What only the API sends (kubectl hides it since 1.21): `managedFields`, one entry whose
/// `fieldsV1` mirrors the object's own fields, as a controller's update records them.
fn with_managed_fields(mut o: Value) -> Value {
    fn fields(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut out = Map::new();
                out.insert(".".into(), json!({}));
                for (k, v) in m {
                    out.insert(format!("f:{k}"), fields(v));
                }
                Value::Object(out)
            }
            Value::Array(items) => {
                let mut out = Map::new();
                for (i, item) in items.iter().enumerate() {
                    let key = match item {
                        Value::Object(m) => match m.iter().next() {
                            Some((k, v)) => format!("k:{{\"{k}\":{v}}}"),
                            None => format!("i:{i}"),
                        },
                        other => format!("v:{other}"),
                    };
                    out.insert(key, fields(item));
                }
                Value::Object(out)
            }
            _ => json!({}),
        }
    }
    let mut body = Map::new();
    for key in ["spec", "status", "endpoints", "ports", "addressType"] {
        if let Some(v) = o.get(key) {
            body.insert(format!("f:{key}"), fields(v));
        }
    }
    if let Some(labels) = o["metadata"].get("labels") {
        body.insert("f:metadata".into(), json!({"f:labels": fields(labels)}));
    }
    let manager = match o["kind"].as_str() {
        Some("Pod") => "kubelet",
        Some("EndpointSlice") => "endpointslice-controller",
        _ => "kubectl-client-side-apply",
    };
    o["metadata"]["managedFields"] = json!([{
        "manager": manager,
        "operation": "Update",
        "apiVersion": o["apiVersion"],
        "time": "2026-11-30T08:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": Value::Object(body),
    }]);
    o
}

fn free_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12) // utime, stime (fields 14 and 15 of stat)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf reads a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// A DNS query for `name` (type A, RD, no EDNS).
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn answers_with(resp: &[u8], id: u16, ip: &str) -> bool {
    let Ok(std::net::IpAddr::V4(ip)) = ip.parse() else {
        return false;
    };
    if resp.len() < 12 || resp[0..2] != id.to_be_bytes() || resp[3] & 0x0f != 0 {
        return false;
    }
    let o = ip.octets();
    let needle = [0, 4, o[0], o[1], o[2], o[3]];
    resp.windows(6).any(|w| w == needle)
}

fn http_status(addr: SocketAddr, path: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// (binary, label, source flags, environment)
type Variant = (String, String, Vec<String>, Vec<(String, String)>);

struct Running {
    child: Child,
    dns: SocketAddr,
    ready: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `clusterdns serve` on free ports; reads the ports from its banner.
fn start(bin: &str, source: &[String], envs: &[(String, String)], log: &Path) -> Running {
    let mut cmd = Command::new(bin);
    cmd.args(["serve", "--dns-addr", "127.0.0.1:0", "--upstream", "none"])
        .args(["--log", "warn"])
        .args(source)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log file"));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn clusterdns");
    let stdout = child.stdout.take().expect("stdout");
    let mut dns = None;
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix("clusterdns: serving DNS on ") {
            dns = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if let Some(rest) = line.strip_prefix("clusterdns: serving ready on http://") {
            ready = rest.trim().parse().ok();
        }
        if dns.is_some() && ready.is_some() {
            break;
        }
    }
    match (dns, ready) {
        (Some(dns), Some(ready)) => Running { child, dns, ready },
        _ => panic!(
            "clusterdns printed no DNS/ready address: see {}",
            log.display()
        ),
    }
}

/// Closed-loop load: `window` queries outstanding, for `secs`; answered queries/s and the
/// child's CPU µs per answered query.
fn load(r: &Running, names: &[(String, String)], secs: u64) -> (f64, f64) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(r.dns).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let packets: Vec<Vec<u8>> = names.iter().map(|(n, _)| query(0, n)).collect();
    let window = 32;
    let mut next = 0usize;
    let mut send = |sock: &UdpSocket| {
        let _ = sock.send(&packets[next % packets.len()]);
        next = next.wrapping_add(7919);
    };
    let cpu0 = cpu_ticks(r.child.id());
    let t0 = Instant::now();
    for _ in 0..window {
        send(&sock);
    }
    let mut answered = 0u64;
    let mut buf = [0u8; 1500];
    while t0.elapsed() < Duration::from_secs(secs) {
        match sock.recv(&mut buf) {
            Ok(_) => {
                answered += 1;
                send(&sock);
            }
            // Lost: refill the window.
            Err(_) => (0..window).for_each(|_| send(&sock)),
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(r.child.id()) - cpu0) as f64 / clk_tck();
    let qps = answered as f64 / elapsed;
    (qps, cpu * 1e6 / answered.max(1) as f64)
}

#[allow(clippy::too_many_arguments)]
fn measure(
    bin: &str,
    label: &str,
    source: &[String],
    envs: &[(String, String)],
    probe: &(String, String),
    names: &[(String, String)],
    a: &Args,
    dir: &Path,
) -> Value {
    let log = dir.join(format!("{}.log", label.replace([' ', '=', ','], "_")));
    let t0 = Instant::now();
    let r = start(bin, source, envs, &log);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(r.dns).expect("connect");
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let mut id = 0u16;
    let mut buf = [0u8; 1500];
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "{label}: not ready after 300 s (see {})",
            log.display()
        );
        if http_status(r.ready, "/ready") == 200 {
            id = id.wrapping_add(1);
            let _ = sock.send(&query(id, &probe.0));
            if let Ok(n) = sock.recv(&mut buf) {
                if answers_with(&buf[..n], id, &probe.1) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let ready_s = t0.elapsed().as_secs_f64();
    let pid = r.child.id();
    std::thread::sleep(Duration::from_secs(1));
    let rss_1s = free_kib(pid, "VmRSS:");
    std::thread::sleep(Duration::from_secs(4));
    let rss_5s = free_kib(pid, "VmRSS:");
    let (qps, cpu_us) = load(&r, names, a.load_secs);
    let rss_load = free_kib(pid, "VmRSS:");
    let hwm = free_kib(pid, "VmHWM:");
    let v = json!({
        "variant": label,
        "ready_s": ready_s,
        "rss_kib": rss_1s,
        "rss_kib_5s": rss_5s,
        "rss_kib_after_load": rss_load,
        "hwm_kib": hwm,
        "qps": qps,
        "cpu_us_per_query": cpu_us,
    });
    eprintln!("memory: {v}");
    v
}

fn mib(v: &Value) -> String {
    v.as_f64()
        .map_or("n/a".into(), |k| format!("{:.1} MiB", k / 1024.0))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().expect("temp dir");
    let (objects, names) = generate(&a);
    let probe = names.last().expect("a ClusterIP service").clone();
    let objects: Vec<Value> = objects
        .into_iter()
        .enumerate()
        .map(|(i, o)| with_metadata(o, i))
        .collect();
    let list = dir.path().join("cluster.json");
    std::fs::write(
        &list,
        serde_json::to_vec(&json!({"apiVersion": "v1", "kind": "List", "items": objects}))
            .expect("serialise"),
    )
    .expect("write the List");
    let n_objects = objects.len();
    let api = ApiServer::start().await;
    // As Kubernetes 1.32 and 1.34+ by default: the source's streaming lists are served.
    api.set_watch_list(if a.refuse_streaming {
        WatchList::Refused
    } else {
        WatchList::Offered
    });
    api.apply_all(objects.into_iter().map(with_managed_fields));
    eprintln!(
        "memory: {} services, {} pods{}, {n_objects} objects; list file {} MiB",
        a.services,
        a.pods,
        if a.no_pods {
            " (Pod objects dropped)"
        } else {
            ""
        },
        std::fs::metadata(&list).map_or(0, |m| m.len()) >> 20
    );
    let kubeconfig: PathBuf = api.kubeconfig_path();
    let file_source = vec!["--manifests".to_string(), list.display().to_string()];
    let api_source = vec!["--kubeconfig".to_string(), kubeconfig.display().to_string()];
    let mut bins = a.bins.clone();
    if !a.only_bins || bins.is_empty() {
        bins.push((String::new(), env!("CARGO_BIN_EXE_clusterdns").to_string()));
    }
    let mut variants: Vec<Variant> = Vec::new();
    for (bin_label, bin) in &bins {
        let name = |s: &str| {
            if bin_label.is_empty() {
                s.to_string()
            } else {
                format!("{s} ({bin_label})")
            }
        };
        variants.push((bin.clone(), name("file"), file_source.clone(), Vec::new()));
        variants.push((bin.clone(), name("api"), api_source.clone(), Vec::new()));
        for env in &a.envs {
            let label = env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            if a.env_all {
                variants.push((
                    bin.clone(),
                    name(&format!("file {label}")),
                    file_source.clone(),
                    env.clone(),
                ));
            }
            variants.push((
                bin.clone(),
                name(&format!("api {label}")),
                api_source.clone(),
                env.clone(),
            ));
        }
    }
    let d = dir.path().to_path_buf();
    let results = tokio::task::spawn_blocking(move || {
        variants
            .iter()
            .map(|(bin, label, source, env)| {
                measure(bin, label, source, env, &probe, &names, &a, &d)
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("measure");
    let a = args();
    let file = &results[0];
    println!(
        "\n### Memory, file source against API source: {} services / {} pods{}{} ({n_objects} objects)\n",
        a.services,
        a.pods,
        if a.no_pods { ", Pod objects left out" } else { "" },
        if a.prefer_close {
            ", headless Services PreferClose"
        } else {
            ""
        }
    );
    println!("| source | RSS after sync | RSS +5 s | peak (VmHWM) | vs file | ready after | QPS vs file | CPU/query vs file |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &results {
        let ratio = |k: &str| {
            format!(
                "{:.2}x",
                r[k].as_f64().unwrap_or(0.0) / file[k].as_f64().unwrap_or(1.0)
            )
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.2} s | {} | {} |",
            r["variant"].as_str().unwrap_or(""),
            mib(&r["rss_kib"]),
            mib(&r["rss_kib_5s"]),
            mib(&r["hwm_kib"]),
            ratio("rss_kib"),
            r["ready_s"].as_f64().unwrap_or(0.0),
            ratio("qps"),
            ratio("cpu_us_per_query"),
        );
    }
    if let Some(path) = &a.json {
        let out = json!({
            "services": a.services,
            "pods": a.pods,
            "pod_objects": !a.no_pods,
            "objects": n_objects,
            "variants": results,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&out).expect("json")).expect("write json");
    }
    if a.hold {
        println!(
            "\nfake API server up: --kubeconfig {} (Ctrl-C to stop)",
            kubeconfig.display()
        );
        let _ = tokio::signal::ctrl_c().await;
    }
}
