#!/bin/sh
# A slow test provider with create-if-absent semantics, like a cloud API with unique names: creating a
# resource whose name exists is refused. Resource type "entry": input "name"; output "id". Objects are files
# in the directory $1; every successful create appends "<name> <id>" to $1/LEDGER.
dir=$1
n=0
field() { printf '%s' "$line" | sed -n "s/.*\"inputProperties\":{[^}]*\"$1\":\"\\([^\"]*\\)\".*/\\1/p"; }
while IFS= read -r line; do
  n=$((n + 1))
  name=$(field name)
  case "$line" in
    '{"createResourceRequest"'*)
      if [ -e "$dir/$name" ]; then
        printf '{"errorResponse":{"message":"ledger: %s already exists"}}\n' "$name"; continue
      fi
      sleep 0.05
      id="$$-$n"
      printf '%s' "$id" >"$dir/.$name.tmp" && mv "$dir/.$name.tmp" "$dir/$name"
      printf '%s %s\n' "$name" "$id" >>"$dir/LEDGER"
      printf '{"createResourceResponse":{"outputProperties":{"id":"%s"}}}\n' "$id" ;;
    '{"readResourceRequest"'*)
      if [ -e "$dir/$name" ]; then
        printf '{"readResourceResponse":{"outputProperties":{"id":"%s"}}}\n' "$(cat "$dir/$name")"
      else
        printf '{"errorResponse":{"message":"ledger: no %s"}}\n' "$name"
      fi ;;
    '{"updateResourceRequest"'*)
      printf '{"updateResourceResponse":{"outputProperties":{"id":"%s"}}}\n' "$(cat "$dir/$name")" ;;
    '{"destroyResourceRequest"'*) rm -f "$dir/$name"; echo '{"destroyResourceResponse":{}}' ;;
    *) echo '{"errorResponse":{"message":"ledger: unsupported"}}' ;;
  esac
done
