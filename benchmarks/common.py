"""What the SFT and GRPO benchmarks share: offline models, a GSM8K tokenizer, and the recipe's own knobs.

The GPU machine has no network, so models are random-weight models with Qwen2.5's or Qwen3's architecture
values and the tokenizer is a byte-level BPE trained on GSM8K. Qwen3 shapes (8B to 32B) are written
without weights: config.json, the tokenizer and a safetensors file holding one norm vector, so that
`from_pretrained` (verl's loader too) initializes every other weight as new (normal, std 0.02). A 32B
model then needs no 64 GB on disk, and loads in the time its random initialization takes (GRPO's vLLM rollout
loads from disk: grpo_bench asks build_model for the weights, written tiled). The recipe's settings are not copied here:
`recipe_knobs` renders a team.yaml with the recipe's templates and keeps the throughput knobs of the
verl command line the scripts would run, and the environment defaults they export (PyTorch's allocator),
so a benchmark of "the recipe" measures what teams submit.
"""

import argparse
import json
import multiprocessing
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # llm_bridge: the recipe's own renderer and parquet writer
from llm_bridge.login.model_shape import KNOWN_CONFIGS  # noqa: E402
COMMON = dict(max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu",
              attention_dropout=0.0, use_sliding_window=False)
_DIMENSIONS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size")


def _shape(hub_id: str, *extra: str) -> dict:
    """The published config.json values the recipe's planner knows (llm_bridge/login/model_shape.py), so that a
    benchmark's model and the plan it checks have one source."""
    config = KNOWN_CONFIGS[hub_id]
    return {key: config[key] for key in _DIMENSIONS + extra}


ARCHS = {  # Qwen2.5 shapes
    "0.5b": _shape("Qwen/Qwen2.5-0.5B-Instruct", "tie_word_embeddings"),
    "1.5b": _shape("Qwen/Qwen2.5-1.5B-Instruct", "tie_word_embeddings"),
    "7b": _shape("Qwen/Qwen2.5-7B-Instruct", "tie_word_embeddings"),
}
QWEN3 = dict(max_position_embeddings=40960, rope_theta=1000000.0, rms_norm_eps=1e-6, hidden_act="silu", head_dim=128,
             attention_dropout=0.0, tie_word_embeddings=False)
QWEN3_HUB_IDS = {"qwen3-8b": "Qwen/Qwen3-8B", "qwen3-32b": "Qwen/Qwen3-32B", "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B"}
QWEN3_ARCHS = {  # Qwen3 shapes; "moe" ones are Qwen3MoeForCausalLM
    "qwen3-8b": _shape(QWEN3_HUB_IDS["qwen3-8b"]),
    "qwen3-32b": _shape(QWEN3_HUB_IDS["qwen3-32b"]),
    "qwen3-30b-a3b": dict(_shape(QWEN3_HUB_IDS["qwen3-30b-a3b"], "moe_intermediate_size", "num_experts",
                                 "num_experts_per_tok"),
                          norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[], moe=True),
}
QWEN_VOCAB = 151936

# verl overrides that change speed and memory but not what is learned. Everything else on the rendered
# command line (data, batch sizes, lengths, learning rates, paths) is the benchmark's to fix, identically
# for every variant.
_KNOBS = re.compile(
    r"^\+?(data\.(use_dynamic_bsz|max_token_len_per_gpu|micro_batch_size_per_gpu)"
    r"|model\.(enable_gradient_checkpointing|use_liger|use_remove_padding|override_config\.attn_implementation)"
    # A LoRA team.yaml's adapter: it changes what is learned, and it is the job being measured.
    r"|(actor_rollout_ref\.)?model\.(lora_rank|lora_alpha|target_modules|exclude_modules)|actor_rollout_ref\.rollout\.load_format"
    r"|engine\.\w+"
    r"|\+ray_kwargs\.ray_init\.runtime_env\.env_vars\.BRIDGE_RECOMPUTE_LAYERS"
    r"|actor_rollout_ref\.model\.(enable_gradient_checkpointing|use_liger|use_remove_padding|override_config\.attn_implementation)"
    r"|actor_rollout_ref\.(actor|ref)\.(strategy|use_dynamic_bsz|ppo_max_token_len_per_gpu|ppo_micro_batch_size_per_gpu"
    r"|log_prob_\w+|fsdp_config\.\w+|use_torch_compile)"
    r"|actor_rollout_ref\.rollout\.(gpu_memory_utilization|tensor_model_parallel_size|log_prob_\w+|max_num_seqs"
    r"|max_num_batched_tokens|enforce_eager|free_cache_engine|enable_chunked_prefill|agent\.num_workers"
    r"|engine_kwargs\.vllm\.\w+)"
    r"|trainer\.balance_batch"
    # These two change the algorithm, not only its speed; the recipe chooses them for speed (docs/benchmarks.md).
    r"|actor_rollout_ref\.actor\.use_kl_loss|algorithm\.rollout_correction\.bypass_mode)="
)


def load_gsm8k(gsm8k: Path) -> list[dict]:
    return [json.loads(line) for line in (gsm8k / "train.jsonl").read_text().splitlines()]


def build_once(out: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """out, once out/marker is there; otherwise build(partial) into out.partial and rename it into place,
    so that a run stopped half-way never leaves a folder the next run takes for a finished one."""
    if (out / marker).is_file():
        return out
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        build(partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)  # unfinished, from before builds went through .partial
    partial.rename(out)
    return out


def build_tokenizer(pairs: list[dict], out: Path) -> Path:
    """A byte-level BPE tokenizer with Qwen2.5's chat tokens trained on GSM8K (25,577 tokens: GSM8K runs
    out of merges before the 32,000 asked for)."""
    def build(partial: Path) -> None:
        sys.path.insert(0, str(REPO / "tests" / "cpu"))
        from build_tiny import build_tokenizer as train_bpe

        train_bpe([p["question"] + "\n" + p["answer"] for p in pairs], vocab_size=32000).save_pretrained(partial)

    return build_once(out, "tokenizer.json", build)


def pad_tokenizer(tokenizer_dir: Path, out: Path, size: int = QWEN_VOCAB) -> Path:
    """The tokenizer grown to `size` ids with plain added tokens, so that a model with Qwen2.5's
    vocabulary (and its output layer's cost) can sample any id and every id still decodes."""
    def build(partial: Path) -> None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        tokenizer.add_tokens([f"<|pad{i}|>" for i in range(size - len(tokenizer))])
        assert len(tokenizer) == size, len(tokenizer)
        tokenizer.save_pretrained(partial)

    return build_once(out, "tokenizer.json", build)


def build_model(arch: str, tokenizer_dir: Path, out: Path, vocab_size: int | None = QWEN_VOCAB,
                weights: bool = False) -> Path:
    """A random-weight model with Qwen2.5-<arch>'s or Qwen3's shapes, saved in bf16 with the tokenizer.

    vocab_size None: the tokenizer's own size, so that every id the model can sample decodes.
    Qwen3 shapes are written without weights (the trainer initializes them as it loads, stub_init/) unless
    `weights`: a vLLM rollout loads every weight from disk (grpo_bench.py).
    Built in a child process: a CUDA context and cached blocks left in the benchmark's own process would
    sit on the GPU through the run (3.1 GiB for 0.5B on an H100) and count in the GRPO peak.
    """
    def build(partial: Path) -> None:
        if arch not in QWEN3_ARCHS:
            target, shape = _build_model, ARCHS[arch]
        else:
            target, shape = (_write_qwen3_weights if weights else _write_qwen3_stub), QWEN3_ARCHS[arch]
        child = multiprocessing.get_context("spawn").Process(target=target, args=(shape, tokenizer_dir, partial, vocab_size))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"building the {arch} model failed (exit code {child.exitcode}); the error is above")

    return build_once(out, "config.json", build)


def _build_model(shape: dict, tokenizer_dir: Path, out: Path, vocab_size: int | None) -> None:
    """shape: a Qwen2.5 shape (ARCHS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab, eos, pad = vocab_size or len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id
    config = Qwen2Config(**COMMON, **shape, vocab_size=vocab, torch_dtype="bfloat16", bos_token_id=None,
                         eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def qwen3_config(shape: dict, vocab_size: int, eos: int | None = None, pad: int | None = None):
    from transformers import Qwen3Config, Qwen3MoeConfig

    shape = dict(shape)
    moe = shape.pop("moe", False)
    cls = Qwen3MoeConfig if moe else Qwen3Config
    return cls(**QWEN3, **shape, vocab_size=vocab_size, torch_dtype="bfloat16", bos_token_id=None, eos_token_id=eos,
               pad_token_id=pad, architectures=["Qwen3MoeForCausalLM" if moe else "Qwen3ForCausalLM"])


SHARD_SIZE = "4GB"  # of a Qwen3 model written with its weights


def _write_qwen3_files(shape: dict, tokenizer_dir: Path, out: Path, vocab_size: int | None):
    """config.json, generation_config.json and the tokenizer of a Qwen3 shape; returns the config."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = qwen3_config(shape, vocab_size or len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    config.save_pretrained(out)
    GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return config


def _write_qwen3_stub(shape: dict, tokenizer_dir: Path, out: Path, vocab_size: int | None) -> None:
    import torch
    from safetensors.torch import save_file

    config = _write_qwen3_files(shape, tokenizer_dir, out, vocab_size)
    save_file({"model.norm.weight": torch.ones(config.hidden_size, dtype=torch.bfloat16)}, out / "model.safetensors",
              metadata={"format": "pt"})


def _write_qwen3_weights(shape: dict, tokenizer_dir: Path, out: Path, vocab_size: int | None) -> None:
    """A dense Qwen3 shape with every weight on disk, in SHARD_SIZE shards: norms 1, the rest normal(0, 0.02) tiled
    from one random block (stub_init/), one shard in memory at a time (8B: 40 s on 2 CPU cores)."""
    import torch
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    if shape.get("moe"):
        raise ValueError("weights are written for dense Qwen3 shapes only: transformers' fused expert tensors are not "
                         "the per-expert names a checkpoint (and vLLM) uses")
    sys.path.insert(0, str(REPO / "benchmarks" / "stub_init"))
    import sitecustomize  # noqa: F401  the tiled normal_

    config = _write_qwen3_files(shape, tokenizer_dir, out, vocab_size)
    with torch.device("meta"):
        shapes = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).state_dict()
    split = split_torch_state_dict_into_shards(shapes, filename_pattern="model{suffix}.safetensors", max_shard_size=SHARD_SIZE)
    torch.manual_seed(0)
    for filename, names in split.filename_to_tensors.items():
        shard = {name: torch.empty(shapes[name].shape, dtype=torch.bfloat16) for name in names}
        for name, tensor in shard.items():
            if name.endswith("norm.weight"):
                tensor.fill_(1.0)
            else:
                tensor.normal_(0.0, 0.02)
        save_file(shard, out / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def recipe_knobs(team_file: Path, script: str, array: str, edits: list[str] = ()) -> tuple[list[str], dict[str, str]]:
    """The throughput knobs of `array` (SFT_ARGS / PPO_ARGS) in the script rendered from team_file, and the
    variables it exports as defaults (export NAME="${NAME:-value}") where this environment has none, and the
    team.yaml values it exports outright for the trainer.
    edits: KEY=VALUE (a dotted team.yaml key, a YAML value) applied to team_file first, e.g.
    sft.lora={rank: 32, alpha: 64}: a team's variant of the example without a second copy of it."""
    from llm_bridge.login.render import render_all

    config, team_file = edited_team(team_file, edits)
    text = render_all(config, team_file, "rendered")[Path(script)]
    block = re.search(rf"^{array}=\($(.*?)^\)$", text, re.S | re.M)
    if block is None:
        raise SystemExit(f"{script} has no {array}=( ... ) block: update recipe_knobs")
    words = shlex.split(block.group(1), comments=True)
    defaults = dict(re.findall(r'^export (\w+)="\$\{\1:-([^}"]*)\}"$', text, re.M))
    env = {k: v for k, v in defaults.items() if k not in os.environ}
    # team.yaml values the script hands its trainer as environment, not as overrides (chat_template, recompute_layers)
    env.update(re.findall(r"^export (BRIDGE_\w+)=([\w.-]+)$", text, re.M))
    return [w for w in words if _KNOBS.match(w)], env


def edited_team(team_file: Path, edits: list[str]):
    """team_file's config with the KEY=VALUE edits applied (written to a temporary copy), and that copy's path."""
    import tempfile

    import yaml

    from llm_bridge.login.loader import load

    if edits:
        data = yaml.safe_load(team_file.read_text())
        for edit in edits:
            key, _, value = edit.partition("=")
            *parents, leaf = key.split(".")
            node = data
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = yaml.safe_load(value)
        edited = Path(tempfile.mkdtemp()) / team_file.name
        edited.write_text(yaml.safe_dump(data, sort_keys=False))
        team_file = edited
    config, problems = load(team_file)
    if config is None:
        raise SystemExit(f"{team_file}: " + "; ".join(p.message for p in problems))
    return config, team_file


# the tokens per GPU a stage's plan counts: its team.yaml key, and the verl override a benchmark takes after --
STAGE_TOKENS = {"sft": ("max_token_len_per_gpu", "data.max_token_len_per_gpu"),
                "rl": ("ppo_max_token_len_per_gpu", "actor_rollout_ref.actor.ppo_max_token_len_per_gpu")}


def recompute_layers_that_fit(team_file: Path, edits: list[str], arch: str, gpus: int, gpu_gib: float,
                              stage: str = "sft", tokens: int | None = None) -> int:
    """The <stage>.recompute_layers `llm-bridge check` suggests for this stage (sft, or rl: the GRPO actor's update) on
    GPUs of gpu_gib: the fewest decoder layers that recompute with its planned peak still within 90% of the GPU
    (check warns above that), at `tokens` per GPU (None: the team.yaml's after the edits)."""
    from llm_bridge.login.memory_plan import HEADROOM, fewest_recomputed_layers
    from llm_bridge.login.model_shape import find_shape

    if arch not in QWEN3_HUB_IDS:
        raise SystemExit(f"--recompute-fit: the planner has no shape for --arch {arch}; use one of {sorted(QWEN3_HUB_IDS)}")
    key = STAGE_TOKENS[stage][0]
    config, _ = edited_team(team_file, [*edits, f"{stage}.gradient_checkpointing=true",
                                        *([f"{stage}.{key}={tokens}"] if tokens else [])])
    planned = getattr(config, stage)
    layers = fewest_recomputed_layers(find_shape(QWEN3_HUB_IDS[arch]), planned, gpus, (1 - HEADROOM) * gpu_gib)
    if layers is None:
        raise SystemExit(f"--recompute-fit: {arch} at {getattr(planned, key)} tokens does not fit {gpu_gib:.0f} GiB even "
                         "with every layer recomputing (llm-bridge check says what would)")
    return layers


def add_recompute_fit(p: argparse.ArgumentParser, stage: str) -> None:
    p.add_argument("--recompute-fit", action="store_true",
                   help=f"with --recipe: {stage}.recompute_layers as llm-bridge check suggests for this GPU's memory: the "
                        "fewest layers that recompute within 90%% of it")
    p.add_argument("--recompute-fit-gib", type=float, metavar="GIB",
                   help="--recompute-fit plans for GPUs of GIB instead (79.65: an 80 GB H100, on a larger card)")


def recompute_fit_edit(args, stage: str, need_tokens: bool = False) -> str:
    """--recompute-fit's team.yaml edit, <stage>.recompute_layers=N, planned for --recompute-fit-gib or this GPU, at
    the tokens per GPU the overrides after -- give the stage (the last one wins), else at the team.yaml's own."""
    if not args.recipe:
        raise SystemExit(f"--recompute-fit needs --recipe: it sets that team.yaml's {stage}.recompute_layers")
    override = STAGE_TOKENS[stage][1] + "="
    given = [o.removeprefix(override) for o in args.overrides if o.startswith(override)]
    if need_tokens and not given:
        raise SystemExit(f"--recompute-fit needs the tokens per GPU it plans for: add {override}N after --")
    tokens = int(given[-1]) if given else None
    if args.recompute_fit_gib:
        gib = args.recompute_fit_gib
    else:
        import torch

        gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    layers = recompute_layers_that_fit(args.recipe, args.recipe_set, args.arch, args.gpus, gib, stage, tokens)
    print(f"--recompute-fit: {stage}.recompute_layers={layers} for {gib:.0f} GiB", flush=True)
    return f"{stage}.recompute_layers={layers}"


def parser(doc: str, script: str, default_steps: int) -> argparse.ArgumentParser:
    """The options every benchmark takes; `script` names the rendered script --recipe reads."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCHS) + sorted(QWEN3_ARCHS), default="0.5b")
    p.add_argument("--recipe", type=Path, help=f"a team.yaml: run with the speed knobs of its rendered {script}")
    p.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE",
                   help="edit --recipe first: a dotted team.yaml key and a YAML value, e.g. sft.lora={rank: 32, alpha: 64}")
    p.add_argument("--gsm8k", type=Path, required=True, help="a directory with GSM8K's train.jsonl")
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--label", required=True, help="name of this variant in the results")
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--steps", type=int, default=default_steps)
    p.add_argument("overrides", nargs="*", help="verl overrides after --")
    return p


def new_run_dir(args, prefix: str = "") -> Path:
    run_dir = args.work / "runs" / f"{prefix}{args.arch}-{args.label}-{int(time.time())}"
    run_dir.mkdir(parents=True)
    return run_dir


def run_logged(argv: list[str], run_dir: Path, env: dict[str, str], arch: str = "") -> int:
    """Run argv from the repo root with the repo importable; all output goes to run_dir/log.txt.
    A weight-free Qwen3 model gets the fast random initialization of stub_init/sitecustomize.py."""
    path = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"
    if arch in QWEN3_ARCHS:
        path = f"{REPO / 'benchmarks' / 'stub_init'}:{path}"
    env = {**os.environ, **env, "PYTHONPATH": path}
    with (run_dir / "log.txt").open("w") as log:
        return subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO).returncode


def finish(args, result: dict, row: list) -> None:
    """Append the result to <work>/results.jsonl, print it, and its Markdown row unless it failed."""
    with (args.work / "results.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "error"}))
    if "error" in result:
        print(result["error"], file=sys.stderr)
        sys.exit(1)
    print(markdown_row(row))


def markdown_row(cells: list) -> str:
    return "| " + " | ".join(f"{c:,}" if isinstance(c, int) else str(c) for c in cells) + " |"


def cuda_ms(step: Callable[[], object], iters: int) -> tuple[float, object]:
    """Milliseconds per call of step() on the GPU (CUDA events, after 3 warm-up calls), and the last warm-up's result."""
    import torch

    for _ in range(3):
        out = step()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / iters, out
