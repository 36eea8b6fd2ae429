"""Deployments of distinct members of one repository, under the controller: one state branch shared, and one
member's resources reading another member's outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import git
from gitserver import Developer, GitServer, free_port

DEPLOYMENT = """{ members, providers, ... }: {
  members.a.members.sel = { type = providers.local.memo; inputs.initialize_with = "A1"; };
  members.b.members.r = {
    type = providers.local.memo;
    inputs.initialize_with = "b-${members.a.members.sel.outputs.value}";
  };
}
"""


def test_a_member_reads_the_outputs_of_a_member_another_deployment_applied(tmp_path: Path, server: GitServer) -> None:
    dev = Developer(server, tmp_path)
    dev.push(DEPLOYMENT)
    config = tmp_path / "nixgitops.toml"
    text = f'[controller]\ndata_dir = "{tmp_path / "data"}"\n\n[server]\nlisten = "127.0.0.1:{free_port()}"\n'
    for name in ("a", "b"):
        text += f'\n[deployments.{name}]\nrepository = "{server.url("infra.git")}"\nmember = "{name}"\n'
        text += 'interval = "1h"\ndrift_interval = "off"\n'
    config.write_text(text)

    def reconcile(name: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "controller", "reconcile", name, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0 and f"{name}: success" in done.stdout, done.stdout + done.stderr
        return done

    reconcile("a")
    reconcile("b")  # its input reads a.sel, recorded by deployment a on the shared state branch

    def record(name: str, path: str) -> dict[str, object]:
        listed = git(dev.bare, "ls-tree", "-r", "--name-only", "nixgitops/state", f"{name}/resources/").split()
        (found,) = [n for n in listed if n.endswith(f"/{path}.json")]
        return json.loads(git(dev.bare, "show", f"nixgitops/state:{found}"))  # type: ignore[no-any-return]

    assert record("b", "b.r")["inputs"] == {"initialize_with": "b-A1"}
    assert record("a", "a.sel")["outputs"] == {"value": "A1"}
