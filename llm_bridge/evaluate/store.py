"""Resumable result files: one JSON object a line, keyed by "id", appended as each item finishes.

A crash loses at most the line being written (a torn last line is ignored on reload), and a rerun
only does the items that have no successful record yet. The newest record of an id wins.
"""

import json
import os
import threading
from pathlib import Path

from llm_bridge.data import atomic_write


DONE = ("ok", "truncated")  # finished; a rerun redoes everything else (failed, or never written)


class JsonlStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self) -> dict[str, dict]:
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        # "\n" only: str.splitlines() also breaks at U+2028, U+0085 and the like, which json.dumps
        # leaves unescaped (ensure_ascii=False) and models do write.
        for line in self.path.read_text(encoding="utf-8").split("\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash: that item is simply redone
            if isinstance(record, dict) and "id" in record:
                records[str(record["id"])] = record
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
