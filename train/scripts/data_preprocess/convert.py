"""Any Hub or local dataset -> verl parquet, by naming which fields hold what.

SFT (a `messages` column):
    python train/scripts/data_preprocess/convert.py --to sft --source org/name --messages-field conversations --out ~/data/mine_sft
    python train/scripts/data_preprocess/convert.py --to sft --local-path qa.jsonl --prompt-field question --response-field answer --out ~/data/qa_sft
RL (verl's data_source / prompt / reward_model format; the reward is chosen by --data-source):
    python train/scripts/data_preprocess/convert.py --to rl --local-path qa.jsonl --prompt-field question --answer-field answer \
        --data-source my/qa --out ~/data/qa_rl

Local files: .jsonl, .json or .parquet (or a directory with <split>.jsonl / <split>.parquet). The split into
train and test is deterministic (--test-fraction, --seed); bad rows are reported and written to rejected.jsonl.
"""

import argparse
from pathlib import Path

from llm_bridge.data import BadRow, convert, load_split, normalise_messages, run_script, write_splits


def _text(row: dict, field: str) -> str:
    value = row.get(field)
    if value is None or not str(value).strip():
        raise BadRow(f"empty or missing {field!r}")
    return str(value)


def sft_converter(args):
    def to_row(index: int, row: dict) -> dict:
        if args.messages_field:
            return {"messages": normalise_messages(row.get(args.messages_field))}
        turns = [{"role": "system", "content": args.system}] if args.system else []
        turns += [{"role": "user", "content": _text(row, args.prompt_field)},
                  {"role": "assistant", "content": _text(row, args.response_field)}]
        return {"messages": turns}

    return to_row


def rl_converter(args):
    def to_row(index: int, row: dict) -> dict:
        question = _text(row, args.prompt_field)
        prompt = [{"role": "system", "content": args.system}] if args.system else []
        prompt.append({"role": "user", "content": f"{question} {args.instruction}".strip()})
        return {
            "data_source": args.data_source,
            "prompt": prompt,
            "ability": args.ability,
            "reward_model": {"style": "rule", "ground_truth": _text(row, args.answer_field).strip()},
            "extra_info": {"index": index, "question": question},
        }

    return to_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--source", help="Hugging Face dataset id")
    source.add_argument("--local-path", type=Path, help="local .jsonl / .json / .parquet file or directory")
    parser.add_argument("--config", help="dataset config name (Hub only)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--to", choices=["sft", "rl"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--messages-field", help="sft: a field holding the whole conversation")
    parser.add_argument("--prompt-field", help="the question / instruction field")
    parser.add_argument("--response-field", help="sft: the answer to train on")
    parser.add_argument("--answer-field", help="rl: the ground truth the reward compares against")
    parser.add_argument("--system", default="", help="an optional system message")
    parser.add_argument("--instruction", default="", help="rl: text appended to every question")
    parser.add_argument("--data-source", help="rl: verl picks the reward by this (e.g. openai/gsm8k)")
    parser.add_argument("--ability", default="general")
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    if args.to == "sft" and not (args.messages_field or (args.prompt_field and args.response_field)):
        parser.error("--to sft needs --messages-field, or --prompt-field and --response-field")
    if args.to == "rl" and not (args.prompt_field and args.answer_field and args.data_source):
        parser.error("--to rl needs --prompt-field, --answer-field and --data-source")

    rows = load_split(args.source, args.config, args.split, args.local_path.expanduser() if args.local_path else None)
    to_row = sft_converter(args) if args.to == "sft" else rl_converter(args)
    write_splits(f"{args.source or args.local_path} -> {args.to}", rows, convert(rows, to_row),
                 args.out.expanduser(), args.test_fraction, args.seed)


if __name__ == "__main__":
    run_script(main)
