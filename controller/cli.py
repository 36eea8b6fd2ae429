"""The ``nixgitops`` command line.

Every command runs in a Git checkout holding ``deployment.nix`` (or ``--dir``/``--file``). Errors print one
clear message on stderr and exit non-zero; only a bug in nixgitops prints a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO, cast

from controller import __version__, paths
from controller.apply import Event
from controller.engine import STRUCTURE_ROUNDS, Engine, Planned, RunResult, Settings
from controller.errors import NixgitopsError, SecretsError, StateError, UserError
from controller.journal import read_entries, unresolved
from controller.model import EvalLimits, NixSettings
from controller.plan_render import plan_json, render_plan
from controller.planning import Action
from controller.sealing import RECIPIENTS_FILE, Encryption, Sealer
from controller.sensitive import Sensitive, Unavailable, contains, mask_default, redact
from controller.state_branch import StateBranch
from controller.state_surgery import move, perform, remove

VERBS = {
    Action.CREATE: ("Creating", "Creation"),
    Action.UPDATE: ("Updating", "Update"),
    Action.REPLACE: ("Replacing", "Replacement"),
    Action.DELETE: ("Deleting", "Deletion"),
    Action.NOOP: ("Checking", "Check"),
}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=Path("."), help="directory of the deployment (default: .)")
    common.add_argument("--file", default="deployment.nix", help="entry file, relative to --dir")
    common.add_argument("--deployment", default="default", help="deployment name on the state branch")
    common.add_argument("--state-branch", default="nixgitops/state", help="branch that holds the state")
    common.add_argument("--show-trace", action="store_true", help="pass --show-trace to Nix")
    common.add_argument("-q", "--quiet", action="store_true", help="do not forward provider and Nix logs")
    common.add_argument(
        "--eval-timeout", type=_positive_float, default=300.0, help="seconds one Nix evaluation may take (300)"
    )
    common.add_argument("--eval-memory", type=_positive, default=2048, help="MiB one Nix evaluation may use (2048)")
    common.add_argument(
        "--no-restrict-eval",
        action="store_true",
        help="let the deployment read files outside its repository, fetch and use the environment",
    )
    common.add_argument(
        "--allow-path", type=Path, action="append", default=[], help="a path outside the repository it may read"
    )
    common.add_argument(
        "--flake",
        nargs="?",
        const=".#nixgitops",
        metavar="REF",
        help="evaluate the deployment from a flake output, purely (default .#nixgitops, relative to --dir)",
    )
    common.add_argument(
        "-I",
        dest="nix_path",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a search-path entry for <NAME> (without a flake); its path may be read",
    )
    common.add_argument(
        "--option",
        dest="nix_options",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="a Nix setting for every Nix command (such as substituters)",
    )
    common.add_argument(
        "--build-timeout", type=_positive_float, default=1800.0, help="seconds one build may take (1800)"
    )
    common.add_argument(
        "--identity",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="an age identity file or SSH private key that decrypts sensitive values (also NIXGITOPS_IDENTITY_FILE)",
    )

    running = argparse.ArgumentParser(add_help=False)
    running.add_argument("--parallelism", type=_positive, default=8, help="operations at once (default 8)")
    running.add_argument(
        "--provider-timeout", type=float, default=300.0, help="seconds a provider may take per request"
    )
    running.add_argument("--yes", "-y", action="store_true", help="apply without asking")

    top = argparse.ArgumentParser(prog="nixgitops", description="GitOps for resources declared in Nix.")
    top.add_argument("--version", action="version", version=f"nixgitops {__version__}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    plan = sub.add_parser("plan", parents=[common], help="show what apply would do")
    plan.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    plan.add_argument("--destroy", action="store_true", help="plan deleting every resource in state")
    apply = sub.add_parser("apply", parents=[common, running], help="apply the deployment")
    empty_help = "let a deployment that declares no resources delete everything in state (else refused)"
    for command in (plan, apply):
        command.add_argument("--allow-empty", action="store_true", help=empty_help)
    destroy = sub.add_parser("destroy", parents=[common, running], help="delete every resource in state")
    for command in (plan, apply, destroy):
        command.add_argument(
            "member",
            nargs="?",
            metavar="PATH",
            help='only the resources under this member path (myDeployment, a.b."file.txt"); put it before --flake',
        )
    state = sub.add_parser("state", help="inspect the state branch")
    state_sub = state.add_subparsers(dest="state_command", required=True, metavar="SUBCOMMAND")
    listing = state_sub.add_parser("list", parents=[common], help="list resources in state")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    show = state_sub.add_parser("show", parents=[common], help="show one resource in state as JSON")
    show.add_argument("path", help="dotted member path")
    show.add_argument(
        "--show-sensitive", action="store_true", help="show sensitive values in clear (decrypted with --identity)"
    )
    surgery = argparse.ArgumentParser(add_help=False)
    surgery.add_argument("--json", action="store_true", help="print what changed as one JSON object")
    surgery.add_argument(
        "--config", type=Path, help="work on the controller's copy of deployment --deployment (its data directory)"
    )
    remove = state_sub.add_parser(
        "rm", parents=[common, surgery], help="forget resources without calling their provider"
    )
    remove.add_argument("paths", nargs="+", metavar="PATH", help="dotted member path (a composite: all its members)")
    move = state_sub.add_parser("mv", parents=[common, surgery], help="rename a resource or a composite in state")
    move.add_argument("old", metavar="OLD", help="the path in state")
    move.add_argument("new", metavar="NEW", help="the new path; nothing may be there")
    rekey = state_sub.add_parser(
        "rekey",
        parents=[common, surgery],
        help="encrypt every sensitive value in state again, to the recipients configured now (one state commit)",
    )
    rekey.add_argument(
        "--reset-digests",
        action="store_true",
        help="forget digests made with another machine's key: the next apply sends those values again",
    )

    configured = argparse.ArgumentParser(add_help=False)
    configured.add_argument("--config", type=Path, required=True, help="the controller's TOML configuration")
    sub.add_parser("run", parents=[configured], help="run the controller: watch and reconcile every deployment")
    reconcile = sub.add_parser("reconcile", parents=[configured], help="reconcile one deployment once, then exit")
    reconcile.add_argument("name", help="deployment name")
    status = sub.add_parser("status", parents=[configured], help="show every deployment's last run")
    status.add_argument("--json", action="store_true", help="print JSON")
    suspend = sub.add_parser("suspend", parents=[configured], help="stop reconciling a deployment")
    suspend.add_argument("name")
    resume = sub.add_parser("resume", parents=[configured], help="reconcile a suspended or stopped deployment again")
    resume.add_argument("name")
    resume.add_argument(
        "--adopt-remote-state", action="store_true", help="after a state conflict: continue from the remote state"
    )
    approve = sub.add_parser(
        "approve", parents=[configured], help="let a commit held by require_reviewed_plan be applied"
    )
    approve.add_argument("name", help="deployment name")
    approve.add_argument("commit", help="the held commit (a unique prefix will do)")
    return top


def _settings(args: argparse.Namespace) -> Settings:
    if args.flake is not None and (args.nix_path or args.allow_path or args.no_restrict_eval):
        raise UserError(
            "-I, --allow-path and --no-restrict-eval have no effect with --flake: a flake is evaluated purely, and"
            " reads only its own files and the inputs its flake.lock pins. Make what it needs a flake input."
        )
    if args.flake is not None and args.file != "deployment.nix":
        raise UserError("Give either --flake or --file, not both: --flake evaluates a flake output, not a file.")
    return Settings(
        directory=args.dir,
        entry=args.file,
        deployment=args.deployment,
        state_branch=args.state_branch,
        parallelism=getattr(args, "parallelism", 8),
        provider_timeout=getattr(args, "provider_timeout", 300.0),
        show_trace=args.show_trace,
        evaluation=EvalLimits(
            timeout=args.eval_timeout,
            memory=args.eval_memory * 1024**2,
            restrict=not args.no_restrict_eval,
            allowed_paths=tuple(str(p.resolve()) for p in args.allow_path),
            nix_path=tuple(_search_path(e) for e in args.nix_path),
        ),
        nix=NixSettings(options=tuple((n, v) for n, v in args.nix_options), build_timeout=args.build_timeout),
        flake=args.flake,
        member=_member(getattr(args, "member", None)),
        encryption=Encryption(
            identity_files=_identities(args.identity),
            where=RECIPIENTS_FILE,
            identity_hint="pass --identity FILE, or set NIXGITOPS_IDENTITY_FILE",
        ),
    )


def _identities(given: list[Path]) -> tuple[Path, ...]:
    """The identity files: ``--identity`` (each), else ``NIXGITOPS_IDENTITY_FILE`` (paths separated by ``:``)."""
    if given:
        return tuple(given)
    from_env = os.environ.get("NIXGITOPS_IDENTITY_FILE", "")
    return tuple(Path(p) for p in from_env.split(":") if p)


def _member(text: str | None) -> str | None:
    """A member path as given on the command line, checked and written in its one form (``controller.paths``)."""
    if not text:
        return None
    return paths.render(paths.parse(text))


def _search_path(entry: str) -> str:
    """``NAME=PATH`` (or a bare path) with its path made absolute."""
    name, equals, path = entry.rpartition("=")
    return f"{name}{equals}{Path(path).resolve()}"


def _log(args: argparse.Namespace) -> object:
    if args.quiet:
        return None
    return lambda line: print(line, file=sys.stderr, flush=True)


def _engine(args: argparse.Namespace) -> Engine:
    engine = Engine.for_checkout(_settings(args), log=_log(args))  # type: ignore[arg-type]
    if engine.dirty:
        print(
            "Warning: the work tree has uncommitted changes. nixgitops evaluates the files as they are; state will"
            f" name commit {(engine.source_commit or 'none')[:12]} with Source-Dirty: true. Commit first to keep"
            " the state branch an exact record.",
            file=sys.stderr,
        )
    return engine


def _report(event: Event) -> None:
    doing, done = VERBS[event.action]
    if event.kind == "start":
        print(f"{event.path}: {doing}...", flush=True)
    elif event.kind == "ok" and event.action is not Action.NOOP:
        print(f"{event.path}: {done} complete after {event.seconds:.2f}s", flush=True)
        if event.message:
            print(f"Warning: {event.path}: {event.message}", file=sys.stderr, flush=True)
    elif event.kind == "failed":
        print(f"{event.path}: {done} FAILED", flush=True)
        print(f"Error: {event.path}: {event.message}", file=sys.stderr, flush=True)
    elif event.kind == "skipped":
        print(f"{event.path}: {event.message}", flush=True)
    elif event.kind == "waiting":
        print(f"{event.path}: interrupted; waiting for the operation in flight to finish", flush=True)


def _confirm(args: argparse.Namespace, verb: str) -> None:
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"Refusing to {verb} without confirmation: run `nixgitops {verb} --yes`.")
    answer = input(f"Do you want to {verb} these changes? Only 'yes' will be accepted: ")
    if answer.strip() != "yes":
        raise UserError(f"{verb.capitalize()} cancelled; nothing was changed.")


def _finish(result: RunResult, engine: Engine, verb: str, *, held: int = 0) -> int:
    """``held``: resources left out of the plan by operations that are not settled (skipped; see ``_held``)."""
    c = result.counts
    numbers = f"{c['create']} created, {c['update']} updated, {c['replace']} replaced, {c['delete']} deleted"
    if result.commit:
        print(f"State: commit {result.commit[:12]} on {engine.store.branch}")
    if result.ok and not held:
        print(f"{verb.capitalize()} complete! Resources: {numbers}.")
        return 0
    skipped = c["skipped"] + held
    print(f"{verb.capitalize()} failed. Resources: {numbers}; {c['failed']} failed, {skipped} skipped.")
    if result.ok:
        return 1  # only held back: ``_held`` says why and what to do
    print(
        f"Error: {verb} did not complete: {c['failed']} operation(s) failed and {c['skipped']} were skipped;"
        " the completed ones are recorded in state. Fix the errors above and run it again.",
        file=sys.stderr,
    )
    return 1


def _applying(engine: Engine) -> bool:
    """Whether another run holds this deployment's lock now (its journal then holds operations in flight)."""
    try:
        with engine.store.locked():
            return False
    except StateError:
        return True


def cmd_plan(args: argparse.Namespace) -> int:
    engine = _engine(args)
    applying = _applying(engine)
    if applying:
        print(
            "Note: another nixgitops run is applying this deployment; this plan is against the state it last"
            " committed.",
            file=sys.stderr,
        )
    elif engine.pending_recovery():
        print(
            "Warning: an interrupted run left operations in the journal; the next apply records them first.",
            file=sys.stderr,
        )
    exclude: dict[str, str] | None = {} if applying else None  # operations in flight are not stuck ones
    planned = engine.plan(destroy=args.destroy, allow_empty=args.allow_empty, exclude=exclude)
    for path in sorted(planned.held):  # left out of the plan: an operation that is not settled holds them back
        print(f"Warning: {path}: {planned.held[path]}", file=sys.stderr)
    if args.json:
        document = plan_json(
            planned.plan,
            deployment=engine.settings.deployment,
            source_commit=engine.source_commit,
            dependencies=planned.dependencies,
        )
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        print(render_plan(planned.plan), end="")
        if planned.refresh:
            print(
                f"\nApply also records what {len(planned.refresh)} unchanged resource(s) read (dependency edges; no"
                " provider call)."
            )
    return 0


def _run(args: argparse.Namespace, *, destroy: bool) -> int:
    engine = _engine(args)
    with engine.store.locked():
        for note in engine.recover():
            print(f"Recovered: {note}", flush=True)
        made: set[str] = set()  # stateless resources made in an earlier round of this apply
        for round_ in range(1, STRUCTURE_ROUNDS + 1):
            planned: Planned = engine.plan(destroy=destroy, allow_empty=getattr(args, "allow_empty", False), made=made)
            print(render_plan(planned.plan))
            for path in sorted(planned.held):
                print(f"{path}: {planned.held[path]}", flush=True)
            if not planned.plan.has_changes:
                if planned.refresh or planned.plan.providers:  # records to write again, no provider call
                    state = planned.state
                    engine.commit(state, {**state, **planned.refresh}, {}, providers=planned.providers)
                    if planned.refresh:
                        print(f"Recorded what {len(planned.refresh)} unchanged resource(s) read (no provider call).")
                    if planned.plan.providers:
                        print(f"Recorded the new command of {len(planned.plan.providers)} provider(s).")
                return _held(planned)
            verb = "destroy" if destroy else "apply"
            destroys = any(c.action in (Action.DELETE, Action.REPLACE) for c in planned.plan.changes)
            if round_ == 1 or destroys:  # a later round creates what the structure revealed; it asks to destroy
                _confirm(args, verb)
            result = engine.apply(planned, report=_report)
            code = max(_finish(result, engine, verb, held=len(planned.held)), _held(planned))
            if code or not planned.plan.structural:
                return code
            made.update(p for p, r in planned.desired.items() if r.stateless)
            print(
                f"\nThe members of {len(planned.plan.structural)} composite(s) depended on outputs now known:"
                " planning them again.\n",
                flush=True,
            )
        print(
            f"Error: the structure of the deployment still depends on outputs after {STRUCTURE_ROUNDS} rounds of"
            " apply; look for members whose existence depends on resources they create.",
            file=sys.stderr,
        )
        return 1


def _held(planned: Planned) -> int:
    """1, with an error that says what to do, when operations that are not settled held resources back."""
    if not planned.held:
        return 0
    paths = sorted(planned.held)
    shown = ", ".join(paths[:10]) + (f" and {len(paths) - 10} more" if len(paths) > 10 else "")
    print(
        f"Error: {len(paths)} resource(s) were skipped ({shown}): an operation on them, or on what they read, is not"
        " settled. Make its provider reachable and run again, or run `nixgitops state rm PATH` for a resource known"
        ' to be gone (docs/runbook.md, "A stuck operation").',
        file=sys.stderr,
    )
    return 1


def _surgery_target(args: argparse.Namespace) -> tuple[StateBranch, Path, contextlib.AbstractContextManager[Any]]:
    """The state branch, journal and lock that ``state rm``/``state mv`` work on: a checkout's (the lock that
    `apply` and `destroy` hold), or with ``--config`` the controller's (the lock a reconcile holds)."""
    if args.config is None:
        engine = _engine(args)
        return engine.store, engine.journal_path, engine.store.locked()
    from controller.config import load
    from controller.reconciler import Reconciler

    config = load(args.config)
    reconciler = Reconciler(config, config.deployment(args.deployment))
    d = reconciler.deployment
    encryption = d.encryption
    if getattr(args, "identity", None):  # (--identity, else the configuration's identity_file)
        encryption = replace(encryption, identity_files=tuple(args.identity))
    sealer = Sealer.beside(reconciler.journal, encryption)
    store = StateBranch(
        reconciler.state_cache.repo, branch=d.state_branch, deployment=d.name, identity=config.identity, sealer=sealer
    )
    sealer.meta = store.load_meta
    if store.tip() is None:
        raise UserError(f"Deployment {d.name!r} has no state branch in {config.data_dir} yet: nothing to change.")
    return store, reconciler.journal, _held_lock(reconciler.lock_path, d.name)


@contextlib.contextmanager
def _held_lock(path: Path, name: str) -> Iterator[None]:
    """The controller's lock of deployment ``name``; refused at once while a reconcile holds it."""
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"A reconcile of deployment {name!r} is running (it holds {path}); nothing was changed. Run this"
                " again when it has finished, or `nixgitops suspend` the deployment first."
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cmd_surgery(args: argparse.Namespace) -> int:
    """``state rm`` and ``state mv``: one state commit, no provider call, refused while a run holds the lock."""
    store, journal_path, lock = _surgery_target(args)
    with lock:
        state = store.load()
        journaled = {e["path"] for e in read_entries(journal_path) if "path" in e}
        if args.state_command == "rm":
            surgery = remove(state, args.paths, journaled=journaled, deployment=store.deployment)
        else:
            surgery = move(state, args.old, args.new, journaled=journaled, deployment=store.deployment)
        commit = perform(surgery, store, journal_path)
    if args.json:
        document = {"deployment": store.deployment, "stateBranch": store.branch, "commit": commit, **surgery.report}
        print(json.dumps(document, indent=2, ensure_ascii=False))
        return 0
    for line in surgery.lines:
        print(line)
    if commit is not None:
        print(f"State: commit {commit[:12]} on {store.branch} (no provider was called)")
    else:
        print(f"State: unchanged on {store.branch}; only the journal changed (no provider was called)")
    return 0


def cmd_state(args: argparse.Namespace) -> int:
    if args.state_command in ("rm", "mv"):
        return cmd_surgery(args)
    if args.state_command == "rekey":
        return cmd_rekey(args)
    engine = _engine(args)
    state = engine.load_state()
    if args.state_command == "show":
        path = _member(args.path) or args.path
        if path not in state:
            raise UserError(f"No resource {args.path!r} in state; `nixgitops state list` shows what is there.")
        record = state[path].to_json()
        if args.show_sensitive:  # (the one place that shows them: decrypted with the identity given)
            text = json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True, default=_revealed)
            out = sys.stdout
            (out.write_clear if isinstance(out, _ReaderMayLeave) else out.write)(text + "\n")
            return 0
        print(json.dumps(record, indent=2, ensure_ascii=False, sort_keys=True, default=mask_default))
    elif args.json:
        records = [state[p].to_json() for p in sorted(state)]
        print(json.dumps(records, indent=2, ensure_ascii=False, default=mask_default))
    else:
        for path in sorted(state):
            print(f"{path}  {state[path].type}")
    return 0


def _revealed(value: object) -> Any:
    """A sensitive value in clear, or why it cannot be shown (a clear error, exit 1)."""
    if not isinstance(value, Sensitive):
        raise TypeError(f"{type(value).__name__} is not JSON")
    try:
        return value.reveal()
    except Unavailable as exc:
        raise SecretsError(f"Cannot show a sensitive value: {exc}.") from None


def cmd_rekey(args: argparse.Namespace) -> int:
    """``state rekey``: every sealed value decrypted (with the identity given) and encrypted again to the
    recipients configured now, and the digest key with them; one state commit, no provider call."""
    store, journal_path, lock = _surgery_target(args)
    sealer = store.sealer
    if sealer is None or (not sealer.encrypting and not args.reset_digests):
        raise SecretsError(
            f"No recipients are configured for deployment {store.deployment!r}: list them in {RECIPIENTS_FILE} (one"
            " per line) or in [deployments.NAME.encryption] recipients, then rekey."
        )
    with lock:
        if unresolved(read_entries(journal_path)):
            raise UserError("An interrupted run is not settled yet: apply (or reconcile) first, then rekey.")
        state = store.load()
        if not args.reset_digests:  # (the digest key sealed below must be the one that digested the values)
            sealer.check_digests()
        upserts = {}
        for path, record in sorted(state.items()):
            if contains(dict(record.inputs)) or contains(dict(record.outputs)):
                reset = args.reset_digests
                inputs = sealer.rekey(dict(record.inputs), reset=reset)
                outputs = sealer.rekey(dict(record.outputs), reset=reset)
                upserts[path] = replace(record, inputs=inputs, outputs=outputs)
        sealer.digest_key()
        meta = dict(store.load_meta())
        if (sealed_key := sealer.meta_entry()) is not None:
            meta["digestKey"] = sealed_key
        count = len(sealer.encryption.recipients)
        message = f"Rekey {len(upserts)} resource(s) with sensitive values to {count} recipient(s)\n"
        commit = store.commit(upserts=upserts, deletes=(), meta=meta, message=message, state={**state, **upserts})
    if args.json:
        print(json.dumps({"deployment": store.deployment, "commit": commit, "rekeyed": sorted(upserts)}, indent=2))
        return 0
    if args.reset_digests:
        print(
            f"Reset {sealer.resets} digest(s) made with another key: those this machine could decrypt are digested"
            " again, the next apply sends the others again."
        )
    if sealer.encrypting:
        print(f"Rekeyed {len(upserts)} resource(s) to {count} recipient(s).")
    print(f"State: commit {(commit or 'none')[:12]} on {store.branch} (no provider was called)")
    return 0


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # handled like Ctrl-C: finish what is in flight, record it, exit


def _offline_status(reconciler: Any) -> dict[str, Any]:
    """What the status API says of one deployment, read from the data directory, with its last plan."""
    status: dict[str, Any] = {"deployment": reconciler.deployment.name, **reconciler.status()}
    plan = reconciler.last_plan()
    if plan is not None:
        status["lastPlan"] = plan
    return status


def cmd_daemon(args: argparse.Namespace) -> int:
    from controller import daemon
    from controller.config import load
    from controller.reconciler import Reconciler

    if args.command == "run":
        return daemon.run(args.config)
    config = load(args.config)
    remote = _daemon_api(config)
    if args.command == "status":
        rows = (
            remote("GET", "/api/v1/deployments")
            if remote is not None
            else [_offline_status(Reconciler(config, d)) for d in config.deployments.values()]
        )
        if args.json:
            print(json.dumps(rows, indent=2, sort_keys=True))
            return 0
        for row in rows:
            last = row.get("lastRun") or {}
            flags = [f for f in ("suspended", "stalled") if row.get(f)]
            print(
                f"{row['deployment']}: {last.get('outcome', 'never run')}"
                f" at {last.get('started_at', '-')}, source {str(row.get('sourceCommit') or '-')[:12]}"
                + (f" [{', '.join(flags)}]" if flags else "")
            )
            if last.get("message"):
                print(f"  {last['message']}")
        return 0
    if args.command == "reconcile" and remote is not None:
        config.deployment(args.name)
        print(f"(asking the running controller at {config.server.host}:{config.server.port})", file=sys.stderr)
        return _report_run(args.name, remote("POST", f"/api/v1/deployments/{args.name}/reconcile?wait=true"))
    reconciler = Reconciler(config, config.deployment(args.name), log=daemon.log)
    if args.command == "suspend":
        reconciler.suspend()
        print(f"{args.name}: suspended")
        return 0
    if args.command == "resume":
        reconciler.resume(adopt_remote_state=args.adopt_remote_state)
        print(f"{args.name}: resumed")
        return 0
    if args.command == "approve":
        commit = reconciler.approve(args.commit)
        print(f"{args.name}: commit {commit} approved; the next run applies it")
        return 0
    from dataclasses import asdict

    return _report_run(args.name, asdict(reconciler.reconcile(force=True)))


def _report_run(name: str, run: dict[str, Any]) -> int:
    phases = ", ".join(f"{k} {v:.3f}s" for k, v in (run.get("phases") or {}).items())
    outcome = run.get("outcome", "unknown")
    print(f"{name}: {outcome} at {str(run.get('source_commit') or '-')[:12]} ({phases})")
    if run.get("message") and outcome not in ("success", "no-change", "planned"):
        print(f"Error: {name}: {run['message']}", file=sys.stderr)
    if outcome == "planned":
        return 3  # the plan is recorded, but nothing was applied (apply = "plan-only")
    return 0 if outcome in ("success", "no-change") else 1


def _daemon_api(config: Any) -> Callable[[str, str], Any] | None:
    """A caller of the running controller's API, or None when none answers at the configured address."""
    import urllib.error
    import urllib.request

    base = f"http://{config.server.host}:{config.server.port}"
    headers = {}
    if config.server.token_file is not None:
        headers["Authorization"] = f"Bearer {config.server.token_file.read_text().strip()}"

    def call(method: str, path: str, timeout: float = 3600) -> Any:
        request = urllib.request.Request(
            base + path, method=method, headers=headers, data=b"" if method == "POST" else None
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    try:
        with urllib.request.urlopen(urllib.request.Request(base + "/healthz"), timeout=2) as response:
            if json.loads(response.read()).get("status") != "ok":
                return None
    except (OSError, ValueError):
        return None
    return call


class _ReaderMayLeave:
    """A standard stream whose reader may go away (``nixgitops status | head -5``). From the first EPIPE on, what
    is written is discarded (the descriptor is pointed at /dev/null), so the command still finishes its work and
    exits with its own status: no traceback, no exit 120 or 141."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, text: str) -> int:
        """Writes ``text`` with every sensitive value known to the process redacted (``sensitive.redact``)."""
        return self.write_clear(redact(text))

    def write_clear(self, text: str) -> int:
        """Writes ``text`` as it is: only ``state show --show-sensitive``."""
        if not self.gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._leave()
        return len(text)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._leave()

    def _leave(self) -> None:
        self.gone = True
        try:
            descriptor = self._stream.fileno()
        except (OSError, ValueError):  # a stream without a descriptor (a test's capture) keeps only ``gone``
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, descriptor)  # what is still buffered goes nowhere, quietly, at exit
        finally:
            os.close(devnull)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; stdout and stderr are closed quietly when their reader goes away (EPIPE)."""
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = cast(TextIO, _ReaderMayLeave(out)), cast(TextIO, _ReaderMayLeave(err))
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = out, err


def _main(argv: Sequence[str] | None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        if args.command == "plan":
            return cmd_plan(args)
        if args.command in ("apply", "destroy"):
            return _run(args, destroy=args.command == "destroy")
        if args.command in ("run", "reconcile", "status", "suspend", "resume", "approve"):
            return cmd_daemon(args)
        return cmd_state(args)
    except NixgitopsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print("This is a bug in nixgitops; please report it with the output above.", file=sys.stderr)
        return 70
