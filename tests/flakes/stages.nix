# Two deployments in one flake: the default output `nixgitops` and `deployments.staging`.
# A template of tests/test_flakes.py, which fills in each @...@ and writes it as flake.nix.
{
  inputs.nixpkgs.url = "path:@REFERENCE@/nixpkgs-lib";
  outputs = { self, nixpkgs }: {
    nixgitops = { members, providers, ... }: {
      members.production = { type = providers.local.memo; inputs.initialize_with = "production"; };
    };
    deployments.staging = { members, providers, ... }: {
      members.stage = { type = providers.local.memo; inputs.initialize_with = nixpkgs.lib.toUpper "staging"; };
    };
  };
}
