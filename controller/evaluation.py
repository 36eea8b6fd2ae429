"""Evaluation: run the Nix harness over a deployment and turn its answer into desired resources.

One ``nix-instantiate`` process per pass evaluates every selected resource. Outputs that are not final yet are
unknown: a field that reads one is reported as ``UNKNOWN`` (and which resource it waited for), instead of
failing the whole evaluation. A user's own ``throw`` or ``assert`` is re-evaluated without error handling so
that the error shows Nix's own message and location.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from controller import flakes, paths
from controller.errors import DeploymentError, EvaluationError
from controller.model import (
    LOCAL_PROVIDER,
    LOCAL_RESOURCE_TYPES,
    UNKNOWN,
    DesiredResource,
    EvalLimits,
    KnownOutputs,
    NixSettings,
    ProviderSpec,
)
from controller.nix_repl import NeedsStore, NixRepl, ReplTimeout, ReplUnavailable
from controller.nixcli import FLAKES, common_options
from controller.processes import KEPT_LIMIT, CommandFailed, run
from controller.sealing import scratch_wrap
from controller.sensitive import HARNESS_KEY, Wrap, harness_default, redact, remember, unwrap_harness

NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_'-]*$")
PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_'-]*(?:\.[A-Za-z_][A-Za-z0-9_'-]*)*$")  # a dotted path of names
_MARK = "trace: nixgitops:"
MARKERS = {  # what the harness puts in place of values JSON cannot carry exactly, and what to tell the user
    "__nixgitopsFunction": "is a function. Inputs are sent to the provider as JSON, so they may hold only strings,"
    " numbers, booleans, null, lists and attribute sets.",
    "__nixgitopsFloat": "is a floating-point number that Nix cannot write to JSON exactly (it keeps 6 significant"
    " digits). Write it as a string or an integer.",
}


def nix_options(limits: EvalLimits, roots: Iterable[Path]) -> list[str]:
    """The command-line options that apply ``limits`` to a Nix evaluation that may read ``roots``."""
    if not limits.restrict:
        return []
    # no search path but ours: NIX_PATH entries would be readable in restricted mode
    options = ["--option", "restrict-eval", "true", "--option", "allowed-uris", "", "--option", "nix-path", ""]
    options += ["--option", "allow-import-from-derivation", "false"]
    for root in [*roots, harness_path().parent, *limits.allowed_paths]:
        options += ["-I", str(root)]
    for entry in limits.nix_path:  # `<name>` finds these, and what they name may be read
        options += ["-I", entry]
    return options


def limited(argv: list[str], memory: int) -> list[str]:
    """``argv`` run with its address space limited to ``memory`` bytes (through the shell's ulimit: no
    pre-exec hook, which is unsafe in a threaded process), or to the hard limit already set, if lower."""
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        memory = min(memory, hard)
    return ["sh", "-c", 'ulimit -v "$0" && exec "$@"', str(max(1, memory // 1024)), *argv]


class LimitError(EvaluationError):
    """An evaluation hit its time or memory limit."""


def limit_error(text: str, limits: EvalLimits, where: str) -> EvaluationError | None:
    """The error to give when Nix failed because it hit the memory limit (None when it did not)."""
    if "out of memory" not in text and "std::bad_alloc" not in text:
        return None
    return LimitError(
        f"Evaluating {where} ran out of memory: it may use at most {limits.memory // 1024**2} MiB"
        " (evaluation_memory). Look for an evaluation that grows without end (a huge builtins.genList, a"
        " recursion that builds lists), or raise the limit."
    )


def timeout_error(limits: EvalLimits, where: str) -> EvaluationError:
    return LimitError(
        f"Evaluating {where} did not finish within {limits.timeout:g} s (evaluation_timeout) and was stopped."
        " Look for an evaluation that never ends (a recursion without a base case), or raise the limit."
    )


@dataclass(frozen=True)
class Evaluation:
    """The answer of one evaluation pass."""

    resources: dict[str, DesiredResource]
    providers: dict[str, ProviderSpec]
    structural: dict[str, frozenset[str]] = field(default_factory=dict)
    """Members whose kind or set of members reads outputs not known yet (NixOps4's structural dependencies),
    each with the resources it waits for: what they hold is known only after those are applied."""
    root: bool = False
    """The deployment is a NixOps4 root: its providers are only those its resources name."""

    @property
    def dependencies(self) -> dict[str, frozenset[str]]:
        """For each evaluated resource, the resources whose outputs its inputs read."""
        return {p: r.reads for p, r in self.resources.items()}


def harness_path() -> Path:
    return Path(str(importlib_resources.files("controller") / "nix" / "harness.nix"))


def local_provider_spec() -> ProviderSpec:
    """The built-in provider: this package's own executable, run through the same protocol as any other."""
    import sys

    return ProviderSpec(
        LOCAL_PROVIDER,
        sys.executable,
        ("-m", "controller.local_provider"),
        frozenset(LOCAL_RESOURCE_TYPES),
        builtin=True,
    )


KNOWN_ATTRIBUTES = {"resource": ("type", "inputs", "lifecycle", "state"), "composite": ("members",)}


@dataclass
class _Traces:
    """What the harness's markers on stderr say: which resources each resource's evaluation read."""

    reads: dict[str, set[str]] = field(default_factory=dict)
    """Every resource whose outputs were forced during the resource's evaluation (first forces of known outputs,
    and every read of an unknown one)."""
    unknown: dict[str, set[str]] = field(default_factory=dict)
    """The resources whose unknown outputs the resource read (what it waits for)."""
    user_errors: list[tuple[str, str]] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


_DONE, _READ, _UNKNOWN, _BLOCKED = (f"{_MARK}{k} " for k in ("done", "read", "unknown", "blocked"))
_START = f"{_MARK}start"
_SENSITIVE = f"{_MARK}sensitive "


def parse_traces(stderr: str) -> _Traces:
    """Attribute the harness's markers to resources: the reads traced since the previous marker belong to the
    resource whose end marker (``done P``) comes next; those before ``start`` to nobody. A field that failed
    without reading an unknown output failed by the deployment's own ``throw`` or ``assert``. (Markers are tested
    most frequent first: a plan of 10,000 resources reads 10,000 to 30,000 of them.)"""
    traces = _Traces()
    reads: set[str] = set()
    unknown: set[str] = set()
    failed: list[str] = []
    pending = False  # an unknown output was read since the last failed field
    for line in stderr.splitlines():
        if line.startswith(_DONE):  # most resources read nothing: nothing is allocated for them
            path = line[len(_DONE) :]
            if reads:
                traces.reads[path], reads = reads, set()
            if unknown:
                traces.unknown[path], unknown = unknown, set()
            if failed:
                traces.user_errors.extend((path, f) for f in failed)
                failed = []
            pending = False
        elif line.startswith(_READ):
            reads.add(line[len(_READ) :])
        elif line.startswith(_UNKNOWN):
            source = line[len(_UNKNOWN) :]
            reads.add(source)
            unknown.add(source)
            pending = True
        elif line.startswith(_BLOCKED):
            if not pending:
                failed.append(line[len(_BLOCKED) :])
            pending = False
        elif line == _START:
            reads, unknown, failed, pending = set(), set(), [], False
        elif line.startswith(_SENSITIVE):  # (controller/nix/sensitive.nix: a value to redact from everything else)
            with contextlib.suppress(ValueError):
                remember(json.loads(line[len(_SENSITIVE) :]))
        elif line.strip() and not line.startswith(_MARK):
            traces.other.append(line)
    return traces


class _Untag:
    """Resource paths from their taint (the harness strips the fake store path's prefix); a path with characters a
    store path may not hold goes by its SHA-1 (``h=<hex>``), found among the ``known`` paths (hashed once)."""

    def __init__(self, known: Iterable[str]) -> None:
        self._known = known
        self._digests: dict[str, str] | None = None

    def __call__(self, key: str) -> str:
        if key.startswith("h="):
            if self._digests is None:
                self._digests = {hashlib.sha1(p.encode()).hexdigest(): p for p in self._known}
            return self._digests.get(key[2:], key)
        return key.replace("?", "'") if "?" in key else key


class NixEvaluator:
    """Evaluates one deployment entry file with the real ``nix-instantiate``."""

    def __init__(
        self,
        entry_file: Path,
        *,
        source: str | None = None,
        show_trace: bool = False,
        log: Callable[[str], None] | None = None,
        nix_instantiate: str = "nix-instantiate",
        limits: EvalLimits | None = None,
        root: Path | None = None,
        nix: NixSettings | None = None,
        flake: flakes.Flake | None = None,
        member: str | None = None,
    ) -> None:
        """``flake``: evaluate this flake's output, purely (``entry_file`` then only names its flake.nix).
        ``member``: a member path; only the resources under it are evaluated (see ``controller.paths``)."""
        self.flake = flake
        self.member = member
        self._locked: str | None = None  # the flake's locked reference, once asked
        self.entry_file = entry_file.resolve()
        self.limits = limits or EvalLimits()
        self.nix = nix or NixSettings()
        self.root = (root or self.entry_file.parent).resolve()  # what the deployment may read, when restricted
        self.source = source
        self.show_trace = show_trace
        self.log = log
        self.nix_instantiate = nix_instantiate
        self.passes = 0
        self._checked_types: set[str] = set()  # resource types already found served by a declared provider
        self._persistent = False  # within session(): selective passes go to one `nix repl` ...
        self._repl: NixRepl | None = None  # ... started at the first of them
        self._writable = False  # within session(writable=True): the repl writes derivations to the store
        self._evaluating = threading.Lock()
        self.taint = True  # string context as taint in nix-instantiate passes, until the deployment refuses it
        self._private_store = False  # the repl needs a store of its own (see NixRepl's private_store)
        self.wrap: Wrap = scratch_wrap
        """Makes a sensitive value of the deployment ``Sensitive`` (the engine sets its deployment's sealer's)."""

    @contextlib.contextmanager
    def session(self, *, writable: bool = False) -> Iterator[None]:
        """Within this block, passes that evaluate selected resources (those of apply, after each settle) run in
        one persistent ``nix repl`` instead of a ``nix-instantiate`` each; see controller/nix_repl.py. With
        ``writable``, those passes write the derivations they evaluate to the store, to be built."""
        self._persistent = True
        self._writable = writable
        try:
            yield
        finally:
            self._persistent = False
            self._writable = False
            if self._repl is not None:
                self._repl.close()
                self._repl = None

    def _close_repl(self) -> None:
        if self._repl is not None:
            self._repl.close()
            self._repl = None

    def _fall_back(self, why: Exception) -> None:
        """Leave the persistent evaluator for the rest of the session: every pass is a ``nix-instantiate``."""
        if self.log is not None:
            self.log(f"evaluating with nix-instantiate from now on: {str(why).splitlines()[0]}")
        self._persistent = False
        if self._repl is not None:
            self._repl.close()
            self._repl = None

    @property
    def where(self) -> str:
        what = f"the flake output {self.flake}" if self.flake is not None else f"{self.entry_file}"
        return what + (f" (commit {self.source})" if self.source else "")

    def evaluate(
        self,
        known: Mapping[str, Mapping[str, Any]],
        *,
        select: Iterable[str] | None = None,
        writable: bool = False,
    ) -> Evaluation:
        """Evaluate the selected resources (all when ``select`` is None), with ``known`` outputs final. Each
        resource comes with the resources its inputs read (``DesiredResource.reads``) and the store paths they
        refer to (``DesiredResource.needs``). A ``writable`` pass writes the derivations it evaluates to the store
        (to be built); others only compute their paths."""
        with self._evaluating:  # one pass at a time: apply's operations may ask for a writable pass
            return self._evaluate(known, select, writable)

    def _evaluate(
        self, known: Mapping[str, Mapping[str, Any]], select: Iterable[str] | None, writable: bool
    ) -> Evaluation:
        if self.flake is None and not self.entry_file.is_file():
            raise EvaluationError(
                f"The deployment entry file {self.entry_file} does not exist. Create it, or point --dir/--file at it."
            )
        args = {
            "deployment": None if self.flake is not None else str(self.entry_file),
            "system": _system(),
            "known": known if isinstance(known, KnownOutputs) else dict(known),
            "select": None if select is None else [list(paths.parse(p)) for p in sorted(select)],
            "member": None if self.member is None else list(paths.parse(self.member)),
            "taint": False,
            "focus": None,
        }
        answer, traces = self._run(
            args,
            persistent=select is not None and self._persistent and (not writable or self._writable) and not self.flake,
            writable=writable,
        )
        if traces.user_errors:
            path, fieldname = traces.user_errors[0]
            at = None
            for item in answer.get("resources", []):
                if item["p"] == path and isinstance(item.get("i"), dict):
                    at = item["i"].get(fieldname, {}).get("at")
            self._explain_user_error(args, path, fieldname, at)
        for key, wanted in (("members", "set"), ("providers", "set")):
            found = answer.get("shape", {}).get(key, "set")
            if found != wanted:
                raise DeploymentError(f"`{key}` in {self.where} must be an attribute set, not a {found}.")
        extra = answer.get("shape", {}).get("extra", [])
        if extra:
            raise DeploymentError(
                f"{self.where} has {_names(extra)} at its top level, which nixgitops does not know: a deployment"
                " is a function (or an attribute set) with `members` and optionally `providers`."
                + _suggest(extra[0], ("members", "providers"))
                + (
                    " This looks like a flake: point nixgitops at the file that declares the members."
                    if {"outputs", "inputs"} & set(extra)
                    else ""
                )
            )
        providers = self._providers(answer.get("providers", {}))
        self._checked_types = set()
        resources: dict[str, DesiredResource] = {}
        structural: dict[str, frozenset[str]] = {}
        nothing: frozenset[str] = frozenset()
        untag = _Untag(known)
        for item in answer.get("resources", []):
            path = item["p"]
            if item["k"] == "structural":
                waits = frozenset(traces.unknown.get(path, ()))
                if not waits:
                    raise DeploymentError(
                        f"member {path!r} in {self.where}: computing whether it is a resource or which members it"
                        " has failed with a `throw` or `assert`. Evaluate it with `nix eval` to see the error."
                    )
                structural[path] = waits
                continue
            traced, tags = traces.reads.get(path), item.get("r")
            reads = nothing
            if traced or tags:
                reads = frozenset((traced or set()).union(untag(k) for k in tags or ()) - {path})
            blocked = frozenset(traces.unknown[path]) if path in traces.unknown else nothing
            desired = self._resource(item, providers, blocked, reads, answer.get("markers", True))
            if item.get("s"):
                desired = replace(desired, needs=frozenset(item["s"]))
            if "sl" in item or "st" in item or providers[desired.provider].stateless_types:
                desired = self._statefulness(item, desired, providers)
            if item.get("so") or providers[desired.provider].sensitive_outputs or answer.get("sensitive"):
                desired = self._sensitivity(item, desired, providers, bool(answer.get("sensitive")))
            resources[desired.path] = desired
        for line in traces.other:  # (after the inputs: the sensitive values they hold are redacted)
            if self.log is not None:
                self.log(redact(line))
        if answer.get("tainted") and (traces.reads or any(r.reads for r in resources.values())):
            resources = self._untainted(args, resources)
        root = bool(answer.get("shape", {}).get("root"))
        return Evaluation(resources, providers, structural, root)

    def _untainted(self, args: dict[str, Any], resources: dict[str, DesiredResource]) -> dict[str, DesiredResource]:
        """The values of the resources that refer to a derivation, from a pass without taint, when the pass read
        outputs: an output's taint (a fake store path in its strings) that reached a derivation would have become
        part of it, changing its path, and would leave no trace in the resource's own context (a derivation's
        output does not carry its inputs' context). Their edges are those of both passes."""
        redo = {p for p, r in resources.items() if any(".drv" in n for n in r.needs)}
        if not redo:
            return resources
        answer, traces = self._run(dict(args, select=[list(paths.parse(p)) for p in sorted(redo)]), taint=False)
        providers = self._providers(answer.get("providers", {}))
        for item in answer.get("resources", []):
            path = item["p"]
            old = resources[path]
            reads = frozenset(traces.reads.get(path, set())) | old.reads
            blocked = frozenset(traces.unknown.get(path, set()))
            desired = self._resource(item, providers, blocked, reads - {path}, answer.get("markers", True))
            desired = self._statefulness(item, desired, providers)
            desired = self._sensitivity(item, desired, providers, bool(answer.get("sensitive")))
            resources[path] = replace(desired, needs=frozenset(item.get("s") or ()))
        return resources

    # -- running Nix ---------------------------------------------------------------------------------------

    def _run(
        self, args: dict[str, Any], *, persistent: bool = False, writable: bool = False, taint: bool = True
    ) -> tuple[Any, _Traces]:
        self.passes += 1
        if persistent:
            try:
                return self._run_in_repl(args)
            except NeedsStore as exc:
                if self._writable or self._private_store:
                    self._fall_back(exc)
                else:  # (`sensitive` writes a small file: a repl with a store of its own can, dummy:// cannot)
                    self._private_store = True
                    self._close_repl()
                    self.passes -= 1  # (the same pass, again)
                    return self._run(args, persistent=True, writable=writable, taint=taint)
            except ReplUnavailable as exc:
                self._fall_back(exc)
        if writable or not taint or not self.taint or args.get("focus") is not None:
            return self._instantiate(args, writable=writable)  # (taint needs a read-only store: see harness.nix)
        try:
            answer, traces = self._instantiate(dict(args, taint=True))
            if isinstance(answer, dict):
                answer["tainted"] = True
            return answer, traces
        except EvaluationError as exc:
            if isinstance(exc, LimitError):
                raise
            tainted = exc
        # Nix refuses a string with context in places (fromJSON, attribute names, paths): without taint, either it
        # works (and taint stays off) or the error is the deployment's own, reported as it is.
        answer = self._instantiate(args)
        self.taint = False
        if self.log is not None:
            first = str(tainted).splitlines()[1:2] or [""]
            self.log(
                "the deployment uses an output where Nix refuses a string with context (builtins.fromJSON, an"
                " attribute name, a path): dependency edges come from traced reads only (see docs/decisions.md)"
                f" [{first[0].strip()}]"
            )
        return answer

    def _instantiate(self, args: dict[str, Any], *, writable: bool = False) -> tuple[Any, _Traces]:
        """One pass with ``nix-instantiate``; ``writable``: derivations it evaluates are written to the store."""
        known = args["known"]
        if isinstance(known, KnownOutputs):
            args = dict(args, known=known.snapshot())
        private = tempfile.mkdtemp(prefix="nixgitops-eval-")  # readable by Nix in restricted mode, and only this
        name = os.path.join(private, "args.json")
        try:
            with open(name, "w") as f:
                f.write(json.dumps(args, separators=(",", ":"), check_circular=False, default=harness_default))
            if self.flake is not None:  # pure: the harness and its arguments come through the store
                shutil.copyfile(harness_path(), os.path.join(private, "harness.nix"))
                shutil.copyfile(harness_path().with_name("sensitive.nix"), os.path.join(private, "sensitive.nix"))
                expression = flakes.bootstrap(Path(private), self._lock(), self.flake.attribute)
                entry = [*FLAKES, "--option", "pure-eval", "true", *_NO_IFD, "-E", expression]
            else:
                entry = [*nix_options(self.limits, [self.root, Path(private)]), str(harness_path())]
                entry += ["--argstr", "argsFile", name]
            argv = [
                self.nix_instantiate,
                "--eval",
                "--strict",
                "--json",
                "--read-write-mode" if writable else "--readonly-mode",
                *common_options(self.nix),
                *(["--show-trace"] if self.show_trace else []),
                *entry,
            ]
            try:
                done = run(
                    limited(argv, self.limits.memory),
                    cwd=str(self.entry_file.parent),
                    check=False,
                    timeout=self.limits.timeout,
                    keep_stderr=_MARK,  # the markers; of the rest, the end
                )
            except CommandFailed as exc:
                if exc.returncode is None and "did not finish" in str(exc):
                    raise timeout_error(self.limits, self.where) from None
                raise EvaluationError(
                    f"Cannot run {self.nix_instantiate}: {exc}. Install Nix (on Debian: apt-get install nix-bin)."
                ) from None
        finally:
            shutil.rmtree(private, ignore_errors=True)
        traces = parse_traces(done.stderr)
        if done.returncode == 127 and "not found" in done.stderr:  # from the shell of `limited`: no such program
            raise EvaluationError(
                f"Cannot run {self.nix_instantiate}: it is not installed or not on PATH. Install Nix (on Debian:"
                " apt-get install nix-bin)."
            )
        if done.returncode != 0 and (error := limit_error(done.stderr, self.limits, self.where)) is not None:
            raise error
        if "(nixgitops stopped the command (SIGKILL)" in done.stderr:
            raise LimitError(
                f"Evaluating {self.where} was stopped: the deployment printed more than {KEPT_LIMIT // 1024**2} MiB"
                " of lines that look like nixgitops's own markers (`trace: nixgitops:`). Remove those traces."
            )
        if done.returncode < 0 or done.returncode > 128:
            signal_number = -done.returncode if done.returncode < 0 else done.returncode - 128
            raise EvaluationError(
                f"Nix crashed (signal {signal_number}) evaluating {self.where}:\n" + "\n".join(_clean(traces.other))
            )
        if done.returncode != 0:
            raise EvaluationError(
                f"Nix could not evaluate {self.where}:\n"
                + "\n".join(_clean(traces.other))
                + _hint(done.stderr)
                + self._member_hint(done.stderr)
            )
        return _decode(done.stdout), traces

    def _lock(self) -> str:
        """The flake's locked reference, asked of Nix once per evaluator (its flake.lock must be up to date)."""
        if self._locked is None:
            assert self.flake is not None
            self._locked = flakes.lock(self.flake, self.nix, timeout=self.limits.timeout)
        return self._locked

    def _run_in_repl(self, args: dict[str, Any]) -> tuple[Any, _Traces]:
        if self._repl is None:
            self._repl = NixRepl(
                harness_path(),
                cwd=str(self.entry_file.parent),
                show_trace=self.show_trace,
                timeout=self.limits.timeout,
                wrap=lambda argv, scratch: limited(
                    [*argv, *nix_options(self.limits, [self.root, scratch])], self.limits.memory
                ),
                store=common_options(self.nix) if self._writable else None,
                private_store=self._private_store,
            )
        try:
            text, printed = self._repl.evaluate({k: v for k, v in args.items() if k != "known"}, args["known"])
        except ReplTimeout:
            self._repl.close(kill=True)
            self._repl = None  # the next pass starts a new repl
            raise timeout_error(self.limits, self.where) from None
        except (NeedsStore, ReplUnavailable):
            raise
        except EvaluationError as exc:
            if (error := limit_error(str(exc), self.limits, self.where)) is not None:
                raise error from None
            traces = parse_traces(str(exc))
            raise EvaluationError(
                f"Nix could not evaluate {self.where}:\n"
                + "\n".join(_clean(traces.other))
                + _hint(str(exc))
                + self._member_hint(str(exc))
            ) from None
        return _decode(text), parse_traces("\n".join(printed))

    def _member_hint(self, text: str) -> str:
        """What to do when the member path given names no member (the harness's lookup failed)."""
        if self.member is None or not any(f"attribute '{n}' missing" in text for n in paths.parse(self.member)):
            return ""
        return (
            f"\nThe member path {self.member!r} names no member of the deployment: check each name (one that is not"
            ' an identifier is written in double quotes, a."file.txt"), or plan without a path to see every member.'
        )

    def _explain_user_error(self, args: dict[str, Any], path: str, fieldname: str, at: str | None) -> None:
        focus = dict(args, focus={"path": list(paths.parse(path))}, select=None, taint=False)
        where = f"at {at}" if at else f"in {self.where}"
        what = f"The inputs of resource {path!r}" if fieldname == "*" else f"Input {fieldname!r} of resource {path!r}"
        try:
            self._run(focus)
        except EvaluationError as exc:
            raise EvaluationError(f"{what} {where} failed to evaluate:\n" + str(exc).split("\n", 1)[-1]) from None
        raise EvaluationError(
            f"Input {fieldname!r} of resource {path!r} in {self.where} failed with a `throw` or `assert`"
            " that only fires while other outputs are unknown; check the conditions around it."
        )

    # -- checking the answer -------------------------------------------------------------------------------

    def _providers(self, declared: Mapping[str, Any]) -> dict[str, ProviderSpec]:
        providers = {LOCAL_PROVIDER: local_provider_spec()}
        for name, p in declared.items():
            where = f"providers.{name} in {self.entry_file}"
            if name == LOCAL_PROVIDER:
                raise DeploymentError(f"{where}: 'local' is built in and cannot be redeclared; use another name.")
            if not NAME.match(name):
                raise DeploymentError(f"{where}: a provider name must be a plain identifier (letters, digits, _).")
            if "invalid" in p:
                raise DeploymentError(
                    f"{where} must be an attribute set {{ executable; args; resourceTypes; }}, not a {p['invalid']}."
                )
            if "conflict" in p:
                raise DeploymentError(
                    f"{self.where}: two different provider commands are both named {name!r} (after their"
                    f" executable): {', '.join(p['conflict'])}. Give one of them another file name."
                )
            if p.get("kind", "stdio") != "stdio":
                raise DeploymentError(f"{where}: provider type {p['kind']!r} is not known; only 'stdio' is.")
            exe, argv, types = p.get("executable"), p.get("args"), p.get("resourceTypes")
            if not isinstance(exe, str) or not exe:
                raise DeploymentError(f"{where}: `executable` must be a path or a string naming the program.")
            if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
                raise DeploymentError(f"{where}: `args` must be a list of strings.")
            if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
                raise DeploymentError(
                    f"{where}: `resourceTypes` must be a non-empty list of strings (the types it serves), or an"
                    " attribute set of types as NixOps4 writes it ({ file.requireState = false; })."
                )
            hidden = p.get("sensitive") or {}
            if not all(isinstance(v, list) and all(isinstance(n, str) for n in v) for v in hidden.values()):
                raise DeploymentError(f"{where}: `sensitiveOutputs` of a resource type must be a list of output names.")
            providers[name] = ProviderSpec(
                name,
                exe,
                tuple(argv),
                frozenset(types),
                needs=frozenset(p.get("s") or ()),
                stateless_types=frozenset(p.get("stateless") or ()),
                sensitive_outputs=tuple((t, tuple(sorted(v))) for t, v in sorted(hidden.items()) if v),
            )
        return providers

    def _statefulness(
        self, item: Mapping[str, Any], desired: DesiredResource, providers: Mapping[str, ProviderSpec]
    ) -> DesiredResource:
        """Whether the resource keeps state, as NixOps4 decides it: a NixOps4 root's resource without ``state`` does
        not; in deployment.nix, one whose type is declared ``requireState = false`` and that names no ``state``."""
        handler = item.get("st")
        if handler is not None and handler.startswith("<"):
            raise DeploymentError(
                f"member {desired.path!r} in {self.where}: `state` must name the resource that keeps its state"
                f" (state = members.x;), not a {handler.strip('<>')}."
            )
        if "sl" in item:
            stateless = bool(item["sl"])
        else:
            spec = providers.get(desired.provider)
            stateless = handler is None and spec is not None and desired.resource_type in spec.stateless_types
        if not stateless and handler is None:
            return desired
        return replace(desired, stateless=stateless, state_handler=handler)

    def _sensitivity(
        self, item: Mapping[str, Any], desired: DesiredResource, providers: Mapping[str, ProviderSpec], marked: bool
    ) -> DesiredResource:
        """The resource with its sensitive inputs made ``Sensitive`` (``marked``: the answer holds some) and the
        outputs it hides: its type's and ``lifecycle.sensitiveOutputs``."""
        extra = item.get("so") or []
        if not isinstance(extra, list) or not all(isinstance(n, str) for n in extra):
            raise DeploymentError(
                f"member {desired.path!r} in {self.where}: lifecycle.sensitiveOutputs must be a list of output names."
            )
        spec = providers.get(desired.provider)
        names = frozenset(extra) | (spec.sensitive_for(desired.resource_type) if spec is not None else frozenset())
        inputs = unwrap_harness(dict(desired.inputs), self.wrap) if marked else desired.inputs
        return replace(desired, inputs=inputs, sensitive_outputs=names)

    def _resource(
        self,
        item: Mapping[str, Any],
        providers: Mapping[str, ProviderSpec],
        blocked: frozenset[str],
        reads: frozenset[str],
        markers: bool = True,
    ) -> DesiredResource:
        path: str = item["p"]
        where = f"member {path!r} in {self.where}"
        if item.get("x"):
            kind = "resource" if item["k"] == "resource" else "composite"
            known = KNOWN_ATTRIBUTES[kind]
            first = item["x"][0]
            raise DeploymentError(
                f"{where} has {_names(item['x'])}, which nixgitops does not know: a {kind} has only"
                f" {_names(known)}{' (and lifecycle.preventDestroy)' if kind == 'resource' else ''}."
                + _suggest(first.removeprefix("lifecycle."), ("preventDestroy",) if "." in first else known)
            )
        if item["k"] == "resource" and item.get("t") in self._checked_types and PATH.match(path):
            return self._inputs(item, where, blocked, reads, markers)  # the common case, checked quickly
        kind = item["k"]
        if kind != "resource":
            if kind == "empty":
                why = "has neither `type` (a resource) nor `members` (a composite)"
            elif kind.startswith("composite-"):
                why = f"has `members` that is a {kind.removeprefix('composite-')}, not an attribute set"
            else:
                why = f"is a {kind}; a member must be an attribute set with `type` and `inputs`, or `members`"
            raise DeploymentError(f"{where} {why}.")
        rtype: str = item["t"]
        if rtype == "<failed>":
            raise DeploymentError(
                f"{where}: evaluating its `type` failed with a `throw` or `assert`. A type must be a provider's"
                " resource type such as providers.local.file, and must not depend on outputs."
            )
        provider, dot, name = rtype.partition(".")
        if rtype.startswith("<") or not dot:
            raise DeploymentError(
                f"{where}: `type` must be a provider's resource type such as providers.local.file, not {rtype!r}."
            )
        if provider not in providers:
            raise DeploymentError(
                f"{where}: type {rtype!r} names the provider {provider!r}, which is not declared. Declare"
                f' providers.{provider} = {{ executable = ...; resourceTypes = [ "{name}" ]; }}, or use one of:'
                f" {', '.join(sorted(providers))}."
            )
        if name not in providers[provider].resource_types:
            raise DeploymentError(
                f"{where}: provider {provider!r} has no resource type {name!r}; it serves"
                f" {', '.join(sorted(providers[provider].resource_types))}."
            )
        self._checked_types.add(rtype)
        return self._inputs(item, where, blocked, reads, markers)

    def _inputs(
        self, item: Mapping[str, Any], where: str, blocked: frozenset[str], reads: frozenset[str], markers: bool
    ) -> DesiredResource:
        path, rtype = item["p"], item["t"]
        if item["l"] != "set":
            raise DeploymentError(f"{where}: `lifecycle` must be an attribute set, not a {item['l']}.")
        if not isinstance(item["d"], bool):
            raise DeploymentError(f"{where}: lifecycle.preventDestroy must be true or false.")
        fields = item["i"]
        caught = blocked and (item.get("a") or (isinstance(fields, dict) and all("v" in f for f in fields.values())))
        if caught:  # it read an unknown output and its own `tryEval` caught that: it waits like any reader
            return DesiredResource(path, rtype, {}, False, blocked, item["d"], reads)
        if item.get("a"):  # every input evaluated: the inputs themselves
            if markers:
                for marker, why in MARKERS.items():
                    bad = _marker_in(fields, marker)
                    if bad is not None:
                        raise DeploymentError(f"{where}: input {'.'.join(bad)!r} {why}")
            return DesiredResource(path, rtype, fields, True, frozenset(), item["d"], reads)
        if fields is None:
            return DesiredResource(path, rtype, {}, False, blocked, item["d"], reads)
        if isinstance(fields, str):
            raise DeploymentError(f"{where}: `inputs` must be an attribute set, not a {fields.strip('<>')}.")
        inputs: dict[str, Any] = {}
        for key, value in fields.items():
            if "u" in value:
                inputs[key] = UNKNOWN
            else:
                for marker, why in MARKERS.items():
                    bad = _marker_in(value["v"], marker) if markers else None
                    if bad is not None:
                        at = ".".join([key, *bad])
                        raise DeploymentError(f"{where}: input {at!r} {why}")
                inputs[key] = value["v"]
        return DesiredResource(path, rtype, inputs, True, blocked, item["d"], reads)


_NO_IFD = ["--option", "allow-import-from-derivation", "false"]


@functools.cache
def _system() -> str:
    """The system providers run on, as Nix names it (``x86_64-linux``)."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(), platform.machine().lower())
    return f"{machine}-{platform.system().lower()}"


def _names(names: Iterable[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)


def _suggest(name: str, known: Iterable[str]) -> str:
    """ " Did you mean `x`?" for the known name closest to a misspelt one, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" Did you mean `{close[0]}`?" if close else ""


def _hint(text: str) -> str:
    """What to do about an error of restricted or pure evaluation, when that is what Nix reported."""
    if "cannot update flake input" in text or "requires lock file changes" in text:
        return "\nThe flake's flake.lock is missing or out of date: run `nix flake lock` and commit flake.lock."
    if "in pure eval mode" in text or "currentSystem" in text:
        return (
            "\nA flake is evaluated purely: it reads only its own files and the inputs its flake.lock pins, and"
            " sees no environment, NIX_PATH or builtins.currentSystem. Take what it needs as a flake input, and"
            " the system from the `system` argument of the deployment function."
        )
    if "in restricted mode" not in text:
        return ""
    return (
        "\nnixgitops evaluates in Nix's restricted mode: a deployment reads only files of its own repository,"
        " fetches nothing and sees no environment variables. Allow more paths with `allowed_paths` in the"
        " controller's configuration or `--allow-path` on the command line, or turn the restriction off with"
        " `restrict_eval = false` / `--no-restrict-eval`."
    )


def _decode(text: str) -> Any:
    answer = json.loads(text)
    if isinstance(answer, dict):  # markers are rare: look for them value by value only when the text has one
        answer["markers"] = "__nixgitops" in text
        answer["sensitive"] = answer["markers"] and HARNESS_KEY in text
    return answer


def _marker_in(value: Any, marker: str) -> list[str] | None:
    """The path to a harness marker (a function, an inexact float) inside a JSON value, or None."""
    if isinstance(value, dict):
        if marker in value and len(value) == 1:
            return []
        for k, v in value.items():
            inner = _marker_in(v, marker)
            if inner is not None:
                return [k, *inner]
    elif isinstance(value, list):
        for i, v in enumerate(value):
            inner = _marker_in(v, marker)
            if inner is not None:
                return [str(i), *inner]
    return None


def _clean(lines: list[str]) -> list[str]:
    """Nix's error text without the frames that point into our own harness."""
    harness = str(harness_path())
    out: list[str] = []
    skip = False
    for line in lines:
        if harness in line:
            skip = True
            continue
        if skip and (line.startswith(" ") or not line.strip()):
            continue
        skip = False
        out.append(line)
    return out or lines
