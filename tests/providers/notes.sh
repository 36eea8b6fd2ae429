#!/bin/sh
# A test provider written in POSIX shell, to prove the protocol is open to any language.
# Resource type "note": input "text" (and optional "mode"); output "id" (this process's pid and a counter).
# The "mode" input makes it misbehave on purpose: crash (exits 3), signal (kills itself with SIGKILL), hang,
# garbage, refuse, wrongkind.
# Every request line it reads and every response it writes is appended to the file named by $1 (if given),
# each prefixed with "<pid> > " or "<pid> < ".
log=${1:-/dev/null}
n=0
reply() {
  printf '%s\n' "$1"
  printf '%s < %s\n' "$$" "$1" >>"$log"
}
while IFS= read -r line; do
  printf '%s > %s\n' "$$" "$line" >>"$log"
  n=$((n + 1))
  text=$(printf '%s' "$line" | sed -n 's/.*"inputProperties":{[^}]*"text":"\([^"]*\)".*/\1/p' | tail -n 1)
  case "$line" in
    *'"mode":"crash"'*) echo "notes: crashing on purpose" >&2; exit 3 ;;
    *'"mode":"signal"'*) echo "notes: killing myself on purpose" >&2; kill -KILL $$ ;;
    *'"mode":"hang"'*) exec sleep 600 ;;
    *'"mode":"gate"'*)  # wait until the file named by the input "gate" exists (at most 30 s)
      gate=$(printf '%s' "$line" | sed -n 's/.*"gate":"\([^"]*\)".*/\1/p'); i=0
      while [ ! -e "$gate" ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i + 1)); done ;;
    *'"mode":"chatty"'*) reply '{"createResourceResponse":{"outputProperties":{"id":"extra"}}}' ;;
    *'"mode":"garbage"'*) echo "this is not json"; continue ;;
    *'"mode":"refuse"'*) reply '{"errorResponse":{"message":"notes: refusing on purpose"}}'; continue ;;
    *'"mode":"wrongkind"'*) reply '{"updateResourceResponse":{"outputProperties":{}}}'; continue ;;
  esac
  case "$line" in
    '{"createResourceRequest"'*) reply "{\"createResourceResponse\":{\"outputProperties\":{\"id\":\"$$-$n\",\"text\":\"$text\"}}}" ;;
    '{"updateResourceRequest"'*) reply "{\"updateResourceResponse\":{\"outputProperties\":{\"id\":\"$$-$n\",\"text\":\"$text\"}}}" ;;
    '{"destroyResourceRequest"'*) reply '{"destroyResourceResponse":{}}' ;;
    '{"readResourceRequest"'*) reply '{"readResourceResponse":{"outputProperties":{}}}' ;;
    *) reply '{"errorResponse":{"message":"notes: unsupported request"}}' ;;
  esac
done
