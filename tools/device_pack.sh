#!/usr/bin/env bash
# Prepares a run on a lent GPU machine that has no Rust (x86-64 Linux, like
# this one): builds the release binary, the kernel benchmark and every test
# executable here, strips them and packs them into .devbin/bins.tar.xz
# (ignored by git; xz keeps it under the device tool's 64 MiB transfer limit).
# Then, with the Vulkan loader's .deb files in .gl/ (see BENCHMARKS.md,
# "Taking GPU numbers") and optionally Python packages unpacked in .whl/site:
#
#   device run, carry [.gl, .devbin, .whl]:  tools/device_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

cargo build --release --locked --quiet
bench=$(cargo bench --no-run --locked --bench kernels --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep '/deps/kernels-' | tail -1)
mapfile -t tests < <(cargo test --no-run --locked --message-format=json 2>/dev/null \
    | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | grep /deps/)

mkdir -p "$stage/target/release" "$stage/target/debug" "$stage/target/tests"
cp target/release/advex "$stage/target/release/advex"
cp "$bench" "$stage/target/release/kernels-bench"
# ADVEX_BEFORE=path: an earlier release binary, timed against this one in the
# same run by tools/device_check.sh (a ratio, not two runs' absolute figures).
if [ -n "${ADVEX_BEFORE:-}" ]; then
    cp "$ADVEX_BEFORE" "$stage/target/release/advex-before"
fi
# tests/cli.rs runs the advex that `cargo test` built (CARGO_BIN_EXE_advex).
cp target/debug/advex "$stage/target/debug/advex"
for t in "${tests[@]}"; do
    name=$(basename "$t")
    name=${name%-*} # drop cargo's hash
    [ -e "$stage/target/tests/$name" ] && name="${name}-lib"
    # tests/backends.rs translates shaders on the CPU: nothing to run on a GPU.
    [ "$name" = backends ] && continue
    cp "$t" "$stage/target/tests/$name"
done
strip "$stage"/target/release/* "$stage"/target/debug/advex "$stage"/target/tests/*
# The bundled model (weights/, which travels anyway) is inside several of the
# executables: blank it there (xz then stores nothing for it) and note where;
# tools/device_check.sh writes it back.
python3 - "$stage" weights/efficientnet_lite0.safetensors <<'PY'
import os, sys
stage, model = sys.argv[1], open(sys.argv[2], "rb").read()
with open(os.path.join(stage, "target", "BLANKED"), "w") as out:
    for root, _, files in os.walk(os.path.join(stage, "target")):
        for f in files:
            p = os.path.join(root, f)
            data = bytearray(open(p, "rb").read())
            at = data.find(model)
            if at < 0:
                continue
            data[at:at + len(model)] = bytes(len(model))
            open(p, "wb").write(data)
            out.write(f"{os.path.relpath(p, stage)} {at}\n")
PY
# The commit the pack was built from (the GPU machine's copy has no .git), and
# how many tracked files differed from it: tools/bench_results.py records both.
{
    git rev-parse HEAD
    echo "dirty: $(git status --porcelain --untracked-files=no | wc -l)"
} > "$stage/target/COMMIT"
# The test executables know this checkout's absolute path (CARGO_MANIFEST_DIR).
echo "$PWD" > "$stage/target/tests/MANIFEST_DIR"
mkdir -p .devbin
# A long window: the binaries share most of their bytes (the bundled model
# in several of them), which xz then stores once.
tar -C "$stage" -cf - target | xz -T1 --lzma2=preset=6,dict=768MiB > .devbin/bins.tar.xz
ls -l .devbin/bins.tar.xz
ls "$stage/target/tests"
