#!/usr/bin/env bash
# Build the concord:local image from this working tree, with or without a container registry.
#
# 1. Base: python:3.12-slim when it is present or can be pulled, else concord-base:bookworm
#    (built from Debian's packages by scripts/build-base-image.sh when missing).
#    BASE_IMAGE=... chooses it yourself.
# 2. Wheels: Concord and its dependencies for the base's Python go to build/wheels/ (pip on
#    this host, which reaches PyPI), so the image build itself needs no network; they are
#    deleted afterwards. When making them fails, the build installs from PyPI inside
#    `docker build --network host` instead.
# 3. Skips the build when concord:local carries the digest of the current build inputs
#    (Dockerfile, .dockerignore, pyproject.toml, README.md, src/, the base image id);
#    --force rebuilds anyway.
#
#   scripts/docker-build.sh [--force]
#   IMAGE=concord:dev BASE_IMAGE=concord-base:bookworm scripts/docker-build.sh
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${IMAGE:-concord:local}"
SLIM_IMAGE="python:3.12-slim"
OFFLINE_BASE="concord-base:bookworm"
DIGEST_LABEL="org.concord.build-inputs"
WHEELS_DIR="build/wheels"
force=false
case "${1:-}" in
  "") ;;
  --force) force=true ;;
  -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 64 ;;
esac

say() { echo "==> $*" >&2; }
started_s=$SECONDS

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker engine is reachable (docker info failed)" >&2
  exit 1
fi

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  if docker image inspect "$SLIM_IMAGE" >/dev/null 2>&1; then
    base="$SLIM_IMAGE"
  else
    say "trying: docker pull $SLIM_IMAGE"
    if timeout 120 docker pull -q "$SLIM_IMAGE" >/dev/null 2>&1; then
      base="$SLIM_IMAGE"
    else
      say "$SLIM_IMAGE cannot be pulled: using $OFFLINE_BASE"
      scripts/build-base-image.sh
      base="$OFFLINE_BASE"
    fi
  fi
fi
docker image inspect "$base" >/dev/null 2>&1 || docker pull "$base"
base_id="$(docker image inspect -f '{{.Id}}' "$base")"
say "base image: $base ($base_id)"

inputs_digest="$(
  {
    echo "$base_id"
    find Dockerfile .dockerignore pyproject.toml README.md src -type f \
      ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-64
)"
current_digest="$(docker image inspect -f "{{index .Config.Labels \"$DIGEST_LABEL\"}}" "$IMAGE" \
  2>/dev/null || true)"
if ! $force && [ "$current_digest" = "$inputs_digest" ]; then
  say "$IMAGE is up to date with the sources (build inputs $inputs_digest); --force rebuilds"
  exit 0
fi

# Wheels for the base's Python: Concord itself is pure Python (built here); the
# dependencies are downloaded as binary wheels for the base's Python and this machine's CPU.
python_tag="$(docker run --rm --entrypoint python3 "$base" \
  -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
arch="$(uname -m)"
# shellcheck source=scripts/ensure-venv.sh
if [ -x .venv/bin/pip ]; then VENV="$PWD/.venv"; else source scripts/ensure-venv.sh; fi
# The wheels live only as long as this build: a later plain `docker build` (or compose
# --build) must install the sources of its own time, not wheels left from this one.
rm -rf "$WHEELS_DIR"
trap 'rm -rf "$WHEELS_DIR"; rmdir --ignore-fail-on-non-empty build' EXIT
mkdir -p "$WHEELS_DIR"
network_args=()
say "building wheels for Python $python_tag ($arch) into $WHEELS_DIR"
if "$VENV/bin/pip" wheel --quiet --no-deps --wheel-dir "$WHEELS_DIR" . &&
   "$VENV/bin/pip" download --quiet --only-binary=:all: --dest "$WHEELS_DIR" \
     --python-version "$python_tag" --implementation cp \
     --platform "manylinux_2_28_$arch" --platform "manylinux_2_17_$arch" \
     --platform "manylinux2014_$arch" --platform "linux_$arch" \
     "$WHEELS_DIR"/concord-*.whl; then
  say "$(find "$WHEELS_DIR" -name '*.whl' | wc -l) wheels ready: the image build needs no network"
else
  say "building wheels failed: the image build installs from PyPI (docker build --network host)"
  rm -rf "$WHEELS_DIR"
  network_args=(--network host)
fi

say "docker build -t $IMAGE --build-arg BASE_IMAGE=$base ${network_args[*]} ."
build_s=$SECONDS
build_started_unix_s="$(date +%s)"
docker build --force-rm "${network_args[@]}" \
  --build-arg "BASE_IMAGE=$base" \
  --label "$DIGEST_LABEL=$inputs_digest" \
  --tag "$IMAGE" .
# Images of earlier builds (the superseded concord:local, builder stages) are untagged now.
docker image prune --force --filter label=org.concord.stage \
  --filter "until=$build_started_unix_s" | sed -n 's/^Total/==> removed earlier builds: total/p' >&2
size_bytes="$(docker image inspect -f '{{.Size}}' "$IMAGE")"
say "built $IMAGE on $base: $((size_bytes / 1000000)) MB; docker build $((SECONDS - build_s)) s," \
  "total $((SECONDS - started_s)) s"
