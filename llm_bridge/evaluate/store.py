"""Resumable result files: one JSON object a line, keyed by "id", appended as each item finishes.

A crash loses at most the line being written (a torn line, even one cut inside a UTF-8 character, is
skipped on reload and its item redone), and a rerun
only does the items that have no successful record yet. The newest record of an id wins.
"""

import json
import os
import sys
import threading
from collections import Counter
from pathlib import Path

from llm_bridge.data import atomic_write


DONE = ("ok", "truncated", "no_answer")  # finished; a rerun redoes everything else (failed, or never written)


class JsonlStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._noted = False

    def load(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        torn = 0
        # Bytes split at "\n" only: a crash can cut a line inside a multibyte character, and str.splitlines()
        # would also break at U+2028, U+0085 and the like, which json.dumps leaves unescaped and models write.
        for raw in self.path.read_bytes().split(b"\n"):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except ValueError:  # JSONDecodeError and UnicodeDecodeError: a line torn by a crash
                torn += 1
                continue
            if isinstance(record, dict) and "id" in record:
                records[str(record["id"])] = record
        if torn and not self._noted:
            self._noted = True
            print(f"NOTE: {torn} unfinished line(s) in {self.path} (a run stopped mid-write); those items are redone.",
                  file=sys.stderr)
        return records

    def finished(self) -> dict[str, dict]:
        return {i: r for i, r in self.load().items() if r.get("status") in DONE}

    def append(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                if f.tell() and not self._ends_with_newline():
                    f.write("\n")  # after a torn line, start clean
                f.write(line)
                f.flush()
                os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


def write_json(path: Path, data) -> None:
    write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def write_text(path: Path, text: str) -> None:
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def unique_ids(items: list[dict], source) -> list[dict]:
    """items, after checking that no id repeats: a repeated id would be answered once and counted twice."""
    repeated = [i for i, n in Counter(str(item["id"]) for item in items).items() if n > 1]
    if repeated:
        shown = ", ".join(repr(i) for i in repeated[:10]) + (f" and {len(repeated) - 10} more" if len(repeated) > 10 else "")
        raise SystemExit(f"ERROR: {source} has {len(repeated)} id(s) more than once: {shown}.\n"
                         "       Fix: give every row its own id (scores would count each repeated row twice).")
    return items
