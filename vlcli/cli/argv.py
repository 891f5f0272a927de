"""Normalisation of the command line before click parses it.

Every settings field is accepted as ``--name value``, ``--name=value``, with dashes instead of
underscores, or under an alias (``--feature``, ``--wordMaskRate``, ...). Booleans accept ``--x``,
``--no-x`` / ``--no_x``, ``--x true`` and ``--x=false``. This pass rewrites all of those to the single
form ``--canonical_name=value`` that the declared click options expect, so values such as ``-1`` are
never mistaken for options, and unknown names fail with a suggestion instead of a usage dump.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from vlcli.config.resolve import canonical_name
from vlcli.config.settings import ALIASES, FIELDS
from vlcli.config.types import BOOL_WORDS
from vlcli.errors import UnknownArgumentError


def _bool_field(name: str) -> str | None:
    """Canonical name if ``name`` (possibly ``no-x`` / ``no_x``) is a boolean field."""
    canon = canonical_name(name)
    return canon if canon is not None and FIELDS[canon].is_bool else None


def normalize(argv: list[str], command_options: Mapping[str, bool]) -> list[str]:
    """Rewrite settings options of ``argv`` (the arguments after the sub-command name).

    ``command_options`` maps the command's own option strings (``--profile``, ``-p``, ``--json``) to
    whether they take a value; those pass through untouched.
    """
    out: list[str] = []
    seen = _Seen()
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            out.extend(argv[i:])
            break
        if not tok.startswith("--") or tok == "--help":
            out.append(tok)
            i += 1
            continue
        name, has_eq, value = tok[2:].partition("=")
        if f"--{name}" in command_options:
            out.append(tok)
            given = value if has_eq else None
            if command_options[f"--{name}"] and not has_eq and i + 1 < len(argv):
                out.append(argv[i + 1])
                given = argv[i + 1]
                i += 1
            if f"--{name}" not in REPEATABLE:
                seen.add(f"--{name.replace('_', '-')}", f"--{name}", given)
            i += 1
            continue
        canon = canonical_name(name)
        negated = None
        if canon is None and (name.startswith("no-") or name.startswith("no_")):
            negated = _bool_field(name[3:])
        if negated is not None:
            if has_eq:
                raise UnknownArgumentError(f"--{name} takes no value; write --{negated} {value} or --{name}")
            out.append(f"--{negated}=false")
            seen.add(negated, f"--{name}", "false")
            i += 1
            continue
        if canon is None:
            raise UnknownArgumentError(_unknown_message(name, command_options))
        if FIELDS[canon].is_bool:
            if has_eq:
                out.append(f"--{canon}={value}")
            elif i + 1 < len(argv) and argv[i + 1].strip().lower() in BOOL_WORDS:
                out.append(f"--{canon}={argv[i + 1]}")
                i += 1
            else:
                out.append(f"--{canon}=true")
            word = out[-1].partition("=")[2].strip().lower()
            seen.add(canon, tok.partition("=")[0], str(BOOL_WORDS.get(word, word)).lower())
            i += 1
            continue
        if has_eq:
            out.append(f"--{canon}={value}")
        elif i + 1 < len(argv):
            out.append(f"--{canon}={argv[i + 1]}")
            i += 1
        else:
            raise UnknownArgumentError(f"--{name} needs a value (e.g. --{canon} {_example(canon)})")
        i += 1
        seen.add(out[-1][2:].partition("=")[0], tok.partition("=")[0], out[-1].partition("=")[2])
    return out


REPEATABLE = frozenset({"--profile", "-p"})
"""Options that may be given several times (profiles merge left to right); any other repeat is an error."""


class _Seen:
    """Options given so far: a second value for the same option is an error naming both."""

    def __init__(self) -> None:
        self.values: dict[str, tuple[str, str | None]] = {}

    def add(self, key: str, spelled: str, value: str | None) -> None:
        if key in self.values:
            first, old = self.values[key]
            if old != value or value is None:
                shown = f"{first} {old}" if old is not None else first
                now = f"{spelled} {value}" if value is not None else spelled
                raise UnknownArgumentError(f"{shown} and {now}: an option given twice; give it once")
            return
        self.values[key] = (spelled, value)


def _example(name: str) -> str:
    default = FIELDS[name].default
    return "VALUE" if default in (None, "", []) else str(default)


def _unknown_message(name: str, command_options: Iterable[str]) -> str:
    pool = [f"--{n}" for n in list(FIELDS) + list(ALIASES)] + [o for o in command_options if o.startswith("--")]
    close = difflib.get_close_matches(f"--{name.replace('-', '_')}", pool, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(f"--{name}", pool, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; `vlcli inspect-config --help` lists every argument"
    return f"unknown argument --{name}{hint}"
