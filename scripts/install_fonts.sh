#!/usr/bin/env bash
# Install a few Debian font packages so the document engine's synthetic pages use several typefaces
# (sans, serif, mono; DejaVu, Liberation, FreeFont). Without them the engine still runs: it uses
# whatever TrueType/OpenType fonts it finds, then matplotlib's bundled DejaVu, then Pillow's default.
# Usage: scripts/install_fonts.sh   (as root, or with sudo available)
set -euo pipefail

PACKAGES="fonts-dejavu-core fonts-liberation fonts-freefont-ttf"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "fonts already installed: $PACKAGES"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root or sudo to apt-get install$missing" >&2; exit 1; }
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends $missing
command -v fc-cache >/dev/null && fc-cache -f >/dev/null || true
echo "installed:$missing"
