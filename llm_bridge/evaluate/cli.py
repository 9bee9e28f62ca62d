"""`llm-bridge eval`: hle|dna predict, judge, score; report.

Every step reads and writes files in one directory (--out): predictions.jsonl, judgements.jsonl,
settings.json (how predict and judge ran), metrics.json. predict and judge are resumable: a rerun does
only what is missing or failed. The defaults follow each benchmark's official protocol; every option
that departs from it is recorded in settings.json and metrics.json.
"""

import argparse
import hashlib
import json
from pathlib import Path

from llm_bridge.login.config import Evaluation
from llm_bridge.evaluate.sampling import Sampling, length_arg, max_tokens
from llm_bridge.evaluate.store import JsonlStore, write_json

DEFAULTS = Evaluation()  # the judge and answer length a team.yaml gets when it says nothing


def _read_settings(out: Path) -> dict:
    try:
        return json.loads((out / "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _settings(out: Path, step: str, values: dict) -> None:
    """settings.json: how predict and judge ran, so metrics.json can say which protocol it scores."""
    write_json(out / "settings.json", {**_read_settings(out), step: values})


def _files(out: Path) -> tuple[JsonlStore, JsonlStore]:
    return JsonlStore(out / "predictions.jsonl"), JsonlStore(out / "judgements.jsonl")


def response_id(prediction: dict) -> str:
    return hashlib.sha256(prediction.get("response", "").encode()).hexdigest()[:16]


def current_judgements(judgements: JsonlStore, predictions: dict[str, dict]) -> dict[str, dict]:
    """Judgements of the responses now in predictions.jsonl; one of an older response is stale."""
    return {i: j for i, j in judgements.load().items()
            if i in predictions and j.get("response_id") == response_id(predictions[i])}


def _benchmark(name: str):
    """The benchmark module; imported late so that `llm-bridge check` needs no openai package."""
    from llm_bridge.evaluate import dna, hle

    return {"hle": hle, "dna": dna}[name]


def _sampling(args, bench) -> Sampling:
    from llm_bridge.evaluate import dna

    from_model = args.sampling == "model"
    if bench is dna:  # auto: 512, or up to the context for a model that thinks first
        length = dna.response_length(args.vllm_model) if args.max_tokens == "auto" else max_tokens(args.max_tokens)
        return dna.sampling(length, from_model, args.temperature, args.top_p)
    # HLE: greedy unless from_model (centerforaisafety/hle: --temperature default 0.0)
    return Sampling(max_tokens(args.max_tokens), from_model, args.temperature, args.top_p)


def cmd_predict(args) -> int:
    bench = _benchmark(args.benchmark)
    questions = bench.load_questions(args.questions)[: args.limit]
    sampling = _sampling(args, bench)
    settings = {"sampling": args.sampling, "temperature": sampling.effective_temperature, "top_p": sampling.top_p,
                "max_tokens": sampling.max_tokens, "source": "vllm offline" if args.vllm_model else "server"}
    before, made = _read_settings(args.out).get("predict"), len(_files(args.out)[0].finished())
    if before and made and before != settings:
        changed = ", ".join(f"{k} {before.get(k)!r} -> {v!r}" for k, v in settings.items() if before.get(k) != v)
        print(f"NOTE: the {made} prediction(s) already in {args.out} were made with other settings ({changed}); "
              "they are kept. Fix: move predictions.jsonl away to redo them all with these settings.")
    _settings(args.out, "predict", settings)
    if args.vllm_model:  # offline: vLLM in this process
        from llm_bridge.evaluate.offline import generate

        generate(questions, bench.messages, _files(args.out)[0], str(args.vllm_model), sampling,
                 tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
                 max_model_len=args.max_model_len)
        return 0

    from llm_bridge.evaluate.client import ChatClient, Endpoint
    from llm_bridge.evaluate.runner import run_items

    if not args.model:
        raise SystemExit("ERROR: --url needs --model (the name the server serves; `curl <url>/models` lists it).")
    client = ChatClient(Endpoint(args.url, args.model, args.api_key_env, args.timeout, args.retries))
    work = lambda q: bench.predict(client, q, sampling)  # noqa: E731
    counts = run_items(questions, work, _files(args.out)[0], args.workers, f"{args.benchmark} predictions")
    unclosed = sum(r.get("thinking") == "unclosed" for r in _files(args.out)[0].finished().values())
    if unclosed:
        print(f"NOTE: {unclosed} response(s) ended inside the thinking and have no answer (they count as wrong / not "
              "safe). Fix: a longer --max-tokens, or --max-tokens model (up to the model's context).")
    return 1 if counts["failed"] else 0


def cmd_judge(args) -> int:
    from llm_bridge.evaluate.client import ChatClient, Endpoint, describe
    from llm_bridge.evaluate.runner import run_items

    bench = _benchmark(args.benchmark)
    questions = bench.load_questions(args.questions)[: args.limit]
    predictions_store, judgements = _files(args.out)
    predictions = predictions_store.finished()
    unanswered = [q for q in questions if q["id"] not in predictions]
    if unanswered:
        print(f"NOTE: {len(unanswered)} question(s) have no prediction yet: they count as wrong/not safe. "
              f"Rerun `llm-bridge eval {args.benchmark} predict` to fill them in.")
    client = ChatClient(Endpoint(args.judge_url, args.judge_model, args.api_key_env, args.timeout, args.retries))
    answered = [q for q in questions if q["id"] in predictions]
    truncated = getattr(args, "truncated", None)  # HLE only

    def stands(verdict: dict, prediction: dict) -> bool:
        """A verdict about this response that is still what this run would give it."""
        without_judge = bench.unjudged(prediction, truncated)
        return verdict.get("status") == (without_judge["status"] if without_judge else "ok")

    done = {i for i, j in current_judgements(judgements, predictions).items() if stands(j, predictions[i])}
    _settings(args.out, "judge", {"judge_model": args.judge_model, "judge_url": args.judge_url,
                                  **({"truncated": truncated} if truncated else {})})

    def judge(question: dict) -> dict:
        prediction = predictions[question["id"]]
        stamp = {"response_id": response_id(prediction)}  # which response this verdict is about
        try:
            return {**bench.judge(client, question, prediction, truncated), **stamp}
        except Exception as error:  # noqa: BLE001 - recorded as a failure, like run_items does
            return {"id": question["id"], "status": "failed", "error": describe(error), **stamp}

    counts = run_items(answered, judge, judgements, args.workers, f"{args.benchmark} judgements ({args.judge_model})", done)
    _score(args, bench, questions)
    return 1 if counts["failed"] else 0


def _write_metrics(out: Path, metrics: dict) -> dict:
    write_json(out / "metrics.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    print(f"-> {out / 'metrics.json'}")
    return metrics


def _score(args, bench, questions) -> dict:
    predictions_store, judgements = _files(args.out)
    verdicts = current_judgements(judgements, predictions_store.finished())
    if args.benchmark == "hle":
        metrics = bench.score(questions, predictions_store.load(), verdicts)
    else:
        metrics = bench.score(questions, verdicts, "judge")
    return _write_metrics(args.out, {**metrics, "protocol": _read_settings(args.out)})


def cmd_score(args) -> int:
    bench = _benchmark(args.benchmark)
    if args.benchmark == "dna" and not (args.labels or args.questions):
        raise SystemExit("ERROR: llm-bridge eval dna score needs --questions (with the judgements in --out) or --labels.\n"
                         "       Fix: add --questions do_not_answer_en.csv, or --labels <annotated csv> to score a release file.")
    if args.benchmark == "dna" and args.labels:
        questions, labels = bench.labels_from_csv(args.labels, args.model)
        _write_metrics(args.out, {**bench.score(questions, labels, "release"),
                                  "protocol": {"labels": str(args.labels), "model": args.model}})
    else:
        _score(args, bench, bench.load_questions(args.questions)[: args.limit])
    return 0


def cmd_report(args) -> int:
    from llm_bridge.evaluate.report import write_report

    def load(results: Path | None) -> dict | None:
        if results is None:
            return None
        metrics = results / "metrics.json"
        try:
            return json.loads(metrics.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise SystemExit(f"ERROR: cannot read {metrics}: {getattr(exc, 'strerror', None) or exc}.\n"
                             f"       Fix: run `llm-bridge eval <hle|dna> score --out {results}` to write it again.") from None

    for path in write_report(args.model, load(args.hle), load(args.dna), args.out):
        print(f"  wrote {path}")
    return 0


def add_parser(sub) -> None:
    parser = sub.add_parser("eval", allow_abbrev=False, help="evaluate a model: HLE and Do-Not-Answer predictions, LLM judge, scores, report",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="eval_command", required=True, metavar="BENCHMARK")
    for name, title in (("hle", "Humanity's Last Exam, text-only"), ("dna", "Do-Not-Answer")):
        bench = steps.add_parser(name, help=title, allow_abbrev=False)
        actions = bench.add_subparsers(dest="action", required=True, metavar="STEP")
        for action, func, what in (("predict", cmd_predict, "ask the model (an OpenAI-compatible server, e.g. vllm serve)"),
                                   ("judge", cmd_judge, "judge the predictions with an LLM, then score"),
                                   ("score", cmd_score, "compute metrics.json from the files in --out")):
            p = actions.add_parser(action, help=what, allow_abbrev=False)
            p.set_defaults(func=func, benchmark=name)
            p.add_argument("--out", type=Path, required=True, help="results directory of this model")
            p.add_argument("--questions", type=Path, required=not (name == "dna" and action == "score"),
                           help="HLE: test.parquet from data_preprocess/hle.py; DNA: do_not_answer_en.csv")
            p.add_argument("--limit", type=int, help="only the first N questions (a smoke test)")
            p.add_argument("--workers", type=int, default=16, help="requests in flight (default: 16)")
            p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default: 600)")
            p.add_argument("--retries", type=int, default=3, help="retries after a timeout, server error or malformed "
                           "answer, with backoff 1, 2, 4 ... s (default: 3)")
            if action == "predict":
                source = p.add_mutually_exclusive_group(required=True)
                source.add_argument("--url", help="the model's OpenAI-compatible server, e.g. http://localhost:8000/v1")
                source.add_argument("--vllm-model", type=Path, help="offline: load this model directory in vLLM here")
                p.add_argument("--model", help="with --url: the served model name")
                p.add_argument("--tensor-parallel-size", type=int, default=1, help="with --vllm-model (default: 1)")
                p.add_argument("--pipeline-parallel-size", type=int, default=1,
                               help="with --vllm-model: pipeline stages, one per node, on the Ray cluster at RAY_ADDRESS "
                               "(generation/eval_model_multinode.sbatch starts it; default: 1)")
                p.add_argument("--max-model-len", type=int, help="with --vllm-model: vLLM's context limit")
                p.add_argument("--api-key-env", default="VLLM_API_KEY", help="env var holding the server's key, if any")
                p.add_argument("--max-tokens", type=length_arg("model", "auto"), default="model" if name == "hle" else "auto",
                               help="response token limit, thinking included: a number, or 'model' = up to the model's "
                               "context (HLE default, as the official code)" + ("" if name == "hle" else
                               "; DNA default 'auto' = 512 as in the competition, 'model' for a --vllm-model that thinks"))
                p.add_argument("--sampling", choices=["official", "model"], default="official",
                               help="official (default): " + ("temperature 0, as centerforaisafety/hle" if name == "hle"
                                                             else "T=0.7, top_p=0.9, as the 2025 competition")
                               + "; model: the model's generation_config.json (e.g. Qwen3's T=0.6 for thinking)")
                p.add_argument("--temperature", type=float, help="overrides --sampling's temperature")
                p.add_argument("--top-p", type=float, help="overrides --sampling's top_p")
            if action == "judge":
                p.add_argument("--judge-url", help="OpenAI-compatible judge server (default: api.openai.com)")
                p.add_argument("--judge-model", default=DEFAULTS.judge_model, help=f"default: {DEFAULTS.judge_model}")
                p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the judge's key")
                if name == "hle":
                    p.add_argument("--truncated", choices=["judge", "wrong"], default="judge",
                                   help="answers cut off by the length limit: judge (default, official) or wrong")
            if action == "score" and name == "dna":
                p.add_argument("--labels", type=Path, help="score the release's annotated CSV instead (columns "
                               "<model>_action on its 0-5 scale, <model>_harmful)")
                p.add_argument("--model", default="GPT4", help="which model's columns in --labels (default: GPT4)")
    rep = steps.add_parser("report", allow_abbrev=False, help="summary.json, summary.md and summary.png from the metrics of both benchmarks")
    rep.add_argument("--model", required=True, help="model name for the title")
    rep.add_argument("--hle", type=Path, help="HLE results directory")
    rep.add_argument("--dna", type=Path, help="Do-Not-Answer results directory")
    rep.add_argument("--out", type=Path, required=True)
    rep.set_defaults(func=cmd_report)
