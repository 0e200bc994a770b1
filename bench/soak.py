"""The soak benchmark (issue 15 item 3), run by `python3 bench/run.py --soak [--minutes N]`.

    saturation: dnsperf at full speed, realistic mix, cluster changing 10x/s   -> QPS
    soak:       N minutes at 80% of that QPS, same mix and churn, one dnsperf -v per row
                (a minute), its per-query lines read as they come -> errors, p50/p99 per row;
                VmRSS of the server every second -> growth after the warm-up

The cluster is a generated one (`gen-cluster`) served through the file source, plus a small
churn manifest in the same directory that is atomically replaced `--churn-hz` (10) times a
second: one churn service moves its clusterIP, another appears or disappears. Every reload
re-reads the directory, so the cluster is kept moderate (`--soak-services`, 300). Forwarded
names go to an NSD on 127.0.0.1 serving example.com (NOERROR and NXDOMAIN), through the
built-in Corefile's `forward` and `cache 30`. Only the standard library; run.py's helpers do
the processes, dnsperf and /proc accounting.
"""

import os
import random
import re
import subprocess
import threading
import time

ERROR_RCODES = ("SERVFAIL", "REFUSED", "FORMERR", "NOTIMP", "NOTAUTH", "NOTZONE", "YXDOMAIN")
CHURN_SERVICES = 20


class Churn(threading.Thread):
    """Replaces `churn.yaml` in the served directory `hz` times a second until stopped."""

    def __init__(self, directory, hz):
        super().__init__(daemon=True)
        self.path = os.path.join(directory, "churn.yaml")
        self.tmp = os.path.join(directory, ".churn.tmp")
        self.period = 1.0 / hz
        self.changes = 0
        self.ips = {k: f"10.98.250.{k + 1}" for k in range(CHURN_SERVICES)}
        self.present = {k: True for k in range(CHURN_SERVICES)}
        self.stopped = threading.Event()
        self.write(0)

    def write(self, n):
        # Change n moves service n % 20 to a new clusterIP; an odd-numbered one also appears
        # or disappears. churn-0 (the readiness probe) always exists.
        k = n % CHURN_SERVICES
        self.ips[k] = f"10.98.{n // 250 % 250}.{n % 250 + 1}"
        if k % 2:
            self.present[k] = not self.present[k]
        self.last_ip = self.ips[0]
        docs = [
            "apiVersion: v1\nkind: Service\nmetadata:\n"
            f"  name: churn-{k}\n  namespace: default\n"
            f"spec:\n  type: ClusterIP\n  clusterIP: {ip}\n"
            "  ports:\n  - name: http\n    port: 80\n"
            for k, ip in self.ips.items()
            if self.present[k]
        ]
        with open(self.tmp, "w") as f:
            f.write("---\n".join(docs))
        os.replace(self.tmp, self.path)

    def run(self):
        n = 0
        next_at = time.monotonic()
        while not self.stopped.is_set():
            n += 1
            self.write(n)
            self.changes += 1
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay > 0:
                self.stopped.wait(delay)
            else:
                next_at = time.monotonic()  # behind: do not burst to catch up

    def stop(self):
        self.stopped.set()
        self.join()


class RssSampler(threading.Thread):
    """VmRSS of `pid` every second, as (seconds since start, KiB)."""

    def __init__(self, pid, memory_kib):
        super().__init__(daemon=True)
        self.pid, self.memory_kib = pid, memory_kib
        self.t0 = time.monotonic()
        self.samples = []
        self.stopped = threading.Event()

    def run(self):
        while not self.stopped.is_set():
            self.samples.append((time.monotonic() - self.t0, self.memory_kib(self.pid)["rss_kib"]))
            self.stopped.wait(1.0)

    def stop(self):
        self.stopped.set()
        self.join()


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def dnsperf_verbose(bench, port, qfile, settings, cpus, seconds, qps):
    """One dnsperf -v run whose per-query lines are read as they arrive (a 10-minute run
    would otherwise leave gigabytes of output): rcodes, latencies and dnsperf's summary."""
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(seconds),
            "-c", str(settings["clients"]), "-T", str(settings["threads"]),
            "-q", str(settings["outstanding"]), "-t", str(settings["timeout"]),
            "-Q", str(qps), "-v"]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    line_re = re.compile(r"^> (\S+) \S+ \S+ ([\d.]+)$")
    latencies, rcodes, summary = [], {}, []
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        m = line_re.match(line)
        if m:
            latencies.append(float(m.group(2)))
            rcodes[m.group(1)] = rcodes.get(m.group(1), 0) + 1
        elif not line.startswith(">"):
            summary.append(line)
    proc.wait()
    text = "".join(summary)
    r = {}
    for k, pat in bench.DNSPERF_PATTERNS.items():
        m = re.search(pat, text)
        r[k] = float(m.group(1)) if m else None
    if r["completed"] is None:
        raise RuntimeError(f"dnsperf failed: {text[-2000:]}")
    latencies.sort()
    r["rcodes"] = rcodes
    r["p50_ms"] = (percentile(latencies, 0.5) or 0) * 1e3
    r["p99_ms"] = (percentile(latencies, 0.99) or 0) * 1e3
    r["max_ms"] = (latencies[-1] if latencies else 0) * 1e3
    return r


def soak_queries(bench, binary, manifests_dir, workdir, rng, ext_names):
    """The realistic mix of run.py (35% ClusterIP, 8% headless, 4% SRV, 3% PTR, 40% search-path
    NXDOMAIN, 10% forwarded) plus churn-service names and forwarded NXDOMAINs."""
    zones = bench.export_zones(binary, manifests_dir, workdir, "soak")
    files, counts, weights = bench.query_files(zones[0][1], zones[1][1], workdir, rng, ext_names)
    with open(files["mix"]) as f:
        lines = f.read().splitlines()
    n = len(lines)
    extra = [f"churn-{rng.randrange(CHURN_SERVICES)}.default.svc.cluster.local. A"
             for _ in range(n // 50)]
    extra += [f"nx{rng.randrange(1000)}.example.com. A" for _ in range(n // 50)]
    lines += extra
    rng.shuffle(lines)
    path = os.path.join(workdir, "queries-soak.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    weights = {k: round(v * n / len(lines)) for k, v in weights.items()}
    weights["churn services"] = round(100 * (n // 50) / len(lines))
    weights["forwarded NXDOMAIN"] = round(100 * (n // 50) / len(lines))
    return path, weights


def run_soak(bench, binary, args):
    """Returns the soak results (also printed as a table by `markdown`)."""
    import tempfile

    workdir = tempfile.mkdtemp(prefix="clusterdns-soak-")
    bench.log(f"soak: work dir {workdir}")
    rng = random.Random(args.seed)
    settings = {"clients": args.clients, "threads": args.threads,
                "outstanding": args.outstanding, "timeout": 2}
    served = os.path.join(workdir, "served")
    os.makedirs(served)
    cluster = bench.gen_cluster(binary, workdir, args.soak_services, args.soak_services * 10,
                                args.seed)
    os.replace(cluster, os.path.join(served, "cluster.yaml"))
    ext_zone, ext_names = bench.external_zone(workdir, 2000)
    qfile, weights = soak_queries(bench, binary, served, workdir, rng, ext_names)
    up_dir = os.path.join(workdir, "upstream")
    os.makedirs(up_dir)
    upstream = bench.start_nsd([("example.com", ext_zone)], up_dir, args.client_cpus,
                               (ext_names[0], 1))
    srv = None
    churn = None
    rss = None
    results = {"minutes": args.minutes, "churn_hz": args.churn_hz,
               "services": args.soak_services, "mix_percent": weights, "rows": []}
    try:
        upstream.wait_ready(args.ready_timeout)
        churn = Churn(served, args.churn_hz)
        srv = bench.start_clusterdns(
            binary, served, workdir, args.server_cpus, ("churn-0.default.svc.cluster.local", 1),
            ["--upstream", f"127.0.0.1:{upstream.port}"],
        )
        srv.wait_ready(args.ready_timeout)
        churn.start()
        rss = RssSampler(srv.proc.pid, bench.memory_kib)
        rss.start()
        bench.log(f"soak: saturation ({args.soak_saturation_s} s, churn {args.churn_hz}/s)")
        sat = bench.dnsperf(srv.port, qfile, settings, args.client_cpus,
                            args.soak_saturation_s)
        results["saturation_qps"] = sat["qps"]
        results["saturation_lost"] = sat["lost"]
        target = int(sat["qps"] * 0.8)
        results["target_qps"] = target
        changes_at = churn.changes
        rows = args.minutes * 60 // args.soak_row_s
        for i in range(rows):
            bench.log(f"soak: row {i + 1}/{rows} at {target} q/s")
            t_start = time.monotonic() - rss.t0
            r = dnsperf_verbose(bench, srv.port, qfile, settings, args.client_cpus,
                                args.soak_row_s, target)
            t_end = time.monotonic() - rss.t0
            in_row = [kib for t, kib in rss.samples if t_start <= t <= t_end]
            errors = sum(n for code, n in r["rcodes"].items() if code in ERROR_RCODES)
            results["rows"].append({
                "row": i + 1, "sent": r["sent"], "completed": r["completed"], "lost": r["lost"],
                "qps": r["qps"], "errors": errors, "rcodes": r["rcodes"],
                "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"],
                "rss_kib_end": in_row[-1] if in_row else None,
                "rss_kib_max": max(in_row) if in_row else None,
                "changes": churn.changes - changes_at,
                "seconds": t_end - t_start,
            })
            changes_at = churn.changes
            if srv.proc.poll() is not None:
                raise RuntimeError(f"clusterdns exited during the soak:\n{srv.tail()}")
        churn.stop()
        # The last change must be served: the churn did not leave the server behind.
        name = "churn-0.default.svc.cluster.local"
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 10:
            r = bench.dns_query(srv.port, name, 1, timeout=0.2)
            seen = r[1] if r else None
            if seen == [churn.last_ip]:
                break
            time.sleep(0.01)
        results["last_change_served"] = seen == [churn.last_ip]
        results["last_change_ms"] = (time.monotonic() - t0) * 1e3
        results["rss_samples"] = rss.samples
    finally:
        if churn and churn.is_alive():
            churn.stop()
        if rss:
            rss.stop()
        if srv:
            srv.stop()
        upstream.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    summarise(results, args)
    return results


def summarise(results, args):
    """Warm-up, RSS growth and p99 steadiness from the rows and samples."""
    samples = results.get("rss_samples", [])
    rows = results["rows"]
    if not samples or not rows:
        return
    # Warm-up: the first row (the first minute), or the first half of a one-row run.
    warm = args.soak_row_s if len(rows) > 1 else args.soak_row_s / 2
    base = [kib for t, kib in samples if t <= warm + args.soak_saturation_s]
    after = [kib for t, kib in samples if t > warm + args.soak_saturation_s]
    if base and after:
        results["rss_kib_after_warmup"] = base[-1]
        results["rss_kib_end"] = after[-1]
        results["rss_kib_max"] = max(after)
        results["rss_growth_percent"] = 100.0 * (after[-1] - base[-1]) / base[-1]
    p99s = [r["p99_ms"] for r in (rows[1:] if len(rows) > 1 else rows)]
    results["p99_ms_min"], results["p99_ms_max"] = min(p99s), max(p99s)
    results["errors"] = sum(r["errors"] for r in rows)
    results["lost"] = sum(r["lost"] or 0 for r in rows)


def markdown(results):
    def f(v, d=1):
        return "-" if v is None else f"{v:,.{d}f}"

    out = ["## Soak: 80% of saturation, realistic mix, cluster changing "
           f"{results['churn_hz']} times a second", ""]
    out.append(f"{results['services']} services (file source) + {CHURN_SERVICES} churn "
               "services; mix (%): " + ", ".join(f"{k} {v}" for k, v in
                                                 results["mix_percent"].items()))
    out.append("")
    out.append(f"Saturation {f(results.get('saturation_qps'), 0)} q/s (lost "
               f"{f(results.get('saturation_lost'), 0)}); soak at "
               f"{f(results.get('target_qps'), 0)} q/s for {results['minutes']} min.")
    out.append("")
    out.append("| minute | sent | answered | lost | errors | NXDOMAIN | p50 ms | p99 ms | max ms "
               "| RSS MiB | cluster changes/s |")
    out.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results["rows"]:
        out.append(
            f"| {r['row']} | {f(r['sent'], 0)} | {f(r['completed'], 0)} | {f(r['lost'], 0)} "
            f"| {r['errors']} | {f(r['rcodes'].get('NXDOMAIN', 0), 0)} | {f(r['p50_ms'], 2)} "
            f"| {f(r['p99_ms'], 2)} | {f(r['max_ms'], 1)} "
            f"| {f((r['rss_kib_end'] or 0) / 1024)} | {f(r['changes'] / r['seconds'])} |"
        )
    out.append("")
    growth = results.get("rss_growth_percent")
    out.append("| check | target | measured | met |")
    out.append("|---|---|---|---|")
    errs = int(results.get("errors", 0) + results.get("lost", 0))
    out.append(f"| errors + lost | 0 | {errs} | {'yes' if errs == 0 else '**no**'} |")
    if growth is not None:
        out.append(
            f"| RSS growth after warm-up | < 5% | {growth:+.1f}% "
            f"({f(results['rss_kib_after_warmup'] / 1024)} -> "
            f"{f(results['rss_kib_end'] / 1024)} MiB, max {f(results['rss_kib_max'] / 1024)}) "
            f"| {'yes' if growth < 5 else '**no**'} |"
        )
    if "p99_ms_min" in results:
        lo, hi = results["p99_ms_min"], results["p99_ms_max"]
        steady = hi <= max(2 * lo, lo + 1.0)
        out.append(f"| p99 steady after warm-up | max <= 2x min (or +1 ms) | {f(lo, 2)}-"
                   f"{f(hi, 2)} ms | {'yes' if steady else '**no**'} |")
    out.append(f"| last change served after the soak | yes | "
               f"{'yes' if results.get('last_change_served') else 'no'} "
               f"({f(results.get('last_change_ms'), 0)} ms) | "
               f"{'yes' if results.get('last_change_served') else '**no**'} |")
    return "\n".join(out) + "\n"
