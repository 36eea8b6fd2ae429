"""NixOps4's own integration test (../shared/reference/nixops4/test/integration-test-nixops4-with-local/check.nix),
run by nixgitops: NixOps4's integration-test flake, its Nix library (a stand-in ``nixops4`` input, see
tests/nixops4_world.py) and its real local provider, from the command line and from the controller.

Each step below names the check of check.nix it stands for and asserts the same results (files, values kept or
changed). Where nixgitops deliberately differs, the test says so:

* nixgitops prints its plan and progress on stdout; NixOps4 prints nothing there (check.nix: ``! -s stdout``).
* nixgitops keeps state on a Git branch, not in the ``state_file`` resource: NixOps4's ``nixops4-state.json`` is
  written by the provider's ``state_file`` create, and nothing reads it.
* nixgitops's messages are its own ("Provider ... refused createResourceRequest for ..."), not NixOps4's
  ("Failed to create stateless resource ..."); the provider's own message is forwarded the same.
* nixgitops plans with no change as a plan, and shows a stateless resource as made again (NixOps4's ``inputs
  unchanged`` / ``inputs changed`` debug lines are a plan's noop / update here).
* nixgitops deletes a resource removed from the deployment (NixOps4 never deletes): a stateless one is forgotten
  without a call, a stateful one whose provider cannot delete (NixOps4's local provider) is forgotten with a
  warning; tests/test_nixops4_providers.py checks both builds of the provider.
* Under the controller, each member is a deployment of its own; all share one state branch.

The error cases of check.nix (invalid state references, a cycle between resources, a cycle in the structure, a
path to no member) are refused before anything is applied, in nixgitops's own words. ``members list`` and
``state dump`` are NixOps4 commands without a counterpart here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import git
from gitserver import Developer, GitServer, free_port
from nixops4_world import integration_flake, path_env, standins

SUMMARY = (
    "parent:v1.0.0|static:nested-static-v1|frontend:frontend-v1.0.0|backend:api-v1.0.0"
    "|assets:assets-frontend-v1.0.0|db:db-api-v1.0.0"
)


class World:
    """The integration flake's repository and the environment its deployment runs in."""

    def __init__(self, tmp: Path) -> None:
        self.work = integration_flake(tmp)
        self.env = path_env(standins(tmp))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", *args],
            cwd=self.work,
            capture_output=True,
            text=True,
            timeout=300,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self.run(*args)
        assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    def apply(self, member: str) -> subprocess.CompletedProcess[str]:
        return self.ok("apply", member, "--flake", ".#nixops4", "--yes")

    def plan(self, member: str) -> dict[str, Any]:
        return json.loads(self.ok("plan", member, "--flake", ".#nixops4", "--json").stdout)  # type: ignore[no-any-return]

    def record(self, path: str) -> dict[str, Any]:
        return json.loads(self.ok("state", "show", path).stdout)  # type: ignore[no-any-return]

    def edit(self, old: str, new: str) -> None:
        flake = self.work / "flake.nix"
        text = flake.read_text()
        assert old in text, f"the test's set-up is broken: {old!r} is not in flake.nix"
        flake.write_text(text.replace(old, new))
        git(self.work, "commit", "-q", "-am", f"{old} -> {new}")


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_nixops4_integration_deployment_from_the_command_line(world: World) -> None:
    work = world.work

    # BASIC STATELESS DEPLOYMENT: a member path with a name that is not an identifier ("file.txt")
    plan = world.plan("myDeployment")
    assert {c["path"]: c["action"] for c in plan["changes"]} == {
        "myDeployment.hello": "create",
        'myDeployment."file.txt"': "create",
    }
    assert plan["changes"][1]["after"]["args"] == ["--greeting", "Hallo wereld"], "NixOps4's module typed the inputs"
    done = world.apply("myDeployment")
    assert (work / "file.txt").read_text().rstrip("\n") == "Hallo wereld"
    assert done.stdout, "(differs: nixgitops prints its plan on stdout; NixOps4 prints nothing there)"
    assert world.record('myDeployment."file.txt"')["stateless"] is True
    (work / "file.txt").unlink()

    # FAILING DEPLOYMENT
    failed = world.run("apply", "failingDeployment", "--flake", ".#nixops4", "--yes")
    assert failed.returncode == 1
    assert not (work / "file.txt").exists()
    assert "oh no, this and that failed" in failed.stderr
    assert "failingDeployment.hello" in failed.stderr
    assert "Traceback" not in failed.stderr

    # STATEFUL DEPLOYMENT: version 1, then 2; the memo keeps the initial version
    world.apply("statefulDeployment")
    assert "My initial version: 1" in (work / "initial-version.md").read_text()
    assert "We're now at version 1." in (work / "current-version.md").read_text()
    assert (work / "nixops4-state.json").stat().st_size > 0
    world.edit("currentVersion = 1;", "currentVersion = 2;")
    world.apply("statefulDeployment")
    assert "My initial version: 1" in (work / "initial-version.md").read_text()
    assert "We're now at version 2." in (work / "current-version.md").read_text()

    # Test file recreation after deletion: stateless resources are made again on every apply, as in NixOps4
    backup = (work / "nixops4-state.json").read_bytes()
    (work / "initial-version.md").unlink()
    (work / "current-version.md").unlink()
    world.apply("statefulDeployment")
    assert "My initial version: 1" in (work / "initial-version.md").read_text()
    assert "We're now at version 2." in (work / "current-version.md").read_text()
    assert (work / "nixops4-state.json").read_bytes() == backup, "the state file is not rewritten"

    # Test skip when inputs unchanged / Test update when inputs changed (the memo, a stateful resource)
    actions = {c["path"]: c for c in world.plan("statefulDeployment")["changes"]}
    assert actions["statefulDeployment.initial_version"]["action"] == "noop"
    assert actions["statefulDeployment.initial_version"]["reason"] == "inputs unchanged"
    assert actions["statefulDeployment.current_version_file"]["reason"] == "stateless: made again on every apply"
    world.edit("currentVersion = 2;", "currentVersion = 1;")
    actions = {c["path"]: c for c in world.plan("statefulDeployment")["changes"]}
    assert actions["statefulDeployment.initial_version"]["action"] == "update"
    assert actions["statefulDeployment.initial_version"]["reason"].startswith("inputs changed")
    world.apply("statefulDeployment")
    assert world.record("statefulDeployment.initial_version")["outputs"] == {"value": 1}

    # UNREFERENCED NESTED DEPLOYMENT: listed in the plan before anything is created, and applied
    done = world.apply("unreferencedNesting")
    assert done.stdout.index("unreferencedNesting.orphan.orphanedResource") < done.stdout.index("Creating...")
    assert world.record("unreferencedNesting.orphan.orphanedResource")["outputs"] == {"value": "orphan-value"}
    assert world.record("unreferencedNesting.parentResource")["outputs"] == {"value": "parent-value"}

    # STRUCTURAL DEPENDENCY: CONDITIONAL COMPOSITES / CONDITIONAL RESOURCES IN COMPOSITE / DYNAMIC MEMBER KIND
    cases = {
        "structuralDeploymentsAttr": ("conditionalChild", "conditionalChild.childResource", "child-value"),
        "structuralResourcesAttr": ("child", "child.conditionalResource", "conditional-value"),
        "dynamicKind": ("dynamicMember", "dynamicMember", "I am a resource"),
    }
    for member, (composite, resource, value) in cases.items():
        plan = world.plan(member)
        assert plan["knownAfterApply"] == [{"member": f"{member}.{composite}", "waitsFor": [f"{member}.selector"]}], (
            plan["knownAfterApply"]
        )
        assert f"{member}.{resource}" not in {c["path"] for c in plan["changes"]}
        text = world.ok("plan", member, "--flake", ".#nixops4").stdout
        assert f"? {member}.{composite}.*  (known after apply of {member}.selector)" in text
        done = world.apply(member)
        assert "planning them again" in done.stdout
        assert world.record(f"{member}.selector")["outputs"]["value"] in ("enabled", "resource")
        assert world.record(f"{member}.{resource}")["outputs"] == {"value": value}
        assert not world.plan(member)["knownAfterApply"], "the structure is known once the selector is applied"

    # NESTED DEPLOYMENTS: values flow through nested composites; memos keep them when inputs change
    world.apply("nestedDeployment")
    world.apply("nestedDeployment")
    assert world.record("nestedDeployment.deploymentSummary")["outputs"] == {"value": SUMMARY}
    assert world.record("nestedDeployment.backend.apiConfig")["outputs"] == {
        "value": "backend-production-frontend-frontend-v1.0.0"
    }
    world.edit('inputs.initialize_with = "v1.0.0"', 'inputs.initialize_with = "v2.0.0"')
    world.edit('inputs.initialize_with = "nested-static-v1"', 'inputs.initialize_with = "nested-static-v2"')
    world.apply("nestedDeployment")
    assert world.record("nestedDeployment.deploymentSummary")["outputs"] == {"value": SUMMARY}
    assert world.record("nestedDeployment.frontend.staticVersion")["outputs"] == {"value": "nested-static-v1"}

    # ERROR HANDLING: each refused before anything is applied, with a clear message and no traceback
    errors = {
        "statePointsToComposite": "which is a composite, not a resource",
        "statePointsToNonexistent": "which is no resource of the deployment",
        "stateInNonexistentComposite": "which is no resource of the deployment",
        "circularDependency": "read each other's outputs in a cycle",
        "structuralCycle": "infinite recursion",
        "nestedDeployment.nonExistentPath": "names no member of the deployment",
    }
    for member, needle in errors.items():
        refused = world.run("apply", member, "--flake", ".#nixops4", "--yes")
        assert refused.returncode != 0 and needle in refused.stderr, (member, refused.stderr)
        assert "Traceback" not in refused.stderr
        assert "Creating..." not in refused.stdout
    assert "Invalid state reference" in world.run("plan", "statePointsToComposite", "--flake", ".#nixops4").stderr

    # Each member is its own unit: applying one never touched the others' records (differs: nixgitops records
    # every member's resources on its state branch, and deletes what a member no longer declares)
    listed = world.ok("state", "list").stdout
    assert 'myDeployment."file.txt"' in listed and "nestedDeployment.deploymentSummary" in listed


# -- the controller ------------------------------------------------------------------------------------------


# controller deployment -> the member of NixOps4's root it deploys (all of them share one state branch)
MEMBERS = {
    "hello": "myDeployment",
    "failing": "failingDeployment",
    "stateful": "statefulDeployment",
    "nested": "nestedDeployment",
    "unreferenced": "unreferencedNesting",
    "structural-composites": "structuralDeploymentsAttr",
    "structural-resources": "structuralResourcesAttr",
    "dynamic": "dynamicKind",
}


def configure(tmp_path: Path, url: str) -> Path:
    """One controller deployment per member of NixOps4's root, one repository and one state branch."""
    config = tmp_path / "nixgitops.toml"
    text = f'[controller]\ndata_dir = "{tmp_path / "data"}"\n\n[server]\nlisten = "127.0.0.1:{free_port()}"\n'
    for name, member in MEMBERS.items():
        text += (
            f'\n[deployments.{name}]\nrepository = "{url}"\ninterval = "1h"\ndrift_interval = "off"\n'
            f'flake = "nixops4"\nmember = "{member}"\nnix_options = {{ substituters = "" }}\n'
        )
    config.write_text(text)
    return config


def test_nixops4_integration_deployment_from_the_controller(
    tmp_path: Path, server: GitServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = World(tmp_path / "world")
    (tmp_path / "dev").mkdir()
    dev = Developer(server, tmp_path / "dev")  # the served bare repository (its clone is not used)
    git(world.work, "push", "-q", server.url("infra.git"), "HEAD:refs/heads/main")
    config = configure(tmp_path, server.url("infra.git"))

    def controller(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "controller", *args, "--config", str(config)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            env=world.env,
            stdin=subprocess.DEVNULL,
        )

    def reconcile(name: str) -> subprocess.CompletedProcess[str]:
        done = controller("reconcile", name)
        assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert f"{name}: success" in done.stdout, done.stdout
        return done

    def last_run(name: str) -> dict[str, Any]:
        status = json.loads(controller("status", "--json").stdout)
        (found,) = [s for s in status if s["deployment"] == name]
        return found["lastRun"]  # type: ignore[no-any-return]

    def value(name: str, path: str) -> Any:
        found = [n for n in records() if n.startswith(f"{name}/") and Path(n).name == f"{path}.json"]
        assert len(found) == 1, (path, found)
        return json.loads(git(dev.bare, "show", f"nixgitops/state:{found[0]}"))["outputs"].get("value")

    def records() -> list[str]:
        listed = git(dev.bare, "ls-tree", "-r", "-z", "--name-only", "nixgitops/state").split("\0")
        return [n for n in listed if "/resources/" in n]

    data = tmp_path / "data" / "work"  # each deployment's providers run in data/work/<deployment>

    # BASIC STATELESS DEPLOYMENT
    reconcile("hello")
    assert (data / "hello" / "file.txt").read_text().rstrip("\n") == "Hallo wereld"

    # FAILING DEPLOYMENT: the run fails, names the resource, forwards the provider's message; nothing is written
    failed = controller("reconcile", "failing")
    assert failed.returncode == 1 and "failing: failed" in failed.stdout, failed.stdout + failed.stderr
    assert "oh no, this and that failed" in failed.stderr
    assert "failingDeployment.hello" in last_run("failing")["message"]
    assert not (data / "failing" / "file.txt").exists()

    # STATEFUL DEPLOYMENT: version 1, then a pushed commit with version 2; the memo keeps the initial version
    reconcile("stateful")
    assert "We're now at version 1." in (data / "stateful" / "current-version.md").read_text()
    git(world.work, "pull", "-q", "--no-rebase", server.url("infra.git"), "main")
    world.edit("currentVersion = 1;", "currentVersion = 2;")
    git(world.work, "push", "-q", server.url("infra.git"), "HEAD:refs/heads/main")
    reconcile("stateful")
    assert "We're now at version 2." in (data / "stateful" / "current-version.md").read_text()
    assert "My initial version: 1" in (data / "stateful" / "initial-version.md").read_text()
    reconcile("hello")  # the first deployment goes on over the others' new commits on the shared branch

    # UNREFERENCED NESTED DEPLOYMENT
    reconcile("unreferenced")
    assert value("unreferenced", "unreferencedNesting.orphan.orphanedResource") == "orphan-value"

    # STRUCTURAL DEPENDENCIES and DYNAMIC MEMBER KIND: one run applies the selector, then what its output revealed
    for name, path, expected in (
        ("structural-composites", "structuralDeploymentsAttr.conditionalChild.childResource", "child-value"),
        ("structural-resources", "structuralResourcesAttr.child.conditionalResource", "conditional-value"),
        ("dynamic", "dynamicKind.dynamicMember", "I am a resource"),
    ):
        reconcile(name)
        assert value(name, path) == expected
        assert last_run(name)["counts"]["create"] == 3, last_run(name)  # selector and state file, then the member

    # NESTED DEPLOYMENTS: values through nested composites; memos keep them when a pushed commit changes inputs
    reconcile("nested")
    assert value("nested", "nestedDeployment.deploymentSummary") == SUMMARY
    world.edit('inputs.initialize_with = "v1.0.0"', 'inputs.initialize_with = "v2.0.0"')
    world.edit('inputs.initialize_with = "nested-static-v1"', 'inputs.initialize_with = "nested-static-v2"')
    git(world.work, "push", "-q", server.url("infra.git"), "HEAD:refs/heads/main")
    reconcile("nested")
    assert value("nested", "nestedDeployment.deploymentSummary") == SUMMARY
    assert value("nested", "nestedDeployment.frontend.staticVersion") == "nested-static-v1"

    # Evaluating an applied commit again (here: the shared branch moved) makes no stateless resource again
    reconcile("hello")  # the newest commit (the nested deployment's): stateless resources are made again
    reconcile("unreferenced")  # another deployment pushes to the shared state branch
    before = git(dev.bare, "rev-parse", "nixgitops/state")
    from controller.config import load
    from controller.reconciler import Reconciler

    loaded = load(config)
    monkeypatch.setenv("PATH", world.env["PATH"])
    again = Reconciler(loaded, loaded.deployment("hello")).reconcile()  # a poll, as the daemon's (not forced)
    assert again.outcome == "no-change", again
    assert git(dev.bare, "rev-parse", "nixgitops/state") == before, "no state commit for an applied commit"

    # One state branch, each deployment in its own directory, holding only its own member's resources
    owners = {n.split("/")[0] for n in records()}
    assert owners == set(MEMBERS) - {"failing"}, owners  # the failing run created nothing
    for name in records():
        owner = name.split("/")[0]
        assert Path(name).name.startswith(MEMBERS[owner] + "."), name
    assert 'myDeployment."file.txt".json' in {Path(n).name for n in records()}
