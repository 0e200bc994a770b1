#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the repository's fixtures.

    python3 fuzz/seeds.py OUTDIR      # OUTDIR/TARGET/NAME, one input per file

dns_udp/dns_tcp: the golden rows (tests/fixtures/golden) as wire queries, plus the names every
plugin of the harness Corefile answers and a few malformed messages; corefile: the Corefile
fixtures and the Corefiles written in tests/*.rs; manifests: the example and fixture dumps,
also as kubectl's JSON and YAML `List`s; aws: each AWS fixture directory, files joined by NUL
(the format of the `aws` target); webhook: AdmissionReview bodies as tests/webhook.rs sends them
(a Deployment's pod and its variants for every inject and skip rule, other resources and
operations, bad bodies) and each Pod of the example manifests. fuzz/run.sh merges these into fuzz/corpus before a run.
"""

import glob
import hashlib
import json
import os
import re
import struct
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "NULL": 10, "PTR": 12, "HINFO": 13, "MX": 15,
         "TXT": 16, "AAAA": 28, "SRV": 33, "NAPTR": 35, "OPT": 41, "DS": 43, "DNSKEY": 48,
         "HTTPS": 65, "AXFR": 252, "IXFR": 251, "ANY": 255, "CAA": 257}


def name_wire(name):
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query(name, qtype="A", qid=0x1234, flags=0x0100, edns=None, do=False, qdcount=1):
    """A DNS query: header, one question, optionally an OPT record (edns = payload size)."""
    arcount = 1 if edns is not None else 0
    msg = struct.pack(">HHHHHH", qid, flags, qdcount, 0, 0, arcount)
    msg += name_wire(name) + struct.pack(">HH", TYPES.get(qtype, 1), 1)
    if edns is not None:
        msg += b"\0" + struct.pack(">HHIH", 41, edns, 0x8000 if do else 0, 0)
    return msg


def golden_rows():
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/golden/*.yaml"))):
        with open(path) as f:
            for case in yaml.safe_load(f).get("cases", []):
                yield case["name"], case.get("type", "A")


# Names the harness Corefile's plugins answer (fuzz/src/harness.rs CORE_FILE).
EXTRA = [
    ("example.com", "A"), ("nxthing.example.com", "A"), ("example.com", "AAAA"),
    ("api.example.com.demo.svc.cluster.local", "A"),  # autopath from a demo pod
    ("nginx.demo.svc.cluster.local.demo.svc.cluster.local", "A"),
    ("db.example.com", "A"), ("web.ext.org", "A"), ("nginx.corp.internal", "A"),
    ("12.example.org", "A"), ("x.example.org", "TXT"), ("inline.example", "AAAA"),
    ("7.0.0.10.in-addr.arpa", "PTR"), ("nginx.demo.svc.other.local", "A"),
    ("_http._tcp.web.demo.svc.other.local", "SRV"), ("nginx.demo.svc.cluster.local", "HINFO"),
    ("nginx.demo.svc.cluster.local", "NULL"), ("cluster.local", "AXFR"), ("cluster.local", "SOA"),
    ("cluster.local", "NS"), ("10-1-2-3.demo.pod.cluster.local", "A"),
    ("web-0.web.demo.svc.cluster.local", "A"), ("*.web.demo.svc.cluster.local", "SRV"),
]


def dns_messages():
    rows = list(dict.fromkeys(list(golden_rows()) + EXTRA))
    for i, (name, qtype) in enumerate(rows):
        yield query(name, qtype, qid=i)
        if i % 3 == 0:
            yield query(name.upper(), qtype, qid=i, edns=1232, do=True)
        if i % 5 == 0:
            yield query(name, qtype, qid=i, edns=512, flags=0x0110)  # CD bit
    # Malformed or unusual: a bare header, two questions, a response, NOTIFY, EDNS version 1,
    # a name pointer loop, a question cut short.
    yield struct.pack(">HHHHHH", 1, 0x0100, 0, 0, 0, 0)
    yield query("a.b", "A", qdcount=2)
    yield query("x.cluster.local", "A", flags=0x8100)
    yield query("cluster.local", "SOA", flags=0x2000)
    yield query("x.cluster.local", "A", edns=1232)[:-11] + b"\0" + struct.pack(">HHIH", 41, 1232, 0x00010000, 0)
    yield struct.pack(">HHHHHH", 2, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1)
    yield query("nginx.demo.svc.cluster.local", "A")[:20]


def corefiles():
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/corefiles/*"))):
        with open(path) as f:
            yield f.read()
    # Corefiles written as string literals in the tests ("...:53 {\n..." and raw strings).
    lit = re.compile(r'r#"(.*?)"#|"((?:[^"\\]|\\.)*)"', re.S)
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/*.rs"))):
        with open(path) as f:
            src = f.read()
        for m in lit.finditer(src):
            raw, esc = m.group(1), m.group(2)
            text = raw if raw is not None else esc
            if "{" not in text or "\n" not in text and "\\n" not in text:
                continue
            if not re.search(r"(^|\n|\\n|\{BASE\})\s*[.\w:-]*:?\d* *\{", text):
                continue
            if esc is not None:
                text = (text.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
                        .replace("{{", "{").replace("}}", "}"))
            text = text.replace("{BASE}", ".:0 {\n    bind 127.0.0.1\n")
            if len(text) < 8000:
                yield text
    with open(os.path.join(ROOT, "fuzz/src/harness.rs")) as f:
        m = re.search(r'const CORE_FILE: &str = r#"(.*?)"#', f.read(), re.S)
        yield m.group(1).replace("UPSTREAM", "127.0.0.1:53")


def manifests():
    paths = [os.path.join(ROOT, p) for p in (
        "manifests/examples/demo-cluster.yaml", "manifests/examples/sidecar-pod.yaml")]
    # The deployable manifests (globbed: their layout changes).
    paths += sorted(glob.glob(os.path.join(ROOT, "manifests/base/*.yaml")))
    paths += sorted(glob.glob(os.path.join(ROOT, "manifests/webhook/*.yaml")))
    paths += sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/aws/*/cluster/*")))
    for path in paths:
        with open(path) as f:
            text = f.read()
        yield text
    with open(paths[0]) as f:
        items = [d for d in yaml.safe_load_all(f) if d]
    listed = {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
              "items": items}
    yield json.dumps(listed, indent=4)  # kubectl get -o json
    yield yaml.safe_dump(listed, sort_keys=False)  # kubectl get -o yaml (block style)
    yield json.dumps(items[0])


def aws_cases():
    dirs = sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/aws/*/")))
    dirs += sorted(glob.glob(os.path.join(ROOT, "tests/fixtures/aws/errors/*/")))
    dirs += sorted(glob.glob(os.path.join(ROOT, "manifests/examples/aws*/")))
    for d in dirs:
        files = sorted(f for f in os.listdir(d)
                       if f.endswith((".json", ".yaml", ".yml")) and not f.startswith("."))
        parts = []
        for f in files:
            with open(os.path.join(d, f), "rb") as fh:
                parts.append(fh.read())
        if parts:
            yield b"\0".join(parts)


def review_of(namespace, operation, obj, uid="705ab4f5-6393-11e8-b7cc-42010a800001"):
    """An AdmissionReview v1 body as the API server sends it (tests/webhook.rs review_of)."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {
        "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
        "name": (meta or {}).get("name", ""), "namespace": namespace, "operation": operation,
        "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                     "groups": ["system:serviceaccounts", "system:authenticated"]},
        "object": obj, "oldObject": None, "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}}}


def deployment_pod(namespace, app):
    """The pod a ReplicaSet creates, after defaulting (tests/webhook.rs deployment_pod)."""
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"generateName": app + "-7c5ddbdf54-", "namespace": namespace,
                     "creationTimestamp": None,
                     "labels": {"app": app, "pod-template-hash": "7c5ddbdf54"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": app + "-7c5ddbdf54", "uid": "6a1f9c1e",
                                          "controller": True}]},
        "spec": {
            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}],
                "defaultMode": 420}}],
            "containers": [{"name": app, "image": "nginx:1.27",
                            "ports": [{"containerPort": 80, "protocol": "TCP"}],
                            "resources": {}, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "securityContext": {},
            "schedulerName": "default-scheduler", "enableServiceLinks": True},
        "status": {}}


def admission_reviews():
    import copy

    def variant(ns, edit):
        pod = deployment_pod(ns, "web")
        edit(pod)
        return review_of(ns, "CREATE", pod)

    def setp(path, value):
        def edit(pod):
            d = pod
            for k in path[:-1]:
                d = d.setdefault(k, {})
            d[path[-1]] = value
        return edit

    sidecar = {"name": "clusterdns", "image": "registry.example/clusterdns:1.0",
               "args": ["sidecar"], "restartPolicy": "Always"}
    injected_ann = {"clusterdns.io/status": "injected", "clusterdns.io/reason": "annotation"}
    yield from (variant(ns, lambda p: None) for ns in
                ("default", "kube-system", "batch-nightly", "team", "other", "clusterdns-system"))
    edits = [
        ("batch-nightly", lambda p: (p["metadata"]["labels"].update(compute="fargate"),
                                      p["spec"]["containers"][0].update(resources={
                                          "requests": {"cpu": "250m", "memory": "256Mi"},
                                          "limits": {"memory": "2Gi"}}))),
        ("other", setp(["metadata", "annotations"], {"clusterdns.io/inject": "true"})),
        ("default", setp(["metadata", "annotations"], {"clusterdns.io/inject": " False "})),
        ("default", setp(["spec", "hostNetwork"], True)),
        ("default", setp(["spec", "dnsPolicy"], "Default")),
        ("default", lambda p: p["spec"].update(dnsPolicy="None", dnsConfig={"nameservers": ["1.1.1.1"]})),
        ("default", setp(["spec", "os"], {"name": "windows"})),
        ("default", setp(["metadata", "labels"], {"k8s-app": "kube-dns"})),
        ("default", setp(["metadata", "labels"], {"app.kubernetes.io/name": "clusterdns-webhook"})),
        ("other", setp(["spec", "schedulerName"], "fargate-scheduler")),
        ("default", setp(["spec", "initContainers"], [{"name": "init", "image": "busybox"}])),
        ("default", lambda p: (p["spec"].update(initContainers=[sidecar], dnsPolicy="None"),
                               p["metadata"].update(annotations=dict(injected_ann)))),
        ("default", setp(["spec", "initContainers"], [sidecar])),
        ("default", setp(["spec", "dnsConfig"], {
            "nameservers": ["10.0.0.2", "127.0.0.1", "10.0.0.3"], "searches": ["corp.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]})),
        ("default", setp(["spec", "securityContext"], {"sysctls": [
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "1024"}]})),
        ("default", setp(["spec", "securityContext"], {"sysctls": [
            {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]})),
        ("default", setp(["spec", "securityContext"], {"runAsUser": 1000, "sysctls": [
            {"name": "kernel.shm_rmid_forced", "value": "1"}]})),
        ("default", lambda p: p["spec"].pop("securityContext")),
        ("default", setp(["metadata", "annotations"], {"a/b~c": "x", "clusterdns.io/status": "skipped"})),
        ("default", lambda p: p.pop("spec")),
        ("default", lambda p: p.pop("metadata")),
        ("default", setp(["spec", "containers"], "nginx")),
        ("default", setp(["spec", "overhead"], {"cpu": "250m", "memory": "120Mi"})),
    ]
    for ns, edit in edits:
        yield variant(ns, edit)
    for op in ("UPDATE", "DELETE", "CONNECT"):
        yield review_of("default", op, deployment_pod("default", "web"))
    dep = review_of("default", "CREATE", {"kind": "Deployment", "apiVersion": "apps/v1",
                                          "metadata": {"name": "web"}})
    dep["request"]["kind"] = {"group": "apps", "version": "v1", "kind": "Deployment"}
    dep["request"]["resource"] = {"group": "apps", "version": "v1", "resource": "deployments"}
    yield dep
    sub = review_of("default", "CREATE", deployment_pod("default", "web"))
    sub["request"]["subResource"] = "ephemeralcontainers"
    yield sub
    nons = review_of("", "CREATE", deployment_pod("default", "web"))
    del nons["request"]["namespace"]
    yield nons
    noobj = review_of("default", "CREATE", None)
    yield noobj
    old = copy.deepcopy(nons)
    old["apiVersion"] = "admission.k8s.io/v1beta1"
    yield old
    yield {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}
    yield {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": 1}}
    yield deployment_pod("default", "x")
    for path in ("manifests/examples/sidecar-pod.yaml", "manifests/examples/demo-cluster.yaml"):
        with open(os.path.join(ROOT, path)) as f:
            for d in yaml.safe_load_all(f):
                if d and d.get("kind") == "Pod":
                    ns = d.get("metadata", {}).get("namespace", "default")
                    yield review_of(ns, "CREATE", d)


def write(outdir, target, data):
    if isinstance(data, str):
        data = data.encode()
    d = os.path.join(outdir, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
        f.write(data)


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "fuzz/corpus")
    msgs = list(dns_messages())
    for i, m in enumerate(msgs):
        # Byte 0 picks the client (harness SOURCES); 0x80 asks as if over TCP.
        write(outdir, "dns_udp", bytes([i % 5 | (0x80 if i % 7 == 0 else 0)]) + m)
    frame = lambda m: struct.pack(">H", len(m)) + m
    for i in range(0, len(msgs), 4):
        write(outdir, "dns_tcp", bytes([i % 5]) + b"".join(frame(m) for m in msgs[i:i + 4]))
    write(outdir, "dns_tcp", b"\0" + frame(msgs[0])[:-3])
    for text in corefiles():
        write(outdir, "corefile", text)
    for text in manifests():
        write(outdir, "manifests", text)
    for data in aws_cases():
        write(outdir, "aws", data)
    for i, review in enumerate(admission_reviews()):
        # The API server's encoding (compact) and, for some, an indented one.
        write(outdir, "webhook", json.dumps(review, separators=(",", ":")))
        if i % 4 == 0:
            write(outdir, "webhook", json.dumps(review, indent=2))
    write(outdir, "webhook", b'{"kind": "AdmissionReview", ')
    write(outdir, "webhook", b"not json")


if __name__ == "__main__":
    main()
