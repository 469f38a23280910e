#!/usr/bin/env bash
# Preemption drill for sharded runs: one uninterrupted run against W workers in
# parallel that are each killed (SIGKILL) at random moments and restarted until
# they finish, as a cluster engine would retry them; then `advex merge` and a
# comparison of the merged predictions and report (timing aside).
#
#   tools/kill_sim.sh IMAGES [WORKERS (4)] [KILLS_PER_WORKER (3)] [ARGS for attack...]
#
# Needs target/release/advex and the probe model (both built on demand).
# Prints the kill count and "same predictions, same report" or exits 1.
set -euo pipefail
cd "$(dirname "$0")/.."
images=${1:?usage: tools/kill_sim.sh IMAGES [WORKERS] [KILLS] [attack args...]}
workers=${2:-4}
kills=${3:-3}
shift $(( $# < 3 ? $# : 3 ))
extra=("$@")
[ ${#extra[@]} -gt 0 ] || extra=(--eps 4/255 --format webdataset --shard-size 500)

cargo build --release --quiet --example make_probe
advex=target/release/advex
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
target/release/examples/make_probe "$work/probe.safetensors" >/dev/null
args=(attack --quiet --no-tune --model "$work/probe.safetensors" --images "$images" "${extra[@]}")
run() { "$advex" "${args[@]}" "$@"; }

start=$(date +%s)
run --out "$work/one" >/dev/null
echo "uninterrupted run: $(( $(date +%s) - start )) s"

start=$(date +%s)
total_kills=0
worker() {
    local i=$1 n=0
    while true; do
        # exec: the background job's PID is advex's own, so the kill hits it
        (exec "$advex" "${args[@]}" --out "$work/split" --worker "$i/$workers" >/dev/null 2>&1) &
        local pid=$!
        if [ "$n" -lt "$kills" ]; then
            sleep "$(awk -v s=$RANDOM 'BEGIN { srand(s); printf "%.2f", 2 + rand() * 30 }')"
            if kill -9 "$pid" 2>/dev/null; then
                wait "$pid" 2>/dev/null || true
                n=$((n + 1))
                echo "kill" >> "$work/kills"
                continue
            fi
        fi
        if wait "$pid"; then
            return 0
        fi
        n=$((n + 1)) # it died by itself (it should not): retry like an engine would
    done
}
for i in $(seq 0 $((workers - 1))); do worker "$i" & done
wait
total_kills=$(wc -l < "$work/kills" 2>/dev/null || echo 0)
"$advex" merge "$work/split" >/dev/null
echo "$workers workers, $total_kills kills: $(( $(date +%s) - start )) s"

strip() { grep -v -E '"(seconds|images_per_second)"' "$1"; }
if cmp -s "$work/one/predictions.csv" "$work/split/predictions.csv" \
    && diff <(strip "$work/one/report.json") <(strip "$work/split/report.json") >/dev/null; then
    rows=$(($(wc -l < "$work/split/predictions.csv") - 1))
    echo "same predictions ($rows rows), same report"
else
    echo "MISMATCH between the uninterrupted and the killed runs" >&2
    exit 1
fi
