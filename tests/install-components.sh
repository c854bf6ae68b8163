#!/usr/bin/env bash
# The real components the integration tests, the chaos suite and the benchmark run against:
# Debian's Docker engine, registry, busybox, debootstrap (flow image), strace (durability test),
# PostgreSQL (the Prefect server's backend), stunnel and sshd (remote daemons), docker-compose
# (the compose example), and Prefect (with prefect-docker, the baseline worker) in a venv of its own under
# ${DAGENT_TEST_CACHE:-~/.cache/dagent-test}. Idempotent: installs only what is missing.
# Usage: bash tests/install-components.sh [PYTHON]   (PYTHON: one that can import this repo's tests)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

packages=()
need() { command -v "$1" >/dev/null 2>&1 || packages+=("$2"); }
need dockerd docker.io
need docker-registry docker-registry
need busybox busybox-static
need debootstrap debootstrap
need strace strace
need runuser util-linux
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || packages+=(postgresql)
need stunnel4 stunnel4
need sshd openssh-server
need docker-compose docker-compose
if [ "${#packages[@]}" -gt 0 ]; then
  echo "installing ${packages[*]}"
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
fi
"$python" -m tests.support.prefect_infra --install
