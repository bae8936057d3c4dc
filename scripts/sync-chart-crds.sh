#!/usr/bin/env bash
# Copies the generated CRDs (crds/*.yaml, written by `seshn-segment-operator crd`) into the Helm
# chart, which renders them from charts/seshn-segment/files/crds/ (see templates/crds.yaml: it
# adds the chart labels and, with crds.keep, helm.sh/resource-policy: keep).
#   scripts/sync-chart-crds.sh           copy (and delete chart copies whose source is gone)
#   scripts/sync-chart-crds.sh --check   exit 1 and show the difference when the chart is stale
# The e2e crate's chart tests fail when the copies drift, so run this after regenerating crds/.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SRC=$ROOT/crds
DST=$ROOT/charts/seshn-segment/files/crds

shopt -s nullglob
sources=("$SRC"/*.yaml)
[ ${#sources[@]} -gt 0 ] || { echo "sync-chart-crds: no CRDs in $SRC" >&2; exit 1; }

if [ "${1:-}" = "--check" ]; then
  if diff -ru "$SRC" "$DST" >&2; then
    echo "sync-chart-crds: chart CRDs match crds/"
    exit 0
  fi
  echo "sync-chart-crds: chart CRDs differ from crds/; run scripts/sync-chart-crds.sh" >&2
  exit 1
fi

mkdir -p "$DST"
for f in "$DST"/*.yaml; do
  [ -e "$SRC/$(basename "$f")" ] || { rm -f "$f"; echo "removed stale $(basename "$f")"; }
done
for f in "${sources[@]}"; do
  cp "$f" "$DST/"
  echo "copied $(basename "$f")"
done
