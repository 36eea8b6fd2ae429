#!/usr/bin/env bash
# `make demo`: the whole GitOps loop on the bundled example. A local "remote" repository, a developer clone that
# pushes to it, and the nixgitops controller watching it (polling every second), applying each push and pushing
# its state branch back.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nixgitops=${NIXGITOPS:-$here/../.venv/bin/nixgitops}
work=$(mktemp -d "${TMPDIR:-/tmp}/nixgitops-demo.XXXXXX")
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
git_() { git -c user.name=demo -c user.email=demo@example.invalid -c init.defaultBranch=main "$@"; }
wait_applied() {  # until the remote state branch names the commit, at most 60 s
  local sha=$1 deadline=$((SECONDS + 60))
  until git --git-dir "$work/remote.git" log --format=%B nixgitops/state 2>/dev/null | grep -q "Source-Commit: $sha"; do
    if ((SECONDS > deadline)); then echo "not applied within 60 s; controller log:"; cat "$work/controller.log"; exit 1; fi
    sleep 0.2
  done
}

step "A \"remote\" repository and a developer's clone with the example deployment ($work)"
git_ init -q --bare "$work/remote.git"
git_ clone -q "$work/remote.git" "$work/clone" 2>/dev/null
cp "$here/hello/deployment.nix" "$work/clone/"
cd "$work/clone"
git_ add deployment.nix && git_ commit -qm "Add the example deployment" && git_ push -q origin main
git log --oneline

step "What it would do: nixgitops plan (in the clone)"
"$nixgitops" plan --option substituters ""   # no binary cache: the demo builds the little it needs

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/nixgitops.toml" <<TOML
[controller]
data_dir = "$work/data"

[server]
listen = "127.0.0.1:$port"

[deployments.hello]
repository = "$work/remote.git"
branch = "main"
interval = "1s"
nix_options = { substituters = "" }
TOML
step "The controller's configuration"
cat "$work/nixgitops.toml"

step "nixgitops run --config nixgitops.toml (in the background; its log: $work/controller.log)"
"$nixgitops" run --config "$work/nixgitops.toml" 2>"$work/controller.log" &
controller=$!
trap 'kill $controller 2>/dev/null || true' EXIT
first=$(git rev-parse HEAD)
wait_applied "$first"
"$nixgitops" status --config "$work/nixgitops.toml"
echo "--- $work/data/work/hello/motd.txt:"; cat "$work/data/work/hello/motd.txt"
echo "--- the Nix-built banner's output, from the state branch:"
git_ fetch -q origin nixgitops/state:nixgitops/state
"$nixgitops" state show banner --deployment hello | grep -E '"(stdout|executable)"|/nix/store/'
git_ branch -q -D nixgitops/state

step "A second commit, pushed"
sed -i 's/Hello from nixgitops/Hello again, from nixgitops/' deployment.nix
git_ commit -qam "Change the greeting" && git_ push -q origin main
second=$(git rev-parse HEAD)
started=$EPOCHREALTIME
wait_applied "$second"
awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "applied %.1f s after the push (polling every second)\n", b - a }'
echo "--- $work/data/work/hello/motd.txt:"; cat "$work/data/work/hello/motd.txt"

step "The state branch on the remote: one commit per applied source commit"
git --git-dir "$work/remote.git" log --stat --format='%h %s%n%b' nixgitops/state

step "Stopping the controller"
kill -TERM $controller && wait $controller || true
trap - EXIT
tail -n 5 "$work/controller.log"
