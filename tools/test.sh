#!/usr/bin/env bash
# The test command (README, .ci/run): make sure a Vulkan driver exists
# (tools/setup.sh installs Mesa's software Vulkan on a machine without one),
# check that an installed advex stands on its own, then run the whole test suite.
# Arguments go to `cargo test` (and skip the install check): tools/test.sh --test cli
set -euo pipefail
cd "$(dirname "$0")/.."

./tools/setup.sh

# SPIRV-Tools' validator, so tests/backends.rs also validates the SPIR-V of every
# shader (best effort: the test translates without it and says so).
if ! command -v spirv-val >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] \
    && command -v apt-get >/dev/null 2>&1; then
    echo "advex tests: installing spirv-tools (spirv-val) for the shader checks" >&2
    { apt-get install -y -qq --no-install-recommends spirv-tools \
        || { apt-get update -qq && apt-get install -y -qq --no-install-recommends spirv-tools; }
    } >/dev/null 2>&1 || echo "advex tests: spirv-tools unavailable; SPIR-V is not validated" >&2
fi

# lavapipe's threads: use every core the machine has.
export LP_NUM_THREADS="${LP_NUM_THREADS:-$(nproc)}"

if [ $# -eq 0 ]; then
    # `cargo install` as a user runs it (a release build, shared with
    # `cargo run --release`), then the installed binary from another folder:
    # the bundled model is inside it.
    echo "advex tests: cargo install --path . into a scratch folder, then run it from /" >&2
    install_root=$(mktemp -d)
    trap 'rm -rf "$install_root"' EXIT
    cargo install --locked --quiet --path . --root "$install_root"
    photo="$PWD/examples/photos/chelsea.png"
    (
        cd /
        "$install_root/bin/advex" info >/dev/null
        ADVEX_TUNE_CACHE=off "$install_root/bin/advex" attack --quiet --no-tune \
            --eps 1/255 --images "$photo"
    )
fi

# The tests' own in-process contexts: keep Mesa's device-select layer from
# probing Wayland (the CLI tests check that the binary does this by itself).
export NODEVICE_SELECT="${NODEVICE_SELECT:-1}"
cargo test --locked "$@"
