"""The HTTP face of the controller: one ASGI app (FastAPI) served by uvicorn.

    POST /hooks/<receiver>        push webhooks: verified, then "reconcile now" for the matching deployments;
                                  pull request webhooks: verified, then handed to the ``preview`` callables
    GET  /metrics                 Prometheus metrics
    GET  /healthz                 the process is alive
    GET  /readyz                  config loaded, scheduler running, every source reached at least once
    GET  /api/v1/...              read-only status: deployments, runs, last plan, resources (optional bearer token)
    POST /api/v1/deployments/<name>/reconcile   ask for a reconcile now (and, with ?wait=true, its outcome)
    POST /api/v1/deployments/<name>/approve?commit=SHA   let a commit held by require_reviewed_plan be applied
    GET  /api/v1/deployments/<name>/previews    each pull request's last preview, with its whole plan

A webhook answers at once; the reconcile runs after the response, on the scheduler's threads.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from controller.config import Config
from controller.errors import UserError
from controller.metrics import Metrics
from controller.reconciler import Reconciler
from controller.scheduler import Scheduler
from controller.sensitive import redact, redact_value
from webhooks import PULL_REQUEST, PULL_REQUEST_CLOSED, PULL_REQUEST_IGNORED, Delivery, Rejected, receive

MAX_BODY = 1024 * 1024
Name = Annotated[str, Path(description="A deployment's name from the configuration.", examples=["web"])]
SEEN = 1024  # delivery ids remembered per receiver, to ignore redeliveries
Preview = Callable[[str, Delivery], bool]
"""(deployment name, pull request delivery) -> whether something was queued (or, closing, stopped)."""


class Deliveries:
    """The last delivery ids of one receiver."""

    def __init__(self) -> None:
        self._order: collections.deque[str] = collections.deque(maxlen=SEEN)
        self._set: set[str] = set()
        self._lock = threading.Lock()

    def first_time(self, delivery: str) -> bool:
        with self._lock:
            if delivery in self._set:
                return False
            if len(self._order) == SEEN:
                self._set.discard(self._order[0])
            self._order.append(delivery)
            self._set.add(delivery)
            return True

    def forget(self, delivery: str) -> None:
        """Accept this delivery id again (its handling failed: the forge's redelivery should be acted on)."""
        with self._lock:
            if delivery in self._set:
                self._set.discard(delivery)
                self._order.remove(delivery)


class RedactedJSONResponse(JSONResponse):
    """Every answer of the API, with the sensitive values the process knows redacted (an error message that quotes
    one, a Nix trace kept in a run's log): the status API shows ``(sensitive)``, never a value."""

    def render(self, content: Any) -> bytes:
        return super().render(redact_value(jsonable_encoder(content)))


def create_app(
    config: Config,
    scheduler: Scheduler,
    metrics: Metrics,
    *,
    token: str | None = None,
    preview: Preview | None = None,
    preview_closed: Preview | None = None,
    log: Callable[[str], None] | None = None,
) -> FastAPI:
    """The app. ``preview(name, delivery)`` is called, for each deployment with ``previews`` whose repository and
    branch a verified pull request targets, when the pull request is opened, reopened, retargeted or gets new
    commits; it returns whether it queued a preview. It is called for pull requests from forks too
    (``delivery.from_fork``): refusing them without ``previews_from_forks`` is its decision, as for the pull
    requests it polls. ``preview_closed(name, delivery)`` is called likewise when the pull request is closed,
    merged, declined or deleted; it returns whether it stopped or forgot something. Two callables rather than one,
    so that neither has to look at ``delivery.event`` and a controller can run previews without cancelling them.
    Both are called on the event loop, so they must only queue work and return. ``log`` gets one line per
    notable webhook: a push deleting a tracked branch, a ``preview`` callable raising."""
    say = log or (lambda line: None)
    app = FastAPI(
        title="nixgitops",
        version="1",
        description="Status and webhooks of the nixgitops controller.",
        default_response_class=RedactedJSONResponse,
    )
    runners = scheduler.runners
    seen = {name: Deliveries() for name in config.receivers}

    def reconciler(name: str) -> Reconciler:
        if name not in runners:
            raise HTTPException(404, f"no deployment {name!r}")
        return runners[name].reconciler

    def authorised(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    Answer = Callable[..., JSONResponse]

    @app.post("/hooks/{receiver}", include_in_schema=False)
    async def hook(receiver: str, request: Request) -> JSONResponse:
        def answer(status: int, result: str, **body: Any) -> JSONResponse:
            metrics.webhooks.labels(receiver if receiver in config.receivers else "unknown", result).inc()
            return JSONResponse({"result": result, **body}, status_code=status)

        spec = config.receivers.get(receiver)
        if spec is None:
            return answer(404, "unknown_receiver")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            return answer(413, "too_large")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return answer(413, "too_large")
        try:
            delivery = receive(spec.kind, dict(request.headers), body, spec.secret)
        except Rejected as exc:
            return answer(exc.status, "unauthorized" if exc.status == 401 else "malformed", message=str(exc))
        if delivery.event == "ping":
            return answer(200, "ping")
        if delivery.event == PULL_REQUEST_IGNORED:
            return answer(202, "ignored", reason=f"pull request action {delivery.action!r} changes no code")
        if delivery.event not in ("push", PULL_REQUEST, PULL_REQUEST_CLOSED):
            return answer(202, "ignored", reason=f"event {delivery.event!r} is not a push")
        if delivery.delivery_id and not seen[receiver].first_time(delivery.delivery_id):
            return answer(202, "duplicate", reason="this delivery was already received")
        matching = [n for n in spec.deployments if delivery.matches(config.deployments[n].repository)]
        where = f"{receiver} (delivery {delivery.delivery_id or 'without id'})"
        if delivery.event == "push":
            return pushed(where, delivery, matching, answer)
        response = pull_request(where, delivery, matching, answer)
        if response.status_code >= 500 and delivery.delivery_id:
            seen[receiver].forget(delivery.delivery_id)  # the forge's redelivery is acted on
        return response

    def pushed(where: str, delivery: Delivery, matching: list[str], answer: Answer) -> JSONResponse:
        """Today's behaviour: reconcile the deployments whose branch the push moved; never for a deleted branch."""
        triggered, deleted = [], []
        for name in matching:
            ref = f"refs/heads/{config.deployments[name].branch}"
            if ref in delivery.deleted:
                say(f"webhook {where}: the push deletes {ref}, which {name} tracks; not reconciling {name}")
                deleted.append(name)
            elif ref in delivery.moved:
                scheduler.reconcile_now(name)
                triggered.append(name)
        if triggered:
            return answer(202, "triggered", deployments=triggered)
        if deleted:
            return answer(202, "ignored", reason="the push deletes the tracked branch", deployments=deleted)
        return answer(202, "ignored", reason="no configured deployment tracks this repository and branch")

    def pull_request(where: str, delivery: Delivery, matching: list[str], answer: Answer) -> JSONResponse:
        """Hand the pull request to ``preview`` (or ``preview_closed``) for each deployment it targets."""
        targeted = [n for n in matching if config.deployments[n].branch == delivery.base_branch]
        if not targeted:
            return answer(202, "ignored", reason="no configured deployment tracks this repository and base branch")
        enabled = [n for n in targeted if config.deployments[n].previews]
        if not enabled:
            return answer(202, "ignored", reason="no deployment has previews", deployments=targeted)
        closing = delivery.event == PULL_REQUEST_CLOSED
        call = preview_closed if closing else preview
        if call is None:
            return answer(202, "ignored", reason="this controller runs no previews", deployments=enabled)
        done, failed = [], []
        for name in enabled:
            try:
                if call(name, delivery):
                    done.append(name)
            except Exception as exc:  # answer 500: the forge shows the delivery failed, and may redeliver it
                say(f"webhook {where}: pull request #{delivery.number} for {name} failed: {exc!r}")
                failed.append(name)
        if done:
            return answer(202, "preview_closed" if closing else "preview", deployments=done)
        if failed:
            return answer(500, "preview_failed", deployments=failed)
        if closing:
            reason = "no preview of it was running"
        elif delivery.from_fork and not any(config.deployments[n].previews_from_forks for n in enabled):
            reason = "the pull request comes from a fork and no deployment sets previews_from_forks"
        else:
            reason = "no deployment queued a preview"
        return answer(202, "ignored", reason=reason, deployments=enabled)

    @app.get("/metrics", include_in_schema=False)
    def metrics_endpoint() -> Response:
        for name, runner in runners.items():  # current, not as of the last run
            metrics.suspended.labels(name).set(1 if runner.reconciler.suspended else 0)
        exposition = redact(metrics.exposition().decode()).encode()  # (labels never hold values; belt and braces)
        return Response(exposition, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/healthz", summary="The process is alive")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Ready to serve: scheduler running, every source reached once")
    def readyz() -> JSONResponse:
        waiting = sorted(
            n
            for n, r in runners.items()
            if not r.reconciler.reached and not r.reconciler.suspended and r.reconciler.stalled() is None
        )
        ready = scheduler.running and not waiting
        body = {"ready": ready, "schedulerRunning": scheduler.running, "sourcesNotReached": waiting}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/api/v1/deployments", summary="Every deployment's status")
    def deployments(request: Request) -> list[dict[str, Any]]:
        authorised(request)
        return [status(name) for name in sorted(runners)]

    def status(name: str) -> dict[str, Any]:
        r = reconciler(name)
        data = r.status()
        data.setdefault("deployment", name)
        data["suspended"] = r.suspended
        data["stalled"] = r.stalled()
        return data

    @app.get("/api/v1/deployments/{name}", summary="One deployment's status")
    def deployment(name: Name, request: Request) -> dict[str, Any]:
        authorised(request)
        return status(name)

    @app.get("/api/v1/deployments/{name}/runs", summary="Recent runs, newest first")
    def runs(name: Name, request: Request) -> list[dict[str, Any]]:
        authorised(request)
        return [asdict(run) for run in reversed(reconciler(name).history)]

    @app.get("/api/v1/deployments/{name}/plan", summary="The last plan")
    def plan(name: Name, request: Request) -> dict[str, Any]:
        authorised(request)
        last = reconciler(name).last_plan()
        if last is None:
            raise HTTPException(404, f"no plan recorded yet for {name!r}")
        return dict(last)

    @app.get("/api/v1/deployments/{name}/resources", summary="Resources in state")
    def resources(name: Name, request: Request) -> list[dict[str, Any]]:
        authorised(request)
        return reconciler(name).resources()

    @app.post("/api/v1/deployments/{name}/reconcile", summary="Reconcile now; with wait=true, return the run")
    async def reconcile_now(name: Name, request: Request, wait: bool = False) -> dict[str, Any]:
        authorised(request)
        runner = runners.get(name)
        if runner is None:
            raise HTTPException(404, f"no deployment {name!r}")
        if not wait:
            scheduler.reconcile_now(name)
            return {"requested": True}
        # waits on the event loop, woken by the runner when a run ends: no worker thread is held
        loop, finished = asyncio.get_running_loop(), asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(finished.set)

        runner.listeners.add(wake)
        try:
            before = runner.runs
            scheduler.reconcile_now(name)
            deadline = time.monotonic() + 3600
            while runner.runs <= before:
                try:
                    await asyncio.wait_for(finished.wait(), timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise HTTPException(504, "the reconcile did not finish within an hour") from None
                finished.clear()
        finally:
            runner.listeners.discard(wake)
        last = runner.reconciler.last
        return asdict(last) if last is not None else {}

    @app.get("/api/v1/deployments/{name}/previews", summary="Previews of pull requests: head, outcome, plan")
    def previews(name: Name, request: Request) -> dict[str, Any]:
        authorised(request)
        found = reconciler(name).preview_book()
        return {"pulls": found}

    @app.post("/api/v1/deployments/{name}/approve", summary="Let a commit held by require_reviewed_plan be applied")
    def approve(name: Name, request: Request, commit: str) -> dict[str, Any]:
        authorised(request)
        if token is None:  # it lifts require_reviewed_plan: never without a token
            raise HTTPException(403, "approving over the API needs [server] token_file; or run `nixgitops approve`")
        if not re.fullmatch(r"[0-9a-f]{4,64}", commit):
            raise HTTPException(422, "commit must be a commit id (4 to 64 hex digits)")
        try:
            found = reconciler(name).approve(commit)
        except UserError as exc:
            raise HTTPException(404, str(exc)) from None
        scheduler.reconcile_now(name)
        return {"approved": found, "requested": True}

    return app
