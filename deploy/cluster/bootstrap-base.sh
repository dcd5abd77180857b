#!/usr/bin/env bash
# Build a Python base image from Debian itself, for hosts that cannot pull from Docker Hub:
#   debootstrap --variant=minbase bookworm  ->  Debian's python3.11 + venv  ->  docker import
# The result stands in for python:3.11-slim-bookworm (the Dockerfile's default PYTHON_IMAGE):
# `python` and `python3` on the PATH, `python -m venv` works, apt points at Debian's mirror.
#   deploy/cluster/bootstrap-base.sh IMAGE_TAG [MIRROR]        (as root; debootstrap needed)
set -euo pipefail
tag=${1:?usage: bootstrap-base.sh IMAGE_TAG [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/bptrain-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$root" "$mirror" >/dev/null
# What an apt-based image keeps small: no package lists, caches, docs or logs.
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
    "$root"/usr/share/info/* "$root"/var/log/*.log "$root"/var/cache/debconf/*-old
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\n' "$mirror" "$mirror" \
    > "$root/etc/apt/sources.list"

tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap minbase bookworm + python3 ($mirror)" \
    - "$tag" >/dev/null
echo "$tag"
