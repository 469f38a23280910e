#!/usr/bin/env bash
# Makes sure advex can find a Vulkan driver on this machine; the one provisioning
# step of both README commands (the main job and tools/test.sh).
#
# - A machine with a Vulkan driver (any ICD file and the loader) gets nothing
#   installed and nothing printed; so does macOS or Windows (Metal, DX12).
# - A Linux machine with no Vulkan driver and no GPU gets Mesa's software Vulkan
#   (lavapipe: Debian/Ubuntu packages mesa-vulkan-drivers and libvulkan1), which
#   needs root and apt-get. With an AMD or Intel GPU visible (/dev/dri) the same
#   package is also that GPU's Vulkan driver (RADV, ANV).
# - A machine whose NVIDIA GPU is visible (/dev/nvidia*) but has no Vulkan ICD,
#   or which has an ICD but no loader, is told what to fix, and nothing is
#   installed: a software driver there would hide the real problem.
#   ADVEX_SOFTWARE_VULKAN=1 installs lavapipe anyway.
#
#   tools/setup.sh           check, and install when needed
#   tools/setup.sh --check   only say what it would do (exit 0: nothing to do,
#                            3: would install, 1: needs the user)
#
# ADVEX_SETUP_ROOT=DIR looks for files under DIR instead of / (tests use it).
set -euo pipefail

check_only=0
case "${1:-}" in
    --check) check_only=1 ;;
    "") ;;
    *) echo "usage: tools/setup.sh [--check]" >&2; exit 1 ;;
esac

R="${ADVEX_SETUP_ROOT:-}"
say() { echo "advex setup: $*" >&2; }

case "$(uname -s)" in
    Linux) ;;
    *) exit 0 ;; # Metal on macOS, DX12 (or the GPU vendor's Vulkan) on Windows
esac

# Vulkan ICD manifests, in the loader's search order (plus the override variables).
icd_files() {
    local v f d
    for v in "${VK_DRIVER_FILES:-}" "${VK_ICD_FILENAMES:-}" "${VK_ADD_DRIVER_FILES:-}"; do
        [ -n "$v" ] || continue
        local IFS=:
        for f in $v; do
            if [ -d "$R$f" ]; then compgen -G "$R$f/*.json" || true
            elif [ -f "$R$f" ]; then echo "$R$f"; fi
        done
    done
    local dirs=()
    local IFS=:
    for d in ${XDG_CONFIG_DIRS:-/etc/xdg} /etc ${XDG_DATA_DIRS:-/usr/local/share:/usr/share}; do
        dirs+=("$R$d/vulkan/icd.d")
    done
    [ -n "${HOME:-}" ] && dirs+=("$R$HOME/.local/share/vulkan/icd.d")
    for d in "${dirs[@]}"; do
        compgen -G "$d/*.json" || true
    done
}

have_loader() {
    local d
    if [ -z "$R" ] && command -v ldconfig >/dev/null 2>&1 \
        && ldconfig -p 2>/dev/null | grep -q 'libvulkan\.so\.1 '; then
        return 0
    fi
    for d in /usr/lib/*-linux-gnu /usr/lib64 /usr/lib /lib/*-linux-gnu /lib64 /lib /usr/local/lib; do
        compgen -G "$R$d/libvulkan.so.1" >/dev/null && return 0
    done
    local IFS=:
    for d in ${LD_LIBRARY_PATH:-}; do
        [ -n "$d" ] && [ -e "$R$d/libvulkan.so.1" ] && return 0
    done
    return 1
}

icds=$(icd_files | sort -u)
nvidia=$(compgen -G "$R/dev/nvidia[0-9]*" | head -n 1 || true)
dri=$(compgen -G "$R/dev/dri/renderD*" | head -n 1 || true)

if [ -n "$icds" ]; then
    have_loader && exit 0
    say "a Vulkan driver is installed ($(echo "$icds" | head -n 1 | sed "s#^$R##")) but the Vulkan loader"
    say "(libvulkan.so.1) is not: install it (Debian/Ubuntu: apt-get install libvulkan1) and retry."
    exit 1
fi

if [ -n "$nvidia" ] && [ "${ADVEX_SOFTWARE_VULKAN:-0}" != 1 ]; then
    say "an NVIDIA GPU is visible (${nvidia#"$R"}) but no Vulkan driver (ICD) is installed, so advex"
    say "cannot use it. In a container, start it with --gpus all and"
    say "-e NVIDIA_DRIVER_CAPABILITIES=compute,utility,graphics (now: ${NVIDIA_DRIVER_CAPABILITIES:-unset});"
    say "on a host, install the driver's Vulkan part (Ubuntu: libnvidia-gl-<driver version>,"
    say "Debian: nvidia-vulkan-icd)."
    say "See README \"Running on a cloud GPU\". To run on the CPU instead (hundreds of times slower):"
    say "ADVEX_SOFTWARE_VULKAN=1 tools/setup.sh"
    exit 1
fi

packages="mesa-vulkan-drivers libvulkan1"
if [ -n "$dri" ]; then
    what="Mesa's Vulkan drivers (a GPU is visible at ${dri#"$R"}; Mesa drives AMD and Intel GPUs)"
else
    what="Mesa's software Vulkan (lavapipe; no GPU driver found)"
fi
if [ "$check_only" = 1 ]; then
    say "would install $what: $packages"
    exit 3
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "no Vulkan driver found. Install $what"
    say "as root, then retry: apt-get install $packages (or your distribution's Vulkan driver)."
    exit 1
fi
say "no Vulkan driver found; installing $what: $packages"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
# shellcheck disable=SC2086 # $packages is a list of names
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends $packages; } >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "apt-get failed (above); install $packages by hand and retry"
    exit 1
fi
rm -f "$log"
if [ -z "$(icd_files)" ]; then
    say "installed $packages, but still no Vulkan ICD file; see 'advex devices'"
    exit 1
fi
