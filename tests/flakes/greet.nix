# A provider built from the repository's provider.py, run with the test's Python.
# A template of tests/test_flakes.py, which fills in each @...@ and writes it as flake.nix.
{
  inputs.nixpkgs.url = "path:@REFERENCE@/nixpkgs-lib";
  outputs = { self, nixpkgs }: {
    nixgitops = { members, providers, system, ... }:
      let
        greetProvider = builtins.derivation {
          name = "greet-provider";
          inherit system;
          builder = "/bin/sh";
          PATH = "/usr/bin:/bin";
          script = "${./provider.py}";
          python = "@PYTHON@";
          args = [ "-c" ''
            mkdir -p $out/bin $out/lib
            cp $script $out/lib/provider.py
            printf '#!/bin/sh\nexec %s %s "$@"\n' "$python" "$out/lib/provider.py" > $out/bin/provider
            chmod +x $out/bin/provider
          '' ];
        };
      in {
        providers.greet = { executable = "${greetProvider}/bin/provider"; resourceTypes = [ "thing" ]; };
        members.hello = { type = providers.greet.thing; inputs.name = nixpkgs.lib.toUpper "@NAME@"; };
      };
  };
}
