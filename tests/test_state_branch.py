"""State on a Git branch, with real repositories."""

from __future__ import annotations

import json
from pathlib import Path

import pygit2
import pytest
from conftest import git

from controller.errors import StateError
from controller.model import ResourceState
from controller.state_branch import StateBranch, open_repository, record_location, source_commit


@pytest.fixture
def repo(tmp_path: Path) -> pygit2.Repository:
    git(tmp_path, "init", "-q", "-b", "main")
    (tmp_path / "deployment.nix").write_text("{ ... }: { }")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "init")
    return open_repository(tmp_path)


def resource(path: str, value: int = 1) -> ResourceState:
    return ResourceState(path, "local.memo", {"initialize_with": value}, {"value": value}, ("other",))


def test_round_trip_one_blob_per_resource(repo: pygit2.Repository, tmp_path: Path) -> None:
    store = StateBranch(repo, deployment="web")
    assert store.load() == {}
    commit = store.commit(
        upserts={"a": resource("a"), "b.c": resource("b.c", 2)}, deletes=(), meta={"x": 1}, message="first\n"
    )
    assert commit is not None
    assert store.load() == {"a": resource("a"), "b.c": resource("b.c", 2)}
    assert store.load_meta() == {"x": 1}
    files = git(tmp_path, "ls-tree", "-r", "--name-only", "nixgitops/state").split()
    assert files == sorted(
        ["web/deployment.json", *("web/resources/{}/{}".format(*record_location(p)) for p in ("a", "b.c"))]
    )
    assert git(tmp_path, "log", "-1", "--format=%an <%ae>|%s", "nixgitops/state").strip() == (
        "nixgitops <nixgitops@localhost>|first"
    )


def test_updates_deletes_and_nothing_to_commit(repo: pygit2.Repository) -> None:
    store = StateBranch(repo)
    first = store.commit(upserts={"a": resource("a"), "b": resource("b")}, deletes=(), meta={}, message="1")
    second = store.commit(upserts={"a": resource("a", 5)}, deletes={"b"}, meta={}, message="2")
    assert second != first
    assert store.load() == {"a": resource("a", 5)}
    assert store.commit(upserts={"a": resource("a", 5)}, deletes=(), meta={}, message="3") is None
    tip = store.tip()
    assert tip is not None and [str(p) for p in tip.parent_ids] == [first]


def test_other_deployments_are_left_alone(repo: pygit2.Repository) -> None:
    StateBranch(repo, deployment="one").commit(upserts={"a": resource("a")}, deletes=(), meta={}, message="1")
    StateBranch(repo, deployment="two").commit(upserts={"a": resource("a", 2)}, deletes=(), meta={}, message="2")
    assert StateBranch(repo, deployment="one").load() == {"a": resource("a")}


def test_work_tree_and_head_are_untouched(repo: pygit2.Repository, tmp_path: Path) -> None:
    head = source_commit(repo)
    StateBranch(repo).commit(upserts={"a": resource("a")}, deletes=(), meta={}, message="1")
    assert source_commit(repo) == head
    assert git(tmp_path, "status", "--porcelain") == ""
    assert git(tmp_path, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"


def test_refuses_when_the_state_branch_is_checked_out(repo: pygit2.Repository, tmp_path: Path) -> None:
    store = StateBranch(repo)
    store.commit(upserts={"a": resource("a")}, deletes=(), meta={}, message="1")
    git(tmp_path, "checkout", "-q", "nixgitops/state")
    with pytest.raises(StateError, match="checked out"):
        store.commit(upserts={"b": resource("b")}, deletes=(), meta={}, message="2")


def test_a_corrupt_record_is_a_clear_error(repo: pygit2.Repository, tmp_path: Path) -> None:
    store = StateBranch(repo)
    store.commit(upserts={"a": resource("a")}, deletes=(), meta={}, message="1")
    blob = repo.create_blob(b"not json")
    tree = repo.TreeBuilder()
    tree.insert("a.json", blob, pygit2.enums.FileMode.BLOB)
    dep = repo.TreeBuilder()
    dep.insert("resources", tree.write(), pygit2.enums.FileMode.TREE)
    root = repo.TreeBuilder()
    root.insert("default", dep.write(), pygit2.enums.FileMode.TREE)
    sig = pygit2.Signature("t", "t@t")
    repo.create_commit("refs/heads/nixgitops/state", sig, sig, "bad", root.write(), [store.tip().id])  # type: ignore[union-attr]
    with pytest.raises(StateError, match=r"default/resources/a\.json .* is not a valid resource record"):
        store.load()


def test_not_a_repository(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="git init"):
        open_repository(tmp_path / "nowhere")


def test_invalid_branch_name(repo: pygit2.Repository) -> None:
    with pytest.raises(StateError, match="not a valid Git branch name"):
        StateBranch(repo, branch="bad..name")


def test_source_commit_of_an_empty_repository(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    assert source_commit(open_repository(tmp_path)) is None


def test_loads_are_cached_by_tree_id(repo: pygit2.Repository) -> None:
    store = StateBranch(repo)
    store.commit(upserts={"a": resource("a")}, deletes=(), meta={}, message="1")
    assert store.load() == {"a": resource("a")}
    cache = Path(repo.path) / "nixgitops" / "state-cache" / "default"
    first = [p.name for p in cache.glob("*.json")]
    assert len(first) == 1
    store.commit(upserts={"b": resource("b")}, deletes=(), meta={}, message="2")
    assert store.load() == {"a": resource("a"), "b": resource("b")}, "a new tree is never served from an old cache"
    second = [p.name for p in cache.glob("*.json")]
    assert len(second) == 1 and second != first
    assert store.load() == {"a": resource("a"), "b": resource("b")}


def test_loads_are_kept_in_memory_and_callers_get_their_own_copy(repo: pygit2.Repository) -> None:
    store = StateBranch(repo)
    store.commit(upserts={"a": resource("a")}, deletes=(), meta={}, message="1")
    first = store.load()
    first["intruder"] = resource("intruder")  # a caller changing its copy changes nobody else's
    cache = Path(repo.path) / "nixgitops" / "state-cache" / "default"
    for file in cache.glob("*.json"):
        file.unlink()  # the disk cache gone: the memory of this tree still answers
    again = StateBranch(repo).load()
    assert again == {"a": resource("a")}
    store.commit(upserts={"b": resource("b")}, deletes=(), meta={}, message="2", state=again | {"b": resource("b")})
    (written,) = cache.glob("*.json")
    stamp = written.stat().st_mtime_ns
    # a meta-only commit keeps the resources tree: its cache is not written again, the state is the same
    store.commit(upserts={}, deletes=(), meta={"run": 3}, message="3", state=store.load())
    assert [p.stat().st_mtime_ns for p in cache.glob("*.json")] == [stamp]
    assert store.load() == {"a": resource("a"), "b": resource("b")}


def test_records_of_the_flat_layout_are_read_and_moved_into_buckets(repo: pygit2.Repository) -> None:
    """State written by earlier versions (resources/<path>.json) is read, and the next commit moves it."""
    flat = repo.TreeBuilder()
    for path in ("a", "b.c"):
        blob = repo.create_blob(json.dumps(resource(path).to_json()).encode())
        flat.insert(f"{path}.json", blob, pygit2.enums.FileMode.BLOB)
    dep = repo.TreeBuilder()
    dep.insert("resources", flat.write(), pygit2.enums.FileMode.TREE)
    root = repo.TreeBuilder()
    root.insert("default", dep.write(), pygit2.enums.FileMode.TREE)
    sig = pygit2.Signature("t", "t@t")
    repo.create_commit("refs/heads/nixgitops/state", sig, sig, "old layout", root.write(), [])
    store = StateBranch(repo)
    assert store.load() == {"a": resource("a"), "b.c": resource("b.c")}
    store.commit(upserts={"d": resource("d")}, deletes=("a",), meta={}, message="new layout")
    assert store.load() == {"b.c": resource("b.c"), "d": resource("d")}
    tree = store.tip().tree["default"]["resources"]  # type: ignore[union-attr]
    assert all(isinstance(entry, pygit2.Tree) and len(entry.name or "") == 2 for entry in tree)
