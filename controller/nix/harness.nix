# The nixgitops evaluation harness. It calls the user's deployment function and reports every resource's
# type and inputs as JSON, one field at a time, so that a field reading outputs that are not known yet is
# reported as unknown instead of failing the whole evaluation.
#
# Its only argument, argsFile, names a JSON file written by controller/evaluation.py:
#   deployment  absolute path of the entry file (deployment.nix)
#   known       { "<dotted path>" = <outputs>; } for every resource whose outputs are final
#   select      null, or a list of paths (each a list of names): evaluate only these resources
#   probe       a list of paths: find which resources each one reads (its dependencies)
#   focus       null, or { path; } to evaluate one resource without any error handling, so that
#               Nix reports a user's own `throw` or `assert` with its message and location
# A persistent evaluator (controller/nix_repl.py) passes the known outputs as knownOutputs instead, a value
# it keeps for the whole session, and knownDir, a directory where it writes <path>.json for each output that
# became known since (null: no longer known); files there take precedence. With exposeCall it returns the
# deployment's value itself, which it passes back as `called` to every later pass of the session.
#
# Markers on stderr (through builtins.trace) let the caller attribute reads to readers:
#   nixgitops:eval P      evaluation of resource P starts
#   nixgitops:unknown Q   an unknown output of Q was read (a throw, so every reader re-triggers it)
#   nixgitops:blocked F   the field F of the resource being evaluated failed ("*": its whole inputs)
#   nixgitops:probe P     dependency probe of resource P starts (all outputs unknown in the probe)
{ argsFile, knownOutputs ? null, knownDir ? null, called ? null, exposeCall ? false }:
let
  args = builtins.fromJSON (builtins.readFile argsFile);
  known = if knownOutputs != null then knownOutputs else args.known;
  entry = import args.deployment;

  unknown = path:
    builtins.trace "nixgitops:unknown ${path}"
      (throw "nixgitops: the outputs of '${path}' are not known until it has been applied; outputs may only be read by another resource's inputs");

  knownOrUnknown = path:
    let
      file = "${knownDir}/${path}.json";
      written = if knownDir != null && builtins.pathExists file then builtins.fromJSON (builtins.readFile file) else false;
    in
    if written == null then unknown path
    else if written != false then written
    else if known ? ${path} then known.${path}
    else unknown path;

  join = prefix: name: if prefix == "" then name else "${prefix}.${name}";

  isComposite = decl: builtins.isAttrs decl && decl ? members && !(decl ? type);

  # The `members` argument: every member as declared, with `outputs` added to resources.
  view = outputsOf: prefix: decls:
    builtins.mapAttrs
      (name: decl:
        let path = join prefix name; in
        if isComposite decl && builtins.isAttrs decl.members
        then decl // { members = view outputsOf path decl.members; }
        else (if builtins.isAttrs decl then decl else { }) // { outputs = outputsOf path; })
      decls;

  call = outputsOf:
    let
      result = if builtins.isFunction entry then entry { members = view outputsOf "" (result.members or { }); providers = providerTypes; } else entry;
    in
    result;

  # With knownDir, outputs are read when forced, so one call can serve a whole session: a field that read an
  # unknown output threw, and Nix forgets a thunk that threw, so the next pass evaluates it again.
  result = if called != null then called else call knownOrUnknown;
  declared = if builtins.isAttrs (result.providers or { }) then result.providers or { } else { };

  providerTypes =
    builtins.mapAttrs
      (name: p: builtins.listToAttrs (map (t: { name = t; value = "${name}.${t}"; }) (p.resourceTypes or [ ])))
      (declared // { local = { resourceTypes = [ "file" "exec" "memo" ]; }; });

  # Every resource, as { path = "a.b"; names = [ "a" "b" ]; decl; }, in sorted order.
  validName = name: builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" name != null;
  collect = prefix: names: decls:
    builtins.concatLists (map
      (name:
        let decl = decls.${name}; path = join prefix name; here = names ++ [ name ]; in
        if !validName name then [ { inherit path decl; names = here; bad = name; } ]
        else if isComposite decl && builtins.isAttrs decl.members
        then collect path here decl.members
        else [ { inherit path decl; names = here; } ])
      (builtins.attrNames decls));

  lookup = root: names:
    builtins.foldl' (d: n: d.members.${n}) { members = root.members or { }; } names;

  # Make a value JSON-representable without copying anything into the Nix store: paths become their
  # absolute path strings, functions become a marker the caller reports as an error.
  jsonable = v:
    if builtins.isString v then v
    else if builtins.isFunction v then { __nixgitopsFunction = true; }
    else if builtins.isPath v then toString v
    else if builtins.isAttrs v then (if v ? __toString || v ? outPath then toString v else builtins.mapAttrs (_: jsonable) v)
    else if builtins.isList v then map jsonable v
    else if builtins.isFloat v && builtins.fromJSON (builtins.toJSON v) != v then { __nixgitopsFloat = toString v; }
    else v;

  position = attrs: name:
    let p = builtins.unsafeGetAttrPos name attrs; in
    if p == null then null else "${p.file}:${toString p.line}:${toString p.column}";

  evalField = attrs: name: v:
    let r = builtins.tryEval (let j = jsonable v; in builtins.deepSeq j j); in
    if r.success then { v = r.value; }
    else builtins.trace "nixgitops:blocked ${name}" { u = true; at = position attrs name; };

  describe = { path, decl, ... }@entry:
    let
      kind =
        if entry ? bad then "badname"
        else if !builtins.isAttrs decl then builtins.typeOf decl
        else if decl ? type then "resource"
        else if decl ? members then "composite-" + builtins.typeOf decl.members
        else "empty";
      typeTry = builtins.tryEval decl.type;
      type =
        if !typeTry.success then "<failed>"
        else if builtins.isString typeTry.value then typeTry.value
        else "<${builtins.typeOf typeTry.value}>";
      rawInputs = decl.inputs or { };
      shape = builtins.tryEval (builtins.isAttrs rawInputs);
      lifecycle = decl.lifecycle or { };
      # Fast path: all inputs at once, with one tryEval. Only when that fails, field by field, after the marker
      # that attributes what follows to this resource (markers printed by the failed attempt come before it,
      # and the caller drops them).
      whole = builtins.tryEval (let j = jsonable rawInputs; in builtins.deepSeq j j);
      fields =
        if !shape.success then
          builtins.trace "nixgitops:eval ${path}"
            (builtins.seq (builtins.tryEval (builtins.isAttrs rawInputs)) (builtins.trace "nixgitops:blocked *" null))
        else if !shape.value then "<${builtins.typeOf rawInputs}>"
        else if whole.success then whole.value
        else builtins.trace "nixgitops:eval ${path}" (builtins.mapAttrs (evalField rawInputs) rawInputs);
    in
    if kind != "resource" then { p = path; k = kind; n = entry.bad or null; }
    else {
      p = path;
      k = kind;
      t = type;
      i = fields;
      a = shape.success && shape.value && whole.success; # `i` holds the inputs themselves, not field by field
      d = if builtins.isAttrs lifecycle then lifecycle.preventDestroy or false else false;
      l = builtins.typeOf lifecycle;
    };

  topMembers = result.members or { };
  entries = if builtins.isAttrs topMembers then collect "" [ ] topMembers else [ ];
  selected =
    if args.select == null then entries
    else map (names: { path = builtins.concatStringsSep "." names; names = names; decl = lookup result names; }) args.select;

  evalEntry = e: let d = describe e; in builtins.deepSeq d d;

  # The dependency probe calls the deployment function a second time, with every output unknown, and
  # forces each node of the probed resources' inputs on its own, so each node reports the first resource
  # it reads.
  probeResult = call unknown;
  probeAll = builtins.foldl' (acc: x: builtins.seq (probeNode x) acc) true;
  probeNode = v:
    let r = builtins.tryEval (builtins.seq v true); in
    if !r.success then false
    else if builtins.isAttrs v && !(v ? __toString || v ? outPath) then probeAll (builtins.attrValues v)
    else if builtins.isList v then probeAll v
    else true;
  probeEntry = names:
    let path = builtins.concatStringsSep "." names; in
    builtins.trace "nixgitops:probe ${path}"
      (let decl = lookup probeResult names; in builtins.seq (probeNode (decl.inputs or { })) path);

  providersOut =
    builtins.mapAttrs
      (name: p:
        if !builtins.isAttrs p then { invalid = builtins.typeOf p; }
        else {
          executable = let e = p.executable or null; in if builtins.isPath e then toString e else e;
          args = map (a: if builtins.isPath a then toString a else a) (p.args or [ ]);
          resourceTypes = p.resourceTypes or [ ];
        })
      declared;

  focused =
    let decl = lookup result args.focus.path; in
    let j = jsonable (decl.inputs or { }); in builtins.deepSeq j j;
in
if exposeCall then result
else if args.focus != null then focused
else {
  shape = {
    members = builtins.typeOf topMembers;
    providers = builtins.typeOf (result.providers or { });
  };
  providers = providersOut;
  resources = map evalEntry selected;
  probes = map probeEntry args.probe;
}
