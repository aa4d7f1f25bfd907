#!/usr/bin/env bash
# A Docker engine for the Docker tests, on a fresh Debian machine (as root): installs docker.io,
# debootstrap and bubblewrap (the code verifier's sandbox) when missing, then starts dockerd
# without a bridge or iptables rules (job containers use `--network none`, or the host network
# for endpoints and several nodes).
set -euo pipefail
engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }
if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null || ! command -v bwrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap bubblewrap >/dev/null
fi
if ! engine_up; then
  nohup dockerd --bridge=none --iptables=false --ip6tables=false >/tmp/pai-distil-dockerd.log 2>&1 &
  for _ in $(seq 60); do engine_up && break; sleep 1; done
  engine_up || { echo "dockerd did not start:"; tail -20 /tmp/pai-distil-dockerd.log; exit 1; }
fi
docker version --format 'Docker engine {{.Server.Version}} is running'
