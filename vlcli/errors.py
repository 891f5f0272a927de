"""Errors a user can cause.

Every exception a user can trigger with bad input derives from :class:`VlcliError`. The CLI prints
its message as one red line (plus a fix) and exits with code 2; ``--debug`` shows the traceback.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class VlcliError(Exception):
    """Base class of user-caused errors: the message says what is wrong and how to fix it."""

    exit_code = 2


class ProfileError(VlcliError):
    """A profile cannot be found or parsed (syntax errors carry file:line:column)."""


class UnknownArgumentError(VlcliError):
    """An argument name that no command or profile knows."""


class CheckpointNotFoundError(VlcliError):
    """`load` names nothing that can be loaded."""


class NotImplementedYetError(VlcliError):
    """A command whose configuration is valid but whose work is not part of this version."""

    exit_code = 3


@dataclass(frozen=True)
class Issue:
    """One finding of configuration validation.

    ``rule`` is the compatibility-rule id (``R1``..``R41`` from the spec, ``R42``+ for vlcli's own
    checks, ``type`` for a value that does not parse); ``level`` is ``error`` or ``warning``.
    """

    rule: str
    level: str
    message: str
    fields: tuple[str, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}"

    def to_json(self) -> dict:
        return {"rule": self.rule, "level": self.level, "message": self.message, "fields": list(self.fields)}


class ConfigError(VlcliError):
    """The resolved configuration violates one or more rules; all of them are listed."""

    def __init__(self, issues: list[Issue], warnings: list[Issue] | None = None):
        self.issues = [i for i in issues if i.level == "error"]
        self.warnings = list(warnings or [])
        n = len(self.issues)
        head = f"{n} configuration error{'s' if n != 1 else ''}"
        super().__init__(head + ":\n" + "\n".join(f"  {i}" for i in self.issues))
