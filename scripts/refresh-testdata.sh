#!/usr/bin/env bash
# Copy the shared reference fixtures, real WET files and peer scripts into the repository
# (testdata/, scripts/peers/), so tests never read outside it. Usage:
#   scripts/refresh-testdata.sh [SHARED_DIR]   (default: ../shared beside the repository)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
shared="${1:-$root/../shared}"
[ -d "$shared/fixtures" ] || { echo "no fixtures in $shared" >&2; exit 1; }
for dir in fixtures c4-real; do
  rm -rf "$root/testdata/$dir.new"
  cp -r "$shared/$dir" "$root/testdata/$dir.new"
  chmod -R u+w "$root/testdata/$dir.new"
  rm -rf "$root/testdata/$dir"
  mv "$root/testdata/$dir.new" "$root/testdata/$dir"
done
mkdir -p "$root/scripts/peers"
cp "$shared"/bench/*.py "$root/scripts/peers/"
echo "refreshed testdata/ and scripts/peers/ from $shared"
