"""The benchmarks' offline model: built in a child process, so the benchmark itself holds no GPU memory
through a run (its nvidia-smi peak would count it), and written whole or not at all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, tie_word_embeddings=True)


def build_in_fresh_process(tokenizer: Path, out: Path) -> subprocess.CompletedProcess:
    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import common
common.ARCHS["tiny"] = {TINY!r}
common.build_model("tiny", Path({str(tokenizer)!r}), Path({str(out)!r}), vocab_size=None)
print(json.dumps({{"torch_in_benchmark_process": "torch" in sys.modules}}))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "cpu"))
    from build_tiny import build_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer([f"Tom has {n} apples and gets {n + 3} more." for n in range(200)], vocab_size=300).save_pretrained(out)
    return out


def test_the_model_is_built_outside_the_benchmark_process_and_loads(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model-tiny"
    done = build_in_fresh_process(tokenizer, out)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"torch_in_benchmark_process": False}

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-tiny"]  # no .partial left behind

    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_in_fresh_process(tokenizer, out).returncode == 0
    assert weights.stat().st_mtime_ns == mtime  # a finished model is reused, not rebuilt


def test_a_failed_build_leaves_nothing_a_later_run_would_reuse(tmp_path):
    out = tmp_path / "model-tiny"
    done = build_in_fresh_process(tmp_path / "no-such-tokenizer", out)
    assert done.returncode != 0
    assert "building the tiny model failed" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_weight_free_qwen3_loads_with_every_weight_initialized_fast(tokenizer, tmp_path):
    """Qwen3 shapes are written without weights; from_pretrained initializes them (normal, std 0.02), and
    stub_init/sitecustomize.py makes that a tiled copy: finite, the right spread, experts routed at random."""
    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import common
common.QWEN3_ARCHS["tiny-moe"] = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=512, moe_intermediate_size=1024, num_experts=8, num_experts_per_tok=2, moe=True)
common.build_model("tiny-moe", Path({str(tokenizer)!r}), Path({str(tmp_path / "moe")!r}), vocab_size=None)
"""
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).returncode == 0
    assert (tmp_path / "moe" / "model.safetensors").stat().st_size < 10_000, "one norm vector, no weights"
    load = f"""
import json, torch
from transformers import AutoModelForCausalLM
m = AutoModelForCausalLM.from_pretrained({str(tmp_path / "moe")!r}, dtype=torch.float32)
experts = m.model.layers[0].mlp.experts.gate_up_proj  # 8 x 2048 x 256 = 4M values: tiled from 2**20
print(json.dumps({{"arch": type(m).__name__, "finite": all(bool(torch.isfinite(p).all()) for p in m.parameters()),
                  "std": float(experts.std()), "tiled": bool(torch.equal(experts.flatten()[:2**20], experts.flatten()[2**20:2**21]))}}))
"""
    env = {**os.environ, "PYTHONPATH": str(BENCH / "stub_init")}
    done = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["arch"] == "Qwen3MoeForCausalLM" and result["finite"] and result["tiled"]
    assert result["std"] == pytest.approx(0.02, rel=0.05)


def test_a_qwen3_written_with_weights_loads_them_all_from_its_shards(tokenizer, tmp_path):
    """GRPO's vLLM loads every weight from disk: a dense Qwen3 shape written whole, in shards with their index
    (SHARD_SIZE shrunk so that a tiny model needs several), norms 1 and the rest normal(0, 0.02)."""
    shape = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=512)
    code = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import common
common.SHARD_SIZE = "200KB"
common._write_qwen3_weights({shape!r}, Path({str(tokenizer)!r}), Path({str(tmp_path / "dense")!r}), None)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    shards = sorted(p.name for p in (tmp_path / "dense").glob("*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "dense" / "model.safetensors.index.json").is_file(), shards

    import torch
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32, output_loading_info=True)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert not info["missing_keys"] and not info["unexpected_keys"], info  # every weight came from the shards
    assert torch.equal(model.model.layers[1].self_attn.q_norm.weight, torch.ones(128))
    assert float(model.model.layers[1].mlp.down_proj.weight.std()) == pytest.approx(0.02, rel=0.05)


def test_an_moe_qwen3_is_not_written_with_weights(tokenizer, tmp_path):
    """transformers' fused expert tensors are not a checkpoint's per-expert names: refused, and nothing is left."""
    code = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import common
common.QWEN3_ARCHS["tiny-moe"] = dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=512, moe_intermediate_size=128, num_experts=4, num_experts_per_tok=2, moe=True)
common.build_model("tiny-moe", Path({str(tokenizer)!r}), Path({str(tmp_path / "moe")!r}), vocab_size=None, weights=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "dense Qwen3 shapes only" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_recipe_edits_change_a_copy_of_the_team_file(tmp_path):
    """--recipe-set: the benchmark of a LoRA job is the example plus the edits a team would make, not a second copy."""
    sys.path.insert(0, str(BENCH))
    from common import recipe_knobs

    example = REPO / "templates" / "team.example.yaml"
    before = example.read_text()
    knobs, _ = recipe_knobs(example, "sft/run_sft.sbatch", "SFT_ARGS",
                            ["sft.gradient_checkpointing=true", "sft.lora={rank: 32, alpha: 64, target_modules: [q_proj]}"])
    assert "model.enable_gradient_checkpointing=True" in knobs and "model.lora_rank=32" in knobs
    assert "model.target_modules=[q_proj]" in knobs and "engine.model_dtype=bf16" in knobs
    assert example.read_text() == before
    # recompute_layers reaches the benchmark's trainer as the scripts hand it: SFT's environment, GRPO's Ray env_vars
    _, env = recipe_knobs(example, "sft/run_sft.sbatch", "SFT_ARGS",
                          ["sft.gradient_checkpointing=true", "sft.recompute_layers=20"])
    assert env["BRIDGE_RECOMPUTE_LAYERS"] == "20"
    knobs, _ = recipe_knobs(example, "ppo/run_ppo.sbatch", "PPO_ARGS",
                            ["rl.gradient_checkpointing=true", "rl.recompute_layers=12"])
    assert "+ray_kwargs.ray_init.runtime_env.env_vars.BRIDGE_RECOMPUTE_LAYERS='12'" in knobs


def test_recompute_fit_is_what_the_planner_suggests_for_the_gpu_at_the_benchmarks_tokens():
    """sft_bench and grpo_bench --recompute-fit: the fewest layers that recompute within 90% of the GPU, as check
    suggests; more memory or fewer tokens let more layers keep their activations, and a shape that cannot fit says so."""
    sys.path.insert(0, str(BENCH))
    from common import edited_team, recompute_layers_that_fit

    from llm_bridge.login.memory_plan import CUDA_CONTEXT_GIB, HEADROOM, fewest_recomputed_layers, plan, training_parts
    from llm_bridge.login.model_shape import find_shape

    example = REPO / "templates" / "team.example.yaml"
    attention = ["sft.lora={rank: 32, alpha: 64, target_modules: [q_proj, k_proj, v_proj, o_proj]}", "sft.use_liger=false"]
    h200, h100 = 140.4, 79.6
    at_8k = recompute_layers_that_fit(example, attention, "qwen3-30b-a3b", 1, h200, "sft", 8192)
    at_16k = recompute_layers_that_fit(example, attention, "qwen3-30b-a3b", 1, h200, "sft", 16384)
    on_h100 = recompute_layers_that_fit(example, attention, "qwen3-30b-a3b", 1, h100, "sft", 8192)
    assert 1 <= at_8k < at_16k < 48 and at_8k < on_h100 < 48, (at_8k, at_16k, on_h100)
    # the edits and the tokens reach the plan: the stage it checks fits at that count and not at one fewer
    config, _ = edited_team(example, [*attention, "sft.gradient_checkpointing=true", "sft.max_token_len_per_gpu=8192"])
    shape = find_shape("Qwen/Qwen3-30B-A3B")
    assert config.sft.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert fewest_recomputed_layers(shape, config.sft, 1, (1 - HEADROOM) * h100) == on_h100

    def peak(layers):
        stage = config.sft.model_copy(update={"recompute_layers": layers})
        return sum(training_parts(shape, stage, 1, 8192).values()) + CUDA_CONTEXT_GIB
    assert peak(on_h100) <= (1 - HEADROOM) * h100 < peak(on_h100 - 1)
    with pytest.raises(SystemExit, match="does not fit 80 GiB even with every layer recomputing"):
        recompute_layers_that_fit(example, ["sft.lora={rank: 32, alpha: 64}"], "qwen3-32b", 1, h100, "sft", 8192)
    with pytest.raises(SystemExit, match="no shape for --arch 0.5b"):
        recompute_layers_that_fit(example, [], "0.5b", 1, h200, "sft", 8192)
    # the GRPO actor's update (G3: Qwen3-8B, LoRA, 16,384 tokens a micro-batch from the team.yaml edits): the value
    # check's note gives for that team.yaml on one H100
    g3 = ["rl.model=Qwen/Qwen3-8B", "rl.lora={rank: 32, alpha: 64}", "rl.gradient_checkpointing=true",
          "rl.ppo_max_token_len_per_gpu=16384"]
    rl_h100 = recompute_layers_that_fit(example, g3, "qwen3-8b", 1, h100, "rl")
    assert 1 < rl_h100 < 36 and recompute_layers_that_fit(example, g3, "qwen3-8b", 1, h200, "rl") < rl_h100
    config, _ = edited_team(example, [*g3, "slurm.nodes=1", "slurm.gpus_per_node=1", f"slurm.gpu_memory_gib={h100}"])
    assert f"rl.recompute_layers: {rl_h100} skips" in " ".join(plan(config).notes), plan(config).notes
    assert recompute_layers_that_fit(example, g3, "qwen3-8b", 1, h100, "rl", 32768) > rl_h100
    # --recompute-fit-gib 79.6 plans for an H100 on any card (no GPU asked): the edit the benchmark adds
    import argparse

    from common import recompute_fit_edit
    args = argparse.Namespace(recipe=example, recipe_set=g3, arch="qwen3-8b", gpus=1, recompute_fit_gib=h100, overrides=[])
    assert recompute_fit_edit(args, "rl") == f"rl.recompute_layers={rl_h100}"
    with pytest.raises(SystemExit, match="--recompute-fit needs --recipe"):
        recompute_fit_edit(argparse.Namespace(**{**vars(args), "recipe": None}), "rl")


def test_each_lora_speed_row_runs_its_benchmark_with_arguments_the_benchmark_accepts(tmp_path):
    """benchmarks/lora_sft_speed.sh, the commands of docs/benchmarks.md's L rows: each row's command line, caught by a
    python3 that records it, parses with the benchmark's own arguments, and the rows differ only where they say."""
    import shlex

    sys.path.insert(0, str(BENCH))
    import peft_bench
    import sft_bench

    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/bash\nprintf "%q " "$@" >> {calls}; echo >> {calls}\n')
    (bin_dir / "python3").chmod(0o755)
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text("")
    rows = ["peft-32b", "recipe-32b", "fast-32b", "peft-30b", "recipe-30b", "fast-30b", "recipe-30b-2x8k", "fast-30b-2x8k"]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(BENCH / "lora_sft_speed.sh"), str(tmp_path / "gsm8k"), *rows], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = dict(zip(rows, (shlex.split(line) for line in calls.read_text().splitlines())))
    assert argv.keys() == set(rows)
    parsed = {row: (peft_bench if row.startswith("peft") else sft_bench).arguments().parse_args(a[1:])
              for row, a in argv.items()}
    assert all(argv[row][0] == f"benchmarks/{'peft' if row.startswith('peft') else 'sft'}_bench.py" for row in rows)
    assert {parsed[r].arch for r in rows if "32b" in r} == {"qwen3-32b"} and parsed["peft-30b"].targets == "q_proj,k_proj,v_proj,o_proj"
    for slow, fast in (("recipe-32b", "fast-32b"), ("recipe-30b", "fast-30b"), ("recipe-30b-2x8k", "fast-30b-2x8k")):
        assert not parsed[slow].recompute_fit and parsed[fast].recompute_fit
        assert parsed[fast].recipe_set == [*parsed[slow].recipe_set, "sft.attn_implementation=sdpa_cudnn"]
        assert parsed[fast].overrides == parsed[slow].overrides
    assert parsed["recipe-30b-2x8k"].overrides == ["data.train_batch_size=2", "data.max_token_len_per_gpu=16384"]
    assert "sft.use_liger=false" in parsed["recipe-30b"].recipe_set and "sft.use_liger=false" not in parsed["recipe-32b"].recipe_set
    # a row it does not know is refused before any row runs
    calls.unlink()
    refused = subprocess.run(["bash", str(BENCH / "lora_sft_speed.sh"), str(tmp_path / "gsm8k"), "peft-32b", "fast-8b"],
                             env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "no row 'fast-8b'" in refused.stderr and not calls.exists()
