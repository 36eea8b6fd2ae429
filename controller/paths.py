"""Member paths: how a resource's place in the tree of members is written, read and compared.

A path is a sequence of member names. It is written as the names joined by dots, a name that is not a plain
identifier (``file.txt``, ``example.com``, ``""``) in double quotes with ``\\``, ``"`` and control characters
escaped, as Nix writes an attribute path: ``myDeployment."file.txt"``. The written form is the one key used
everywhere (plans, state records, metrics labels, the API), and reading it back gives the names again, so it is
unambiguous. The harness (controller/nix/harness.nix, ``join``) writes it the same way.
"""

from __future__ import annotations

import re

from controller.errors import UserError

BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")  # (fullmatch: "$" would also match before a final newline)
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES = {"\\": "\\", '"': '"', "n": "\n", "r": "\r", "t": "\t"}


def quote(name: str) -> str:
    """One member name as it appears in a path."""
    if BARE.fullmatch(name):
        return name
    return '"' + "".join(_ESCAPES.get(c, c) for c in name) + '"'


def render(names: tuple[str, ...] | list[str]) -> str:
    return ".".join(quote(n) for n in names)


def parse(text: str) -> tuple[str, ...]:
    """The names of a written path; ``UserError`` for text that is not one."""
    names: list[str] = []
    i, n = 0, len(text)
    if not text:
        return ()
    while True:
        if i < n and text[i] == '"':
            i += 1
            name: list[str] = []
            while True:
                if i >= n:
                    raise UserError(f"The member path {text!r} has a quoted name without its closing quote.")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\":
                    if i + 1 >= n or text[i + 1] not in _UNESCAPES:
                        raise UserError(f"The member path {text!r} has an unknown escape at position {i}.")
                    name.append(_UNESCAPES[text[i + 1]])
                    i += 2
                    continue
                name.append(c)
                i += 1
            names.append("".join(name))
        else:
            end = text.find(".", i)
            end = n if end < 0 else end
            bare = text[i:end]
            if not BARE.fullmatch(bare):
                raise UserError(
                    f"The member path {text!r} has {bare!r}, which is not a plain name: write names with dots or"
                    ' other characters in double quotes, as in myDeployment."file.txt".'
                )
            names.append(bare)
            i = end
        if i == n:
            return tuple(names)
        if text[i] != ".":
            raise UserError(f"The member path {text!r} has {text[i]!r} after a quoted name; expected a dot.")
        i += 1


def within(path: str, prefix: str) -> bool:
    """True when the resource at ``path`` is ``prefix`` itself or a member under it (both written paths)."""
    if not prefix:
        return True
    if path == prefix:
        return True
    if not path.startswith(prefix + "."):
        return False
    if '"' not in prefix:  # a bare prefix ends at a dot that cannot be inside quotes
        return True
    names, under = parse(path), parse(prefix)
    return names[: len(under)] == under
