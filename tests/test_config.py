"""Schema: every problem reported at once, each naming its field and the fix."""

from llm_bridge import hostlist
from llm_bridge.loader import load

from conftest import EXAMPLE, fake_token


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
    example["paths"]["data"] = "$HOME/data/"
    config, problems = load(write_team(example))
    assert problems == []
    assert config.environment.conda_env == "${HOME}/envs/llm"
    assert config.paths.data == "${HOME}/data"


def test_bad_paths_name_the_fix(example, write_team):
    example["paths"]["data"] = "data"  # relative
    example["paths"]["models"] = "/home/u/my models"  # space
    example["paths"]["logs"] = "~/logs"  # SLURM cannot expand ~ in #SBATCH --output
    _, problems = load(write_team(example))
    by_field = {p.field: p for p in problems}
    assert "~/data" in by_field["paths.data"].fix
    assert "no spaces" in by_field["paths.models"].fix
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
