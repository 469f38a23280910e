#!/usr/bin/env bash
# On a lent GPU machine that has no Rust: the test executables and binaries
# that tools/device_pack.sh packed into .devbin/, run over the GPU's Vulkan
# driver, then tools/gpu_bench.sh. Results land in $OUT (the device tool's
# folder; device-out/ elsewhere), at most 7 files: machine.txt, tests.txt
# (one line per test executable, failures spelled out), tests.tar.gz (full
# logs), summary.txt (every benchmark's output), bench.tar.gz (every step's
# output, results.jsonl, tune.json), before_after.txt (below), and
# DATE_GPU.json, the machine-readable results (tools/bench_results.py; also
# written to benchmarks/results/ here, and made even when gpu_bench.sh is cut
# short): commit it under benchmarks/results/.
# Each phase has its own time limit, so results come back even if one hangs:
#   TEST_LIMIT  seconds for all tests (default 150)   TEST_ONE  one executable (90)
#   BENCH_LIMIT seconds for gpu_bench.sh (default 300) STEP_LIMIT one step (100)
#   TOTAL_LIMIT seconds for the whole call (default 470): the benchmarks get
#               what is left of it (less 15 s to pack the results) when that
#               is less than BENCH_LIMIT, so the call fits the device tool's
#               8 minutes with the tests
#   TESTS=0 / BENCH=0 skip a phase; BATCHES, MODELS etc. go to gpu_bench.sh.
#   TESTS_WEBGPU=1 runs the tests a second time with ADVEX_LIMITS=webgpu.
# The commit: `git rev-parse HEAD` where git works, else target/COMMIT, which
# tools/device_pack.sh writes into the pack.
# When the pack holds target/release/advex-before (ADVEX_BEFORE in
# tools/device_pack.sh), a phase before the benchmarks times it against this
# build, alternating, in the same run (before_after.txt; BEFORE=0 skips it;
# BEFORE_BATCHES and BEFORE_MODEL change what is timed).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RES="${OUT:-device-out}"
mkdir -p "$RES"
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }

# The Vulkan loader (the machine's image has the driver, not the loader).
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$icd" ]; then export VK_DRIVER_FILES=$icd; fi
export NODEVICE_SELECT=1
# Python packages the machine lacks (torchattacks, pyautoattack), unpacked.
if [ -d .whl/site ]; then export PYTHONPATH="$PWD/.whl/site${PYTHONPATH:+:$PYTHONPATH}"; fi

tar -xJf .devbin/bins.tar.xz || { echo "device_check: .devbin/bins.tar.xz missing: run tools/device_pack.sh and carry .devbin" >&2; exit 1; }
# Put the bundled model back where tools/device_pack.sh blanked it.
python3 - weights/efficientnet_lite0.safetensors <<'PY' || exit 1
import sys
model = open(sys.argv[1], "rb").read()
for line in open("target/BLANKED"):
    path, at = line.split()
    with open(path, "r+b") as f:
        f.seek(int(at))
        assert f.read(len(model)) == bytes(len(model)), path
        f.seek(int(at))
        f.write(model)
PY
# The test executables read fixtures through the absolute path they were built in.
manifest=$(cat target/tests/MANIFEST_DIR)
if [ "$manifest" != "$PWD" ]; then
    if [ -e "$manifest" ]; then
        echo "device_check: $manifest exists and is not this checkout; tests may read the wrong files" >&2
    else
        mkdir -p "$(dirname "$manifest")" && ln -s "$PWD" "$manifest"
    fi
fi
{
    date -u; uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi
    ls -l /usr/local/nvidia/share/vulkan/icd.d/ 2>&1
    echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-}"
    target/release/advex devices
} > "$RES/machine.txt" 2>&1
cat "$RES/machine.txt"
echo "== prepared in $(elapsed) s"

run_tests() { # tag (added to names), then environment for the executables
    local tag=$1; shift
    limit=${TEST_LIMIT:-150}
    one=${TEST_ONE:-90}
    ts=$(date +%s)
    for t in target/tests/*; do
        [ -x "$t" ] || continue
        name=$(basename "$t")
        # onnx_effnet's fixture (18 MB) may be left behind to fit the transfer limit.
        skip=()
        if [ "$name" = model ] && [ ! -f tests/fixtures/onnx/efficientnet_lite0.onnx.data ]; then
            skip=(--skip onnx_effnet)
            echo "$name$tag: onnx_effnet skipped (tests/fixtures/onnx/efficientnet_lite0.onnx.data not carried)" >> "$RES/tests.txt"
        fi
        left=$(( limit - ($(date +%s) - ts) ))
        if [ "$left" -le 5 ]; then echo "$name$tag: not run (TEST_LIMIT spent)" | tee -a "$RES/tests.txt"; continue; fi
        lim=$(( left < one ? left : one ))
        s=$(date +%s)
        env "$@" timeout -k 5 "$lim" "$t" --test-threads=8 "${skip[@]}" > "$logs/$name$tag.log" 2>&1
        rc=$?
        result=$(grep '^test result' "$logs/$name$tag.log" | tail -1)
        echo "$name$tag: rc $rc, $(( $(date +%s) - s )) s, ${result:-no result line}" | tee -a "$RES/tests.txt"
        if [ "$rc" -ne 0 ]; then
            grep -E -A12 '^---- |panicked' "$logs/$name$tag.log" | head -60 | sed 's/^/    /' >> "$RES/tests.txt"
        fi
    done
}

# The tensor-core path (--precision mixed) again, its output kept: whether the
# adapter's cooperative matrices ran, the error bound, and the agreement with
# f32 (the tests pass with a note where the adapter has none).
mixed_tests() {
    {
        echo "== --precision mixed (cooperative matrices)"
        [ -x target/tests/ops ] && timeout -k 5 60 target/tests/ops coop --nocapture 2>&1 \
            | grep -E 'skipped|not run|panicked|test result|^test ' | head -20
        [ -x target/tests/iterative ] && timeout -k 5 60 target/tests/iterative mixed_precision --nocapture 2>&1 \
            | grep -E 'skipped|mixed vs f32|panicked|test result|^test ' | head -20
    } >> "$RES/tests.txt"
}

if [ "${TESTS:-1}" != 0 ]; then
    logs=$(mktemp -d)
    mixed_tests
    run_tests "" ADVEX_LIMITS=adapter
    [ "${TESTS_WEBGPU:-0}" = 1 ] && run_tests "@webgpu" ADVEX_LIMITS=webgpu
    tar -C "$logs" -czf "$RES/tests.tar.gz" .
    echo "== tests done at $(elapsed) s"
fi

if [ "${BEFORE:-1}" != 0 ] && [ -x target/release/advex-before ]; then
    # ABAB, each a fresh process: FGSM at 1 and 8 eps, f32, autotune off (the
    # same kernels both sides unless the change is in the kernels).
    for round in 1 2; do
        for which in before after; do
            exe=target/release/advex; [ "$which" = before ] && exe=target/release/advex-before
            for eps in 1/255 1/255,2/255,3/255,4/255,5/255,6/255,7/255,8/255; do
                timeout -k 5 120 "$exe" bench --batch-size "${BEFORE_BATCHES:-1,8,128}" --eps "$eps" --no-tune --json \
                    ${BEFORE_MODEL:+--model "$BEFORE_MODEL"} 2>/dev/null \
                    | sed "s/^/$which $round /" >> "$RES/before_after.txt"
            done
        done
    done
    python3 - "$RES/before_after.txt" <<'PY' | tee -a "$RES/before_after.txt"
import json, sys
rows = {}
for line in open(sys.argv[1]):
    which, rnd, js = line.split(" ", 2)
    if not js.startswith("{"):
        continue
    r = json.loads(js)
    rows.setdefault((r["batch_size"], r["eps_count"]), {}).setdefault(which, []).append(r["images_per_second"])
print("batch eps   before img/s (runs)      after img/s (runs)   after/before (best)")
for (b, k), v in sorted(rows.items()):
    bf, af = v.get("before", []), v.get("after", [])
    if bf and af:
        print(f"{b:5d} {k:3d}  {' '.join(f'{x:9.1f}' for x in bf):>22}  {' '.join(f'{x:9.1f}' for x in af):>22}  {max(af) / max(bf):6.3f}")
PY
    echo "== before/after done at $(elapsed) s"
fi

if [ "${BENCH:-1}" != 0 ]; then
    bench=$(mktemp -d)
    limit=${BENCH_LIMIT:-300}
    left=$(( ${TOTAL_LIMIT:-470} - $(elapsed) - 15 ))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 20 ]; then
        echo "== bench: not run (TOTAL_LIMIT spent: $(elapsed) s gone)" | tee "$bench/summary.txt"
    else
        echo "== bench: $limit s"
        STEP_LIMIT=${STEP_LIMIT:-100} timeout -k 10 "$limit" tools/gpu_bench.sh "$bench"
        echo "   (gpu_bench.sh exited $?)" >> "$bench/summary.txt"
    fi
    # The machine-readable file, also when gpu_bench.sh was cut short (same
    # run: the same file, rewritten).
    timeout -k 5 30 python3 tools/bench_results.py --bench-dir "$bench" --out-dir "${RESULTS_DIR:-benchmarks/results}" --copy-to "$RES" 2>&1 | tee -a "$bench/summary.txt"
    cp "$bench/summary.txt" "$RES/summary.txt"
    tar -C "$bench" -czf "$RES/bench.tar.gz" .
    echo "== bench done at $(elapsed) s"
fi
