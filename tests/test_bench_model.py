"""The benchmarks' offline model: built in a child process, so the benchmark itself holds no GPU memory
through a run (its nvidia-smi peak would count it), and written whole or not at all."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, tie_word_embeddings=True)


def build_in_fresh_process(tokenizer: Path, out: Path) -> subprocess.CompletedProcess:
    code = f"""
import json, sys
from pathlib import Path
sys.path.insert(0, {str(BENCH)!r})
import common
common.ARCHS["tiny"] = {TINY!r}
common.build_model("tiny", Path({str(tokenizer)!r}), Path({str(out)!r}), vocab_size=None)
print(json.dumps({{"torch_in_benchmark_process": "torch" in sys.modules}}))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests" / "cpu"))
    from build_tiny import build_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer([f"Tom has {n} apples and gets {n + 3} more." for n in range(200)], vocab_size=300).save_pretrained(out)
    return out


def test_the_model_is_built_outside_the_benchmark_process_and_loads(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model-tiny"
    done = build_in_fresh_process(tokenizer, out)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"torch_in_benchmark_process": False}

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert model.config.vocab_size == len(AutoTokenizer.from_pretrained(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-tiny"]  # no .partial left behind

    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_in_fresh_process(tokenizer, out).returncode == 0
    assert weights.stat().st_mtime_ns == mtime  # a finished model is reused, not rebuilt


def test_a_failed_build_leaves_nothing_a_later_run_would_reuse(tmp_path):
    out = tmp_path / "model-tiny"
    done = build_in_fresh_process(tmp_path / "no-such-tokenizer", out)
    assert done.returncode != 0
    assert "building the tiny model failed" in done.stderr
    assert list(tmp_path.iterdir()) == []
