"""Every command in the READMEs' bash blocks is run here, or — where it needs the cluster — checked against
what `llm-bridge render` produces. A command of a kind this file does not know fails the test."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import EXAMPLE, REPO, as_our_team

READMES = ["README.md", "README_install_conda.md", "README_single_node_SFT_PPO.md", "README_multi_node_SFT_PPO.md",
           "docs/development.md"]
# Every bash block says on its first line where it runs: the login node, a compute node, or any machine.
WHERE = re.compile(r"# \[(ログインノード|計算ノード|どのマシンでも)\]")
QUICK_START_MAIN = (
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && "
    "pip install -c tests/constraints.txt -e '.[cpu]' && python tests/cpu/pipeline.py"
)
TEST_COMMAND = "bash tests/setup_machine.sh && python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install -c tests/constraints.txt -e '.[test]' && python -m pytest"


def blocks(readme: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (REPO / readme).read_text(), flags=re.S)


def commands(readme: str) -> list[str]:
    lines = "\n".join(blocks(readme)).replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_quick_start_commands_are_the_documented_ones():
    readme = commands("README.md")
    assert QUICK_START_MAIN in readme
    assert TEST_COMMAND in readme
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text(), ".ci/run must run the README's test command"


def test_quick_start_main_job_runs_the_cpu_pipeline(tmp_path):
    """The README's main command, verbatim, on a fresh copy of the repo: preprocess -> SFT (2 ranks) -> merge
    -> GRPO (2 steps) -> merge -> generate, through the rendered scripts and real verl code."""
    checkout = tracked_copy(tmp_path / "checkout")
    result = subprocess.run(["bash", "-c", QUICK_START_MAIN], cwd=checkout, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads((checkout / ".cpu_pipeline" / "summary.json").read_text())
    losses = summary["sft_loss"]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    steps = summary["grpo_steps"]
    assert len(steps) == 2 and all(step["actor/grad_norm"] > 0 for step in steps), steps
    assert summary["max_weight_change"]["sft_vs_base"] > 0
    assert summary["max_weight_change"]["grpo_vs_sft"] > 0
    assert all(n > 0 for n in summary["new_tokens"].values())
    for model in ("sft", "grpo"):
        assert (checkout / ".cpu_pipeline" / "models" / model / "model.safetensors").is_file()
    # the rendered SFT script hands torchrun PyTorch's expandable segments (docs/benchmarks.md)
    assert re.search(r"allocator\s+expandable_segments:True", (checkout / ".cpu_pipeline" / "logs" / "sft.log").read_text())


@pytest.mark.parametrize("readme", READMES)
def test_readme_commands(readme, tmp_path):
    checkout = tracked_copy(tmp_path / "checkout")
    (checkout / "team.yaml").write_text(as_our_team(EXAMPLE.read_text()))  # each README starts from a written team.yaml
    example = yaml.safe_load(EXAMPLE.read_text())
    cloned = None
    ran = 0
    for line in commands(readme):
        if line in (QUICK_START_MAIN, TEST_COMMAND):
            continue  # run by the test above and by CI itself
        argv = shlex.split(line.split(" # ")[0])
        if argv[:2] == ["llm-bridge", "ray"]:
            # needs SLURM: run on the lab cluster by tests/test_slurm_multinode.py; here, the scripts it uses exist
            for script in ("mutinode_ppo/ray_cluster.sbatch", "mutinode_ppo/submit_ppo.sh"):
                assert (checkout / "rendered" / script).is_file(), line
        elif argv[:2] == ["llm-bridge", "submit"]:
            # queues jobs: run on the lab cluster by tests/test_slurm_chain.py; here, every such line as a dry run
            # (the README's `read -rs` line exported the judge's key in the member's shell)
            dry = argv[1:] + ([] if "--dry-run" in argv else ["--dry-run"])
            result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", *dry], cwd=checkout, capture_output=True,
                                    text=True, env={**os.environ, "OPENAI_API_KEY": "sk-readme-test"})
            assert result.returncode == 0 and "sbatch --parsable" in result.stdout, \
                f"{readme}: `{line}` failed:\n{result.stdout}{result.stderr}"
        elif argv[0] == "llm-bridge" and argv[1] in ("merge", "upload", "generate", "eval", "status", "init"):
            # these need a checkpoint, a model, the Hub, a judge, SLURM or a queued chain: run for real by the pipeline
            # and tests/test_{eval,upload,slurm_chain}.py; here, the subcommand exists and knows every flag used
            words = [a for a in argv[1:] if not a.startswith("-")][: 3 if argv[1] == "eval" else 1]
            result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", *words, "--help"], cwd=checkout,
                                    capture_output=True, text=True)
            assert result.returncode == 0, f"{readme}: `{line}`: {result.stderr}"
            assert all(f.split("=")[0] in result.stdout for f in argv if f.startswith("--")), line
        elif argv[0] == "llm-bridge":
            result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", *argv[1:]], cwd=checkout,
                                    capture_output=True, text=True)
            # doctor fails here by design (no GPU, no vLLM); it must still report, not crash
            expected = (0, 1) if argv[1] == "doctor" else (0,)
            assert result.returncode in expected and "Traceback" not in result.stderr, \
                f"{readme}: `{line}` failed:\n{result.stdout}{result.stderr}"
        elif argv[0] == "python" and argv[1].startswith("train/scripts/"):
            # data prep reads the Hub or the cluster's copies: check the script runs and knows every flag used
            result = subprocess.run([sys.executable, argv[1], "--help"], cwd=checkout, capture_output=True, text=True)
            assert result.returncode == 0, result.stderr
            assert all(flag in result.stdout for flag in argv[2:] if flag.startswith("--")), line
        elif argv[:3] == ["python", "-m", "verl.model_merger"]:
            result = subprocess.run([sys.executable, "-m", "verl.model_merger", argv[3], "--help"], cwd=checkout,
                                    capture_output=True, text=True)
            assert result.returncode == 0 and all(f in result.stdout for f in argv[4:] if f.startswith("--")), line
        elif re.fullmatch(r"[A-Z_]+=\S+", line):
            pass  # a shell variable for the next line
        elif argv[0] == "conda":
            assert argv[1:] == ["activate", example["environment"]["conda_env"]], line
        elif argv[0] == "cp" and re.fullmatch(r"<[^<>]+>/team\.yaml", argv[1]):
            # the team's own file, from its shared folder: a member's edited copy of the example stands in
            (checkout / argv[2]).write_text(as_our_team(EXAMPLE.read_text()))
        elif argv[0] == "cp":
            subprocess.run(argv, cwd=checkout, check=True)
            if argv[-1] == "team.yaml":  # the README's next step: the member writes their team's values
                team = checkout / "team.yaml"
                team.write_text(as_our_team(team.read_text()))
        elif argv[:2] == ["git", "clone"]:
            assert re.fullmatch(r"<[^<>]+>", argv[2]) and argv[3].startswith("~/"), line
            clone = tmp_path / f"clone{ran}"  # a README may clone in two places (the quick path and step 1)
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
            assert (clone / "pyproject.toml").is_file()
            cloned = argv[3]
        elif argv[0] == "cd":
            assert cloned is not None and argv[1] == cloned, f"{readme}: `{line}` is not the folder cloned above"
        elif argv[0] == "source":
            assert argv[1:] == [example["environment"]["conda_sh"]], line
        elif argv in (["hf", "auth", "login"], ["wandb", "login"]):
            # interactive; the command exists in the training env and jobs read what it saves (tests/test_upload.py)
            result = subprocess.run([str(Path(sys.executable).parent / argv[0]), *argv[1:], "--help"],
                                    capture_output=True, text=True)
            assert result.returncode == 0, f"{readme}: `{line}`: {result.stderr}"
        elif re.fullmatch(r"read -rs ([A-Z_]+) && export \1", line):
            pass  # a secret typed without echo and without shell history
        elif argv == ["exit"]:
            pass  # leaves the compute node shell
        elif argv[0] == "python3" and "&&" in argv:
            # environment setup lines: the same steps the quick start runs for real
            assert line.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install "), line
        elif argv[0] in ("sbatch", "bash"):
            script = checkout / argv[1]
            assert script.is_file(), f"{readme}: `{line}` names {argv[1]}, which `llm-bridge render` did not write"
            positional = "/generation/" in argv[1]  # eval_model / generate take model and data paths
            assert all("=" in arg or arg.startswith("--") or (positional and arg.startswith("~/")) for arg in argv[2:]), line
        elif argv[0] == "export":
            # secrets are exported in the shell; the README shows only a placeholder
            assert re.fullmatch(r"export [A-Z_]+=\.\.\.", line), line
        elif argv[0] == "module":
            assert argv[1] == "load" and set(argv[2:]) <= set(example["environment"]["modules"]), line
        elif argv[0] in ("squeue", "scancel"):
            assert argv[1:3] == ["-u", "$USER"], line
            if argv[0] == "scancel":
                job_names = re.findall(r"--job-name=(\S+)", "".join(p.read_text() for p in (checkout / "rendered").rglob("*.sbatch")))
                assert argv[4] in job_names, line
        else:
            pytest.fail(f"{readme}: no check for `{line}`; add one to tests/test_readmes.py")
        ran += 1
    assert ran > 0


@pytest.mark.parametrize("readme", READMES)
def test_every_block_says_where_it_runs(readme):
    for block in blocks(readme):
        assert WHERE.match(block), f"{readme}: a bash block without its place on line 1:\n{block[:200]}"


# iproute2 ships /usr/sbin/bridge on every Linux: a line that runs `bridge` runs that, not this recipe.
OLD_NAME = re.compile(r"(?:^|[\s;&|(`$'\"])bridge(?=\s+(?:check|render|doctor|ray|merge|upload|generate|eval|help)\b)")


def test_no_command_runs_the_old_name():
    files = [REPO / r for r in READMES] + [REPO / "docs" / "benchmarks.md"]
    files += [p for p in (REPO / "templates").rglob("*") if p.is_file()]
    files += [p for p in (REPO / "train" / "scripts").rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    files += [p for p in (REPO / "llm_bridge").rglob("*.py")] + [p for p in (REPO / "benchmarks").rglob("*") if p.is_file()]
    found = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files
             for n, line in enumerate(p.read_text(errors="ignore").splitlines(), start=1) if OLD_NAME.search(line)]
    assert found == [], "\n".join(found)
    assert OLD_NAME.search("bridge check --team team.yaml") and OLD_NAME.search("  `bridge render`")
    assert not OLD_NAME.search("llm-bridge check --team team.yaml") and not OLD_NAME.search("ip link add br0 type bridge")
    from importlib.metadata import entry_points

    assert [e.name for e in entry_points(group="console_scripts") if e.value == "llm_bridge.cli:main"] == ["llm-bridge"]
