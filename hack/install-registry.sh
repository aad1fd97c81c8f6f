#!/usr/bin/env bash
# Install what the registry tests need from Debian: the real distribution registry
# (`docker-registry`) and `htpasswd` (apache2-utils) for the basic-auth registry.
# Idempotent: skips what is already on PATH.
set -eu

missing=""
command -v docker-registry >/dev/null 2>&1 || missing="$missing docker-registry"
command -v htpasswd >/dev/null 2>&1 || missing="$missing apache2-utils"

if [ -n "$missing" ]; then
    apt-get update
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

docker-registry --version
