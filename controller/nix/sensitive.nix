# nixgitops's `sensitive`: marks a value so that nixgitops hides it in every plan, log and API answer and seals it
# in state (docs/secrets.md). The deployment function gets it as its `sensitive` argument; a NixOps4 root, whose
# modules get no extra argument, imports this file (mkRoot { specialArgs.sensitive = import ./sensitive.nix; }).
#
# The mark is the string context of a small store file named `nixgitops-sensitive`: it survives interpolation and
# every string operation, as a store path's context does. builtins.toFile computes the file's path without writing
# it in --readonly-mode (and writes these few bytes otherwise). nixgitops recognises the mark by that name alone.
#
# Each marked string is also announced on stderr (`trace: nixgitops:sensitive "<value as JSON>"`) the first time it is
# forced: nixgitops reads those lines and never shows them, so that it can redact the value from anything else Nix
# prints, even from the error of an evaluation that fails before it returns the value (a user's builtins.trace).
let
  marker = builtins.toFile "nixgitops-sensitive" "nixgitops marks sensitive values with this file's context";
  announce = s: builtins.trace ("nixgitops:sensitive " + builtins.toJSON (builtins.unsafeDiscardStringContext s)) s;
  mark = s: s + builtins.substring 0 0 marker;
  sensitive = v:
    if builtins.isString v then mark (announce v)
    else if builtins.isAttrs v && (v ? __nixgitopsSensitive || v ? outPath || v ? __toString) then
      (if v ? __nixgitopsSensitive then v else sensitive (toString v))
    else if builtins.isAttrs v then builtins.mapAttrs (_: sensitive) v
    else if builtins.isList v then map sensitive v
    else if builtins.isFunction v then throw "nixgitops: `sensitive` marks data (strings, numbers, lists, attribute sets), not a function"
    # (a number or boolean made a string is marked, not announced: its digits are not searched for in free text)
    else { __nixgitopsSensitive = v; __toString = self: mark (toString v); };
in
sensitive
