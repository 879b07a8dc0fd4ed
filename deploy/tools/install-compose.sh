#!/usr/bin/env bash
# Install the Docker Compose v2 CLI plugin by building it from the Go module proxy.
#
# Docker's own packages are not needed: `go install` fetches github.com/docker/compose/v2
# (a tagged release) through GOPROXY and builds the real `docker compose` plugin.
# Idempotent: does nothing when the plugin at the destination already reports the
# requested version.
#
#   deploy/tools/install-compose.sh                 # into ~/.docker/cli-plugins
#   COMPOSE_PLUGIN_DIR=.docker/cli-plugins deploy/tools/install-compose.sh
#                                                   # project-local; then run docker
#                                                   # with DOCKER_CONFIG=$PWD/.docker
#
# Environment:
#   COMPOSE_VERSION      tag to build (default v2.40.3)
#   COMPOSE_PLUGIN_DIR   where docker-compose goes (default ${DOCKER_CONFIG:-~/.docker}/cli-plugins)
#   COMPOSE_BUILD_JOBS   parallel compile jobs (default 1: gentle on small CI runners)
#   GO                   go binary (default: go on PATH, else /usr/local/go/bin/go)
#
# Needs Go >= 1.24 and access to the Go module proxy. First build: a few minutes
# (module download ~150 MB and compile); later runs reuse Go's module and build caches.
set -euo pipefail

COMPOSE_VERSION="${COMPOSE_VERSION:-v2.40.3}"
COMPOSE_PLUGIN_DIR="${COMPOSE_PLUGIN_DIR:-${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins}"
COMPOSE_BUILD_JOBS="${COMPOSE_BUILD_JOBS:-1}"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
dest="$COMPOSE_PLUGIN_DIR/docker-compose"

if [[ -x "$dest" ]]; then
    have="$("$dest" version --short 2>/dev/null || true)"
    if [[ "v${have#v}" == "$COMPOSE_VERSION" ]]; then
        echo "docker-compose $COMPOSE_VERSION already installed at $dest"
        exit 0
    fi
fi

if [[ ! -x "$GO" ]]; then
    echo "install-compose: go not found (set GO=/path/to/go); Go >= 1.24 is required" >&2
    exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "building docker compose $COMPOSE_VERSION with $("$GO" version) ..."
start=$SECONDS
# `go install module/cmd@version` refuses compose's go.mod (it has exclude/replace
# directives), so the module source is fetched through the proxy and built as the
# main module, exactly as compose's own Makefile does.
src_dir="$(GOFLAGS=-mod=mod "$GO" mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')"
if [[ -z "$src_dir" || ! -f "$src_dir/go.mod" ]]; then
    echo "install-compose: could not download github.com/docker/compose/v2@$COMPOSE_VERSION" >&2
    exit 1
fi
cp -R "$src_dir" "$work/src"
chmod -R u+w "$work/src"
(
    cd "$work/src"
    CGO_ENABLED=0 GOFLAGS="-mod=mod -p=$COMPOSE_BUILD_JOBS" "$GO" build -trimpath \
        -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
        -o "$work/docker-compose" ./cmd
)

mkdir -p "$COMPOSE_PLUGIN_DIR"
install -m 0755 "$work/docker-compose" "$dest"
echo "installed $dest ($("$dest" version --short)) in $((SECONDS - start)) s"
