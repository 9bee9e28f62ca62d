"""What every data-prep script shares: loading from the Hub or a local copy, row validation that reports
every bad row, deterministic splits, and atomic parquet writes.

pyarrow and datasets are cluster extras; they are imported where used, so `llm-bridge` stays light.
"""

import json
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable


class BadRow(ValueError):
    """Raised by a row converter: the row is reported and left out."""


@dataclass
class Conversion:
    rows: list[dict] = field(default_factory=list)
    bad: list[tuple[int, str]] = field(default_factory=list)

    def report(self, name: str, out=sys.stderr) -> None:
        print(f"{name}: {len(self.rows)} rows kept, {len(self.bad)} bad rows left out", file=out)
        for index, reason in self.bad[:20]:
            print(f"  row {index}: {reason}", file=out)
        if len(self.bad) > 20:
            print(f"  ... and {len(self.bad) - 20} more (all listed in the .rejected.jsonl file)", file=out)


def convert(rows: Iterable[dict], to_row: Callable[[int, dict], dict]) -> Conversion:
    result = Conversion()
    for index, row in enumerate(rows):
        try:
            result.rows.append(to_row(index, row))
        except BadRow as exc:
            result.bad.append((index, str(exc)))
    return result


def read_local(path: Path, split: str) -> list[dict]:
    """Rows of `split` from a local copy: a directory with <split>.jsonl / <split>.parquet, or one file.
    A missing, unreadable or malformed file stops with a message naming it (and the line, for JSON lines)."""
    if path.is_dir():
        candidates = [path / f"{split}.jsonl", path / f"{split}.json", path / f"{split}.parquet"]
        candidates += sorted(path.glob(f"{split}-*.parquet")) + sorted(path.glob(f"*/{split}-*.parquet"))
        found = [p for p in candidates if p.is_file()]
        if not found:
            raise SystemExit(f"ERROR: no {split}.jsonl, {split}.json or {split}.parquet under {path}.\n"
                             "       Fix: pass the file itself, or the directory the data-prep script wrote.")
        return [row for p in found for row in read_local(p, split)]
    if not path.is_file():
        raise SystemExit(f"ERROR: {path} does not exist.\n       Fix: check the path (data-prep scripts print where they wrote).")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise SystemExit(f"ERROR: {path} is not a readable parquet file ({str(exc)[:200]}).\n"
                             "       Fix: write it again with the data-prep script; a copy cut short cannot be read.") from None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SystemExit(f"ERROR: {path} is not UTF-8 text (byte {exc.start}).\n"
                         "       Fix: convert it to UTF-8, or write it as parquet.") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"ERROR: {path} line {exc.lineno}: not valid JSON ({exc.msg}).\n"
                             "       Fix: correct that line, or use JSON lines (.jsonl), one row a line.") from None
        if isinstance(data, dict) and isinstance(data.get(split), list):
            data = data[split]
        if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
            raise SystemExit(f"ERROR: {path} is not a list of rows (or {{\"{split}\": [rows]}}).\n"
                             "       Fix: write one JSON object per row.")
        return data
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"ERROR: {path} line {number}: not valid JSON ({exc.msg}).\n"
                             "       Fix: correct or delete that line; every line holds one JSON object.") from None
        if not isinstance(row, dict):
            raise SystemExit(f"ERROR: {path} line {number}: a JSON {type(row).__name__}, not an object.\n"
                             "       Fix: write one JSON object ({...}) per line.")
        rows.append(row)
    return rows


def read_hub(name: str, config: str | None, split: str) -> list[dict]:
    from datasets import load_dataset

    return list(load_dataset(name, config, split=split))


def load_split(name: str, config: str | None, split: str, local_path: Path | None) -> list[dict]:
    return read_local(local_path, split) if local_path else read_hub(name, config, split)


def deterministic_split(rows: list[dict], test_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffle with a fixed seed, then cut: the same input always gives the same split."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = round(len(rows) * test_fraction)
    test_idx = set(order[:n_test])
    return [r for i, r in enumerate(rows) if i not in test_idx], [r for i, r in enumerate(rows) if i in test_idx]


def current_umask() -> int:
    """This process's umask, read without changing it where Linux shows it (os.umask can only set it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """write(tmp) into a temp file beside path, then rename it over path: readers never see half a file.
    The file gets the mode a plain open() would (the umask's), not mkstemp's private 0600, so teammates on a
    shared directory can read what the recipe writes for the team."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"refusing to write {path}: no rows")
    atomic_write(path, lambda tmp: pq.write_table(pa.Table.from_pylist(rows), tmp))


def write_csv(rows: list[dict], columns: list[str], path: Path) -> None:
    import csv

    if not rows:
        raise ValueError(f"refusing to write {path}: no rows")

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def write_rejected(conversion: Conversion, rows: list[dict], path: Path) -> None:
    """Bad rows next to the output, so they can be inspected and fixed, never silently lost."""
    if not conversion.bad:
        Path(path).unlink(missing_ok=True)
        return

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            for index, reason in conversion.bad:
                handle.write(json.dumps({"index": index, "reason": reason, "row": _jsonable(rows[index])},
                                        ensure_ascii=False) + "\n")

    atomic_write(path, write)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant"}


def normalise_messages(turns: Any) -> list[dict]:
    """OpenAI-style `messages` from role/content or ShareGPT from/value turns; the last turn must be the
    assistant's, since verl's SFT loss is computed on assistant turns."""
    if not isinstance(turns, list) or not turns:
        raise BadRow("no conversation turns")
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise BadRow("a turn is not a mapping")
        role = _ROLES.get(str(turn.get("role", turn.get("from", ""))).lower())
        content = turn.get("content", turn.get("value"))
        if role is None:
            raise BadRow(f"unknown role {turn.get('role', turn.get('from'))!r}")
        if not isinstance(content, str) or not content.strip():
            raise BadRow(f"empty {role} turn")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise BadRow("the last turn is not the assistant's")
    return messages


def write_splits(name: str, rows: list[dict], conversion: Conversion, out_dir: Path,
                 test_fraction: float, seed: int) -> None:
    """Report, split deterministically, and write <out_dir>/{train,test}.parquet and the rejected rows."""
    conversion.report(name)
    train, test = deterministic_split(conversion.rows, test_fraction, seed)
    write_parquet(train, out_dir / "train.parquet")
    if test:
        write_parquet(test, out_dir / "test.parquet")
    write_rejected(conversion, rows, out_dir / "rejected.jsonl")
    print(f"  wrote {out_dir}/train.parquet ({len(train)} rows)" + (f" and test.parquet ({len(test)} rows)" if test else ""))


def run_script(main: Callable[[], None]) -> None:
    """A data-prep script's entry: a package missing from this Python gets the environment to use, not a traceback."""
    try:
        main()
    except ModuleNotFoundError as exc:
        from llm_bridge.problems import missing_package

        print(missing_package(exc.name, sys.argv[0]), file=sys.stderr)
        raise SystemExit(1) from None
