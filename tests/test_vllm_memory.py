"""The vLLM-worker memory diagnostic (benchmarks/vllm_memory): its accounting of a snapshot, and
its import hook, which must instrument vLLM's worker without ever stopping a rollout."""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

TOOL = Path(__file__).resolve().parents[1] / "benchmarks" / "vllm_memory"
# Loaded under its own name: Python may already have imported another module called sitecustomize.
_spec = importlib.util.spec_from_file_location("vllm_memory", TOOL / "sitecustomize.py")
vllm_memory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(vllm_memory)

GIB = 1 << 30


def frame(filename, line, name):
    return {"filename": filename, "line": line, "name": name}


SAMPLER = [frame("/x/site-packages/torch/cuda/memory.py", 1, "alloc"),
           frame("/x/site-packages/vllm/v1/sample/sampler.py", 96, "forward"),
           frame("/x/site-packages/vllm/v1/worker/gpu_model_runner.py", 3593, "_sample")]


def test_summary_counts_live_default_pool_segments_by_the_code_that_made_them():
    snapshot = {
        "segments": [{"address": 1, "total_size": 2 * GIB, "segment_pool_id": (0, 0)},
                     {"address": 2, "total_size": GIB, "segment_pool_id": (0, 0)},
                     {"address": 3, "total_size": 4 * GIB, "segment_pool_id": (0, 5)}],  # vLLM's own pool
        "device_traces": [[
            {"action": "segment_alloc", "addr": 1, "size": 2 * GIB, "frames": SAMPLER},
            {"action": "segment_alloc", "addr": 9, "size": 8 * GIB, "frames": SAMPLER},
            {"action": "segment_free", "addr": 9, "size": 8 * GIB, "frames": []},  # returned: not counted
            {"action": "segment_alloc", "addr": 2, "size": GIB, "frames": SAMPLER},
            {"action": "segment_alloc", "addr": 3, "size": 4 * GIB, "frames": [frame("/x/vllm/kv.py", 7, "kv")]},
        ]],
    }
    by_pool, by_site = vllm_memory.summarize(snapshot)
    assert by_pool == {"(0, 0)": 3.0, "(0, 5)": 4.0}
    site = "vllm/v1/sample/sampler.py:96:forward < vllm/v1/worker/gpu_model_runner.py:3593:_sample"
    assert dict(by_site) == {site: 3 * GIB}


def run_with_fake_vllm(tmp_path, env_extra, installed=True):
    """Import a fake vLLM worker with the tool first on PYTHONPATH. installed=False is the GPU machine's case: the
    recipe is not pip-installed and the process starts elsewhere (`python benchmarks/grpo_bench.py` puts
    only its own folder on sys.path), so site-packages is on the path without its .pth files and the tool is
    imported by hand, as site would."""
    worker = tmp_path / "fake" / "vllm" / "v1" / "worker"
    worker.mkdir(parents=True)
    for package in (worker, worker.parent, worker.parent.parent):
        (package / "__init__.py").write_text("")
    (worker / "gpu_worker.py").write_text(textwrap.dedent("""
        class Worker:
            def init_device(self):
                pass
            def sleep(self, level=1):
                print("vLLM slept at level", level)
    """))
    script = ("from vllm.v1.worker.gpu_worker import Worker\n"
              "print('sleep is', Worker.sleep.__name__)\n"
              "Worker().sleep(level=2)\n")
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_MEMSNAP_DIR"}
    path = [TOOL, tmp_path / "fake"]
    command = [sys.executable, "-c", script]
    if not installed:
        path.append(Path(torch.__file__).parents[1])
        command = [sys.executable, "-S", "-c", "import sitecustomize\n" + script]
    env.update(PYTHONPATH=os.pathsep.join(map(str, path)), **env_extra)
    return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_worker_is_instrumented_and_a_failed_report_still_sleeps(tmp_path):
    out = tmp_path / "memsnap"
    result = run_with_fake_vllm(tmp_path, {"BRIDGE_MEMSNAP_DIR": str(out), "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr
    assert "sleep is reporting_sleep" in result.stdout
    assert "vLLM slept at level 2" in result.stdout  # no GPU here: the report fails, the sleep still happens
    assert "vllm_memory: no report" in result.stderr
    assert out.is_dir()


def test_the_hook_finds_the_recipe_when_it_is_not_installed(tmp_path):
    result = run_with_fake_vllm(tmp_path, {"BRIDGE_MEMSNAP_DIR": str(tmp_path / "memsnap")}, installed=False)
    assert result.returncode == 0, result.stderr
    assert "sleep is reporting_sleep" in result.stdout


def test_without_the_variable_nothing_is_instrumented(tmp_path):
    result = run_with_fake_vllm(tmp_path, {})
    assert result.returncode == 0, result.stderr
    assert "sleep is sleep" in result.stdout
