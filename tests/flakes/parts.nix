# A deployment written with nixpkgs' lib and flake-parts, and a program built for local.exec.
# A template of tests/test_flakes.py, which fills in each @...@ and writes it as flake.nix.
{
  description = "A deployment written with nixpkgs' lib and flake-parts";
  inputs.nixpkgs.url = "path:@REFERENCE@/nixpkgs-lib";
  inputs.flake-parts.url = "path:@REFERENCE@/flake-parts";
  inputs.flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs";
  outputs = inputs@{ nixpkgs, flake-parts, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } {
      systems = [ ];
      flake.nixgitops = { members, providers, system, ... }:
        let
          lib = nixpkgs.lib;
          hello = builtins.derivation {
            name = "hello";
            inherit system;
            builder = "/bin/sh";
            PATH = "/usr/bin:/bin";
            args = [ "-c" ''
              # @NONCE@
              echo '#!/bin/sh' > $out
              echo 'echo built by Nix for ${system}' >> $out
              chmod +x $out
            '' ];
          };
        in {
          members = lib.genAttrs [ "alpha" "beta" ] (name: {
            type = providers.local.memo;
            inputs.initialize_with = lib.toUpper name;
          }) // {
            hello = { type = providers.local.exec; inputs = { executable = "${hello}"; args = [ ]; }; };
          };
        };
    };
}
