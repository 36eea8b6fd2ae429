#!/usr/bin/env bash
# `make demo`: the bundled example, planned and applied in a fresh Git repository, then changed once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
nixgitops=${NIXGITOPS:-$here/../.venv/bin/nixgitops}
work=$(mktemp -d "${TMPDIR:-/tmp}/nixgitops-demo.XXXXXX")
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
git_() { git -c user.name=demo -c user.email=demo@example.invalid -c init.defaultBranch=main "$@"; }

step "A Git repository with the example deployment: $work"
cp "$here/hello/deployment.nix" "$work/"
cd "$work"
git_ init -q && git_ add deployment.nix && git_ commit -qm "Add the example deployment"
git log --oneline

step "nixgitops plan"
"$nixgitops" plan

step "nixgitops apply --yes"
"$nixgitops" apply --yes

step "The resources it made"
head -n 20 motd.txt index.html robots.txt

step "nixgitops state list"
"$nixgitops" state list

step "A change: a new greeting, committed"
sed -i 's/Hello from nixgitops/Hello again, from nixgitops/' deployment.nix
git_ commit -qam "Change the greeting"
"$nixgitops" plan

step "nixgitops apply --yes"
"$nixgitops" apply --yes
cat motd.txt

step "Nothing left to do"
"$nixgitops" plan

step "The state branch: one commit per apply, one file per resource"
git log --stat --format='%h %s%n%b' nixgitops/state
echo
echo "The demo repository stays in $work; \`git -C $work show nixgitops/state:default/resources/motd.json\` shows a record."
