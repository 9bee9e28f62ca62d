import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "templates" / "team.example.yaml"


def bridge(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "llm_bridge.cli", *args], cwd=cwd, capture_output=True, text=True)


# The example is team P01's config; a copy must name its own team's partition, nodes, shares and accounts
# (`llm-bridge check` flags P01's values in a copy). Tests are team P07, as a member's edited copy would be.
OUR_TEAM = [("P01", "P07"), ("p01-team", "p07-team"), ("osk-gpu[51-53]", "osk-gpu[61-63]")]


def as_our_team(text: str) -> str:
    """The edit README step 1 asks for, on the example's text: another team's values replaced by ours."""
    for theirs, ours in OUR_TEAM:
        text = text.replace(theirs, ours)
    return text


@pytest.fixture
def example() -> dict:
    """The example as team P07's team.yaml."""
    return yaml.safe_load(as_our_team(EXAMPLE.read_text()))


@pytest.fixture
def write_team(tmp_path):
    def write(data: dict | str, name: str = "team.yaml") -> Path:
        path = tmp_path / name
        path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return path

    return write


def fake_token(prefix: str, length: int = 34) -> str:
    """A token-shaped string built at run time, so no token-like literal is ever committed."""
    return prefix + "".join("aB3xY9" for _ in range(length))[:length]
