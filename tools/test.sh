#!/usr/bin/env bash
# The test command (README, .ci/run): make sure a Vulkan driver exists, then run
# the whole test suite. On a machine with no GPU driver this installs Mesa's
# software Vulkan (lavapipe) first; that needs root and Debian/Ubuntu's apt.
set -euo pipefail
cd "$(dirname "$0")/.."

have_vulkan_driver() {
    [ -n "${VK_DRIVER_FILES:-}${VK_ICD_FILENAMES:-}" ] && return 0
    for d in /usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d; do
        compgen -G "$d/*.json" >/dev/null && return 0
    done
    return 1
}

if ! have_vulkan_driver; then
    echo "advex tests: no Vulkan driver found; installing Mesa's software Vulkan (lavapipe)" >&2
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "advex tests: need root and apt-get to install mesa-vulkan-drivers; install a Vulkan driver and retry" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mesa-vulkan-drivers libvulkan1 >/dev/null
fi

# The Vulkan loader's window-system probes complain without a runtime dir.
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
    export XDG_RUNTIME_DIR="${TMPDIR:-/tmp}/advex-xdg-$(id -u)"
    mkdir -p -m 700 "$XDG_RUNTIME_DIR"
fi
# lavapipe's threads: use every core the machine has.
export LP_NUM_THREADS="${LP_NUM_THREADS:-$(nproc)}"
exec cargo test --locked "$@"
