"""Sensitive values never leak: a deployment with a sensitive input (read from a file outside the repository) and a
provider returning a sensitive output (tests/providers/vault.py, which also prints both on stderr, quotes its input
in its errors and echoes it in an output nobody declared sensitive) goes through plan, apply, a failing apply, a
crash and its recovery, with the real command line, Nix and Git. Then everything a person or a machine can read is
searched for either value: what the commands printed, every object of the repository (`git cat-file
--batch-all-objects`, the state branch's and the source's), the journal and caches under .git, and a no-change plan
after apply must be empty. The provider got the real values all along (its file holds them). And: the keys rotate,
a wrong or missing identity is a clear error, without recipients an input is kept as a keyed digest only and an
output that must be read again is refused with what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest
from conftest import Checkout, assert_clean_error, git

VAULT = Path(__file__).parent / "providers" / "vault.py"

DEPLOYMENT = """{ members, providers, sensitive, ... }:
let admin = sensitive (builtins.readFile SECRET_FILE); in {
  providers.vault = {
    executable = "PYTHON"; args = [ "VAULT" "LOG" ];
    resourceTypes.db = { sensitiveOutputs = [ "password" ]; };
  };
  members.db = {
    type = providers.vault.db;
    inputs = { admin = builtins.trace "debug: the admin password is ${admin}" admin; fail = FAIL; };
  };
  members.app = {
    type = providers.local.file;
    inputs = { name = "app.conf"; contents = "password=${members.db.outputs.password}"; };
  };
  members.motd = { type = providers.local.memo; inputs.initialize_with = "hello"; };
}
"""


def made(admin: str) -> str:
    """The password the vault provider makes from an admin password (as tests/providers/vault.py does)."""
    return "pw-" + hashlib.sha256(admin.encode()).hexdigest()[:16]


def deployment(tmp_path: Path, secret_file: Path, *, fail: bool = False, template: str = DEPLOYMENT) -> str:
    """``template`` with the secret file, the vault provider (its log in tmp_path) and ``fail`` filled in."""
    return (
        template.replace("SECRET_FILE", str(secret_file))
        .replace("PYTHON", sys.executable)
        .replace("VAULT", str(VAULT))
        .replace("LOG", str(tmp_path / "vault.log"))
        .replace("FAIL", "true" if fail else "false")
    )


def identity(path: Path) -> str:
    """A new age identity written to ``path``; its public key."""
    key = pyrage.x25519.Identity.generate()
    path.write_text(f"# test identity\n{key}\n")
    return str(key.to_public())


def everything_in(repo: Path) -> str:
    """Every object of the repository, and every file nixgitops keeps under .git (journal, caches)."""
    objects = subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"], cwd=repo, capture_output=True, check=True
    ).stdout.decode(errors="replace")
    kept = [
        p.read_bytes().decode(errors="replace")
        for p in (repo / ".git" / "nixgitops").rglob("*")
        if p.is_file() and not p.name.endswith(".digest-key")
    ]
    return "\n".join([objects, *kept])


@pytest.fixture
def world(tmp_path: Path, checkout: Checkout) -> tuple[Checkout, Path, str]:
    """A checkout whose deployment reads a secret from outside it, with one recipient in .nixgitops/recipients;
    the identity file (outside it) and the secret."""
    secret = "admin-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    secret_file = tmp_path / "secret"
    secret_file.write_text(secret)
    (checkout.path / ".nixgitops").mkdir()
    public = identity(tmp_path / "identity.txt")
    (checkout.path / ".nixgitops" / "recipients").write_text(f"# who can read the state's secrets\n{public}\n")
    (checkout.path / ".gitignore").write_text("/*\n!/.gitignore\n!/deployment.nix\n!/.nixgitops/\n")
    checkout.deploy(deployment(tmp_path, secret_file))
    return checkout, secret_file, secret


def test_no_sensitive_value_appears_anywhere(tmp_path: Path, world: tuple[Checkout, Path, str]) -> None:
    checkout, secret_file, secret = world
    key = ["--identity", str(tmp_path / "identity.txt"), "--allow-path", str(secret_file)]
    printed: list[str] = []

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = checkout.run(*args, *key)
        printed.extend([done.stdout, done.stderr])
        if ok:
            assert done.returncode == 0, f"{args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done

    first = run("plan")
    assert "+ admin = (sensitive)" in first.stdout and '"hello"' in first.stdout
    applied = run("apply", "--yes")
    assert "Apply complete" in applied.stdout
    assert (checkout.path / "app.conf").read_text() == f"password={made(secret)}"  # the provider got real values
    assert run("plan").stdout.startswith("No changes.")  # compared by value or keyed digest: nothing moves
    document = json.loads(run("plan", "--json").stdout)
    assert all(c["action"] == "noop" for c in document["changes"]), document
    listed = json.loads(run("state", "list", "--json").stdout)
    db = next(r for r in listed if r["path"] == "db")
    assert db["inputs"]["admin"] == "(sensitive)" and db["outputs"]["password"] == "(sensitive)"
    assert db["outputs"]["echo"] == "(sensitive)", "an output quoting a sensitive value is sensitive too"
    assert db["outputs"]["host"] == "db.internal"

    # a failing apply: the provider's error quotes the password it was given
    checkout.deploy(deployment(tmp_path, secret_file, fail=True))
    failed = run("apply", "--yes", ok=False)
    assert failed.returncode == 1
    assert "cannot log in as admin with password (sensitive)" in failed.stdout + failed.stderr

    # a new secret, and a crash just after the provider answered: the journal holds the operation, sealed
    new_secret = secret + "-rotated"
    secret_file.write_text(new_secret)
    checkout.deploy(deployment(tmp_path, secret_file))
    crashed = subprocess.run(
        [sys.executable, "-m", "controller", "apply", "--yes", *key],
        cwd=checkout.path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NIXGITOPS_FAILPOINT": "provider-response"},
    )
    printed.extend([crashed.stdout, crashed.stderr])
    assert crashed.returncode != 0
    journal = checkout.path / ".git" / "nixgitops" / "default.journal"
    assert journal.stat().st_size > 0 and "__nixgitopsSealed" in journal.read_text()
    journaled = everything_in(checkout.path)
    recovered = run("apply", "--yes")
    assert "was in flight when the controller stopped" in recovered.stdout, recovered.stdout
    assert (checkout.path / "app.conf").read_text() == f"password={made(new_secret)}"
    assert run("plan").stdout.startswith("No changes.")

    places = {"what the commands printed": "\n".join(printed), "the repository": everything_in(checkout.path)}
    places["the repository while the journal held the crash"] = journaled
    places["the state branch's messages"] = git(checkout.path, "log", "--format=%B", "nixgitops/state")
    for where, text in places.items():
        for value in (secret, made(secret), new_secret, made(new_secret)):
            assert value not in text, f"{value!r} found in {where}"
    # the places looked at hold what happened
    assert "debug: the admin password is (sensitive)" in places["what the commands printed"]
    assert "vault: made password (sensitive)" in places["what the commands printed"]
    assert "__nixgitopsSealed" in places["the repository"] and "Apply " in places["the state branch's messages"]

    # the one place that shows them, to someone who holds a key
    shown = json.loads(run("state", "show", "db", "--show-sensitive").stdout)
    assert shown["inputs"]["admin"] == new_secret and shown["outputs"]["password"] == made(new_secret)


def test_keys_rotate_and_a_wrong_or_missing_key_is_a_clear_error(
    tmp_path: Path, world: tuple[Checkout, Path, str]
) -> None:
    checkout, secret_file, secret = world
    first = ["--identity", str(tmp_path / "identity.txt"), "--allow-path", str(secret_file)]
    checkout.ok("apply", "--yes", *first)

    # a plan must read db's password (app reads it): without an identity, or with a wrong one, it says so
    stranger = tmp_path / "stranger.txt"
    identity(stranger)
    missing = checkout.run("plan", "--allow-path", str(secret_file))
    assert_clean_error(missing, "no identity was given", "--identity")
    wrong = checkout.run("plan", "--identity", str(stranger), "--allow-path", str(secret_file))
    assert_clean_error(wrong, "Cannot decrypt", str(stranger))

    # rotation: add a recipient, rekey (one state commit) with the old key; the new key reads every value
    commits = len(checkout.state_log())
    second = tmp_path / "second.txt"
    recipients = checkout.path / ".nixgitops" / "recipients"
    recipients.write_text(recipients.read_text() + identity(second) + "\n")
    rekeyed = checkout.ok("state", "rekey", *first)
    assert "Rekeyed 2 resource(s) to 2 recipient(s)" in rekeyed.stdout, rekeyed.stdout
    assert len(checkout.state_log()) == commits + 1
    with_second = ["--identity", str(second), "--allow-path", str(secret_file)]
    assert checkout.ok("plan", *with_second).stdout.startswith("No changes.")
    shown = json.loads(checkout.ok("state", "show", "db", "--show-sensitive", *with_second).stdout)
    assert shown["inputs"]["admin"] == secret and shown["outputs"]["password"] == made(secret)
    # and the old key still does, through the fallback over the identities given
    both = ["--identity", str(stranger), "--identity", str(tmp_path / "identity.txt")]
    shown = json.loads(checkout.ok("state", "show", "app", "--show-sensitive", *both).stdout)
    assert shown["inputs"]["contents"] == f"password={made(secret)}"

    # a recipient that is no key is refused before anything runs
    recipients.write_text("age1notakey\n")
    assert_clean_error(checkout.run("apply", "--yes", *first), "is not a valid public key")


def test_without_recipients_an_input_is_a_keyed_digest_and_an_output_is_refused(
    tmp_path: Path, world: tuple[Checkout, Path, str]
) -> None:
    checkout, secret_file, secret = world
    (checkout.path / ".nixgitops" / "recipients").unlink()
    allow = ["--allow-path", str(secret_file)]
    checkout.ok("apply", "--yes", *allow)
    record = json.loads(git(checkout.path, "show", "nixgitops/state:default/resources/" + _location("db")))
    stored = record["inputs"]["admin"]["__nixgitopsSealed"]
    assert set(stored) == {"digest"} and stored["digest"].startswith("hmac-sha256:")
    assert secret not in everything_in(checkout.path)
    # app reads db's password, which was not kept: the plan says why and what to do
    refused = checkout.run("plan", *allow)
    assert_clean_error(refused, "'password' of 'db' is sensitive", "no age recipients were configured", "recipients")
    # a deployment whose sensitive values are only inputs plans with the digest: nothing changes
    checkout.deploy(deployment(tmp_path, secret_file).replace("password=${members.db.outputs.password}", "static"))
    checkout.ok("apply", "--yes", *allow)
    assert checkout.ok("plan", *allow).stdout.startswith("No changes.")
    secret_file.write_text(secret + "-changed")
    changed = checkout.ok("plan", *allow).stdout
    assert "~ admin = (sensitive) -> (sensitive)  # a sensitive value changed" in changed, changed


def _location(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()[:2] + f"/{path}.json"


ROOT = """let
  lib = import REFERENCE/nixpkgs-lib/lib;
  nixops4 = import REFERENCE/nixops4/nix/lib/lib.nix { inherit lib; self = { }; selfWithSystem = null; };
  local = import REFERENCE/nixops4/nix/providers/local.nix {
    withSystem = system: f: f { config.packages.nixops4-resources-local-release = "REFERENCE/nixops4"; };
  };
in
nixops4.mkRoot {
  specialArgs.sensitive = import HARNESS/sensitive.nix;
  modules = [
    ({ providers, sensitive, ... }: {
      providers.local = local;
      members.secretFile = {
        type = providers.local.file;
        inputs = { name = "secret.txt"; contents = sensitive (builtins.readFile SECRET_FILE); };
      };
    })
  ];
}
"""


def test_a_nixops4_root_marks_values_through_its_module_system(tmp_path: Path, checkout: Checkout) -> None:
    """NixOps4's own library (mkRoot, its module system, its local provider module) and its real provider binary:
    a value marked with nixgitops's sensitive.nix through specialArgs stays marked through the module system's
    typing, is hidden in the plan and digested in state, and reaches the provider in clear."""
    from conftest import REFERENCE

    from controller.evaluation import harness_path

    secret = "root-secret-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    (tmp_path / "secret").write_text(secret)
    text = ROOT.replace("REFERENCE", str(REFERENCE)).replace("HARNESS", str(harness_path().parent))
    checkout.deploy(text.replace("SECRET_FILE", str(tmp_path / "secret")))
    planned = checkout.ok("plan", "--no-restrict-eval").stdout
    assert "+ contents = (sensitive)" in planned and '"secret.txt"' in planned
    checkout.ok("apply", "--yes", "--no-restrict-eval")
    assert (checkout.path / "secret.txt").read_text() == secret
    assert secret not in everything_in(checkout.path)
    record = json.loads(git(checkout.path, "show", "nixgitops/state:default/resources/" + _location("secretFile")))
    assert set(record["inputs"]["contents"]["__nixgitopsSealed"]) == {"digest"}
    again = checkout.ok("plan", "--no-restrict-eval").stdout  # (a stateless file is made on every apply)
    assert "(2 unchanged inputs hidden)" in again and "(sensitive)" not in again, again


def another_checkout(path: Path, members: str, *, arguments: str = "members, providers, sensitive") -> Checkout:
    """A new checkout at ``path`` whose deployment declares ``members`` (Nix lines), committed."""
    path.mkdir()
    made_here = Checkout(path)
    git(path, "init", "-q", "-b", "main")
    made_here.deploy(f"{{ {arguments}, ... }}: {{\n{members}}}\n")
    return made_here


def test_what_review_found_stays_fixed(tmp_path: Path, world: tuple[Checkout, Path, str]) -> None:
    """A recovery whose repeated request fails quoting the secret (its note in the state commit and the journal);
    a failing evaluation that traces a secret nixgitops had not seen; an update without the identity it needs; a
    member that happens to be named `sensitive`."""
    checkout, secret_file, secret = world
    key = ["--identity", str(tmp_path / "identity.txt"), "--allow-path", str(secret_file)]
    checkout.ok("apply", "--yes", *key)
    # the process dies just before the request of a failing update goes out; recovery repeats it, and it fails
    checkout.deploy(deployment(tmp_path, secret_file, fail=True))
    env = {**os.environ, "NIXGITOPS_FAILPOINT": "provider-request"}
    argv = [sys.executable, "-m", "controller", "apply", "--yes", *key]
    subprocess.run(argv, cwd=checkout.path, capture_output=True, timeout=120, env=env, check=False)
    recovered = checkout.run("apply", "--yes", *key)
    assert "could not be settled" in recovered.stdout + recovered.stderr or recovered.returncode != 0
    assert secret not in recovered.stdout + recovered.stderr
    assert secret not in everything_in(checkout.path) and secret not in "\n".join(checkout.state_log())

    # a new secret traced by an evaluation that then fails: never seen in an answer, still redacted
    checkout.deploy(deployment(tmp_path, secret_file))
    checkout.run("state", "rm", "db")  # (what the failed update left unsettled, forgotten)
    fresh = secret + "-never-seen"
    secret_file.write_text(fresh)
    broken = deployment(tmp_path, secret_file).replace('"hello"', 'builtins.abort "broken"')  # (after db, uncaught)
    checkout.deploy(broken)
    failed = checkout.run("plan", *key)
    assert failed.returncode == 1 and "debug: the admin password is (sensitive)" in failed.stderr, failed.stderr
    assert fresh not in failed.stdout + failed.stderr

    # an update that must send a sealed value of the last apply, without the identity to open it: a clear error
    checkout.deploy(deployment(tmp_path, secret_file))
    checkout.ok("apply", "--yes", *key)
    secret_file.write_text(fresh + "-2")
    checkout.commit("again")
    update = checkout.run("apply", "--yes", "--allow-path", str(secret_file))
    assert update.returncode == 1 and "Traceback" not in update.stderr
    assert "no identity was given" in update.stdout + update.stderr

    # a number made sensitive is masked where it is, and its digits stay in other text
    numbers = another_checkout(
        tmp_path / "numbers",
        '  members.db = { type = providers.local.memo; inputs.initialize_with = "db:${sensitive 5432}"; };\n'
        '  members.build = { type = providers.local.memo; inputs.initialize_with = "build 2025432"; };\n',
    )
    shown = numbers.ok("plan").stdout
    assert '"build 2025432"' in shown and "+ initialize_with = (sensitive)" in shown, shown

    # a member named `sensitive` is an ordinary member (its taint is not the mark)
    plain = another_checkout(
        tmp_path / "plain",
        '  members.sensitive = { type = providers.local.memo; inputs.initialize_with = "shown"; };\n'
        "  members.b = { type = providers.local.memo;"
        ' inputs.initialize_with = "b-${members.sensitive.outputs.value}"; };\n',
        arguments="members, providers",
    )
    plain.ok("apply", "--yes")
    assert plain.ok("plan").stdout.startswith("No changes.")
    assert json.loads(plain.ok("state", "show", "b").stdout)["inputs"]["initialize_with"] == "b-shown"


def test_digests_made_elsewhere_are_refused_until_the_key_is_here_or_reset(
    tmp_path: Path, world: tuple[Checkout, Path, str]
) -> None:
    checkout, secret_file, _ = world
    (checkout.path / ".nixgitops" / "recipients").unlink()
    allow = ["--allow-path", str(secret_file)]
    checkout.deploy(deployment(tmp_path, secret_file).replace("password=${members.db.outputs.password}", "static"))
    checkout.ok("apply", "--yes", *allow)
    key_file = checkout.path / ".git" / "nixgitops" / "default.digest-key"
    kept = key_file.read_bytes()
    key_file.unlink()  # (another machine: a clone with no key)
    recipients = checkout.path / ".nixgitops" / "recipients"
    recipients.write_text(identity(tmp_path / "b.txt") + "\n")  # it must not seal its own key as the shared one
    assert_clean_error(checkout.run("state", "rekey", "--identity", str(tmp_path / "b.txt"), *allow), "digested with")
    recipients.unlink()
    key_file.unlink()
    refused = checkout.run("plan", *allow)
    assert_clean_error(
        refused, "digested with a key this machine does not have", "default.digest-key", "--reset-digests"
    )
    key_file.write_bytes(kept)  # the key copied over: it plans
    assert checkout.ok("plan", *allow).stdout.startswith("No changes.")
    key_file.unlink()
    reset = checkout.ok("state", "rekey", "--reset-digests", *allow)
    assert "Reset 3 digest(s)" in reset.stdout and "the next apply sends the others again" in reset.stdout
    assert "~ admin = (sensitive) -> (sensitive)" in checkout.ok("plan", *allow).stdout
    checkout.ok("apply", "--yes", *allow)
    assert checkout.ok("plan", *allow).stdout.startswith("No changes.")
    # recipients added later: values kept as digests only stay so, and rekey says nothing is lost
    identity(tmp_path / "later.txt")
    public = identity(tmp_path / "later.txt")
    (checkout.path / ".nixgitops" / "recipients").write_text(public + "\n")
    checkout.ok("state", "rekey", "--identity", str(tmp_path / "later.txt"), *allow)


def test_a_recipients_file_without_a_key_is_refused(tmp_path: Path, world: tuple[Checkout, Path, str]) -> None:
    checkout, secret_file, _ = world
    (checkout.path / ".nixgitops" / "recipients").write_text("# nobody yet\n")
    refused = checkout.run("apply", "--yes", "--allow-path", str(secret_file))
    assert_clean_error(refused, "Encryption is enforced", ".nixgitops/recipients", "lists no recipients")
    assert not (tmp_path / "vault.log").exists(), "the provider was called"
