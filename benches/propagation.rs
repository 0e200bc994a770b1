//! Propagation, memory and start-up through the Kubernetes API source (issue 7, items 4 and 5).
//!
//! Starts the fake API server of `tests/support` on 127.0.0.1, loads a synthetic cluster into
//! it, runs clusterdns in this process against it (`--kubeconfig`), and measures:
//! - start to ready (`/ready` 200 and the last service answering) and RSS (`VmRSS` of this
//!   process, so it includes the fake API server: its share is measured before clusterdns
//!   starts and reported separately);
//! - under a background UDP load of `--qps` queries/s on ClusterIP names, `--changes` changes
//!   (alternately a new service with a cluster IP, and an EndpointSlice whose address moves),
//!   each timed from `apply()` to the first DNS answer showing it (UDP polls 0.5 ms apart).
//!
//! ```text
//! cargo bench --bench propagation -- --services 1000 --pods 10000 [--qps 5000]
//!     [--changes 1000] [--json FILE]
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clusterdns::app::{self, ServeOptions};
use serde_json::{json, Value};
use support::apiserver::ApiServer;
use support::{namespace, pod, service, slice};
use tokio::net::UdpSocket;

struct Args {
    services: usize,
    pods: usize,
    qps: u64,
    changes: usize,
    json: Option<String>,
    seed: u64,
}

fn args() -> Args {
    let mut a = Args {
        services: 1000,
        pods: 10000,
        qps: 5000,
        changes: 1000,
        json: None,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--services" => a.services = val().parse().expect("--services N"),
            "--pods" => a.pods = val().parse().expect("--pods M"),
            "--qps" => a.qps = val().parse().expect("--qps N"),
            "--changes" => a.changes = val().parse().expect("--changes N"),
            "--seed" => a.seed = val().parse().expect("--seed N"),
            "--json" => a.json = Some(val()),
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Index `i` inside a /12-sized block starting at `base`.
fn ip_in(base: [u8; 2], i: usize) -> Ipv4Addr {
    let i = i as u32;
    Ipv4Addr::new(base[0], base[1] + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

const ZONE: &str = "cluster.local";
const NAMESPACES: usize = 20;

struct Cluster {
    /// (namespace, service name) of every ClusterIP service.
    services: Vec<(String, String)>,
    /// Endpoint addresses per service (index-aligned with `services`).
    endpoints: Vec<Vec<Ipv4Addr>>,
    objects: Vec<Value>,
}

/// Services in `NAMESPACES` namespaces, 2-10 endpoints each (a few larger), endpoint
/// addresses taken from the pods, the remaining pods backing no service.
fn generate(a: &Args) -> Cluster {
    let mut rng = Rng(a.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut objects = Vec::with_capacity(a.services * 2 + a.pods + NAMESPACES);
    for n in 0..NAMESPACES {
        objects.push(namespace(&format!("ns-{n}")));
    }
    let mut services = Vec::with_capacity(a.services);
    let mut endpoints = Vec::with_capacity(a.services);
    let mut next_pod = 0usize;
    for s in 0..a.services {
        let ns = format!("ns-{}", s % NAMESPACES);
        let name = format!("svc-{s}");
        objects.push(service(&ns, &name, &ip_in([10, 96], s + 10).to_string()));
        let n = if rng.below(20) == 0 {
            10 + rng.below(40) as usize
        } else {
            2 + rng.below(9) as usize
        };
        let mut addrs = Vec::with_capacity(n);
        for _ in 0..n {
            let p = next_pod % a.pods.max(1);
            next_pod += 1;
            let ip = ip_in([10, 128], p + 10);
            if next_pod <= a.pods {
                let mut o = pod(&ns, &format!("{name}-{p}"), &ip.to_string());
                o["metadata"]["labels"] = json!({"app": name});
                objects.push(o);
            }
            addrs.push(ip);
        }
        let strs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let refs: Vec<&str> = strs.iter().map(String::as_str).collect();
        objects.push(slice(&ns, &format!("{name}-abcde"), &name, &refs));
        services.push((ns, name));
        endpoints.push(addrs);
    }
    for p in next_pod..a.pods {
        let ns = format!("ns-{}", p % NAMESPACES);
        let ip = ip_in([10, 128], p + 10);
        objects.push(pod(&ns, &format!("idle-{p}"), &ip.to_string()));
    }
    Cluster {
        services,
        endpoints,
        objects,
    }
}

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
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

/// NOERROR with an A record carrying `ip` (rdlength 4 + the address).
fn answers_with(resp: &[u8], id: u16, ip: Ipv4Addr) -> bool {
    if resp.len() < 12 || resp[0..2] != id.to_be_bytes() || resp[3] & 0x0f != 0 {
        return false;
    }
    let o = ip.octets();
    let needle = [0, 4, o[0], o[1], o[2], o[3]];
    resp.windows(6).any(|w| w == needle)
}

async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Sends `qps` queries/s (in 1 ms batches) for random ClusterIP names until `stop`; counts
/// answers. Returns (sent, answered).
fn background_load(
    dns: SocketAddr,
    names: Arc<Vec<String>>,
    qps: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        if qps == 0 {
            return (0, 0);
        }
        let sock = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind load socket"),
        );
        sock.connect(dns).await.expect("connect load socket");
        let answered = Arc::new(AtomicU64::new(0));
        let rx = {
            let (sock, answered, stop) = (sock.clone(), answered.clone(), stop.clone());
            tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(Duration::from_millis(100), sock.recv(&mut buf)).await
                    {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        };
        let packets: Vec<Vec<u8>> = names.iter().map(|n| query(0, n)).collect();
        let mut rng = Rng(0x1234_5678);
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * qps as f64) as u64;
            while sent < due {
                let p = &packets[rng.below(packets.len() as u64) as usize];
                let _ = sock.try_send(p);
                sent += 1;
            }
        }
        let _ = rx.await;
        (sent, answered.load(Ordering::Relaxed))
    })
}

fn pct(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    Some(sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)])
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    // Before the objects exist: the API server's share includes the objects it stores.
    let rss_base = rss_kib();
    let t_gen = Instant::now();
    let cluster = generate(&a);
    let n_objects = cluster.objects.len();
    eprintln!(
        "propagation: {} services, {} pods, {} objects generated in {:.1} s",
        a.services,
        a.pods,
        n_objects,
        t_gen.elapsed().as_secs_f64()
    );
    let api = ApiServer::start().await;
    api.apply_all(cluster.objects);
    let rss_api = rss_kib();
    eprintln!("propagation: API server loaded, RSS {} MiB", rss_api / 1024);

    let t0 = Instant::now();
    let server = app::start(ServeOptions {
        kubeconfig: Some(api.kubeconfig_path()),
        dns_addr: "127.0.0.1:0".parse().unwrap(),
        ..ServeOptions::default()
    })
    .await
    .expect("clusterdns starts against the fake API server");
    let dns = server.dns_addr;
    let ready = server.http_addr("ready").expect("ready endpoint");
    let poll = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    poll.connect(dns).await.expect("connect");
    let (last_ns, last_name) = cluster
        .services
        .last()
        .expect("at least one service")
        .clone();
    let last_ip = ip_in([10, 96], cluster.services.len() - 1 + 10);
    let last_fqdn = format!("{last_name}.{last_ns}.svc.{ZONE}");
    let mut id = 1u16;
    loop {
        if t0.elapsed() > Duration::from_secs(300) {
            panic!("clusterdns not ready after 300 s");
        }
        if http_status(ready, "/ready").await == 200
            && probe(&poll, &mut id, &last_fqdn, last_ip).await
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ready_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_total = rss_kib();
    eprintln!(
        "propagation: ready after {ready_s:.2} s; RSS {} MiB (API server and objects {} MiB)",
        rss_total / 1024,
        (rss_api - rss_base) / 1024
    );

    let names: Arc<Vec<String>> = Arc::new(
        cluster
            .services
            .iter()
            .map(|(ns, n)| format!("{n}.{ns}.svc.{ZONE}"))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = background_load(dns, names, a.qps, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut rng = Rng(a.seed ^ 0xdead_beef);
    let mut created = Vec::new();
    let mut moved = Vec::new();
    let mut timeouts = (0usize, 0usize);
    let mut endpoints = cluster.endpoints;
    let run_start = Instant::now();
    for i in 0..a.changes {
        // Changes land at random phases of whatever batching the source does.
        tokio::time::sleep(Duration::from_micros(rng.below(20_000))).await;
        let (fqdn, ip, t0) = if i % 2 == 0 {
            let ip = ip_in([10, 112], i + 10);
            let ns = format!("ns-{}", i % NAMESPACES);
            let name = format!("prop-{i}");
            let t0 = Instant::now();
            api.apply(service(&ns, &name, &ip.to_string()));
            (format!("{name}.{ns}.svc.{ZONE}"), ip, t0)
        } else {
            let s = rng.below(cluster.services.len() as u64) as usize;
            let (ns, name) = &cluster.services[s];
            let ip = ip_in([10, 144], i + 10);
            let addrs = &mut endpoints[s];
            let k = rng.below(addrs.len() as u64) as usize;
            addrs[k] = ip;
            let strs: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
            let refs: Vec<&str> = strs.iter().map(String::as_str).collect();
            let obj = slice(ns, &format!("{name}-abcde"), name, &refs);
            let o = ip.octets();
            let fqdn = format!("{}-{}-{}-{}.{name}.{ns}.svc.{ZONE}", o[0], o[1], o[2], o[3]);
            let t0 = Instant::now();
            api.apply(obj);
            (fqdn, ip, t0)
        };
        let mut seen = false;
        while t0.elapsed() < Duration::from_secs(10) {
            if probe(&poll, &mut id, &fqdn, ip).await {
                seen = true;
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        match (i % 2 == 0, seen) {
            (true, true) => created.push(ms),
            (false, true) => moved.push(ms),
            (true, false) => timeouts.0 += 1,
            (false, false) => timeouts.1 += 1,
        }
    }
    let run_s = run_start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (sent, answered) = load.await.expect("load task");
    server.shutdown().await;

    let mut all: Vec<f64> = created.iter().chain(moved.iter()).copied().collect();
    let stats = |v: &mut Vec<f64>, timeouts: usize| {
        v.sort_by(|a, b| a.total_cmp(b));
        json!({
            "changes": v.len() + timeouts,
            "timeouts": timeouts,
            "p50_ms": pct(v, 0.5),
            "p99_ms": pct(v, 0.99),
            "max_ms": v.last(),
        })
    };
    let load_secs = run_s + 0.5;
    let result = json!({
        "source": "api (tests/support fake API server, in-process)",
        "services": a.services,
        "pods": a.pods,
        "objects": n_objects,
        "ready_s": ready_s,
        "rss_kib_total": rss_total,
        "rss_kib_api_server": rss_api - rss_base,
        "rss_kib_clusterdns": rss_total.saturating_sub(rss_api),
        "rss_note": "VmRSS of the bench process: api_server = after loading the objects minus \
                     before generating them; clusterdns = total minus after loading; the \
                     process baseline (binary, runtime: rss_kib_baseline) is in neither share",
        "rss_kib_baseline": rss_base,
        "load_qps_target": a.qps,
        "load_qps_sent": sent as f64 / load_secs,
        "load_answered_fraction": if sent > 0 { answered as f64 / sent as f64 } else { 0.0 },
        "propagation": stats(&mut all, timeouts.0 + timeouts.1),
        "propagation_new_service": stats(&mut created, timeouts.0),
        "propagation_endpoint_update": stats(&mut moved, timeouts.1),
    });
    print_markdown(&result);
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&result).unwrap()).expect("write --json");
    }
}

/// One UDP poll (50 ms timeout): does `fqdn` answer A `ip`?
async fn probe(sock: &UdpSocket, id: &mut u16, fqdn: &str, ip: Ipv4Addr) -> bool {
    *id = id.wrapping_add(1);
    let q = query(*id, fqdn);
    if sock.send(&q).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 1500];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
    loop {
        match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
            Ok(Ok(n)) if buf[..n.min(2)] == id.to_be_bytes() => {
                return answers_with(&buf[..n], *id, ip)
            }
            Ok(Ok(_)) => continue, // a late answer to an earlier poll
            _ => return false,
        }
    }
}

fn print_markdown(r: &Value) {
    let f = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.1}"));
    println!(
        "\n### API source: {} services / {} pods ({} objects)\n",
        r["services"], r["pods"], r["objects"]
    );
    println!("| ready after | RSS total | of which fake API server | clusterdns |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {:.2} s | {:.1} MiB | {:.1} MiB | {:.1} MiB |\n",
        r["ready_s"].as_f64().unwrap_or(0.0),
        r["rss_kib_total"].as_f64().unwrap_or(0.0) / 1024.0,
        r["rss_kib_api_server"].as_f64().unwrap_or(0.0) / 1024.0,
        r["rss_kib_clusterdns"].as_f64().unwrap_or(0.0) / 1024.0,
    );
    println!(
        "Propagation (apply() to first answer) under {:.0} queries/s of background load \
         ({:.1}% answered):\n",
        r["load_qps_sent"].as_f64().unwrap_or(0.0),
        r["load_answered_fraction"].as_f64().unwrap_or(0.0) * 100.0
    );
    println!("| change | count | p50 | p99 | max | timeouts |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (label, key) in [
        ("all", "propagation"),
        ("new service", "propagation_new_service"),
        ("EndpointSlice address", "propagation_endpoint_update"),
    ] {
        let p = &r[key];
        println!(
            "| {label} | {} | {} ms | {} ms | {} ms | {} |",
            p["changes"],
            f(&p["p50_ms"]),
            f(&p["p99_ms"]),
            f(&p["max_ms"]),
            p["timeouts"]
        );
    }
}
