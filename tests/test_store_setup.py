"""controller/nix/setup-store.sh, the image's entrypoint, run for real as a non-root user on this machine.

The Dockerfile is not built here (no Docker engine). What the image does to get a Nix store is this script, so these
tests stand for the image: as user ``nobody``, the script makes a store in a directory that user owns, with no binary
cache; a derivation is built into it and its output run; a second start keeps the store; a store root the user cannot
write stops with a clear message; and the nix.conf it writes says what the chart's ConfigMap says.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_chart import by_kind, nix_conf, render

SCRIPT = ROOT / "controller" / "nix" / "setup-store.sh"
USER = "nobody"
TIMEOUT = 60
HELLO = """derivation {
  name = "hello";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ("printf '#!/bin/sh\\\\necho built by uid %s\\\\n' \\"$(/usr/bin/id -u)\\" > $out"
    + " && /bin/chmod +x $out") ];
}
"""


@dataclass
class Sandbox:
    """A directory under /tmp that ``nobody`` can reach (pytest's tmp_path sits below a directory only root enters),
    holding ``home``, owned by that user, with the store root ``home/nix`` and the nix.conf directory ``home/etc``."""

    base: Path
    home: Path
    uid: int

    @property
    def root(self) -> Path:
        return self.home / "nix"

    @property
    def conf(self) -> Path:
        return self.home / "etc" / "nix.conf"

    def run(self, *command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """The script, as ``nobody``, with nothing from this process's environment but what is given here."""
        variables = {
            "PATH": f"{Path(shutil.which('nix-store') or '/usr/bin').parent}:/usr/bin:/bin",
            "HOME": str(self.home),
            "NIX_CONF_DIR": str(self.conf.parent),
            "NIXGITOPS_NIX_ROOT": str(self.root),
            **(env or {}),
        }
        assignments = [f"{k}={v}" for k, v in variables.items()]
        argv = ["runuser", "-u", USER, "--", "env", "-i", *assignments, "sh", str(self.base / SCRIPT.name), *command]
        return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False)

    def build(self) -> Path:
        """Build :data:`HELLO` into the store through the script; the output's path in the store."""
        (self.home / "hello.nix").write_text(HELLO)
        instantiated = self.run("nix-instantiate", str(self.home / "hello.nix"))
        assert instantiated.returncode == 0, instantiated.stderr
        drv = instantiated.stdout.strip()
        built = self.run("nix-store", "--realise", drv, "--add-root", str(self.home / "result"))
        assert built.returncode == 0, built.stderr
        return Path(os.readlink(self.home / "result"))


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("runs the script as another user, which needs root")
    for tool in ("runuser", "nix-store", "nix-instantiate", "nix"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    user = pwd.getpwnam(USER)
    base = Path(tempfile.mkdtemp(prefix="nixgitops-store-", dir="/tmp"))
    try:
        base.chmod(0o755)
        shutil.copy(SCRIPT, base / SCRIPT.name)  # where the user can read it, wherever the checkout is
        home = base / "home"
        home.mkdir()
        os.chown(home, user.pw_uid, user.pw_gid)
        yield Sandbox(base, home, user.pw_uid)
    finally:
        shutil.rmtree(base)


def settings(text: str) -> dict[str, str]:
    """``name = value`` lines, the last one winning as in Nix; comments and blank lines skipped."""
    lines = [line.strip() for line in text.splitlines()]
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in lines if line and line[0] != "#")}


def test_a_non_root_user_builds_a_derivation_into_the_store_it_made_and_runs_it(sandbox: Sandbox) -> None:
    out = sandbox.build()
    assert out.parent == sandbox.root / "store" and out.name.endswith("-hello")
    assert out.stat().st_uid == sandbox.uid and (sandbox.root / "var" / "nix" / "db").stat().st_uid == sandbox.uid
    ran = subprocess.run(["runuser", "-u", USER, "--", str(out)], capture_output=True, text=True, timeout=TIMEOUT)
    assert ran.returncode == 0 and ran.stdout == f"built by uid {sandbox.uid}\n", ran.stderr
    conf = settings(sandbox.conf.read_text())
    assert conf["substituters"] == "" and conf["build-users-group"] == "" and conf["sandbox"] == "false"


def test_without_settings_nix_has_no_binary_cache_at_all(sandbox: Sandbox) -> None:
    shown = sandbox.run("nix", "--extra-experimental-features", "nix-command", "show-config")
    assert shown.returncode == 0, shown.stderr
    config = settings(shown.stdout)
    assert config["substituters"] == "" and config["trusted-public-keys"] == ""  # Nix's default is cache.nixos.org
    assert config["build-users-group"] == "" and config["sandbox"] == "false" and config["connect-timeout"] == "5"


def test_a_second_start_keeps_the_store_and_what_was_built(sandbox: Sandbox) -> None:
    out = sandbox.build()
    again = sandbox.run()
    assert again.returncode == 0, again.stderr
    valid = sandbox.run("nix-store", "--check-validity", str(out))
    assert valid.returncode == 0, valid.stderr
    assert sandbox.build() == out  # nothing to build the second time: same path, still there
    assert "will be built" not in sandbox.run("nix-store", "--realise", str(out)).stderr


def test_the_environment_sets_substituters_keys_and_extra_config_and_nix_reads_them(sandbox: Sandbox) -> None:
    env = {
        "NIXGITOPS_NIX_SUBSTITUTERS": "https://cache.example.org https://cache.nixos.org",
        "NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS": "cache.example.org-1:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVowMTIzNDU=",
        "NIXGITOPS_NIX_EXTRA_CONFIG": "max-jobs = 3\nconnect-timeout = 2\n",
    }
    shown = sandbox.run("nix", "--extra-experimental-features", "nix-command", "show-config", env=env)
    assert shown.returncode == 0, shown.stderr
    config = settings(shown.stdout)
    assert config["substituters"] == "https://cache.example.org https://cache.nixos.org"
    assert config["trusted-public-keys"] == env["NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS"]
    assert config["max-jobs"] == "3" and config["connect-timeout"] == "2"  # a later line overrides the script's


@pytest.mark.parametrize("values", ["minimal", "full", "airgapped"])
def test_the_chart_renders_the_nix_conf_the_script_writes(sandbox: Sandbox, values: str) -> None:
    path = ROOT / "tests" / "helm" / f"{values}.yaml"
    nix = yaml.safe_load(path.read_text()).get("nix", {})
    defaults = yaml.safe_load((ROOT / "charts" / "nixgitops" / "values.yaml").read_text())["nix"]
    nix = {**defaults, **nix}
    done = sandbox.run(
        env={
            "NIXGITOPS_NIX_SUBSTITUTERS": " ".join(nix["substituters"]),
            "NIXGITOPS_NIX_TRUSTED_PUBLIC_KEYS": " ".join(nix["trustedPublicKeys"]),
            "NIXGITOPS_NIX_EXTRA_CONFIG": nix["extraConfig"],
        }
    )
    assert done.returncode == 0, done.stderr
    assert settings(sandbox.conf.read_text()) == nix_conf(render(path))


def test_a_provided_nix_conf_it_cannot_write_is_used_as_it_is(sandbox: Sandbox) -> None:
    # As the chart mounts it: a ConfigMap, read-only to the user.
    sandbox.conf.parent.mkdir()
    sandbox.conf.write_text("build-users-group =\nsandbox = false\nsubstituters =\nmax-jobs = 7\n")
    kept = sandbox.run("nix", "--extra-experimental-features", "nix-command", "show-config")
    assert kept.returncode == 0 and "using the provided" in kept.stderr, kept.stderr
    assert settings(kept.stdout)["max-jobs"] == "7"
    refused = sandbox.run("true", env={"NIXGITOPS_NIX_SUBSTITUTERS": "https://cache.example.org"})
    assert refused.returncode == 1 and f"{sandbox.conf} is provided read-only" in refused.stderr, refused.stderr
    assert "max-jobs = 7" in sandbox.conf.read_text()


@pytest.mark.parametrize("where", ["a root-owned directory", "below a root-owned directory"])
def test_a_store_root_the_user_cannot_write_stops_with_a_clear_message(sandbox: Sandbox, where: str) -> None:
    locked = sandbox.base / "locked"
    locked.mkdir(mode=0o755)
    root = locked if where == "a root-owned directory" else locked / "nix"
    done = sandbox.run("sh", "-c", "echo the command ran", env={"NIXGITOPS_NIX_ROOT": str(root)})
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert re.match(rf"setup-store\.sh: cannot (write to|create) {re.escape(str(root))}\b", done.stderr), done.stderr
    assert f"uid {sandbox.uid}" in done.stderr and "Traceback" not in done.stderr
    assert not (locked / "store").exists() and not (locked / "nix").exists()


def test_a_nix_conf_directory_the_user_cannot_write_stops_with_a_clear_message(sandbox: Sandbox) -> None:
    locked = sandbox.base / "etc"
    locked.mkdir(mode=0o755)
    done = sandbox.run("sh", "-c", "echo the command ran", env={"NIX_CONF_DIR": str(locked)})
    assert done.returncode == 1 and done.stdout == "", done.stdout
    assert done.stderr == (
        f"setup-store.sh: cannot write nix.conf into {locked} (NIX_CONF_DIR) as uid {sandbox.uid}: make it writable by"
        " this user, or provide a nix.conf there (the chart mounts one from a ConfigMap).\n"
    )


def test_the_script_is_posix_sh_and_shellcheck_clean() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    done = subprocess.run(
        ["shellcheck", "--shell=sh", str(SCRIPT)], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_runs_the_script_as_the_user_that_owns_the_store() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "dummy://" not in dockerfile and "NIXGITOPS_NIX_STORE" not in dockerfile
    copied = re.search(r"^COPY (\S+/setup-store\.sh) (\S+)$", dockerfile, re.MULTILINE)
    assert copied and copied.group(1) == str(SCRIPT.relative_to(ROOT))
    assert re.search(
        rf'^ENTRYPOINT \["{re.escape(copied.group(2).rsplit("/", 1)[1])}", "nixgitops"\]$', dockerfile, re.M
    )
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE)
    assert re.search(r"install -d -o 10001 -g 10001 -m 0755 /nix ", dockerfile)
    conf_dir = re.search(r"NIX_CONF_DIR=(\S+)", dockerfile)
    pod = by_kind(render(ROOT / "tests" / "helm" / "minimal.yaml"), "Deployment")[0]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert conf_dir and env["NIX_CONF_DIR"] == conf_dir.group(1) and {conf_dir.group(1), "/nix"} <= mounts
    assert "command" not in pod["containers"][0]  # the chart keeps the image's entrypoint, which runs the script
