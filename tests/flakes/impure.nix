# No inputs, nothing to lock. Each output tries to read what pure evaluation hides.
# A template of tests/test_flakes.py, which fills in each @...@ and writes it as flake.nix.
{
  outputs = { self }: {
    nixgitops = { members, providers, system, ... }: {
      members.env = { type = providers.local.memo; inputs.initialize_with = "HOME=" + builtins.getEnv "HOME"; };
      members.system = { type = providers.local.memo; inputs.initialize_with = system; };
    };
    outside = { members, providers, ... }: {
      members.file = { type = providers.local.memo; inputs.initialize_with = builtins.readFile @OUTSIDE@; };
    };
    current = { members, providers, ... }: {
      members.system = { type = providers.local.memo; inputs.initialize_with = builtins.currentSystem; };
    };
  };
}
