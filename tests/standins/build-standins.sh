#!/usr/bin/env bash
# For runners without registry access only (CI here; see ../shared/CI-MACHINE.md).
#
# Builds local stand-ins for the third-party images docker-compose.yml names (python, postgres,
# minio, nginx) from Debian packages, and prints the environment that points the compose file
# at them (the same POSTGRES_IMAGE / MINIO_IMAGE / NGINX_IMAGE / PYTHON_IMAGE settings an
# operator would use for a mirror). Each stand-in keeps the contract the stack relies on:
# the same env variables, ports, data paths and health commands as the upstream image.
#
# A stand-in whose recipe has not changed since it was last built is not built again.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
log() { printf '[standins] %s\n' "$*" >&2; }

BASE=mlstack-standin/debian:bookworm
ca_bundle=/etc/ssl/certs/ca-certificates.crt

BASE_RECIPE=bookworm-minbase-ca-v1   # bump when build_base changes
recipe_sha() { (cd "$here" && cat "$1"/* | sha256sum | cut -c1-16); }
up_to_date() { # image, sha
  [[ $(docker image inspect -f '{{ index .Config.Labels "mlstack.recipe" }}' "$1" 2>/dev/null) == "$2" ]]
}

build_base() {
  local sha=$BASE_RECIPE
  up_to_date "$BASE" "$sha" && return 0
  log "building $BASE with debootstrap (about a minute)"
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  local root; root=$(mktemp -d)
  debootstrap --variant=minbase --include=ca-certificates bookworm "$root" \
    http://deb.debian.org/debian >/dev/null
  # The runner reaches PyPI through a TLS-intercepting proxy: trust the runner's CA bundle.
  install -D -m 0644 "$ca_bundle" "$root/usr/local/share/ca-certificates/runner-ca.crt"
  chroot "$root" update-ca-certificates >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import \
      -c "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
      -c "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
      -c "LABEL mlstack.recipe=$sha" \
      -c 'CMD ["bash"]' - "$BASE" >/dev/null
  rm -rf "$root"
}

build_standin() { # name, image tag
  local name=$1 tag=$2 sha
  sha=$(recipe_sha "$name")
  up_to_date "$tag" "$sha" && { log "$tag is up to date"; return 0; }
  log "building $tag"
  docker build -q --build-arg BASE="$BASE" --label "mlstack.recipe=$sha" -t "$tag" "$here/$name" >/dev/null
}

build_base
build_standin python   mlstack-standin/python:3.11-bookworm
build_standin postgres mlstack-standin/postgres:15-bookworm
build_standin minio    mlstack-standin/minio:s3rver-3.7.1
build_standin nginx    mlstack-standin/nginx:bookworm
