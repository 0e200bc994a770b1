#!/usr/bin/env python3
"""Lists the functions clusterdns runs, for the linker to place together.

    python3 bench/code_order.py --bin target/x86_64-unknown-linux-gnu/image/clusterdns \
        [--kubeconfig FILE] [--out build/code-order.txt]

Why: the kernel maps up to 64 KiB of a binary's cached pages around every page fault in its
code, so the code a process keeps resident is about how many 64 KiB windows of the 26 MB
`.text` it ever touched, not how much code it runs. Scattered by the linker's default order,
the 1-2 MB a server runs touched 10-13 MiB (bench/RESULTS.md, issue 17). Placed together
(lld's --symbol-ordering-file, applied by build/link-ordered), they touch a few MiB.

How: runs the binary under callgrind (every function that runs at least once, with its own
instruction count) in the ways a user runs it: `serve` on the embedded demo, on a cluster
file in YAML and in JSON, and on the API with streaming and with paged lists (when
--kubeconfig is given: `cargo bench --bench memory -- --hold` prints one to follow),
queried over UDP and TCP for every record kind, its metrics, health and readiness read; and
`sidecar` in front of a server. Names are written demangled, without crate hashes: those
change with the build profile, the crate versions and the compiler, the path does not, so
one list serves the `image` and `release` builds and survives most edits. The binary must
be built with `-C symbol-mangling-version=v0` (as .ci/build-image does): the legacy mangling
hides generic arguments in a hash. build/link-ordered maps each name back to the symbols of
the build being linked.

Needs valgrind, dig, curl and c++filt (binutils). Takes a few minutes (callgrind runs code ~50x slower).
"""

import argparse
import collections
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from run import free_port, gen_cluster  # bench/run.py, beside this script

# ThinLTO and cross-codegen-unit calls give local functions a `.llvm.N` suffix.
LLVM_SUFFIX = re.compile(r"\.llvm\.[0-9]+$")
CRATE_HASH = re.compile(r"\[[0-9a-f]+\]")


def keys(symbols):
    """Demangled names without crate hashes, as build/link-ordered computes them."""
    plain = [LLVM_SUFFIX.sub("", s) for s in symbols]
    out = subprocess.run(["c++filt"], input="\n".join(plain) + "\n", capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert len(out) == len(plain), "c++filt: one line per symbol"
    return [CRATE_HASH.sub("", k) for k in out]


QUERIES = [
    ("kubernetes.default.svc.cluster.local", "A"),
    ("kubernetes.default.svc.cluster.local", "AAAA"),
    ("kube-dns.kube-system.svc.cluster.local", "A"),
    ("_dns._udp.kube-dns.kube-system.svc.cluster.local", "SRV"),
    ("_dns-tcp._tcp.kube-dns.kube-system.svc.cluster.local", "SRV"),
    ("kube-dns.kube-system.svc.cluster.local", "SRV"),
    ("nginx.demo.svc.cluster.local", "A"),
    ("nginx.demo.svc.cluster.local", "AAAA"),
    ("nginx.demo.svc.cluster.local", "TXT"),
    ("missing.demo.svc.cluster.local", "A"),
    ("demo.svc.cluster.local", "A"),
    ("cluster.local", "SOA"),
    ("cluster.local", "NS"),
    ("10.0.0.10.in-addr.arpa", "PTR"),
    ("1.0.100.10.in-addr.arpa", "PTR"),
    ("10-0-1-5.demo.pod.cluster.local", "A"),
    ("dns-version.cluster.local", "TXT"),
    ("example.com", "A"),
]


def dig(port, name, qtype, tcp=False):
    args = ["dig", "+time=5", "+tries=1", f"@127.0.0.1", "-p", str(port), name, qtype]
    if tcp:
        args.insert(1, "+tcp")
    return subprocess.run(args, capture_output=True, text=True).stdout


def ready(url):
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url],
                       capture_output=True, text=True)
    return r.stdout == "200"


def wait_answering(port, proc, ready_url, deadline_s=600):
    """Until the process answers DNS and its readiness endpoint says ready (synced)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"code_order: the process exited with {proc.returncode} before answering")
        if "status: " in dig(port, "kubernetes.default.svc.cluster.local", "A") and ready(ready_url):
            return
        time.sleep(0.5)
    sys.exit("code_order: no answer within the deadline")


def curl(url):
    subprocess.run(["curl", "-s", "-o", "/dev/null", "--max-time", "10", url])


def exercise(port, http_ports):
    for tcp in (False, True):
        for name, qtype in QUERIES:
            dig(port, name, qtype, tcp)
    for url in http_ports:
        curl(url)


def under_callgrind(out, bin_, args):
    cmd = [
        "valgrind", "--tool=callgrind", "--demangle=no", "--compress-strings=no",
        f"--callgrind-out-file={out}", bin_,
    ] + args
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def serve_run(bin_, out, extra):
    port = free_port()
    proc = under_callgrind(out, bin_, ["serve", "--dns-addr", f"127.0.0.1:{port}", "--log", "warn"] + extra)
    try:
        wait_answering(port, proc, "http://127.0.0.1:8181/ready")
        exercise(port, ["http://127.0.0.1:9153/metrics", "http://127.0.0.1:8080/health",
                        "http://127.0.0.1:8181/ready"])
    finally:
        stop(proc)


def sidecar_run(bin_, out):
    up = free_port()
    server = subprocess.Popen([bin_, "serve", "--dns-addr", f"127.0.0.1:{up}", "--log", "warn"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_answering(up, server, "http://127.0.0.1:8181/ready", 60)
        port = free_port()
        with tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False) as f:
            f.write("search demo.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
            resolv = f.name
        proc = under_callgrind(out, bin_, [
            "sidecar", "--upstream", f"127.0.0.1:{up}", "--listen", f"127.0.0.1:{port}",
            "--health", "127.0.0.1:8054", "--ready", "127.0.0.1:8055",
            "--metrics", "127.0.0.1:9154", "--autopath", resolv, "--log", "warn",
        ])
        try:
            wait_answering(port, proc, "http://127.0.0.1:8055/ready")
            exercise(port, ["http://127.0.0.1:9154/metrics", "http://127.0.0.1:8054/health",
                            "http://127.0.0.1:8055/ready"])
            dig(port, "nginx.demo.svc.cluster.local.demo.svc.cluster.local", "A")
        finally:
            stop(proc)
            os.unlink(resolv)
    finally:
        stop(server)


def cluster_files(bin_, d):
    """A synthetic cluster as `kubectl get -o yaml` and `-o json` print it: the file source
    decodes each format with its own code."""
    yaml_path = gen_cluster(bin_, d, 300, 2000, 1)
    with open(yaml_path) as f:
        text = f.read()
    paths = [yaml_path]
    try:
        import json
        import yaml  # PyYAML, where installed: the JSON form is optional
    except ImportError:
        print("code_order: no PyYAML; the JSON file source is not profiled", file=sys.stderr)
        return paths
    docs = [x for x in yaml.safe_load_all(text) if x]
    items = docs[0]["items"] if len(docs) == 1 and "items" in docs[0] else docs
    json_path = os.path.join(d, "cluster.json")
    with open(json_path, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
    paths.append(json_path)
    return paths


def self_costs(path):
    """Function name -> its own instruction count, from a callgrind output file."""
    costs = collections.Counter()
    fn = None
    skip_next = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("fn="):
                fn = line[3:].strip()
                costs[fn] += 0
            elif line.startswith("cfn="):
                costs[line[4:].strip()] += 0
            elif line.startswith("calls="):
                skip_next = True  # the next line is the call's inclusive cost
            elif fn and line[:1] and line[:1] in "0123456789+-*":
                if skip_next:
                    skip_next = False
                    continue
                parts = line.split()
                if len(parts) >= 2 and parts[1].isdigit():
                    costs[fn] += int(parts[1])
    return costs


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True, help="an unstripped clusterdns binary")
    p.add_argument("--kubeconfig", help="an API server to follow (e.g. memory bench --hold)")
    p.add_argument("--out", default="build/code-order.txt")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        outs = []
        runs = [("serve, embedded demo", lambda o: serve_run(a.bin, o, []))]
        for path in cluster_files(a.bin, d):
            runs.append((f"serve, {os.path.basename(path)}",
                         lambda o, path=path: serve_run(a.bin, o, ["--manifests", path])))
        if a.kubeconfig:
            for mode in ("auto", "paged"):
                runs.append((f"serve, API, {mode} lists", lambda o, mode=mode: serve_run(
                    a.bin, o, ["--kubeconfig", a.kubeconfig, "--initial-list", mode])))
        runs.append(("sidecar", lambda o: sidecar_run(a.bin, o)))
        for i, (label, run) in enumerate(runs):
            out = os.path.join(d, f"cg.{i}")
            t = time.monotonic()
            run(out)
            print(f"{label}: {time.monotonic() - t:.0f} s", file=sys.stderr)
            outs.append(out)
        total = collections.Counter()
        in_sidecar = set()
        in_serve = set()
        for (label, _), out in zip(runs, outs):
            for fn, c in self_costs(out).items():
                # Anything that ran at least once counts; the hottest go first.
                total[fn] += c + 1
                (in_sidecar if label == "sidecar" else in_serve).add(fn)
    # Three groups, each hottest first: what both modes run, what only the sidecar runs, what
    # only the server runs. A sidecar (one per micro-VM pod) then touches the first two alone,
    # the server the first and the last.
    group = {fn: (fn not in in_sidecar) * 2 + (fn not in in_serve) for fn in total}
    ordered = sorted(total, key=lambda fn: (group[fn], -total[fn]))
    symbols = []
    for fn in ordered:
        # callgrind's names: "sym" or "sym'2" (a recursion level); the file lists symbols only.
        sym = fn.split("'")[0].split(" ")[0]
        if sym and not sym.startswith("0x"):
            symbols.append(sym)
    names = []
    seen = set()
    for key in keys(symbols):
        if key not in seen:
            seen.add(key)
            names.append(key)
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as f:
        f.write("# Functions clusterdns runs: both modes, the sidecar only, the server only, each\n")
        f.write("# hottest first (bench/code_order.py; demangled, without crate hashes).\n")
        f.write("# build/link-ordered places them first in .text.\n")
        for n in names:
            f.write(n + "\n")
    print(f"{len(names)} functions -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
