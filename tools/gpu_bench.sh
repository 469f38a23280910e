#!/usr/bin/env bash
# The GPU numbers of BENCHMARKS.md in one command: adapter, advex against
# PyTorch (CUDA when torch sees a GPU) in one run, the autotune's effect, the
# per-op profile in f32 and f16, and the per-kernel GFLOP/s table.
#
#   tools/gpu_bench.sh [OUT_DIR]          # default OUT_DIR: bench-out
#
# Uses target/release/advex (built here when cargo exists; a machine without
# Rust, such as a lent GPU box, takes a binary built elsewhere and copied into
# target/release/) and target/release/kernels-bench if present (copy of
# `cargo bench --no-run --bench kernels`'s executable). Environment:
#   BATCHES      batch sizes (default 1,8,32,128)
#   EPS_COUNTS   sweep lengths for the PyTorch comparison (default 1,8)
#   PYTHON       interpreter with torch (default python3)
#   KERNELS=0    skip the per-kernel table
#   STEP_LIMIT   seconds any one step may run before it is stopped (default 0:
#                no limit), so one hung step cannot lose the others' results
#   ITERATIVE=0  skip PGD and APGD against torchattacks and AutoAttack (run when
#                PYTHON imports torchattacks / pyautoattack)
# Vulkan: if no loader is installed, unpack the .deb files of a `.gl/` folder
# first (see the device tool's README); set VK_DRIVER_FILES if the driver's
# manifest is not found by itself.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-bench-out}"
BATCHES="${BATCHES:-1,8,32,128}"
EPS_COUNTS="${EPS_COUNTS:-1,8}"
PYTHON="${PYTHON:-python3}"
BIG="${BATCHES##*,}" # the largest batch: profiles and the f16 comparison
mkdir -p "$OUT"
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/advex-xdg-$(id -u)"
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
fi
# The autotune's cache lives with the results (a fresh one each run).
export ADVEX_TUNE_CACHE="$OUT/tune.json"
rm -f "$ADVEX_TUNE_CACHE"

if command -v cargo >/dev/null; then
    cargo build --release --quiet || exit 1
fi
ADVEX=target/release/advex
[ -x "$ADVEX" ] || { echo "gpu_bench: $ADVEX missing: build it (cargo build --release) and copy it here" >&2; exit 1; }

step() { # name, command...
    local name=$1; shift
    echo "== $name: $*" | tee -a "$OUT/summary.txt"
    timeout -k 10 "${STEP_LIMIT:-0}" "$@" 2>&1 | tee "$OUT/$name.txt" | tee -a "$OUT/summary.txt" >/dev/null
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "   ($name exited $rc)" | tee -a "$OUT/summary.txt"
}

{
    date -u
    uname -a
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
} > "$OUT/machine.txt" 2>&1
# Most telling first (the comparison with PyTorch), so that a run cut short
# still has it.
step devices "$ADVEX" devices
step tuned "$ADVEX" bench --batch-size "$BATCHES" --eps 1/255 --json
if "$PYTHON" -c "import torch" 2>/dev/null; then
    step torch_compare "$PYTHON" tools/bench_torch.py --compare --batch-size "$BATCHES" --eps-count "$EPS_COUNTS"
    step torch_compare_f16 "$PYTHON" tools/bench_torch.py --compare --batch-size "$BIG" --eps-count 1 --advex-precision f16
else
    echo "== torch_compare: skipped ($PYTHON has no torch)" | tee -a "$OUT/summary.txt"
fi
step profile_f32 "$ADVEX" bench --batch-size "$BIG" --eps 1/255 --profile
step profile_f16 "$ADVEX" bench --batch-size "$BIG" --eps 1/255 --precision f16 --profile
step untuned "$ADVEX" bench --batch-size "$BATCHES" --eps 1/255 --no-tune --json
step sweep8 "$ADVEX" bench --batch-size "$BATCHES" --eps 1/255,2/255,3/255,4/255,5/255,6/255,7/255,8/255 --json
step mnist "$ADVEX" bench --model weights/mnist_cnn.safetensors --batch-size "$BATCHES" --json
if [ "${ITERATIVE:-1}" != 0 ] && "$PYTHON" -c "import torchattacks" 2>/dev/null; then
    step torch_pgd "$PYTHON" tools/bench_torch.py --compare --method pgd --steps 10 --batch-size "$BIG"
fi
if [ "${ITERATIVE:-1}" != 0 ] && "$PYTHON" -c "import pyautoattack.autopgd_base" 2>/dev/null; then
    step torch_apgd_ce "$PYTHON" tools/bench_torch.py --compare --method apgd-ce --steps 100 --batch-size "$BIG"
fi
if [ "${KERNELS:-1}" = 0 ]; then
    echo "== kernels: skipped (KERNELS=0)" | tee -a "$OUT/summary.txt"
elif [ -x target/release/kernels-bench ]; then
    step kernels env ADVEX_BENCH_QUICK=1 target/release/kernels-bench
elif command -v cargo >/dev/null; then
    step kernels env ADVEX_BENCH_QUICK=1 cargo bench --quiet --bench kernels
fi
echo "results in $OUT/ (summary.txt holds everything)"
