"""A problem found in a team config: which field, what is wrong, how to fix it."""

import sys
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


_PYPI_NAMES = {"yaml": "pyyaml"}  # import names whose PyPI name differs


def missing_package(module: str, what: str) -> str:
    """What to say when `what` (a command or script) needs a package this Python lacks: which environment runs it.
    The login node's .venv has only what check and render need; everything else runs in the training env."""
    return (f"ERROR: {what} needs the Python package {module}, which {sys.executable} lacks.\n"
            "       Fix: run it in the training environment that README_install_conda.md builds:\n"
            "            source <environment.conda_sh> && conda activate <environment.conda_env>\n"
            f"       or install the package here (pip install {_PYPI_NAMES.get(module, module)}).")
