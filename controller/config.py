"""The daemon's configuration: a TOML file, with environment variables overriding it.

Every error names the key and the file. An environment variable ``NIXGITOPS__<SECTION>__<KEY>`` overrides a key of
``[<section>]``, and ``NIXGITOPS__DEPLOYMENTS__<NAME>__<KEY>`` a key of ``[deployments.<name>]`` (names and keys
are matched without regard to case; ``-`` in a name is written ``_``). Pure parsing: the only I/O is reading the
file, in ``load``.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controller import paths
from controller.errors import SecretsError, UserError
from controller.model import EvalLimits, NixSettings
from controller.sealing import Encryption, parse_recipient

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class ConfigError(UserError):
    """The configuration is invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Verification:
    """Which commits may be applied: signed by a key in an SSH allowed-signers file or a GPG keyring."""

    allowed_signers: Path | None = None
    gpg_home: Path | None = None


@dataclass(frozen=True)
class DeploymentConfig:
    name: str
    repository: str
    branch: str = "main"
    file: str = "deployment.nix"
    state_repository: str | None = None
    state_branch: str = "nixgitops/state"
    interval: float = 60.0
    jitter: float = 6.0
    apply: str = "auto"
    prune: bool = True
    allow_rewind: bool = False
    allow_empty: bool = False
    suspend: bool = False
    parallelism: int = 8
    provider_timeout: float = 300.0
    verify: Verification | None = None
    drift_interval: float | None = 600.0
    evaluation: EvalLimits = field(default_factory=EvalLimits)
    flake: str | None = None
    """The attribute path of the output of the repository's flake that holds the deployment (instead of
    ``file``)."""
    nix: NixSettings = field(default_factory=NixSettings)
    member: str | None = None
    """A member path (``controller.paths``): this deployment is that member's subtree only."""
    forge: str | None = None
    """The ``[forges.<name>]`` that statuses, comments and previews of this deployment go through."""
    previews: bool = False
    """Plan every open pull request to ``branch`` and show the plan on it (needs ``forge``)."""
    previews_from_forks: bool = False
    """Also plan pull requests whose head is in another repository (runs their author's Nix code)."""
    require_reviewed_plan: bool = False
    previews_decrypt: bool = False
    """Let previews of pull requests decrypt the sensitive outputs their inputs read (a pull request's code could
    transform one into its plan): off, a preview that must read one fails, saying so."""
    encryption: Encryption = field(default_factory=Encryption)
    """``[deployments.NAME.encryption]``: the age recipients sensitive values are encrypted to in state, the
    identity files that decrypt them, and whether a run without recipients is refused (docs/secrets.md)."""
    """Apply a merged commit only when its plan is the plan last shown on the pull request that brought it."""

    @property
    def state_url(self) -> str:
        return self.state_repository or self.repository


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    token_file: Path | None = None


@dataclass(frozen=True)
class ReceiverConfig:
    """A webhook receiver, served at ``POST /hooks/<name>``."""

    name: str
    kind: str
    secret: bytes = field(repr=False)
    deployments: tuple[str, ...]


FORGE_KINDS = ("github", "gitlab", "gitea", "bitbucket_server")
DEFAULT_API_URLS = {"github": "https://api.github.com"}


@dataclass(frozen=True)
class ForgeSettings:
    """A forge's API: where it is and the file that holds the token (read when a client starts)."""

    name: str
    kind: str
    api_url: str
    token_file: Path


@dataclass(frozen=True)
class Config:
    path: Path
    data_dir: Path
    identity: tuple[str, str] = ("nixgitops", "nixgitops@localhost")
    deployments: dict[str, DeploymentConfig] = field(default_factory=dict)
    server: ServerConfig = field(default_factory=ServerConfig)
    receivers: dict[str, ReceiverConfig] = field(default_factory=dict)
    forges: dict[str, ForgeSettings] = field(default_factory=dict)

    def deployment(self, name: str) -> DeploymentConfig:
        if name not in self.deployments:
            known = ", ".join(sorted(self.deployments)) or "none"
            raise ConfigError(f"No deployment {name!r} in {self.path}; configured: {known}.")
        return self.deployments[name]


def default_data_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "nixgitops"


def duration(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    match = DURATION.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f'{where} must be a positive duration such as "30s", "1m" or "1h", not {value!r}.')
    return float(match.group(1)) * UNITS[match.group(2)]


SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB)?\s*$")
SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}


def size(value: Any, where: str) -> int:
    """A number of bytes written as a whole number or with a unit: "512MiB", "2GiB"."""
    match = SIZE.match(str(value)) if isinstance(value, int | str) and not isinstance(value, bool) else None
    if match is None or int(match.group(1)) <= 0:
        raise ConfigError(f'{where} must be a size such as "512MiB" or "2GiB", not {value!r}.')
    return int(match.group(1)) * SIZE_UNITS[match.group(2)]


def _env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    found = {}
    for key, value in environ.items():
        if key.upper().startswith("NIXGITOPS__"):
            found[tuple(part.lower() for part in key.split("__")[1:])] = value
    return found


BOOLEAN_KEYS = {"prune", "allow_rewind", "allow_empty", "suspend", "restrict_eval"}
INTEGER_KEYS = {"parallelism"}


def _coerce(key: str, text: str) -> Any:
    """An environment value read as the key's type: booleans and whole numbers where the key takes them."""
    lowered = text.strip().lower()
    if key in BOOLEAN_KEYS and lowered in ("true", "false"):
        return lowered == "true"
    if key in INTEGER_KEYS and re.fullmatch(r"-?\d+", text.strip()):
        return int(text)
    return text


def merge_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    deployments = data.setdefault("deployments", {})
    for path, value in _env_overrides(environ).items():
        if len(path) == 2:
            data.setdefault(path[0], {})[path[1]] = _coerce(path[1], value)
        elif len(path) >= 3 and path[0] == "deployments":
            wanted = path[1]
            name = next((n for n in deployments if n.lower().replace("-", "_") == wanted), wanted)
            target = deployments.setdefault(name, {})
            target = dict(target)
            deployments[name] = target
            for part in path[2:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = _coerce(path[-1], value)
    return data


def parse(data: Mapping[str, Any], path: Path) -> Config:
    """Build a ``Config`` from parsed TOML; every problem is a ``ConfigError`` naming the key and the file."""

    def where(key: str) -> str:
        return f"`{key}` in {path}"

    for table in data:
        if table not in ("controller", "deployments", "server", "receivers", "forges"):
            raise ConfigError(
                f"{where(table)} is not a known table; known: [controller], [server], [deployments.<name>],"
                " [receivers.<name>], [forges.<name>]."
            )
    controller = data.get("controller", {})
    if not isinstance(controller, dict):
        raise ConfigError(f"{where('controller')} must be a table.")
    unknown = set(controller) - {"data_dir", "committer_name", "committer_email"}
    if unknown:
        raise ConfigError(f"{where('controller.' + sorted(unknown)[0])} is not a known key.")
    data_dir = Path(controller.get("data_dir") or default_data_dir())
    identity = (
        str(controller.get("committer_name", "nixgitops")),
        str(controller.get("committer_email", "nixgitops@localhost")),
    )
    tables = data.get("deployments", {})
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(
            f"{path} must declare at least one deployment: a [deployments.<name>] table with `repository`."
        )
    deployments: dict[str, DeploymentConfig] = {}
    writers: dict[tuple[str, str], list[DeploymentConfig]] = {}
    for name, table in tables.items():
        deployment = _deployment(name, table, path, where)
        key = (deployment.state_url.rstrip("/"), deployment.state_branch)
        for other in writers.get(key, []):
            # deployments of distinct members of one repository may share a state branch: each writes only its
            # own directory, and takes the other's commits before it pushes (controller/reconciler.py)
            if _distinct_members(deployment, other):
                continue
            raise ConfigError(
                f"{where('deployments.' + name + '.state_branch')}: deployments {other.name!r} and {name!r} would"
                f" both write the state branch {deployment.state_branch!r} of {deployment.state_url}; give each its"
                ' own state_branch (for example "nixgitops/state-' + name + '"), or make each deploy its own'
                " `member` of the same repository."
            )
        writers.setdefault(key, []).append(deployment)
        deployments[name] = deployment
    server = _server(data.get("server", {}), where)
    receivers = _receivers(data.get("receivers", {}), deployments, where)
    forges = _forges(data.get("forges", {}), where)
    for name, deployment in deployments.items():
        prefix = f"deployments.{name}"
        if deployment.forge is not None and deployment.forge not in forges:
            known = ", ".join(sorted(forges)) or "none"
            raise ConfigError(f"{where(prefix + '.forge')}: no [forges.{deployment.forge}] is configured ({known}).")
        loose = not deployment.evaluation.restrict or deployment.evaluation.allowed_paths
        if deployment.previews_from_forks and deployment.flake is None and loose:
            raise ConfigError(
                f"{where(prefix + '.previews_from_forks')}: a fork's Nix code would be evaluated without Nix's"
                " restricted mode, or with paths outside the repository readable (restrict_eval = false,"
                " allowed_paths), and its plan shown on the pull request. Keep restricted evaluation for such a"
                " deployment, or leave previews_from_forks off."
            )
        for option in ("previews", "require_reviewed_plan"):
            if getattr(deployment, option) and deployment.forge is None:
                raise ConfigError(f"{where(prefix + '.' + option)} needs `forge`: the forge that shows the plans.")
    return Config(path, data_dir, identity, deployments, server, receivers, forges)


def _named_tables(
    tables: Any, section: str, keys: set[str], kinds: Sequence[str], where: Any
) -> Iterator[tuple[str, str, dict[str, Any], str]]:
    """Each ``[section.<name>]`` table, checked for its name, its keys and its ``kind``: (name, prefix, table, kind)."""
    if not isinstance(tables, dict):
        raise ConfigError(f"{where(section)} must be tables [{section}.<name>].")
    for name, table in tables.items():
        prefix = f"{section}.{name}"
        if not NAME.match(name) or not isinstance(table, dict):
            raise ConfigError(f"{where(prefix)} must be a table named with letters, digits, _ - .")
        unknown = set(table) - keys
        if unknown:
            raise ConfigError(f"{where(prefix + '.' + sorted(unknown)[0])} is not a known key.")
        kind = table.get("kind")
        if not isinstance(kind, str) or kind not in kinds:
            raise ConfigError(f"{where(prefix + '.kind')} must be one of {', '.join(kinds)}, not {kind!r}.")
        yield str(name), prefix, table, kind


def _forges(tables: Any, where: Any) -> dict[str, ForgeSettings]:
    forges = {}
    for name, prefix, table, kind in _named_tables(
        tables, "forges", {"kind", "api_url", "token_file"}, FORGE_KINDS, where
    ):
        api_url = table.get("api_url", DEFAULT_API_URLS.get(kind))
        if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"{where(prefix + '.api_url')} must be the forge's API address, such as https://gitlab.example.org"
                "/api/v4 (only GitHub has a default)."
            )
        token_file = table.get("token_file")
        if not isinstance(token_file, str) or not Path(token_file).is_file():
            raise ConfigError(f"{where(prefix + '.token_file')}: {token_file!r} is not a readable file.")
        forges[name] = ForgeSettings(name, kind, api_url.rstrip("/"), Path(token_file))
    return forges


def _server(table: Any, where: Any) -> ServerConfig:
    if not isinstance(table, dict) or set(table) - {"listen", "token_file"}:
        raise ConfigError(f"{where('server')} must be a table with `listen` and optionally `token_file`.")
    listen = table.get("listen", "127.0.0.1:8080")
    host, _, port = str(listen).rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'{where("server.listen")} must be HOST:PORT, such as "127.0.0.1:8080", not {listen!r}.')
    token_file = table.get("token_file")
    if token_file is not None and not Path(str(token_file)).is_file():
        raise ConfigError(f"{where('server.token_file')}: {token_file!r} is not a readable file.")
    return ServerConfig(host.strip("[]"), int(port), Path(token_file) if token_file else None)


def _receivers(tables: Any, deployments: Mapping[str, DeploymentConfig], where: Any) -> dict[str, ReceiverConfig]:
    from webhooks import KINDS

    receivers = {}
    keys = {"kind", "secret_file", "deployments"}
    for name, prefix, table, kind in _named_tables(tables, "receivers", keys, sorted(KINDS), where):
        secret_file = table.get("secret_file")
        try:
            secret = Path(str(secret_file)).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"{where(prefix + '.secret_file')}: cannot read {secret_file!r}: {exc.strerror}."
            ) from None
        if not secret:
            raise ConfigError(f"{where(prefix + '.secret_file')}: {secret_file!r} is empty.")
        names = table.get("deployments")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{where(prefix + '.deployments')} must list the deployments a push may trigger.")
        for n in names:
            if n not in deployments:
                raise ConfigError(f"{where(prefix + '.deployments')}: no deployment {n!r} is configured.")
        receivers[name] = ReceiverConfig(name, kind, secret, tuple(names))
    return receivers


KEYS = {
    "repository",
    "branch",
    "file",
    "state_repository",
    "state_branch",
    "interval",
    "jitter",
    "apply",
    "prune",
    "allow_rewind",
    "allow_empty",
    "suspend",
    "parallelism",
    "provider_timeout",
    "verify",
    "drift_interval",
    "evaluation_timeout",
    "evaluation_memory",
    "restrict_eval",
    "allowed_paths",
    "nix_path",
    "flake",
    "member",
    "forge",
    "previews",
    "previews_from_forks",
    "require_reviewed_plan",
    "nix_options",
    "build_timeout",
    "encryption",
    "previews_decrypt",
}


def _distinct_members(one: DeploymentConfig, other: DeploymentConfig) -> bool:
    """Whether two deployments deploy members of one repository that do not contain each other."""
    if one.member is None or other.member is None or one.repository.rstrip("/") != other.repository.rstrip("/"):
        return False
    return not paths.within(one.member, other.member) and not paths.within(other.member, one.member)


def _deployment(name: str, table: Any, path: Path, where: Any) -> DeploymentConfig:
    prefix = f"deployments.{name}"
    if not NAME.match(name) or ".." in name:
        raise ConfigError(f"{where(prefix)}: {name!r} is not a valid deployment name (letters, digits, _ - .).")
    if not isinstance(table, dict):
        raise ConfigError(f"{where(prefix)} must be a table.")
    for key in table:
        if key not in KEYS:
            raise ConfigError(f"{where(prefix + '.' + key)} is not a known key; known keys: {', '.join(sorted(KEYS))}.")

    def text(key: str, default: str | None) -> str | None:
        value = table.get(key, default)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where(prefix + '.' + key)} must be a non-empty string.")
        return value

    def flag(key: str, default: bool) -> bool:
        value = table.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{where(prefix + '.' + key)} must be true or false, not {value!r}.")
        return value

    for key in ("branch", "state_branch"):
        ref = table.get(key)
        if isinstance(ref, str) and not _valid_branch(ref):
            raise ConfigError(f"{where(prefix + '.' + key)}: {ref!r} is not a valid Git branch name.")
    repository = text("repository", None)
    if repository is None:
        raise ConfigError(f"{where(prefix + '.repository')} is required: a Git URL or a local path.")
    apply = text("apply", "auto")
    if apply not in ("auto", "plan-only"):
        raise ConfigError(f'{where(prefix + ".apply")} must be "auto" or "plan-only", not {apply!r}.')
    interval = duration(table.get("interval", "1m"), where(prefix + ".interval"))
    jitter = duration(table["jitter"], where(prefix + ".jitter")) if "jitter" in table else interval / 10
    parallelism = table.get("parallelism", 8)
    if not isinstance(parallelism, int) or isinstance(parallelism, bool) or parallelism < 1:
        raise ConfigError(f"{where(prefix + '.parallelism')} must be a whole number of at least 1.")
    verify = None
    if "verify" in table:
        v = table["verify"]
        if not isinstance(v, dict) or set(v) - {"allowed_signers", "gpg_home"} or len(v) != 1:
            raise ConfigError(
                f"{where(prefix + '.verify')} must be a table with exactly one of `allowed_signers` (an SSH"
                " allowed-signers file) or `gpg_home` (a GnuPG home directory holding the trusted keys)."
            )
        key, value = next(iter(v.items()))
        if not isinstance(value, str) or not Path(value).exists():
            raise ConfigError(f"{where(prefix + '.verify.' + key)}: {value!r} does not exist.")
        verify = Verification(**{key: Path(value)})
    allowed = table.get("allowed_paths", [])
    if isinstance(allowed, str):  # from the environment: separated by ':'
        allowed = [p for p in allowed.split(":") if p]
    if not isinstance(allowed, list) or not all(isinstance(p, str) and Path(p).is_absolute() for p in allowed):
        raise ConfigError(f"{where(prefix + '.allowed_paths')} must be a list of absolute paths.")
    nix_path = table.get("nix_path", [])
    if isinstance(nix_path, str):  # from the environment: separated by ':'
        nix_path = [p for p in nix_path.split(":") if p]
    if not isinstance(nix_path, list) or not all(
        isinstance(e, str) and (Path(e.partition("=")[2] or e).is_absolute()) for e in nix_path
    ):
        raise ConfigError(
            f"{where(prefix + '.nix_path')} must be a list of search-path entries such as"
            ' "nixpkgs=/srv/nixpkgs" (absolute paths).'
        )
    evaluation = EvalLimits(
        timeout=duration(table.get("evaluation_timeout", "5m"), where(prefix + ".evaluation_timeout")),
        memory=size(table.get("evaluation_memory", "2GiB"), where(prefix + ".evaluation_memory")),
        restrict=flag("restrict_eval", True),
        allowed_paths=tuple(allowed),
        nix_path=tuple(nix_path),
    )
    options = table.get("nix_options", {})
    if not isinstance(options, dict) or not all(
        isinstance(v, str | bool | int) and not isinstance(v, float) for v in options.values()
    ):
        raise ConfigError(
            f"{where(prefix + '.nix_options')} must be a table of Nix settings, such as"
            ' { substituters = "https://cache.example.org", require-sigs = true }.'
        )
    flake = text("flake", None)
    if flake is not None and ("file" in table or "#" in flake):
        raise ConfigError(
            f"{where(prefix + '.flake')}: give either `flake` (the attribute of the repository's flake output, such"
            ' as "nixgitops") or `file`, not both, and no "#".'
        )
    ignored = [k for k in ("nix_path", "allowed_paths", "restrict_eval") if k in table]
    if flake is not None and ignored:
        raise ConfigError(
            f"{where(prefix + '.' + ignored[0])} has no effect with `flake`: a flake is evaluated purely, and reads"
            " only its own files and the inputs its flake.lock pins. Make what it needs a flake input."
        )
    member = text("member", None)
    if member is not None:
        try:
            member = paths.render(paths.parse(member))
        except UserError as exc:
            raise ConfigError(f"{where(prefix + '.member')}: {exc}") from None
        if not member:
            raise ConfigError(f"{where(prefix + '.member')} is empty; leave it out to deploy every member.")
    encryption = _encryption(table.get("encryption", {}), prefix + ".encryption", where)
    nix = NixSettings(
        options=tuple((k, _nix_value(v)) for k, v in options.items()),
        build_timeout=duration(table.get("build_timeout", "30m"), where(prefix + ".build_timeout")),
    )
    return DeploymentConfig(
        name=name,
        repository=repository,
        branch=text("branch", "main") or "main",
        file=text("file", "deployment.nix") or "deployment.nix",
        state_repository=text("state_repository", None),
        state_branch=text("state_branch", "nixgitops/state") or "nixgitops/state",
        interval=interval,
        jitter=jitter,
        apply=apply,
        prune=flag("prune", True),
        allow_rewind=flag("allow_rewind", False),
        allow_empty=flag("allow_empty", False),
        suspend=flag("suspend", False),
        parallelism=parallelism,
        provider_timeout=duration(table.get("provider_timeout", "5m"), where(prefix + ".provider_timeout")),
        verify=verify,
        drift_interval=(
            None
            if table.get("drift_interval") in ("off", False)
            else duration(table.get("drift_interval", "10m"), where(prefix + ".drift_interval"))
        ),
        evaluation=evaluation,
        flake=flake,
        nix=nix,
        member=member,
        forge=text("forge", None),
        previews=flag("previews", False),
        previews_from_forks=flag("previews_from_forks", False),
        require_reviewed_plan=flag("require_reviewed_plan", False),
        encryption=encryption,
        previews_decrypt=flag("previews_decrypt", False),
    )


def _encryption(table: Any, prefix: str, where: Any) -> Encryption:
    """``[deployments.NAME.encryption]``: recipients, identity_file (one path or a list), enforced."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where(prefix)} must be a table with recipients, identity_file and enforced.")
    unknown = sorted(set(table) - {"recipients", "identity_file", "enforced"})
    if unknown:
        raise ConfigError(
            f"{where(prefix + '.' + unknown[0])} is not a known key; known keys: enforced, identity_file, recipients."
        )
    recipients = table.get("recipients", [])
    if not isinstance(recipients, list) or not all(isinstance(r, str) and r.strip() for r in recipients):
        raise ConfigError(f"{where(prefix + '.recipients')} must be a list of age or SSH public keys.")
    try:
        for recipient in recipients:
            parse_recipient(recipient, where(prefix + ".recipients"))
    except SecretsError as exc:
        raise ConfigError(str(exc)) from None
    files = table.get("identity_file", [])
    files = [files] if isinstance(files, str) else files
    if not isinstance(files, list) or not all(isinstance(f, str) and Path(f).is_absolute() for f in files):
        raise ConfigError(f"{where(prefix + '.identity_file')} must be an absolute path (or a list of them).")
    for f in files:
        if not Path(f).is_file():
            raise ConfigError(f"{where(prefix + '.identity_file')}: {f!r} does not exist or is not a file.")
    enforced = table.get("enforced", False)
    if not isinstance(enforced, bool):
        raise ConfigError(f"{where(prefix + '.enforced')} must be true or false, not {enforced!r}.")
    return Encryption(
        recipients=tuple(r.strip() for r in recipients),
        identity_files=tuple(Path(f) for f in files),
        enforced=enforced,
        where=where(prefix + ".recipients"),
        identity_hint=f"set identity_file in {where(prefix)}",
    )


def _nix_value(value: str | bool | int) -> str:
    """A setting's value as Nix's ``--option`` takes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _valid_branch(name: str) -> bool:
    """Git's rules for a branch name (git check-ref-format), for the cases that matter in a config."""
    if not name or name.startswith(("-", "/")) or name.endswith(("/", ".", ".lock")):
        return False
    if ".." in name or "//" in name or "@{" in name or name == "@":
        return False
    return not any(c in name for c in " ~^:?*[\\\x7f") and all(ord(c) >= 32 for c in name)


def load(path: Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the configuration file, with environment overrides."""
    try:
        raw = path.read_text()
    except OSError as exc:
        raise ConfigError(f"Cannot read the configuration file {path}: {exc.strerror}.") from None
    try:
        data = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None
    return parse(merge_environment(data, os.environ if environ is None else environ), path)
