#!/usr/bin/env bash
# `make demo`: the whole GitOps loop on the bundled example. A local "remote" repository, a developer clone that
# pushes to it, and the nixgitops controller watching it (polling every second), applying each push and pushing
# its state branch back; then a pull request, whose plan appears on the forge before merge. The forge is a FAKE
# GitHub API on loopback (examples/fake_github.py, the test suite's fake): the demo has no network.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nixgitops=${NIXGITOPS:-$here/../.venv/bin/nixgitops}
work=$(mktemp -d "${TMPDIR:-/tmp}/nixgitops-demo.XXXXXX")
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
git_() { git -c user.name=demo -c user.email=demo@example.invalid -c init.defaultBranch=main "$@"; }
wait_applied() {  # until the remote state branch names the commit, at most 60 s
  local sha=$1 deadline=$((SECONDS + 60))
  until git --git-dir "$work/org/infra.git" log --format=%B nixgitops/state 2>/dev/null | grep -q "Source-Commit: $sha"; do
    if ((SECONDS > deadline)); then echo "not applied within 60 s; controller log:"; cat "$work/controller.log"; exit 1; fi
    sleep 0.2
  done
}

step "A \"remote\" repository and a developer's clone with the example deployment ($work)"
git_ init -q --bare "$work/org/infra.git"
git_ clone -q "$work/org/infra.git" "$work/clone" 2>/dev/null
cp "$here/hello/deployment.nix" "$work/clone/"
cd "$work/clone"
git_ add deployment.nix && git_ commit -qm "Add the example deployment" && git_ push -q origin main
git log --oneline

step "What it would do: nixgitops plan (in the clone)"
"$nixgitops" plan --option substituters ""   # no binary cache: the demo builds the little it needs

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
forge_port=$(free_port)
python=$(dirname "$nixgitops")/python
echo "demo-token" >"$work/forge-token"
age-keygen -o "$work/age-identity.txt" 2>/dev/null   # the key sensitive values are encrypted to in state
recipient=$(grep -o 'age1[0-9a-z]*' "$work/age-identity.txt")
echo "demo-webhook-secret" >"$work/hook-secret"
"$python" "$here/fake_github.py" "$forge_port" org/infra "$work/forge-token" >"$work/fake-github.log" 2>&1 &
fake=$!
until grep -q ready "$work/fake-github.log" 2>/dev/null; do sleep 0.1; done
cat >"$work/nixgitops.toml" <<TOML
[controller]
data_dir = "$work/data"

[server]
listen = "127.0.0.1:$port"

[forges.gh]                          # a FAKE GitHub on loopback, standing in for api.github.com
kind = "github"
api_url = "http://127.0.0.1:$forge_port"
token_file = "$work/forge-token"

[receivers.hub]
kind = "github"
secret_file = "$work/hook-secret"
deployments = ["hello"]

[deployments.hello]
repository = "file://$work/org/infra.git"
branch = "main"
interval = "1s"
nix_options = { substituters = "" }
forge = "gh"
previews = true

[deployments.hello.encryption]       # sensitive values, encrypted on the state branch (docs/secrets.md)
recipients = ["$recipient"]
identity_file = "$work/age-identity.txt"
enforced = true
TOML
step "The controller's configuration"
cat "$work/nixgitops.toml"

step "nixgitops run --config nixgitops.toml (in the background; its log: $work/controller.log)"
"$nixgitops" run --config "$work/nixgitops.toml" 2>"$work/controller.log" &
controller=$!
trap 'kill $controller $fake 2>/dev/null || true' EXIT
first=$(git rev-parse HEAD)
wait_applied "$first"
"$nixgitops" status --config "$work/nixgitops.toml"
echo "--- $work/data/work/hello/motd.txt:"; cat "$work/data/work/hello/motd.txt"
echo "--- the Nix-built banner's output, from the state branch:"
git_ fetch -q origin nixgitops/state:nixgitops/state
"$nixgitops" state show banner --deployment hello | grep -E '"(stdout|executable)"|/nix/store/'
echo "--- a sensitive input: masked by every command, sealed on the state branch (its blob, shortened):"
"$nixgitops" state show apiToken --deployment hello | grep '"contents"'
git show "nixgitops/state:hello/resources/$(printf apiToken | sha1sum | cut -c1-2)/apiToken.json" \
  | grep -E '"(digest|age)"' | cut -c1-100
echo "--- and in clear only with --show-sensitive and a key that can decrypt it:"
"$nixgitops" state show apiToken --deployment hello --show-sensitive --identity "$work/age-identity.txt" | grep '"contents"'
git_ branch -q -D nixgitops/state

step "A second commit, pushed"
sed -i 's/Hello from nixgitops/Hello again, from nixgitops/' deployment.nix
git_ commit -qam "Change the greeting" && git_ push -q origin main
second=$(git rev-parse HEAD)
started=$EPOCHREALTIME
wait_applied "$second"
awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "applied %.1f s after the push (polling every second)\n", b - a }'
echo "--- $work/data/work/hello/motd.txt:"; cat "$work/data/work/hello/motd.txt"

step "A pull request: its plan on the forge before merge"
git_ checkout -q -b more-greetings
sed -i 's/Hello again, from nixgitops/Hello from a pull request/' deployment.nix
git_ commit -qam "A new greeting, for review"
git_ push -q origin HEAD:refs/heads/more-greetings HEAD:refs/pull/1/head   # as GitHub keeps a pull request's head
head=$(git rev-parse HEAD)
"$python" - "$port" "$head" "file://$work/org/infra.git" <<'PY'
import hashlib, hmac, json, sys, urllib.request
port, head, url = sys.argv[1:]
repo = {"id": 1, "clone_url": url}
body = json.dumps({"action": "opened", "number": 1, "repository": repo, "pull_request": {"number": 1,
    "head": {"sha": head, "ref": "more-greetings", "repo": repo}, "base": {"ref": "main", "repo": repo}}}).encode()
signature = "sha256=" + hmac.new(b"demo-webhook-secret", body, hashlib.sha256).hexdigest()
request = urllib.request.Request(f"http://127.0.0.1:{port}/hooks/hub", data=body, headers={
    "X-Hub-Signature-256": signature, "X-GitHub-Event": "pull_request", "X-GitHub-Delivery": "demo-1"})
with urllib.request.urlopen(request, timeout=10) as response:
    print(f"webhook answered {response.status}: {response.read().decode()}")
PY
api="http://127.0.0.1:$forge_port/repos/org/infra"
auth=(-H "Authorization: Bearer demo-token")
deadline=$((SECONDS + 60))
until curl -s "${auth[@]}" "$api/commits/$head/statuses" | grep -q '"success"'; do
  if ((SECONDS > deadline)); then echo "no preview within 60 s; controller log:"; cat "$work/controller.log"; exit 1; fi
  sleep 0.2
done
echo "--- the commit status on the pull request's head (newest first):"
curl -s "${auth[@]}" "$api/commits/$head/statuses" | "$python" -m json.tool
echo "--- the one comment nixgitops keeps on pull request #1:"
curl -s "${auth[@]}" "$api/issues/1/comments" | "$python" -c 'import json, sys; print(json.load(sys.stdin)[0]["body"])'

step "The state branch on the remote: one commit per applied source commit"
git --git-dir "$work/org/infra.git" log --stat --format='%h %s%n%b' nixgitops/state

step "Stopping the controller"
kill -TERM $controller && wait $controller || true
kill -TERM $fake && wait $fake || true
trap - EXIT
tail -n 5 "$work/controller.log"
