#!/usr/bin/env bash
# Builds the real kube-apiserver and kube-controller-manager v1.20.2 from Debian bookworm's
# `kubernetes` source package with Debian's Go, because no package registry ships an apiserver
# binary. The result is cached outside the repository and rebuilt only when missing.
#   output: $SESHN_K8S_BIN (default /var/cache/seshn-segment/k8s-v1.20.2)/{kube-apiserver,kube-controller-manager}
set -euo pipefail
K8S_BIN=${SESHN_K8S_BIN:-/var/cache/seshn-segment/k8s-v1.20.2}
PKG_VERSION=1.20.5+really1.20.2-1.1+deb12u1
# Where apt's configuration lives (a test points it at fixtures).
APT_ETC=${APT_ETC:-/etc/apt}
log() { echo "[build-apiserver] $*" >&2; }
die() { echo "[build-apiserver] ERROR: $*" >&2; exit 1; }

# True when apt has an active (not commented out, not disabled) deb-src entry for bookworm's main
# component, in the one-line form (sources.list, *.list) or the deb822 form (*.sources). Another
# suite (trixie, bookworm-updates) does not count: `apt-get source` needs bookworm itself.
has_bookworm_deb_src() {
  local f
  for f in "$APT_ETC/sources.list" "$APT_ETC"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    # deb-src [options] URI bookworm component... (main among the components)
    grep -Eq '^[[:space:]]*deb-src[[:space:]]+(\[[^]]*\][[:space:]]+)?[^[:space:]]+[[:space:]]+bookworm[[:space:]]+([^#]*[[:space:]])?main([[:space:]]|#|$)' "$f" \
      && return 0
  done
  for f in "$APT_ETC"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    # One stanza per paragraph; '#' lines are comments; Enabled: no switches a stanza off.
    awk 'BEGIN { RS = ""; FS = "\n"; found = 0 }
      {
        types = 0; suites = 0; comps = 0; enabled = 1
        for (i = 1; i <= NF; i++) {
          line = $i
          if (line ~ /^[[:space:]]*#/) continue
          key = tolower(line); sub(/:.*/, "", key)
          value = line; sub(/^[^:]*:/, "", value); value = " " value " "
          if (key == "types" && value ~ /[[:space:]]deb-src[[:space:]]/) types = 1
          if (key == "suites" && value ~ /[[:space:]]bookworm[[:space:]]/) suites = 1
          if (key == "components" && value ~ /[[:space:]]main[[:space:]]/) comps = 1
          if (key == "enabled" && tolower(value) ~ /[[:space:]]no[[:space:]]/) enabled = 0
        }
        if (types && suites && comps && enabled) found = 1
      }
      END { exit found ? 0 : 1 }' "$f" && return 0
  done
  return 1
}

# `build-apiserver.sh --has-deb-src`: only the check above (exit 0 or 1), for tests.
if [ "${1:-}" = --has-deb-src ]; then
  has_bookworm_deb_src
  exit
fi

if [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$K8S_BIN/kube-controller-manager" ]; then
  log "cached in $K8S_BIN"
  exit 0
fi
[ "$(id -u)" = 0 ] || die "needs root to install build packages with apt-get: sudo bash scripts/k8s/install.sh"

export DEBIAN_FRONTEND=noninteractive
if ! has_bookworm_deb_src; then
  log "adding a deb-src entry for bookworm (needed by apt-get source)"
  cat > "$APT_ETC/sources.list.d/seshn-segment-src.sources" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
log "installing Go and build tools from Debian"
apt-get update -qq \
  || die "apt-get update failed (network, proxy or a broken entry in $APT_ETC/sources.list*); see the messages above, fix it, then rerun: sudo bash scripts/k8s/install.sh"
build_pkgs=(golang-go dpkg-dev rsync jq make golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev)
apt-get install -y -qq --no-install-recommends "${build_pkgs[@]}" >/dev/null \
  || die "apt-get install of the Go toolchain failed; run it by hand to see why: sudo apt-get install --no-install-recommends ${build_pkgs[*]}"

WORK=$(mktemp -d -t k8s-build.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
log "fetching the kubernetes $PKG_VERSION source package"
apt-get source -qq --download-only "kubernetes=$PKG_VERSION" \
  || die "apt-get source kubernetes=$PKG_VERSION failed: it needs an active deb-src entry for bookworm main (see $APT_ETC/sources.list.d/seshn-segment-src.sources) and apt-get update; try: sudo apt-get update && (cd /tmp && apt-get source --download-only kubernetes=$PKG_VERSION)"
dpkg-source -x "kubernetes_${PKG_VERSION}.dsc" src >/dev/null 2>&1 || die "dpkg-source -x failed"
cd src
# Go >= 1.18 crashes the vendored reflect2 1.0.1 (fault in mapiterinit on the first custom
# resource create): swap in Debian's fixed reflect2 and json-iterator.
for p in github.com/modern-go/reflect2 github.com/json-iterator/go; do
  [ -d "/usr/share/gocode/src/$p" ] || die "missing /usr/share/gocode/src/$p"
  rm -rf "vendor/$p"; mkdir -p "vendor/$p"
  find "/usr/share/gocode/src/$p" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "vendor/$p/" \;
done
export HOME="$WORK/home" GOCACHE="$WORK/gocache" KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean CGO_ENABLED=0
mkdir -p "$HOME"
log "building kube-apiserver and kube-controller-manager (about 6 minutes on 2 cores)"
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$WORK/make.log" 2>&1 \
  || { tail -40 "$WORK/make.log" >&2; die "make failed"; }
mkdir -p "$K8S_BIN"
install -m 0755 _output/bin/kube-apiserver "$K8S_BIN/kube-apiserver.partial"
install -m 0755 _output/bin/kube-controller-manager "$K8S_BIN/kube-controller-manager.partial"
mv "$K8S_BIN/kube-apiserver.partial" "$K8S_BIN/kube-apiserver"
mv "$K8S_BIN/kube-controller-manager.partial" "$K8S_BIN/kube-controller-manager"
log "built: $("$K8S_BIN/kube-apiserver" --version)"
