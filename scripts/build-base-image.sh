#!/usr/bin/env bash
# Build the Docker base image concord-base:bookworm (Debian 12 + python3 3.11 + venv) from
# Debian's packages, for a Docker engine that cannot pull python:3.12-slim from a registry.
# Idempotent: does nothing when the image exists (--force rebuilds it). Needs root (or sudo)
# for apt-get when mmdebstrap is missing, and reaches Debian's package mirror as apt does.
#
#   scripts/build-base-image.sh            # build once
#   scripts/build-base-image.sh --force    # rebuild
#   BASE_TAG=my-base:1 scripts/build-base-image.sh
set -euo pipefail

BASE_TAG="${BASE_TAG:-concord-base:bookworm}"
SUITE="${SUITE:-bookworm}"
PACKAGES="python3,python3-venv,ca-certificates"
force=false
case "${1:-}" in
  "") ;;
  --force) force=true ;;
  -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "usage: $0 [--force]" >&2; exit 64 ;;
esac

say() { echo "==> $*" >&2; }

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker engine is reachable (docker info failed)" >&2
  exit 1
fi
if ! $force && docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
  say "$BASE_TAG exists; nothing to do (--force rebuilds it)"
  exit 0
fi

if ! command -v mmdebstrap >/dev/null 2>&1; then
  say "installing mmdebstrap with apt-get"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -q
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends \
    mmdebstrap
fi

workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
rootfs="$workdir/rootfs.tar"

# Without a mirror argument mmdebstrap uses the package sources apt is configured with.
# The apt lists and caches are dropped so they do not ship in the image ($1 is the root
# directory mmdebstrap hands the hook, hence the single quotes).
say "mmdebstrap --variant=minbase --include=$PACKAGES $SUITE (Debian packages -> $rootfs)"
started_s=$SECONDS
# shellcheck disable=SC2016
mmdebstrap --quiet --variant=minbase --include="$PACKAGES" \
  --aptopt='Acquire::Languages "none"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
  "$SUITE" "$rootfs"
say "root filesystem: $(du -h "$rootfs" | cut -f1) in $((SECONDS - started_s)) s"

say "docker import -> $BASE_TAG"
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "Debian $SUITE minbase + $PACKAGES (scripts/build-base-image.sh)" \
  "$rootfs" "$BASE_TAG" >/dev/null
size_bytes="$(docker image inspect -f '{{.Size}}' "$BASE_TAG")"
say "built $BASE_TAG: $((size_bytes / 1000000)) MB, $(docker run --rm "$BASE_TAG" python3 -V)"
