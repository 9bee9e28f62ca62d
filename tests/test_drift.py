"""The scripts committed under train/scripts/ are exactly the render of templates/team.example.yaml."""

import os
import subprocess
import shutil
from pathlib import Path

from llm_bridge.login.loader import load
from llm_bridge.login.render import COMMITTED_RENDERS, TEMPLATES_DIR, render_all, script_templates

from conftest import EXAMPLE, REPO

RERENDER = "llm-bridge render --team templates/team.example.yaml --out train/scripts"


def drifted(templates_dir: Path) -> list[str]:
    """Names of committed scripts that differ from a fresh render, or that no template renders any more."""
    config, problems = load(EXAMPLE)
    assert config is not None, problems
    cwd = os.getcwd()
    os.chdir(REPO)  # the header names the config relative to the repo root, as the command above does
    try:
        fresh = render_all(config, EXAMPLE.relative_to(REPO), "train/scripts", templates_dir=templates_dir)
    finally:
        os.chdir(cwd)
    stale = [str(p) for p, text in fresh.items() if not (COMMITTED_RENDERS / p).exists()
             or (COMMITTED_RENDERS / p).read_text() != text]
    orphans = [str(p.relative_to(COMMITTED_RENDERS)) for p in COMMITTED_RENDERS.rglob("*")
               if p.is_file() and "Rendered by `llm-bridge render`" in p.read_text(errors="ignore")
               and p.relative_to(COMMITTED_RENDERS) not in fresh]
    return sorted(stale + orphans)


def test_committed_scripts_match_the_templates():
    assert drifted(TEMPLATES_DIR) == [], f"re-render the committed scripts: {RERENDER}"


def test_drift_is_detected_when_a_template_changes(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    partial = templates / "_env.sh.j2"
    partial.write_text(partial.read_text().replace("export NCCL_DEBUG=", "export NCCL_DEBUG_CHANGED="))
    every_script_but_the_srun_helper = [str(t.with_suffix("")) for t in script_templates(templates)
                                        if t.name != "compute_node.sh.j2"]
    assert drifted(templates) == sorted(every_script_but_the_srun_helper)


def test_drift_is_detected_when_a_template_is_removed(tmp_path):
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES_DIR, templates)
    (templates / "ppo" / "run_ppo.sbatch.j2").unlink()
    assert drifted(templates) == ["ppo/run_ppo.sbatch"]


def test_train_scripts_holds_renders_and_data_prep_only():
    """The layout shows where code runs: rendered scripts, and hand-written data prep in data_preprocess/.
    Benchmark harness code lives in benchmarks/, the package in llm_bridge/."""
    config, _ = load(EXAMPLE)
    rendered = set(render_all(config, EXAMPLE, "train/scripts"))
    tracked = subprocess.run(["git", "ls-files", "train/scripts"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked, "train/scripts is tracked"
    other = [name for name in tracked if Path(name).relative_to("train/scripts") not in rendered
             and not name.startswith("train/scripts/data_preprocess/")]
    assert other == [], f"not a render and not data prep: {other}"
