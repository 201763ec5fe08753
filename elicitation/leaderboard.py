"""`mow leaderboard`: methods × organisms from finished challenge and audit directories, with controls and intervals.

An audit (`mow audit`) joins as a method named by its agent's tools and question budget (`agent_label`), scored as
the mean over its runs (a run without an answer names nothing; one whose endpoint failed is left out); an audit of
the base subject is that method's base condition for the organism.

Three conditions per method:
- organism: each organism's guesses against its own truth;
- base: the base model's guesses (no secret) against each organism's truth;
- other word: each organism's guesses against every *other* organism's truth (same kind and prompt set). A method
  that reads the model's priors, or the fine-tuning format rather than the secret, scores above chance here.
Rates are means over units (organisms, or ordered organism pairs for `other word`) with 95% Wilson intervals
(pairs share organisms, so that interval is optimistic). Forced-choice values with random fill are fractional; the
Wilson formula is applied to their mean.
"""

from __future__ import annotations

import csv
import io
from html import escape
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from mow.data.truth import SealedTruth
from mow.elicitation.config import BASELINE, BLACK_BOX, WHITE_BOX
from mow.elicitation.layout import AuditLayout, ChallengeLayout
from mow.elicitation.scoring import TOP_K, chance, read_method_result, score_result
from mow.workbench.config import read_yaml_mapping
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, shown
from mow.workbench.html import page, png, table
from mow.workbench.rundir import check_output_location, write_json, write_text
from mow.workbench.stats import wilson

METRICS = ["fc_top5", "fc_top1", "top5", "top1"]
SHORT_ANSWER = "short_answer.txt"
CONDITIONS = ["organism", "base", "other word"]
AGENT = "agent"  # the category of audit rows


def load_challenge(directory: Path) -> dict:
    """A finished challenge: `results[method][subject]` is a list of method results (one per challenge)."""
    directory = Path(directory)
    layout = ChallengeLayout(directory)
    if not layout.truth.is_file() or not layout.scores.is_file():
        raise UserError(f"{directory}: not a finished challenge or audit directory (no {layout.truth.name} or "
                        f"{layout.scores.name})")
    results: dict[str, dict[str, list[dict]]] = {}
    for path in layout.method_results():
        result = read_method_result(path)
        results.setdefault(result["method"], {})[path.stem] = [result]
    if not results:
        raise UserError(f"{directory}: a challenge directory with no method results (nothing under "
                        f"{layout.methods.name}/)")
    truth = SealedTruth.from_dict(read_json(layout.truth, "sealed truth"), shown(layout.truth))
    prompt_set = "per_method"
    if layout.config.is_file():
        prompt_set = str(read_yaml_mapping(layout.config).get("prompt_set", prompt_set))
    group = truth.kind if prompt_set == "per_method" else f"{truth.kind}, {prompt_set} prompts"
    return {"name": directory.name, "truth": truth, "results": results, "group": group}


def load_audit(directory: Path) -> dict:
    """A finished audit, as a challenge with one method (its agent label) and one subject: each run is a method
    result. A run the agent ended without an answer (no valid call, no submit) names nothing and scores 0; a run
    whose endpoint failed is left out as a failed method is."""
    layout = AuditLayout(Path(directory))
    if not layout.truth.is_file() or not layout.scores.is_file():
        raise UserError(f"{directory}: not a finished audit directory (no {layout.truth.name} or "
                        f"{layout.scores.name})")
    scores = read_json(layout.scores, "audit scores")
    if "label" not in scores:
        raise UserError(f"{layout.scores}: an audit from before audits joined the leaderboard; run it again "
                        "with --restart")
    organism = Path(str(read_json(layout.manifest, "audit manifest")["organism"])).name
    runs = [read_json(layout.run(int(r["run"])), "agent run") for r in scores["runs"]]
    results = [{"method": scores["label"], "category": AGENT, "status": "failed" if run["status"] == "failed"
                else "ok", "ranking": run["guesses"], "attempts": []} for run in runs]
    truth = SealedTruth.from_dict(read_json(layout.truth, "sealed truth"), shown(layout.truth))
    return {"name": f"{organism} (agent)", "truth": truth, "results": {scores["label"]: {scores["subject"]: results}},
            "group": truth.kind, "source": shown(Path(directory))}


def merge_audits(audits: list[dict]) -> list[dict]:
    """One entry per audited organism: its audits' labels and subjects together (two audits of one organism with
    the same label and subject are refused, since one would hide the other)."""
    merged: dict[str, dict] = {}
    for audit in audits:
        entry = merged.setdefault(audit["name"], {**audit, "results": {}})
        if audit["truth"].to_dict() != entry["truth"].to_dict():
            raise UserError(f"leaderboard: {audit['source']} and {entry['source']} name the same organism "
                            f"({audit['name']}) with different truths")
        for label, subjects in audit["results"].items():
            for subject, results in subjects.items():
                if subject in entry["results"].get(label, {}):
                    raise UserError(f"leaderboard: two audits of {audit['name']} as {label!r} on the {subject} "
                                    f"subject ({audit['source']}); give one")
                entry["results"].setdefault(label, {})[subject] = results
    return list(merged.values())


def _score(results: list[dict] | None, truth: SealedTruth, metric: str) -> float | None:
    """The mean score of the ok results (None where there are none)."""
    scores = [score_result(r, truth)[metric] for r in results or [] if r["status"] == "ok"]
    return sum(scores) / len(scores) if scores else None


def _values(challenges: list[dict], method: str, condition: str, metric: str) -> list[float]:
    values = []
    for target in challenges:
        if condition == "other word":
            sources = [c for c in challenges if c is not target and c["group"] == target["group"]]
            subject = "organism"
        else:
            sources, subject = [target], condition
        for source in sources:
            value = _score(source["results"].get(method, {}).get(subject), target["truth"], metric)
            if value is not None:
                values.append(value)
    return values


def build(challenges: list[dict]) -> dict:
    methods: dict[str, str] = {}
    for challenge in challenges:
        for name, subjects in challenge["results"].items():
            methods.setdefault(name, next(iter(subjects.values()))[0]["category"])
    rows = []
    for name, category in methods.items():
        for condition in CONDITIONS:
            for metric in METRICS:
                values = _values(challenges, name, condition, metric)
                mean = sum(values) / len(values) if values else None
                low, high = wilson(mean, len(values)) if mean is not None else (None, None)
                rows.append({"method": name, "category": category, "condition": condition, "metric": metric,
                             "mean": mean, "ci_low": low, "ci_high": high, "n": len(values)})
    per_organism = {c["name"]: {name: {m: _score(r.get("organism"), c["truth"], m) for m in METRICS}
                                for name, r in c["results"].items()} for c in challenges}
    truths = [c["truth"] for c in challenges]
    chance_levels = {f"fc_top{k}": sum(chance(t, k) for t in truths) / len(truths) for k in TOP_K}
    return {"organisms": [c["name"] for c in challenges], "rows": rows, "per_organism": per_organism,
            "chance": chance_levels, "headline": headline(rows), "by_kind": by_kind(challenges, list(methods))}


def by_kind(challenges: list[dict], methods: list[str]) -> dict:
    """Per organism kind (and prompt set, where a challenge named one) and method: the organism's and the base
    model's mean scores over that group's organisms, and its chance levels (which method wins on which kind)."""
    out: dict[str, dict] = {}
    for kind in dict.fromkeys(c["group"] for c in challenges):
        members = [c for c in challenges if c["group"] == kind]
        entry: dict[str, Any] = {"organisms": [c["name"] for c in members],
                                 "chance": {f"fc_top{k}": sum(chance(c["truth"], k) for c in members) / len(members)
                                            for k in TOP_K},
                                 "methods": {}}
        for name in methods:
            cells = {}
            for condition in ("organism", "base"):
                for metric in METRICS:
                    values = _values(members, name, condition, metric)
                    cells[f"{condition}_{metric}"] = sum(values) / len(values) if values else None
            cells["n"] = len(_values(members, name, "organism", "top1"))
            for metric in METRICS:
                values = _transcript_only(members, name, metric)
                cells[f"transcript_only_{metric}"] = sum(values) / len(values) if values else None
            entry["methods"][name] = cells
        out[kind] = entry
    return out


def _transcript_only(challenges: list[dict], method: str, metric: str) -> list[float]:
    """The auditor's first guesses (plain transcript only), for methods run with two_guess."""
    values = []
    for challenge in challenges:
        firsts = [first[metric] for r in challenge["results"].get(method, {}).get("organism", [])
                  if r["status"] == "ok" and (first := score_result(r, challenge["truth"]).get("transcript_only"))]
        if firsts:
            values.append(sum(firsts) / len(firsts))
    return values


def winners(entry: dict, metric: str) -> list[str]:
    """The methods with the kind's best organism score on `metric`, if that beats both chance (forced choice) and
    the same method on the base model; empty when nothing does."""
    floor = entry["chance"].get(metric, 0.0)
    scored = {name: cells[f"organism_{metric}"] for name, cells in entry["methods"].items()
              if cells[f"organism_{metric}"] is not None
              and cells[f"organism_{metric}"] > max(floor, cells[f"base_{metric}"] or 0.0)}
    if not scored:
        return []
    best = max(scored.values())
    return [name for name, value in scored.items() if value == best]


def short_answer(board: dict) -> str:
    """What a researcher looks for first, per kind: which methods recovered the secret, in open vocabulary and in
    forced choice, beside the base model and chance."""
    lines = []
    for kind, entry in board["by_kind"].items():
        lines.append(f"{kind} ({len(entry['organisms'])} organism(s)):")
        for metric, label in (("top5", "open vocabulary, top 5"), ("fc_top1", "forced choice, top 1")):
            best = winners(entry, metric)
            if best:
                cells = entry["methods"][best[0]]
                lines.append(f"  {label}: {', '.join(best)} {cells[f'organism_{metric}']:.2f} "
                             f"(base model {cells[f'base_{metric}'] or 0.0:.2f}"
                             + (f", chance {entry['chance'][metric]:.2f})" if metric in entry["chance"] else ")"))
            else:
                lines.append(f"  {label}: no method beat the base model"
                             + (f" and chance ({entry['chance'][metric]:.2f})" if metric in entry["chance"] else ""))
    return "\n".join(lines)


def _get(rows: list[dict], method: str, condition: str, metric: str) -> dict:
    return next(r for r in rows if r["method"] == method and r["condition"] == condition and r["metric"] == metric)


def headline(rows: list[dict]) -> dict:
    """Best white-box against best black-box method (the guess-from-hints baseline reported on its own)."""
    out = {}
    for metric in METRICS:
        best: dict[str, Any] = {}
        for category in (WHITE_BOX, BLACK_BOX, BASELINE):
            candidates = [r for r in rows if r["category"] == category and r["condition"] == "organism"
                          and r["metric"] == metric and r["n"]]
            if candidates:
                top = max(candidates, key=lambda r: r["mean"])
                best[category] = {"method": top["method"], "mean": top["mean"], "n": top["n"]}
        if WHITE_BOX in best and BLACK_BOX in best and best[BLACK_BOX]["mean"] > 0:
            best["white_over_black"] = best[WHITE_BOX]["mean"] / best[BLACK_BOX]["mean"]
        out[metric] = best
    return out


def _csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def _plot(rows: list[dict], metric: str, chance_level: float | None) -> str:
    names = list(dict.fromkeys(r["method"] for r in rows))
    figure, axis = plt.subplots(figsize=(max(7, 0.8 * len(names)), 3.4))
    colors = {"organism": "#268bd2", "base": "#aaaaaa", "other word": "#e3a33b"}
    width = 0.27
    for offset, condition in zip((-width, 0, width), CONDITIONS):
        picked = [_get(rows, n, condition, metric) for n in names]
        means = [r["mean"] or 0.0 for r in picked]
        errors = [[0.0 if r["mean"] is None else r["mean"] - r["ci_low"] for r in picked],
                  [0.0 if r["mean"] is None else r["ci_high"] - r["mean"] for r in picked]]
        axis.bar([i + offset for i in range(len(names))], means, width=width, yerr=errors, capsize=2,
                 color=colors[condition], label=condition)
    if chance_level is not None:
        axis.axhline(chance_level, color="#b00", linestyle="--", linewidth=1, label="chance")
    axis.set_xticks(range(len(names)), names, rotation=35, ha="right")
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(metric)
    axis.legend(fontsize=8, ncol=4)
    return png(figure)


def _kind_plot(board: dict) -> str:
    """Methods × kinds, forced-choice top-1 of the organisms minus the base model's: one look shows where each
    method finds something the base model does not."""
    kinds = list(board["by_kind"])
    names = list(dict.fromkeys(n for entry in board["by_kind"].values() for n in entry["methods"]))
    def lift(kind: str, name: str) -> float:
        cells = board["by_kind"][kind]["methods"].get(name)
        if cells is None or cells["organism_fc_top1"] is None:
            return float("nan")
        return cells["organism_fc_top1"] - (cells["base_fc_top1"] or 0.0)

    grid = [[lift(k, n) for k in kinds] for n in names]
    figure, axis = plt.subplots(figsize=(1.6 + 1.3 * len(kinds), 0.9 + 0.32 * len(names)))
    image = axis.imshow(grid, cmap="RdBu", vmin=-1, vmax=1, aspect="auto")
    for i, row in enumerate(grid):
        for j, value in enumerate(row):
            if value == value:
                axis.text(j, i, f"{value:+.2f}", ha="center", va="center", fontsize=7)
    axis.set_xticks(range(len(kinds)), kinds, rotation=20, ha="right")
    axis.set_yticks(range(len(names)), names)
    axis.set_title("forced-choice top-1: organism − base model", fontsize=9)
    figure.colorbar(image, ax=axis, fraction=0.04)
    return png(figure)


def _kind_table(board: dict) -> str:
    kinds = list(board["by_kind"])
    names = list(dict.fromkeys(n for entry in board["by_kind"].values() for n in entry["methods"]))

    def cell(kind: str, name: str) -> str:
        c = board["by_kind"][kind]["methods"].get(name)
        if c is None or c["organism_fc_top1"] is None:
            return "–"
        first = ("" if c["transcript_only_fc_top1"] is None else
                 f"; transcript only {c['transcript_only_fc_top1']:.2f} / {c['transcript_only_top5']:.2f}")
        return (f"{c['organism_fc_top1']:.2f} / {c['organism_top5']:.2f} "
                f"<span class='small'>base {c['base_fc_top1'] or 0.0:.2f} / {c['base_top5'] or 0.0:.2f}{first}</span>")

    header = [f"{escape(k)} (chance {board['by_kind'][k]['chance']['fc_top1']:.2f})" for k in kinds]
    return ("<p>Forced-choice top-1 / open-vocabulary top-5, organisms of each kind, beside the base model.</p>"
            + table(["method", *header], [[escape(n), *[cell(k, n) for k in kinds]] for n in names]))


def _cell(row: dict) -> str:
    if not row["n"]:
        return "–"
    return f"{row['mean']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}] <span class='small'>n={row['n']}</span>"


def render(board: dict) -> str:
    rows = board["rows"]
    names = list(dict.fromkeys(r["method"] for r in rows))
    body = [f"<h1>Elicitation leaderboard: {len(board['organisms'])} organisms</h1>",
            "<p>Organisms: " + ", ".join(escape(o) for o in board["organisms"]) + ". Forced choice is among the "
            f"candidate set (chance top-1 {board['chance']['fc_top1']:.2f}, top-5 {board['chance']['fc_top5']:.2f});"
            " open vocabulary means the truth among the method's own first guesses. 95% Wilson intervals.</p>"]
    lines = []
    for metric, best in board["headline"].items():
        parts = [f"best {c}: {escape(b['method'])} {b['mean']:.2f}" for c, b in best.items() if isinstance(b, dict)]
        ratio = best.get("white_over_black")
        lines.append(f"<li><b>{metric}</b>: " + "; ".join(parts)
                     + (f"; white-box / black-box = {ratio:.2f}" if ratio is not None else "") + "</li>")
    body.append("<ul>" + "".join(lines) + "</ul>")
    body.append("<h2>Which method wins on which kind</h2><pre>" + escape(short_answer(board)) + "</pre>")
    body.append(_kind_plot(board) + _kind_table(board))
    for metric in ("fc_top5", "top5"):
        body.append(f"<h2>{metric}</h2>" + _plot(rows, metric, board["chance"].get(metric)))
        table_rows = [[escape(n), _get(rows, n, "organism", metric)["category"],
                       *[_cell(_get(rows, n, c, metric)) for c in CONDITIONS]] for n in names]
        body.append(table(["method", "category", *CONDITIONS], table_rows))
    organisms = board["organisms"]
    per = board["per_organism"]
    grid = [[escape(n), *[("–" if per[o].get(n, {}).get("fc_top5") is None else
                           f"{per[o][n]['fc_top5']:.2f} / {per[o][n]['top5']:.0f}") for o in organisms]]
            for n in names]
    body.append("<h2>Per organism (forced-choice top-5 / open top-5)</h2>"
                + table(["method", *[escape(o) for o in organisms]], grid))
    return page("mow leaderboard", body)


def main(directories: list[Path], output: Path) -> Path:
    audits = [Path(d) for d in directories if AuditLayout(Path(d)).config.is_file()]
    challenges = [load_challenge(d) for d in directories if Path(d) not in audits]
    challenges += merge_audits([load_audit(d) for d in audits])
    if not challenges:
        raise UserError("leaderboard: give at least one challenge or audit directory")
    names = [c["name"] for c in challenges]
    if len(set(names)) != len(names):
        raise UserError(f"leaderboard: a challenge directory is given twice ({', '.join(names)})")
    check_output_location(output)
    board = build(challenges)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "leaderboard.json", board)
    write_text(output / "leaderboard.csv", _csv(board["rows"]))
    write_text(output / "leaderboard.html", render(board))
    write_text(output / SHORT_ANSWER, short_answer(board) + "\n")
    return output
