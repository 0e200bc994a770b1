"""Rolling restart and thousands-of-sidecars sections of bench/run.py (issue 15).

    python3 bench/run.py --only restart,tcp [--quick]

restart: two clusterdns servers share one port through SO_REUSEPORT (as two replicas behind
  a Service), dnsperf sends a steady UDP stream and a TCP stream over persistent connections,
  and each server in turn gets SIGTERM with `lameduck 2s` and is replaced by a new one on the
  same port. Reported: queries sent, answered and lost per protocol; per stop, how long
  /ready took to turn 503 and the process to exit (and its status).
tcp: against clusterdns and Knot, each pinned to one CPU: dnsperf over 20 persistent TCP
  connections (queries per second and per CPU-second); then N persistent TCP connections
  (10 000; 2 000 with --quick) from 100 client addresses, each answered once: memory per
  connection (RSS growth / N); then dnsperf again beside them. Ratios to Knot measured in the
  same run.

`run` is bench/run.py itself (its helpers: Server, dnsperf, memory and CPU accounting).
"""

import os
import re
import resource
import selectors
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request

PROBE = ("kube-dns.kube-system.svc.cluster.local", 1)


def http_status(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


class Replica:
    """One `clusterdns serve --corefile` on a shared port; knows its /ready address."""

    def __init__(self, binary, corefile, manifests, workdir, tag):
        self.log_path = os.path.join(workdir, f"restart-{tag}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "serve", "--corefile", corefile, "--manifests", manifests, "--log", "warn"],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.ready = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60:
            if self.proc.poll() is not None:
                raise RuntimeError(f"clusterdns exited: {self.log_path}")
            with open(self.log_path) as f:
                for line in f:
                    if "serving ready on http://" in line:
                        self.ready = line.split("http://", 1)[1].strip()
            if self.ready and http_status(self.ready, "/ready") == 200:
                return
            time.sleep(0.02)
        raise RuntimeError(f"clusterdns not ready: {self.log_path}")

    def stop(self, lameduck_s):
        """SIGTERM; (seconds until /ready said 503, seconds until exit, exit status)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        ready_503 = None
        while self.proc.poll() is None and time.monotonic() - t0 < lameduck_s + 10:
            if ready_503 is None and http_status(self.ready, "/ready") == 503:
                ready_503 = time.monotonic() - t0
            time.sleep(0.002)
        try:
            code = self.proc.wait(1)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        exited = time.monotonic() - t0
        self.log.close()
        return ready_503, exited, code


def dnsperf_async(port, qfile, mode, clients, qps, duration, out_path):
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", qfile, "-l", str(duration),
            "-m", mode, "-c", str(clients), "-Q", str(qps), "-t", "3", "-q", "200"]
    return subprocess.Popen(argv, stdout=open(out_path, "w"), stderr=subprocess.STDOUT)


def parse_dnsperf(run, path):
    with open(path) as f:
        text = f.read()
    r = {}
    for k, pat in run.DNSPERF_PATTERNS.items():
        m = re.search(pat, text)
        r[k] = float(m.group(1)) if m else None
    return r


def run_rolling_restart(run, binary, cluster, qfile, workdir, args, results):
    lameduck = 2
    port = run.free_port()
    corefile = os.path.join(workdir, "restart.Corefile")
    with open(corefile, "w") as f:
        f.write(
            f""".:{port} {{
    bind 127.0.0.1
    health 127.0.0.1:0 {{
        lameduck {lameduck}s
    }}
    ready 127.0.0.1:0
    kubernetes cluster.local in-addr.arpa ip6.arpa
    loadbalance
}}
"""
        )
    run.log("restart: two replicas on one port")
    live = [Replica(binary, corefile, cluster, workdir, "a0"),
            Replica(binary, corefile, cluster, workdir, "b0")]
    duration = 8 if args.quick else 16
    udp_qps, tcp_qps = (2000, 1000) if args.quick else (5000, 2000)
    udp = dnsperf_async(port, qfile, "udp", 4, udp_qps, duration,
                        os.path.join(workdir, "restart-udp.txt"))
    tcp = dnsperf_async(port, qfile, "tcp", 8, tcp_qps, duration,
                        os.path.join(workdir, "restart-tcp.txt"))
    stops = []
    try:
        time.sleep(1)  # the stream is running before the first stop
        for i, tag in enumerate(("a", "b")):
            old = live.pop(0)
            run.log(f"restart: SIGTERM replica {tag} (lameduck {lameduck}s)")
            ready_503, exited, code = old.stop(lameduck)
            stops.append({"replica": tag, "ready_503_ms": ready_503 and ready_503 * 1e3,
                          "exit_s": exited, "exit_code": code})
            live.append(Replica(binary, corefile, cluster, workdir, f"{tag}1"))
        udp.wait(duration + 30)
        tcp.wait(duration + 30)
    finally:
        for p in (udp, tcp):
            if p.poll() is None:
                p.kill()
        for r in live:
            r.stop(lameduck)
    results["rolling_restart"] = {
        "lameduck_s": lameduck,
        "duration_s": duration,
        "udp": parse_dnsperf(run, os.path.join(workdir, "restart-udp.txt")),
        "tcp": parse_dnsperf(run, os.path.join(workdir, "restart-tcp.txt")),
        "stops": stops,
        "offered_qps": {"udp": udp_qps, "tcp": tcp_qps},
    }


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def query_bytes(qid, name):
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    return struct.pack(">H", len(q)) + q


def hold_connections(port, n, name):
    """Opens n TCP connections (100 per source address in 127.0.1.0/24), asks one query on
    each and reads every answer. Returns the sockets (still open) and how many answered."""
    socks = []
    sel = selectors.DefaultSelector()
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((f"127.0.1.{i // 100 % 250 + 1}", 0))
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.sendall(query_bytes(i & 0xFFFF, name))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, bytearray())
        socks.append(s)
    answered, t0 = 0, time.monotonic()
    pending = n
    while pending and time.monotonic() - t0 < 60:
        for key, _ in sel.select(timeout=1):
            try:
                data = key.fileobj.recv(4096)
            except BlockingIOError:
                continue
            buf = key.data
            buf.extend(data)
            if not data or (len(buf) >= 2 and len(buf) >= 2 + struct.unpack(">H", buf[:2])[0]):
                if data:
                    answered += 1
                sel.unregister(key.fileobj)
                pending -= 1
    sel.close()
    return socks, answered


def run_tcp_clients(run, binary, cluster, zones, qfile, workdir, args, results):
    n = 2000 if args.quick else 10000
    limit = raise_nofile()
    if limit < n + 500:
        raise RuntimeError(f"the open-file limit {limit} is below {n + 500}")
    duration = args.duration
    out = {"connections": n, "servers": {}}
    # Knot accepts half its descriptor limit by default (10 000 under 20 000): room for n + 1000.
    knot_extra = f"    tcp-idle-timeout: 300s\n    tcp-max-clients: {n + 1000}\n"
    for name in ("clusterdns", "knot"):
        run.log(f"tcp: {name}: {n} persistent connections")
        if name == "clusterdns":
            srv = run.start_clusterdns(binary, cluster, workdir, args.server_cpus, PROBE,
                                       ["--tcp-idle-timeout", "300s"])
        else:
            srv = run.start_knot(zones, workdir, args.server_cpus, PROBE, knot_extra)
        r = {}
        try:
            srv.wait_ready(args.ready_timeout)
            # dnsperf over 20 persistent TCP connections, alone, then beside the n held. (With
            # 50 or more, Knot 3.2 with one TCP worker stalls and dnsperf counts its queries
            # lost, here and without the held connections.)
            settings = {"clients": 20, "threads": 1, "outstanding": 100, "timeout": 3}
            r["alone"] = perf_with_cpu(run, srv, qfile, settings, args.client_cpus, duration)
            before = run.memory_kib(srv.proc.pid)
            t0 = time.monotonic()
            socks, answered = hold_connections(srv.port, n, PROBE[0])
            r["connect_and_answer_s"] = time.monotonic() - t0
            after = run.memory_kib(srv.proc.pid)
            r["answered"] = answered
            r["rss_before_kib"], r["rss_after_kib"] = before["rss_kib"], after["rss_kib"]
            r["kib_per_connection"] = (after["rss_kib"] - before["rss_kib"]) / n
            r["held"] = perf_with_cpu(run, srv, qfile, settings, args.client_cpus, duration)
            for s in socks:
                s.close()
        finally:
            srv.stop()
        out["servers"][name] = r
    results["tcp_clients"] = out


def perf_with_cpu(run, srv, qfile, settings, cpus, duration):
    c0 = run.cpu_seconds(srv.proc.pid)
    perf = tcp_perf(run, srv.port, qfile, settings, cpus, duration)
    cpu = run.cpu_seconds(srv.proc.pid) - c0
    return {"qps": perf["qps"], "lost": perf["lost"], "completed": perf["completed"],
            "cpu_s": cpu, "qps_per_cpu_second": perf["completed"] / max(1e-9, cpu)}


def tcp_perf(run, port, qfile, settings, cpus, duration):
    argv = ["dnsperf", "-m", "tcp", "-s", "127.0.0.1", "-p", str(port), "-d", qfile,
            "-l", str(duration), "-c", str(settings["clients"]), "-q", str(settings["outstanding"]),
            "-t", str(settings["timeout"])]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    text = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    r = {}
    for k, pat in run.DNSPERF_PATTERNS.items():
        m = re.search(pat, text)
        r[k] = float(m.group(1)) if m else None
    if r["completed"] is None:
        raise RuntimeError(f"dnsperf -m tcp failed: {text}")
    return r


def markdown(run, results):
    L = []
    rr = results.get("rolling_restart")
    if rr:
        L.append("")
        L.append(f"### Rolling restart (two replicas on one port, SO_REUSEPORT; lameduck "
                 f"{rr['lameduck_s']} s; each replaced in turn during {rr['duration_s']} s of "
                 f"dnsperf at {rr['offered_qps']['udp']} qps UDP + {rr['offered_qps']['tcp']} qps "
                 "TCP over 8 persistent connections)")
        L.append("")
        L.append("| protocol | sent | answered | lost |")
        L.append("|---|---|---|---|")
        for proto in ("udp", "tcp"):
            d = rr[proto]
            L.append(f"| {proto.upper()} | {run.fmt(d['sent'])} | {run.fmt(d['completed'])} | "
                     f"{run.fmt(d['lost'])} |")
        L.append("")
        L.append("| stopped replica | /ready 503 after | exited after | exit status |")
        L.append("|---|---|---|---|")
        for s in rr["stops"]:
            L.append(f"| {s['replica']} | {run.fmt(s['ready_503_ms'], 1)} ms | "
                     f"{run.fmt(s['exit_s'], 2)} s | {s['exit_code']} |")
        L.append("")
        L.append("A TCP query lost here was written to a connection the stopping replica closed "
                 "(at a message boundary, after answering everything it had read): dnsperf does "
                 "not resend it, RFC 7766 clients do (tests/reliability_server.rs counts such "
                 "resends and requires every query answered).")
    tc = results.get("tcp_clients")
    if tc:
        c, k = tc["servers"].get("clusterdns", {}), tc["servers"].get("knot", {})
        L.append("")
        L.append(f"### Thousands of sidecars: {tc['connections']:,} persistent TCP connections "
                 "(100 client addresses), and dnsperf over 20 more TCP connections before and "
                 "while they are held (server pinned to one CPU)")
        L.append("")
        L.append("| | clusterdns | Knot | clusterdns / Knot |")
        L.append("|---|---|---|---|")
        L.append(f"| connections answered | {run.fmt(c.get('answered'))} | "
                 f"{run.fmt(k.get('answered'))} | |")
        L.append(f"| RSS with them held | {run.fmt((c.get('rss_after_kib') or 0) / 1024, 1)} MiB | "
                 f"{run.fmt((k.get('rss_after_kib') or 0) / 1024, 1)} MiB | "
                 f"{run.ratio(c.get('rss_after_kib'), k.get('rss_after_kib'))} |")
        L.append(f"| memory per connection (RSS growth / N) | {run.fmt(c.get('kib_per_connection'), 2)} KiB | "
                 f"{run.fmt(k.get('kib_per_connection'), 2)} KiB | "
                 f"{run.ratio(c.get('kib_per_connection'), k.get('kib_per_connection'))} |")
        for key, what in (("alone", "alone"), ("held", f"beside the {tc['connections']:,} held")):
            cp, kp = c.get(key, {}), k.get(key, {})
            L.append(f"| TCP queries per second, {what} | {run.fmt(cp.get('qps'))} | "
                     f"{run.fmt(kp.get('qps'))} | {run.ratio(cp.get('qps'), kp.get('qps'))} |")
            L.append(f"| TCP queries per CPU-second (per core), {what} | "
                     f"{run.fmt(cp.get('qps_per_cpu_second'))} | {run.fmt(kp.get('qps_per_cpu_second'))} | "
                     f"{run.ratio(cp.get('qps_per_cpu_second'), kp.get('qps_per_cpu_second'))} |")
            L.append(f"| lost, {what} | {run.fmt(cp.get('lost'))} | {run.fmt(kp.get('lost'))} | |")
    return "\n".join(L)
