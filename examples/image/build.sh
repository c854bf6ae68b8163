#!/usr/bin/env bash
# Build the dagent image from this checkout: a wheelhouse for the base image's Python made here (so the
# build needs no package index), then the repository's Dockerfile.
# Usage: bash examples/image/build.sh [--base IMAGE] [--tag TAG]
#   --base  any Debian image with python3 >= 3.10 (default python:3.12-slim-bookworm)
#   --tag   the image's name (default dagent:VERSION)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
base="python:3.12-slim-bookworm"
version="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/dagent/__init__.py")"
tag="dagent:$version"
while [ $# -gt 0 ]; do
  case "$1" in
    --base) base="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
python="$(command -v python3)"
[ -x "$repo/.venv/bin/python" ] && python="$repo/.venv/bin/python"

# The base's Python decides which wheels fit.
read -r pyver machine < <(docker run --rm --entrypoint python3 "$base" -c \
  'import platform, sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine())') || {
  echo "build.sh: cannot run python3 in $base: the base must be a Debian image with python3 >= 3.10" >&2; exit 1; }
case "$pyver" in 3.1[0-9]|3.[2-9][0-9]) ;; *) echo "build.sh: $base has Python $pyver; dagent needs >= 3.10" >&2; exit 1 ;; esac

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir "$context/wheels"
echo "== wheelhouse for Python $pyver on $machine"
"$python" -m pip wheel -q --no-deps --wheel-dir "$context/wheels" "$repo"
# dagent's dependencies and pip itself, as binary wheels for the base's Python and machine.
"$python" -m pip download -q --dest "$context/wheels" --only-binary=:all: --python-version "$pyver" \
  --implementation cp --platform "manylinux_2_17_$machine" --platform "manylinux2014_$machine" \
  --platform "manylinux_2_28_$machine" --platform any "$context"/wheels/dagent-*.whl pip
cp "$repo/Dockerfile" "$context/Dockerfile"
echo "== docker build $tag (base $base)"
DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build -q --build-arg "BASE=$base" --tag "$tag" "$context"
echo "built $tag"
