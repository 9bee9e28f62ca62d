"""The `llm-bridge` console script as a user meets it."""

import shutil
import subprocess

from conftest import EXAMPLE, bridge


def test_console_script_help():
    exe = shutil.which("llm-bridge")
    assert exe, "the `llm-bridge` console script is not installed: pip install -e ."
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
    assert "rendered from another version" in result.stderr and "llm-bridge render --team" in result.stderr


def _run(*args, env=None, cwd=None):
    import os
    import sys

    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          cwd=cwd)


def test_an_unreadable_netrc_is_no_login_not_a_traceback(tmp_path):
    (tmp_path / ".netrc").mkdir()  # unreadable as a file, even for root
    result = _run("-m", "llm_bridge.cli", "check", "--team", str(EXAMPLE), env={"HOME": str(tmp_path), "WANDB_API_KEY": ""})
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert "no W&B login found" in result.stdout


def test_a_command_whose_package_is_missing_says_where_to_run_it(tmp_path):
    """The login node's venv holds only what check and render need: upload there names the package and the fix."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    code = ("import sys; sys.modules['huggingface_hub'] = None; from llm_bridge.cli import main; "
            f"sys.exit(main(['upload', '--model', {str(tmp_path / 'model')!r}, '--repo', 'org/name', '--dry-run']))")
    result = _run("-c", code)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "needs the Python package huggingface_hub" in result.stderr and "pip install huggingface_hub" in result.stderr


def test_a_missing_file_argument_is_a_message(tmp_path):
    result = bridge("eval", "report", "--model", "m", "--hle", str(tmp_path / "none"), "--out", str(tmp_path / "r"))
    assert result.returncode == 1 and "Traceback" not in result.stderr and "metrics.json" in result.stderr
    out_is_a_file = tmp_path / "file"
    out_is_a_file.write_text("")
    generate = bridge("generate", "--model", str(tmp_path), "--data", str(tmp_path / "nope.parquet"), "--out", str(out_is_a_file / "x.jsonl"))
    assert generate.returncode == 1 and "does not exist" in generate.stderr and "Traceback" not in generate.stderr


def test_output_cut_short_by_a_pager_is_not_a_traceback():
    """`llm-bridge check | head -n 1`: the reader is gone before the report is written (a pipe with its read end closed)."""
    import os
    import sys

    read, write = os.pipe()
    os.close(read)
    run = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "check", "--team", str(EXAMPLE)], stdout=write,
                         stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr


def test_check_reports_schema_and_cross_field_problems_in_one_run(example, write_team):
    """A typo and a bad value must not hide the node count and batch-size errors behind them."""
    example["sft"]["train_bach_size"] = example["sft"].pop("train_batch_size")  # typo: train_batch_size is missing
    example["wandb"]["mode"] = "sometimes"
    example["slurm"]["nodes"] = 2  # the nodelist names 3 nodes
    example["rl"]["ppo_mini_batch_size"] = 200  # more than rl.train_batch_size 96
    result = bridge("check", "--team", str(write_team(example)))
    assert result.returncode == 1
    out = result.stdout
    for line in ("ERROR sft.train_bach_size: unknown key", "ERROR sft.train_batch_size: required but missing",
                 "ERROR wandb.mode", "ERROR slurm.nodelist: names 3 node(s)", "ERROR rl.ppo_mini_batch_size: 200 is larger"):
        assert line in out, out
    # a rule about a refused field is left to its schema error: no rule ran on the example's stand-in for it
    assert out.count("sft.train_batch_size:") == 1, out


def test_an_unedited_copy_of_the_example_names_every_value_that_is_another_teams(tmp_path):
    copy = tmp_path / "team.yaml"
    copy.write_text(EXAMPLE.read_text())
    result = bridge("check", "--team", str(copy))
    assert result.returncode == 1
    for field in ("slurm.partition", "slurm.nodelist", "paths.logs", "paths.hf_home", "wandb.entity", "huggingface.org"):
        assert f"ERROR {field}: " in result.stdout and "is the example's value" in result.stdout, field
    assert "sinfo -s" in result.stdout
    assert bridge("render", "--team", str(copy), "--out", str(tmp_path / "r")).returncode == 1
    assert not (tmp_path / "r").exists()
    assert bridge("check", "--team", str(EXAMPLE)).returncode == 0  # the example itself renders train/scripts/


def test_a_missing_logs_folder_is_an_error_with_the_mkdir(tmp_path, example, write_team):
    """SLURM opens --output before the script runs: without the folder the job dies without a log."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("")  # this machine has the environment: the path checks run
    del example["environment"]["conda_sh"], example["environment"]["conda_env"]
    example["environment"]["venv"] = str(venv)
    example["paths"]["logs"] = str(tmp_path / "logs")
    team = write_team(example)
    result = bridge("check", "--team", str(team))
    assert result.returncode == 1
    assert f"ERROR paths.logs: {tmp_path / 'logs'} does not exist" in result.stdout
    assert f"fix: mkdir -p {tmp_path / 'logs'}" in result.stdout
    (tmp_path / "logs").mkdir()
    result = bridge("check", "--team", str(team))
    assert "ERROR paths.logs" not in result.stdout and result.returncode == 0, result.stdout


def test_settings_that_changed_nothing_are_named_and_ignored(example, write_team):
    example["paths"].update(data="~/data", models="~/models")  # models is a setting again (llm-bridge submit's merges)
    result = bridge("check", "--team", str(write_team(example)))
    assert result.returncode == 0, result.stdout
    assert "WARN  paths.data: is no longer a setting" in result.stdout
    assert "paths.models" not in result.stdout


def test_check_and_render_need_only_the_login_venvs_packages(tmp_path):
    """The login node's .venv has jinja2, pydantic and pyyaml only: check, render, submit and status must not
    import the rest."""
    heavy = ["torch", "verl", "pyarrow", "datasets", "huggingface_hub", "openai", "transformers", "vllm", "ray", "numpy"]
    code = (f"import sys; sys.modules.update(dict.fromkeys({heavy!r})); from llm_bridge.cli import main; "
            f"assert main(['check', '--team', {str(EXAMPLE)!r}]) == 0; "
            f"assert main(['submit', '--team', {str(EXAMPLE)!r}, '--stages', 'sft,grpo', '--dry-run']) == 0; "
            f"assert main(['status', '--team', {str(EXAMPLE)!r}, '--chain', 'none']) == 1; "
            f"sys.exit(main(['render', '--team', {str(EXAMPLE)!r}, '--out', {str(tmp_path / 'r')!r}]))")
    result = _run("-c", code)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "r" / "sft" / "run_sft.sbatch").is_file()
