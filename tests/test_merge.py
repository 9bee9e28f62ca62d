"""llm-bridge merge on real verl checkpoints (the CPU pipeline merges full SFT and GRPO ones): a LoRA SFT run
saved adapter-only is folded into --base or written as the adapter alone, a GRPO LoRA run saved in full is
folded into the base weights it holds, and bad input stops before anything is written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "cpu"))
import pipeline  # noqa: E402


def bridge_merge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm_bridge.cli", "merge", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("lora")
    stage = pipeline.Stage(work)
    pipeline.prepare(work, stage)
    team = pipeline.team_config(work)
    team["sft"]["experiment_name"] = "sft-lora"
    # LoRA from team.yaml, as a team writes it (fp32 base: the CPU run keeps its dtype)
    team["sft"]["lora"] = {"rank": 4, "alpha": 8, "base_dtype": "fp32"}
    rendered = pipeline.render(work, team)
    stage.run("sft_lora", pipeline.sft_command(rendered, "optim.lr=1e-2", "trainer.total_training_steps=2"),
              pipeline.CPU_ENV)
    return work


def _logits(model_dir: Path, adapter: Path | None = None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 42, 7, 3]])).logits


def test_an_adapter_only_checkpoint_is_folded_into_its_base(lora_run, tmp_path):
    """sft.lora saves the adapter alone by default: the checkpoint holds no base weight, merge refuses to guess the
    base, and with --base folds the adapter in: the merged model's logits are base+adapter's (PEFT) to 1e-4."""
    run = lora_run / "checkpoints" / "sft" / "sft-lora"
    shard = torch.load(next((run / "global_step_2").glob("model_world_size_2_rank_0.pt")), weights_only=False)
    assert shard and all("lora_" in key for key in shard), "the checkpoint holds the adapter only"

    out = lora_run / "models" / "sft-lora"
    no_base = bridge_merge("--checkpoint", run, "--out", out)
    assert no_base.returncode == 1 and "holds only the LoRA adapter" in no_base.stderr and "--base" in no_base.stderr
    assert not out.exists() and not list(out.parent.glob(".*merging*"))

    base = lora_run / "tiny" / "model"
    result = bridge_merge("--checkpoint", run, "--out", out, "--base", base)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Folded the adapter into 14 weights" in result.stdout and "Loads: Qwen2ForCausalLM" in result.stdout
    assert (out / "lora_adapter" / "adapter_config.json").is_file() and (out / "chat_template.jinja").is_file()
    assert not list(out.parent.glob(".*merging*")), "the work directory is cleaned up"
    merged, reference, original = _logits(out), _logits(base, out / "lora_adapter"), _logits(base)
    assert (merged - original).abs().max() > 1e-2, "the adapter changed the model"
    assert torch.allclose(merged, reference, atol=1e-4), (merged - reference).abs().max()

    adapter = tmp_path / "adapter"
    alone = bridge_merge("--checkpoint", run, "--out", adapter, "--adapter-only", "--base", "Qwen/Qwen2.5-0.5B-Instruct")
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert not (adapter / "model.safetensors").exists() and (adapter / "tokenizer.json").is_file()
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "Qwen/Qwen2.5-0.5B-Instruct" and config["r"] == 4
    assert torch.allclose(_logits(base, adapter), reference, atol=1e-6), "the same adapter, loadable by PEFT"


def test_base_is_a_directory_or_a_hub_id_from_the_cache(lora_run, tmp_path, monkeypatch):
    """--base as a team writes sft.model: a Hub id is taken from the HF cache (HF_HOME) with no network."""
    from llm_bridge.model.lora import resolve_base

    base = lora_run / "tiny" / "model"
    snapshot = tmp_path / "hub" / "models--tiny-org--tiny" / "snapshots" / ("a" * 40)
    shutil.copytree(base, snapshot)
    (tmp_path / "hub" / "models--tiny-org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny-org--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert resolve_base("tiny-org/tiny") == snapshot
    assert resolve_base(str(base)) == base.resolve()
    for wrong, message in (("tiny-org/absent", "hf download tiny-org/absent"), (str(tmp_path / "nope"), "not a Hub id")):
        with pytest.raises(SystemExit, match=message):
            resolve_base(wrong)


def test_a_wrong_base_is_refused_before_anything_is_written(lora_run, tmp_path):
    """An adapter folded into a model it was not trained on would load and be wrong: shapes and names are checked."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(lora_run / "tiny" / "model").to_dict()
    config.update(num_hidden_layers=1, layer_types=config["layer_types"][:1])  # the adapter's layer 1 has no base weight
    config = AutoConfig.for_model(**config)
    other = tmp_path / "other"
    AutoModelForCausalLM.from_config(config).save_pretrained(other)
    out = tmp_path / "merged"
    result = bridge_merge("--checkpoint", lora_run / "checkpoints" / "sft" / "sft-lora", "--out", out, "--base", other)
    assert result.returncode == 1 and "have no base weight" in result.stderr and "--base" in result.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_bad_input_stops_before_writing(lora_run, tmp_path):
    checkpoint = lora_run / "checkpoints" / "sft" / "sft-lora"
    no_tracker = bridge_merge("--checkpoint", tmp_path, "--out", tmp_path / "m")
    assert no_tracker.returncode == 1 and "latest_checkpointed_iteration.txt" in no_tracker.stderr
    wrong_step = bridge_merge("--checkpoint", checkpoint, "--step", "99", "--out", tmp_path / "m")
    assert wrong_step.returncode == 1 and "global_step_2" in wrong_step.stderr
    (tmp_path / "exists").mkdir()
    (tmp_path / "exists" / "config.json").write_text("{}")
    exists = bridge_merge("--checkpoint", checkpoint, "--out", tmp_path / "exists")
    assert exists.returncode == 1 and "--force" in exists.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_out_never_overlaps_the_checkpoints_it_reads(lora_run):
    """`--out R --force` onto the run it merges would have deleted it: refused, with the checkpoints untouched."""
    run = lora_run / "checkpoints" / "sft" / "sft-lora"
    before = _files(lora_run / "checkpoints")
    for out, where in ((run, "is"), (run / "global_step_2" / "hf", "lies inside"), (lora_run / "checkpoints", "contains")):
        result = bridge_merge("--checkpoint", run, "--out", out, "--force")
        assert result.returncode == 1, out
        assert f"--out {out} {where} the checkpoint directory" in result.stderr and "Fix:" in result.stderr
    assert _files(lora_run / "checkpoints") == before


def test_force_replaces_only_an_earlier_merge(lora_run, tmp_path):
    run = lora_run / "checkpoints" / "sft" / "sft-lora"
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "results.txt").write_text("a team's own file")
    refused = bridge_merge("--checkpoint", run, "--out", mine, "--force", "--no-verify")
    assert refused.returncode == 1 and "nothing was deleted" in refused.stderr
    assert (mine / "results.txt").read_text() == "a team's own file"

    out = tmp_path / "merged"
    for attempt in range(2):  # the second --force replaces the first merge: it carries the marker
        result = bridge_merge("--checkpoint", run, "--out", out, "--no-verify", "--base", lora_run / "tiny" / "model",
                              *(["--force"] if attempt else []))
        assert result.returncode == 0, result.stderr[-2000:]
    assert (out / ".bridge-merge.json").is_file() and (out / "config.json").is_file()
    assert (out.stat().st_mode & 0o777) == 0o777 & ~_umask(), "the model follows the umask, not mkdtemp's 0700"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged", "notes"]


def _umask() -> int:
    from llm_bridge.data import current_umask

    return current_umask()


def test_a_torn_tracker_file_is_a_message(tmp_path):
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("\x00\x00")
    result = bridge_merge("--checkpoint", tmp_path, "--out", tmp_path.parent / "m-torn")
    assert result.returncode == 1 and "not a step number" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def grpo_lora_run(lora_run) -> Path:
    """GRPO with rl.lora from team.yaml, 2 steps on 2 CPU ranks, a full checkpoint (base + adapter) after each step."""
    work = lora_run
    stage = pipeline.Stage(work)
    team = pipeline.team_config(work)
    team["rl"].update(experiment_name="grpo-lora", model=str(work / "tiny" / "model"), lr=1e-2, save_freq=1,
                      lora={"rank": 4, "alpha": 8, "base_dtype": "fp32", "checkpoints": "full"})
    rendered = pipeline.render(work, team, "rendered-grpo")
    stage.run("grpo_lora", pipeline.grpo_command(rendered, "trainer.total_training_steps=2"), pipeline.CPU_ENV)
    return work


def _adapter_size(adapter_dir: Path) -> float:
    """The summed |scale * B @ A| over a saved adapter's modules (bf16, as verl's merger writes them): what the test
    rollout logs for the adapter it folds."""
    import json

    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(adapter_dir / "adapter_model.safetensors")
    scale = config["lora_alpha"] / config["r"]
    return sum((scale * (tensors[name.replace(".lora_A.", ".lora_B.")].float() @ a.float())).abs().sum().item()
               for name, a in tensors.items() if ".lora_A." in name)


def test_grpo_with_lora_samples_from_the_adapter_training_produced(grpo_lora_run):
    """The rollout gets the adapter at every sync (no second model, the base loaded once), and the adapter it folds
    after step N is the one step N trained: its size equals that of the step-N checkpoint's adapter."""
    import re

    log = (grpo_lora_run / "logs" / "grpo_lora.log").read_text(errors="ignore")
    folds = re.findall(r"LoRA adapter folded into (\d+) modules \(scale ([\d.]+), update (\d+), size ([\d.e+-]+)\)", log)
    sizes = {}
    for modules, scale, update, size in folds:
        assert int(modules) == 14 and float(scale) == 2, folds  # all-linear on the tiny Qwen2, alpha 8 / rank 4
        sizes.setdefault(int(update), set()).add(float(size))
    # before step 1, after step 1, after step 2; Ray prints a line repeated by both replicas once
    assert sorted(sizes) == [1, 2, 3] and all(len(s) == 1 for s in sizes.values()), folds
    assert sizes[1] == {0.0}  # B starts at zero: the first adapter changes nothing
    saved = {}
    for step in (1, 2):
        out = grpo_lora_run / "models" / f"grpo-lora-step{step}"
        result = bridge_merge("--checkpoint", grpo_lora_run / "checkpoints" / "grpo" / "grpo-lora", "--step", str(step),
                              "--out", out)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Folded the adapter into 14 weights" in result.stdout  # into the base weights the checkpoint holds
        saved[step] = _adapter_size(out / "lora_adapter")
    # each fold is the adapter its step saved, to float rounding; the two steps' adapters differ by about half
    for step, other in ((1, 2), (2, 1)):
        [folded] = sizes[step + 1]
        assert folded == pytest.approx(saved[step], rel=1e-4) and folded != pytest.approx(saved[other], rel=0.1), \
            (step, folded, saved)


def test_the_rollouts_log_probs_are_the_actors_own(grpo_lora_run):
    """Issue 38's alignment check for old_log_probs: rollout (verl's bypass mode): PPO's ratio has the rollout's
    log-probs in its denominator, so before the first update of each step the actor must compute the same values for
    the same tokens. Each step here has one mini-batch, so each logged step is such a first update: its PPO KL is about
    0 and no token is clipped. A shift by one token, another policy or another prompt would give log-ratios of order 1
    (clipped at 0.2). The run is fp32 on both sides (measured KL 6e-5 and 2e-5); bf16 on a GPU differs more.

    The same first mini-batch gives every run its actor/rollout_drift/ metrics (verl_patches 8): with one mini-batch and
    old log-probs that are the rollout's, their KL is the PPO KL itself."""
    steps = [m["data"] for m in pipeline.metrics(grpo_lora_run / "logs", "grpo-lora") if "actor/ppo_kl" in m["data"]]
    assert len(steps) == 2
    for step in steps:
        assert abs(step["actor/ppo_kl"]) < 1e-3 and step["actor/pg_clipfrac"] == 0, step
        assert step["actor/rollout_drift/kl"] == pytest.approx(step["actor/ppo_kl"], rel=1e-4, abs=1e-9), step
        assert 0 <= step["actor/rollout_drift/k3_kl"] < 1e-3 and abs(step["actor/rollout_drift/chi2_token"]) < 1e-2, step
        # every response here is shorter than 256 tokens: the first position span holds the whole drift
        assert step["actor/rollout_drift/k3_kl_tokens_0_to_256"] == pytest.approx(step["actor/rollout_drift/k3_kl"]), step
        assert "actor/rollout_drift/k3_kl_tokens_256_to_1024" not in step


def test_a_model_too_large_to_load_is_checked_from_its_headers(lora_run, tmp_path):
    """235B is 470 GB in bf16: merge checks such a result without loading it, from the config's parameter count on
    the meta device against the values in the safetensors headers. A missing tensor is caught all the same."""
    from safetensors.torch import load_file, save_file

    from llm_bridge.model.merge import verify

    model = tmp_path / "model"
    shutil.copytree(lora_run / "tiny" / "model", model)
    light = verify(model, available=0)
    assert "checked from the safetensors headers" in light and "Qwen2ForCausalLM" in light and "chat template" in light
    assert "parameters" in verify(model)  # the small model itself loads

    [shard] = model.glob("*.safetensors")
    tensors = load_file(shard)
    tensors.pop(next(k for k in tensors if k.endswith("mlp.down_proj.weight")))
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(SystemExit, match="weights are missing or extra"):
        verify(model, available=0)
