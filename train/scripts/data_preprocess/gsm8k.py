"""GSM8K -> verl parquet: the RL format of verl's own gsm8k example, and SFT `messages`.

    python train/scripts/data_preprocess/gsm8k.py                                  # from the Hub (openai/gsm8k, main)
    python train/scripts/data_preprocess/gsm8k.py --local-path ~/datasets/gsm8k    # offline: train.jsonl / test.jsonl

Writes <rl-dir>/{train,test}.parquet (data_source, prompt, ability, reward_model, extra_info) and
<sft-dir>/{train,test}.parquet (messages). The ground truth is the number after "####", commas removed,
which verl's built-in `openai/gsm8k` reward compares against. Rows without it are reported and left out.
"""

import argparse
import re
from pathlib import Path

from llm_bridge.data import BadRow, convert, load_split, run_script, write_parquet, write_rejected

DATA_SOURCE = "openai/gsm8k"
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
_FINAL = re.compile(r"#### (\-?[0-9\.\,]+)")  # the pattern verl's gsm8k reward uses


def ground_truth(answer: str) -> str:
    match = _FINAL.search(answer)
    if not match:
        raise BadRow('answer has no "#### <number>" line')
    return match.group(1).replace(",", "")


def to_rl_row(split: str):
    def convert_row(index: int, row: dict) -> dict:
        question, answer = row.get("question"), row.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise BadRow("empty or missing question")
        if not isinstance(answer, str):
            raise BadRow("missing answer")
        return {
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": ground_truth(answer)},
            "extra_info": {"split": split, "index": index, "answer": answer, "question": question},
        }

    return convert_row


def to_sft_row(rl_row: dict) -> dict:
    return {"messages": rl_row["prompt"] + [{"role": "assistant", "content": rl_row["extra_info"]["answer"]}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-path", type=Path, help="offline copy: a directory with train.jsonl and test.jsonl")
    parser.add_argument("--rl-dir", type=Path, default=Path("~/data/gsm8k"), help="RL parquet output (default: %(default)s)")
    parser.add_argument("--sft-dir", type=Path, default=Path("~/data/gsm8k_sft"), help="SFT parquet output (default: %(default)s)")
    args = parser.parse_args()
    local = args.local_path.expanduser() if args.local_path else None

    for split in ("train", "test"):
        source = load_split("openai/gsm8k", "main", split, local)
        result = convert(source, to_rl_row(split))
        result.report(f"gsm8k {split}")
        rl_path = args.rl_dir.expanduser() / f"{split}.parquet"
        write_parquet(result.rows, rl_path)
        write_parquet([to_sft_row(r) for r in result.rows], args.sft_dir.expanduser() / f"{split}.parquet")
        write_rejected(result, source, rl_path.with_suffix(".rejected.jsonl"))
        print(f"  wrote {rl_path} and {args.sft_dir.expanduser() / f'{split}.parquet'}")


if __name__ == "__main__":
    run_script(main)
