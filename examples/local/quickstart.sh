#!/usr/bin/env bash
# Quick start on a fresh Debian machine: set up a virtual environment with dagent and run it on the
# embedded default (the local inbox in examples/local). Safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

sudo_() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "quickstart: installing python3 and python3-venv with apt-get" >&2
  sudo_ apt-get update -qq
  sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
fi
if [ ! -x .venv/bin/dagent ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
fi

config=examples/local/agent.toml
.venv/bin/dagent config validate "$config"
echo "--- effective configuration (dagent config show -c $config) ---"
.venv/bin/dagent config show -c "$config"
