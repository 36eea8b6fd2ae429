"""Showing plans and run results to people (text in the manner of ``terraform plan``) and machines (JSON).

Pure: strings and dicts out, no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from controller.model import ABSENT, UNKNOWN
from controller.planning import Action, Change, Plan
from controller.sensitive import MASK, Sensitive, contains, mask_default, masked

SYMBOL = {Action.CREATE: "+", Action.UPDATE: "~", Action.REPLACE: "-/+", Action.DELETE: "-", Action.NOOP: " "}
VERB = {
    Action.CREATE: "will be created",
    Action.UPDATE: "will be updated in place",
    Action.REPLACE: "must be replaced",
    Action.DELETE: "will be deleted",
}
FORMAT_VERSION = 1


def value(v: Any) -> str:
    if v is UNKNOWN:
        return "(known after apply)"
    if v is ABSENT:
        return "null"
    if isinstance(v, Sensitive):
        return MASK
    return json.dumps(v, ensure_ascii=False, sort_keys=True, default=mask_default)


def _change(change: Change) -> list[str]:
    symbol = SYMBOL[change.action]
    lines = [
        f"  # {change.path} {VERB[change.action]} ({change.reason})",
        f"{symbol:>3} {change.path} ({change.type})",
    ]
    width = max((len(f.field) for f in change.fields), default=0)
    for f in change.fields:
        if change.action is Action.CREATE:
            lines.append(f"      + {f.field:<{width}} = {value(f.after)}")
        elif change.action is Action.DELETE:
            lines.append(f"      - {f.field:<{width}} = {value(f.before)}")
        elif f.before is ABSENT:
            lines.append(f"      + {f.field:<{width}} = {value(f.after)}")
        elif f.after is ABSENT:
            lines.append(f"      - {f.field:<{width}} = {value(f.before)}")
        else:
            before, after = value(f.before), value(f.after)
            # a sensitive value changed: the change shows, neither value does
            note = "  # a sensitive value changed" if before == after and contains(f.after) else ""
            lines.append(f"      ~ {f.field:<{width}} = {before} -> {after}{note}")
    if change.action in (Action.UPDATE, Action.REPLACE) and change.before is not None and change.after is not None:
        hidden = len(set(change.before.inputs) & set(change.after.inputs)) - sum(
            1 for f in change.fields if f.before is not ABSENT and f.after is not ABSENT
        )
        if hidden > 0:
            lines.append(f"        ({hidden} unchanged input{'s' if hidden != 1 else ''} hidden)")
    return lines


def summary(counts: Mapping[str, int]) -> str:
    return (
        f"{counts['create']} to create, {counts['update']} to update, {counts['replace']} to replace,"
        f" {counts['delete']} to delete"
    )


def _providers(plan: Plan) -> str:
    """The providers whose command changed (a rebuild), old and new, with what that means."""
    out = []
    for p in plan.providers:
        out.append(
            f"  # provider {p.name} changed since the last apply: its resources' next operations run the new one"
        )
        out.append(f"  ~ providers.{p.name}")
        for key in ("executable", "args"):
            if p.before.get(key) != p.after.get(key):
                out.append(f"      ~ {key} = {value(p.before.get(key))} -> {value(p.after.get(key))}")
        out.append("")
    return "\n".join(out) + "\n" if out else ""


def render_plan(plan: Plan) -> str:
    """The plan as text for people."""
    counts = plan.counts()
    rebuilt = _providers(plan)
    if not plan.has_changes:
        return rebuilt + f"No changes. The {counts['noop']} resource(s) in state match the deployment.\n"
    out = [rebuilt.rstrip("\n")] if rebuilt else []
    out += ["nixgitops will perform the following actions:", ""]
    for change in plan.changes:
        if change.action is not Action.NOOP:
            out.extend(_change(change))
            out.append("")
    for member, waits in plan.structural:
        shown = f"{member}.*" if member else "*"
        out.append(f"  ? {shown}  (known after apply of {', '.join(waits)})")
    if plan.structural:
        out.append("")
    out.append(f"Plan: {summary(counts)}. {counts['noop']} unchanged.")
    if plan.structural:
        out.append(
            f"The members of {len(plan.structural)} composite(s) depend on outputs: apply plans them again once"
            " those are known."
        )
    return "\n".join(out) + "\n"


def change_json(change: Change, depends_on: frozenset[str] | None = None) -> dict[str, Any]:
    after = change.after
    fields = []
    for f in change.fields:
        item: dict[str, Any] = {"field": f.field}
        if f.before is not ABSENT:
            item["before"] = masked(f.before)
        if f.after is UNKNOWN:
            item["afterUnknown"] = True
        elif f.after is not ABSENT:
            item["after"] = masked(f.after)
        if contains(f.before) or contains(f.after):
            item["sensitive"] = True
        fields.append(item)
    return {
        "path": change.path,
        "action": change.action.value,
        "type": change.type,
        "provider": change.provider,
        "reason": change.reason,
        "before": masked(dict(change.before.inputs)) if change.before is not None else None,
        "after": (masked({k: v for k, v in after.inputs.items() if v is not UNKNOWN}) if after is not None else None),
        "afterUnknown": list(after.unknown_fields) if after is not None else [],
        "fields": fields,
        "dependsOn": sorted(depends_on or ()),
    }


def plan_json(
    plan: Plan,
    *,
    deployment: str,
    source_commit: str | None,
    dependencies: Mapping[str, frozenset[str]],
    unchanged: bool = True,
) -> dict[str, Any]:
    """The plan as one JSON object for machines (``nixgitops plan --json``); without ``unchanged``, the resources
    that do not change are only counted in the summary."""
    changes = []
    for change in plan.changes:
        if not unchanged and change.action is Action.NOOP:
            continue
        deps = dependencies.get(change.path)
        if deps is None and change.before is not None:
            deps = frozenset(change.before.dependencies)
        changes.append(change_json(change, deps))
    return {
        "formatVersion": FORMAT_VERSION,
        "deployment": deployment,
        "sourceCommit": source_commit,
        "changes": changes,
        "providers": [{"name": p.name, "before": dict(p.before), "after": dict(p.after)} for p in plan.providers],
        "knownAfterApply": [{"member": m, "waitsFor": list(w)} for m, w in plan.structural],
        "summary": plan.counts(),
    }
