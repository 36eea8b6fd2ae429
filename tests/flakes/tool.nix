# A program for local.exec whose builder script the test chooses (one that fails, too).
# A template of tests/test_flakes.py, which fills in each @...@ and writes it as flake.nix.
{
  inputs.nixpkgs.url = "path:@REFERENCE@/nixpkgs-lib";
  outputs = { self, nixpkgs }: {
    nixgitops = { members, providers, system, ... }:
      let
        tool = builtins.derivation {
          name = "tool";
          inherit system;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          args = [ "-c" ''
            # @NONCE@
            @SCRIPT@
          '' ];
        };
      in {
        members.tool = { type = providers.local.exec; inputs = { executable = "${tool}"; args = [ ]; }; };
      };
  };
}
