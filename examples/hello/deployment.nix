# The bundled example: a few local resources that read each other's outputs.
# Try it with `make demo`, or in a Git checkout of this directory with `nixgitops plan` / `nixgitops apply`.
{ members, providers, ... }:
{
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
