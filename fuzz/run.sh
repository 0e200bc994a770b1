#!/bin/sh
# Runs every fuzz target for SECONDS each (default 600), one after another, at nice 19:
#
#     fuzz/run.sh [SECONDS] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Each target starts
# from its committed corpus (fuzz/corpus/TARGET, where libFuzzer adds what it finds) plus fresh
# seeds from the fixtures (fuzz/seeds.py), with its dictionary (fuzz/dict). Afterwards the
# corpus is minimised (`cargo fuzz cmin`; CMIN=0 skips that). Logs: fuzz/logs/TARGET.log;
# crashes: fuzz/artifacts/TARGET/. The last lines print, per target, the figures of
# fuzz/RESULTS.md: executions, exec/s, coverage (libFuzzer's final cov and ft), the corpus
# (files after the run -> after cmin), new crashes, and the commit they were built from.
set -u
cd "$(dirname "$0")/.."
secs=${1:-600}
[ $# -gt 0 ] && shift
targets=${*:-dns_udp dns_tcp corefile manifests aws webhook}
seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
python3 fuzz/seeds.py "$seeds" || exit 1
nice -n 19 cargo +nightly fuzz build || exit 1
mkdir -p fuzz/logs
commit=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src fuzz/src 2>/dev/null || echo +changes)
for t in $targets; do
    case $t in
        dns_*) dict=dns ;;
        *) dict=$t ;;
    esac
    mkdir -p "fuzz/corpus/$t" "$seeds/$t"
    before=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    echo "== $t: $secs s from $(date -u +%FT%TZ)"
    nice -n 19 cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "$seeds/$t" -- \
        -max_total_time="$secs" -dict="fuzz/dict/$dict.dict" -print_final_stats=1 \
        -timeout=10 -rss_limit_mb=4096 > "fuzz/logs/$t.log" 2>&1
    status=$?
    after=$(ls "fuzz/artifacts/$t" 2>/dev/null | wc -l)
    execs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "fuzz/logs/$t.log" | tail -1 | awk '{print $2}')
    last=$(grep -E '^#[0-9]+' "fuzz/logs/$t.log" | tail -1)
    cov=$(echo "$last" | grep -o 'cov: [0-9]*' | awk '{print $2}')
    ft=$(echo "$last" | grep -o 'ft: [0-9]*' | awk '{print $2}')
    rate=$(grep -o 'stat::average_exec_per_sec: [0-9]*' "fuzz/logs/$t.log" | tail -1 | awk '{print $2}')
    files=$(ls "fuzz/corpus/$t" | wc -l)
    if [ "${CMIN:-1}" = 1 ] && [ "$status" = 0 ]; then
        nice -n 19 cargo +nightly fuzz cmin "$t" "fuzz/corpus/$t" > "fuzz/logs/$t.cmin.log" 2>&1 ||
            echo "$t: cmin failed, see fuzz/logs/$t.cmin.log"
    fi
    echo "$t exit=$status execs=${execs:-?} exec/s=${rate:-?} cov=${cov:-?} ft=${ft:-?}" \
        "corpus=$files->$(ls "fuzz/corpus/$t" | wc -l) new_crashes=$((after - before))" \
        "commit=$commit" | tee "fuzz/logs/$t.summary"
done
for t in $targets; do cat "fuzz/logs/$t.summary"; done
