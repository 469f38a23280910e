#!/usr/bin/env bash
# The GPU numbers of BENCHMARKS.md in one command: adapter, advex against
# PyTorch (CUDA when torch sees a GPU; each of its modes: strict fp32, default
# with TF32 convolutions, amp fp16) in one run, on EfficientNet-Lite0 and on
# ResNet-50 and WRN-28-10 made here (tools/bench_models.py), PGD / APGD
# against torchattacks / AutoAttack, AutoAttack's standard version whole
# against the reference code, the per-op profiles, the autotune's
# effect, the per-kernel GFLOP/s table; then ONE machine-readable file,
# RESULTS_DIR/DATE_GPU.json (tools/bench_results.py; DATE_cpu-ADAPTER.json
# where torch has no GPU).
#
#   tools/gpu_bench.sh [OUT_DIR]          # default OUT_DIR: bench-out
#
# Most important first, so that a run cut short still has it:
# EfficientNet-Lite0 FGSM at BATCHES x EPS_COUNTS; ResNet-50 and WRN-28-10;
# EfficientNet f16; PGD and APGD; profiles; advex alone (tuned, untuned,
# 8-eps sweep, MNIST); kernels last.
#
# Uses ADVEX (default target/release/advex; built here when cargo exists; a
# machine without Rust, such as a lent GPU box, takes a binary built elsewhere
# and copied into target/release/) and target/release/kernels-bench if present
# (copy of `cargo bench --no-run --bench kernels`'s executable). Environment:
#   BATCHES      EfficientNet-Lite0 batch sizes (default 1,8,128)
#   EPS_COUNTS   sweep lengths for the PyTorch comparison (default 1,8)
#   ITERATIONS   timed batches per configuration there (default 5)
#   PRECISIONS   advex storage types compared (default f32,mixed; one the
#                binary does not offer is skipped, and noted)
#   TORCH_MODES  PyTorch's modes timed for FGSM (default strict,default,amp;
#                strict only on CPU)
#   MODELS       generated models and their batch, NAME:BATCH, comma or space
#                separated (default "resnet50:64,wrn28_10:512"; "none" skips)
#   MODEL_EPS_COUNTS, MODEL_ITERATIONS   for those (default 1 and 3)
#   MODEL_DIR    where they are made (default bench-models, ignored by git)
#   F16=0        skip EfficientNet f16 at the largest batch
#   ITERATIVE=0  skip PGD and APGD against torchattacks and AutoAttack (run when
#                PYTHON imports torchattacks / pyautoattack); ITER_BATCH (default:
#                the largest of BATCHES), ITER_ITERATIONS (APGD's timed batches,
#                default 2; PGD times 3)
#   AUTOATTACK=0 skip AutoAttack's standard version against the reference
#                code (tools/bench_autoattack.py; AUTOATTACK_EPS default 0.1,
#                AUTOATTACK_BATCH default 100, the bundled digits)
#   PROFILES=0   skip the per-op profiles (f32, f16, mixed when offered)
#   EXTRA=0      skip advex alone: tuned, untuned, 8-eps sweep, MNIST
#   KERNELS=0    skip the per-kernel table
#   PYTHON       interpreter with torch (default python3)
#   STEP_LIMIT   seconds any one step may run before it is stopped (default 0:
#                no limit), so one hung step cannot lose the others' results
#   RESULTS_DIR  where the JSON file goes (default benchmarks/results)
# Every step's output is in OUT_DIR/NAME.txt and OUT_DIR/summary.txt; the JSON
# rows behind the results file in OUT_DIR/results.jsonl.
# Vulkan: if no loader is installed, unpack the .deb files of a `.gl/` folder
# first (see the device tool's README); set VK_DRIVER_FILES if the driver's
# manifest is not found by itself.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT="${1:-bench-out}"
BATCHES="${BATCHES:-1,8,128}"
EPS_COUNTS="${EPS_COUNTS:-1,8}"
ITERATIONS="${ITERATIONS:-5}"
PRECISIONS="${PRECISIONS:-f32,mixed}"
TORCH_MODES="${TORCH_MODES:-strict,default,amp}"
MODELS="${MODELS:-resnet50:64,wrn28_10:512}"
MODEL_EPS_COUNTS="${MODEL_EPS_COUNTS:-1}"
MODEL_ITERATIONS="${MODEL_ITERATIONS:-3}"
MODEL_DIR="${MODEL_DIR:-bench-models}"
PYTHON="${PYTHON:-python3}"
ADVEX="${ADVEX:-target/release/advex}"
RESULTS_DIR="${RESULTS_DIR:-benchmarks/results}"
BIG="${BATCHES##*,}" # the largest batch: profiles, f16 and the iterative attacks
ITER_BATCH="${ITER_BATCH:-$BIG}"
ITER_ITERATIONS="${ITER_ITERATIONS:-2}"
mkdir -p "$OUT"
JSONL="$OUT/results.jsonl"
: > "$JSONL"
RUN_ID="$(date -u +%Y%m%dT%H%M%SZ)-$$"
echo "$RUN_ID" > "$OUT/run_id"
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/advex-xdg-$(id -u)"
    export XDG_RUNTIME_DIR
    mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"
fi
# The autotune's cache lives with the results (a fresh one each run).
export ADVEX_TUNE_CACHE="$OUT/tune.json"
rm -f "$ADVEX_TUNE_CACHE"

if command -v cargo >/dev/null && [ -f Cargo.toml ] && [ "$ADVEX" = target/release/advex ]; then
    cargo build --release --quiet || exit 1
fi
[ -x "$ADVEX" ] || { echo "gpu_bench: $ADVEX missing: build it (cargo build --release) and copy it here" >&2; exit 1; }

step() { # name, command...
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    local s; s=$(date +%s)
    timeout -k 10 "${STEP_LIMIT:-0}" "$@" 2>&1 | tee "$OUT/$name.txt" | tee -a "$OUT/summary.txt" >/dev/null
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "   ($name exited $rc)" | tee -a "$OUT/summary.txt"
    printf '{"kind": "step", "name": "%s", "rc": %d, "seconds": %d, "file": "%s.txt"}\n' \
        "$name" "$rc" "$(( $(date +%s) - s ))" "$name" >> "$JSONL"
}
skip() { # name, reason
    echo "== $1: skipped ($2)" | tee -a "$OUT/summary.txt"
    printf '{"kind": "step", "name": "%s", "skipped": "%s"}\n' "$1" "$2" >> "$JSONL"
}

{
    date -u
    uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} > "$OUT/machine.txt" 2>&1
printf '{"kind": "settings", "run_id": "%s", "BATCHES": "%s", "EPS_COUNTS": "%s", "ITERATIONS": "%s", "PRECISIONS": "%s", "TORCH_MODES": "%s", "MODELS": "%s", "MODEL_EPS_COUNTS": "%s", "MODEL_ITERATIONS": "%s", "ITER_BATCH": "%s", "ITER_ITERATIONS": "%s", "STEP_LIMIT": "%s"}\n' \
    "$RUN_ID" "$BATCHES" "$EPS_COUNTS" "$ITERATIONS" "$PRECISIONS" "$TORCH_MODES" "$MODELS" \
    "$MODEL_EPS_COUNTS" "$MODEL_ITERATIONS" "$ITER_BATCH" "$ITER_ITERATIONS" "${STEP_LIMIT:-0}" >> "$JSONL"

bt() { # step name, bench_torch.py arguments...
    local name=$1; shift
    step "$name" "$PYTHON" tools/bench_torch.py --advex "$ADVEX" --json-out "$JSONL" --tag "$name" "$@"
}

step devices "$ADVEX" devices
have_torch=0
"$PYTHON" -c "import torch" 2>/dev/null && have_torch=1
advex_help=$("$ADVEX" bench --help 2>/dev/null)

# 1. EfficientNet-Lite0 against PyTorch's modes.
if [ "$have_torch" = 1 ]; then
    bt torch_compare --compare --batch-size "$BATCHES" --eps-count "$EPS_COUNTS" \
        --iterations "$ITERATIONS" --advex-precision "$PRECISIONS" --torch-modes "$TORCH_MODES"
else
    skip torch_compare "$PYTHON has no torch"
fi

# 2. Beyond one network: ResNet-50 and WRN-28-10, made here.
models=()
if [ "$MODELS" != none ] && [ -n "$MODELS" ]; then
    read -r -a models <<< "${MODELS//,/ }"
fi
if [ "${#models[@]}" -gt 0 ] && [ "$have_torch" = 1 ]; then
    names=$(printf '%s\n' "${models[@]}" | cut -d: -f1 | paste -sd, -)
    step make_models "$PYTHON" tools/bench_models.py --models "$names" --out "$MODEL_DIR" --advex "$ADVEX"
    for m in "${models[@]}"; do
        name=${m%%:*}; batch=${m#*:}
        [ "$batch" = "$m" ] && batch=1
        if [ -f "$MODEL_DIR/$name.safetensors" ]; then
            bt "torch_$name" --compare --model "$MODEL_DIR/$name.safetensors" --batch-size "$batch" \
                --eps-count "$MODEL_EPS_COUNTS" --iterations "$MODEL_ITERATIONS" \
                --advex-precision "$PRECISIONS" --torch-modes "$TORCH_MODES"
        else
            skip "torch_$name" "$MODEL_DIR/$name.safetensors not made (see make_models.txt)"
        fi
    done
elif [ "${#models[@]}" -gt 0 ]; then
    skip make_models "$PYTHON has no torch"
fi

# 3. f16 storage at the largest batch.
if [ "${F16:-1}" != 0 ] && [ "$have_torch" = 1 ]; then
    bt torch_compare_f16 --compare --batch-size "$BIG" --eps-count 1 --iterations "$ITERATIONS" \
        --advex-precision f16 --torch-modes "$TORCH_MODES"
fi

# 4. Iterative attacks against the reference libraries.
if [ "${ITERATIVE:-1}" != 0 ] && "$PYTHON" -c "import torchattacks" 2>/dev/null; then
    bt torch_pgd --compare --method pgd --steps 10 --batch-size "$ITER_BATCH" --iterations 3
fi
if [ "${ITERATIVE:-1}" != 0 ] && "$PYTHON" -c "import pyautoattack.autopgd_base" 2>/dev/null; then
    bt torch_apgd_ce --compare --method apgd-ce --steps 100 --batch-size "$ITER_BATCH" --iterations "$ITER_ITERATIONS"
fi
# AutoAttack's standard version, whole: advex against the reference code on
# the bundled digits (tools/bench_autoattack.py).
if [ "${AUTOATTACK:-1}" != 0 ] && "$PYTHON" -c "import pyautoattack, PIL" 2>/dev/null; then
    step torch_autoattack "$PYTHON" tools/bench_autoattack.py --advex "$ADVEX" --json-out "$JSONL" \
        --tag torch_autoattack --eps "${AUTOATTACK_EPS:-0.1}" --batch-size "${AUTOATTACK_BATCH:-100}"
elif [ "${AUTOATTACK:-1}" != 0 ]; then
    skip torch_autoattack "$PYTHON has no pyautoattack or PIL"
fi

# 5. Where the time goes.
if [ "${PROFILES:-1}" != 0 ]; then
    step profile_f32 "$ADVEX" bench --batch-size "$BIG" --eps 1/255 --profile --json
    step profile_f16 "$ADVEX" bench --batch-size "$BIG" --eps 1/255 --precision f16 --profile --json
    if grep -q mixed <<< "$advex_help"; then
        step profile_mixed "$ADVEX" bench --batch-size "$BIG" --eps 1/255 --precision mixed --profile --json
    fi
fi

# 6. advex alone.
if [ "${EXTRA:-1}" != 0 ]; then
    step tuned "$ADVEX" bench --batch-size "$BATCHES" --eps 1/255 --json
    step untuned "$ADVEX" bench --batch-size "$BATCHES" --eps 1/255 --no-tune --json
    step sweep8 "$ADVEX" bench --batch-size "$BATCHES" --eps 1/255,2/255,3/255,4/255,5/255,6/255,7/255,8/255 --json
    step mnist "$ADVEX" bench --model weights/mnist_cnn.safetensors --batch-size "$BATCHES" --json
fi

# 7. Kernels last.
if [ "${KERNELS:-1}" = 0 ]; then
    skip kernels "KERNELS=0"
elif [ -x target/release/kernels-bench ]; then
    step kernels env ADVEX_BENCH_QUICK=1 target/release/kernels-bench
elif command -v cargo >/dev/null; then
    step kernels env ADVEX_BENCH_QUICK=1 cargo bench --quiet --bench kernels
fi

# The results file (standard library only: any python3 will do).
{ "$PYTHON" tools/bench_results.py --bench-dir "$OUT" --out-dir "$RESULTS_DIR" \
    || python3 tools/bench_results.py --bench-dir "$OUT" --out-dir "$RESULTS_DIR"; } 2>&1 | tee -a "$OUT/summary.txt"
echo "results in $OUT/ (summary.txt holds everything)"
