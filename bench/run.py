#!/usr/bin/env python3
"""clusterdns benchmarks against NSD and Knot DNS serving the same records (issue 7).

    python3 bench/run.py            # full run (about 15 minutes on 2 cores)
    python3 bench/run.py --quick    # smoke run (about 2 minutes)

Builds the release binary, generates synthetic clusters with `clusterdns gen-cluster`,
exports them with `clusterdns export-zone` for NSD and Knot, runs dnsperf with identical
settings against every server, and writes bench/results.json plus a Markdown table on stdout
(and to --md PATH). Installs nothing: a missing tool is named with the apt-get line to run, and
the script exits 2. Python 3 standard library only. Traffic goes to 127.0.0.1 only.
"""

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import reliability

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
ZONE = "cluster.local"
TOOLS = {"dnsperf": "dnsperf", "nsd": "nsd", "knotd": "knot", "taskset": "util-linux"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
MIXES = ["clusterip", "headless10", "srv", "ptr", "nxdomain", "external", "mix"]
MIX_TITLES = {
    "clusterip": "ClusterIP A",
    "headless10": "headless A (10 endpoints)",
    "srv": "SRV (named port)",
    "ptr": "PTR (service and endpoint IPs)",
    "nxdomain": "NXDOMAIN (search-path expansion)",
    "external": "external name, cache hit",
    "mix": "realistic mix",
}
# The realistic mix, in per cent: what a namespace of ndots:5 pods sends (most lookups of
# external names first walk the search path and fail).
MIX_WEIGHTS = {"clusterip": 35, "headless10": 8, "srv": 4, "ptr": 3, "nxdomain": 40, "external": 10}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# A minimal DNS client (start-up and propagation probes).


def dns_query(port, name, qtype=1, timeout=0.2, sock=None):
    """Returns (rcode, [A addresses]) or None on timeout."""
    qid = random.randint(0, 0xFFFF)
    pkt = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        pkt += bytes([len(label)]) + label.encode()
    pkt += b"\x00" + struct.pack(">HH", qtype, 1)
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(pkt, ("127.0.0.1", port))
        deadline = time.monotonic() + timeout
        while True:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            data, _ = s.recvfrom(4096)
            if len(data) >= 12 and struct.unpack(">H", data[:2])[0] == qid:
                break
    except (socket.timeout, OSError):
        return None
    finally:
        if own:
            s.close()
    rcode = data[3] & 0x0F
    an = struct.unpack(">H", data[6:8])[0]
    pos = 12

    def skip_name(p):
        while True:
            n = data[p]
            if n == 0:
                return p + 1
            if n & 0xC0 == 0xC0:
                return p + 2
            p += n + 1

    pos = skip_name(pos) + 4
    addrs = []
    for _ in range(an):
        pos = skip_name(pos)
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos : pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            addrs.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += rdlen
    return rcode, addrs


def free_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            u.close()
            t.close()
    raise RuntimeError("no free port")


# ---------------------------------------------------------------------------------------------
# Process accounting from /proc.


def tree_pids(root):
    """root and every descendant (NSD forks a server and xfrd process)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(root):
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def memory_kib(root):
    """(VmRSS summed, Pss summed, VmHWM of the root) in KiB over the process tree."""
    rss = pss = hwm = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                    elif line.startswith("VmHWM:") and pid == root:
                        hwm = int(line.split()[1])
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            continue
    return {"rss_kib": rss, "pss_kib": pss, "hwm_kib": hwm}


# ---------------------------------------------------------------------------------------------
# Servers.


class Server:
    def __init__(self, name, argv, port, workdir, cpus, probe):
        self.name, self.port, self.probe = name, port, probe
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.log = open(self.log_path, "w")
        if cpus:
            argv = ["taskset", "-c", cpus] + argv
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.ready_s = None

    def wait_ready(self, timeout):
        """Seconds from launch to the first answer with data for the probe name."""
        name, qtype = self.probe
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            while time.monotonic() - self.t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited: see {self.log_path}:\n{self.tail()}")
                r = dns_query(self.port, name, qtype, timeout=0.05, sock=sock)
                if r and r[0] == 0:
                    self.ready_s = time.monotonic() - self.t0
                    return self.ready_s
                time.sleep(0.005)
        finally:
            sock.close()
        raise RuntimeError(f"{self.name} not ready after {timeout}s: {self.log_path}:\n{self.tail()}")

    def tail(self):
        self.log.flush()
        with open(self.log_path) as f:
            return "".join(f.readlines()[-15:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def start_clusterdns(binary, manifests, workdir, cpus, probe, extra=()):
    port = free_port()
    argv = [binary, "serve", "--dns-addr", f"127.0.0.1:{port}", "--log", "warn"]
    if manifests:
        argv += ["--manifests", manifests]
    # Never the machine's resolver (not loopback): a local upstream, or none.
    if "--upstream" not in extra:
        argv += ["--upstream", "none"]
    return Server("clusterdns", argv + list(extra), port, workdir, cpus, probe)


def start_nsd(zones, workdir, cpus, probe):
    port = free_port()
    d = os.path.join(workdir, "nsd")
    os.makedirs(d, exist_ok=True)
    conf = os.path.join(d, "nsd.conf")
    with open(conf, "w") as f:
        f.write(
            f"""server:
    ip-address: 127.0.0.1
    port: {port}
    server-count: 1
    do-ip6: no
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    zonelistfile: "{d}/zone.list"
    logfile: "{d}/nsd.log"
    verbosity: 0
    hide-version: yes
    reuseport: no
    # Response rate limiting is on by default (200 qps per source): off, as for the others.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
"""
        )
        for origin, path in zones:
            f.write(f"zone:\n    name: {origin}\n    zonefile: \"{path}\"\n")
    return Server("nsd", ["nsd", "-d", "-c", conf], port, workdir, cpus, probe)


def start_knot(zones, workdir, cpus, probe, extra_server=""):
    port = free_port()
    d = os.path.join(workdir, "knot")
    os.makedirs(os.path.join(d, "db"), exist_ok=True)
    conf = os.path.join(d, "knot.conf")
    with open(conf, "w") as f:
        f.write(
            f"""server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
{extra_server}database:
    storage: "{d}/db"
log:
  - target: stderr
    any: warning
template:
  - id: default
    storage: "{d}"
    semantic-checks: off
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
"""
        )
        for origin, path in zones:
            f.write(f"  - domain: {origin}\n    file: \"{path}\"\n")
    return Server("knot", ["knotd", "-c", conf], port, workdir, cpus, probe)


# ---------------------------------------------------------------------------------------------
# Query files from the exported zones.


def parse_zone(path):
    """{owner (absolute, lower-case): [(type, rdata)]} of a zone export-zone printed."""
    origin, records = None, {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith(";"):
                continue
            if line.startswith("$ORIGIN"):
                origin = line.split()[1]
                continue
            if line.startswith("$"):
                continue
            parts = line.split("\t")
            owner = parts[0]
            if owner == "@":
                owner = origin
            elif not owner.endswith("."):
                owner = f"{owner}.{origin}"
            records.setdefault(owner.lower(), []).append((parts[3], parts[4]))
    return records


def query_files(forward, reverse, workdir, rng, external_names, per_mix=20000):
    """Writes one dnsperf input file per mix; returns {mix: path} and {mix: names count}."""
    fz, rz = parse_zone(forward), parse_zone(reverse)
    clusterip, headless10, srv, ptr = [], [], [], []
    namespaces = set()
    for owner, rrs in fz.items():
        a = [r for t, r in rrs if t == "A"]
        srvs = [r for t, r in rrs if t == "SRV"]
        labels = owner.split(".")
        if len(labels) == 6 and labels[2] == "svc":  # name.ns.svc.cluster.local.
            namespaces.add(labels[1])
            if a and any(r.endswith(" " + owner) for r in srvs):
                clusterip.append(owner)
            elif len(a) == 10:
                headless10.append(owner)
        if owner.startswith("_") and srvs:
            srv.append(owner)
    ptr = [o for o, rrs in rz.items() if any(t == "PTR" for t, _ in rrs)]
    namespaces = sorted(namespaces)
    nx = []
    for i in range(per_mix):
        ns = namespaces[i % len(namespaces)]
        ext = external_names[i % len(external_names)] if external_names else f"api{i}.example.com"
        # ndots:5 search list of a pod in `ns`: ns.svc.zone, svc.zone, zone.
        nx.append(
            [f"{ext}.{ns}.svc.{ZONE}.", f"{ext}.svc.{ZONE}.", f"{ext}.{ZONE}."][i % 3]
        )
    pools = {
        "clusterip": [(n, "A") for n in clusterip],
        "headless10": [(n, "A") for n in headless10],
        "srv": [(n, "SRV") for n in srv],
        "ptr": [(n, "PTR") for n in ptr],
        "nxdomain": [(n, "A") for n in nx],
        "external": [(n + ".", "A") for n in external_names],
    }
    files, counts = {}, {}
    for mix, pool in pools.items():
        counts[mix] = len(pool)
        if not pool:
            continue
        lines = [pool[rng.randrange(len(pool))] for _ in range(per_mix)]
        files[mix] = write_queries(workdir, mix, lines)
    mixed = []
    weights = {m: w for m, w in MIX_WEIGHTS.items() if pools[m]}
    total = sum(weights.values())
    for m, w in weights.items():
        mixed += [pools[m][rng.randrange(len(pools[m]))] for _ in range(per_mix * w // total)]
    rng.shuffle(mixed)
    files["mix"] = write_queries(workdir, "mix", mixed)
    counts["mix"] = len(mixed)
    return files, counts, {m: w * 100 // total for m, w in weights.items()}


def write_queries(workdir, mix, lines):
    path = os.path.join(workdir, f"queries-{mix}.txt")
    with open(path, "w") as f:
        for name, qtype in lines:
            f.write(f"{name} {qtype}\n")
    return path


def external_zone(workdir, n):
    """An example.com zone: the upstream that a forwarding clusterdns would cache."""
    path = os.path.join(workdir, "example.com.zone")
    names = [f"www{i}.example.com" for i in range(n)]
    with open(path, "w") as f:
        f.write("$ORIGIN example.com.\n$TTL 300\n")
        f.write("@ 300 IN SOA ns.example.com. h.example.com. 1 7200 1800 86400 300\n")
        f.write("@ 300 IN NS ns.example.com.\nns 300 IN A 127.0.0.1\n")
        for i in range(n):
            f.write(f"www{i} 300 IN A 192.0.2.{i % 250 + 1}\n")
    return path, names


# ---------------------------------------------------------------------------------------------
# dnsperf.

DNSPERF_PATTERNS = {
    "sent": r"Queries sent:\s+(\d+)",
    "completed": r"Queries completed:\s+(\d+)",
    "lost": r"Queries lost:\s+(\d+)",
    "qps": r"Queries per second:\s+([\d.]+)",
    "avg_latency_s": r"Average Latency \(s\):\s+([\d.]+)",
    "run_time_s": r"Run time \(s\):\s+([\d.]+)",
}


def dnsperf(port, qfile, settings, cpus, duration, qps=None, verbose_to=None):
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(duration)]
    argv += ["-c", str(settings["clients"]), "-T", str(settings["threads"])]
    argv += ["-q", str(settings["outstanding"]), "-t", str(settings["timeout"])]
    if qps:
        argv += ["-Q", str(qps)]
    if verbose_to:
        argv.append("-v")
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = out.stdout
    if verbose_to:
        with open(verbose_to, "w") as f:
            f.write(text)
    r = {}
    for k, pat in DNSPERF_PATTERNS.items():
        m = re.search(pat, text)
        r[k] = float(m.group(1)) if m else None
    m = re.search(r"Response codes:\s+(.*)", text)
    r["rcodes"] = dict(
        (c, int(n)) for c, n in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))
    ) if m else {}
    if verbose_to:
        lat = sorted(float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", text, re.M))
        r["latency_samples"] = len(lat)
        if lat:
            r["p50_ms"] = lat[len(lat) // 2] * 1e3
            r["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1e3
            r["max_ms"] = lat[-1] * 1e3
    if r["completed"] is None:
        raise RuntimeError(f"dnsperf failed: {out.stderr or text}")
    return r


def measure(server, qfile, settings, client_cpus, duration, latency_qps, workdir, mix):
    """Throughput at saturation, then latency and CPU/query at a fixed offered rate."""
    c0 = cpu_seconds(server.proc.pid)
    tput = dnsperf(server.port, qfile, settings, client_cpus, duration)
    c1 = cpu_seconds(server.proc.pid)
    lat = dnsperf(
        server.port,
        qfile,
        settings,
        client_cpus,
        max(2, duration // 2),
        qps=latency_qps,
        verbose_to=os.path.join(workdir, f"dnsperf-{server.name}-{mix}.txt"),
    )
    c2 = cpu_seconds(server.proc.pid)
    return {
        "qps": tput["qps"],
        "lost": tput["lost"],
        "completed": tput["completed"],
        "rcodes": tput["rcodes"],
        "avg_latency_ms_saturated": (tput["avg_latency_s"] or 0) * 1e3,
        "cpu_us_per_query_saturated": (c1 - c0) / max(1, tput["completed"]) * 1e6,
        "fixed_rate_qps": latency_qps,
        "fixed_rate_completed": lat["completed"],
        "fixed_rate_lost": lat["lost"],
        "p50_ms": lat.get("p50_ms"),
        "p99_ms": lat.get("p99_ms"),
        "max_ms": lat.get("max_ms"),
        "cpu_us_per_query": (c2 - c1) / max(1, lat["completed"]) * 1e6,
    }


# ---------------------------------------------------------------------------------------------
# The runs.


def check_tools():
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        print(
            "bench: missing tools. Install them first (this script installs nothing):\n"
            f"    apt-get install -y {' '.join(missing)}",
            file=sys.stderr,
        )
        sys.exit(2)


def build(args):
    if getattr(args, "binary", None):
        return args.binary
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    binary = os.path.join(target, "release", "clusterdns")
    if args.binary:
        return args.binary
    if not args.no_build:
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO, check=True)
    if not os.path.exists(binary):
        sys.exit(f"bench: {binary} not found (build it or unset --no-build)")
    return binary


def gen_cluster(binary, workdir, services, pods, seed):
    path = os.path.join(workdir, f"cluster-{services}svc-{pods}pods.yaml")
    with open(path, "w") as f:
        subprocess.run(
            [binary, "gen-cluster", "--services", str(services), "--pods", str(pods),
             "--seed", str(seed)],
            stdout=f, check=True,
        )
    return path


def export_zones(binary, manifests, workdir, tag):
    out = []
    for origin, extra in ((ZONE, []), ("in-addr.arpa", ["--reverse", "in-addr.arpa"])):
        path = os.path.join(workdir, f"{tag}-{origin}.zone")
        argv = [binary, "export-zone"] + (["--manifests", manifests] if manifests else [])
        with open(path, "w") as f:
            subprocess.run(argv + extra, stdout=f, check=True)
        out.append((origin, path))
    return out


def forwarder_support(binary):
    """How `serve` could forward and cache, if it can; None while it cannot."""
    help_text = subprocess.run(
        [binary, "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    if "--corefile" in help_text:
        return "corefile"
    return None


def run_throughput(binary, cluster, zones, workdir, args, settings, results):
    rng = random.Random(args.seed)
    fwd = forwarder_support(binary)
    ext_zone, ext_names = external_zone(workdir, 2000)
    files, counts, weights = query_files(
        zones[0][1], zones[1][1], workdir, rng, ext_names if fwd else [],
    )
    results["query_pool_sizes"] = counts
    results["mix_weights_percent"] = weights
    probe = (f"kube-dns.kube-system.svc.{ZONE}", 1)
    servers = {}
    per_server = {}
    external_note = None
    # clusterdns forwards external names to an NSD of its own on 127.0.0.1 (on the client's
    # CPU: after the first pass every answer is a cache hit and it sits idle).
    upstream = None
    if fwd:
        up_dir = os.path.join(workdir, "upstream")
        os.makedirs(up_dir, exist_ok=True)
        upstream = start_nsd([("example.com", ext_zone)], up_dir, args.client_cpus, (ext_names[0], 1))
        upstream.wait_ready(args.ready_timeout)
    for name in ("clusterdns", "nsd", "knot"):
        log(f"throughput: starting {name}")
        if name == "clusterdns":
            extra = ["--upstream", f"127.0.0.1:{upstream.port}"] if upstream else []
            srv = start_clusterdns(binary, cluster, workdir, args.server_cpus, probe, extra)
        elif name == "nsd":
            srv = start_nsd(zones + [("example.com", ext_zone)], workdir, args.server_cpus, probe)
        else:
            srv = start_knot(zones + [("example.com", ext_zone)], workdir, args.server_cpus, probe)
        try:
            srv.wait_ready(args.ready_timeout)
            if name == "knot":  # zones load in the background: wait for the reverse one too
                wait_answer(srv.port, "10.0.96.10.in-addr.arpa", 12, args.ready_timeout)
            per_server[name] = {}
            for mix in MIXES:
                if mix not in files:
                    continue
                log(f"  {name} {mix}")
                per_server[name][mix] = measure(
                    srv, files[mix], settings, args.client_cpus, args.duration,
                    args.latency_qps, workdir, mix,
                )
            per_server[name]["_memory_after_load"] = memory_kib(srv.proc.pid)
        finally:
            srv.stop()
        servers[name] = srv
    if upstream:
        upstream.stop()
    if not fwd:
        external_note = "n/a: `clusterdns serve --help` has no --corefile (no forwarder)"
    results["throughput"] = per_server
    results["external_note"] = external_note


def wait_answer(port, name, qtype, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = dns_query(port, name, qtype, timeout=0.1)
        if r and r[0] == 0:
            return
        time.sleep(0.01)
    raise RuntimeError(f"no answer for {name} on port {port}")


def run_memory_and_startup(binary, clusters, workdir, args, results):
    probe = (f"kube-dns.kube-system.svc.{ZONE}", 1)
    out = {}
    targets = [("demo (embedded)", None, None)] + [
        (label, path, zones) for label, path, zones in clusters
    ]
    for label, path, zones in targets:
        runs = []
        for i in range(args.startup_runs if path else 1):
            srv = start_clusterdns(binary, path, workdir, args.server_cpus,
                                   (f"nginx.demo.svc.{ZONE}", 1) if path is None else probe)
            try:
                ready = srv.wait_ready(args.ready_timeout)
                time.sleep(1.0)  # let a reload or late allocation settle
                mem = memory_kib(srv.proc.pid)
                runs.append({"ready_s": ready, **mem})
            finally:
                srv.stop()
        entry = {
            "clusterdns": {
                "ready_s": statistics.median(r["ready_s"] for r in runs),
                "ready_s_runs": [round(r["ready_s"], 3) for r in runs],
                "rss_kib": max(r["rss_kib"] for r in runs),
                "pss_kib": max(r["pss_kib"] for r in runs),
                "hwm_kib": max(r["hwm_kib"] for r in runs),
            }
        }
        if zones:
            for name, start in (("nsd", start_nsd), ("knot", start_knot)):
                srv = start(zones, workdir, args.server_cpus, probe)
                try:
                    ready = srv.wait_ready(args.ready_timeout)
                    time.sleep(1.0)
                    entry[name] = {"ready_s": ready, **memory_kib(srv.proc.pid)}
                finally:
                    srv.stop()
        log(f"memory/start-up {label}: {json.dumps(entry)}")
        out[label] = entry
    results["memory_startup"] = out


def run_zonal(binary, workdir, args, settings, results):
    """Zone-aware headless answers against plain ones, measured in the same run: the same
    generated cluster twice, once with every headless Service `trafficDistribution:
    PreferClose`, each with a pod `bench-client` at 127.0.0.1 (dnsperf's source address) on a
    node in eu-west-1a, so every query comes from a client in a known zone. Throughput and CPU
    per query on the headless-A mix, alternating plain/zonal/zonal/plain to spread the shared
    machine's drift over both; RSS after start-up at each size."""
    sizes = [(200, 2000)] if args.quick else [(1000, 10000), (10000, 100000)]
    probe = (f"kube-dns.kube-system.svc.{ZONE}", 1)
    out = {"memory": {}, "throughput": {}, "answers": {}}
    paths = {}
    for services, pods in sizes:
        for variant in ("plain", "zonal"):
            path = os.path.join(workdir, f"zonal-{variant}-{services}svc.yaml")
            argv = [binary, "gen-cluster", "--services", str(services), "--pods", str(pods),
                    "--seed", str(args.seed), "--client-pod", "127.0.0.1"]
            if variant == "zonal":
                argv.append("--prefer-close")
            log(" ".join(argv[1:]))
            with open(path, "w") as f:
                subprocess.run(argv, stdout=f, check=True)
            paths[(services, variant)] = path
    for services, pods in sizes:
        label = f"{services} svc / {pods} pods"
        out["memory"][label] = {}
        for variant in ("plain", "zonal"):
            srv = start_clusterdns(binary, paths[(services, variant)], workdir,
                                   args.server_cpus, probe)
            try:
                ready = srv.wait_ready(args.ready_timeout)
                time.sleep(1.0)
                out["memory"][label][variant] = {"ready_s": ready, **memory_kib(srv.proc.pid)}
            finally:
                srv.stop()
        log(f"zonal memory {label}: {json.dumps(out['memory'][label])}")
    services, pods = sizes[-1]
    zones = export_zones(binary, paths[(services, "plain")], workdir, "zonal")
    files, _, _ = query_files(zones[0][1], zones[1][1], workdir, random.Random(args.seed), [])
    qfile = files["headless10"]
    with open(qfile) as f:
        sample = f.readline().split()[0]
    runs = {"plain": [], "zonal": []}
    for variant in ("plain", "zonal", "zonal", "plain"):
        srv = start_clusterdns(binary, paths[(services, variant)], workdir, args.server_cpus, probe)
        try:
            srv.wait_ready(args.ready_timeout)
            r = dns_query(srv.port, sample, 1, timeout=1.0)
            out["answers"][variant] = len(r[1]) if r else None
            log(f"  zonal throughput: {variant}")
            runs[variant].append(measure(srv, qfile, settings, args.client_cpus, args.duration,
                                         args.latency_qps, workdir, f"zonal-{variant}"))
        finally:
            srv.stop()
    for variant, rs in runs.items():
        out["throughput"][variant] = {
            k: statistics.mean(r[k] for r in rs)
            for k in ("qps", "cpu_us_per_query_saturated", "cpu_us_per_query", "p50_ms", "lost")
            if all(r.get(k) is not None for r in rs)
        }
    out["cluster"] = f"{services} svc / {pods} pods"
    results["zonal"] = out


def zonal_markdown(z):
    t = z["throughput"]
    p, q = t["plain"], t["zonal"]
    lines = [
        f"### Zone-aware headless answers ({z['cluster']}; machine shared: compare ratios)",
        "",
        "Headless A queries (services with 10 endpoints) from a client pod in eu-west-1a; "
        "`zonal`: every headless Service `trafficDistribution: PreferClose` (answers: the "
        f"endpoints of eu-west-1a, {z['answers'].get('zonal')} of "
        f"{z['answers'].get('plain')} for the sample name); `plain`: the same cluster without it.",
        "",
        "| figure | plain | zone-aware | zone-aware / plain | target |",
        "|---|---|---|---|---|",
        f"| QPS at saturation | {fmt(p['qps'])} | {fmt(q['qps'])} | {ratio(q['qps'], p['qps'])} | >= 0.90x |",
        f"| CPU per query at saturation (µs) | {fmt(p['cpu_us_per_query_saturated'], 2)} | "
        f"{fmt(q['cpu_us_per_query_saturated'], 2)} | "
        f"{ratio(q['cpu_us_per_query_saturated'], p['cpu_us_per_query_saturated'])} | <= 1.10x |",
        f"| CPU per query at fixed rate (µs) | {fmt(p['cpu_us_per_query'], 2)} | "
        f"{fmt(q['cpu_us_per_query'], 2)} | {ratio(q['cpu_us_per_query'], p['cpu_us_per_query'])} | |",
        f"| latency p50 at fixed rate (ms) | {fmt(p.get('p50_ms'), 3)} | {fmt(q.get('p50_ms'), 3)} | "
        f"{ratio(q.get('p50_ms'), p.get('p50_ms'))} | |",
        f"| lost | {fmt(p['lost'])} | {fmt(q['lost'])} | | 0 |",
        "",
        "| cluster | RSS plain | RSS zone-aware | zone-aware / plain | ready (zone-aware) | target |",
        "|---|---|---|---|---|---|",
    ]
    for label, m in z["memory"].items():
        a, b = m["plain"], m["zonal"]
        lines.append(
            f"| {label} | {a['rss_kib'] / 1024:.1f} MiB | {b['rss_kib'] / 1024:.1f} MiB | "
            f"{ratio(b['rss_kib'], a['rss_kib'])} | {b['ready_s']:.2f} s | <= 64 MiB |"
        )
    return "\n".join(lines) + "\n"


def run_api_source(sizes, workdir, args, results):
    """Start-up, memory and propagation through the Kubernetes API source: the
    `propagation` bench (benches/propagation.rs) runs the fake API server of tests/support
    and clusterdns in one process, loads the synthetic cluster, and times `args.changes`
    changes from apply() to the first DNS answer under a background load of `args.api_qps`."""
    out = {}
    for services, pods in sizes:
        label = f"{services} svc / {pods} pods"
        path = os.path.join(workdir, f"api-{services}svc.json")
        argv = ["cargo", "bench", "--quiet", "--bench", "propagation", "--",
                "--services", str(services), "--pods", str(pods),
                "--changes", str(args.changes), "--qps", str(args.api_qps),
                "--seed", str(args.seed), "--json", path]
        log(" ".join(argv))
        try:
            subprocess.run(argv, cwd=REPO, check=True, timeout=args.api_timeout)
            with open(path) as f:
                out[label] = json.load(f)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            log(f"API source {label}: {e}")
            out[label] = {"error": str(e)}
    results["api_source"] = out


# ---------------------------------------------------------------------------------------------
# The prober reading AWS itself (issue 13): `probe --cluster` against moto on loopback.

AWS_SCALE = (500, 200, 50)  # ENIs, security groups, subnets


def run_aws_api(binary, workdir, args, results):
    """Fetch-and-judge time and API requests for a VPC of AWS_SCALE in moto (server mode),
    beside two references measured in the same run: judging the same data from the saved
    JSON directory (`probe --aws`), and the AWS CLI fetching the same ten outputs by hand (what
    users did before). Needs moto[server] and boto3; the AWS CLI reference is skipped
    without `aws`."""
    if not shutil.which("moto_server"):
        log("aws-api: moto_server missing (pip install 'moto[server]'); skipped")
        results["aws_api"] = {"skipped": "moto_server not installed"}
        return
    port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    region = "us-east-1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
               AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
               AWS_EC2_METADATA_DISABLED="true", AWS_DEFAULT_REGION=region)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError("moto_server did not start")
                time.sleep(0.1)
        enis, sgs, subnets = AWS_SCALE
        log(f"aws-api: seeding {enis} ENIs, {sgs} security groups, {subnets} subnets")
        t0 = time.time()
        subprocess.run([sys.executable, os.path.join(REPO, "tests/support/moto_seed.py"),
                        "--endpoint", url, "--region", region, "--scale", f"{enis},{sgs},{subnets}"],
                       check=True, stdout=subprocess.DEVNULL, env=env)
        seeded = time.time() - t0
        saved = os.path.join(workdir, "aws-saved")
        runs = []
        for i in range(3):
            t0 = time.time()
            out = subprocess.run([binary, "probe", "--cluster", "bench", "--region", region,
                                  "--endpoint-url", url, "--format", "json", "--save-aws", saved],
                                 capture_output=True, text=True, env=env)
            wall = time.time() - t0
            if out.returncode not in (0, 1):
                raise RuntimeError(f"probe --cluster failed: {out.stderr.strip()}")
            m = re.search(r"read AWS in (\d+) ms with (\d+) API requests", out.stderr)
            runs.append({"wall_s": wall, "read_ms": int(m.group(1)), "requests": int(m.group(2)),
                         "findings": len(json.loads(out.stdout))})
        judge = []
        for i in range(3):
            t0 = time.time()
            out = subprocess.run([binary, "probe", "--aws", saved, "--format", "json"],
                                 capture_output=True, text=True, env=env)
            judge.append(time.time() - t0)
        cli = None
        if shutil.which("aws"):
            calls = [
                ["eks", "describe-cluster", "--name", "bench"],
                ["eks", "list-fargate-profiles", "--cluster-name", "bench"],
                ["eks", "describe-fargate-profile", "--cluster-name", "bench", "--fargate-profile-name", "fp-default"],
                ["eks", "list-nodegroups", "--cluster-name", "bench"],
                ["eks", "describe-nodegroup", "--cluster-name", "bench", "--nodegroup-name", "ng-general"],
            ]
            vpc = json.load(open(os.path.join(saved, "eks-describe-cluster.json")))["cluster"]["resourcesVpcConfig"]["vpcId"]
            for what in ["describe-vpcs", "describe-subnets", "describe-security-groups",
                         "describe-network-acls", "describe-network-interfaces"]:
                calls.append(["ec2", what, "--filters", f"Name=vpc-id,Values={vpc}"])
            t0 = time.time()
            for c in calls:
                subprocess.run(["aws", "--endpoint-url", url, "--output", "json"] + c, check=True,
                               stdout=subprocess.DEVNULL, env=env)
            cli = {"wall_s": time.time() - t0, "commands": len(calls)}
        results["aws_api"] = {
            "scale": {"enis": enis, "security_groups": sgs, "subnets": subnets},
            "seed_s": seeded,
            "probe_cluster": runs,
            "probe_saved_dir_s": judge,
            "aws_cli": cli,
            "binary": binary,
            "moto": first_line([sys.executable, "-c", "import moto; print('moto', moto.__version__)"], "moto"),
        }
    finally:
        moto.terminate()
        moto.wait()


def aws_api_markdown(results):
    a = results.get("aws_api")
    if not a:
        return ""
    L = ["", "## The prober reading AWS itself (`probe --cluster`, issue 13)", ""]
    if "skipped" in a:
        L.append(f"Skipped: {a['skipped']}.")
        return "\n".join(L) + "\n"
    sc = a["scale"]
    runs = a["probe_cluster"]
    wall = statistics.median(r["wall_s"] for r in runs)
    read = statistics.median(r["read_ms"] for r in runs)
    judge = statistics.median(a["probe_saved_dir_s"])
    if a.get("binary"):
        L.append(f"Binary: `{a['binary']}`.")
    L.append(f"A VPC of {sc['enis']} ENIs, {sc['security_groups']} security groups and "
             f"{sc['subnets']} subnets (plus the EKS cluster, one Fargate profile, one node group) in "
             f"{a['moto']} in server mode on 127.0.0.1; the embedded demo cluster's pods are judged "
             f"against it ({runs[0]['findings']} findings). Medians of 3 runs, wall clock of the whole "
             "process (start, read, judge, print).")
    L.append("")
    L.append("| figure | value |")
    L.append("|---|---:|")
    L.append(f"| `probe --cluster` (fetch + judge) | {wall:.2f} s |")
    L.append(f"| ... of which reading AWS (SDK; the EC2 and EKS listings in parallel) | {read / 1000:.2f} s |")
    L.append(f"| HTTP requests to the AWS APIs (retries included) | {runs[0]['requests']} |")
    L.append(f"| reference: `probe --aws` on the saved directory (judge only) | {judge:.2f} s |")
    if a.get("aws_cli"):
        c = a["aws_cli"]
        L.append(f"| reference: the AWS CLI fetching the same data ({c['commands']} commands) | {c['wall_s']:.2f} s |")
        L.append(f"| `probe --cluster` / AWS CLI by hand | {ratio(wall, c['wall_s'])} |")
    return "\n".join(L) + "\n"
# The issue-17 sizes: (services, pods, Pod objects served). Endpoints come from the pods; at
# the first size the Pod objects themselves are left out (25 000 endpoints, no pods).
MEMORY_SIZES = [(5000, 25000, False), (10000, 100000, True)]
MEMORY_SIZES_QUICK = [(200, 2000, True)]


def run_memory_sources(args, workdir, results):
    """File source against API source on the same objects, each a `clusterdns serve` child
    of the `memory` bench (benches/memory.rs): RSS after sync, peak, QPS and CPU per query
    (ratios to the file source, same run). Extra API variants: `--memory-env KEY=VAL`."""
    out = {}
    for services, pods, with_pods in (MEMORY_SIZES_QUICK if args.quick else MEMORY_SIZES):
        label = f"{services} svc / {pods} pods" + ("" if with_pods else " (no Pod objects)")
        path = os.path.join(workdir, f"memory-{services}svc.json")
        argv = ["cargo", "bench", "--quiet", "--bench", "memory", "--",
                "--services", str(services), "--pods", str(pods), "--seed", str(args.seed),
                "--load-secs", str(2 if args.quick else 5), "--json", path]
        if not with_pods:
            argv.append("--no-pods")
        for env in args.memory_env or []:
            argv += ["--env", env]
        log(" ".join(argv))
        try:
            subprocess.run(argv, cwd=REPO, check=True, timeout=args.api_timeout,
                           stdout=subprocess.DEVNULL)
            with open(path) as f:
                out[label] = json.load(f)
        except (subprocess.SubprocessError, OSError, ValueError) as e:
            log(f"memory {label}: {e}")
            out[label] = {"error": str(e)}
    results["memory_sources"] = out


def memory_sources_markdown(results):
    L = []
    ms = results.get("memory_sources") or {}
    if not ms:
        return L
    L.append("### Memory: file source against API source (same objects, separate processes)")
    L.append("")
    L.append("Each source is a `clusterdns serve` process of its own (benches/memory.rs): "
             "`--manifests` on a JSON `v1/List` of the objects, `--kubeconfig` on the fake API "
             "server holding the same objects (with managedFields, as a real API server sends "
             "them). RSS 1 s after ready; peak is VmHWM. QPS and CPU/query: a closed-loop UDP "
             "load of ClusterIP names, as ratios to the file source measured minutes apart in "
             "the same run (absolute figures are noise on this shared machine).")
    L.append("")
    L.append("| cluster | source | RSS after sync | RSS +5 s | peak (VmHWM) | RSS vs file | "
             "ready after | QPS vs file | CPU/query vs file |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, e in ms.items():
        if "error" in e:
            L.append(f"| {label} | failed: {e['error']} | | | | | | | |")
            continue
        v = e["variants"]
        f = v[0]
        for r in v:
            L.append(f"| {label} | {r['variant']} | {r['rss_kib'] / 1024:.1f} MiB | "
                     f"{r['rss_kib_5s'] / 1024:.1f} MiB | {r['hwm_kib'] / 1024:.1f} MiB | "
                     f"{ratio(r['rss_kib'], f['rss_kib'])} | {r['ready_s']:.2f} s | "
                     f"{ratio(r['qps'], f['qps'])} | "
                     f"{ratio(r['cpu_us_per_query'], f['cpu_us_per_query'])} |")
    L.append("")
    return L


def memory_targets(results):
    rows = []
    for label, e in (results.get("memory_sources") or {}).items():
        if "error" in e:
            continue
        f, a = e["variants"][0], e["variants"][1]
        r = a["rss_kib"] / f["rss_kib"]
        rows.append({"target": f"API-source RSS within 10% of file ({label})",
                     "measured": f"{r:.2f}x ({a['rss_kib'] / 1024:.1f} / "
                                 f"{f['rss_kib'] / 1024:.1f} MiB)",
                     "met": yes(r <= 1.10)})
        if e["services"] == 10000 and e["pods"] == 100000:
            mib, peak = a["rss_kib"] / 1024, a["hwm_kib"] / 1024
            rows.append({"target": f"API-source RSS <= 48 MiB ({label})",
                         "measured": f"{mib:.1f} MiB", "met": yes(mib <= 48)})
            rows.append({"target": f"API-source peak at start <= 96 MiB ({label})",
                         "measured": f"{peak:.1f} MiB", "met": yes(peak <= 96)})
    return rows


def run_propagation(binary, workdir, args, results, base_manifest):
    """File-source propagation: rewrite a one-Service file, poll until the answer changes."""
    d = os.path.join(workdir, "prop")
    os.makedirs(d, exist_ok=True)
    if base_manifest:
        shutil.copy(base_manifest, os.path.join(d, "cluster.yaml"))
    else:
        with open(os.path.join(REPO, "manifests", "examples", "demo-cluster.yaml")) as src:
            with open(os.path.join(d, "cluster.yaml"), "w") as dst:
                dst.write(src.read())
    svc_file = os.path.join(d, "bench-prop.yaml")

    def write_svc(ip):
        tmp = os.path.join(d, ".bench-prop.tmp")
        with open(tmp, "w") as f:
            f.write(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: bench-prop\n  namespace: "
                f"default\nspec:\n  type: ClusterIP\n  clusterIP: {ip}\n  ports:\n  - name: "
                "http\n    port: 80\n"
            )
        os.replace(tmp, svc_file)

    write_svc("10.97.0.1")
    name = f"bench-prop.default.svc.{ZONE}"
    srv = start_clusterdns(binary, d, workdir, args.server_cpus, (name, 1))
    delays = []
    timeouts = 0
    try:
        srv.wait_ready(args.ready_timeout)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(args.changes):
            ip = f"10.97.{(i + 2) // 250}.{(i + 2) % 250 + 1}"
            # Changes land at random phases of the source's poll interval, as real edits do.
            time.sleep(random.uniform(0, 0.05))
            t0 = time.monotonic()
            write_svc(ip)
            while True:
                r = dns_query(srv.port, name, 1, timeout=0.05, sock=sock)
                if r and ip in r[1]:
                    delays.append((time.monotonic() - t0) * 1e3)
                    break
                if time.monotonic() - t0 > 10:
                    timeouts += 1
                    break
                time.sleep(0.001)
        sock.close()
    finally:
        srv.stop()
    delays.sort()
    results["propagation"] = {
        "source": "file",
        "note": "file-source propagation (edit a manifest file, poll the answer)",
        "base": os.path.basename(base_manifest) if base_manifest else "demo-cluster.yaml",
        "changes": args.changes,
        "timeouts": timeouts,
        "p50_ms": delays[len(delays) // 2] if delays else None,
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else None,
        "max_ms": delays[-1] if delays else None,
    }
    log(f"propagation: {results['propagation']}")


# ---------------------------------------------------------------------------------------------
# The sidecar webhook (issue 11): admission latency, and the sidecar it injects.


def http_ready(port, path, timeout):
    """Seconds until GET http://127.0.0.1:port/path answers 200 (polled every 2 ms)."""
    import http.client
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=0.2)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError(f"127.0.0.1:{port}{path} not ready after {timeout}s")


def admission_review(i):
    """A Deployment's pod in namespace default (selected by the example profile fp-default),
    as the API server posts it."""
    pod = {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"generateName": "web-7c5ddbdf54-", "namespace": "default",
                     "labels": {"app": "web", "pod-template-hash": "7c5ddbdf54"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27",
                                 "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}],
                 "dnsPolicy": "ClusterFirst", "restartPolicy": "Always",
                 "schedulerName": "default-scheduler", "securityContext": {}},
    }
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    return json.dumps({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {"uid": f"00000000-0000-0000-0000-{i:012d}", "kind": gvk,
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "default", "operation": "CREATE",
                    "userInfo": {"username": "bench"}, "object": pod, "dryRun": False},
    }).encode()


def steady(conn, n, rate, request):
    """n requests on one keep-alive connection, started at a fixed rate (open loop: a slow
    answer does not lower the offered rate); latencies in ms."""
    out = []
    t0 = time.monotonic()
    for i in range(n):
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        start = time.monotonic()
        request(conn, i)
        out.append((time.monotonic() - start) * 1000)
    return out


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q / 100 * len(v)))]


def anon_kib(pid):
    """RssAnon: the process's own memory, without the mapped binary's pages."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def run_webhook(binary, workdir, args, results):
    """Admission latency p50/p99 at a steady rate over one HTTPS keep-alive connection (as
    the API server holds one), against GET /healthz on the same connection (the TLS + HTTP
    floor); the injected sidecar's start-to-ready time and idle RSS; and the latency a cached
    query gains by going through the sidecar instead of straight to the cluster DNS."""
    import http.client
    import ssl
    out = {}
    certs = os.path.join(workdir, "webhook-certs")
    subprocess.run([binary, "webhook", "--generate-certs", certs, "--extra-name", "localhost"],
                   check=True, capture_output=True)
    port = free_port()
    wh = Server("webhook", [binary, "webhook", "--listen", f"127.0.0.1:{port}",
                            "--tls-cert", os.path.join(certs, "tls.crt"),
                            "--tls-key", os.path.join(certs, "tls.key"),
                            "--sidecar-image", "clusterdns:bench", "--upstream", "10.100.0.10",
                            "--native-sidecar", "always", "--log", "warn",
                            "--fargate-profiles",
                            os.path.join(REPO, "manifests/examples/fargate-profiles")],
                port, workdir, args.server_cpus, None)
    try:
        ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
        t0 = time.monotonic()
        while True:
            try:
                conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
                conn.request("GET", "/readyz")
                r = conn.getresponse()
                r.read()
                if r.status == 200:
                    break
                time.sleep(0.01)
            except OSError:
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"webhook not up: {wh.tail()}")
                time.sleep(0.01)
        bodies = [admission_review(i) for i in range(64)]

        def review(c, i):
            c.request("POST", "/mutate", body=bodies[i % len(bodies)],
                      headers={"Content-Type": "application/json"})
            r = c.getresponse()
            body = r.read()
            if r.status != 200 or b'"patch"' not in body:
                raise RuntimeError(f"admission failed: {r.status} {body[:200]}")

        def healthz(c, i):
            c.request("GET", "/healthz")
            c.getresponse().read()

        n = args.webhook_requests
        rate = args.webhook_rate
        steady(conn, min(200, n), rate, review)  # warm-up
        lat = steady(conn, n, rate, review)
        floor = steady(conn, n, rate, healthz)
        cpu0 = cpu_seconds(wh.proc.pid)
        out["admission"] = {
            "rate": rate, "requests": n,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": max(lat),
            "healthz_p50_ms": pct(floor, 50), "healthz_p99_ms": pct(floor, 99),
            "rss_kib": memory_kib(wh.proc.pid)["rss_kib"], "cpu_s_total": cpu0,
        }
        log(f"webhook admission: {json.dumps(out['admission'])}")
    finally:
        wh.stop()

    # The sidecar, forwarding to `clusterdns serve` (the demo cluster) as its cluster DNS.
    upstream = start_clusterdns(binary, None, workdir, args.server_cpus, (f"nginx.demo.svc.{ZONE}", 1))
    try:
        upstream.wait_ready(args.ready_timeout)
        resolv = os.path.join(workdir, "resolv.conf")
        with open(resolv, "w") as f:
            f.write(f"nameserver 127.0.0.1\nsearch default.svc.{ZONE} svc.{ZONE} {ZONE}\noptions ndots:5\n")
        runs = []
        for i in range(args.startup_runs * 3):
            dns = free_port()
            health, ready, metrics = free_port(), free_port(), free_port()
            argv = [binary, "sidecar", "--upstream", f"127.0.0.1:{upstream.port}",
                    "--listen", f"127.0.0.1:{dns}", "--health", f"127.0.0.1:{health}",
                    "--ready", f"127.0.0.1:{ready}", "--metrics", f"127.0.0.1:{metrics}",
                    "--autopath", resolv, "--log", "warn"]
            sc = Server("sidecar", argv, dns, workdir, args.server_cpus, (f"nginx.demo.svc.{ZONE}", 1))
            try:
                ready_s = http_ready(ready, "/ready", 30)
                time.sleep(2.0)  # idle: one probe round and the allocator settled
                mem = memory_kib(sc.proc.pid)
                runs.append({"ready_s": ready_s, "anon_kib": anon_kib(sc.proc.pid), **mem})
                if i == 0:
                    # Cached query latency: through the sidecar vs straight to the cluster DNS.
                    name = f"nginx.demo.svc.{ZONE}"
                    wait_answer(dns, name, 1, 10)
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    via, direct = [], []
                    for _ in range(200):
                        dns_query(dns, name, 1, sock=sock)
                        dns_query(upstream.port, name, 1, sock=sock)
                    for _ in range(args.cached_queries):
                        for target, acc in ((dns, via), (upstream.port, direct)):
                            t = time.monotonic()
                            r = dns_query(target, name, 1, timeout=1.0, sock=sock)
                            if not r or r[0] != 0:
                                raise RuntimeError(f"no answer from {target}")
                            acc.append((time.monotonic() - t) * 1e6)
                    sock.close()
                    out["cached_query"] = {
                        "queries": args.cached_queries,
                        "via_sidecar_p50_us": pct(via, 50), "via_sidecar_p99_us": pct(via, 99),
                        "direct_p50_us": pct(direct, 50), "direct_p99_us": pct(direct, 99),
                    }
            finally:
                sc.stop()
        out["sidecar"] = {
            "ready_ms": statistics.median(r["ready_s"] for r in runs) * 1000,
            "ready_ms_runs": [round(r["ready_s"] * 1000, 1) for r in runs],
            "rss_kib": statistics.median(r["rss_kib"] for r in runs),
            "pss_kib": statistics.median(r["pss_kib"] for r in runs),
            "anon_kib": statistics.median(r["anon_kib"] for r in runs),
            "hwm_kib": max(r["hwm_kib"] for r in runs),
        }
        time.sleep(1.0)
        out["server_demo_rss_kib"] = memory_kib(upstream.proc.pid)["rss_kib"]
        log(f"sidecar: {json.dumps(out['sidecar'])} cached: {json.dumps(out.get('cached_query'))}")
    finally:
        upstream.stop()
    results["webhook"] = out


def webhook_markdown(results):
    w = results["webhook"]
    a, sc, q = w["admission"], w["sidecar"], w["cached_query"]
    added = q["via_sidecar_p50_us"] - q["direct_p50_us"]
    L = ["### Sidecar webhook (`clusterdns webhook`) and the sidecar it injects", ""]
    L.append(f"Admission: {a['requests']} AdmissionReviews (a Deployment's pod selected by a "
             f"Fargate profile, patched) at a steady {a['rate']}/s over one HTTPS keep-alive "
             "connection; the floor is GET /healthz on the same connection at the same rate. "
             "Sidecar: `clusterdns sidecar --autopath` forwarding to `clusterdns serve` (demo), "
             f"median of {len(sc['ready_ms_runs'])} starts; cached query: "
             f"{q['queries']} sequential UDP queries for a cluster name, alternating between the "
             "sidecar (cache hit) and the server directly, from one Python client.")
    L.append("")
    L.append("| figure | measured | reference (same run) | ratio | target |")
    L.append("|---|---:|---:|---:|---|")
    L.append(f"| admission latency p50 | {a['p50_ms']:.3f} ms | {a['healthz_p50_ms']:.3f} ms (GET /healthz) | "
             f"{ratio(a['p50_ms'], a['healthz_p50_ms'])} | |")
    L.append(f"| admission latency p99 | {a['p99_ms']:.3f} ms | {a['healthz_p99_ms']:.3f} ms (GET /healthz) | "
             f"{ratio(a['p99_ms'], a['healthz_p99_ms'])} | well under timeoutSeconds 5 |")
    L.append(f"| webhook RSS after the run | {a['rss_kib'] / 1024:.1f} MiB | | | |")
    L.append(f"| sidecar start to ready | {sc['ready_ms']:.1f} ms | | | < 100 ms |")
    L.append(f"| sidecar idle RSS | {sc['rss_kib'] / 1024:.1f} MiB (anonymous {sc['anon_kib'] / 1024:.1f}, "
             f"PSS {sc['pss_kib'] / 1024:.1f}) | "
             f"{w['server_demo_rss_kib'] / 1024:.1f} MiB (`serve`, demo) | "
             f"{ratio(sc['rss_kib'], w['server_demo_rss_kib'])} | <= 8 MiB |")
    L.append(f"| cached query via the sidecar, p50 / p99 | {q['via_sidecar_p50_us']:.0f} / "
             f"{q['via_sidecar_p99_us']:.0f} us | {q['direct_p50_us']:.0f} / {q['direct_p99_us']:.0f} us "
             f"(server directly) | {ratio(q['via_sidecar_p50_us'], q['direct_p50_us'])} | |")
    L.append(f"| added latency per cached query (p50) | {added:.0f} us | | | |")
    L.append("")
    return "\n".join(L)


# ---------------------------------------------------------------------------------------------
# Report.


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def ratio(a, b):
    if a is None or b in (None, 0):
        return "n/a"
    return f"{a / b:.2f}x"


def machine():
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dnsperf": first_line(["dnsperf", "-h"], "Version"),
        "nsd": first_line(["nsd", "-v"], "NSD"),
        "knot": first_line(["knotd", "-V"], "knotd"),
    }


def first_line(argv, needle):
    if shutil.which(argv[0]) is None:
        return None
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    for line in (out.stdout + out.stderr).splitlines():
        if needle in line:
            return line.strip()
    return None


def markdown(results):
    m = results["machine"]
    s = results["settings"]
    L = []
    L.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}; "
             f"{m['dnsperf']}, {m['nsd']}, {m['knot']}. Shared and noisy: compare the ratios, "
             "which were measured in the same run, not the absolute figures.")
    L.append("")
    L.append(f"Mode: {results['mode']}. Servers pinned to CPU {s['server_cpus']}, dnsperf to CPU "
             f"{s['client_cpus']}; dnsperf `-c {s['clients']} -T {s['threads']} -q "
             f"{s['outstanding']} -t {s['timeout']}`, {s['duration']} s per mix at full speed, "
             f"then {max(2, s['duration'] // 2)} s at `-Q {s['latency_qps']}` for latency and "
             f"CPU. Throughput data: {results['throughput_cluster']}.")
    L.append("")
    L.append("### Throughput (queries/s at saturation, one server core)")
    L.append("")
    L.append("| mix | clusterdns | NSD | Knot | vs NSD | vs Knot | lost (cd/NSD/Knot) |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    t = results["throughput"]
    for mix in MIXES:
        row = [t.get(n, {}).get(mix) for n in ("clusterdns", "nsd", "knot")]
        if mix == "external" and row[0] is None:
            L.append(f"| {MIX_TITLES[mix]} | {results['external_note']} | | | | | |")
            continue
        if all(r is None for r in row):
            continue
        q = [r["qps"] if r else None for r in row]
        lost = "/".join(fmt(r["lost"]) if r else "n/a" for r in row)
        L.append(f"| {MIX_TITLES[mix]} | {fmt(q[0])} | {fmt(q[1])} | {fmt(q[2])} | "
                 f"{ratio(q[0], q[1])} | {ratio(q[0], q[2])} | {lost} |")
    L.append("")
    L.append(f"### Latency at a fixed {s['latency_qps']:,} queries/s (p50 / p99, ms)")
    L.append("")
    L.append("| mix | clusterdns | NSD | Knot | p99 vs NSD |")
    L.append("|---|---:|---:|---:|---:|")
    for mix in MIXES:
        row = [t.get(n, {}).get(mix) for n in ("clusterdns", "nsd", "knot")]
        if row[0] is None:
            continue
        cells = [f"{fmt(r['p50_ms'], 3)} / {fmt(r['p99_ms'], 3)}" if r else "n/a" for r in row]
        L.append(f"| {MIX_TITLES[mix]} | {cells[0]} | {cells[1]} | {cells[2]} | "
                 f"{ratio(row[0]['p99_ms'], row[1]['p99_ms'] if row[1] else None)} |")
    L.append("")
    L.append("### Server CPU per answered query (µs: at saturation / at "
             f"{s['latency_qps']:,} queries/s)")
    L.append("")
    L.append("| mix | clusterdns | NSD | Knot | vs NSD | vs Knot |")
    L.append("|---|---:|---:|---:|---:|---:|")
    for mix in MIXES:
        row = [t.get(n, {}).get(mix) for n in ("clusterdns", "nsd", "knot")]
        if row[0] is None:
            continue
        sat = [r["cpu_us_per_query_saturated"] if r else None for r in row]
        c = [r["cpu_us_per_query"] if r else None for r in row]
        cells = [f"{fmt(a, 1)} / {fmt(b, 1)}" for a, b in zip(sat, c)]
        L.append(f"| {MIX_TITLES[mix]} | {cells[0]} | {cells[1]} | {cells[2]} | "
                 f"{ratio(sat[0], sat[1])} / {ratio(c[0], c[1])} | "
                 f"{ratio(sat[0], sat[2])} / {ratio(c[0], c[2])} |")
    L.append("")
    L.append("### Memory and start-up (file source)")
    L.append("")
    L.append("| cluster | clusterdns RSS | peak RSS (VmHWM) | ready after | NSD PSS | Knot PSS | "
             "NSD ready | Knot ready | CoreDNS formula |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, e in results["memory_startup"].items():
        c = e["clusterdns"]
        formula = results["coredns_formula_mb"].get(label)
        n, k = e.get("nsd"), e.get("knot")
        L.append(
            f"| {label} | {c['rss_kib'] / 1024:.1f} MiB | {c['hwm_kib'] / 1024:.1f} MiB | "
            f"{c['ready_s']:.2f} s | "
            + (f"{n['pss_kib'] / 1024:.1f} MiB" if n else "n/a") + " | "
            + (f"{k['pss_kib'] / 1024:.1f} MiB" if k else "n/a") + " | "
            + (f"{n['ready_s']:.2f} s" if n else "n/a") + " | "
            + (f"{k['ready_s']:.2f} s" if k else "n/a") + " | "
            + (f"{formula:.0f} MB" if formula else "n/a") + " |"
        )
    L.append("")
    api = {k: v for k, v in results.get("api_source", {}).items() if "error" not in v}
    if api:
        L.append("### Memory and start-up (API source, fake API server in the same process)")
        L.append("")
        L.append("RSS is the bench process's VmRSS: the fake API server's share (its objects, "
                 "measured before clusterdns starts) is reported separately and subtracted.")
        L.append("")
        L.append("| cluster | clusterdns RSS | fake API server RSS | total | ready after |")
        L.append("|---|---:|---:|---:|---:|")
        for label, e in api.items():
            L.append(f"| {label} | {e['rss_kib_clusterdns'] / 1024:.1f} MiB | "
                     f"{e['rss_kib_api_server'] / 1024:.1f} MiB | "
                     f"{e['rss_kib_total'] / 1024:.1f} MiB | {e['ready_s']:.2f} s |")
        L.append("")
    for label, e in results.get("api_source", {}).items():
        if "error" in e:
            L.append(f"API source {label}: failed ({e['error']}).")
            L.append("")
    L += memory_sources_markdown(results)
    p = results.get("propagation")
    if p:
        L.append("### Propagation")
        L.append("")
        L.append(f"{p['note']}. {p['changes']} changes on {p['base']}:")
        L.append("")
        L.append("| source | p50 | p99 | max | timeouts |")
        L.append("|---|---:|---:|---:|---:|")
        L.append(f"| {p['source']} | {fmt(p['p50_ms'], 1)} ms | {fmt(p['p99_ms'], 1)} ms | "
                 f"{fmt(p['max_ms'], 1)} ms | {p['timeouts']} |")
        L.append("")
    if api:
        L.append("### Propagation (API source)")
        L.append("")
        L.append("From the fake API server's apply() to the first UDP answer showing the change "
                 "(polls 0.5 ms apart), alternately a new ClusterIP service and an "
                 "EndpointSlice address move, under a background UDP load:")
        L.append("")
        L.append("| cluster | change | count | p50 | p99 | max | timeouts | load (q/s, answered) |")
        L.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for label, e in api.items():
            for title, key in (("all", "propagation"), ("new service", "propagation_new_service"),
                               ("endpoint move", "propagation_endpoint_update")):
                q = e[key]
                ms = [f"{v:.1f} ms" if v is not None else "n/a"
                      for v in (q["p50_ms"], q["p99_ms"], q["max_ms"])]
                L.append(f"| {label} | {title} | {q['changes']} | {ms[0]} | {ms[1]} | {ms[2]} | "
                         f"{q['timeouts']} | {e['load_qps_sent']:.0f}, "
                         f"{e['load_answered_fraction'] * 100:.1f}% |")
        L.append("")
    L.append("### Against the targets (reported, never failed on)")
    L.append("")
    L.append("| target | measured | met |")
    L.append("|---|---|---|")
    for row in results["targets"]:
        L.append(f"| {row['target']} | {row['measured']} | {row['met']} |")
    return "\n".join(L) + "\n"


def targets(results):
    t = results["throughput"]
    rows = []

    def worst(metric, mixes, better_high):
        vals = []
        for mix in mixes:
            a = t.get("clusterdns", {}).get(mix)
            b = t.get("nsd", {}).get(mix)
            if a and b and b[metric]:
                vals.append((a[metric] / b[metric], mix))
        if not vals:
            return None
        return min(vals) if better_high else max(vals)

    cluster_mixes = ["clusterip", "headless10", "srv", "ptr", "nxdomain", "mix"]
    w = worst("qps", cluster_mixes, True)
    if w:
        rows.append({"target": "cluster-name QPS >= 0.9x NSD",
                     "measured": f"worst {w[0]:.2f}x ({w[1]})", "met": yes(w[0] >= 0.9)})
    w = worst("cpu_us_per_query_saturated", cluster_mixes, False)
    if w:
        rows.append({"target": "CPU/query <= 1.1x NSD (at saturation)",
                     "measured": f"worst {w[0]:.2f}x ({w[1]})", "met": yes(w[0] <= 1.1)})
    w = worst("cpu_us_per_query", cluster_mixes, False)
    if w:
        rows.append({"target": f"CPU/query <= 1.1x NSD (at {results['settings']['latency_qps']:,} q/s)",
                     "measured": f"worst {w[0]:.2f}x ({w[1]})", "met": yes(w[0] <= 1.1)})
    ext = t.get("clusterdns", {}).get("external")
    rows.append({"target": "cache-hit QPS >= 0.9x NSD",
                 "measured": ratio(ext["qps"], t["nsd"]["external"]["qps"]) if ext
                 else results["external_note"],
                 "met": yes(ext["qps"] >= 0.9 * t["nsd"]["external"]["qps"]) if ext else "n/a"})
    ms = results["memory_startup"]
    for label, limit in (("10000 svc / 100000 pods", 64), ("demo (embedded)", 16)):
        if label in ms:
            mib = ms[label]["clusterdns"]["rss_kib"] / 1024
            rows.append({"target": f"RSS <= {limit} MiB ({label})",
                         "measured": f"{mib:.1f} MiB", "met": yes(mib <= limit)})
    p = results.get("propagation")
    if p and p["p99_ms"] is not None:
        rows.append({"target": "propagation p99 <= 50 ms",
                     "measured": f"{p['p99_ms']:.0f} ms ({p['source']} source)",
                     "met": yes(p["p99_ms"] <= 50)})
    for label, e in results.get("api_source", {}).items():
        q = e.get("propagation", {})
        if q.get("p99_ms") is not None:
            rows.append({"target": f"propagation p99 <= 50 ms (API source, {label})",
                         "measured": f"{q['p99_ms']:.0f} ms, {q['timeouts']} timeouts",
                         "met": yes(q["p99_ms"] <= 50 and q["timeouts"] == 0)})
        if "rss_kib_clusterdns" in e and label == "10000 svc / 100000 pods":
            mib = e["rss_kib_clusterdns"] / 1024
            rows.append({"target": f"RSS <= 64 MiB ({label}, API source)",
                         "measured": f"{mib:.1f} MiB", "met": yes(mib <= 64)})
    rows += memory_targets(results)
    big = [l for l in ms if l != "demo (embedded)"]
    if big:
        label = big[-1]
        s = ms[label]["clusterdns"]["ready_s"]
        rows.append({"target": f"start-up < 2 s ({label})", "measured": f"{s:.2f} s",
                     "met": yes(s < 2)})
    return rows


def yes(b):
    return "yes" if b else "**no**"


# Sections that `--only` runs alone: name -> (what it measures,).
ONLY_SECTIONS = {
    "restart": ("rolling restart",),
    "tcp": ("thousands of TCP clients vs Knot",),
    "webhook": ("admission latency and the injected sidecar",),
    "aws-api": ("fetch and judge a VPC from the AWS API emulator",),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: small cluster, 2 s per mix")
    ap.add_argument("--duration", type=int, help="seconds of dnsperf per mix and server (10)")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c (4)")
    ap.add_argument("--threads", type=int, default=1, help="dnsperf -T (1)")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q (100)")
    ap.add_argument("--latency-qps", type=int, default=10000,
                    help="dnsperf -Q of the latency/CPU run (10000)")
    ap.add_argument("--server-cpus", default="0", help="taskset CPU list of the servers (0)")
    ap.add_argument("--client-cpus", default="1", help="taskset CPU list of dnsperf (1)")
    ap.add_argument("--changes", type=int, help="propagation changes (1000; quick 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--api-qps", type=int, default=5000,
                    help="background load during API-source propagation (5000)")
    ap.add_argument("--api-timeout", type=int, default=900,
                    help="seconds allowed per API-source bench run, build included (900)")
    ap.add_argument("--memory-env", action="append", metavar="KEY=VAL[,KEY=VAL]",
                    help="add an API-source variant with this environment to the memory "
                         "table (repeatable), e.g. MALLOC_ARENA_MAX=2")
    ap.add_argument("--memory-only", action="store_true",
                    help="run only the file-vs-API memory table (benches/memory.rs)")
    ap.add_argument("--no-build", action="store_true", help="use the binary already built")
    ap.add_argument("--binary", help="use this clusterdns binary (no build)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (zones, logs)")
    ap.add_argument("--json", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--md", help="also write the Markdown report to this file")
    ap.add_argument("--only", help="run only these sections, comma-separated: " + ", ".join(
        f"{k} ({v[0]})" for k, v in ONLY_SECTIONS.items()) + "; results go to "
                    "results-SECTIONS.json unless --json is given")
    ap.add_argument("--webhook-rate", type=int, default=200,
                    help="AdmissionReviews per second of the webhook section (200)")
    ap.add_argument("--webhook-requests", type=int, help="AdmissionReviews timed (4000; quick 400)")
    ap.add_argument("--cached-queries", type=int, help="cached queries timed per path (5000; quick 500)")
    ap.add_argument("--zonal", action="store_true",
                    help="run only the zone-aware section (writes bench/results-zonal.json)")
    soak = ap.add_argument_group("soak (bench/soak.py; --soak runs only this)")
    soak.add_argument("--soak", action="store_true",
                      help="saturation, then N minutes at 80%% of it while the cluster changes")
    soak.add_argument("--minutes", type=int, default=10, help="soak minutes (10)")
    soak.add_argument("--churn-hz", type=int, default=10, help="cluster changes per second (10)")
    soak.add_argument("--soak-services", type=int, default=300, help="generated services (300)")
    soak.add_argument("--soak-saturation-s", type=int, default=10,
                      help="seconds of the saturation run (10)")
    soak.add_argument("--soak-row-s", type=int, default=60, help="seconds per table row (60)")
    args = ap.parse_args()
    args.webhook_requests = args.webhook_requests or (400 if args.quick else 4000)
    args.cached_queries = args.cached_queries or (500 if args.quick else 5000)
    if args.only:
        return main_only(args, ap)
    if os.cpu_count() < 2:
        args.client_cpus = args.server_cpus = ""
    args.duration = args.duration or (2 if args.quick else 10)
    args.changes = args.changes or (20 if args.quick else 1000)
    args.startup_runs = 1 if args.quick else 3
    args.ready_timeout = 180
    if args.memory_only:
        with tempfile.TemporaryDirectory(prefix="clusterdns-bench-") as workdir:
            results = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            run_memory_sources(args, workdir, results)
        rows = memory_targets(results)
        md = "\n".join(memory_sources_markdown(results)
                       + ["| target | measured | met |", "|---|---|---|"]
                       + [f"| {r['target']} | {r['measured']} | {r['met']} |" for r in rows])
        if args.md:
            with open(args.md, "w") as f:
                f.write(md + "\n")
        print(md)
        return
    check_tools()
    binary = build(args)
    if args.soak:
        return run_soak_only(binary, args)
    workdir = tempfile.mkdtemp(prefix="clusterdns-bench-")
    log(f"work dir {workdir}")
    settings = {
        "clients": args.clients, "threads": args.threads, "outstanding": args.outstanding,
        "timeout": 2, "duration": args.duration, "latency_qps": args.latency_qps,
        "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
    }
    results = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "settings": settings,
    }
    if args.zonal:
        try:
            run_zonal(binary, workdir, args, settings, results)
        finally:
            if args.keep:
                log(f"kept {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
        path = args.json if args.json != os.path.join(HERE, "results.json") else os.path.join(
            HERE, "results-zonal.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
        md = zonal_markdown(results["zonal"])
        if args.md:
            with open(args.md, "w") as f:
                f.write(md)
        print(md)
        return
    try:
        sizes = [(200, 2000)] if args.quick else [(1000, 10000), (10000, 100000)]
        clusters = []
        for services, pods in sizes:
            log(f"gen-cluster --services {services} --pods {pods}")
            path = gen_cluster(binary, workdir, services, pods, args.seed)
            zones = export_zones(binary, path, workdir, f"{services}svc")
            clusters.append((f"{services} svc / {pods} pods", path, zones))
        results["coredns_formula_mb"] = {
            label: (s + p) / 1000 + 54 for (label, _, _), (s, p) in zip(clusters, sizes)
        }
        label, path, zones = clusters[-1]
        results["throughput_cluster"] = label
        run_throughput(binary, path, zones, workdir, args, settings, results)
        run_memory_and_startup(binary, clusters, workdir, args, results)
        run_propagation(binary, workdir, args, results, None)
        run_api_source(sizes, workdir, args, results)
        run_webhook(binary, workdir, args, results)
        run_reliability(binary, clusters[0], workdir, args, results, {"restart", "tcp"})
        run_aws_api(binary, workdir, args, results)
        run_memory_sources(args, workdir, results)
        results["targets"] = targets(results)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    md = (markdown(results) + "\n" + webhook_markdown(results)
          + reliability.markdown(sys.modules[__name__], results) + aws_api_markdown(results))
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md)


def run_reliability(binary, cluster, workdir, args, results, sections):
    """The issue-15 sections (bench/reliability.py) on the given (small) cluster."""
    _, path, zones = cluster
    qfiles, _, _ = query_files(zones[0][1], zones[1][1], workdir, random.Random(args.seed), [])
    me = sys.modules[__name__]
    if "restart" in sections:
        reliability.run_rolling_restart(me, binary, path, qfiles["clusterip"], workdir, args,
                                        results)
    if "tcp" in sections:
        reliability.run_tcp_clients(me, binary, path, zones, qfiles["clusterip"], workdir, args,
                                    results)


def main_only(args, ap):
    sections = set(args.only.split(","))
    unknown = sections - set(ONLY_SECTIONS)
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(sorted(unknown))} "
                 f"({', '.join(ONLY_SECTIONS)})")
    if os.cpu_count() < 2:
        args.client_cpus = args.server_cpus = ""
    args.duration = args.duration or (2 if args.quick else 10)
    args.ready_timeout = 180
    args.startup_runs = 1 if args.quick else 3
    if args.json == os.path.join(HERE, "results.json"):
        args.json = os.path.join(HERE, f"results-{'-'.join(sorted(sections))}.json")
    if sections & {"restart", "tcp"}:
        check_tools()  # dnsperf and Knot; the webhook section needs only the binary
    binary = build(args)
    workdir = tempfile.mkdtemp(prefix="clusterdns-bench-")
    log(f"work dir {workdir}")
    results = {
        "mode": "quick" if args.quick else "full",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "sections": sorted(sections),
    }
    try:
        if sections & {"restart", "tcp"}:
            services, pods = (200, 2000) if args.quick else (1000, 10000)
            path = gen_cluster(binary, workdir, services, pods, args.seed)
            zones = export_zones(binary, path, workdir, f"{services}svc")
            run_reliability(binary, (None, path, zones), workdir, args, results, sections)
        if "webhook" in sections:
            run_webhook(binary, workdir, args, results)
        if "aws-api" in sections:
            run_aws_api(binary, workdir, args, results)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    m = results["machine"]
    md = (f"Machine: {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}; {m['dnsperf']}, "
          f"{m['knot']}. Shared with other work while measured: compare the ratios, measured "
          "in the same run, not the absolute figures.\n"
          + reliability.markdown(sys.modules[__name__], results)
          + (webhook_markdown(results) if "webhook" in sections else "")
          + (aws_api_markdown(results) if "aws-api" in sections else ""))
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md)


def run_soak_only(binary, args):
    import soak

    results = soak.run_soak(sys.modules[__name__], binary, args)
    results["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    results["machine"] = machine()
    path = args.json if args.json != os.path.join(HERE, "results.json") else os.path.join(
        HERE, "soak-results.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    md = soak.markdown(results)
    if args.md:
        with open(args.md, "w") as f:
            f.write(md)
    print(md)


if __name__ == "__main__":
    main()
