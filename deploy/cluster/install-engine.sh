#!/usr/bin/env bash
# What `make cluster-up` needs on a Debian bookworm host, installed when missing (as root):
#   - Debian's docker.io (the engine, dockerd), started when it is not running;
#   - Compose v2: bookworm's docker-compose is v1 (1.29), which refuses the compose spec, so
#     the plugin comes from Debian trixie's docker-compose package (v2.26, a static binary
#     that needs only libc6 >= 2.34), downloaded from the same Debian mirror;
#   - debootstrap, for a base image when Docker Hub cannot be reached.
# Exit 0 when `docker compose` can talk to a running engine; else 1 with the reason on stderr.
set -euo pipefail
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

fail() { echo "cluster: $*" >&2; exit 1; }
as_root() { [[ $(id -u) -eq 0 ]] || fail "$1 is missing and installing it needs root"; }

missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if ((${#missing[@]})); then
    as_root "${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

if ! docker compose version >/dev/null 2>&1; then
    as_root "Compose v2"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    mkdir -p "$work/lists/partial" "$work/archives/partial"
    printf 'deb %s trixie main\n' "$mirror" >"$work/trixie.list"
    apt_trixie=(-o "Dir::Etc::SourceList=$work/trixie.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
        -o APT::Sandbox::User=root)
    apt-get "${apt_trixie[@]}" -qq update
    (cd "$work" && apt-get "${apt_trixie[@]}" -qq download docker-compose)
    dpkg -i "$work"/docker-compose_*.deb >/dev/null
    docker compose version >/dev/null 2>&1 || fail "Compose v2 installed but 'docker compose' fails"
fi

if ! docker info >/dev/null 2>&1; then
    as_root "a running dockerd"
    command -v systemctl >/dev/null && systemctl start docker 2>/dev/null || true
    if ! docker info >/dev/null 2>&1; then
        nohup dockerd >/var/log/bptrain-dockerd.log 2>&1 &
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    fi
    docker info >/dev/null 2>&1 ||
        fail "dockerd does not start here: $(tail -n 3 /var/log/bptrain-dockerd.log 2>/dev/null)"
fi
echo "cluster: $(docker compose version), engine $(docker version -f '{{.Server.Version}}')"
