"""Builds: what a deployment refers to is built by the real Nix before it is used (issue 13).

Every derivation here has `/bin/sh` as its builder and a nonce in its name, so that each test builds for real
(nothing is left valid in the store by an earlier run) and needs no binary cache (conftest: no substituters).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from conftest import NOTES_PROVIDER, Checkout, assert_clean_error


def script(name: str, body: str) -> str:
    """Nix text: a derivation whose output is an executable shell script printing ``body``'s output."""
    return (
        f'derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh";'
        f" args = [ \"-c\" ''echo '#!/bin/sh' > $out; echo '{body}' >> $out; /bin/chmod +x $out'' ]; }}"
    )


def roots(checkout: Checkout) -> dict[str, str]:
    """The CLI's garbage-collector roots: link name -> store path."""
    directory = checkout.path / ".git" / "nixgitops" / "default.gcroots"
    if not directory.is_dir():
        return {}
    return {link.name: os.readlink(link) for link in directory.iterdir()}


def test_the_issue_example_builds_and_runs_and_a_rebuild_shows_both_paths(checkout: Checkout) -> None:
    nonce = uuid.uuid4().hex[:8]
    deployment = """
        {{ members, providers, ... }}:
        let tool = {tool}; in
        {{ members.run = {{ type = providers.local.exec; inputs = {{ executable = "${{tool}}"; args = [ ]; }}; }}; }}
    """
    checkout.deploy(deployment.format(tool=script(f"greeter-{nonce}", f"echo built-by-nix {nonce}")))
    done = checkout.ok("apply", "-y")
    assert "[build] building '/nix/store/" in done.stderr  # Nix's log, as it came
    record = checkout.state()["run"]
    assert record["outputs"]["stdout"] == f"built-by-nix {nonce}\n"
    (first,) = record["storePaths"]
    assert first == record["inputs"]["executable"] and first.endswith(f"-greeter-{nonce}")
    assert list(roots(checkout).values()) == [first]
    found = subprocess.run(["nix-store", "--query", "--roots", first], capture_output=True, text=True, timeout=60)
    assert str(checkout.path / ".git" / "nixgitops" / "default.gcroots") in found.stdout  # registered with Nix

    checkout.deploy(deployment.format(tool=script(f"greeter-{nonce}", f"echo rebuilt {nonce}")))
    text = checkout.ok("plan").stdout
    second = [w.strip('"') for w in text.split() if w.startswith('"/nix/store/') and w.strip('"') != first]
    assert f'"{first}" -> "{second[0]}"' in text  # only the store path changed: old and new
    checkout.ok("apply", "-y")
    record = checkout.state()["run"]
    assert record["outputs"]["stdout"] == f"rebuilt {nonce}\n" and record["storePaths"] == [second[0]]
    assert list(roots(checkout).values()) == [second[0]]  # the old build is no longer kept alive
    assert "No changes." in checkout.ok("plan").stdout

    checkout.ok("destroy", "-y")
    assert roots(checkout) == {}


def notes_package(nonce: str, checkout: Checkout) -> str:
    """Nix text: the shell provider notes.sh, from the repository's own files, packaged by a derivation whose
    wrapper says which build serves."""
    (checkout.path / "deploy").mkdir(exist_ok=True)
    (checkout.path / "deploy" / "notes.sh").write_text(NOTES_PROVIDER.read_text())
    return (
        f'derivation {{ name = "notes-provider-{nonce}"; system = builtins.currentSystem; builder = "/bin/sh";'
        """ args = [ "-c" ''
            /bin/mkdir -p $out/bin
            /bin/cp ${./deploy/notes.sh} $out/bin/notes.sh
            printf '#!/bin/sh\necho serving from %s >&2\nexec /bin/sh %s/bin/notes.sh "$@"\n' $out $out > $out/bin/notes
            /bin/chmod +x $out/bin/notes
          '' ]; }"""
    )


def test_a_provider_built_by_nix_from_the_repository_serves_requests(checkout: Checkout, tmp_path: Path) -> None:
    log = tmp_path / "notes.log"
    deployment = """
        { members, providers, ... }:
        let package = PACKAGE; in
        {
          providers.notes = { executable = "${package}/bin/notes"; args = [ "LOG" ]; resourceTypes = [ "note" ]; };
          members.hello = { type = providers.notes.note; inputs.text = "TEXT"; };
        }
    """

    def render(nonce: str, text: str) -> str:
        return (
            deployment.replace("PACKAGE", notes_package(nonce, checkout)).replace("LOG", str(log)).replace("TEXT", text)
        )

    first_nonce, second_nonce = uuid.uuid4().hex[:8], uuid.uuid4().hex[:8]
    checkout.deploy(render(first_nonce, "one"))
    done = checkout.ok("apply", "-y")
    assert "[notes] serving from /nix/store/" in done.stderr and first_nonce in done.stderr
    record = checkout.state()["hello"]
    (provider_path,) = record["storePaths"]
    assert provider_path.endswith(f"notes-provider-{first_nonce}")
    assert "createResourceRequest" in log.read_text()

    # a rebuilt provider alone: shown old -> new, recorded, nothing called
    checkout.deploy(render(second_nonce, "one"))
    text = checkout.ok("plan").stdout
    assert "~ providers.notes" in text and "No changes." in text
    (change,) = json.loads(checkout.ok("plan", "--json").stdout)["providers"]
    assert change["name"] == "notes" and change["after"]["executable"].endswith(f"{second_nonce}/bin/notes")
    assert f"notes-provider-{first_nonce}/bin/notes" in text and f"notes-provider-{second_nonce}/bin/notes" in text
    requests = log.read_text()
    assert "Recorded the new command of 1 provider(s)." in checkout.ok("apply", "-y").stdout
    assert log.read_text() == requests
    assert "providers.notes" not in checkout.ok("plan").stdout

    # the next operation runs the new build
    checkout.deploy(render(second_nonce, "two"))
    done = checkout.ok("apply", "-y")
    assert f"notes-provider-{second_nonce}" in done.stderr
    assert checkout.state()["hello"]["storePaths"][0].endswith(f"notes-provider-{second_nonce}")


def test_a_failed_build_fails_its_resource_and_skips_its_readers_only(checkout: Checkout) -> None:
    nonce = uuid.uuid4().hex[:8]
    checkout.deploy(
        f"""
        {{ members, providers, ... }}:
        let broken = derivation {{ name = "broken-{nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
                                   args = [ "-c" "echo compiling >&2; echo 'no such header' >&2; exit 1" ]; }};
        in {{
          members.tool = {{ type = providers.local.exec; inputs = {{ executable = "${{broken}}"; args = [ ]; }}; }};
          members.reader = {{ type = providers.local.memo; inputs.initialize_with = members.tool.outputs.stdout; }};
          members.sibling = {{ type = providers.local.memo; inputs.initialize_with = "fine"; }};
        }}
        """
    )
    done = checkout.run("apply", "-y")
    assert_clean_error(
        done, "Building /nix/store/", f"-broken-{nonce}.drv for resource 'tool' failed", "no such header"
    )
    assert done.stderr.count("[build] building '/nix/store/") == 1  # once, though the run needs it twice
    assert "reader: skipped: it reads outputs of tool, which failed" in done.stdout
    state = checkout.state()
    assert set(state) == {"sibling"}  # nothing else lost


def test_a_derivation_made_from_an_output_is_built_just_before_its_resource(checkout: Checkout) -> None:
    nonce = uuid.uuid4().hex[:8]
    checkout.deploy(
        f"""
        {{ members, providers, ... }}:
        let says = text: {script(f"says-{nonce}", "echo ${text}")}; in
        {{
          members.word = {{ type = providers.local.memo; inputs.initialize_with = "hello-{nonce}"; }};
          members.speak = {{ type = providers.local.exec;
                             inputs = {{ executable = "${{says members.word.outputs.value}}"; args = [ ]; }}; }};
        }}
        """
    )
    plan = checkout.plan()
    assert plan["speak"]["afterUnknown"] == ["executable"]
    checkout.ok("apply", "-y")
    record = checkout.state()["speak"]
    assert record["outputs"]["stdout"] == f"hello-{nonce}\n"
    assert record["dependencies"] == ["word"]
    # The plan's evaluation marks output strings to find who reads them; that mark must not become part of
    # the derivation, or the plan would see a different store path than the one applied.
    assert "No changes." in checkout.ok("plan").stdout


def test_one_derivation_for_many_resources_is_built_once(checkout: Checkout) -> None:
    nonce = uuid.uuid4().hex[:8]
    members = "\n".join(
        f'members.r{i} = {{ type = providers.local.exec; inputs = {{ executable = "${{tool}}"; args = ["{i}"]; }}; }};'
        for i in range(6)
    )
    checkout.deploy(
        f"""
        {{ members, providers, ... }}:
        let tool = {script(f"shared-{nonce}", "echo shared")}; in
        {{ {members} }}
        """
    )
    done = checkout.ok("apply", "-y", "--parallelism", "6")
    assert done.stderr.count("[build] building '/nix/store/") == 1
    assert {r["outputs"]["stdout"] for r in checkout.state().values()} == {"shared\n"}


def test_a_build_past_its_time_limit_is_stopped(checkout: Checkout) -> None:
    nonce = uuid.uuid4().hex[:8]
    checkout.deploy(
        f"""
        {{ members, providers, ... }}:
        let slow = derivation {{ name = "slow-{nonce}"; system = builtins.currentSystem; builder = "/bin/sh";
                                 args = [ "-c" "/bin/sleep 120" ]; }};
        in {{ members.slow = {{ type = providers.local.exec; inputs = {{ executable = "${{slow}}"; args = []; }}; }}; }}
        """
    )
    done = checkout.run("apply", "-y", "--build-timeout", "2", timeout=100)
    assert_clean_error(done, f"-slow-{nonce}.drv for resource 'slow' failed", "timed out", "build_timeout")
    assert checkout.state() == {}


def test_a_derivation_from_an_output_that_another_resource_forced_first(checkout: Checkout) -> None:
    """The derivation's own reader leaves no trace of the read (`c` forces the value first, and a derivation's output
    does not carry its inputs' context): the plan must still compute the derivation without the taint."""
    nonce = uuid.uuid4().hex[:8]
    checkout.deploy(
        f"""
        {{ members, providers, ... }}:
        let says = text: {script(f"says-{nonce}", "echo ${text}")}; in
        {{
          members.a = {{ type = providers.local.memo; inputs.initialize_with = "word-{nonce}"; }};
          members.c = {{ type = providers.local.memo; inputs.initialize_with = members.a.outputs.value; }};
          members.z = {{ type = providers.local.exec;
                         inputs = {{ executable = "${{says members.a.outputs.value}}"; args = []; }}; }};
        }}
        """
    )
    checkout.ok("apply", "-y")
    assert checkout.state()["z"]["outputs"]["stdout"] == f"word-{nonce}\n"
    assert "No changes." in checkout.ok("plan").stdout
    checkout.write(checkout.path.joinpath("deployment.nix").read_text().replace("args = [];", 'args = ["x"];'))
    checkout.commit()
    checkout.ok("apply", "-y")  # an update of z, planned with every output known
    assert "No changes." in checkout.ok("plan").stdout


def test_a_source_file_of_the_repository_is_added_to_the_store(checkout: Checkout) -> None:
    (checkout.path / "deploy").mkdir()
    (checkout.path / "deploy" / "hello.sh").write_text(f"#!/bin/sh\necho from-the-repository {uuid.uuid4().hex}\n")
    (checkout.path / "deploy" / "hello.sh").chmod(0o755)
    checkout.deploy(
        """
        { members, providers, ... }:
        { members.run = { type = providers.local.exec;
                          inputs = { executable = "${./deploy/hello.sh}"; args = []; }; }; }
        """
    )
    checkout.ok("apply", "-y")
    record = checkout.state()["run"]
    assert record["outputs"]["stdout"].startswith("from-the-repository ")
    assert record["storePaths"] == [record["inputs"]["executable"]]
