#!/bin/sh
# Make a Nix store that the current, non-root user can write and build in, then run a command in it.
#
#   setup-store.sh [COMMAND [ARG...]]
#
# The image's entrypoint (`nixgitops-setup-store nixgitops run ...`), run as the user that runs nixgitops;
# tests/test_store_setup.py runs it as a non-root user, builds a derivation into the store it makes and runs the
# result. Every start does the same, quickly: it creates what is missing and deletes nothing, so a store on a
# volume survives restarts. It
#
#   1. creates the directories store, var/nix and var/log/nix in $NIXGITOPS_NIX_ROOT, and fails with a clear message
#      if they are not writable (a volume mounted without the pod's fsGroup, a store left by another user);
#   2. writes $NIX_CONF_DIR/nix.conf from the variables below, unless that file exists and cannot be written (a
#      ConfigMap mounted there, as the chart does): then it is used as it is;
#   3. opens the store once (`nix-store --init` creates its database the first time), so a store Nix cannot use
#      stops the container here rather than at the first build;
#   4. exports NIX_STORE_DIR, NIX_STATE_DIR, NIX_LOG_DIR and NIX_CONF_DIR and execs COMMAND, if one is given.
#
# Environment:
#   NIXGITOPS_NIX_ROOT                 holds store/ and var/; default /nix, the standard store dir, which binary caches
#                                      serve. Any other root is a store of its own (other hashes, no substitutes).
#   NIX_CONF_DIR                       where nix.conf is written and read; default /etc/nix
#   NIXGITOPS_NIX_SUBSTITUTERS         binary caches, separated by spaces; unset or empty: none, nothing is downloaded
#   NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS  the keys their paths must be signed with, separated by spaces
#   NIXGITOPS_NIX_EXTRA_CONFIG         nix.conf lines appended as they are (a later line overrides an earlier one)
# (NIX_CONFIG, if set, still applies on top of nix.conf, as for any Nix command.)
#
# nix.conf sets `build-users-group =` (empty: a single-user store, builds run as this user, no nixbld users, no
# root, no daemon) and `sandbox = false` (the sandbox needs user and mount namespaces, which most pods do not
# allow: their seccomp profile refuses them and all capabilities are dropped). `connect-timeout = 5` bounds how long
# an unreachable binary cache can hold up a build.
set -eu

me=setup-store.sh
root=${NIXGITOPS_NIX_ROOT:-/nix}
conf_dir=${NIX_CONF_DIR:-/etc/nix}
substituters=${NIXGITOPS_NIX_SUBSTITUTERS:-}
keys=${NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS:-}
extra=${NIXGITOPS_NIX_EXTRA_CONFIG:-}

fail() {
    echo "$me: $*" >&2
    exit 1
}

case $root in
/*) ;;
*) fail "NIXGITOPS_NIX_ROOT must be an absolute path, not '$root'." ;;
esac

for dir in "$root" "$root/store" "$root/var/nix" "$root/var/log/nix"; do
    if [ -e "$dir" ] && { [ ! -d "$dir" ] || [ ! -w "$dir" ] || [ ! -x "$dir" ]; }; then
        fail "cannot write to $dir ($(ls -ld "$dir")): the Nix store must belong to the user that runs nixgitops" \
            "(uid $(id -u)). The image creates /nix so; on Kubernetes give the pod an fsGroup for the store's volume."
    fi
    mkdir -p "$dir" 2>/dev/null || fail "cannot create $dir as uid $(id -u): its parent must be writable by this user."
done

conf=$conf_dir/nix.conf
if [ -e "$conf" ] && [ ! -w "$conf" ]; then
    if [ -n "$substituters$keys$extra" ]; then
        fail "$conf is provided read-only (a mounted ConfigMap?), so NIXGITOPS_NIX_SUBSTITUTERS," \
            "NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS and NIXGITOPS_NIX_EXTRA_CONFIG cannot apply: set them in that file."
    fi
    echo "$me: using the provided $conf" >&2
else
    if ! mkdir -p "$conf_dir" 2>/dev/null || [ ! -w "$conf_dir" ]; then
        fail "cannot write nix.conf into $conf_dir (NIX_CONF_DIR) as uid $(id -u): make it writable by this user," \
            "or provide a nix.conf there (the chart mounts one from a ConfigMap)."
    fi
    {
        echo "# Written by $me at every start from NIXGITOPS_NIX_*: change those, not this file."
        echo "build-users-group ="
        echo "sandbox = false"
        echo "connect-timeout = 5"
        echo "substituters = $(printf '%s' "$substituters" | tr '\n\t' '  ')"
        echo "trusted-public-keys = $(printf '%s' "$keys" | tr '\n\t' '  ')"
        if [ -n "$extra" ]; then printf '%s\n' "$extra"; fi
    } >"$conf.tmp"
    mv -f "$conf.tmp" "$conf"
fi

NIX_STORE_DIR=$root/store
NIX_STATE_DIR=$root/var/nix
NIX_LOG_DIR=$root/var/log/nix
NIX_CONF_DIR=$conf_dir
export NIX_STORE_DIR NIX_STATE_DIR NIX_LOG_DIR NIX_CONF_DIR

nix-store --init || fail "Nix cannot open the store in $root (see the message above)."

if [ "$#" -gt 0 ]; then
    exec "$@"
fi
