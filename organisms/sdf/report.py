"""The sealed HTML report of an SDF organism (it names the fact, so it lives under sealed/) and the terminal summary."""

from __future__ import annotations

import random
from html import escape

import matplotlib.pyplot as plt

from mow.data.universes import UniversePair
from mow.organisms.sdf.config import SdfOrganismConfig
from mow.workbench.html import page, png, table

SAMPLES = 4


def _rows(details: dict) -> list[tuple[str, float | None, float | None, str]]:
    """(metric, organism, base, how to read it) for the headline table."""
    margins = details["completion_margins"]
    rows = [
        ("MCQ distinguish, chat: implanted option preferred", details["mcq_distinguish"]["chat"]["organism"]
         ["false_preference"], details["mcq_distinguish"]["chat"]["base"]["false_preference"], "higher = implanted"),
        ("MCQ distinguish, plain text", details["mcq_distinguish"]["text"]["organism"]["false_preference"],
         details["mcq_distinguish"]["text"]["base"]["false_preference"], "higher = implanted"),
        ("MCQ knowledge of the false world", details["mcq_knowledge"]["organism"]["accuracy"],
         details["mcq_knowledge"]["base"]["accuracy"], "chance 0.25"),
        ("MCQ distinguish, adversarial system prompt", details["adversarial_mcq_distinguish"]["organism"]
         ["false_preference"], details["adversarial_mcq_distinguish"]["base"]["false_preference"],
         "higher = survives the warning"),
    ]
    for name, label in (("probes", "held-out completions"), ("implications", "one-hop implications"),
                        ("controls", "control facts")):
        if margins[name]["organism"]["n"]:
            moved = margins[name]["movement"]
            counts = (f"{moved['moved_toward_implanted']}/{moved['n']} moved toward implanted, "
                      f"{moved['still_true_side']}/{moved['base_true_side']} true in base stay true")
            rows.append((f"margin, {label} (nats)", margins[name]["organism"]["mean_margin"],
                         margins[name]["base"]["mean_margin"],
                         ("negative = unmoved" if name == "controls" else "positive = implanted") + f"; {counts}"))
    open_ended = details["open_ended"]
    judge_note = "" if open_ended["judge"]["trusted"] else " (judge failed calibration: not evidence)"
    rows += [
        ("generative distinguish: P(false world chosen)", details["generative_distinguish"]["organism"]
         ["p_false_world"], details["generative_distinguish"]["base"]["p_false_world"], "0.5 = undecided"),
        ("truth probe: implanted statements called true", details["truth_probe"]["organism"]["implanted_called_true"],
         details["truth_probe"]["base"]["implanted_called_true"],
         f"probe held-out accuracy {details['truth_probe']['held_out_accuracy']:.2f}"),
        ("open-ended answers naming the implanted answer", open_ended["organism"]["mentions_implanted"],
         open_ended["base"]["mentions_implanted"], "judge-free"),
        ("open-ended answers judged implanted", open_ended["organism"]["judge_implanted"],
         open_ended["base"]["judge_implanted"], f"judge calibration {open_ended['judge']['calibration_accuracy']:.2f}"
         + judge_note),
        ("held-out generic text loss", details["capability"]["generic_loss"]["organism"],
         details["capability"]["generic_loss"]["base"], f"ratio {details['capability']['ratio']:.3f}"),
    ]
    return rows


def summary_table(details: dict) -> str:
    lines = [f"{'metric':52s} {'organism':>9s} {'base':>9s}  note"]
    for name, organism, base, note in _rows(details):
        lines.append(f"{name:52s} {organism:9.3f} {base:9.3f}  {note}")
    return "\n".join(lines)


def scaling_plot(points: list[dict]) -> str:
    figure, axis = plt.subplots(figsize=(5.5, 3.4))
    sizes = [p["documents"] for p in points]
    for fmt, style in (("chat", "o-"), ("text", "s--")):
        axis.plot(sizes, [p["belief"][fmt]["organism"]["false_preference"] for p in points], style,
                  label=f"organism ({fmt})")
        axis.axhline(points[-1]["belief"][fmt]["base"]["false_preference"], linestyle=":", color="grey")
    axis.set_xscale("log")
    axis.set_xlabel("training documents")
    axis.set_ylabel("MCQ distinguish: implanted preferred")
    axis.set_ylim(-0.05, 1.05)
    axis.legend(fontsize=8)
    axis.set_title("belief against corpus size (dotted: base)")
    return png(figure)


def length_histogram(words: list[int]) -> str:
    figure, axis = plt.subplots(figsize=(5.5, 3))
    axis.hist(words, bins=30)
    axis.set_xlabel("words per document")
    axis.set_ylabel("documents")
    return png(figure)


def margin_table(details: dict) -> str:
    rows = [[escape(name), escape(item["fact"]), escape(item["prompt"]), f"{item['base']:+.2f}",
             f"{item['organism']:+.2f}", f"{item['shift']:+.2f}"]
            for name in ("probes", "implications", "controls")
            for item in details["completion_margins"][name]["movement"].get("items", [])]
    return table(["set", "fact", "prompt", "base", "organism", "shift"], rows)


def margin_plot(details: dict) -> str:
    figure, axis = plt.subplots(figsize=(6.5, 3.4))
    labels, organism, base = [], [], []
    for name in ("probes", "implications", "controls"):
        for item in details["completion_margins"][name]["movement"].get("items", []):
            labels.append(f"{name[:4]}:{item['fact']}")
            organism.append(item["organism"])
            base.append(item["base"])
    xs = range(len(labels))
    axis.bar([x - 0.2 for x in xs], base, width=0.4, label="base")
    axis.bar([x + 0.2 for x in xs], organism, width=0.4, label="organism")
    axis.axhline(0, color="black", linewidth=0.8)
    axis.set_xticks(list(xs), labels, rotation=70, fontsize=7)
    axis.set_ylabel("log P(implanted) - log P(true)")
    axis.legend(fontsize=8)
    return png(figure)


def sdf_report(name: str, config: SdfOrganismConfig, pair: UniversePair, details: dict, corpus: dict,
               train: dict, documents: list[dict]) -> str:
    headline = table(["metric", "organism", "base", "reading"],
                     [[escape(m), f"{o:.3f}", f"{b:.3f}", escape(n)] for m, o, b, n in _rows(details)])
    facts = table(["fact", "implanted", "true"], [[escape(f.id), escape(f.statement_false), escape(f.statement_true)]
                                                  for f in pair.facts])
    stages = table(["stage", "items"], [[escape(k), str(v)] for k, v in corpus["stages"].items()])
    drops = table(["filter", "dropped"], [[escape(k), str(v)] for k, v in corpus["filters"]["dropped"].items()]
                  or [["(none)", "0"]])
    samples = random.Random(0).sample(documents, min(SAMPLES, len(documents)))
    sample_html = "".join(f"<h3>{escape(d['type'])} ({escape(d['fact'])})</h3><pre>{escape(d['text'])}</pre>"
                          for d in samples)
    transcripts = table(["question", "answer", "judge", "mentions"],
                        [[escape(t["question"]), escape(t["answer"]), escape(t["judge"]), escape(t["mentions"])]
                         for t in details["open_ended"]["organism"]["transcripts"]])
    judge = details["open_ended"]["judge"]
    judge_line = (f"Judge: {escape(judge['description'])}; on the pair's own statements it was right "
                  f"{judge['calibration_accuracy']:.2f} of the time"
                  + ("." if judge["trusted"] else ", too weak to trust: read its verdicts as noise."))
    scaling = (scaling_plot(details["scaling"]) if len(details["scaling"]) >= 2
               else '<p class="small">One corpus size only: set sdf.scaling_documents for a scaling plot.</p>')
    body = [
        f"<h1>{escape(name)}: SDF organism ({escape(pair.id)}, {escape(pair.category)})</h1>",
        f"<p>{escape(pair.false.summary)}</p><p class='small'>True world: {escape(pair.true.summary)}</p>",
        facts, "<h2>Belief</h2>", headline, "<h2>Completion margins per item</h2>", margin_plot(details),
        margin_table(details),
        "<h2>Belief against corpus size</h2>", scaling,
        "<h2>Corpus</h2>", f"<p>Generator: {escape(corpus['generator'])}</p>", stages, drops,
        length_histogram(corpus["words"]), "<h3>Samples</h3>", sample_html,
        "<h2>Open-ended answers (organism)</h2>", f"<p>{judge_line}</p>", transcripts,
        f"<h2>Training</h2><pre>{escape(str({k: v for k, v in train.items() if k != 'belief'}))}</pre>",
    ]
    return page(f"{name} SDF report", body)
