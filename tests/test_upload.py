"""llm-bridge upload without network: --dry-run, the token's only road (environment or cached login -> the
HTTP header, never argv or output), refusal without a token, private by default. The "Hub" is a local
HTTP server (HF_ENDPOINT) that records each request and refuses it."""

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import EXAMPLE, REPO, fake_token


class RefusingHub:
    def __init__(self):
        self.requests: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _refuse(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hub.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"),
                                     "body": body.decode(errors="replace")})
                data = json.dumps({"error": "Invalid credentials"}).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = _refuse

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def hub():
    hub = RefusingHub()
    yield hub
    hub.httpd.shutdown()


@pytest.fixture
def model(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    return model


def upload(*args, hub, tmp_path, token=None):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "llm_bridge.cli", "upload", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_dry_run_lists_files_and_card_and_sends_nothing(hub, model, tmp_path):
    token = fake_token("hf_")
    result = upload("--model", model, "--repo", "my-model", "--team", EXAMPLE, "--dry-run", hub=hub, tmp_path=tmp_path, token=token)
    assert result.returncode == 0, result.stderr
    assert "repo       p01-team/my-model (private)" in result.stdout  # huggingface.org of the team
    assert "token      found in HF_TOKEN" in result.stdout
    assert "model.safetensors" in result.stdout and "README.md" in result.stdout
    assert "base_model: Qwen/Qwen2.5-0.5B-Instruct" in result.stdout and "| `lr` | `1e-05` |" in result.stdout
    assert "Dry run: nothing was sent." in result.stdout
    assert hub.requests == [] and not (model / "README.md").exists()
    assert token not in result.stdout + result.stderr


def test_no_token_refuses_before_any_request(hub, model, tmp_path):
    result = upload("--model", model, "--repo", "org/my-model", hub=hub, tmp_path=tmp_path)
    assert result.returncode == 1
    assert "no Hugging Face token" in result.stderr and "hf auth login" in result.stderr
    assert hub.requests == []


def test_token_goes_from_the_environment_to_the_header_only(hub, model, tmp_path):
    token = fake_token("hf_")
    result = upload("--model", model, "--repo", "org/my-model", hub=hub, tmp_path=tmp_path, token=token)
    assert result.returncode == 1 and "the Hub refused the upload (HTTP 401)" in result.stderr
    create = hub.requests[0]
    assert create["path"] == "/api/repos/create" and create["authorization"] == f"Bearer {token}"
    assert json.loads(create["body"])["visibility"] == "private"  # private unless --public
    assert token not in result.stdout + result.stderr
    assert "llm-bridge upload" in (model / "README.md").read_text()  # the generated card, written atomically


def test_a_token_on_the_command_line_is_refused_unechoed(hub, model, tmp_path):
    token = fake_token("hf_")
    result = upload("--model", model, "--repo", token, hub=hub, tmp_path=tmp_path)
    assert result.returncode == 2 and "secrets never go on a command line" in result.stderr
    assert token not in result.stdout + result.stderr and hub.requests == []


def test_cached_login_is_used_when_hf_token_is_unset(hub, model, tmp_path):
    token = fake_token("hf_")
    (tmp_path / "hf_home").mkdir()
    (tmp_path / "hf_home" / "token").write_text(token)
    result = upload("--model", model, "--repo", "org/m", "--public", hub=hub, tmp_path=tmp_path)
    assert hub.requests and hub.requests[0]["authorization"] == f"Bearer {token}"
    assert json.loads(hub.requests[0]["body"])["visibility"] == "public"
    assert token not in result.stdout + result.stderr


def test_a_team_file_with_errors_is_reported_before_anything_else(hub, model, tmp_path):
    bad = tmp_path / "team.yaml"
    bad.write_text(Path(EXAMPLE).read_text().replace("partition: P01", "partition: 'P 01'"))
    result = upload("--model", model, "--repo", "my-model", "--team", bad, "--dry-run", hub=hub, tmp_path=tmp_path)
    assert result.returncode == 1 and "slurm.partition" in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and hub.requests == []


def test_not_a_model_directory(hub, tmp_path):
    result = upload("--model", tmp_path, "--repo", "org/m", "--dry-run", hub=hub, tmp_path=tmp_path)
    assert result.returncode == 1 and "llm-bridge merge" in result.stderr


def test_eval_takes_the_report_folder_or_a_file_in_it_and_refuses_anything_else(hub, model, tmp_path):
    report = tmp_path / "eval" / "my-model"
    report.mkdir(parents=True)
    (report / "summary.json").write_text("{}")
    (report / "summary.md").write_text("# my-model\n\n| benchmark | score |\n|---|---|\n| HLE | 4.2 |\n")
    token = fake_token("hf_")
    for given in (report, report / "summary.md"):
        result = upload("--model", model, "--repo", "org/m", "--eval", given, "--dry-run", hub=hub, tmp_path=tmp_path, token=token)
        assert result.returncode == 0 and "| HLE | 4.2 |" in result.stdout, result.stderr
    result = upload("--model", model, "--repo", "org/m", "--eval", tmp_path / "eval", "--dry-run", hub=hub, tmp_path=tmp_path, token=token)
    assert result.returncode == 1 and "no summary.json and summary.md there" in result.stderr and hub.requests == []
