"""The configuration contract: TOML, defaults, environment overrides, errors that name the key and the file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from controller.config import ConfigError, duration, load

CONTRACT = """
[controller]
data_dir = "/var/lib/nixgitops"

[deployments.web]
repository = "ssh://git@example.org/infra.git"
branch = "main"
file = "deployment.nix"
state_branch = "nixgitops/state"
interval = "1m"
apply = "auto"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "nixgitops.toml"
    path.write_text(text)
    return path


def test_the_documented_example_loads_with_defaults(tmp_path: Path) -> None:
    config = load(write(tmp_path, CONTRACT), environ={})
    web = config.deployment("web")
    assert config.data_dir == Path("/var/lib/nixgitops")
    assert web.repository == "ssh://git@example.org/infra.git"
    assert web.state_url == web.repository
    assert (web.interval, web.jitter, web.prune, web.allow_rewind, web.apply) == (60.0, 6.0, True, False, "auto")


def test_environment_overrides_file_values(tmp_path: Path) -> None:
    env = {
        "NIXGITOPS__CONTROLLER__DATA_DIR": "/data",
        "NIXGITOPS__DEPLOYMENTS__WEB__BRANCH": "release",
        "NIXGITOPS__DEPLOYMENTS__WEB__PRUNE": "false",
        "NIXGITOPS__DEPLOYMENTS__WEB__INTERVAL": "5s",
        "NIXGITOPS__DEPLOYMENTS__API__REPOSITORY": "/srv/api.git",
        "UNRELATED": "x",
    }
    config = load(write(tmp_path, CONTRACT), environ=env)
    assert config.data_dir == Path("/data")
    web = config.deployment("web")
    assert (web.branch, web.prune, web.interval) == ("release", False, 5.0)
    assert config.deployment("api").repository == "/srv/api.git"


def test_durations() -> None:
    assert duration("1m", "x") == 60 and duration("500ms", "x") == 0.5 and duration(3, "x") == 3
    assert duration("2h", "x") == 7200
    for bad in ("0s", "soon", "-1m", True):
        with pytest.raises(ConfigError, match="positive duration"):
            duration(bad, "x")


def test_errors_name_the_key_and_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT + 'prune = "yes"\n')
    with pytest.raises(ConfigError, match=r"`deployments\.web\.prune` in .*nixgitops\.toml must be true or false"):
        load(path, environ={})
    with pytest.raises(ConfigError, match="No deployment 'api'"):
        load(write(tmp_path, CONTRACT), environ={}).deployment("api")
    with pytest.raises(ConfigError, match="Cannot read the configuration file"):
        load(tmp_path / "missing.toml", environ={})


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ("[controler]\ndata_dir = '/x'\n", "`controler` in"),
        ('[deployments.api]\nrepository = "ssh://git@example.org/infra.git"\n', "both write the state branch"),
        ("", None),
    ],
)
def test_tables_and_shared_state_branches(tmp_path: Path, extra: str, needle: str | None) -> None:
    path = write(tmp_path, CONTRACT + extra)
    if needle is None:
        load(path, environ={})
        return
    with pytest.raises(ConfigError, match=needle):
        load(path, environ={})


def test_branch_names_are_checked_and_env_strings_stay_strings(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT)
    with pytest.raises(ConfigError, match=r"`deployments\.web\.branch` in .*: 'bad\.\.name' is not a valid Git branch"):
        load(path, environ={"NIXGITOPS__DEPLOYMENTS__WEB__BRANCH": "bad..name"})
    assert load(path, environ={"NIXGITOPS__DEPLOYMENTS__WEB__BRANCH": "2024"}).deployment("web").branch == "2024"


def test_allow_empty_is_off_by_default_and_set_by_file_or_environment(tmp_path: Path) -> None:
    path = write(tmp_path, CONTRACT)
    assert load(path, environ={}).deployment("web").allow_empty is False
    assert load(path, environ={"NIXGITOPS__DEPLOYMENTS__WEB__ALLOW_EMPTY": "true"}).deployment("web").allow_empty
    allowed = write(tmp_path, CONTRACT + "allow_empty = true\n")
    assert load(allowed, environ={}).deployment("web").allow_empty is True
    env = {"NIXGITOPS__DEPLOYMENTS__WEB__ALLOW_EMPTY": "False"}
    assert load(allowed, environ=env).deployment("web").allow_empty is False
    with pytest.raises(ConfigError, match=r"`deployments\.web\.allow_empty` in .* must be true or false, not 'yes'"):
        load(path, environ={"NIXGITOPS__DEPLOYMENTS__WEB__ALLOW_EMPTY": "yes"})


NIX_TABLE = """
[deployments.web]
repository = "ssh://git@example.org/infra.git"
"""


def test_nix_settings_flake_and_search_path(tmp_path: Path) -> None:
    text = NIX_TABLE + (
        'flake = "deployments.prod"\nbuild_timeout = "90s"\n'
        'nix_options = { substituters = "", require-sigs = true, max-jobs = 4 }\n'
    )
    web = load(write(tmp_path, text), environ={}).deployment("web")
    assert web.flake == "deployments.prod"
    assert web.nix.build_timeout == 90
    assert web.nix.options == (("substituters", ""), ("require-sigs", "true"), ("max-jobs", "4"))
    plain = load(write(tmp_path, NIX_TABLE + 'nix_path = ["nixpkgs=/srv/nixpkgs"]\n'), environ={}).deployment("web")
    assert plain.flake is None and plain.evaluation.nix_path == ("nixpkgs=/srv/nixpkgs",)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ('flake = "nixgitops"\nfile = "x.nix"\n', "either `flake`"),
        ('flake = ".#nixgitops"\n', 'no "#"'),
        ('flake = "nixgitops"\nnix_path = ["nixpkgs=/srv/nixpkgs"]\n', "no effect with `flake`"),
        ('flake = "nixgitops"\nallowed_paths = ["/srv"]\n', "no effect with `flake`"),
        ('nix_path = ["nixpkgs=relative/path"]\n', "search-path entries"),
        ("nix_options = { substituters = 1.5 }\n", "table of Nix settings"),
        ('build_timeout = "soon"\n', "build_timeout"),
    ],
)
def test_bad_nix_settings_name_the_key(tmp_path: Path, extra: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load(write(tmp_path, NIX_TABLE + extra), environ={})
