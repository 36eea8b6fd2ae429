"""The plan loop: passes until stable, with real Nix and a real state branch."""

from __future__ import annotations

from conftest import Checkout, assert_clean_error

from controller.engine import Engine, Settings


def chain(root: str, n: int = 12) -> str:
    lines = ["{ members, providers, ... }: {"]
    lines.append(f'  members.r0 = {{ type = providers.local.memo; inputs.initialize_with = "{root}"; }};')
    for i in range(1, n):
        output = "value" if i == 1 else "stdout"
        lines.append(
            f"  members.r{i} = {{ type = providers.local.exec;"
            f' inputs = {{ executable = "echo"; args = [ members.r{i - 1}.outputs.{output} ]; }}; }};'
        )
    return "\n".join([*lines, "}"])


def test_a_change_at_the_root_of_a_chain_takes_two_passes_not_one_per_level(checkout: Checkout) -> None:
    checkout.deploy(chain("a"))
    checkout.ok("apply", "--yes")
    engine = Engine.for_checkout(Settings(directory=checkout.path))
    assert engine.plan().passes == 1, "an unchanged deployment is planned in one pass"
    checkout.deploy(chain("b"))
    engine = Engine.for_checkout(Settings(directory=checkout.path))
    planned = engine.plan()
    assert planned.passes <= 3
    actions = {c.path: c.action.value for c in planned.plan.changes}
    assert actions == {f"r{i}": "update" for i in range(12)}
    assert planned.desired["r5"].unknown_fields == ("args",)


def test_a_removed_provider_is_needed_to_delete(checkout: Checkout, notes_provider: object) -> None:
    checkout.deploy(
        "{ members, providers, ... }: { "
        + notes_provider()  # type: ignore[operator]
        + ' members.n = { type = providers.notes.note; inputs.text = "x"; }; }'
    )
    checkout.ok("apply", "--yes")
    checkout.deploy("{ ... }: { }")
    assert_clean_error(checkout.run("plan"), "n (notes.note)", "Keep providers.notes declared")
    assert set(checkout.state()) == {"n"}


def test_a_resource_reading_its_own_outputs_is_a_cycle_at_plan(checkout: Checkout) -> None:
    checkout.deploy(
        "{ members, providers, ... }: { members.s = { type = providers.local.memo;"
        ' inputs.initialize_with = "x-${members.s.outputs.value}"; }; }'
    )
    assert_clean_error(checkout.run("plan"), "in a cycle: s -> s")
    assert checkout.state() == {}
