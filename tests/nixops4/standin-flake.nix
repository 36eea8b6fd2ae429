# A stand-in for NixOps4's own flake (the `nixops4` input of its integration test), for offline tests.
# A template of tests/nixops4_world.py: it fills @nixpkgs@ and @flake-parts@ with `path:` URLs and writes this
# file as flake.nix into a directory that also holds NixOps4's Nix library (`nix/`, a copy of
# ../shared/reference/nixops4/nix) and its prebuilt local provider (`bin/nixops4-resources-local`).
#
# It wires those files the way NixOps4's flake does, and nothing else: no Rust build (the provider is prebuilt),
# no nixpkgs (nixpkgs-lib has no stdenv, so the package is a bare `builtins.derivation` run by /bin/sh without a
# sandbox), no documentation, checks or dev shells. Only x86_64-linux, where the prebuilt provider runs.
{
  inputs = {
    nixpkgs.url = "@nixpkgs@";
    flake-parts.url = "@flake-parts@";
    flake-parts.inputs.nixpkgs-lib.follows = "nixpkgs";
  };

  outputs =
    inputs@{ self, flake-parts, ... }:
    flake-parts.lib.mkFlake { inherit inputs; } (
      {
        lib,
        withSystem,
        flake-parts-lib,
        ...
      }:
      {
        # Declares `flake.modules.<class>.<name>` (and tags each module with its class).
        imports = [ flake-parts.flakeModules.modules ];

        systems = [ "x86_64-linux" ];

        perSystem =
          { system, ... }:
          {
            # What NixOps4 builds from rust/nixops4-resources-local; the local provider module refers to it by
            # this name (`withSystem ... config.packages.nixops4-resources-local-release`).
            packages.nixops4-resources-local-release = builtins.derivation {
              name = "nixops4-resources-local";
              inherit system;
              builder = "/bin/sh";
              provider = ./bin/nixops4-resources-local;
              args = [
                "-c"
                ''
                  /bin/mkdir -p "$out/bin"
                  /bin/cp "$provider" "$out/bin/nixops4-resources-local"
                  /bin/chmod 0555 "$out/bin/nixops4-resources-local"
                ''
              ];
            };
          };

        # The outputs NixOps4's library and its integration test read, as NixOps4's flake.nix defines them.
        flake.lib = import ./nix/lib/lib.nix {
          inherit lib self;
          selfWithSystem = withSystem;
        };
        flake.modules.flake.default = flake-parts-lib.importApply ./nix/flake-parts/flake-parts.nix {
          inherit self;
        };
        flake.modules.nixops4Component.default = ./nix/component/base-modules.nix;
        flake.modules.nixops4Provider.local = flake-parts-lib.importApply ./nix/providers/local.nix {
          inherit withSystem;
        };
      }
    );
}
