#!/usr/bin/env bash
# Quick start on a fresh Debian machine: install what is missing (Python venv, the Docker engine),
# build a tiny local image without any registry, drop the example runs into the local inbox,
# run `dagent start` until they are done, and show their results. Safe to run again.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
config=examples/local/agent.toml
inbox=examples/local/runs
say() { printf '\n== %s\n' "$*"; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  say "installing python3-venv"
  apt_install python3 python3-venv
fi
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null 2>&1; then
    say "installing the Docker engine (Debian's docker.io)"
    apt_install docker.io
  fi
  if ! docker info >/dev/null 2>&1; then
    say "starting the Docker engine"
    if [ -d /run/systemd/system ]; then as_root systemctl start docker; else
      as_root sh -c 'nohup dockerd >/var/log/dockerd-quickstart.log 2>&1 &'
    fi
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { echo "the Docker engine did not start; see /var/log/dockerd-quickstart.log" >&2; exit 1; }
  fi
fi
if ! docker image inspect local/busybox:latest >/dev/null 2>&1; then
  say "building local/busybox:latest from Debian's busybox-static (no registry needed)"
  command -v busybox >/dev/null 2>&1 || apt_install busybox-static
  rootfs="$(mktemp -d)"
  mkdir -p "$rootfs/bin" "$rootfs/tmp"
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  for applet in sh echo sleep cat env true false ls id printf; do ln -s busybox "$rootfs/bin/$applet"; done
  tar -C "$rootfs" -c . | docker import --change 'ENV PATH=/bin' - local/busybox:latest >/dev/null
  rm -rf "$rootfs"
fi
if [ ! -x .venv/bin/dagent ]; then
  say "installing dagent into .venv"
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e .
fi

.venv/bin/dagent config validate "$config"
batch="$(date +%Y%m%d-%H%M%S)"
mkdir -p "$inbox/new"
for name in hello exit-code limits refused-privileged; do
  # Writers put a file in place with a rename, so the agent never reads half of it.
  cp "examples/runs/$name.toml" "$inbox/new/.$batch-$name.tmp"
  mv "$inbox/new/.$batch-$name.tmp" "$inbox/new/$batch-$name.toml"
done
say "dagent start -c $config --max-polls 5   (4 example runs in $inbox/new)"
.venv/bin/dagent start -c "$config" --max-polls 5

say "results ($inbox/done/*.json, $inbox/failed/*.error)"
for name in hello exit-code limits refused-privileged; do
  id="$batch-$name"
  if [ -f "$inbox/done/$id.json" ]; then
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print("%-40s %-10s exit code %s" % (r["id"], r["outcome"], r["exit_code"]))' "$inbox/done/$id.json"
  elif [ -f "$inbox/failed/$id.toml.error" ]; then
    printf '%-40s %-10s %s\n' "$id" refused "$(head -n 1 "$inbox/failed/$id.toml.error" | sed 's/.*refused by //')"
  else
    printf '%-40s %s\n' "$id" "no result yet"
  fi
done
