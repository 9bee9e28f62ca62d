"""Schema: every problem reported at once, each naming its field and the fix."""

import pytest
import yaml

from llm_bridge.login import hostlist
from llm_bridge.login.loader import load

from conftest import EXAMPLE, bridge, fake_token


def fields(problems):
    return {p.field for p in problems if p.severity == "error"}


def test_example_is_valid():
    config, problems = load(EXAMPLE)
    assert problems == []
    assert config.slurm.nodes == 3


def test_unknown_key_suggests_the_right_one(example, write_team):
    example["sft"]["train_bach_size"] = example["sft"].pop("train_batch_size")
    config, problems = load(write_team(example))
    assert config is None
    by_field = {p.field: p for p in problems}
    assert "did you mean 'train_batch_size'" in by_field["sft.train_bach_size"].fix
    assert by_field["sft.train_batch_size"].message == "required but missing"


def test_placeholders_are_rejected_by_field(example, write_team):
    example["slurm"]["partition"] = "YOU_TEAM"
    example["wandb"]["entity"] = "YOU_TEAM_ENTITY_NAME"
    example["sft"]["model"] = "/path/to/model"
    example["huggingface"]["org"] = "<your-org>"
    _, problems = load(write_team(example))
    assert {"slurm.partition", "wandb.entity", "sft.model", "huggingface.org"} <= fields(problems)
    # one problem per field, not a second one from the type check of the same value
    assert len([p for p in problems if p.field == "slurm.partition"]) == 1


def test_all_problems_reported_at_once(example, write_team):
    example["slurm"]["gpus_per_node"] = 0
    example["sft"]["lr"] = "fast"
    example["rl"]["gpu_memory_utilization"] = 1.5
    example["wandb"]["mode"] = "sometimes"
    _, problems = load(write_team(example))
    assert {"slurm.gpus_per_node", "sft.lr", "rl.gpu_memory_utilization", "wandb.mode"} <= fields(problems)


def test_paths_expand_home_at_run_time(example, write_team):
    example["environment"]["conda_env"] = "~/envs/llm"
    example["paths"]["checkpoints"] = "$HOME/training/"
    config, problems = load(write_team(example))
    assert problems == []
    assert config.environment.conda_env == "${HOME}/envs/llm"
    assert config.paths.checkpoints == "${HOME}/training"


def test_defaults_are_normalised_like_written_values(example, write_team, tmp_path):
    """A team.yaml without an evaluation section (or paths.models) gets the defaults ~/eval, ~/models... as
    ${HOME}/..., and renders: a default of ~/eval used to reach the scripts raw and stop the render."""
    del example["evaluation"]
    example["paths"].pop("models", None)
    team = write_team(example)
    config, problems = load(team)
    assert problems == []
    assert config.evaluation.results == "${HOME}/eval" and config.paths.models == "${HOME}/models"
    assert config.evaluation.hle_questions == "${HOME}/data/hle/test.parquet"
    result = bridge("render", "--team", str(team), "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_bad_paths_name_the_fix(example, write_team):
    example["paths"]["checkpoints"] = "training"  # relative
    example["paths"]["hf_home"] = "/home/u/my cache"  # space
    example["paths"]["logs"] = "~/logs"  # SLURM cannot expand ~ in #SBATCH --output
    _, problems = load(write_team(example))
    by_field = {p.field: p for p in problems}
    assert "~/training" in by_field["paths.checkpoints"].fix
    assert "no spaces" in by_field["paths.hf_home"].fix
    assert "absolute" in by_field["paths.logs"].fix


def test_token_values_are_caught_and_never_echoed(example, write_team):
    token = fake_token("hf_")
    example["huggingface"]["org"] = token
    _, problems = load(write_team(example))
    assert "huggingface.org" in fields(problems)
    assert all(token not in p.format() for p in problems)


def test_token_in_a_comment_is_caught_with_its_line(example, write_team):
    wandb_key = "".join("0123456789abcdef"[(7 * i) % 16] for i in range(40))
    text = write_team(example).read_text() + f"# my wandb key: {wandb_key}\n"
    _, problems = load(write_team(text))
    assert f"line {len(text.splitlines())}" in fields(problems)


def test_secret_named_key_is_rejected(example, write_team):
    example["huggingface"]["token"] = "anything"
    _, problems = load(write_team(example))
    [problem] = [p for p in problems if p.field == "huggingface.token"]
    assert "secrets never go in team.yaml" in problem.message


def test_yaml_syntax_error_names_the_line(write_team):
    _, problems = load(write_team("team:\n  name: P01\n slurm: [\n"))
    assert problems and problems[0].field.startswith("line ")


def test_hostlist_expansion():
    assert hostlist.expand("osk-gpu[51-53]") == ["osk-gpu51", "osk-gpu52", "osk-gpu53"]
    assert hostlist.expand("osk-gpu[08-09,11],login1") == ["osk-gpu08", "osk-gpu09", "osk-gpu11", "login1"]
    assert hostlist.expand("node1") == ["node1"]


def test_python_env_is_conda_or_venv(example, write_team):
    example["environment"]["venv"] = "~/venvs/llm"
    _, problems = load(write_team(example))
    assert "environment" in fields(problems)
    del example["environment"]["conda_sh"], example["environment"]["conda_env"]
    config, problems = load(write_team(example))
    assert problems == [] and config.environment.activate_script == "${HOME}/venvs/llm/bin/activate"


def _hex40(seed: int = 7) -> str:
    return "".join("0123456789abcdef"[(seed * i + 3) % 16] for i in range(40))


@pytest.mark.parametrize("place", ["key", "value", "alias", "tag", "comment", "nested key"])
def test_a_token_is_never_echoed_wherever_it_stands(example, write_team, place):
    token = fake_token("hf_")
    text = yaml.safe_dump(example, sort_keys=False)
    text += {"key": f"{token}: 1\n", "value": f"extra: {token}\n", "alias": f"extra: *{token}\n",
             "tag": f"extra: !{token} 1\n", "comment": f"# {token}\n",
             "nested key": f"more:\n  {token}: 1\n"}[place]
    result = bridge("check", "--team", str(write_team(text)))
    assert result.returncode == 1
    assert token not in result.stdout + result.stderr
    assert "<hidden>" in result.stdout or "looks like a Hugging Face token" in result.stdout


def test_new_wandb_keys_are_caught_but_a_git_hash_is_not(example, write_team):
    example["sft"]["experiment_name"] = "wandb_v1_" + fake_token("", 77)
    _, problems = load(write_team(example))
    assert any(p.field == "sft.experiment_name" and "W&B API key" in p.message for p in problems)
    del example["sft"]["experiment_name"]
    text = yaml.safe_dump(example, sort_keys=False) + f"# trained at commit {_hex40()}\n"
    text = text.replace("sft:\n", "sft:\n  experiment_name: sft-at-commit\n", 1)
    config, problems = load(write_team(text))
    assert problems == [] and config is not None
    example["sft"]["experiment_name"] = "ok"
    example["wandb"]["entity"] = _hex40()  # a bare 40-hex key pasted into the wandb section
    _, problems = load(write_team(example))
    assert any(p.field == "wandb.entity" and "W&B API key" in p.message for p in problems)
    assert all(_hex40() not in p.format() for p in problems)


def test_a_git_hash_on_the_command_line_is_not_a_secret():
    result = bridge("check", "--team", "/nonexistent/team.yaml", "--strict")
    assert "secrets never go on a command line" not in result.stderr
    hashed = bridge("ray", "submit", "--team", "/nonexistent.yaml", f"+trainer.git_commit={_hex40()}")
    assert "secrets never go on a command line" not in hashed.stderr
    keyed = bridge("ray", "submit", "--team", "/nonexistent.yaml", f"+WANDB_API_KEY={_hex40()}")
    assert keyed.returncode == 2 and "secrets never go on a command line" in keyed.stderr
    assert _hex40() not in keyed.stdout + keyed.stderr


def test_a_key_set_twice_is_an_error_naming_both_lines(example, write_team):
    text = yaml.safe_dump(example, sort_keys=False).replace("  lr: ", "  lr: 0.5\n  lr: ", 1)
    first = next(n for n, line in enumerate(text.splitlines(), 1) if line == "  lr: 0.5")
    _, problems = load(write_team(text))
    [problem] = [p for p in problems if "set twice" in p.message]
    assert problem.field == f"line {first + 1}" and f"first on line {first}" in problem.message


@pytest.mark.parametrize("content, expected", [
    (b"slurm:\n  partition: P\xff01\n", "not UTF-8 text"),
    (b"\x00\x01\x02binary", "not valid YAML"),
    (b"", "must be a mapping"),
    (b"slurm:\n  nodes: " + b"9" * 5000 + b"\n", "a number with 5000 digits"),
])
def test_unreadable_configs_get_a_message_not_a_traceback(tmp_path, content, expected):
    team = tmp_path / "team.yaml"
    team.write_bytes(content)
    result = bridge("check", "--team", str(team))
    assert result.returncode == 1
    assert expected in result.stdout and "Traceback" not in result.stderr + result.stdout


def test_an_absurd_hostlist_range_is_refused_at_once(example, write_team):
    example["slurm"]["nodelist"] = "osk-gpu[1-999999999999]"
    result = bridge("check", "--team", str(write_team(example)))
    assert "ERROR slurm.nodelist" in result.stdout
    with pytest.raises(ValueError, match="more than 4096 hosts"):
        hostlist.expand("n[1-999999999]")


@pytest.mark.parametrize("field, value", [("sft.model", "Qwen/Qwen3-32B\n"), ("paths.checkpoints", "~/training\n"),
                                          ("slurm.nodelist", "osk-gpu[51-53]\n"), ("evaluation.judge_url", "http://h:8000/v1\n"),
                                          ("huggingface.org", "P01\n")])
def test_a_trailing_line_break_does_not_pass(example, write_team, field, value):
    section, name = field.split(".")
    example.setdefault(section, {})[name] = value
    _, problems = load(write_team(example))
    [problem] = [p for p in problems if p.field == field]
    assert problem.fix, "every refusal says how to fix it"


@pytest.mark.parametrize("lora, field, fix", [
    ({"rank": 1000, "alpha": 64}, "sft.lora.rank", "use 8 to 256"),
    ({"rank": 0, "alpha": 64}, "sft.lora.rank", "use 8 to 256"),
    ({"rank": 32, "alpha": 0}, "sft.lora.alpha", "twice the rank"),
    ({"rank": 32, "alpha": 64, "target_modules": ["q_proj", "a b"]}, "sft.lora.target_modules", "all-linear"),
    ({"rank": 32, "alpha": 64, "target_modules": []}, "sft.lora.target_modules", "all-linear"),
    ({"rank": 32, "alpha": 64, "exclude_modules": "lm_head;x"}, "sft.lora.exclude_modules", "module names"),
    ({"rank": 32, "alpha": 64, "base_dtype": "fp16"}, "sft.lora.base_dtype", "'bf16' or 'fp32'"),
    ({"rank": 32, "alpha": 64, "checkpoints": "adapters"}, "sft.lora.checkpoints", "'adapter' or 'full'"),
    ({"rank": 32, "alpha": 64, "dropout": 0.1}, "sft.lora.dropout", "base_dtype"),
    ({"alpha": 64}, "sft.lora.rank", "add it"),
])
def test_every_lora_misuse_names_its_field_and_fix(example, write_team, lora, field, fix):
    example["sft"]["lora"] = lora
    example["slurm"]["nodes"] = 2  # a cross-field error elsewhere still shows in the same run
    result = bridge("check", "--team", str(write_team(example)))
    assert result.returncode == 1
    assert f"ERROR {field}: " in result.stdout and fix in result.stdout, result.stdout
    assert "ERROR slurm.nodelist: names 3 node(s)" in result.stdout


def test_a_lora_section_is_optional_and_complete(example, write_team):
    example["sft"]["lora"] = {"rank": 32, "alpha": 64}
    config, problems = load(write_team(example))
    assert problems == [] and config.sft.lora.target_modules == "all-linear" and config.sft.lora.base_dtype == "bf16"
    assert config.rl.lora is None  # absent: full fine-tuning
