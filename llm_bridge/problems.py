"""A problem found in a team config: which field, what is wrong, how to fix it."""

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Problem:
    field: str
    message: str
    fix: str = ""
    severity: Literal["error", "warning"] = "error"

    def format(self) -> str:
        mark = "ERROR" if self.severity == "error" else "WARN "
        text = f"  {mark} {self.field}: {self.message}"
        if self.fix:
            text += f"\n         fix: {self.fix}"
        return text


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def report(source: str, problems: list[Problem]) -> str:
    n_err = len(errors(problems))
    n_warn = len(problems) - n_err
    lines = [f"{source}: {n_err} error(s), {n_warn} warning(s)"]
    # errors first, then warnings, each in file order
    lines += [p.format() for p in problems if p.severity == "error"]
    lines += [p.format() for p in problems if p.severity == "warning"]
    return "\n".join(lines)
