#!/usr/bin/env bash
# The device tool sends the working tree (tracked + untracked-not-ignored files) and refuses one
# over 64 MiB; the bundled models alone are larger. Before a device call, hide the model folders
# that call does not need; restore them right after (a deleted tracked file does not travel).
#   usage: bash scripts/device_tree.sh hide models/dllm [models/vp ...]   # prints what would travel
#          bash scripts/device_tree.sh restore
set -euo pipefail
cd "$(dirname "$0")/.."
H=${HIDE_DIR:-/tmp/specdiff_hidden}
case "${1:-}" in
  hide)
    shift
    for d in "$@"; do mkdir -p "$H/$(dirname "$d")"; mv "$d" "$H/$d"; done
    ;;
  restore)
    [ -d "$H" ] && (cd "$H" && find . -mindepth 2 -maxdepth 2 -type d) | while read -r d; do
      mkdir -p "$(dirname "$d")"  # git drops a folder left empty (a checkout, a stash)
      mv "$H/$d" "$d"
    done
    rm -rf "$H"
    git status --short -- models
    ;;
  *) echo "usage: $0 hide DIR... | restore" >&2; exit 2 ;;
esac
bytes=$( (git ls-files -co --exclude-standard -z | xargs -0 cat 2>/dev/null || true) | wc -c)
echo "working tree that travels: $bytes bytes (limit 67108864)"
