"""`llm-bridge submit`: SFT -> merge -> GRPO -> merge -> evaluate -> upload as SLURM jobs chained by dependencies.

The chain renders its own scripts from team.yaml with one change: when SFT is in the chain, GRPO trains the model
SFT's merge writes (<paths.models>/<sft.experiment_name>), so nobody edits rl.model between stages. Each job starts
only after the one before it succeeded (afterok) and SLURM cancels it when that one fails (--kill-on-invalid-dep);
a job that requeues itself before its time limit keeps the rest waiting. A chain lives in
<paths.logs>/chains/<id>/: team.yaml (the config it ran), scripts/ and chain.json (stages, job ids, outputs),
which `llm-bridge status` reads.
"""

import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from llm_bridge.login.config import TeamConfig, local_path
from llm_bridge.login.render import RenderError, render_all, write_all

CHOICES = ("sft", "grpo", "eval", "upload")  # what --stages names; each training stage brings its merge along


class ChainError(RuntimeError):
    pass


@dataclass
class Stage:
    name: str
    script: str  # relative to the chain's scripts/
    args: list[str]
    output: str  # what it leaves behind: a checkpoint run, a model, an evaluation, a Hub repo
    needs: list[str] = field(default_factory=list)  # inputs made by earlier stages (checked when the chain starts here)
    job: str | None = None

    def log_path(self, logs: Path, scripts: Path) -> str:
        """<paths.logs>/<job name>-<job id>.out, the job name read from the rendered script's #SBATCH line."""
        name = re.search(r"^#SBATCH --job-name=(\S+)$", (scripts / self.script).read_text(), re.M).group(1)
        return str(logs / f"{name}-{self.job}.out")


def merged_model(config: TeamConfig, experiment: str) -> str:
    """Where the chain's merge writes a run's model, as the config writes paths (${HOME}/... stays for scripts)."""
    return f"{config.paths.models}/{experiment}"


def chain_config(config: TeamConfig, stages: list[str]) -> TeamConfig:
    """team.yaml as the chain runs it: GRPO starts from SFT's merged model when SFT is in the chain."""
    if "sft" not in stages or "grpo" not in stages:
        return config
    return config.model_copy(update={"rl": config.rl.model_copy(update={"model": merged_model(config, config.sft.experiment_name)})})


def plan_stages(config: TeamConfig, stages: list[str], repo: str | None, upload_dry_run: bool) -> list[Stage]:
    """The chain's stages in order, for a config already made by chain_config."""
    multinode = config.slurm.nodes > 1
    sft, rl = config.sft, config.rl
    out: list[Stage] = []

    def merge(stage: str, run: str, experiment: str, base: str, lora) -> str:
        model = merged_model(config, experiment)
        adapter_only = lora is not None and lora.checkpoints == "adapter"
        args = [str(local_path(run)), str(local_path(model))] + (["--base", _arg_path(base)] if adapter_only else [])
        out.append(Stage(f"merge-{stage}", "generation/merge_model.sbatch", args, model, needs=[run]))
        return model

    model = None
    if "sft" in stages:
        run = f"{config.paths.checkpoints}/sft/{sft.experiment_name}"
        out.append(Stage("sft", "mutinode_sft/run_sft_multinode.sbatch" if multinode else "sft/run_sft.sbatch", [], run))
        model = merge("sft", run, sft.experiment_name, sft.model, sft.lora)
    if "grpo" in stages:
        run = f"{config.paths.checkpoints}/{rl.algorithm}/{rl.experiment_name}"
        out.append(Stage("grpo", "mutinode_ppo/run_ppo_multinode.sbatch" if multinode else "ppo/run_ppo.sbatch", [], run,
                         needs=[rl.model] if "sft" in stages else []))
        model = merge("grpo", run, rl.experiment_name, rl.model, rl.lora)
    final_stage = "rl" if "grpo" in stages else "sft"
    results = None
    if "eval" in stages or "upload" in stages:
        if model is None:
            raise ChainError("eval and upload need a model the chain trains. Fix: add sft or grpo to --stages")
    if "eval" in stages:
        name = Path(model).name
        results = f"{config.evaluation.results}/{name}"
        out.append(Stage("eval", "generation/eval_model.sbatch", [str(local_path(model)), name], results, needs=[model]))
    if "upload" in stages:
        repo = repo or Path(model).name
        args = [str(local_path(model)), repo, "--team", "<chain>/team.yaml", "--stage", final_stage]
        if results is not None:
            args += ["--eval", str(local_path(results))]
        if upload_dry_run:
            args.append("--dry-run")
        out.append(Stage("upload", "generation/upload_model.sbatch", args,
                         repo if "/" in repo else f"{config.huggingface.org}/{repo}", needs=[model]))
    return out


def _arg_path(value: str) -> str:
    """A config value as a job argument: paths expanded here (arguments are not expanded by the job's shell)."""
    return str(local_path(value)) if value.startswith(("/", "${HOME}")) else value


def _exists(output: str, stage: str) -> bool:
    path = local_path(output)
    if stage.startswith("merge"):  # a merged model; else a training run with its checkpoints
        return (path / "config.json").is_file()
    return path.is_dir() and any(path.glob("global_step_*"))


def check_start(config: TeamConfig, stages: list[Stage], start: str) -> list[Stage]:
    """The stages from `start` on, after checking that what they take from skipped stages is there and that no
    stage would write over a model that exists."""
    names = [s.name for s in stages]
    if start not in names:
        raise ChainError(f"--from {start}: this chain has no stage {start} (it has {', '.join(names)}). "
                         f"Fix: --from one of those, or add its training stage to --stages")
    run = stages[names.index(start):]
    skipped = {s.output: s.name for s in stages[:names.index(start)]}
    problems = []
    for stage in run:
        for need in stage.needs:
            if need in skipped and not _exists(need, skipped[need]):
                problems.append(f"{stage.name} needs {local_path(need)}, which {skipped[need]} makes and is not there. "
                                f"Fix: --from {skipped[need]}")
        if stage.name.startswith("merge") and _exists(stage.output, stage.name):
            nxt = names[names.index(stage.name) + 1] if stage.name != names[-1] else None
            problems.append(f"{stage.name} would write {local_path(stage.output)}, which exists: a chain never replaces "
                            f"a model. Fix: " + (f"--from {nxt} to use it, or " if nxt else "") +
                            "move it away, or change the experiment_name")
    if problems:
        raise ChainError("\n  ".join(["cannot start the chain here:", *problems]))
    return run


def check_environment(config: TeamConfig, stages: list[Stage]) -> None:
    """What the jobs read from the submitting shell (sbatch passes its environment on): fail before queueing."""
    names = {s.name for s in stages}
    key = config.evaluation.judge_api_key_env
    if "eval" in names and not config.evaluation.judge_url and not os.environ.get(key):
        raise ChainError(f"{key} is not set, and the eval stage's judge needs it. "
                         f"Fix: export {key}=... in this shell, or leave eval out (--stages sft,grpo)")
    if "upload" in names and config.huggingface.offline:
        raise ChainError("huggingface.offline is true: the compute nodes cannot reach the Hub, so an upload job would fail. "
                         "Fix: leave upload out of --stages and run `llm-bridge upload` on the login node")


def sbatch_line(stage: Stage, scripts: Path, after: str | None) -> list[str]:
    line = ["sbatch", "--parsable", "--kill-on-invalid-dep=yes"]
    if after:
        line.append(f"--dependency=afterok:{after}")
    args = [str(scripts.parent / "team.yaml") if a == "<chain>/team.yaml" else a for a in stage.args]
    return line + [str(scripts / stage.script), *args]


def write_chain(config: TeamConfig, chain_dir: Path) -> Path:
    """team.yaml as the chain runs it, and the scripts rendered from it, under chain_dir (all or nothing)."""
    chain_dir.mkdir(parents=True)
    team = chain_dir / "team.yaml"
    team.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
    scripts = render_all(config, team, str(chain_dir / "scripts"))
    write_all(scripts, chain_dir / "scripts", team)
    return chain_dir / "scripts"


def submit(config: TeamConfig, stages: list[str], start: str | None, repo: str | None, upload_dry_run: bool,
           dry_run: bool, extra: dict[str, list[str]], team_file: Path) -> int:
    config = chain_config(config, stages)
    chain = plan_stages(config, stages, repo, upload_dry_run)
    run = check_start(config, chain, start or chain[0].name)
    check_environment(config, run)
    for stage in run:
        stage.args += extra.get(stage.name, [])
    logs = local_path(config.paths.logs)
    chain_id = time.strftime("%Y%m%d-%H%M%S")
    chain_dir = logs / "chains" / chain_id
    print(f"Chain {chain_id}: {' -> '.join(s.name for s in run)}")
    if dry_run:
        after = None
        for stage in run:
            print(shlex.join(sbatch_line(stage, chain_dir / "scripts", after)))
            after = f"<{stage.name} job id>"
        print_bill(config, stages, run)
        print(f"\nDry run: nothing rendered to {chain_dir}, nothing queued.")
        return 0
    if chain_dir.exists():
        raise ChainError(f"{chain_dir} exists (a chain submitted this second). Fix: submit again")
    try:
        scripts = write_chain(config, chain_dir)
    except (RenderError, OSError) as exc:
        shutil.rmtree(chain_dir, ignore_errors=True)  # did not exist before (checked above): this command's alone
        raise ChainError(f"cannot write the chain's scripts to {chain_dir}: {exc}") from None
    after = None
    for stage in run:
        try:
            result = _run(sbatch_line(stage, scripts, after))
            if result.returncode != 0:
                raise ChainError(f"sbatch refused {stage.name}: {result.stderr.strip()}")
        except ChainError as exc:  # take back what this command queued and wrote a moment ago
            queued = [s.job for s in run if s.job]
            if queued:
                subprocess.run(["scancel", *queued], capture_output=True)
            shutil.rmtree(chain_dir, ignore_errors=True)
            raise ChainError(str(exc) + (f"\nCancelled the jobs already queued ({', '.join(queued)})." if queued else "")
                             ) from None
        stage.job = after = result.stdout.strip().split(";")[0]
    again = ["llm-bridge", "submit", "--team", str(team_file), "--stages", ",".join(stages)]
    again += [f"--sft-arg={a}" for a in extra.get("sft", [])] + [f"--rl-arg={a}" for a in extra.get("grpo", [])]
    again += (["--repo", repo] if repo else []) + (["--upload-dry-run"] if upload_dry_run else [])
    record = {"id": chain_id, "team": str(chain_dir / "team.yaml"), "scripts": str(scripts), "resubmit": again,
              "stages": [{**asdict(s), "log": s.log_path(logs, scripts)} for s in run]}
    (chain_dir / "chain.json").write_text(json.dumps(record, indent=1))
    width = max(len(s.name) for s in run)
    for stage in run:
        output = stage.output if stage.name == "upload" else local_path(stage.output)  # a Hub repo, else a path
        print(f"  {stage.name:<{width}}  job {stage.job:<8} -> {output}")
        print(f"  {'':<{width}}  log {stage.log_path(logs, scripts)}")
    print_bill(config, stages, run)
    print(f"\nQueued. Follow it with: llm-bridge status --team <team.yaml>   (record: {chain_dir / 'chain.json'})")
    return 0


def print_bill(config: TeamConfig, stages: list[str], run: list[Stage]) -> None:
    """The plan (llm-bridge plan) of the stages this submit queues; an estimate never stops a submit."""
    from llm_bridge.login import time_plan

    try:
        bill = time_plan.plan(config, stages)
    except Exception as exc:  # noqa: BLE001 - the jobs are queued or about to be: say why there is no plan
        print(f"\n(no plan: {type(exc).__name__}: {exc}; `llm-bridge plan` shows the same)")
        return
    names = {s.name for s in run}
    bill.lines = [line for line in bill.lines if line.stage in names]
    print("\n" + bill.table())


# ---------------------------------------------------------------------------------------------
# llm-bridge status
# ---------------------------------------------------------------------------------------------
METRICS = {"sft": ("train/loss", "train/lr"), "grpo": ("critic/score/mean", "response_length/mean", "actor/pg_loss")}


def newest_chain(config: TeamConfig, chain_id: str | None) -> Path:
    chains = local_path(config.paths.logs) / "chains"
    if chain_id:
        record = chains / chain_id / "chain.json"
        if not record.is_file():
            raise ChainError(f"no chain {chain_id} in {chains}. Fix: `ls {chains}` lists the chains")
        return record
    records = sorted(chains.glob("*/chain.json"))
    if not records:
        raise ChainError(f"no chain in {chains}. Fix: queue one with `llm-bridge submit`")
    return records[-1]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True)
    except FileNotFoundError:
        raise ChainError(f"SLURM's {argv[0]} is not on PATH here. Fix: run this on the cluster's login node") from None


def slurm_states(jobs: list[str]) -> dict[str, str]:
    """Each job's state as SLURM knows it: squeue while queued or running (with the reason it waits), then sacct;
    without accounting (sacct disabled) a finished job is unknown here."""
    states = {}
    queued = _run(["squeue", "-h", "-j", ",".join(jobs), "-o", "%i|%T|%r"])
    for line in queued.stdout.splitlines():
        job, state, reason = line.split("|", 2)
        states[job] = state + (f" ({reason})" if reason not in ("None", "") else "")
    rest = [j for j in jobs if j not in states]
    if rest:
        done = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(rest), "-o", "JobID,State,ExitCode"])
        for line in done.stdout.splitlines() if done.returncode == 0 else []:
            job, state, code = line.split("|")[:3]
            states.setdefault(job, state if state != "FAILED" else f"FAILED (exit {code})")
    return states


def _log(stage: dict) -> Path | None:
    path = Path(stage["log"])
    return path if path.is_file() else None


def _progress(stage: dict, config: TeamConfig, running: bool) -> str:
    """The newest step of a training stage and its main metrics, from the run's metrics file; while it runs, the
    steps it will take (llm-bridge plan's count from the data, or the chain's trainer.total_training_steps) and the
    time left at the run's median step time."""
    kind = "sft" if stage["name"] == "sft" else "grpo" if stage["name"] == "grpo" else None
    if kind is None or not stage["job"]:
        return ""
    experiment = config.sft.experiment_name if kind == "sft" else config.rl.experiment_name
    files = sorted(local_path(config.paths.logs).glob(f"{experiment}-{stage['job']}-*.metrics.jsonl"))
    if not files:
        return ""
    from llm_bridge.login import time_plan

    runs = [time_plan.metric_records(path) for path in files]  # a job that requeued itself has one file a run, oldest first
    steps = runs[-1]
    if not steps:
        return ""
    last = steps[-1]
    data = last.get("data", {})
    shown = ", ".join(f"{k} {data[k]:.4g}" for k in METRICS[kind] if isinstance(data.get(k), (int, float)))
    step = last.get("step", data.get("training/global_step", "?"))
    total = _total_steps(stage, config, kind) if running else None
    # every run's steps but its first (start-up): a run just resumed after a requeue has timed no step of its own yet
    times = [s["data"]["timing_s/step"] for run in runs for s in run[1:]
             if isinstance(s.get("data", {}).get("timing_s/step"), (int, float))]
    left = ""
    if total and times and isinstance(step, int):
        left = f", ~{time_plan.duration(max(total - step, 0) * statistics.median(times))} left"
    return f"step {step}" + (f" of {total}{left}" if total else "") + (f": {shown}" if shown else "")


def _total_steps(stage: dict, config: TeamConfig, kind: str) -> int | None:
    """The steps a training stage takes: trainer.total_training_steps among the chain's overrides, else verl's count
    from the data (llm-bridge plan)."""
    for arg in reversed(stage.get("args", [])):
        if arg.startswith("trainer.total_training_steps=") and arg.split("=", 1)[1].isdigit():
            return int(arg.split("=", 1)[1])
    from llm_bridge.login import time_plan

    try:
        line = next(item for item in time_plan.plan(config, [kind]).lines if item.stage == kind)
    except Exception:  # noqa: BLE001 - the status stands without the count
        return None
    return line.steps


ERROR_LINE = re.compile(r"Traceback|Error|ERROR|Exception|Could not|Killed|CANCELLED")


def is_error_line(line: str) -> bool:
    """A log line that names an error (the line Hydra adds about HYDRA_FULL_ERROR aside)."""
    return bool(ERROR_LINE.search(line)) and "HYDRA_FULL_ERROR" not in line


def _error_lines(log: Path, n: int = 12) -> list[str]:
    """The end of a failed job's log around its last error line."""
    lines = log.read_text(errors="replace").splitlines()
    marked = [i for i, line in enumerate(lines) if is_error_line(line)]
    start = max(0, marked[-1] - 3) if marked else max(0, len(lines) - n)
    return lines[start:start + n]


def status(config: TeamConfig, team_file: Path, chain_id: str | None) -> int:
    record_path = newest_chain(config, chain_id)
    record = json.loads(record_path.read_text())
    stages = record["stages"]
    states = slurm_states([s["job"] for s in stages])
    ran = TeamConfig.model_validate(yaml.safe_load(Path(record["team"]).read_text()))
    print(f"Chain {record['id']} ({record_path})")
    failed = None
    for i, stage in enumerate(stages):
        state = states.get(stage["job"])
        log = _log(stage)
        if state is None:  # SLURM no longer knows it and keeps no accounting: read it from the chain
            later_ran = any(_log(s) or states.get(s["job"]) for s in stages[i + 1:])
            if log is None:
                state = "CANCELLED (never started: an earlier stage failed)" if failed else "ENDED (no record, no log)"
            elif later_ran:
                state = "COMPLETED"
            elif i + 1 < len(stages):
                state = "FAILED (the next stage never started)"
            elif stage["name"].startswith("merge") and _exists(stage["output"], stage["name"]):
                state = "COMPLETED"
            else:
                state = "ENDED (no accounting here: the log says how)"
        if state.startswith(("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")) and failed is None:
            failed = stage
        print(f"  {stage['name']:<10}  job {stage['job']:<8}  {state}")
        if progress := _progress(stage, ran, state.startswith("RUNNING")):
            print(f"  {'':<10}  {progress}")
        print(f"  {'':<10}  log {stage['log']}" + ("" if log else " (not written yet)"))
    if failed is not None:
        print(f"\n{failed['name']} failed. The end of its log ({failed['log']}):")
        log = _log(failed)
        for line in _error_lines(log) if log else ["(no log)"]:
            print(f"    {line}")
        again = record.get("resubmit") or ["llm-bridge", "submit", "--team", str(team_file)]
        print(f"\nNext: fix the cause above, then queue the rest again from there:\n"
              f"  {shlex.join([*again, '--from', failed['name']])}")
        return 1
    return 0
