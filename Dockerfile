# The nixgitops controller image: Python, git, Nix and the package. It runs as the non-root user 10001, which owns
# the Nix store at /nix and builds in it itself: no Nix daemon, no build users, no sandbox (see docs/install.md).
# Build: docker build -t nixgitops .
# Not built in CI: the development machines and CI have no Docker engine. What it does to make the store is
# controller/nix/setup-store.sh, its entrypoint, which tests/test_store_setup.py runs as a non-root user in every
# test run: it prepares a store, builds a derivation into it and runs the result.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gnupg nix-bin ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY pyproject.toml README.md ./
COPY controller ./controller
COPY webhooks ./webhooks
RUN pip install --no-cache-dir . && rm -rf /src
COPY controller/nix/setup-store.sh /usr/local/bin/nixgitops-setup-store

# As root, once: the user, and the directories it must own. nix-bin leaves an empty store owned by root and the
# group nixbld; it is replaced by an empty /nix owned by the user. /nix keeps the standard store dir /nix/store, so
# binary caches can substitute and built programs run at their store paths. The chart mounts a volume over /nix and
# a ConfigMap holding nix.conf over $NIX_CONF_DIR.
RUN useradd --uid 10001 --user-group --home-dir /var/lib/nixgitops --create-home nixgitops \
 && rm -rf /nix \
 && install -d -o 10001 -g 10001 -m 0755 /nix /etc/nixgitops/nix

ENV HOME=/tmp \
    NIX_CONF_DIR=/etc/nixgitops/nix \
    PYTHONUNBUFFERED=1

USER 10001:10001
# Once at build time, so that the image holds an initialised store; again at every start (the entrypoint), which
# creates what a new volume lacks, keeps what a used one holds, and writes nix.conf from NIXGITOPS_NIX_SUBSTITUTERS,
# NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS and NIXGITOPS_NIX_EXTRA_CONFIG (none set: no binary cache at all).
RUN nixgitops-setup-store
WORKDIR /var/lib/nixgitops
EXPOSE 8080
ENTRYPOINT ["nixgitops-setup-store", "nixgitops"]
CMD ["run", "--config", "/etc/nixgitops/config/nixgitops.toml"]
