"""Render every script template for a validated team config, all or nothing.

Templates are the `*.j2` files under templates/ whose path has no part starting with "_" (those are
partials). `templates/sft/run_sft.sbatch.j2` renders to `<out>/sft/run_sft.sbatch`. Every value a template
prints goes through one rule (llm_bridge/login/shell.py), and the set of scripts reaches --out whole or not at all.
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jinja2

from llm_bridge import __version__
from llm_bridge.login.config import TeamConfig
from llm_bridge.data import current_umask
from llm_bridge.job.doctor import FLASH_ATTN_PIN, SCRIPTS_ALLOCATOR, VERL_PIN
from llm_bridge.login.loader import EXAMPLE, dotted, walk
from llm_bridge.login.shell import Checked, UnsafeValue, plain_name, quoted_word, script_value, script_words
from llm_bridge.login.model_shape import layered_summon

TEMPLATES_DIR = EXAMPLE.parent
COMMITTED_RENDERS = TEMPLATES_DIR.parent / "train" / "scripts"


class RenderError(RuntimeError):
    pass


def script_templates(templates_dir: Path = TEMPLATES_DIR) -> list[Path]:
    """Template paths relative to templates_dir, partials excluded."""
    found = sorted(p.relative_to(templates_dir) for p in templates_dir.rglob("*.j2"))
    return [p for p in found if not any(part.startswith("_") for part in p.parts)]


def _environment(templates_dir: Path) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        # Every {{ value }} goes through script_value; autoescape only makes macro output count as checked
        # (finalize returns Checked, which the HTML escape leaves alone).
        autoescape=True,
        finalize=script_value,
        # bash's ${#array[@]} would open a Jinja comment; template comments are {## ... ##}
        comment_start_string="{##",
        comment_end_string="##}",
    )
    env.filters["join"] = script_words
    return env


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

    out_label is the output directory as the user typed it; usage lines in the headers show it, quoted.
    """
    try:
        source = plain_name(describe_source(team_file), "--team")
        out = plain_name(out_label.rstrip("/") or ".", "--out")
    except UnsafeValue as exc:
        raise RenderError(str(exc)) from None
    env = _environment(templates_dir)
    loggers = ["console", "file"] + (["wandb"] if config.wandb.mode != "disabled" else [])
    context = {
        "cfg": config,
        "version": __version__,
        "source": quoted_word(source),
        "config_sha": config_hash(team_file),
        "logger": Checked("'trainer.logger=[" + ",".join(f'"{name}"' for name in loggers) + "]'"),
        "out": quoted_word(out),
        "verl_pin": VERL_PIN,
        "flash_attn_pin": FLASH_ATTN_PIN,
        "scripts_allocator": SCRIPTS_ALLOCATOR,
        "layered_summon": layered_summon(config),
    }
    scripts = {}
    for template in script_templates(templates_dir):
        try:
            text = env.get_template(template.as_posix()).render(context)
        except UnsafeValue as exc:
            raise RenderError(f"{_fields_holding(config, exc.value)} {exc.value!r} {exc}; nothing is rendered from it. "
                              "Fix: correct that value in the team config (`llm-bridge check` names the rule)") from None
        except jinja2.TemplateError as exc:
            raise RenderError(f"templates/{template}: {exc}") from exc
        output = template.with_suffix("")
        _bash_syntax_check(output, text)
        scripts[output] = text
    return scripts


def _fields_holding(config: TeamConfig, value: str) -> str:
    """The dotted team.yaml fields that printed value (as it is, in another case, or inside it), for a message."""
    leaves = [(dotted(path), leaf) for path, leaf in walk(config.model_dump()) if isinstance(leaf, str)]
    for same in (lambda leaf: leaf.casefold() == value.casefold(), lambda leaf: len(leaf) >= 3 and leaf in value):
        found = list(dict.fromkeys(field for field, leaf in leaves if same(leaf)))
        if found:
            return ", ".join(found)
    return "a value"


def _bash_syntax_check(name: Path, text: str) -> None:
    result = subprocess.run(["bash", "-n"], input=text, capture_output=True, text=True)
    if result.returncode != 0:
        raise RenderError(f"{name}: rendered script fails `bash -n`:\n{result.stderr.strip()}")


def _blocked(targets: list[Path], out_dir: Path, team_file: Path | None) -> list[str]:
    """Why the set cannot go to out_dir, one line per path in the way; checked before anything is written."""
    problems = []
    for place in [out_dir, *out_dir.parents]:
        if place.exists() and not place.is_dir():
            problems.append(f"{place} is a file, where the output directory must go")
    team = os.path.realpath(team_file) if team_file is not None else None
    for target in targets:
        for parent in target.relative_to(out_dir).parents:
            if parent != Path(".") and (out_dir / parent).exists() and not (out_dir / parent).is_dir():
                problems.append(f"{out_dir / parent} is a file, where a directory must go")
        if target.is_dir() and not target.is_symlink():
            problems.append(f"{target} is a directory, where a script must go")
        elif os.path.join(os.path.realpath(target.parent), target.name) == team:
            problems.append(f"{target} is the team config itself: rendering would overwrite its own input")
    return list(dict.fromkeys(problems))


def write_all(scripts: dict[Path, str], out_dir: Path, team_file: Path | None = None) -> list[Path]:
    """Write the whole set or nothing. The scripts are written into a staging directory first (beside out_dir, or
    inside it when it exists, so the renames stay on one filesystem), then renamed into place; if a rename
    fails, the ones done are undone. Other files in out_dir are left alone. Modes follow the umask."""
    out_dir = Path(out_dir)
    targets = [out_dir / relative for relative in scripts]
    blocked = _blocked(targets, out_dir, team_file)
    if blocked:
        raise RenderError("cannot write the scripts:\n  " + "\n  ".join(blocked) +
                          "\nFix: move those out of the way, or choose another --out")
    umask = current_umask()
    fresh = not out_dir.exists()
    try:
        if fresh:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.render-", dir=out_dir.parent if fresh else out_dir))
    except OSError as exc:
        raise RenderError(f"cannot create {out_dir}: {exc.strerror or exc}. "
                          "Fix: check that you may write there, or choose another --out") from None
    try:
        for relative, text in scripts.items():
            path = stage / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            path.chmod(0o777 & ~umask)
        if fresh:
            stage.chmod(0o777 & ~umask)  # mkdtemp made it private
            stage.rename(out_dir)
        else:
            _swap_in(stage, out_dir, list(scripts))
    except OSError as exc:
        raise RenderError(f"cannot write the scripts into {out_dir}: {exc.strerror or exc} ({exc.filename or out_dir}); "
                          "nothing was changed there. Fix: check that you may write there, or choose another --out") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return targets


def _swap_in(stage: Path, out_dir: Path, relatives: list[Path]) -> None:
    """Rename each staged script over its target; on any failure put every replaced file back."""
    done: list[tuple[Path, Path | None]] = []
    made: list[Path] = []
    try:
        for relative in relatives:
            target = out_dir / relative
            for parent in reversed([p for p in target.parents if p != out_dir and out_dir in p.parents]):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
            backup = None
            if target.exists() or target.is_symlink():
                backup = stage / ".previous" / relative
                backup.parent.mkdir(parents=True, exist_ok=True)
                os.link(target, backup, follow_symlinks=False)
            os.replace(stage / relative, target)
            done.append((target, backup))
    except OSError:
        for target, backup in reversed(done):
            if backup is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(backup, target)
        for parent in reversed(made):
            parent.rmdir()
        raise
