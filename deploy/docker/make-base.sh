#!/usr/bin/env bash
# Make a local Debian bookworm base image (python3 + venv + CA certificates) when no image registry is
# reachable: debootstrap a minimal root file system and `docker import` it.
#   deploy/docker/make-base.sh [IMAGE]        default IMAGE: ragcluster-base:bookworm
# Skips the work when IMAGE already exists. Build the images on it with
#   --build-arg BASE_IMAGE=ragcluster-base:bookworm
# Where a registry is reachable, the Dockerfiles' default base (python:3.11-slim-bookworm) needs none of this.
set -euo pipefail
IMAGE=${1:-ragcluster-base:bookworm}
DOCKER=${DOCKER:-/usr/bin/docker}
MIRROR=${DEBIAN_MIRROR:-$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | head -1 || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SNAPSHOT=${SNAPSHOT:-}   # e.g. 20250520T000000Z: build from snapshot.debian.org for a reproducible base

if "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "make-base: $IMAGE exists"; exit 0
fi
if [ -n "$SNAPSHOT" ]; then MIRROR="http://snapshot.debian.org/archive/debian/$SNAPSHOT"; fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
command -v debootstrap >/dev/null || {
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}
ROOTFS=$(mktemp -d /tmp/ragcluster-base.XXXXXX)
trap 'as_root rm -rf "$ROOTFS"' EXIT
echo "make-base: debootstrap bookworm from $MIRROR"
as_root debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,tini \
    bookworm "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 || { tail -30 "$ROOTFS.log" >&2; exit 1; }
# no package caches, lists or docs in the image
as_root rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/* "$ROOTFS"/var/log/*
as_root tar -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' \
    --message "debootstrap bookworm minbase from $MIRROR" - "$IMAGE" >/dev/null
rm -f "$ROOTFS.log"
echo "make-base: $IMAGE ($("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE") bytes)"
