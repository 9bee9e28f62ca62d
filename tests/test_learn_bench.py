"""benchmarks/learn_bench.py, issue 38's GPU entrypoint, runs end to end on a CPU (--cpu): data, a random model,
the rendered SFT script, merge, the rendered GRPO script, merge, held-out accuracy, table and curves. A smoke test
that keeps the entrypoint working between GPU leases; that the recipe teaches is tests/test_grpo_learns.py's."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_learning_benchmark_runs_its_stages_on_a_cpu(tmp_path):
    argv = [sys.executable, "benchmarks/learn_bench.py", "--work", str(tmp_path), "--cpu", "--size", "tiny",
            "--vocab", "512", "--train", "600", "--test", "32", "--train-steps", "0", "--test-steps", "0",
            "--max-length", "128", "--sft-steps", "20", "--sft-batch", "16", "--sft-lr", "3e-3", "--grpo-steps", "2",
            "--prompts", "8", "--n", "4", "--grpo-lr", "1e-3", "--arms"]
    # --arms "" stops after the SFT model's accuracy; a later run with arms reuses that model
    sft_only = subprocess.run([*argv, ""], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert sft_only.returncode == 0, sft_only.stdout[-3000:] + sft_only.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["SFT"] and results["times_s"]["sft"] > 0
    argv.append("recipe")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[sft]" not in result.stdout and "[grpo-recipe]" in result.stdout, result.stdout[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["model"] for row in results["rows"]] == ["SFT", "GRPO (recipe)"]
    assert all(0 <= row["accuracy"] <= 1 for row in results["rows"]) and results["rows"][1]["steps"] == 2
    assert len((tmp_path / "predictions-sft.jsonl").read_text().splitlines()) == 32
    assert "actor/rollout_drift/k3_kl" in results["steps"]["recipe"][0]
    assert (tmp_path / "curves.png").stat().st_size > 10_000 and "| SFT | 20 |" in (tmp_path / "results.md").read_text()
    # each stage's wall time beside llm-bridge plan's estimate of it
    assert results["planned_s"].keys() == {"sft", "merge-sft", "grpo-recipe", "merge-grpo-recipe"}
    assert all(v > 0 for v in results["planned_s"].values()) and results["times_s"]["grpo-recipe"] > 0
    assert "| grpo-recipe | " in (tmp_path / "results.md").read_text()
    # a rerun finds every stage's output and redoes none
    again = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "[sft]" not in again.stdout and "[grpo-recipe]" not in again.stdout, again.stdout
