"""Render every script template for a validated team config, all or nothing.

Templates are the `*.j2` files under templates/ whose path has no part starting with "_" (those are
partials). `templates/sft/run_sft.sbatch.j2` renders to `<out>/sft/run_sft.sbatch`.
"""

import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

import jinja2

from . import __version__
from .doctor import FLASH_ATTN_PIN, SCRIPTS_ALLOCATOR, VERL_PIN
from .config import TeamConfig

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = REPO_ROOT / "templates"
COMMITTED_RENDERS = REPO_ROOT / "train" / "scripts"


class RenderError(RuntimeError):
    pass


def script_templates(templates_dir: Path = TEMPLATES_DIR) -> list[Path]:
    """Template paths relative to templates_dir, partials excluded."""
    found = sorted(p.relative_to(templates_dir) for p in templates_dir.rglob("*.j2"))
    return [p for p in found if not any(part.startswith("_") for part in p.parts)]


def _environment(templates_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
        # bash's ${#array[@]} would open a Jinja comment; template comments are {## ... ##}
        comment_start_string="{##",
        comment_end_string="##}",
    )


def config_hash(team_file: Path) -> str:
    """The short hash a rendered header carries, so a script can be traced to the config it came from."""
    return hashlib.sha256(team_file.read_bytes()).hexdigest()[:12]


def describe_source(team_file: Path) -> str:
    """How a rendered header names its config: relative to the working directory when inside it."""
    try:
        return str(team_file.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(team_file.resolve())


def render_all(
    config: TeamConfig, team_file: Path, out_label: str, templates_dir: Path = TEMPLATES_DIR
) -> dict[Path, str]:
    """Render every script in memory and syntax-check it with `bash -n`. Nothing is written.

    out_label is the output directory as the user typed it; usage lines in the headers show it.
    """
    env = _environment(templates_dir)
    loggers = ["console", "file"] + (["wandb"] if config.wandb.mode != "disabled" else [])
    context = {
        "cfg": config,
        "version": __version__,
        "source": describe_source(team_file),
        "config_sha": config_hash(team_file),
        "logger": "'trainer.logger=[" + ",".join(f'"{name}"' for name in loggers) + "]'",
        "out": out_label.rstrip("/") or ".",
        "verl_pin": VERL_PIN,
        "flash_attn_pin": FLASH_ATTN_PIN,
        "scripts_allocator": SCRIPTS_ALLOCATOR,
    }
    scripts = {}
    for template in script_templates(templates_dir):
        try:
            text = env.get_template(template.as_posix()).render(context)
        except jinja2.TemplateError as exc:
            raise RenderError(f"templates/{template}: {exc}") from exc
        output = template.with_suffix("")
        _bash_syntax_check(output, text)
        scripts[output] = text
    return scripts


def _bash_syntax_check(name: Path, text: str) -> None:
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"{name}: rendered script fails `bash -n`:\n{result.stderr.strip()}")


def write_all(scripts: dict[Path, str], out_dir: Path) -> list[Path]:
    """Write each script through a temp file and a rename, executable. Returns the paths written."""
    written = []
    for relative, text in scripts.items():
        target = out_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(target)
    return written
