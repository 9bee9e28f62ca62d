"""Arithmetic word problems in GSM8K's format, generated: a task a model learns from random weights and is graded on exactly.

    python train/scripts/data_preprocess/arithmetic.py --out ~/data/arithmetic

The recipe's own proof that SFT and GRPO teach (docs/benchmarks.md): no pretrained weights are needed, so a
team can check its whole pipeline on it, and a benchmark can start from random initialization. Each problem
is a short story about one person's things that changes by steps (buys, gives away, doubles); the answer
works each step out on its own line and ends with "#### N", as GSM8K's do.

- train: 1, 2 or 3 steps. test (held out): 3 steps, so it is harder than training on average, and never a training
  problem. Held-out problems longer than any training one are out of reach: a model trained on 1-2 steps answered
  2% (CPU, 3.3M parameters; 90% of held-out 2-step ones) and 1.6% (H200, 24.5M) of 3-step ones. (--train-steps and
  --test-steps change the split; 0 steps asks for the starting count back, a task a CPU-sized model learns in minutes.)
- Numbers 2-40 to start and per step; counts never go below 0 or above 999.
- The same --seed writes the same files.

Writes <out>/raw/{train,test}.jsonl (question, answer), then converts them with the GSM8K preprocessor
(train/scripts/data_preprocess/gsm8k.py): <out>/rl/{train,test}.parquet with data_source openai/gsm8k, so GRPO
grades them with verl's gsm8k reward, and <out>/sft/{train,test}.parquet (messages).
"""

import argparse
import json
import random
from pathlib import Path

from llm_bridge.data import atomic_write, convert, run_script, write_parquet

NAMES = ["Aiko", "Ben", "Chen", "Dana", "Emi", "Farid", "Goro", "Hana", "Ivan", "Jun", "Kenta", "Lena", "Mei", "Noah",
         "Omar", "Rin", "Sara", "Taro", "Yuki", "Zoe"]
THINGS = ["apples", "books", "coins", "pencils", "stamps", "cards", "marbles", "stickers", "shells", "cookies"]
SMALLEST, LARGEST, CEILING = 2, 40, 999
STEPS = {"train": (1, 2, 3), "test": (3,)}


def step(rng: random.Random, name: str, thing: str, count: int) -> tuple[str, str, int]:
    """One change of the count: its sentence, its working line, the new count."""
    choices = ["add"]
    if count > SMALLEST:
        choices.append("subtract")
    if 2 * count <= CEILING:
        choices.append("multiply")
    kind = rng.choice(choices)
    if kind == "add":
        n = rng.randint(SMALLEST, min(LARGEST, CEILING - count))
        return f"{name} gets {n} more {thing}.", f"{count} + {n} = {count + n}", count + n
    if kind == "subtract":
        n = rng.randint(SMALLEST, min(LARGEST, count))
        return f"{name} gives {n} {thing} to a friend.", f"{count} - {n} = {count - n}", count - n
    k = rng.choice([k for k in (2, 3) if k * count <= CEILING])
    word = {2: "twice", 3: "three times"}[k]
    return f"Then {name} has {word} as many {thing} as before.", f"{count} * {k} = {count * k}", count * k


def problem(rng: random.Random, steps: int) -> dict:
    name, thing = rng.choice(NAMES), rng.choice(THINGS)
    count = rng.randint(SMALLEST, LARGEST)
    story, work = [f"{name} has {count} {thing}."], []
    for _ in range(steps):
        sentence, line, count = step(rng, name, thing, count)
        story.append(sentence)
        work.append(line + ".")
    story.append(f"How many {thing} does {name} have now?")
    return {"question": " ".join(story), "answer": "\n".join([*work, f"#### {count}"])}


def generate(split: str, n: int, seed: int, steps: tuple[int, ...] | None = None, exclude=frozenset()) -> list[dict]:
    """n distinct problems of the split's difficulty (steps: how many changes, one drawn per problem), none of whose
    questions is in `exclude` (the training split's, for the held-out one); the same arguments give the same list."""
    rng = random.Random(f"{seed}-{split}")
    rows, seen, tries = [], set(exclude), 0
    while len(rows) < n:
        tries += 1
        if tries > 100 * n:
            raise SystemExit(f"ERROR: only {len(rows)} distinct {split} problems of {steps or STEPS[split]} steps "
                             f"turned up. Fix: ask for fewer (--{split}), or allow more steps")
        row = problem(rng, rng.choice(steps or STEPS[split]))
        if row["question"] not in seen:
            seen.add(row["question"])
            rows.append(row)
    return rows


def step_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give step counts of 0 or more, comma-separated, e.g. 1,2")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("~/data/arithmetic"), help="output folder (default: %(default)s)")
    parser.add_argument("--train", type=int, default=20000, help="training problems (default: %(default)s)")
    parser.add_argument("--test", type=int, default=500, help="held-out problems (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-steps", type=step_counts, default=STEPS["train"], help="e.g. 1,2,3 (the default)")
    parser.add_argument("--test-steps", type=step_counts, default=STEPS["test"], help="e.g. 3 (the default)")
    args = parser.parse_args()
    out = args.out.expanduser()
    from gsm8k import to_rl_row, to_sft_row  # the sibling script: Python puts this script's folder on sys.path

    trained: set[str] = set()
    for split, n, steps in (("train", args.train, args.train_steps), ("test", args.test, args.test_steps)):
        rows = generate(split, n, args.seed, steps, exclude=trained)
        trained = {row["question"] for row in rows}
        raw = out / "raw" / f"{split}.jsonl"
        atomic_write(raw, lambda tmp: Path(tmp).write_text("".join(json.dumps(row) + "\n" for row in rows)))
        result = convert(rows, to_rl_row(split))
        result.report(f"arithmetic {split}")
        write_parquet(result.rows, out / "rl" / f"{split}.parquet")
        write_parquet([to_sft_row(r) for r in result.rows], out / "sft" / f"{split}.parquet")
        print(f"  wrote {raw}, {out / 'rl' / f'{split}.parquet'} and {out / 'sft' / f'{split}.parquet'}")


if __name__ == "__main__":
    run_script(main)
