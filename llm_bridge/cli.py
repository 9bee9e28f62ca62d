"""`llm-bridge`: the one command of the recipe repo."""

import argparse
import os
import sys
from pathlib import Path

from llm_bridge import __version__
from llm_bridge import secrets
from llm_bridge.problems import Problem, errors, missing_package, report
from llm_bridge.login.render import RenderError, render_all, write_all
from llm_bridge.login.validate import validate
from llm_bridge.model import cli as model_cli
from llm_bridge.evaluate import cli as evaluate_cli

DEFAULT_TEAM = Path("team.yaml")


def cmd_check(args: argparse.Namespace) -> int:
    config, problems = validate(args.team)
    if args.strict:
        problems = [Problem(p.field, p.message, p.fix, "error") for p in problems]
    print(report(str(args.team), problems))
    if config is not None:
        from llm_bridge.login.memory_plan import plan

        print("\n" + plan(config).table(config.slurm.gpu_memory_gib))
    if errors(problems):
        print("\nNot ready: fix the errors above, then run `llm-bridge check` again.")
        return 1
    print("\nOK: ready to render (`llm-bridge render --team {}`).".format(args.team))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    config, problems = validate(args.team, local_paths=False)
    if errors(problems):
        print(report(str(args.team), problems))
        print(f"\nNothing written to {args.out}: fix the errors above first.")
        return 1
    try:
        scripts = render_all(config, args.team, str(args.out))
        written = write_all(scripts, args.out, args.team)
    except RenderError as exc:
        print(f"ERROR: {exc}\nNothing written to {str(args.out)!r}.", file=sys.stderr)
        return 1
    for path in written:
        print(f"  wrote {path}")
    print(f"\n{len(scripts)} scripts rendered from {args.team}. Submit one with e.g. `sbatch {args.out}/sft/run_sft.sbatch`.")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from llm_bridge.job import doctor

    rows = doctor.run()
    print(doctor.format_table(rows))
    return 1 if any(r.status == "FAIL" for r in rows) else 0


def cmd_ray(args: argparse.Namespace) -> int:
    from llm_bridge.login import ray_cluster

    config, problems = validate(args.team, local_paths=False)
    if errors(problems):
        print(report(str(args.team), problems))
        return 1
    return ray_cluster.main(args.action, config, args.team, args.rendered, args.overrides)


def chain_stages(text: str) -> list[str] | None:
    """--stages as a list, or None after saying which name is not a stage."""
    from llm_bridge.login import chain

    stages = [s.strip() for s in text.split(",") if s.strip()]
    if unknown := [s for s in stages if s not in chain.CHOICES]:
        print(f"ERROR: --stages: no stage {', '.join(unknown)}. Fix: a comma-separated list of {', '.join(chain.CHOICES)}",
              file=sys.stderr)
        return None
    return stages


def cmd_submit(args: argparse.Namespace) -> int:
    from llm_bridge.login import chain

    config, problems = validate(args.team)
    if errors(problems):
        print(report(str(args.team), problems))
        print("\nNothing queued: fix the errors above first.")
        return 1
    stages = chain_stages(args.stages)
    if stages is None:
        return 2
    extra = {"sft": args.sft_arg, "grpo": args.rl_arg}
    try:
        return chain.submit(config, stages, args.start, args.repo, args.upload_dry_run, args.dry_run, extra, args.team)
    except chain.ChainError as exc:
        print(f"ERROR: {exc}\nNothing queued.", file=sys.stderr)
        return 1


def cmd_plan(args: argparse.Namespace) -> int:
    from llm_bridge.login import chain, time_plan

    config, problems = validate(args.team, local_paths=False)
    if config is None:
        print(report(str(args.team), problems))
        return 1
    stages = chain_stages(args.stages)
    if stages is None:
        return 2
    print(time_plan.plan(chain.chain_config(config, stages), stages).table())
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from llm_bridge.login import init

    try:
        return init.init(args.out, args.partition, args.wandb_entity, args.hf_org, args.share, not args.no_probe)
    except init.InitError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


def cmd_status(args: argparse.Namespace) -> int:
    from llm_bridge.login import chain

    config, problems = validate(args.team, local_paths=False)
    if config is None:
        print(report(str(args.team), problems))
        return 1
    try:
        return chain.status(config, args.team, args.chain)
    except chain.ChainError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-bridge",
        allow_abbrev=False,
        description="Validate a team config and render the recipe's SLURM scripts from it.",
        epilog="Start with: cp templates/team.example.yaml team.yaml; llm-bridge check; llm-bridge render",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    team_help = f"the team config (default: {DEFAULT_TEAM})"
    check_parser = sub.add_parser(
        "check",
        help="validate team.yaml: schema, cross-field rules, verl batch arithmetic, paths, secrets",
        description="Report every problem in a team config at once, each with its field and fix. "
        "Exits 1 on any error; warnings (missing paths, no W&B login) do not fail unless --strict.",
    )
    check_parser.add_argument("--team", type=Path, default=DEFAULT_TEAM, help=team_help)
    check_parser.add_argument("--strict", action="store_true", help="treat warnings as errors")
    check_parser.set_defaults(func=cmd_check)

    render_parser = sub.add_parser(
        "render",
        help="render every sbatch script from team.yaml",
        description="Validate the team config (as `llm-bridge check`, without the local-path warnings) and "
        "render every script under templates/ into OUT. Writes nothing if any check fails.",
    )
    render_parser.add_argument("--team", type=Path, default=DEFAULT_TEAM, help=team_help)
    render_parser.add_argument("--out", type=Path, default=Path("rendered"), help="output directory (default: rendered)")
    render_parser.set_defaults(func=cmd_render)

    doctor_parser = sub.add_parser(
        "doctor",
        help="check this Python environment: versions, GPUs, NCCL, flash-attn, vLLM, verl entrypoints, logins",
        description="Print a pass/fail table for the environment it runs in (run it on a compute node, inside the "
        "training env). Exits 1 if a required check fails. Tokens are never printed.",
    )
    doctor_parser.set_defaults(func=cmd_doctor)

    ray_parser = sub.add_parser(
        "ray",
        help="interactive multi-node GRPO/PPO: start a Ray cluster job, run drivers on it, stop it",
        description="up: sbatch the rendered mutinode_ppo/ray_cluster.sbatch and wait until every node has joined "
        "(the head address goes to a file in paths.logs). submit: run the verl driver on the newest running "
        "cluster, inside its allocation, with extra verl overrides after the options. stop: scancel it; Ray "
        "stops on every node.",
    )
    ray_parser.add_argument("action", choices=["up", "submit", "stop"])
    ray_parser.add_argument("--team", type=Path, default=DEFAULT_TEAM, help=team_help)
    ray_parser.add_argument("--rendered", type=Path, default=Path("rendered"),
                            help="where `llm-bridge render --out` wrote the scripts (default: rendered)")
    ray_parser.epilog = "submit passes every further argument to verl: llm-bridge ray submit --team team.yaml trainer.total_training_steps=5"
    ray_parser.set_defaults(func=cmd_ray)

    init_parser = sub.add_parser(
        "init",
        help="write a new team's team.yaml from the cluster (sinfo, one compute node) and your W&B and HF names",
        description="Read the partition, nodes, GPUs, CPUs, memory and time limit from sinfo, and the network and GPU "
        "memory from a short job on one compute node; take the rest from templates/team.example.yaml. The file "
        "passes `llm-bridge check` or is not written; an existing file is never replaced. A member joining a team "
        "that has a team.yaml copies that one instead.",
    )
    init_parser.add_argument("--out", type=Path, default=DEFAULT_TEAM, help=f"where to write it (default: {DEFAULT_TEAM})")
    init_parser.add_argument("--partition", help="the team's partition (default: the only one this account sees)")
    init_parser.add_argument("--wandb-entity", required=True, help="your W&B team (or user) name")
    init_parser.add_argument("--hf-org", required=True, help="the Hugging Face org (or user) models go to")
    init_parser.add_argument("--share", type=Path, default=Path.home() / "llm_bridge",
                             help="a shared folder for logs/ and hf_cache/ (default: ~/llm_bridge)")
    init_parser.add_argument("--no-probe", action="store_true",
                             help="no job on a compute node: network: is left to NCCL's own choice, to fill in by hand")
    init_parser.set_defaults(func=cmd_init)

    plan_parser = sub.add_parser(
        "plan",
        help="each stage's wall time and GPU-hours, from the data's tokens and measured speed, beside its memory",
        description="Count the training data's rows and tokens (the model's tokenizer, on a sample of 2,000 rows), "
        "turn them into steps as verl will, and time each stage of the chain submit would queue from the recipe's "
        "measurements (docs/benchmarks.md) or, when there is one, from the team's own finished run of the same "
        "experiment in paths.logs. Queues nothing.",
    )
    plan_parser.add_argument("--team", type=Path, default=DEFAULT_TEAM, help=team_help)
    plan_parser.add_argument("--stages", default="sft,grpo,eval",
                             help="as submit: a comma-separated list of sft, grpo, eval, upload (default: sft,grpo,eval)")
    plan_parser.set_defaults(func=cmd_plan)

    submit_parser = sub.add_parser(
        "submit",
        help="queue SFT -> merge -> GRPO -> merge -> eval -> upload as SLURM jobs with dependencies",
        description="Validate team.yaml, render the chain's own scripts (GRPO trains SFT's merged model) under "
        "paths.logs/chains/<id>/ and sbatch each stage after the one before it (afterok); a failed stage cancels "
        "the rest. Prints the job ids, each stage's log and the plan (llm-bridge plan).",
    )
    submit_parser.add_argument("--team", type=Path, default=DEFAULT_TEAM, help=team_help)
    submit_parser.add_argument("--stages", default="sft,grpo,eval",
                               help="training and after: a comma-separated list of sft, grpo, eval, upload; each "
                               "training stage is followed by its merge (default: sft,grpo,eval)")
    submit_parser.add_argument("--from", dest="start", metavar="STAGE",
                               help="start at this stage (sft, merge-sft, grpo, merge-grpo, eval, upload), reusing what "
                               "the earlier ones left")
    submit_parser.add_argument("--repo", help="upload: ORG/NAME, or NAME under huggingface.org (default: the model's name)")
    submit_parser.add_argument("--upload-dry-run", action="store_true", help="upload: list what would go up, send nothing")
    submit_parser.add_argument("--sft-arg", action="append", default=[], metavar="KEY=VALUE",
                               help="a verl override for the SFT job (repeatable)")
    submit_parser.add_argument("--rl-arg", action="append", default=[], metavar="KEY=VALUE",
                               help="a verl override for the GRPO/PPO job (repeatable)")
    submit_parser.add_argument("--dry-run", action="store_true", help="print the sbatch lines; write and queue nothing")
    submit_parser.set_defaults(func=cmd_submit)

    status_parser = sub.add_parser(
        "status",
        help="the newest chain's stages: state, step and metrics, log; for a failed stage its error and the fix",
        description="Read paths.logs/chains/<id>/chain.json (the newest, or --chain) and ask SLURM (squeue, sacct) "
        "where each stage is. Exits 1 when a stage failed.",
    )
    status_parser.add_argument("--team", type=Path, default=DEFAULT_TEAM, help=team_help)
    status_parser.add_argument("--chain", help="a chain id (a folder of paths.logs/chains; default: the newest)")
    status_parser.set_defaults(func=cmd_status)

    model_cli.add_parsers(sub)
    evaluate_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    for before, arg in zip([""] + args, args):
        if found := secrets.find(arg, context=before):  # refuse before argparse can echo it in an error message
            print(f"ERROR: an argument looks like {found[0]}; secrets never go on a command line "
                  f"(it lands in shell history and the process list).\n       Fix: {found[1]}.", file=sys.stderr)
            return 2
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not (args.command == "ray" and args.action == "submit"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = [a for a in extra if a != "--"]
    try:
        return args.func(args)
    except ModuleNotFoundError as exc:  # the login node's venv has only what check and render need
        print(missing_package(exc.name, f"`llm-bridge {args.command}`"), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `llm-bridge check | head` closed the pipe: stop quietly, as other commands do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug or the network, keep the traceback
            raise
        print(f"ERROR: {exc.filename}: {exc.strerror or exc}.\n       Fix: check that path and its permissions.",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
