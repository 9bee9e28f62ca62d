"""`llm-bridge doctor` on this CPU machine: it must name what is missing, not crash."""

import subprocess
import sys

from conftest import bridge, fake_token

from llm_bridge.job import doctor


def test_doctor_reports_missing_gpu_and_vllm(tmp_path):
    token = fake_token("hf_")
    env = {"HF_TOKEN": token, "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "doctor"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "FAIL" in rows["gpus"] and "no CUDA device visible" in rows["gpus"]
    assert "FAIL" in rows["vllm"] and "not installed" in rows["vllm"]
    assert "PASS" in rows["verl"] and "0.9.1" in rows["verl"]
    assert "PASS" in rows["verl.trainer.sft_trainer"]
    assert "WARN" in rows["liger-kernel"] and "rl.use_liger (true by default) need it" in rows["liger-kernel"]
    assert "token found (not shown)" in result.stdout
    assert token not in result.stdout + result.stderr
    assert "FAIL: gpus, nccl, vllm" in result.stdout


def test_doctor_warns_when_the_environment_replaces_the_scripts_allocator(tmp_path, monkeypatch):
    """sbatch passes the shell's environment on, and the scripts keep a PYTORCH_CUDA_ALLOC_CONF they find there: one
    without expandable segments gives back the up to 18 GiB of vLLM's sampler that llm-bridge check no longer counts."""
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:512"}
    result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "doctor"], capture_output=True, text=True, env=env)
    row = next(line for line in result.stdout.splitlines() if line.startswith("allocator "))
    assert "WARN" in row and "up to 18 GiB" in row and "unset PYTORCH_CUDA_ALLOC_CONF" in row

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    unset = doctor.check_allocator()
    assert unset.status == "PASS" and "unset" in unset.detail
    for value, status in (("expandable_segments:True", "PASS"), ("max_split_size_mb:512, expandable_segments:True", "PASS"),
                          ("expandable_segments:False", "WARN")):
        monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", value)
        assert doctor.check_allocator().status == status, value


def test_doctor_help():
    assert "pass/fail" in bridge("doctor", "--help").stdout


def test_doctor_names_another_bridge_on_path(tmp_path):
    """iproute2's `bridge` answers a forgotten activate with 'Object "check" is unknown'; doctor says which it is."""
    (tmp_path / "bridge").write_text("#!/bin/sh\n")
    (tmp_path / "bridge").chmod(0o755)
    env = {"HOME": str(tmp_path), "PATH": f"{tmp_path}:/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "doctor"], capture_output=True, text=True, env=env)
    row = next(line for line in result.stdout.splitlines() if line.startswith("command name"))
    assert "WARN" in row and str(tmp_path / "bridge") in row and "type llm-bridge" in row
    env["PATH"] = "/nonexistent"
    result = subprocess.run([sys.executable, "-m", "llm_bridge.cli", "doctor"], capture_output=True, text=True, env=env)
    assert next(line for line in result.stdout.splitlines() if line.startswith("command name")).split()[2] == "PASS"
