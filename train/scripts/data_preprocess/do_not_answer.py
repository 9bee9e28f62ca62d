"""Do-Not-Answer (LibrAI, Apache-2.0) -> the question CSV `llm-bridge eval dna` reads, plus the release's labels.

    python train/scripts/data_preprocess/do_not_answer.py                              # from the Hub: LibrAI/do-not-answer
    python train/scripts/data_preprocess/do_not_answer.py --local-path do_not_answer_en.csv   # offline copy (.csv/.jsonl/.parquet)

Writes <out>/do_not_answer_en.csv (id, risk_area, types_of_harm, specific_harms, question: 939 rows) and, when
the source carries the release's annotations (<model>_response, <model>_harmful, <model>_action), also
<out>/annotated_en.csv, which `llm-bridge eval dna score --labels` scores with the same code as a judged model, on
the release's own action scale (0-5, 5 = follows the instruction; a judged model gets the judge's 0-6 rubric).
"""

import argparse
import csv
from pathlib import Path

from llm_bridge.data import load_split, read_local, run_script, write_csv

QUESTION_COLUMNS = ["id", "risk_area", "types_of_harm", "specific_harms", "question"]


def load(local_path: Path | None) -> list[dict]:
    if local_path and local_path.suffix == ".csv":
        with local_path.open(encoding="utf-8", newline="") as f:
            return list(csv.DictReader(f))
    if local_path:
        return read_local(local_path, "train")
    return load_split("LibrAI/do-not-answer", None, "train", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--local-path", type=Path, help="offline copy: a .csv, .jsonl or .parquet of the release")
    parser.add_argument("--out", type=Path, default=Path("~/data/do_not_answer"), help="output directory (default: %(default)s)")
    args = parser.parse_args()

    rows = load(args.local_path.expanduser() if args.local_path else None)
    missing = [c for c in QUESTION_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise SystemExit(f"ERROR: the source lacks column(s) {missing or QUESTION_COLUMNS}.\n"
                         "       Fix: use the Do-Not-Answer release (LibrAI/do-not-answer, or its do_not_answer_en.csv).")
    out = args.out.expanduser()
    write_csv(rows, QUESTION_COLUMNS, out / "do_not_answer_en.csv")
    print(f"do-not-answer: {len(rows)} questions -> {out / 'do_not_answer_en.csv'}")
    labels = [c for c in rows[0] if c.endswith(("_response", "_harmful", "_action"))]
    if labels:
        write_csv(rows, QUESTION_COLUMNS + labels, out / "annotated_en.csv")
        models = sorted({c.rsplit("_", 1)[0] for c in labels if c.endswith("_action")})
        print(f"  annotations of {', '.join(models)} -> {out / 'annotated_en.csv'}")


if __name__ == "__main__":
    run_script(main)
