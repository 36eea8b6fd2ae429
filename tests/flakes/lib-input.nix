# One input to lock (and a place for more, to make the lock out of date).
# A template of tests/test_flakes.py, which fills in each @...@ and writes it as flake.nix.
{
  inputs.nixpkgs.url = "path:@REFERENCE@/nixpkgs-lib";
  @MORE_INPUTS@
  outputs = { self, nixpkgs, ... }: {
    nixgitops = { members, providers, ... }: {
      members.m = { type = providers.local.memo; inputs.initialize_with = nixpkgs.lib.toUpper "locked"; };
    };
  };
}
