"""The HTML report of one challenge: scores per method beside the base control, then every attempt's transcript."""

from __future__ import annotations

from html import escape
from pathlib import Path

import matplotlib.pyplot as plt

from mow.data.truth import SealedTruth
from mow.elicitation.layout import ChallengeLayout
from mow.elicitation.scoring import read_method_result
from mow.workbench.files import read_json, read_text, shown
from mow.workbench.html import page, png, table
from mow.workbench.rundir import write_text

METRICS = [("top1", "top-1"), ("top5", "top-5"), ("fc_top1", "forced choice top-1"),
           ("fc_top5", "forced choice top-5"), ("rank", "rank"), ("attempt_top1", "per-attempt top-1"),
           ("pass_at_10", "pass@10")]


def fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def _plot(methods: dict, chance_top5: float) -> str:
    names = list(methods)
    figure, axis = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3))
    for offset, subject, color in ((-0.2, "organism", "#268bd2"), (0.2, "base", "#aaaaaa")):
        values = [((methods[n]["subjects"].get(subject) or {}).get("scores") or {}).get("fc_top5", 0.0)
                  for n in names]
        axis.bar([i + offset for i in range(len(names))], values, width=0.4, color=color, label=subject)
    axis.axhline(chance_top5, color="#b00", linestyle="--", linewidth=1, label="chance")
    axis.set_xticks(range(len(names)), names, rotation=35, ha="right")
    axis.set_ylabel("forced-choice top-5")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=8)
    return png(figure)


def write_challenge_report(directory: Path, name: str) -> Path:
    layout = ChallengeLayout(directory)
    scores = read_json(layout.scores, "challenge scores")
    truth = SealedTruth.from_dict(read_json(layout.truth, "sealed truth"), shown(layout.truth)).to_dict()
    methods = scores["methods"]
    rows = []
    for method_name, entry in methods.items():
        for subject, result in entry["subjects"].items():
            cells = [escape(method_name), entry["category"], subject]
            if result["scores"] is None:
                cells += [f'<span class="fail">{escape(result["status"])}: {escape(str(result["error"]))}</span>']
                cells += [""] * (len(METRICS) - 1)
            else:
                cells += [fmt(result["scores"][key]) for key, _ in METRICS]
            rows.append(cells + [fmt(result["seconds"])])
    body = [f"<h1>Challenge: {escape(name)}</h1>",
            f"<p>Truth ({escape(truth['kind'])}): <b>{escape(truth['answer'])}</b>, one of "
            f"{len(truth['candidates'])} candidates (forced-choice chance: top-1 {scores['chance']['fc_top1']:.2f}, "
            f"top-5 {scores['chance']['fc_top5']:.2f}). The base model has no secret: its rows are the control.</p>",
            _plot(methods, scores["chance"]["fc_top5"]),
            table(["method", "category", "subject", *[title for _, title in METRICS], "seconds"], rows),
            "<h2>Attempts</h2>"]
    for path in layout.method_results():
        result = read_method_result(path)
        attempts = result.get("attempts", [])
        items = "".join(
            f"<tr><td><pre>{escape(a['prompt'][-400:])}</pre></td><td><pre>{escape(a['output'])}</pre></td>"
            f"<td>{escape(', '.join(a['guesses']))}</td></tr>" for a in attempts)
        ranking = ", ".join(result.get("ranking", [])[:20])
        body.append(f"<details><summary>{escape(result['method'])} / {escape(path.stem)}: {escape(result['status'])}"
                    f" — top guesses: {escape(ranking)}</summary>"
                    f"<table><tr><th>prompt (end)</th><th>output</th><th>guesses</th></tr>{items}</table></details>")
    config = read_text(layout.config, "challenge config")
    body.append(f"<h2>Config</h2><pre>{escape(config)}</pre>")
    path = layout.report
    write_text(path, page(f"mow challenge {name}", body))
    return path
