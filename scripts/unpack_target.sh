#!/usr/bin/env bash
# Reassemble what scripts/gpu_target.sh returned: unpack.sh FILES_DIR DEST (DEST/target appears).
set -euo pipefail
mkdir -p "$2" && cat "$1"/target.tar.part-* | tar -C "$2" -xf -
