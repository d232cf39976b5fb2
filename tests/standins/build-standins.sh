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

ca_bundle=/etc/ssl/certs/ca-certificates.crt

BASE_RECIPE=minbase-ca-v1   # bump when build_base changes
recipe_sha() { (cd "$here" && cat "$1"/* | sha256sum | cut -c1-16); }
up_to_date() { # image, sha
  [[ $(docker image inspect -f '{{ index .Config.Labels "mlstack.recipe" }}' "$1" 2>/dev/null) == "$2" ]]
}

build_base() { # Debian suite; the image is mlstack-standin/debian:SUITE
  local suite=$1 image=mlstack-standin/debian:$1 sha="$1-$BASE_RECIPE"
  up_to_date "$image" "$sha" && return 0
  log "building $image with debootstrap (about a minute)"
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  local root; root=$(mktemp -d)
  # (A suite newer than the runner's debootstrap knows is built as Debian testing is.)
  local script=/usr/share/debootstrap/scripts/$suite
  [[ -e $script ]] || script=/usr/share/debootstrap/scripts/testing
  debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" \
    http://deb.debian.org/debian "$script" >/dev/null
  # The runner reaches PyPI through a TLS-intercepting proxy: trust the runner's CA bundle.
  install -D -m 0644 "$ca_bundle" "$root/usr/local/share/ca-certificates/runner-ca.crt"
  chroot "$root" update-ca-certificates >/dev/null
  rm -rf "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" -c . | docker import \
      -c "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt" \
      -c "ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt" \
      -c "LABEL mlstack.recipe=$sha" \
      -c 'CMD ["bash"]' - "$image" >/dev/null
  rm -rf "$root"
}

build_standin() { # name, image tag, Debian suite
  local name=$1 tag=$2 base=mlstack-standin/debian:$3 sha
  sha=$(recipe_sha "$name")-$3
  up_to_date "$tag" "$sha" && { log "$tag is up to date"; return 0; }
  log "building $tag"
  docker build -q --build-arg BASE="$base" --label "mlstack.recipe=$sha" -t "$tag" "$here/$name" >/dev/null
}

build_base bookworm
# nginx from Debian forky (1.30): the production image's nginx is 1.27.3, and the front door
# relies on what arrived there (`resolve` on an upstream's server, keepalive to MLflow that
# follows a new container's address); bookworm's 1.22 would refuse that configuration.
build_base forky
build_standin python   mlstack-standin/python:3.11-bookworm bookworm
build_standin postgres mlstack-standin/postgres:15-bookworm bookworm
build_standin minio    mlstack-standin/minio:s3rver-3.7.1   bookworm
build_standin nginx    mlstack-standin/nginx:forky          forky
