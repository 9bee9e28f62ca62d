"""`bridge doctor` on this CPU machine: it must name what is missing, not crash."""

import subprocess
import sys

from conftest import bridge, fake_token


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


def test_doctor_help():
    assert "pass/fail" in bridge("doctor", "--help").stdout
