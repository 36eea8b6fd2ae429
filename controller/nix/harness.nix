# The nixgitops evaluation harness. It calls the user's deployment function and reports every resource's
# type and inputs as JSON, one field at a time, so that a field reading outputs that are not known yet is
# reported as unknown instead of failing the whole evaluation.
#
# Its argument argsFile names a JSON file written by controller/evaluation.py (entryValue, when given, is the
# deployment itself: a flake's output, and `deployment` is not read):
#   deployment  absolute path of the entry file (deployment.nix)
#   system      the system providers run on, given to a deployment function that names `system`
#   known       { "<dotted path>" = <outputs>; } for every resource whose outputs are final
#   select      null, or a list of paths (each a list of names): evaluate only these resources
#   taint       true: every string of a known output carries a string context naming its resource (a fake
#               store path, /nix/store/<zeros>-nixgitops-<path>), so that the context of a resource's inputs
#               names every resource whose output strings flowed into them (needs --readonly-mode: the paths
#               do not exist)
#   focus       null, or { path; } to evaluate one resource without any error handling, so that
#               Nix reports a user's own `throw` or `assert` with its message and location
# A persistent evaluator (controller/nix_repl.py) passes the known outputs as knownOutputs instead, a value
# it keeps for the whole session, and knownDir, a directory where it writes <path>.json for each output that
# became known since (null: no longer known); files there take precedence. With exposeCall it returns the
# deployment's value itself, which it passes back as `called` to every later pass of the session.
#
# Markers on stderr (through builtins.trace) attribute reads to readers (see docs/decisions.md, "Dependency
# edges"). Resources are evaluated one after the other, each forced whole, so a read belongs to the resource
# whose end marker comes next:
#   nixgitops:start       the resources' evaluations start (what came before is nobody's)
#   nixgitops:done P      the evaluation of resource P ends
#   nixgitops:read Q      an output of Q was forced for the first time in this evaluation (known outputs)
#   nixgitops:unknown Q   an unknown output of Q was read (a throw, so every reader re-triggers it)
#   nixgitops:blocked F   the field F of the resource being evaluated failed ("*": its whole inputs)
{ argsFile, knownOutputs ? null, knownDir ? null, called ? null, exposeCall ? false, entryValue ? null }:
let
  args = builtins.fromJSON (builtins.readFile argsFile);
  known = if knownOutputs != null then knownOutputs else args.known;
  # a flake's output (see controller/flakes.py), or the entry file
  entry = if entryValue != null then entryValue else import args.deployment;

  # Sensitive values (docs/secrets.md) carry the string context of a small store file (sensitive.nix), which
  # survives interpolation like the taint does; the inputs report each marked string (and each marked non-string,
  # which `sensitive` wraps) as { __nixgitopsSensitive = v; }. The repl on dummy:// cannot make the file, and falls
  # back to nix-instantiate (controller/nix_repl.py).
  sensitive = import ./sensitive.nix;
  # (recognised by its name, so that checking a string never forces the file: a dummy:// store cannot make it)
  # (and is not the taint of a member named `sensitive`, ...-nixgitops-sensitive too)
  isMarkerKey = k:
    builtins.substring (builtins.stringLength k - 20) 20 k == "-nixgitops-sensitive"
    && builtins.substring 0 tagLength k != tagPrefix;
  isSensitiveString = v: builtins.hasContext v && builtins.any isMarkerKey (builtins.attrNames (builtins.getContext v));
  # A known output from Python: { __nixgitopsSensitive = v; } is sensitive; { __nixgitopsWithheld = why; } is one
  # whose value nixgitops does not have here, and reading it fails with why.
  unsealed = path: attr: v:
    if !(builtins.isAttrs v) then v
    else if v ? __nixgitopsSensitive then sensitive v.__nixgitopsSensitive
    else if v ? __nixgitopsWithheld then throw "nixgitops: the output '${attr}' of '${path}' is sensitive and cannot be read here: ${v.__nixgitopsWithheld}"
    else v;

  unknown = path:
    builtins.trace "nixgitops:unknown ${path}"
      (throw "nixgitops: the outputs of '${path}' are not known until it has been applied; outputs may only be read by another resource's inputs");

  knownOrUnknown = path:
    let
      file = "${knownDir}/${path}.json";
      written = if knownDir != null && builtins.pathExists file then builtins.fromJSON (builtins.readFile file) else false;
    in
    if written == null then unknown path
    else if written != false then readable path written
    else if known ? ${path} then readable path known.${path}
    else unknown path;

  # Known outputs as the deployment sees them: the first force of the set and of each of its attributes is
  # traced (attributed to the resource being evaluated), and with taint every string in them carries a
  # context naming the resource, which survives interpolation, concatenation, toJSON, substring and
  # replaceStrings, so every reader that keeps any of it is found, however many read it.
  taint = args.taint or false;
  tagPrefix = "${builtins.storeDir}/00000000000000000000000000000000-nixgitops-";
  tagDeep = context: v:
    if builtins.isString v then builtins.appendContext v context
    else if builtins.isAttrs v then builtins.mapAttrs (_: tagDeep context) v
    else if builtins.isList v then map (tagDeep context) v
    else v;
  readable = path: outputs:
    let
      # a store path's name allows letters, digits and +-._?=: a path with other characters goes by its hash
      tag =
        if builtins.match "[A-Za-z0-9_.'-]*" path != null then builtins.replaceStrings [ "'" ] [ "?" ] path
        else "h=" + builtins.hashString "sha1" path;
      context = { "${tagPrefix}${tag}" = { path = true; }; };
      leaf = attr: raw: let v = unsealed path attr raw; in builtins.trace "nixgitops:read ${path}" (if taint then tagDeep context v else v);
    in
    builtins.trace "nixgitops:read ${path}"
      (if builtins.isAttrs outputs then builtins.mapAttrs leaf outputs else leaf "" outputs);
  # What a value's strings refer to, from their string context: `r`, the resources named by the taint, without
  # the prefix (the caller decodes them); `s`, the store paths to realise before the value is used: a
  # derivation's output as "<drv>!<output>", every output of a derivation as its .drv, a source as its path.
  tagLength = builtins.stringLength tagPrefix;
  contextOf = v:
    let
      context = builtins.getContext (builtins.toJSON v);
      isTag = k: taint && builtins.substring 0 tagLength k == tagPrefix;
      isMarker = isMarkerKey;
      keys = builtins.attrNames context;
      store = builtins.concatMap
        (k:
          if isTag k || isMarker k then [ ]
          else
            let c = context.${k}; in
            (if c.path or false || c.allOutputs or false then [ k ] else [ ])
            ++ map (o: "${k}!${o}") (c.outputs or [ ]))
        keys;
    in
    {
      r = builtins.concatMap (k: if isTag k then [ (builtins.substring tagLength 1000 k) ] else [ ]) keys;
      s = store;
    };

  # A member path as controller/paths.py writes it: names joined by dots, a name that is not a plain identifier
  # in double quotes with \, " and control characters escaped (myDeployment."file.txt").
  validName = name: builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" name != null;
  quote = name:
    if validName name then name
    else "\"" + builtins.replaceStrings [ "\\" "\"" "\n" "\r" "\t" ] [ "\\\\" "\\\"" "\\n" "\\r" "\\t" ] name + "\"";
  join = prefix: name: if prefix == "" then quote name else "${prefix}.${quote name}";

  isComposite = decl: builtins.isAttrs decl && decl ? members && !(decl ? type);

  # The `members` argument: every member as declared, with `outputs` added to resources.
  view = outputsOf: prefix: decls:
    builtins.mapAttrs
      (name: decl:
        let path = join prefix name; in
        if isComposite decl && builtins.isAttrs decl.members
        then decl // { members = view outputsOf path decl.members; }
        else (if builtins.isAttrs decl then decl else { }) // { outputs = outputsOf path; __nixgitopsPath = path; })
      decls;

  call = outputsOf:
    let
      # `system` (the system providers run on) only to a function that names it: pure evaluation has no currentSystem
      extra = if args.system or null != null && builtins.functionArgs entry ? system then { inherit (args) system; } else { };
      named = if builtins.isFunction entry then builtins.functionArgs entry else { };
      marking = if named ? sensitive then { inherit sensitive; } else { };
      result = if builtins.isFunction entry then entry ({ members = view outputsOf "" (result.members or { }); providers = providerTypes; } // extra // marking) else entry;
    in
    result;

  # With knownDir, outputs are read when forced, so one call can serve a whole session: a field that read an
  # unknown output threw, and Nix forgets a thunk that threw, so the next pass evaluates it again.
  # A NixOps4 root (nixops4.lib.mkRoot, the flake output `nixops4`) is driven as NixOps4 drives it: its
  # rootFunction gets the system and the output values of every resource, a fixpoint (which resources exist and
  # which outputs each declares, `outputsSkeleton`, come from the same call), and its `_export` tree is read as
  # the members of a deployment. NixOps4's module system has done the typing, defaults and coercion of inputs.
  isRoot = builtins.isAttrs entry && (entry._type or null) == "nixops4Component";
  rootExport =
    let
      outputOf = path: attr:
        (knownOrUnknown path).${attr} or (throw "nixgitops: the resource '${path}' has no output '${attr}'");
      outputsFor = prefix: export:
        builtins.mapAttrs
          (name: member:
            let path = join prefix name; in
            if member ? resource
            then builtins.mapAttrs (attr: _: outputOf path attr) (member.resource.outputsSkeleton or { })
            else outputsFor path member)
          (export.members or { });
      fixpoint = entry.rootFunction { resourceProviderSystem = args.system; outputValues = outputsFor "" fixpoint; };
    in
    fixpoint;
  # a provider is named after its executable's file name: the store path changes with every build, the name not
  commandName = p:
    let
      base = builtins.unsafeDiscardStringContext (builtins.baseNameOf (toString p.executable));
      odd = [ "." " " "+" "@" ":" "," "=" "~" "%" "!" "#" "$" "&" "(" ")" "[" "]" "{" "}" "\"" ];
      name = builtins.replaceStrings odd (map (_: "-") odd) base;
    in
    if builtins.match "[A-Za-z_].*" name != null then name else "_${name}";
  fromExport = prefix: export:
    builtins.mapAttrs
      (name: member:
        let path = join prefix name; in
        if member ? resource then
          let r = member.resource; in
          {
            type = "${commandName r.provider}.${r.type}";
            inherit (r) inputs;
            __nixops4 = { inherit (r) provider type; state = r.state or null; };
          }
        else { members = fromExport path member; })
      (export.members or { });
  result =
    if called != null then called
    else if isRoot then { members = fromExport "" rootExport; }
    else call knownOrUnknown;
  declared = if !isRoot && builtins.isAttrs (result.providers or { }) then result.providers or { } else { };

  # resourceTypes: a list of names (each requires state), or NixOps4's shape { file.requireState = false; }
  typeNames = types: if builtins.isAttrs types then builtins.attrNames types else types;
  statelessTypes = types:
    if builtins.isAttrs types
    then builtins.filter (t: builtins.isAttrs types.${t} && (types.${t}.requireState or true) == false) (builtins.attrNames types)
    else [ ];
  # resourceTypes.db = { sensitiveOutputs = [ "password" ]; }: outputs every resource of the type hides
  sensitiveTypes = types:
    if builtins.isAttrs types
    then builtins.mapAttrs (_: t: if builtins.isAttrs t then t.sensitiveOutputs or [ ] else [ ]) types
    else { };
  providerTypes =
    builtins.mapAttrs
      (name: p: builtins.listToAttrs (map (t: { name = t; value = "${name}.${t}"; }) (typeNames (p.resourceTypes or [ ]))))
      (declared // { local = { resourceTypes = [ "file" "exec" "memo" "state_file" ]; }; });

  # Every resource, as { path = "a.b"; names = [ "a" "b" ]; decl; }, in sorted order.
  # A member whose kind (resource or composite) or whose set of members cannot be computed, because it reads an
  # output not known yet (NixOps4's structural dependencies), is listed as `structural`; its evaluation forces the
  # same again, so the unknown reads are attributed to it.
  kindOf = decl:
    if !(isComposite decl) then "leaf"
    else if builtins.isAttrs decl.members then builtins.seq (builtins.attrNames decl.members) "composite"
    else "leaf";
  collect = prefix: names: decls:
    builtins.concatLists (map
      (name:
        let
          decl = decls.${name};
          path = join prefix name;
          here = names ++ [ name ];
          kind = builtins.tryEval (kindOf decl);
        in
        if !kind.success then [ { inherit path decl; names = here; structural = true; } ]
        else if kind.value == "composite"
        then
          (let extra = builtins.filter (a: a != "members") (builtins.attrNames decl); in
          if extra != [ ] then [ { inherit path decl extra; names = here; } ] else collect path here decl.members)
        else [ { inherit path decl; names = here; } ])
      (builtins.attrNames decls));

  lookup = root: names:
    builtins.foldl' (d: n: d.members.${n}) { members = root.members or { }; } names;

  # Make a value JSON-representable without copying anything into the Nix store: paths become their
  # absolute path strings, functions become a marker the caller reports as an error.
  jsonable = v:
    if builtins.isString v then (if isSensitiveString v then { __nixgitopsSensitive = v; } else v)
    else if builtins.isAttrs v && v ? __nixgitopsSensitive then { __nixgitopsSensitive = jsonable v.__nixgitopsSensitive; }
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
        if entry ? structural then "structural"
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
      # Fast path: all inputs at once, with one tryEval. Only when that fails, field by field (the unknown
      # outputs a field reads are traced again: a thunk that threw is forced anew).
      whole = builtins.tryEval (let j = jsonable rawInputs; in builtins.deepSeq j j);
      fields =
        if !shape.success then
          builtins.seq (builtins.tryEval (builtins.isAttrs rawInputs)) (builtins.trace "nixgitops:blocked *" null)
        else if !shape.value then "<${builtins.typeOf rawInputs}>"
        else if whole.success then whole.value
        else builtins.mapAttrs (evalField rawInputs) rawInputs;
      strange = builtins.attrNames (removeAttrs decl [ "type" "inputs" "lifecycle" "state" "__nixops4" "__nixgitopsPath" ]);
      # the resource that keeps its state, as NixOps4 declares it (`state = members.x`, or a list of names)
      stateOf = s:
        if s == null then null
        else if builtins.isList s then builtins.foldl' join "" s
        else if builtins.isAttrs s && s ? __nixgitopsPath then s.__nixgitopsPath
        else "<${builtins.typeOf s}>";
      nixops4 = decl.__nixops4 or null;
      handler = if nixops4 != null then stateOf nixops4.state else stateOf (decl.state or null);
      lifecycleExtra = if builtins.isAttrs lifecycle then builtins.attrNames (removeAttrs lifecycle [ "preventDestroy" "sensitiveOutputs" ]) else [ ];
      sensitiveOutputs = if builtins.isAttrs lifecycle then lifecycle.sensitiveOutputs or [ ] else [ ];
    in
    if kind == "structural" then builtins.seq (builtins.tryEval (kindOf decl)) { p = path; k = kind; }
    else if kind != "resource" then { p = path; k = kind; x = entry.extra or [ ]; }
    else {
      p = path;
      k = kind;
      t = type;
      i = fields;
      a = shape.success && shape.value && whole.success; # `i` holds the inputs themselves, not field by field
      d = if builtins.isAttrs lifecycle then lifecycle.preventDestroy or false else false;
      l = builtins.typeOf lifecycle;
      x = strange ++ map (a: "lifecycle.${a}") lifecycleExtra;
    } // (let c = contextOf fields; in { r = c.r; } // (if c.s == [ ] then { } else { s = c.s; }))
    // (if handler == null then { } else { st = handler; })
    // (if sensitiveOutputs == [ ] then { } else { so = sensitiveOutputs; })
    // (if nixops4 == null then { } else { sl = nixops4.state == null; });

  topMembers = result.members or { };
  pathOf = names: builtins.foldl' join "" names;
  # `member` (a list of names, or null for the whole deployment): only that member is listed and evaluated, so
  # one repository can hold several deployments, and what the others hold is never forced.
  member = args.member or null;
  entries =
    if member == null then (if builtins.isAttrs topMembers then collect "" [ ] topMembers else [ ])
    else
      let
        decl = lookup result member;
        kind = builtins.tryEval (kindOf decl); # the member itself may be known only after apply
      in
      if !kind.success then [ { path = pathOf member; names = member; inherit decl; structural = true; } ]
      else if kind.value == "composite" then collect (pathOf member) member decl.members
      else [ { path = pathOf member; names = member; inherit decl; } ];
  selected =
    if args.select == null then entries
    else map (names: { path = pathOf names; names = names; decl = lookup result names; }) args.select;

  # Each resource's evaluation is forced whole, then its end marker is printed: every read traced since the
  # previous marker is this resource's (one marker a resource: markers cost about 2 us each).
  evalEntry = e: let d = describe e; in builtins.deepSeq d (builtins.trace "nixgitops:done ${e.path}" d);

  # A root's providers are the commands its resources name, one provider per executable's file name.
  rootProviders =
    let
      commands = builtins.concatMap
        (e:
          if e ? structural || e ? extra || !(builtins.isAttrs e.decl) || !(e.decl ? __nixops4) then [ ]
          else [ { name = commandName e.decl.__nixops4.provider; inherit (e.decl.__nixops4) provider type; } ])
        entries;
      record = name: cs:
        let
          key = c: builtins.unsafeDiscardStringContext (builtins.toJSON [ (toString c.provider.executable) c.provider.args ]);
          distinct = builtins.attrValues (builtins.listToAttrs (map (c: { name = key c; value = c.provider; }) cs));
          p = builtins.head distinct;
          executable = toString p.executable;
        in
        if builtins.length distinct > 1 then { conflict = map (d: toString d.executable) distinct; }
        else {
          inherit executable;
          inherit (p) args;
          kind = p.type or "stdio";
          resourceTypes = builtins.attrNames (builtins.listToAttrs (map (c: { name = c.type; value = null; }) cs));
          stateless = [ ];
          s = (contextOf [ executable p.args ]).s;
        };
    in
    builtins.mapAttrs record (builtins.groupBy (c: c.name) commands);

  providersOut = if isRoot then rootProviders else
    builtins.mapAttrs
      (name: p:
        if !builtins.isAttrs p then { invalid = builtins.typeOf p; }
        else
          let
            # a path, or a package (anything with an outPath: `executable = pkg` means its store path)
            str = v: if builtins.isPath v || (builtins.isAttrs v && (v ? outPath || v ? __toString)) then toString v else v;
            executable = str (p.executable or null);
            args = map str (p.args or [ ]);
          in
          {
            inherit executable args;
            resourceTypes = typeNames (p.resourceTypes or [ ]);
            stateless = statelessTypes (p.resourceTypes or [ ]);
            sensitive = sensitiveTypes (p.resourceTypes or [ ]);
            s = if builtins.isString executable && builtins.all builtins.isString args then (contextOf [ executable args ]).s else [ ];
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
    root = isRoot;
    members = builtins.typeOf topMembers;
    providers = builtins.typeOf (result.providers or { });
    extra = if builtins.isAttrs result then builtins.attrNames (removeAttrs result [ "members" "providers" ]) else [ ];
  };
  providers = providersOut;
  # everything else first, so that no read outside a resource's evaluation comes after the start marker
  resources = builtins.deepSeq [ providersOut (builtins.attrNames result) (if args.select == null then map (e: e.path) entries else null) ]
    (builtins.trace "nixgitops:start" (map evalEntry selected));
}
