"""Light-R1 SFT data (qihoo360/Light-R1-SFTData, long math reasoning) -> SFT parquet with `messages`.

    python train/scripts/data_preprocess/light_r1_sft.py                          # from the Hub
    python train/scripts/data_preprocess/light_r1_sft.py --local-path ~/datasets/light_r1/stage2-3k.json

Writes <out>/{train,test}.parquet: a deterministic split (--test-fraction, --seed). Conversations come as
ShareGPT turns (from/value) or messages (role/content); rows without a final assistant turn are reported
and left out. The responses are long (thousands of tokens): raise sft.max_length and max_token_len_per_gpu.
"""

import argparse
from pathlib import Path

from llm_bridge.data import BadRow, convert, load_split, normalise_messages, run_script, write_splits


def to_sft_row(index: int, row: dict) -> dict:
    turns = row.get("conversations", row.get("messages"))
    if turns is None:
        raise BadRow("no conversations or messages field")
    return {"messages": normalise_messages(turns)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-path", type=Path, help="offline copy: a .json / .jsonl / .parquet file or a directory")
    parser.add_argument("--out", type=Path, default=Path("~/data/light_r1_sft"), help="output directory (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    rows = load_split("qihoo360/Light-R1-SFTData", None, "train", args.local_path.expanduser() if args.local_path else None)
    write_splits("light_r1_sft", rows, convert(rows, to_sft_row), args.out.expanduser(), args.test_fraction, args.seed)


if __name__ == "__main__":
    run_script(main)
