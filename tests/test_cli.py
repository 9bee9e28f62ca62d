"""The `bridge` console script as a user meets it."""

import shutil
import subprocess

from conftest import EXAMPLE, bridge


def test_console_script_help():
    exe = shutil.which("bridge")
    assert exe, "the `bridge` console script is not installed: pip install -e ."
    for args, expected in ([], "render"), (["check"], "--strict"), (["render"], "--out"):
        result = subprocess.run([exe, *args, "--help"], capture_output=True, text=True)
        assert result.returncode == 0
        assert expected in result.stdout


def test_check_passes_the_example_with_warnings_only():
    result = bridge("check", "--team", str(EXAMPLE))
    assert result.returncode == 0, result.stdout
    assert "0 error(s)" in result.stdout and "OK: ready to render" in result.stdout


def test_strict_turns_warnings_into_errors():
    result = bridge("check", "--team", str(EXAMPLE), "--strict")
    assert result.returncode == 1
    assert "ERROR environment.conda_sh" in result.stdout


def test_missing_team_file_says_how_to_point_at_one(tmp_path):
    result = bridge("check", cwd=tmp_path)
    assert result.returncode == 1
    assert "--team PATH" in result.stdout


def test_ray_refuses_scripts_rendered_from_another_config(tmp_path, example, write_team):
    team = write_team(example)
    assert bridge("render", "--team", str(team), "--out", str(tmp_path / "r")).returncode == 0
    example["rl"]["rollout_n"] = 16
    write_team(example)
    result = bridge("ray", "submit", "--team", str(team), "--rendered", str(tmp_path / "r"))
    assert result.returncode == 1
    assert "rendered from another version" in result.stderr and "bridge render --team" in result.stderr
