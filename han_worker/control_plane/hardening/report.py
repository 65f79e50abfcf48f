"""The rows a check reports, the table they print as, and the command's exit codes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PASS, FAIL, WARN = "pass", "fail", "warn"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class HardeningInputError(ValueError):
    """An input of the check (a flag or a file it needs) is unusable; the message names it."""


@dataclass(frozen=True)
class Row:
    check: str
    target: str
    result: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "target": self.target, "result": self.result, "detail": self.detail}


def format_table(rows: Sequence[Row]) -> str:
    header = Row("check", "target", "result", "detail")
    widths = [
        max(len(getattr(row, name)) for row in (header, *rows)) for name in ("check", "target", "result")
    ]
    return "\n".join(
        f"{row.check:<{widths[0]}} | {row.target:<{widths[1]}} | {row.result:<{widths[2]}} | {row.detail}"
        for row in (header, *rows)
    )
