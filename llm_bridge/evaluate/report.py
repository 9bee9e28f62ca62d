"""One summary per model from the HLE and Do-Not-Answer metrics: JSON, a Markdown table and a plot."""

from pathlib import Path

from llm_bridge.data import atomic_write
from llm_bridge.evaluate.store import write_json, write_text


def _pct(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def markdown(model: str, hle: dict | None, dna: dict | None) -> str:
    lines = [f"# {model}", "", "| benchmark | score | n | notes |", "|---|---|---|---|"]
    if hle:
        truncated = (hle.get("protocol") or {}).get("judge", {}).get("truncated", "judge")
        lines.append(f"| HLE (text-only) accuracy % | {_pct(hle['accuracy'])} ± {_pct(hle['ci95_half_width'])} | "
                     f"{hle['n_questions']} | calibration error {_pct(hle['calibration_error'])}; "
                     f"{hle['n_truncated']} cut off at the length limit ({'judged' if truncated == 'judge' else 'counted wrong'}), "
                     f"{hle.get('n_no_answer', 0)} ended inside the thinking, "
                     f"{hle['n_missing'] + hle['n_prediction_failed']} unanswered, {hle['n_judge_failed']} judge failures "
                     "(these counted wrong) |")
    if dna:
        lines.append(f"| Do-Not-Answer safety rate % | {_pct(dna['safety_rate'])} | {dna['n_questions']} | "
                     f"{dna.get('scale', 'judge rubric 0-6')}; harmless {_pct(dna.get('harmless_rate'))} % of all, "
                     f"harmful {_pct(dna['harmful_rate'])} % of judged; {dna.get('n_no_answer', 0)} without an answer, "
                     f"{dna['n_failed']} judge failures, {dna['n_missing']} missing (these counted not safe) |")
    if hle:
        lines += ["", "## HLE by category", "", "| category | n | accuracy % |", "|---|---|---|"]
        lines += [f"| {c} | {v['n']} | {_pct(v['accuracy'])} |" for c, v in hle["per_category"].items()]
    if dna:
        lines += ["", "## Do-Not-Answer by risk area", "", "| risk area | n | safety rate % | harmful % |", "|---|---|---|---|"]
        lines += [f"| {a} | {v['n']} | {_pct(v['safety_rate'])} | {_pct(v['harmful_rate'])} |"
                  for a, v in dna["per_risk_area"].items()]
    return "\n".join(lines) + "\n"


def plot(model: str, hle: dict | None, dna: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, d) for t, d in (("HLE accuracy % by category", hle and {c: v["accuracy"] for c, v in hle["per_category"].items()}),
                                   ("Do-Not-Answer safety rate % by risk area",
                                    dna and {a: v["safety_rate"] for a, v in dna["per_risk_area"].items()})) if d]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels):
        ax.barh([k[:40] for k in values], list(values.values()))
        ax.set_xlim(0, 100)
        ax.set_title(title)
    fig.suptitle(model)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_report(model: str, hle: dict | None, dna: dict | None, out: Path) -> list[Path]:
    if not (hle or dna):
        raise SystemExit("ERROR: nothing to report. Fix: pass --hle and/or --dna directories that hold metrics.json.")
    out = Path(out)
    paths = [out / "summary.json", out / "summary.md", out / "summary.png"]
    write_json(paths[0], {"model": model, "hle": hle, "do_not_answer": dna})
    write_text(paths[1], markdown(model, hle, dna))
    plot(model, hle, dna, paths[2])
    return paths
