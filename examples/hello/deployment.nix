# The bundled example: a few local resources that read each other's outputs.
# Try it with `make demo`, or in a Git checkout of this directory with `nixgitops plan` / `nixgitops apply`.
{ members, providers, sensitive, ... }:
let
  # A program built by Nix from this file: nixgitops builds it (nix-store --realise) before the resource that runs
  # it, and keeps it alive with a garbage-collector root while the state refers to it.
  banner = derivation {
    name = "banner";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" ''echo '#!/bin/sh' > $out; echo 'echo "== $* =="' >> $out; /bin/chmod +x $out'' ];
  };
in
{
  # Runs the program above: its input is a store path, built before the request goes to the provider.
  members.banner = {
    type = providers.local.exec;
    inputs = {
      executable = "${banner}";
      args = [ "built by Nix" ];
    };
  };

  # Runs `echo` once; its `stdout` output is known after apply.
  members.greeting = {
    type = providers.local.exec;
    inputs = {
      executable = "echo";
      args = [ "Hello from nixgitops" ];
    };
  };

  # Reads greeting's output: nixgitops applies greeting first.
  members.motd = {
    type = providers.local.file;
    inputs = {
      name = "motd.txt";
      contents = members.greeting.outputs.stdout;
    };
  };

  # A secret: `(sensitive)` in every plan, log and pull-request comment, and encrypted in state to the age key of
  # the controller's configuration (docs/secrets.md). In real use, read it from a file outside Git, such as
  # `sensitive (builtins.readFile /run/secrets/api-token)`: a value written here is in the repository's history.
  members.apiToken = {
    type = providers.local.file;
    inputs = { name = "api-token.txt"; contents = sensitive "demo-token-not-a-real-secret"; };
  };

  # A memo keeps the first value it was given, across later changes of its input.
  members.firstDeploy = {
    type = providers.local.memo;
    inputs.initialize_with = "the first apply";
  };

  # A composite: its members' paths are site.index and site.robots.
  members.site = {
    members.index = {
      type = providers.local.file;
      inputs = {
        name = "index.html";
        contents = ''
          <h1>${members.greeting.outputs.stdout}</h1>
          <p>Deployed since ${members.firstDeploy.outputs.value}.</p>
        '';
      };
    };
    members.robots = {
      type = providers.local.file;
      inputs = { name = "robots.txt"; contents = "User-agent: *\nDisallow:\n"; };
      lifecycle.preventDestroy = true;
    };
  };
}
