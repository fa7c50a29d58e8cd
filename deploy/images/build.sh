#!/usr/bin/env bash
# Builds local stand-ins for the base images that this repository's Dockerfiles and compose files
# name, for a machine that reaches no image registry (only Debian's packages and PyPI), and tags
# them with exactly those names, the way an air-gapped site mirrors its base images. On a machine
# that can pull from Docker Hub and ghcr.io this tool is not needed: the engine pulls the real ones.
#
#   deploy/images/build.sh            build the missing ones (a few minutes cold, a second warm)
#   deploy/images/build.sh --force    rebuild all of them
#   deploy/images/build.sh --pull     pull the real images instead (a machine with registry access)
#
# Needs podman (or buildah), debootstrap, python3 with pip, and for the companion's base the
# host's Node.js. Grafana has no Debian package: grafana/grafana is not built, so compose's
# `grafana` profile cannot start here (see README.md beside this file).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
cache="${TODO_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/todo-api-images}"
force=false
pull=false
[ "${1:-}" = --force ] && force=true
[ "${1:-}" = --pull ] && pull=true

uv_version="$(sed -n 's/^ARG UV_VERSION=//p' "$repo/Dockerfile")"
python_version="$(sed -n 's/^ARG PYTHON_VERSION=//p' "$repo/Dockerfile")"
node_from="$(sed -n 's/^FROM //p' "$repo/deploy/better-auth/Dockerfile")"
postgres_from="$(sed -n 's/^ *image: \(postgres:.*\)$/\1/p' "$repo/docker-compose.yml")"
prometheus_from="$(sed -n 's/^ *image: \(prom\/prometheus:.*\)$/\1/p' "$repo/docker-compose.yml")"
haproxy_from="$(sed -n 's/^ *image: \(haproxy:.*\)$/\1/p' "$repo/docker-compose.yml")"

base=localhost/todo-stand-in/debian:bookworm
missing() { $force || ! podman image exists "$1"; }

say() { echo "images: $*" >&2; }

if $pull; then
  for image in "docker.io/library/python:${python_version}-slim-bookworm" \
      "docker.io/library/$postgres_from" "docker.io/$prometheus_from" \
      "docker.io/library/$haproxy_from" \
      "ghcr.io/astral-sh/uv:$uv_version" "docker.io/library/$node_from"; do
    missing "$image" && podman pull --quiet "$image" >/dev/null
  done
  exit 0
fi

if missing "$base"; then
  if [ ! -f "$cache/debian-bookworm.tar" ]; then
    say "debootstrap Debian 12 (minbase) into $cache"
    mkdir -p "$cache"
    rootfs="$(mktemp -d "$cache/rootfs.XXXXXX")"
    debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$cache/debian-bookworm.tar.part" .
    mv "$cache/debian-bookworm.tar.part" "$cache/debian-bookworm.tar"
    rm -rf "$rootfs"
  fi
  podman import --quiet "$cache/debian-bookworm.tar" "$base" >/dev/null
fi

# One build context for every stand-in: the files beside this script, and what comes from this
# host (its CA bundle, so that TLS through a site's proxy works inside builds as it does outside).
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp "$here"/postgres-entrypoint.sh "$here"/haproxy-entrypoint.sh "$context/"
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$context/ca-certificates.crt"

# build NAME CONTAINERFILE: --network host for apt (the default network would also do where
# netavark's firewall rules work); --format docker keeps HEALTHCHECK and friends.
build() {
  local name="$1" file="$2"
  missing "$name" || { say "$name present"; return 0; }
  say "building $name (stand-in, from $file)"
  podman build --quiet --network host --format docker -f "$here/$file" -t "$name" "$context" >/dev/null
}

build "docker.io/library/python:${python_version}-slim-bookworm" python.Containerfile
build "docker.io/library/$postgres_from" postgres.Containerfile
build "docker.io/$prometheus_from" prometheus.Containerfile
build "docker.io/library/$haproxy_from" haproxy.Containerfile

uv_image="ghcr.io/astral-sh/uv:$uv_version"
if missing "$uv_image"; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary :all: \
    --platform manylinux2014_x86_64 --dest "$context/wheel" "uv==$uv_version"
  python3 -m zipfile -e "$context"/wheel/uv-*.whl "$context/wheel"
  install -m 0755 "$context/wheel/uv-$uv_version.data/scripts/uv" "$context/uv"
  build "$uv_image" uv.Containerfile
fi

node_image="docker.io/library/$node_from"
if missing "$node_image"; then
  node="$(command -v node)" || { say "no node on PATH: $node_image not built"; exit 1; }
  cp "$node" "$context/node"
  cp -r "$(dirname "$(dirname "$(readlink -f "$(command -v npm)")")")" "$context/npm"
  build "$node_image" node.Containerfile
fi

say "grafana/grafana: NOT BUILT (no package on this machine's registries): compose's grafana profile needs a registry"
