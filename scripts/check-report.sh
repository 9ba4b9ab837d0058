#!/usr/bin/env bash
# Open an `npeff report` page in a real headless browser (Chromium, from Debian's
# packages: `apt-get install chromium`) and check that it renders, has one section per
# component and logs no console errors.
#
#   scripts/check-report.sh REPORT.html COMPONENTS
set -euo pipefail
report=$1
components=$2
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
if [ -z "$browser" ]; then
    echo "check-report: no Chromium found (apt-get install chromium)" >&2
    exit 2
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
timeout 120 "$browser" --headless --no-sandbox --disable-gpu --enable-logging=stderr --v=0 \
    --dump-dom "file://$(realpath "$report")" >"$work/dom.html" 2>"$work/console.log"
sections=$(grep -o '<section class="component"' "$work/dom.html" | wc -l)
if [ "$sections" -ne "$components" ]; then
    echo "check-report: $report rendered $sections component sections, expected $components" >&2
    exit 1
fi
if grep -E 'CONSOLE.*(Uncaught|Error)' "$work/console.log" >&2; then
    echo "check-report: $report logged console errors (above)" >&2
    exit 1
fi
# The summary table is sortable: the script ran and marked its headers.
if ! grep -q 'th class="sortable"' "$work/dom.html"; then
    echo "check-report: $report: the sorting script did not run" >&2
    exit 1
fi
echo "check-report: $report renders $sections component sections, no console errors"
