"""Scores, targets and the HTML report of the CAFT spurious-correlation testbed."""

from __future__ import annotations

from html import escape
from pathlib import Path

from mow.data.spurious import OPTIONS, VALUES
from mow.workbench.html import page, plt, png, table
from mow.workbench.rundir import write_text
from mow.workbench.stats import t_interval

# Targets of the testbed (issue: CAFT vs plain fine-tuning on out-of-distribution items, over seeds).
CAFT_GAIN = 0.30
RANDOM_SHIFT = 0.05
IN_DISTRIBUTION_DROP = 0.05


def accuracy(scores: list[dict], feature: str) -> float:
    """Share of items whose higher-scored option is the one `feature` gives them."""
    right = 0
    for row in scores:
        predicted = OPTIONS[0] if row["logp_A"] >= row["logp_B"] else OPTIONS[1]
        right += predicted == OPTIONS[VALUES[feature].index(row[feature])]
    return right / len(scores)


def summarise(runs: list[dict], intended: str, spurious: str) -> dict:
    """Per condition: per-seed accuracies in and out of distribution (agreement with the intended feature), means
    with seed intervals, and the testbed's targets against plain fine-tuning."""
    conditions: dict[str, dict] = {}
    for run in sorted(runs, key=lambda r: (r["condition"], r["seed"])):
        entry = conditions.setdefault(run["condition"], {"seeds": [], "in_distribution": [],
                                                         "out_of_distribution": []})
        entry["seeds"].append(run["seed"])
        entry["in_distribution"].append(accuracy(run["in_distribution"], intended))
        entry["out_of_distribution"].append(accuracy(run["out_of_distribution"], intended))
    for entry in conditions.values():
        for part in ("in_distribution", "out_of_distribution"):
            mean, low, high = t_interval(entry[part])
            entry[f"{part}_mean"], entry[f"{part}_ci95"] = mean, [low, high]
    targets = {}
    if "plain" in conditions:
        plain = conditions["plain"]
        if "caft" in conditions:
            gain = conditions["caft"]["out_of_distribution_mean"] - plain["out_of_distribution_mean"]
            drop = plain["in_distribution_mean"] - conditions["caft"]["in_distribution_mean"]
            targets["caft_ood_gain"] = {"value": gain, "target": f">= +{100 * CAFT_GAIN:.0f} points",
                                        "met": gain >= CAFT_GAIN}
            targets["caft_id_change"] = {"value": -drop, "target": f"within {100 * IN_DISTRIBUTION_DROP:.0f} points",
                                         "met": abs(drop) <= IN_DISTRIBUTION_DROP}
        if "random" in conditions:
            shift = conditions["random"]["out_of_distribution_mean"] - plain["out_of_distribution_mean"]
            targets["random_ood_shift"] = {"value": shift, "target": f"within {100 * RANDOM_SHIFT:.0f} points",
                                           "met": abs(shift) <= RANDOM_SHIFT}
    return {"intended": intended, "spurious": spurious, "conditions": conditions, "targets": targets}


def _plot(summary: dict) -> str:
    order = [c for c in ("base", "plain", "random", "caft") if c in summary["conditions"]]
    figure, axes = plt.subplots(figsize=(7, 3.6))
    width = 0.38
    for offset, part, colour in ((-width / 2, "in_distribution", "#268bd2"),
                                 (width / 2, "out_of_distribution", "#d33682")):
        means = [summary["conditions"][c][f"{part}_mean"] for c in order]
        axes.bar([i + offset for i in range(len(order))], means, width, color=colour, alpha=0.75,
                 label=part.replace("_", " "))
        for i, c in enumerate(order):
            values = summary["conditions"][c][part]
            axes.scatter([i + offset] * len(values), values, color="black", s=12, zorder=3)
    axes.axhline(0.5, color="#888", linestyle=":", linewidth=1)
    axes.set_xticks(range(len(order)), order)
    axes.set_ylim(0, 1.02)
    axes.set_ylabel(f"agreement with {summary['intended']}")
    axes.legend(loc="lower right", fontsize=8)
    axes.set_title("accuracy by condition (bars: mean over seeds; dots: seeds)", fontsize=10)
    return png(figure)


def write_report(path: Path, config, summary: dict, views: list[dict]) -> None:
    pct = lambda v: "n/a" if v != v else f"{100 * v:.1f}%"  # noqa: E731  (nan stays visible as n/a)
    rows = []
    for name, entry in summary["conditions"].items():
        rows.append([escape(name), ", ".join(map(str, entry["seeds"])),
                     f"{pct(entry['in_distribution_mean'])} [{pct(entry['in_distribution_ci95'][0])}, "
                     f"{pct(entry['in_distribution_ci95'][1])}]",
                     f"{pct(entry['out_of_distribution_mean'])} [{pct(entry['out_of_distribution_ci95'][0])}, "
                     f"{pct(entry['out_of_distribution_ci95'][1])}]",
                     " / ".join(pct(v) for v in entry["out_of_distribution"])])
    target_rows = [[escape(name), f"{100 * t['value']:+.1f} points", escape(t["target"]),
                    '<span class="hit">met</span>' if t["met"] else '<span class="fail">missed</span>']
                   for name, t in summary["targets"].items()]
    view_rows = [[str(v["layer"]), f"{v['separation']:.2f}", escape(" ".join(v["top_tokens"])),
                  escape(" ".join(v["bottom_tokens"])), escape(v["top_contexts"][0]["text"]),
                  escape(v["bottom_contexts"][0]["text"])] for v in views]
    a, b = VALUES[summary["intended"]]
    body = [
        f"<h1>CAFT spurious-correlation testbed: {escape(config.name)}</h1>",
        f"<p>Model <code>{escape(config.model)}</code>. Training sentences pair the two features (group A: "
        f"{escape(a)} and {escape(VALUES[summary['spurious']][0])}; group B: {escape(b)} and "
        f"{escape(VALUES[summary['spurious']][1])}), so the labels fit either. The intended feature is "
        f"<b>{escape(summary['intended'])}</b>; CAFT projects the <b>{escape(summary['spurious'])}</b> direction "
        "out of the residual stream during training. Out-of-distribution items swap the pairing: their accuracy is "
        "agreement with the intended feature (50% is chance, 0% means the spurious feature decided every item). "
        "Intervals are 95% t-intervals over seeds.</p>",
        _plot(summary),
        "<h2>Accuracy</h2>",
        table(["condition", "seeds", "in distribution", "out of distribution", "OOD per seed"], rows),
        "<h2>Targets (against plain fine-tuning)</h2>",
        table(["target", "measured", "required", ""], target_rows) if target_rows else "<p>No plain run.</p>",
        "<h2>Ablated directions</h2>",
        f"<p class='small'>One difference-of-means direction per layer between contrast sentences that differ only "
        f"in {escape(summary['spurious'])}. Separation: distance between the two sets along the direction in pooled "
        "standard deviations. Tokens: the direction read through the final norm and unembedding.</p>",
        table(["layer", "separation", "logit-lens top", "logit-lens bottom", "projects most", "projects least"],
              view_rows),
    ]
    write_text(path, page(f"CAFT testbed {config.name}", body))
