"""nixgitops benchmarks: every scenario of docs/performance.md, printed as one table. They measure; they pass or
fail nothing (the tests check correctness).

    python bench/run.py [--sizes 10,1000,10000] [--only 1a,1b,2,3,4,5,6] [--markdown FILE]

Scenarios (see docs/performance.md for the targets and what each floor is):
  1a  plan with no change, from the command line, against a bare nix-instantiate plus a bare Python start
  1b  a new commit that changes nothing, in the running daemon, against the bare Nix evaluation alone
  2   apply, all create (local.file), against writing the same files from Python
  3   state commit of a one-resource change: 10 resources vs 10,000
  4   push to applied: with a signed webhook, and with polling every second
  5   idle daemon watching 50 unchanged deployments; one poll of an unchanged remote with a long history
  6   peak resident memory of plan and apply
  7   what builds cost: a no-change plan of a flake deployment of 1,000 resources, with and without a store path
      (a derivation of its own) in every resource, against the same deployment.nix; and the apply that builds them
  8   push to preview status: a pull request of a 100-resource deployment updated 20 times, each push (and its signed
      webhook) to the success status of its preview on a fake GitHub on loopback
  9   what secrets cost: an apply (all create) and a no-change plan of 1,000 resources with a sensitive input each,
      without recipients (keyed digests), with one age recipient, and with an age and an SSH recipient, against the
      same deployment without `sensitive`
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    GIT,
    NIXGITOPS,
    SHAPES,
    Daemon,
    Row,
    Table,
    deployment,
    floor_expression,
    free_port,
    git_repo,
    median_of,
    sh,
    size_label,
    timed,
    verdict,
)

BIG = 10_000
ONE_MEMO = (
    '{ members, providers, ... }: { members.m = { type = providers.local.memo; inputs.initialize_with = "V"; }; }\n'
)


def bare_nix(repo: Path) -> float:
    return median_of(3, lambda: timed(["nix-instantiate", "--eval", "--strict", "--json", "floor.nix"], repo).seconds)


def python_floor(repo: Path) -> float:
    return median_of(3, lambda: timed([sys.executable, "-c", "pass"], repo).seconds)


def write_files_floor(n: int, where: Path) -> float:
    """Writing the same n files from Python directly."""
    out = where / "out"
    out.mkdir(parents=True)
    started = time.perf_counter()
    for i in range(n):
        (out / f"r{i}").write_text(f"v{i}")
    return time.perf_counter() - started


def cli(table: Table, sizes: list[int], only: set[str], tmp: Path) -> None:
    """Scenarios 1a, 2 and 6: the command line on a fresh checkout of each size and shape."""
    rss: dict[tuple[int, str], tuple[float, float]] = {}
    for shape in SHAPES:
        for n in sizes:
            repo = tmp / f"cli-{shape}-{n}"
            files = {
                "deployment.nix": deployment(n, shape, tmp / f"out-cli-{shape}-{n}"),
                "floor.nix": floor_expression(n),
            }
            git_repo(repo, files)
            label = size_label(n, shape)
            floor = write_files_floor(n, tmp / f"files-{shape}-{n}")
            applied = timed([*NIXGITOPS, "apply", "--yes", "-q"], repo)
            if "2" in only:
                table.add(
                    Row(
                        "2 apply, all create",
                        label,
                        f"{applied.seconds:.2f} s ({n / applied.seconds:,.0f}/s)",
                        f"{floor:.3f} s",
                        f"{applied.seconds / floor:.0f}",
                        "< 15 s" if n == BIG else "-",
                        verdict(applied.seconds < 15) if n == BIG else "-",
                    )
                )
            plans = [timed([*NIXGITOPS, "plan"], repo) for _ in range(3)]
            plan = statistics.median(p.seconds for p in plans)
            rss[(n, shape)] = (max(p.max_rss_mb for p in plans), applied.max_rss_mb)
            if "1a" in only:
                nix, python = bare_nix(repo), python_floor(repo)
                ratio = plan / (nix + python)
                table.add(
                    Row(
                        "1a plan, no change (CLI)",
                        label,
                        f"{plan:.3f} s",
                        f"{nix + python:.3f} s (Nix {nix:.3f} + Python {python:.3f})",
                        f"{ratio:.2f}",
                        "<= 2.0" if n == BIG else "-",
                        verdict(ratio <= 2.0) if n == BIG else "-",
                    )
                )
    if "6" in only:
        for (n, shape), (plan_mb, apply_mb) in rss.items():
            big = n == BIG
            table.add(
                Row(
                    "6 peak RSS, plan / apply",
                    size_label(n, shape),
                    f"{plan_mb:.0f} MB / {apply_mb:.0f} MB",
                    target="< 300 MB" if big else "-",
                    met=verdict(max(plan_mb, apply_mb) < 300) if big else "-",
                )
            )


def daemon_no_change(table: Table, sizes: list[int], tmp: Path) -> None:
    """Scenario 1b (and the long-history poll of 5): a daemon; each deployment gets a commit that changes nothing."""
    root = tmp / "daemon"
    root.mkdir()
    port = free_port()
    config = [f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n']
    clones: dict[str, Path] = {}
    floors: dict[str, float] = {}
    for shape in SHAPES:
        for n in sizes:
            name = f"{shape}-{n}"
            clone = root / f"{name}.src"
            git_repo(
                clone,
                {"deployment.nix": deployment(n, shape, root / f"out-{name}"), "floor.nix": floor_expression(n)},
                bare_remote=root / f"{name}.git",
            )
            clones[name] = clone
            floors[name] = bare_nix(clone)
            config.append(
                f'[deployments."{name}"]\nrepository = "{root / f"{name}.git"}"\ninterval = "1h"\njitter = "1ms"\n'
            )
    history = root / "history.src"
    long_history(history, commits=10_000, bare_remote=root / "history.git")
    config.append(f'[deployments.history]\nrepository = "{root / "history.git"}"\ninterval = "1h"\njitter = "1ms"\n')
    (root / "nixgitops.toml").write_text("\n".join(config))
    daemon = Daemon(root / "nixgitops.toml", port)
    try:
        for name in [*clones, "history"]:
            first = daemon.reconcile(name)
            if first.get("outcome") not in ("success", "no-change"):  # the daemon may have applied it at start
                raise RuntimeError(
                    f"the first reconcile of {name} ended {first.get('outcome')}: {first.get('message')}"
                )
        for name, clone in clones.items():
            walls, phases = [], []
            for k in range(3):
                (clone / "README").write_text(f"nothing that the deployment reads {k}\n")
                sh(*GIT, "add", "README", cwd=clone)
                sh(*GIT, "commit", "-qm", f"readme {k}", cwd=clone)
                sh(*GIT, "push", "-q", str(root / f"{name}.git"), "HEAD:refs/heads/main", cwd=clone)
                started = time.perf_counter()
                run = daemon.reconcile(name)
                walls.append(time.perf_counter() - started)
                if run.get("outcome") != "no-change":
                    raise RuntimeError(f"{name}: a commit that changes nothing ended {run.get('outcome')}")
                phases.append(run.get("phases", {}))
            wall = statistics.median(walls)
            shape, n = name.split("-")[0], int(name.split("-")[1])
            ratio = wall / floors[name]
            split = ", ".join(
                f"{p} {statistics.median(x.get(p, 0) for x in phases) * 1000:.0f}"
                for p in ("fetch", "evaluate", "commit", "push")
            )
            table.add(
                Row(
                    "1b new commit, no change (daemon)",
                    size_label(n, shape),
                    f"{wall:.3f} s ({split} ms)",
                    f"{floors[name]:.3f} s bare Nix",
                    f"{ratio:.2f}",
                    "<= 1.5" if n == BIG else "-",
                    verdict(ratio <= 1.5) if n == BIG else "-",
                )
            )
        polls = []
        for _ in range(5):
            run = daemon.reconcile("history")
            polls.append(run.get("phases", {}).get("fetch", 0.0))
        table.add(
            Row(
                "5 one poll, unchanged remote",
                "10,000 commits of history",
                f"{statistics.median(polls) * 1000:.1f} ms (ls-remote, no fetch)",
            )
        )
    finally:
        daemon.stop()


def long_history(path: Path, *, commits: int, bare_remote: Path) -> None:
    """A repository with ``commits`` commits, made in one `git fast-import`, the last one a small deployment."""
    path.mkdir(parents=True)
    sh(*GIT, "init", "-q", str(path))
    text = ONE_MEMO.replace('"V"', '"x"')
    stream = []
    for i in range(commits):
        content = text if i == commits - 1 else f"history {i}\n"
        name = "deployment.nix" if i == commits - 1 else "HISTORY"
        stream.append(f"commit refs/heads/main\ncommitter bench <bench@example.invalid> {1700000000 + i} +0000\n")
        message = f"c{i}"
        stream.append(f"data {len(message)}\n{message}\n")
        stream.append(f"M 100644 inline {name}\ndata {len(content.encode())}\n{content}\n")
    subprocess.run(["git", "fast-import", "--quiet"], cwd=path, input="".join(stream).encode(), check=True)
    sh(*GIT, "checkout", "-q", "main", cwd=path)
    sh(*GIT, "init", "-q", "--bare", str(bare_remote))
    sh(*GIT, "push", "-q", str(bare_remote), "main", cwd=path)


def state_commit(table: Table) -> None:
    """Scenario 3, in process: the cost of recording a one-resource change."""
    from controller.model import ResourceState
    from controller.state_branch import StateBranch, open_repository

    def measure(n: int, repeat: int = 20) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["git", "init", "-q", tmp], check=True)
            store = StateBranch(open_repository(Path(tmp)))
            record = lambda i, v=0: ResourceState(f"r{i}", "local.memo", {"initialize_with": v}, {"value": v})  # noqa: E731
            store.commit(upserts={f"r{i}": record(i) for i in range(n)}, deletes=(), meta={}, message="all")
            times = []
            for k in range(1, repeat + 1):
                started = time.perf_counter()
                store.commit(upserts={"r0": record(0, k)}, deletes=(), meta={"run": k}, message=f"change {k}")
                times.append(time.perf_counter() - started)
            return statistics.median(times)

    small, large = measure(10), measure(BIG)
    small, large = min(small, measure(10)), min(large, measure(BIG))  # each twice: the first run of a process is cold
    ratio = large / small
    table.add(
        Row(
            "3 state commit, one resource changed",
            "10,000 vs 10",
            f"{large * 1000:.1f} ms",
            f"{small * 1000:.1f} ms (10 resources)",
            f"{ratio:.1f}",
            "<= 5 (aim 2)",
            verdict(ratio <= 5),
        )
    )


def push_to_applied(table: Table, tmp: Path, *, webhook_pushes: int, polling_pushes: int) -> None:
    """Scenario 4: from `git push` returning to the state commit on the remote."""
    for webhook in (True, False):
        latencies = sorted(push_latencies(tmp, webhook=webhook, pushes=webhook_pushes if webhook else polling_pushes))
        p50 = statistics.median(latencies)
        p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
        if webhook:
            table.add(
                Row(
                    "4 push to applied, webhook",
                    f"1 resource, {len(latencies)} pushes",
                    f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {latencies[-1]:.3f} s",
                    target="p50 < 0.5 s, p99 < 1 s",
                    met=verdict(p50 < 0.5 and p99 < 1),
                )
            )
        else:
            table.add(
                Row(
                    "4 push to applied, polling 1 s",
                    f"1 resource, {len(latencies)} pushes",
                    f"p50 {p50:.3f} s, max {latencies[-1]:.3f} s",
                )
            )


def push_latencies(tmp: Path, *, webhook: bool, pushes: int) -> list[float]:
    root = tmp / ("webhook" if webhook else "polling")
    root.mkdir()
    remote, clone = root / "remote.git", root / "clone"
    text = ONE_MEMO
    git_repo(clone, {"deployment.nix": text.replace("V", "0")}, bare_remote=remote)
    port = free_port()
    (root / "secret").write_text("bench-secret")
    (root / "nixgitops.toml").write_text(
        f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
        f'[deployments.b]\nrepository = "{remote}"\ninterval = "{"1h" if webhook else "1s"}"\njitter = "1ms"\n'
        f'[receivers.hook]\nkind = "github"\nsecret_file = "{root / "secret"}"\ndeployments = ["b"]\n'
    )

    def applied(sha: str) -> bool:
        done = subprocess.run(
            ["git", "--git-dir", str(remote), "log", "-1", "--format=%B", "nixgitops/state"],
            capture_output=True,
            text=True,
            check=False,
        )
        return f"Source-Commit: {sha}" in done.stdout

    def wait_applied(sha: str) -> None:
        deadline = time.monotonic() + 60
        while not applied(sha):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{sha} was not applied within 60 s; see {root / 'daemon.log'}")
            time.sleep(0.005)

    daemon = Daemon(root / "nixgitops.toml", port)
    try:
        if webhook:
            daemon.reconcile("b")
        else:
            wait_applied(sh("git", "rev-parse", "HEAD", cwd=clone).strip())
        latencies = []
        for i in range(1, pushes + 1):
            (clone / "deployment.nix").write_text(text.replace("V", str(i)))
            sh(*GIT, "commit", "-qam", f"v{i}", cwd=clone)
            sh(*GIT, "push", "-q", str(remote), "HEAD:refs/heads/main", cwd=clone)
            pushed = time.perf_counter()
            sha = sh("git", "rev-parse", "HEAD", cwd=clone).strip()
            if webhook:
                body = json.dumps(
                    {"ref": "refs/heads/main", "after": sha, "repository": {"clone_url": str(remote)}}
                ).encode()
                signature = "sha256=" + hmac.new(b"bench-secret", body, hashlib.sha256).hexdigest()
                daemon.post(
                    "/hooks/hook",
                    body,
                    {"X-Hub-Signature-256": signature, "X-GitHub-Event": "push", "X-GitHub-Delivery": sha},
                )
            wait_applied(sha)
            latencies.append(time.perf_counter() - pushed)
    finally:
        daemon.stop()
    return latencies


def idle(table: Table, tmp: Path, *, deployments: int, window: float) -> None:
    """Scenario 5: the daemon's CPU and memory while its 50 remotes do not change (default interval, 1 min)."""
    root = tmp / "idle"
    root.mkdir()
    port = free_port()
    config = [f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n']
    text = ONE_MEMO.replace('"V"', '"x"')
    for i in range(deployments):
        git_repo(root / f"d{i}.src", {"deployment.nix": text}, bare_remote=root / f"d{i}.git")
        config.append(f'[deployments.d{i}]\nrepository = "{root / f"d{i}.git"}"\n')
    (root / "nixgitops.toml").write_text("\n".join(config))
    daemon = Daemon(root / "nixgitops.toml", port)
    try:
        deadline = time.monotonic() + 300
        while True:
            done = [
                d for d in daemon.get("/api/v1/deployments") if (d.get("lastRun") or {}).get("outcome") == "success"
            ]
            if len(done) == deployments:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(done)} of {deployments} deployments applied within 300 s")
            time.sleep(0.5)
        before, started = cpu_seconds(daemon.proc.pid), time.monotonic()
        time.sleep(window)
        cpu = (cpu_seconds(daemon.proc.pid) - before) / (time.monotonic() - started)
        rss = status_kb(daemon.proc.pid, "VmRSS") / 1024
        runs = sum(len(daemon.get(f"/api/v1/deployments/d{i}/runs")) for i in range(deployments))
    finally:
        daemon.stop()
    table.add(
        Row(
            "5 idle daemon",
            f"{deployments} unchanged deployments, polled every 1 min",
            f"{cpu * 100:.2f}% of a core, RSS {rss:.0f} MB ({runs} runs recorded)",
            target="< 2% of a core, < 150 MB",
            met=verdict(cpu < 0.02 and rss < 150),
        )
    )


def flake_deployment(n: int, out: Path, *, store_paths: bool, nonce: str) -> str:
    """The deployment of ``deployment()`` as the flake output ``nixgitops``; with ``store_paths``, every resource's
    contents name a derivation of its own (built by ``/bin/sh``)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["{", "  outputs = { self }: {", "    nixgitops = { members, providers, system, ... }:", "    let"]
    lines.append(
        f'      tool = i: derivation {{ name = "bench-{nonce}-${{toString i}}"; inherit system; builder = "/bin/sh";'
        ' args = [ "-c" "echo $name > $out" ]; };'
    )
    lines += ["    in {"]
    for i in range(n):
        contents = f'"v{i} ${{tool {i}}}"' if store_paths else f'"v{i}"'
        lines.append(
            f"      members.r{i} = {{ type = providers.local.file;"
            f' inputs = {{ name = "{out}/r{i}"; contents = {contents}; }}; }};'
        )
    lines += ["    };", "  };", "}"]
    return "\n".join(lines) + "\n"


def builds(table: Table, tmp: Path, *, n: int) -> None:
    """Scenario 7: a flake's evaluation and the store paths' cost, plan with no change and apply."""
    nonce = hashlib.sha256(str(time.time()).encode()).hexdigest()[:8]  # builds for real, not from an earlier run
    env = {**os.environ, "NIX_CONFIG": "substituters ="}
    plain = tmp / "builds-plain"
    git_repo(plain, {"deployment.nix": deployment(n, "independent", tmp / "out-builds-plain")})
    timed([*NIXGITOPS, "apply", "--yes", "-q"], plain, env)
    base = median_of(5, lambda: timed([*NIXGITOPS, "plan"], plain, env).seconds)
    label = f"{n:,}"
    table.add(Row("7 plan, no change: deployment.nix", label, f"{base:.3f} s"))
    for store_paths in (False, True):
        repo = tmp / f"builds-flake-{store_paths}"
        text = flake_deployment(n, tmp / f"out-builds-{store_paths}", store_paths=store_paths, nonce=nonce)
        git_repo(repo, {"flake.nix": text})
        applied = timed([*NIXGITOPS, "apply", "--yes", "-q", "--flake"], repo, env)
        plan = median_of(5, lambda: timed([*NIXGITOPS, "plan", "--flake"], repo, env).seconds)  # noqa: B023
        what = "a store path in each" if store_paths else "no store path"
        table.add(
            Row(f"7 plan, no change: flake, {what}", label, f"{plan:.3f} s", f"{base:.3f} s", f"{plan / base:.2f}")
        )
        floor = "-"
        if store_paths:  # the same builds, by Nix alone
            fresh = hashlib.sha256(nonce.encode()).hexdigest()[:8]
            expression = (
                f'builtins.genList (i: derivation {{ name = "bench-{fresh}-${{toString i}}";'
                ' system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo $name > $out" ]; })'
                f" {n}"
            )
            floor = f"{timed(['nix-build', '--no-out-link', '-E', expression], repo, env).seconds:.2f} s (nix-build)"
        table.add(Row(f"7 apply, all create: flake, {what}", label, f"{applied.seconds:.2f} s", floor))


def sensitive_deployment(n: int, out: Path, *, marked: bool, chained: bool = False) -> str:
    """``n`` local.file resources whose contents are a value of their own, marked sensitive or not; chained: local.memo
    resources each holding its value and part of the previous one's output (every output is then sensitive too)."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["{ members, providers, sensitive, ... }:", "{"]
    for i in range(n):
        value = f'sensitive "secret-{i}-4f2a9c"' if marked else f'"secret-{i}-4f2a9c"'
        if chained:
            previous = f' + "," + builtins.substring 0 40 members.r{i - 1}.outputs.value' if i else ""
            lines.append(
                f"  members.r{i} = {{ type = providers.local.memo; inputs.initialize_with = {value}{previous}; }};"
            )
            continue
        lines.append(
            f"  members.r{i} = {{ type = providers.local.file;"
            f' inputs = {{ name = "{out}/r{i}"; contents = {value}; }}; }};'
        )
    lines.append("}")
    return "\n".join(lines) + "\n"


def encryption(table: Table, tmp: Path, *, n: int) -> None:
    """Scenario 9: sealing sensitive values, at apply and at a no-change plan; and a chain of sensitive resources,
    whose every evaluation pass reads (decrypts) the outputs before it."""
    import pyrage

    key = pyrage.x25519.Identity.generate()
    identity = tmp / "bench-identity.txt"
    identity.write_text(f"{key}\n")
    ssh = tmp / "bench-ssh"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh))
    age, both = [str(key.to_public())], [str(key.to_public()), ssh.with_suffix(".pub").read_text().strip()]
    variants = {
        "plain (no sensitive)": (False, [], False),
        "sensitive, no recipients": (True, [], False),
        "sensitive, 1 age recipient": (True, age, False),
        "sensitive, age + SSH recipients": (True, both, False),
        "chained, plain": (False, [], True),
        "chained, sensitive, 1 age recipient": (True, age, True),
    }
    base: tuple[float, float] | None = None
    for what, (marked, recipients, chained) in variants.items():
        if what == "chained, plain":
            base = None  # (the chain against the plain chain)
        name = f"secrets-{len(recipients)}-{marked}-{chained}"
        repo = tmp / name
        files = {"deployment.nix": sensitive_deployment(n, tmp / f"out-{name}", marked=marked, chained=chained)}
        if recipients:
            files[".nixgitops/recipients"] = "\n".join(recipients) + "\n"
            (repo / ".nixgitops").mkdir(parents=True)
        git_repo(repo, files)
        key_args = ["--identity", str(identity)]
        applied = timed([*NIXGITOPS, "apply", "--yes", "-q", *key_args], repo).seconds
        plan = median_of(3, lambda: timed([*NIXGITOPS, "plan", *key_args], repo).seconds)  # noqa: B023
        if not sh(*NIXGITOPS, "plan", *key_args, cwd=repo).startswith("No changes."):
            raise RuntimeError(f"{what}: the plan after apply is not empty: the figure would measure something else")
        if base is None:
            base = (applied, plan)
        label = f"{n:,}"
        ratio = f"{applied / base[0]:.2f}"
        table.add(Row(f"9 apply, all create: {what}", label, f"{applied:.2f} s", f"{base[0]:.2f} s", ratio))
        table.add(
            Row(f"9 plan, no change: {what}", label, f"{plan:.3f} s", f"{base[1]:.3f} s", f"{plan / base[1]:.2f}")
        )


def preview_latency(table: Table, tmp: Path, *, n: int, updates: int) -> None:
    """Scenario 8: from `git push` of a pull request's head (and its signed webhook) to the preview's success status
    on the forge (a fake GitHub on loopback, tests/fakeforge.py), for a deployment of ``n`` resources."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fakeforge import FakeGitHub

    root = tmp / "previews"
    remote, clone = root / "org" / "infra.git", root / "clone"
    out = root / "out"
    git_repo(clone, {"deployment.nix": deployment(n, "independent", out)}, bare_remote=remote)
    url = f"file://{remote}"
    port = free_port()
    latencies: list[float] = []
    with FakeGitHub(repository="org/infra", prefix="") as forge:
        (root / "token").write_text(forge.token)
        (root / "secret").write_text("bench-secret")
        (root / "nixgitops.toml").write_text(
            f'[controller]\ndata_dir = "{root / "data"}"\n[server]\nlisten = "127.0.0.1:{port}"\n'
            f'[forges.gh]\nkind = "github"\napi_url = "{forge.url}"\ntoken_file = "{root / "token"}"\n'
            f'[receivers.hook]\nkind = "github"\nsecret_file = "{root / "secret"}"\ndeployments = ["b"]\n'
            f'[deployments.b]\nrepository = "{url}"\ninterval = "1h"\njitter = "1ms"\ndrift_interval = "off"\n'
            'forge = "gh"\npreviews = true\n'
        )
        daemon = Daemon(root / "nixgitops.toml", port)
        try:
            daemon.reconcile("b")
            sh(*GIT, "checkout", "-q", "-b", "topic", cwd=clone)
            for i in range(updates):
                text = (clone / "deployment.nix").read_text()
                (clone / "deployment.nix").write_text(text.replace(f'"v{i % n}"', f'"v{i % n}-pr{i}"', 1))
                sh(*GIT, "commit", "-qam", f"update {i}", cwd=clone)
                head = sh("git", "rev-parse", "HEAD", cwd=clone).strip()
                forge.add_pull_request(1, head, head_branch="topic")
                started = time.monotonic()
                sh(*GIT, "push", "-q", str(remote), "HEAD:refs/heads/topic", "HEAD:refs/pull/1/head", cwd=clone)
                repo = {"id": 1, "clone_url": url}
                body = json.dumps(
                    {
                        "action": "synchronize" if i else "opened",
                        "number": 1,
                        "repository": repo,
                        "pull_request": {
                            "number": 1,
                            "head": {"sha": head, "ref": "topic", "repo": repo},
                            "base": {"ref": "main", "repo": repo},
                        },
                    }
                ).encode()
                signature = "sha256=" + hmac.new(b"bench-secret", body, hashlib.sha256).hexdigest()
                headers = {"X-Hub-Signature-256": signature, "X-GitHub-Event": "pull_request"}
                daemon.post("/hooks/hook", body, {**headers, "X-GitHub-Delivery": f"p{i}"})
                deadline = time.monotonic() + 120
                while not any(s.state == "success" for s in forge.statuses(head)):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"no preview of {head} within 120 s; see {root}")
                    time.sleep(0.005)
                latencies.append(time.monotonic() - started)
        finally:
            daemon.stop()
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))]
    table.add(
        Row(
            "8 push to preview status",
            f"{n} resources, {len(latencies)} pull-request updates",
            f"p50 {p50:.3f} s, p99 {p99:.3f} s, max {latencies[-1]:.3f} s",
        )
    )


def cpu_seconds(pid: int) -> float:
    """User and system time of a process and of the children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--only", default="1a,1b,2,3,4,5,6,7,8,9")
    parser.add_argument("--markdown", type=Path, help="also write the table here, as Markdown")
    parser.add_argument("--idle-window", type=float, default=60.0, help="seconds of idle measured (scenario 5)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    only = set(args.only.split(","))
    started = time.monotonic()
    nix = sh("nix-instantiate", "--version").strip()
    gitv = sh("git", "--version").strip()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {nix}, {gitv}"
    print(f"machine: {machine}", flush=True)
    table = Table()
    with tempfile.TemporaryDirectory(prefix="nixgitops-bench-") as tmp:
        if only & {"1a", "2", "6"}:
            cli(table, sizes, only, Path(tmp))
        if "1b" in only:
            daemon_no_change(table, sizes, Path(tmp))
        if "3" in only:
            state_commit(table)
        if "4" in only:
            push_to_applied(table, Path(tmp), webhook_pushes=100, polling_pushes=10)
        if "5" in only:
            idle(table, Path(tmp), deployments=50, window=args.idle_window)
        if "7" in only:
            builds(table, Path(tmp), n=1000)
        if "8" in only:
            preview_latency(table, Path(tmp), n=100, updates=20)
        if "9" in only:
            encryption(table, Path(tmp), n=1000)
    print(f"\nmachine: {machine}; whole run {time.monotonic() - started:.0f} s\n")
    print(table.markdown())
    if args.markdown:
        args.markdown.write_text(f"Machine: {machine}.\n\n" + table.markdown())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
