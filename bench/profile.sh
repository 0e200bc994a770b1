#!/usr/bin/env bash
# Profiles clusterdns's query path under dnsperf load with callgrind (perf's hardware counters
# are not available in this VM: `perf stat -e instructions true` says <not supported>).
#
#   bench/profile.sh MANIFESTS QUERY_FILE [QUERIES]
#
# MANIFESTS: a cluster (e.g. from `clusterdns gen-cluster`); QUERY_FILE: dnsperf input (e.g.
# from `python3 bench/run.py --quick --keep`: queries-mix.txt in the kept dir). Instrumentation
# starts only once the server answers, so the load is not in the profile. Prints the top
# functions by inclusive and exclusive cost, and the instructions per query.
set -euo pipefail
manifests=$1 queries=$2 n=${3:-20000}
for t in valgrind callgrind_control callgrind_annotate dnsperf; do
  command -v "$t" >/dev/null || { echo "missing $t: apt-get install -y valgrind dnsperf" >&2; exit 2; }
done
bin=${CARGO_TARGET_DIR:-target}/release/clusterdns
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
out=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/callgrind.out" \
  "$bin" serve --manifests "$manifests" --dns-addr "127.0.0.1:$port" --log warn \
  >"$out/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1200); do
  dig +time=1 +tries=1 +short @127.0.0.1 -p "$port" kube-dns.kube-system.svc.cluster.local A 2>/dev/null | grep -q . && break
  sleep 0.5
done
callgrind_control -i on "$pid" >/dev/null
head -n "$n" "$queries" >"$out/q.txt"
dnsperf -s 127.0.0.1 -p "$port" -d "$out/q.txt" -n 1 -Q 1000 -c 4 -q 20 -t 5 | grep -E "Queries (sent|completed)"
callgrind_control -i off "$pid" >/dev/null
callgrind_control -d "$pid" >/dev/null
kill "$pid"; wait "$pid" 2>/dev/null || true
trap - EXIT
# The dump taken while instrumented (callgrind.out.1); the file written at exit is empty.
f=$(ls -S "$out"/callgrind.out* | head -1)
total=$(awk '/^totals:/{print $2}' "$f")
echo "instructions per query: $((total / n)) (total $total over $n queries)"
short() { sed -n '/file:function/,$p' | sed -E 's#/root/.cargo/registry/src/[^/]+/##; s#/rustc/[0-9a-f]+/##' | cut -c1-200; }
echo "--- inclusive"; { callgrind_annotate --inclusive=yes "$f" | short | head -60; } || true
echo "--- exclusive"; { callgrind_annotate "$f" | short | head -40; } || true
echo "profile: $f"
