"""A controller, a remote and a provider whose every object is a file: the setting of the crash campaign.

The ledger provider refuses to create a name that exists, so a resource created twice fails the run, and each
object it made is a file: after a run completes, the objects, the ledger and the pushed state must match one to
one. Used by tests/test_crash.py, tests/test_failpoints.py and bench/soak.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, git

from controller.state_branch import record_location

LEDGER = ROOT / "tests" / "providers" / "ledger.sh"


def ledger_deployment(objects: Path, n: int = 30, provider: str | None = None, prefix: str = "e") -> str:
    """``n`` ledger entries named ``<prefix><i>``; every third reads the previous one's id, so a run has several
    levels."""
    executable = provider or f'"{LEDGER}"'
    lines = [
        "{ members, providers, ... }: {",
        f'  providers.ledger = {{ executable = {executable}; args = [ "{objects}" ]; resourceTypes = [ "entry" ]; }};',
    ]
    for i in range(n):
        extra = f"; after = members.{prefix}{i - 1}.outputs.id" if i % 3 == 2 else ""
        inputs = f'{{ name = "{prefix}{i}"{extra}; }}'
        lines.append(f"  members.{prefix}{i} = {{ type = providers.ledger.entry; inputs = {inputs}; }};")
    lines.append("}")
    return "\n".join(lines)


@dataclass
class World:
    root: Path
    n: int = 30

    @property
    def objects(self) -> Path:
        return self.root / "objects"

    @property
    def remote(self) -> Path:
        return self.root / "remote.git"

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def config(self) -> Path:
        return self.root / "nixgitops.toml"

    @property
    def journal(self) -> Path:
        return self.root / "data" / "journal" / "web.journal"

    @classmethod
    def create(cls, root: Path, n: int = 30, extra_config: str = "") -> World:
        world = cls(root, n)
        world.objects.mkdir(parents=True)
        git(root, "init", "-q", "--bare", "-b", "main", str(world.remote))
        world.work.mkdir()
        git(world.work, "init", "-q", "-b", "main")
        # The provider lives in the repository, so recovery must find it even after a newer commit arrives.
        (world.work / "ledger.sh").write_bytes(LEDGER.read_bytes())
        (world.work / "ledger.sh").chmod(0o755)
        (world.work / "deployment.nix").write_text(ledger_deployment(world.objects, n, "./ledger.sh"))
        git(world.work, "add", "-A")
        git(world.work, "commit", "-qm", "entries")
        git(world.work, "push", "-q", str(world.remote), "main")
        world.config.write_text(
            f'[controller]\ndata_dir = "{root / "data"}"\n'
            f'[deployments.web]\nrepository = "{world.remote}"\n{extra_config}'
        )
        return world

    def push_generation(self, prefix: str) -> str:
        """A commit whose entries all have new names: applying it deletes every entry and creates as many."""
        text = ledger_deployment(self.objects, self.n, "./ledger.sh", prefix)
        (self.work / "deployment.nix").write_text(text)
        git(self.work, "commit", "-qam", f"generation {prefix}")
        git(self.work, "push", "-q", str(self.remote), "main")
        return git(self.work, "rev-parse", "HEAD").strip()

    def push_newer(self, note: str = "a newer commit") -> None:
        deployment = self.work / "deployment.nix"
        deployment.write_text(deployment.read_text() + f"# {note}\n")
        git(self.work, "commit", "-qam", note)
        git(self.work, "push", "-q", str(self.remote), "main")

    def reconcile(self, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", "reconcile", "web", "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    def books(self, prefix: str | None = None) -> list[str]:
        """What does not add up, after a completed run: empty when every object was created exactly once and
        the pushed state records each one with its id. With ``prefix`` (generations), the objects are exactly
        that generation's and the ledger is not compared (names of earlier generations were deleted)."""
        problems = []
        if prefix is not None:
            names = {p.name for p in self.objects.iterdir() if p.name != "LEDGER" and p.name[0] != "."}
            if names != {f"{prefix}{i}" for i in range(self.n)}:
                problems.append(f"objects are {sorted(names)}, not generation {prefix}")
        files = {
            p.name: p.read_text() for p in self.objects.iterdir() if p.name != "LEDGER" and not p.name.startswith(".")
        }
        ledger = self.objects / "LEDGER"
        created = [line.split()[0] for line in ledger.read_text().splitlines()] if ledger.exists() else []
        if prefix is None and sorted(created) != sorted(files):
            twice = sorted({c for c in created if created.count(c) > 1})
            problems.append(f"ledger and objects differ (created twice: {twice})")
        if len(files) != self.n:
            problems.append(f"{len(files)} objects, expected {self.n}")
        pushed = set(git(self.remote, "ls-tree", "-r", "--name-only", "nixgitops/state").split())
        for name, ident in files.items():
            where = "web/resources/{}/{}".format(*record_location(name))
            if where not in pushed:
                problems.append(f"{name} exists but the pushed state does not record it")
                continue
            record = json.loads(git(self.remote, "show", f"nixgitops/state:{where}"))
            if record["outputs"] != {"id": ident}:
                problems.append(f"{name}: state says {record['outputs']}, the object is {ident}")
        recorded = {p.split("/")[-1].removesuffix(".json") for p in pushed if "/resources/" in p}
        for name in sorted(recorded - set(files)):
            problems.append(f"state records {name}, which does not exist")
        return problems
