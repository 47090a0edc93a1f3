#!/usr/bin/env bash
# Build the real components kdns's end-to-end suite runs against, into a cache outside the clone:
#   kube-apiserver, kube-controller-manager  k8s.io/kubernetes (version pinned in cluster/go.mod)
#   etcd                                     go.etcd.io/etcd/server/v3 at the version that
#                                            Kubernetes release is built with (cluster/go.mod)
#   coredns                                  github.com/coredns/coredns@$COREDNS_VERSION
#   coredns-multicluster                     the same CoreDNS with the external plugin
#                                            github.com/coredns/multicluster (coredns-mc/go.mod);
#                                            skipped while the module proxy does not serve it
# Binaries are reused when they were built from the same pins (a stamp file records them), so a
# warm run takes well under a second. Prints the time each part took.
#
#   KDNS_E2E_CACHE     cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/kdns-e2e); binaries in bin/
#   KDNS_E2E_REQUIRE=1 fail when Go is missing, or a part fails to build, instead of skipping (CI)
#   build.sh --force       rebuild even when the stamps match
#   build.sh --print-bin   print the bin folder and exit
#   K8S_VERSION=v1.X.Y build.sh --update
#                          rewrite cluster/go.mod for that release (its staging modules replaced by
#                          their published v0.X.Y, etcd at the release's version) and go mod tidy
set -euo pipefail

COREDNS_VERSION=v1.14.7
HERE="$(cd "$(dirname "$0")" && pwd)"
MOD="$HERE/cluster"
MC_MOD="$HERE/coredns-mc"
CACHE="${KDNS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdns-e2e}"
BIN="$CACHE/bin"

if [ "${1:-}" = "--print-bin" ]; then
    echo "$BIN"
    exit 0
fi
force=0
[ "${1:-}" = "--force" ] && force=1

GO="$(command -v go || true)"
[ -z "$GO" ] && [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go
if [ -z "$GO" ]; then
    if [ "${KDNS_E2E_REQUIRE:-0}" = "1" ]; then
        echo "e2e build: Go not found, and KDNS_E2E_REQUIRE=1" >&2
        exit 1
    fi
    echo "e2e build: SKIPPED, Go not found (install Go >= 1.25 to run the end-to-end suite)" >&2
    exit 0
fi

if [ "${1:-}" = "--update" ]; then
    K="${K8S_VERSION:?set K8S_VERSION=v1.X.Y}"
    S="v0.${K#v1.}"
    tmp="$(mktemp -d)"
    kmod="$(cd "$tmp" && "$GO" mod download -json "k8s.io/kubernetes@$K" |
        sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
    rmdir "$tmp"
    etcd="$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$kmod")"
    {
        sed -n '1,/^module /p' "$MOD/go.mod"
        printf '\ngo 1.25.0\n\ngodebug default=go1.25\n\nrequire (\n\tk8s.io/kubernetes %s\n\tgo.etcd.io/etcd/server/v3 %s\n)\n\n' "$K" "$etcd"
        echo "replace ("
        awk -v s="$S" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " " s}' "$kmod"
        echo ")"
    } >"$MOD/go.mod.new"
    mv "$MOD/go.mod.new" "$MOD/go.mod"
    (cd "$MOD" && GOFLAGS= "$GO" mod tidy)
    echo "e2e build: cluster/go.mod now pins kubernetes $K, staging $S, etcd $etcd"
    exit 0
fi

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$MOD/go.mod")"
etcd_version="$(awk '$1 == "go.etcd.io/etcd/server/v3" && $2 ~ /^v/ {print $2; exit}' "$MOD/go.mod")"
stamp_text="$("$GO" version) ldflags-v2
kubernetes $k8s_version
etcd $etcd_version
coredns $COREDNS_VERSION
$(cat "$MOD/go.mod" "$MOD/go.sum" "$MOD"/cmd/*/main.go | sha256sum)"

mkdir -p "$BIN"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
have() { for f in "$@"; do [ -x "$BIN/$f" ] || return 1; done; }

t_all=$(now)
export GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
LDFLAGS="-s -w"
# What `kubectl version` / GET /version report (otherwise v0.0.0-master).
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
K8S_LDFLAGS="$LDFLAGS -X k8s.io/component-base/version.gitVersion=$k8s_version \
-X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
-X k8s.io/component-base/version.gitTreeState=clean"
quiet() { sed -u '/^go: downloading /d'; }

# A stamp per part: the control plane (wrapper module) and CoreDNS rebuild independently.
cp_stamp="$(printf '%s\n' "$stamp_text" | grep -v '^coredns')"
if [ $force = 0 ] && have etcd kube-apiserver kube-controller-manager &&
    [ "$(cat "$BIN/.stamp-controlplane" 2>/dev/null)" = "$cp_stamp" ]; then
    echo "e2e build: control plane up to date (kubernetes $k8s_version, etcd $etcd_version)"
else
    t=$(now)
    echo "e2e build: building kube-apiserver, kube-controller-manager $k8s_version and etcd $etcd_version (cold: ~8 min on 2 cores) ..."
    rm -f "$BIN/.stamp-controlplane"
    (cd "$MOD" && "$GO" build -ldflags="$K8S_LDFLAGS" -o "$BIN/" ./cmd/...) 2>&1 | quiet
    printf '%s\n' "$cp_stamp" >"$BIN/.stamp-controlplane"
    echo "e2e build: control plane built in $(elapsed "$t") s"
fi

dns_stamp="$("$GO" version) coredns $COREDNS_VERSION"
if [ $force = 0 ] && have coredns && [ "$(cat "$BIN/.stamp-coredns" 2>/dev/null)" = "$dns_stamp" ]; then
    echo "e2e build: coredns up to date ($COREDNS_VERSION)"
else
    t=$(now)
    echo "e2e build: building coredns $COREDNS_VERSION ..."
    rm -f "$BIN/.stamp-coredns"
    # go install outside any module: CoreDNS's own go.mod and go.sum pin its dependencies.
    (cd "$CACHE" && GOBIN="$BIN" GOFLAGS="-trimpath -buildvcs=false" \
        "$GO" install -ldflags="$LDFLAGS" "github.com/coredns/coredns@$COREDNS_VERSION") 2>&1 | quiet
    printf '%s\n' "$dns_stamp" >"$BIN/.stamp-coredns"
    echo "e2e build: coredns built in $(elapsed "$t") s"
fi

# The external plugin's module may be refused by the module proxy (it is not served here): that is
# no fault of this build, so it skips even under KDNS_E2E_REQUIRE=1, and the refusal is kept
# beside the stamp so a warm run does not ask again (--force asks again). The e2e test reads
# the reason from that file. Past the download, a failed build is a failure under REQUIRE.
mc_stamp="$("$GO" version) $(cat "$MC_MOD/go.mod" "$MC_MOD/go.sum" "$MC_MOD/main.go" | sha256sum)"
mc_refused="$BIN/.coredns-multicluster-unavailable"
if [ $force = 0 ] && have coredns-multicluster &&
    [ "$(cat "$BIN/.stamp-coredns-multicluster" 2>/dev/null)" = "$mc_stamp" ]; then
    echo "e2e build: coredns-multicluster up to date"
elif [ $force = 0 ] && [ "$(head -n 1 "$mc_refused" 2>/dev/null)" = "$mc_stamp" ]; then
    echo "e2e build: coredns-multicluster SKIPPED, $(sed -n 2p "$mc_refused") (--force asks again)"
else
    t=$(now)
    echo "e2e build: building coredns-multicluster ..."
    rm -f "$BIN/.stamp-coredns-multicluster" "$mc_refused" "$BIN/coredns-multicluster"
    if ! out="$(cd "$MC_MOD" && timeout 300 "$GO" mod download github.com/coredns/multicluster 2>&1)"; then
        why="github.com/coredns/multicluster could not be downloaded: $(printf '%s\n' "$out" | grep -v '^go: downloading' | tr '\n' ' ' | cut -c 1-300)"
        printf '%s\n%s\n' "$mc_stamp" "$why" >"$mc_refused"
        echo "e2e build: coredns-multicluster SKIPPED, $why"
    elif (cd "$MC_MOD" && timeout 1200 "$GO" build -ldflags="$LDFLAGS" -o "$BIN/coredns-multicluster" .) 2>&1 | quiet &&
        "$BIN/coredns-multicluster" -plugins | grep -x multicluster >/dev/null; then
        printf '%s\n' "$mc_stamp" >"$BIN/.stamp-coredns-multicluster"
        echo "e2e build: coredns-multicluster built in $(elapsed "$t") s"
    else
        rm -f "$BIN/coredns-multicluster"
        if [ "${KDNS_E2E_REQUIRE:-0}" = "1" ]; then
            echo "e2e build: coredns-multicluster failed to build, and KDNS_E2E_REQUIRE=1" >&2
            exit 1
        fi
        echo "e2e build: coredns-multicluster SKIPPED, it failed to build (see above)" >&2
    fi
fi

echo "e2e build: done in $(elapsed "$t_all") s; binaries in $BIN"
ls -l "$BIN" | awk 'NR > 1 {printf "  %-26s %6.1f MB\n", $9, $5 / 1048576}'
