"""Pull requests: the plan of every open pull request to a deployment's branch, shown on the forge before merge,
and the outcome of each apply shown there after it.

A preview fetches the pull request's head from the base repository, evaluates it as the deployment is evaluated
(restricted or pure, as configured) and plans it against the deployment's current state: read only, no provider
call, no state commit, no build. It sets the commit status ``nixgitops/<deployment>`` on the head and keeps one
comment on the pull request, found again by a hidden marker and edited in place. Each preview's digest (what its
plan changes) is recorded in the data directory, so that ``require_reviewed_plan`` can hold a merged commit whose
plan is not the plan shown for review (see docs/pull-requests.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import NixgitopsError
from controller.model import ABSENT, UNKNOWN
from controller.plan_render import render_plan, summary
from controller.planning import Action, Plan, without_deletes
from controller.sensitive import digest_default, redact, redact_value
from controller.source import Cache, remote_ref
from webhooks.forge import Forge, ForgeConfig, ForgeError, PullRequest, open_forge

if TYPE_CHECKING:
    from controller.reconciler import Reconciler, Run

FIRST_LINE = 200  # characters of an error's first line shown in a status
SHOWN_KEPT = 200  # commits whose shown outcome the book remembers


def context(deployment: str) -> str:
    """The commit status context: one per deployment, never shared with another tool."""
    return f"nixgitops/{deployment}"


def marker(deployment: str) -> str:
    """The hidden line that finds this deployment's comment on a pull request again."""
    return f"<!-- nixgitops:{deployment} -->"


def digest(plan: Plan) -> str:
    """What a plan changes, as a SHA-256: equal for two plans exactly when they make the same changes."""

    def value(v: Any) -> Any:
        if v is UNKNOWN:
            return {"(known after apply)": True}
        if v is ABSENT:
            return {"(absent)": True}
        if isinstance(v, Mapping):
            return {k: value(x) for k, x in v.items()}
        return v

    items = [
        [
            c.path,
            c.action.value,
            c.type,
            value(dict(c.before.inputs)) if c.before is not None else None,
            value(dict(c.after.inputs)) if c.after is not None else None,
        ]
        for c in plan.changes
        if c.action is not Action.NOOP
    ]
    items.append([[m, list(w)] for m, w in plan.structural])
    items.append([[p.name, dict(p.before), dict(p.after)] for p in plan.providers])
    # (a sensitive value counts by its keyed digest: a new secret is a new plan to review, and nothing shows it)
    return hashlib.sha256(json.dumps(items, sort_keys=True, default=digest_default).encode()).hexdigest()


def description(plan: Plan) -> str:
    """The status line of a plan, in the command line's words."""
    return f"Plan: {summary(plan.counts())}"


def first_line(error: BaseException | str) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else "failed")[:FIRST_LINE]


_FREE_TEXT = ("plan", "message", "summary", "outcome", "baseNote")


def _redacted(data: Mapping[str, Any]) -> dict[str, Any]:
    """The book with its free text redacted (a plan's error may quote a value); heads, digests and commits as they
    are, so that redaction can never change what they name."""
    pulls = {
        number: {k: redact_value(v) if k in _FREE_TEXT else v for k, v in entry.items()}
        for number, entry in (data.get("pulls") or {}).items()
    }
    return {**data, "pulls": pulls}


class Book:
    """What the data directory keeps of one deployment's previews: per pull request its last head, digest, plan
    text and comment; and the commits an operator approved. Written atomically; a restart loses nothing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"pulls": {}, "approved": []}
        return data if isinstance(data, dict) else {"pulls": {}, "approved": []}

    def _write(self, data: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=self.path.parent, prefix=".previews-")
        with os.fdopen(handle, "w") as out:
            json.dump(_redacted(data), out, indent=2, sort_keys=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(name, self.path)

    def pulls(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self._read().get("pulls") or {})

    def record(self, number: int, entry: Mapping[str, Any]) -> None:
        with self._lock:
            data = self._read()
            data.setdefault("pulls", {})[str(number)] = dict(entry)
            self._write(data)

    def approve(self, commit: str) -> None:
        with self._lock:
            data = self._read()
            approved = data.setdefault("approved", [])
            if commit not in approved:
                approved.append(commit)
            self._write(data)

    def shown(self, commit: str) -> str | None:
        """The outcome last shown on the forge for ``commit`` (None: nothing yet)."""
        with self._lock:
            found = (self._read().get("shown") or {}).get(commit)
        return found if isinstance(found, str) else None

    def mark_shown(self, commit: str, outcome: str) -> None:
        with self._lock:
            data = self._read()
            shown = data.setdefault("shown", {})
            shown.pop(commit, None)
            shown[commit] = outcome
            while len(shown) > SHOWN_KEPT:
                shown.pop(next(iter(shown)))
            self._write(data)

    def approved(self, commit: str) -> bool:
        with self._lock:
            return commit in (self._read().get("approved") or [])

    def pull_for(self, commit: str, parents: Iterable[str]) -> tuple[int, dict[str, Any]] | None:
        """The pull request that brought ``commit``: the one whose last previewed head is the commit itself (a
        fast-forward or rebase merge), else one of its merged parents (a merge commit: not the first parent, the
        branch merged into, whose head may be an earlier pull request's)."""
        pulls = self.pulls()
        for candidate in [commit, *list(parents)[1:]]:
            found = [(int(n), e) for n, e in pulls.items() if e.get("head") == candidate]
            if found:
                return max(found, key=lambda f: str(f[1].get("at", "")))
        return None


@dataclass
class Result:
    """What one preview did: ``outcome`` is success, failure, skipped (a fork) or superseded (a newer head)."""

    number: int
    head: str
    outcome: str
    message: str = ""


class Previews:
    """The previews and forge outcomes of one deployment (``reconciler.deployment``), through ``forge``."""

    def __init__(
        self,
        reconciler: Reconciler,
        forge: Forge,
        *,
        log: Callable[[str], None] | None = None,
        count: Callable[[str, str], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.forge = forge
        self.log = log
        self.count = count or (lambda kind, result: None)
        d = reconciler.deployment
        self.book = Book(reconciler.config.data_dir / "previews" / f"{d.name}.json")
        self.work = reconciler.config.data_dir / "previews" / d.name
        self._latest: dict[int, str] = {}  # the newest head asked for, per pull request
        self._lock = threading.Lock()
        self._running = threading.Lock()  # one preview of this deployment at a time
        # Git objects of their own (libgit2 objects are not shared between threads; reconciles run on others):
        # a source cache of its own, and the state cache's directory opened again, read only
        self.source = Cache(reconciler.config.data_dir / "git" / f"{d.name}.previews")
        self._state_dir = reconciler.state_cache.directory
        # statuses and comments of applies go out in order on a thread of their own: a slow forge never holds a run
        self._poster = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forge-{d.name}")

    @classmethod
    def for_reconciler(cls, reconciler: Reconciler, **kwargs: Any) -> Previews | None:
        d = reconciler.deployment
        if d.forge is None:
            return None
        settings = reconciler.config.forges[d.forge]
        forge = open_forge(ForgeConfig(settings.name, settings.kind, settings.api_url, settings.token_file))
        return cls(reconciler, forge, **kwargs)

    def close(self) -> None:
        """Send what is queued, then close the forge client's connections."""
        self._poster.shutdown(wait=True)
        self.forge.close()

    def flush(self) -> None:
        """Wait until the statuses and comments queued so far are sent."""
        self._poster.submit(lambda: None).result()

    # -- requests ------------------------------------------------------------------------------------------

    def ask(self, pr: PullRequest) -> bool:
        """Note that ``pr`` at its head wants a preview; False when this deployment does not preview it (previews
        are off, another target branch, a fork). A preview of an older head of it still running is superseded."""
        d = self.reconciler.deployment
        if not d.previews or pr.base_branch != d.branch:
            return False
        if pr.from_fork and not d.previews_from_forks:
            self.count("preview", "skipped-fork")
            self._say(f"#{pr.number} comes from a fork: not evaluated (previews_from_forks is off)")
            return False
        with self._lock:
            self._latest[pr.number] = pr.head_sha
        return True

    def closed(self, number: int) -> bool:
        """The pull request was closed: what is queued or running for it shows nothing."""
        with self._lock:
            known = number in self._latest
            self._latest[number] = "(closed)"
        return known

    def superseded(self, pr: PullRequest) -> bool:
        with self._lock:
            latest = self._latest.get(pr.number)
        return latest is not None and latest != pr.head_sha

    def poll(self) -> list[PullRequest]:
        """The open pull requests to the deployment's branch whose head has no preview yet (the fallback of the
        webhooks, and the first run at start-up)."""
        d = self.reconciler.deployment
        if not d.previews:
            return []
        try:
            open_pulls = self.forge.open_pull_requests(d.repository, d.branch)
            self.count("forge", "ok")
        except ForgeError as exc:
            self.count("forge", "error")
            self._say(f"cannot list open pull requests: {first_line(exc)}")
            return []
        seen = self.book.pulls()
        with self._lock:  # a head already queued or running is not asked for again
            asked = dict(self._latest)
        wanted = [
            pr
            for pr in open_pulls
            if (seen.get(str(pr.number)) or {}).get("head") != pr.head_sha and asked.get(pr.number) != pr.head_sha
        ]
        return [pr for pr in wanted if self.ask(pr)]

    # -- one preview ---------------------------------------------------------------------------------------

    def run(self, pr: PullRequest) -> Result:
        """Plan ``pr``'s head against the current state and show it on the forge."""
        with self._running:
            if self.superseded(pr):
                self.count("preview", "superseded")
                return Result(pr.number, pr.head_sha, "superseded")
            started = time.monotonic()
            result = self._run(pr)
            self.count("preview", result.outcome)
            self._say(
                f"preview of #{pr.number} at {pr.head_sha[:12]}: {result.outcome} in {time.monotonic() - started:.2f}s"
            )
            return result

    def _run(self, pr: PullRequest) -> Result:
        self._status(pr.head_sha, "pending", "Planning the pull request")
        try:
            plan, base_note = self._plan(pr)
        except Exception as exc:
            if self.superseded(pr):
                return Result(pr.number, pr.head_sha, "superseded")
            text = str(exc).strip()
            self._comment(pr, self._body(pr, f"The plan failed:\n\n```\n{text}\n```", ""))
            self._status(pr.head_sha, "failure", first_line(exc))
            self.book.record(
                pr.number, {"head": pr.head_sha, "digest": None, "at": _now(), "outcome": "failure", "message": text}
            )
            return Result(pr.number, pr.head_sha, "failure", text)
        if self.superseded(pr):  # a newer push arrived while this one was planned: show nothing of it
            return Result(pr.number, pr.head_sha, "superseded")
        text = render_plan(plan)
        self._comment(pr, self._body(pr, f"```\n{text}```", base_note))
        self._status(pr.head_sha, "success", description(plan))
        self.book.record(
            pr.number,
            {
                "head": pr.head_sha,
                "digest": digest(plan),
                "at": _now(),
                "outcome": "success",
                "summary": description(plan),
                "plan": text,
                "baseNote": base_note,
            },
        )
        return Result(pr.number, pr.head_sha, "success", description(plan))

    def _plan(self, pr: PullRequest) -> tuple[Plan, str]:
        """The head's plan against the current state, and what to say when the base branch moved past the pull
        request's merge base."""
        r, d = self.reconciler, self.reconciler.deployment
        source = self.source
        local = f"refs/nixgitops/pulls/{pr.number}"
        source.fetch(d.repository, pr.head_ref, local)
        head = source.ref(local)
        if head != pr.head_sha and not source.has(pr.head_sha):
            raise NixgitopsError(
                f"The pull request's head {pr.head_sha[:12]} is not what {pr.head_ref} points at ({str(head)[:12]});"
                " a newer push is on its way."
            )
        base = remote_ref(d.repository, f"refs/heads/{d.branch}")
        note = ""
        if base is not None:
            if not source.has(base):
                source.fetch(d.repository, f"refs/heads/{d.branch}", f"refs/nixgitops/base/{d.branch}")
            merge_base = source.repo.merge_base(pr.head_sha, base)
            if merge_base is not None and str(merge_base) != base:
                note = (
                    f"The base branch `{d.branch}` has moved past this pull request's merge base"
                    f" ({str(merge_base)[:12]} -> {base[:12]}): this plan is of the pull request's head against the"
                    " current state; the merge may plan differently. Rebase or merge the base branch to see it."
                )
        checkout = self.work / str(pr.number)
        source.materialise(pr.head_sha, checkout)
        engine = r.engine(pr.head_sha, checkout, log=None, repo=Cache(self._state_dir).repo, preview=True)
        planned = engine.plan(allow_empty=d.allow_empty or not d.prune)
        return (planned.plan if d.prune else without_deletes(planned.plan)), note

    def _body(self, pr: PullRequest, content: str, note: str, outcome: str = "") -> str:
        d = self.reconciler.deployment
        lines = [
            marker(d.name),
            f"**nixgitops** plan of deployment `{d.name}` for {pr.head_sha[:12]}",
            "",
        ]
        if note:
            lines += [f"> {note}", ""]
        lines.append(content)
        if outcome:
            lines += ["", outcome]
        return "\n".join(lines) + "\n"

    # -- after an apply ------------------------------------------------------------------------------------

    def started(self, head: str) -> None:
        """A run on the tracked branch starts applying ``head`` (sent in the background)."""
        self._poster.submit(self._status, head, "pending", "Applying")

    def finished(self, head: str, run: Run, parents: Iterable[str]) -> None:
        """A run on the tracked branch ended: the status on ``head``, and the outcome on the pull request that
        brought it (sent in the background, in order)."""
        self._poster.submit(self._finished, head, run, list(parents))

    def _finished(self, head: str, run: Run, parents: list[str]) -> None:
        c = run.counts
        plus, minus = c.get("create", 0) + c.get("replace", 0), c.get("delete", 0) + c.get("replace", 0)
        if run.outcome in ("success", "no-change"):
            state, words = "success", f"Applied: +{plus} ~{c.get('update', 0)} -{minus}"
        elif run.outcome == "held":
            state, words = "failure", f"Held: {first_line(run.message)}"
        else:
            state, words = "failure", f"{run.outcome}: {first_line(run.message)}"
        self._status(head, state, words)
        found = self.book.pull_for(head, parents)
        if found is None:
            return
        number, entry = found
        pr = PullRequest(number, entry["head"], self.reconciler.deployment.branch, "", False)
        plan = entry.get("plan") or entry.get("message") or ""
        outcome = f"**Outcome** at {head[:12]}: {words}"
        self._comment(pr, self._body(pr, f"```\n{plan}```", entry.get("baseNote") or "", outcome))

    def review(self, head: str, parents: Iterable[str], plan: Plan) -> str | None:
        """Why ``head`` may not be applied under ``require_reviewed_plan`` (None: it may): its plan must be the plan
        last shown on the pull request that brought it, or an operator approved the commit."""
        if self.book.approved(head):
            return None
        found = self.book.pull_for(head, parents)
        name = self.reconciler.deployment.name
        how = f"run `nixgitops approve {name} {head}` to apply it anyway"
        if found is None:
            return f"no pull request with a plan shown for review brought commit {head[:12]}; {how}"
        number, entry = found
        if entry.get("digest") != digest(plan):
            return (
                f"the plan of commit {head[:12]} is not the plan last shown on pull request #{number}"
                f" ({entry.get('summary') or entry.get('outcome')}); it is now {description(plan)}; {how}"
            )
        return None

    # -- the forge -----------------------------------------------------------------------------------------

    def _status(self, sha: str, state: str, words: str) -> None:
        d = self.reconciler.deployment
        try:
            self.forge.set_status(d.repository, sha, state, context(d.name), redact(words))
            self.count("forge", "ok")
        except ForgeError as exc:
            self.count("forge", "error")
            self._say(f"cannot set the status of {sha[:12]}: {first_line(exc)}")

    def _comment(self, pr: PullRequest, body: str) -> None:
        d = self.reconciler.deployment
        try:
            self.forge.upsert_comment(d.repository, pr.number, marker(d.name), redact(body))
            self.count("forge", "ok")
        except ForgeError as exc:
            self.count("forge", "error")
            self._say(f"cannot comment on #{pr.number}: {first_line(exc)}")

    def _say(self, line: str) -> None:
        if self.log is not None:
            self.log(f"[{self.reconciler.deployment.name}] {line}")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
