"""Humanity's Last Exam, text-only questions -> verl RL parquet, scored by llm_bridge/rewards/hle.py.

    hf auth login                                              # cais/hle is gated: accept its terms first
    python train/scripts/data_preprocess/hle.py                        # from the Hub
    python train/scripts/data_preprocess/hle.py --local-path ~/datasets/hle   # offline: test.parquet / test.jsonl

Writes <out>/test.parquet. Questions with an image are left out (counted); each prompt carries the
official HLE system prompt (Explanation / Answer / Confidence, one for every question) as a system message.
The 2025 competition forbade training on HLE: use this for validation and evaluation only.
"""

import argparse
from pathlib import Path

from llm_bridge.data import BadRow, convert, load_split, run_script, write_parquet, write_rejected
from llm_bridge.rewards.hle import DATA_SOURCE, SYSTEM_PROMPT


def to_rl_row(index: int, row: dict) -> dict:
    question, answer, answer_type = row.get("question"), row.get("answer"), row.get("answer_type")
    if not isinstance(question, str) or not question.strip():
        raise BadRow("empty or missing question")
    if answer is None or not str(answer).strip():
        raise BadRow("empty or missing answer")
    if answer_type not in ("exactMatch", "multipleChoice"):
        raise BadRow(f"unknown answer_type {answer_type!r}")
    return {
        "data_source": DATA_SOURCE,
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        "ability": str(row.get("category") or "hle"),
        "reward_model": {"style": "rule", "ground_truth": str(answer).strip()},
        "extra_info": {"split": "test", "index": index, "id": str(row.get("id", index)), "answer_type": answer_type,
                       "category": str(row.get("category") or ""), "question": question},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-path", type=Path, help="offline copy: a directory with test.parquet or test.jsonl")
    parser.add_argument("--out", type=Path, default=Path("~/data/hle"), help="output directory (default: %(default)s)")
    args = parser.parse_args()

    rows = load_split("cais/hle", None, "test", args.local_path.expanduser() if args.local_path else None)
    text_only = [r for r in rows if not r.get("image")]
    print(f"hle: {len(rows)} questions, {len(rows) - len(text_only)} with an image left out, {len(text_only)} text-only")
    result = convert(text_only, to_rl_row)
    result.report("hle test")
    out = args.out.expanduser() / "test.parquet"
    write_parquet(result.rows, out)
    write_rejected(result, text_only, out.with_suffix(".rejected.jsonl"))
    print(f"  wrote {out}")


if __name__ == "__main__":
    run_script(main)
