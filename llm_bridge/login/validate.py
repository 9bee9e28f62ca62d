"""Everything wrong with a team file, in one pass: the schema, the cross-field rules, values that are another team's.

A refused value does not hide the rest: the rules run on a stand-in config (loader.load_for_rules) and report what
does not depend on the refused fields; each of those already has its own schema error."""

from pathlib import Path

from llm_bridge.login.config import TeamConfig
from llm_bridge.login.loader import EXAMPLE, example_values, load_for_rules
from llm_bridge.login.rules import check
from llm_bridge.problems import Problem

# The example is team P01's real config on the 2025 cluster. These values are that team's own: in a copy they would
# send jobs to P01's partition and nodes, logs and caches into P01's share, runs to P01's W&B and models to P01's org.
FOREIGN = {
    "slurm.partition": "your team's partition (`sinfo -s` lists it)",
    "slurm.nodelist": "your team's nodes (`sinfo -p <partition> -N`), or delete the line and let SLURM pick",
    "paths.logs": "a folder in your team's share, e.g. /home/Competition2025/<team>/share<team>/logs",
    "paths.hf_home": "a folder in your team's share, e.g. /home/Competition2025/<team>/share<team>/hf_cache",
    "wandb.entity": "your W&B team or user name",
    "huggingface.org": "your Hugging Face organization or user name",
}


def _value(config: TeamConfig, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(config, section), key)


def foreign_values(config: TeamConfig, team_file: Path) -> list[Problem]:
    """Values a copy of the example still shares with it. The example itself is exempt: it renders train/scripts/."""
    if team_file.resolve() == EXAMPLE.resolve():
        return []
    example = TeamConfig.model_validate(example_values())
    return [Problem(field, f"{_value(config, field)!r} is the example's value (team P01 in 2025), not your team's",
                    f"write {what}")
            for field, what in FOREIGN.items()
            if _value(config, field) is not None and _value(config, field) == _value(example, field)]


def _refused(field: str, set_aside: set[str]) -> bool:
    return any(field == name or field.startswith(name + ".") or name.startswith(field + ".") for name in set_aside)


def validate(team_file: Path, local_paths: bool = True) -> tuple[TeamConfig | None, list[Problem]]:
    """The config (None if the file has errors of its own) and every problem found."""
    loaded = load_for_rules(team_file)
    target = loaded.config or loaded.stand_in
    if target is None:
        return None, loaded.problems
    found = check(target, local_paths=local_paths) + foreign_values(target, team_file)
    if loaded.config is None:
        found = [p for p in found if not _refused(p.field, loaded.set_aside)]
    reported = {(p.field, p.message) for p in loaded.problems}
    return loaded.config, loaded.problems + [p for p in found if (p.field, p.message) not in reported]
