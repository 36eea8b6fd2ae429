"""Provider processes, for real: pooling, reuse, and every way a provider can fail."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from conftest import NOTES_PROVIDER, nixops4_local

from controller import protocol
from controller.errors import ProviderError
from controller.evaluation import local_provider_spec
from controller.model import ProviderSpec
from controller.provider_client import Providers


def notes(log: Path) -> ProviderSpec:
    return ProviderSpec("notes", str(NOTES_PROVIDER), (str(log),), frozenset({"note"}))


def create(providers: Providers, text: str, mode: str | None = None) -> dict[str, object]:
    inputs = {"text": text} if mode is None else {"text": text, "mode": mode}
    return providers.call("notes", protocol.create_request("note", inputs), what=f"create {text}")


def test_one_process_serves_many_requests(tmp_path: Path) -> None:
    with Providers({"notes": notes(tmp_path / "log")}, size=4) as providers:
        ids = [create(providers, f"t{i}")["outputProperties"]["id"] for i in range(10)]  # type: ignore[index]
        assert providers.started() == {"notes": 1}
    assert len({str(i).split("-")[0] for i in ids}) == 1


def test_pool_grows_to_its_size_under_concurrency_and_no_further(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with Providers({"notes": notes(tmp_path / "log")}, size=3) as providers:
        results: list[object] = []

        def work(i: int) -> None:
            body = {"text": f"g{i}", "mode": "gate", "gate": str(gate)}
            results.append(providers.call("notes", protocol.create_request("note", body), what=f"g{i}"))

        threads = [threading.Thread(target=work, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        # Three requests are held by the provider until the gate opens: the pool must have grown to three.
        pool = providers._pools["notes"]
        deadline = time.monotonic() + 30
        while pool.started < 3 and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        gate.touch()
        for t in threads:
            t.join(timeout=60)
        assert len(results) == 5
        assert providers.started()["notes"] == 3


def test_error_response_keeps_the_process(tmp_path: Path) -> None:
    with Providers({"notes": notes(tmp_path / "log")}, size=1) as providers:
        with pytest.raises(ProviderError, match="refusing on purpose") as error:
            create(providers, "a", "refuse")
        assert not error.value.fatal
        create(providers, "b")
        assert providers.started() == {"notes": 1}


@pytest.mark.parametrize(
    ("mode", "needle", "unknown"),
    [
        # It ended by itself without answering: the request failed, nothing happened (settled).
        (
            "crash",
            r"exited while handling create a \(exit code 3\)\. Whether it carried out the request is not known",
            True,
        ),
        # Killed by a signal, or stopped by us: whether it did the work is not known (recovery settles it).
        ("signal", "exited while handling create a \\(killed by signal SIGKILL\\).* not known", True),
        ("garbage", "the line is not JSON: 'this is not json'", True),
        ("hang", "did not answer create a within 1s", True),
        ("wrongkind", "got updateResourceResponse", True),
    ],
)
def test_a_broken_process_is_replaced(tmp_path: Path, mode: str, needle: str, unknown: bool) -> None:
    with Providers({"notes": notes(tmp_path / "log")}, size=1, timeout=1) as providers:
        with pytest.raises(ProviderError, match=needle) as error:
            create(providers, "a", mode)
        assert error.value.fatal is unknown
        assert create(providers, "b")["outputProperties"]
        assert providers.started() == {"notes": 2}


def test_nixops4s_own_provider_exiting_on_a_request_it_does_not_know_fails_it(tmp_path: Path) -> None:
    """NixOps4's local provider prints a parse error and exits (status 0) on destroyResourceRequest."""
    spec = ProviderSpec("nix4", str(nixops4_local()), (), frozenset({"memo"}))
    with Providers({"nix4": spec}, size=1) as providers:
        created = providers.call("nix4", protocol.create_request("memo", {"initialize_with": 1}), what="create m")
        assert created == {"outputProperties": {"value": 1}}
        request = protocol.destroy_request("memo", {"initialize_with": 1}, {"value": 1})
        with pytest.raises(ProviderError, match=r"exit code 0.* counts as failed") as error:
            providers.call("nix4", request, what="destroy m")
        assert not error.value.fatal, "it exited by itself without answering: failed, nothing happened"
        assert "unknown variant `destroyResourceRequest`" in str(error.value), "its complaint is shown"


def test_missing_executable() -> None:
    spec = ProviderSpec("ghost", "/nonexistent/ghost", (), frozenset({"x"}))
    with Providers({"ghost": spec}) as providers, pytest.raises(ProviderError, match="Cannot start provider 'ghost'"):
        providers.call("ghost", protocol.create_request("x", {}), what="create")


def test_undeclared_provider() -> None:
    with Providers({}) as providers, pytest.raises(ProviderError, match="No provider 'nope' is declared"):
        providers.call("nope", protocol.create_request("x", {}), what="create")


def test_provider_logs_are_forwarded_with_its_name(tmp_path: Path) -> None:
    lines: list[str] = []
    with Providers({"notes": notes(tmp_path / "log")}, log=lines.append) as providers, pytest.raises(ProviderError):
        create(providers, "a", "crash")
    assert "[notes] notes: crashing on purpose" in lines


def test_close_ends_the_processes(tmp_path: Path) -> None:
    providers = Providers({"local": local_provider_spec()})
    body = providers.call("local", protocol.create_request("memo", {"initialize_with": 5}), what="memo")
    assert body == {"outputProperties": {"value": 5}}
    pool = providers._pools["local"]
    process = pool._all[0]
    providers.close()
    assert process.proc.returncode == 0, "the provider exits by itself on EOF"


def test_a_line_nobody_asked_for_is_a_protocol_violation(tmp_path: Path) -> None:
    with Providers({"notes": notes(tmp_path / "log")}, size=1) as providers:
        first = create(providers, "a", "chatty")
        assert first["outputProperties"] == {"id": "extra"}
        process = providers._pools["notes"]._idle[0]
        deadline = time.monotonic() + 10  # the stray line is detected once it has arrived
        while process._lines.empty() and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        with pytest.raises(ProviderError, match="wrote a line nobody asked for"):
            create(providers, "b")
