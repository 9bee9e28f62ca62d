"""`llm-bridge merge`, `llm-bridge upload`, `llm-bridge generate`: from a verl checkpoint to a model on the Hub and its outputs."""

import argparse
import sys
from pathlib import Path

from llm_bridge.evaluate.sampling import length_arg, share_of_gpu
from llm_bridge.problems import errors, report
from llm_bridge.login.validate import validate


def cmd_merge(args: argparse.Namespace) -> int:
    from llm_bridge.model.merge import merge

    merge(args.checkpoint, args.out, args.step, check=not args.no_verify, force=args.force, base=args.base,
          adapter_only=args.adapter_only)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    from llm_bridge.model.upload import model_card, upload

    team = None
    if args.team:
        team, problems = validate(args.team, local_paths=False)
        if errors(problems):
            print(report(str(args.team), problems))
            return 1
    repo = args.repo
    if "/" not in repo:
        if team is None:
            print("ERROR: --repo needs ORG/NAME. Fix: pass the full repo id, or --team to use huggingface.org.", file=sys.stderr)
            return 1
        repo = f"{team.huggingface.org}/{repo}"
    scores = args.eval.expanduser() if args.eval else None
    if scores is not None and scores.is_file():  # summary.md or summary.json: the folder they are in
        scores = scores.parent
    if scores is not None and not ((scores / "summary.json").is_file() and (scores / "summary.md").is_file()):
        print(f"ERROR: --eval {args.eval}: no summary.json and summary.md there, so the card would have no scores.\n"
              "       Fix: pass the folder `llm-bridge eval report --out` wrote (evaluation.results/<model>), "
              "or leave --eval out.", file=sys.stderr)
        return 1
    card = model_card(args.model, repo, team, args.stage, scores)
    return upload(args.model, repo, args.public, args.dry_run, card)


def cmd_generate(args: argparse.Namespace) -> int:
    from llm_bridge.data import read_local
    from llm_bridge.evaluate.offline import generate
    from llm_bridge.evaluate.sampling import Sampling, max_tokens
    from llm_bridge.evaluate.store import JsonlStore, unique_ids

    rows = read_local(args.data.expanduser(), "test")[: args.limit]
    items = []
    for n, row in enumerate(rows):
        messages = row.get(args.messages_key)
        if not isinstance(messages, list) or not messages:
            print(f"ERROR: row {n} of {args.data} has no chat messages in column {args.messages_key!r}.\n"
                  f"       Fix: --messages-key <column>; columns here: {sorted(row)}", file=sys.stderr)
            return 1
        if messages[-1].get("role") == "assistant":  # SFT data: generate the last answer anew
            messages = messages[:-1]
        index = (row.get("extra_info") or {}).get("index", n) if isinstance(row.get("extra_info"), dict) else n
        items.append({"id": str(index), "messages": messages})
    unique_ids(items, args.data)
    sampling = Sampling(max_tokens(args.max_tokens), not args.greedy, args.temperature, args.top_p)
    generate(items, lambda item: item["messages"], JsonlStore(args.out), str(args.model), sampling,
             tensor_parallel_size=args.tensor_parallel_size, max_model_len=args.max_model_len,
             gpu_memory_utilization=args.gpu_memory_utilization)
    return 0


def add_parsers(sub) -> None:
    merge_parser = sub.add_parser(
        "merge",
        allow_abbrev=False,
        help="verl checkpoint -> Hugging Face model (verl's merger; newest step; LoRA folded in; load-checked)",
        description="Merge a sharded FSDP checkpoint of SFT or PPO/GRPO into a Hugging Face model directory with "
        "verl's own merger. The newest step unless --step; a PPO step's actor/ is found by itself; a LoRA adapter is "
        "folded into the base weights one shard at a time (and kept in lora_adapter/); a checkpoint that holds only "
        "the adapter is folded into --base. The result is written to a temporary directory and renamed into place "
        "only after it loads with transformers.",
    )
    merge_parser.add_argument("--checkpoint", type=Path, required=True,
                              help="trainer.default_local_dir of the run (or one global_step_N directory)")
    merge_parser.add_argument("--out", type=Path, required=True, help="the Hugging Face model directory to write")
    merge_parser.add_argument("--step", type=int, help="this step instead of the newest")
    merge_parser.add_argument("--no-verify", action="store_true", help="skip loading the result with transformers")
    merge_parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    merge_parser.add_argument("--base", help="LoRA runs saved adapter-only (lora.checkpoints: adapter): the model the "
                              "run trained from, a Hub id or a directory (sft.model or rl.model of team.yaml)")
    merge_parser.add_argument("--adapter-only", action="store_true",
                              help="LoRA runs: write the adapter alone (PEFT format, with the run's tokenizer)")
    merge_parser.set_defaults(func=cmd_merge)

    upload_parser = sub.add_parser(
        "upload",
        allow_abbrev=False,
        help="merged model -> Hugging Face Hub: private by default, model card, resumable, --dry-run",
        description="Upload a model directory with huggingface_hub's upload_large_folder (resumable: rerun after an "
        "interruption). The token comes from HF_TOKEN or `hf auth login`, never from an argument. A model "
        "card (README.md) is generated from team.yaml and the eval report unless the folder has its own.",
    )
    upload_parser.add_argument("--model", type=Path, required=True, help="the merged model directory")
    upload_parser.add_argument("--repo", required=True, help="ORG/NAME, or NAME under huggingface.org of --team")
    upload_parser.add_argument("--team", type=Path, help="team.yaml: recipe settings for the model card")
    upload_parser.add_argument("--stage", choices=["sft", "rl"], default="sft", help="which settings of --team (default: sft)")
    upload_parser.add_argument("--eval", type=Path, help="a `llm-bridge eval report --out` directory: scores for the card")
    upload_parser.add_argument("--public", action="store_true", help="make the repo public (default: private)")
    upload_parser.add_argument("--dry-run", action="store_true", help="list what would go up; send nothing")
    upload_parser.set_defaults(func=cmd_upload)

    generate_parser = sub.add_parser(
        "generate",
        allow_abbrev=False,
        help="vLLM offline batch generation over a parquet/jsonl dataset (chat template), resumable jsonl out",
        description="Generate one response per row with vLLM (LLM.chat applies the model's chat template). Rows come "
        "from a verl RL parquet (prompt column) or any parquet/jsonl with a list of chat messages. Output lines: "
        "{id, status, response, finish_reason}, and for a model that thinks first {reasoning, thinking} with the answer "
        "alone in response; a rerun skips ids already written.",
    )
    generate_parser.add_argument("--model", type=Path, required=True, help="Hugging Face model directory (llm-bridge merge --out)")
    generate_parser.add_argument("--data", type=Path, required=True, help="parquet or jsonl")
    generate_parser.add_argument("--out", type=Path, required=True, help="output .jsonl (appended; resumable)")
    generate_parser.add_argument("--messages-key", default="prompt", help="column with the chat messages (default: prompt)")
    generate_parser.add_argument("--max-tokens", type=length_arg("model"), default=1024,
                                 help="response tokens, thinking included (default: 1024); 'model' = up to the context")
    generate_parser.add_argument("--greedy", action="store_true", help="temperature 0 instead of the model's generation_config")
    generate_parser.add_argument("--temperature", type=float, help="default: the model's generation_config")
    generate_parser.add_argument("--top-p", type=float, help="default: the model's generation_config")
    generate_parser.add_argument("--tensor-parallel-size", type=int, default=1)
    generate_parser.add_argument("--max-model-len", type=int)
    generate_parser.add_argument("--gpu-memory-utilization", type=share_of_gpu,
                                 help="vLLM's share of each GPU, above 0 and at most 1 (default: vLLM's 0.9); lower it "
                                      "when something else holds memory on the same GPU")
    generate_parser.add_argument("--limit", type=int, help="only the first N rows")
    generate_parser.set_defaults(func=cmd_generate)

