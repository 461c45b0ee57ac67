#!/usr/bin/env bash
# Install Debian's chromium for bench/dashboard_browser.py; does nothing when it is already there.
# Usage: bench/install-chromium.sh   (as root, or a user with sudo)
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium)"
    exit 0
fi

# apt-get needs root; a user with sudo gets it through sudo.
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1; then
    as_root=(sudo)
else
    echo "install-chromium.sh: run as root (or install sudo): apt-get needs it" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update
"${as_root[@]}" apt-get install -y chromium
echo "chromium installed: $(/usr/bin/chromium --version)"
