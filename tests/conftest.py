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


@pytest.fixture
def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


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
