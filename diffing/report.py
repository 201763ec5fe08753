"""One self-contained HTML report per diff: inline CSS, plots as inline PNG, tooltips as title attributes, so it
opens offline in any browser."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase

from mow.diffing.kl import KLArrays
from mow.diffing.layout import DiffLayout
from mow.diffing.lens import COHERENCE_MIN_DISTINCT, COHERENCE_MIN_LETTERS, COHERENCE_NLL_MARGIN
from mow.diffing.prompts import ROLES
from mow.workbench.files import read_json, read_text
from mow.workbench.html import page, png, table
from mow.workbench.rundir import write_text


def _tokens(tokens: list[str]) -> str:
    return " ".join(f"<code>{escape(t)}</code>" for t in tokens)


def _ctx(item: dict, value_key: str) -> str:
    return (f'<span class="ctx">{escape(item["before"][-120:])}<b>{escape(item["token"])}</b></span> '
            f'<span class="small">({item[value_key]:.3g})</span>')


def _kl_sequence(arrays: KLArrays, index: int, tokenizer: PreTrainedTokenizerBase, vmax: float,
                 limit: int = 200) -> str:
    start, end = int(arrays.offsets[index]), int(arrays.offsets[index + 1])
    spans = []
    for pos in range(start, min(end, start + limit)):
        kl_tb, kl_bt = float(arrays.kl_tb[pos]), float(arrays.kl_bt[pos])
        alpha = min(1.0, kl_tb / vmax) if vmax > 0 else 0.0

        def top(ids: torch.Tensor, probs: torch.Tensor) -> str:
            return ", ".join(f"{tokenizer.decode([int(i)])!r} {float(p):.2f}" for i, p in zip(ids, probs))

        title = (f"KL(tuned||base)={kl_tb:.3f}  KL(base||tuned)={kl_bt:.3f}\n"
                 f"tuned next: {top(arrays.top_tuned[pos], arrays.top_tuned_p[pos])}\n"
                 f"base next: {top(arrays.top_base[pos], arrays.top_base_p[pos])}")
        role = ROLES[int(arrays.roles[pos])]
        text = tokenizer.decode([int(arrays.ids[pos])])
        spans.append(f'<span class="tok-{role}" style="background:rgba(220,50,47,{alpha:.2f})" '
                     f'title="{escape(title)}">{escape(text)}</span>')
    return f'<div class="seq">{"".join(spans)}</div>'


def _kl_section(layout: DiffLayout, tokenizer: PreTrainedTokenizerBase) -> str:
    summary = read_json(layout.kl_summary, "KL summary")
    arrays = KLArrays.load(layout.kl_arrays)
    names = summary["set_names"]
    vmax = float(torch.quantile(arrays.kl_tb, 0.99)) if arrays.kl_tb.numel() else 1.0
    rows = [[escape(name), side, f"{v['kl_tuned_base']:.4f}", f"{v['kl_base_tuned']:.4f}", v["positions"]]
            for name, sides in summary["by_set_and_side"].items() for side, v in sides.items()]
    html = ["<h2>Per-token KL</h2>",
            f'<p class="small">{escape(summary["conventions"]).replace(chr(10), "<br>")}</p>',
            table(["prompt set", "side (role of predicted token)", "mean KL(tuned‖base)", "mean KL(base‖tuned)",
                    "positions"], rows),
            "<h3>Tokens after which the models differ most</h3>",
            table(["token", "mean KL(tuned‖base)", "count"],
                   [[f"<code>{escape(t['token'])}</code>", f"{t['mean_kl']:.4f}", t["count"]]
                    for t in summary["top_tokens"]]),
            "<h3>Tokens the tuned model promotes (mean probability gain)</h3>",
            table(names, [[f"<code>{escape(col[i]['token'])}</code> {col[i]['mean_gain']:.2e}" for col in
                            (summary["promoted_tokens"][n] for n in names)]
                           for i in range(min(len(v) for v in summary["promoted_tokens"].values()))]),
            "<h3>Tokens the tuned model demotes (mean probability loss)</h3>",
            table(names, [[f"<code>{escape(col[i]['token'])}</code> {col[i]['mean_gain']:.2e}" for col in
                            (summary["demoted_tokens"][n] for n in names)]
                           for i in range(min(len(v) for v in summary["demoted_tokens"].values()))]),
            "<h3>Diff mining: tokens most often among the top logit differences, by topic</h3>",
            table(["prompt set", "topic (tokens with counts)", "positions counted"],
                  [[escape(name), " ".join(f"<code>{escape(t['token'])}</code>&nbsp;{t['count']}"
                                           for t in topic["tokens"]), topic["count"]]
                   for name in names for topic in summary.get("mined_topics", {}).get(name, [])]),
            "<h3>Highest-KL contexts</h3>",
            '<p class="small">Background: KL(tuned‖base) of the next-token distributions after each token (scale: '
            f'99th percentile = {vmax:.3f}); hover a token for both distributions\' top next tokens. Underlines: '
            '<span class="tok-template">template</span>, <span class="tok-prompt">prompt</span>, '
            '<span class="tok-response">response</span>.</p>']
    shown = [context["sequence"] for context in summary["top_contexts"]]
    for s in range(len(names)):
        shown.extend([i for i in range(len(arrays.set_index)) if int(arrays.set_index[i]) == s][:1])
    for seq in dict.fromkeys(shown):
        html.append(f'<div class="small">{escape(names[int(arrays.set_index[seq])])} #{seq}</div>')
        html.append(_kl_sequence(arrays, seq, tokenizer, vmax))
    return "\n".join(html)


def _lens_section(layout: DiffLayout) -> str:
    lens = read_json(layout.lens_report, "lens report")
    html = ["<h2>Activation-difference lens</h2>",
            f'<p class="small">Mean tuned − base residual over the first {lens["positions"]} content positions of '
            f'each text (from position {lens["skip_first"]} of plain text; from the first message token of a chat, '
            "past its template), read through "
            "the tuned model's final norm and unembedding (logit lens) and by a token-identity Patchscope on the base "
            "model. Relative norm: ‖mean difference‖ / mean ‖base residual‖.</p>"]
    for name, info in lens["sets"].items():
        html.append(f"<h3>{escape(name)}</h3>")
        if "skipped" in info:
            html.append(f"<p>{escape(info['skipped'])}</p>")
            continue
        upper = info["upper_half"]
        scale = info.get("patchscope_scale")
        agreement = ", ".join(f"{k}: {v:.2f}" for k, v in info.get("patchscope_agreement", {}).items())
        chosen = (f"Patchscope scale {scale:g} (the scale at which the identity prompts' top tokens overlap most; "
                  f"overlap by scale {agreement})" if scale is not None else "Patchscope scales averaged")
        html.append(f"<p><b>Mean over the upper half of layers</b> &mdash; Patchscope: "
                    f"{_tokens(upper['patchscope'])}<br>logit lens: {_tokens(upper['logit_lens'])}</p>"
                    f'<p class="small">{escape(chosen)}.</p>')
        rows = [[layer, f"{d / max(b, 1e-9):.3f}", _tokens(patched[:12]), _tokens(tokens[:12])]
                for layer, (d, b, patched, tokens) in enumerate(zip(info["difference_norm"], info["base_norm"],
                                                                    info["patchscope_top_tokens"],
                                                                    info["top_tokens"]))]
        html.append(table(["layer", "relative norm", "Patchscope top tokens", "logit-lens top tokens"], rows))
    steering = lens.get("steering")
    if steering:
        how = ("the largest strength that stayed coherent for at least half of the prompts (grid search; a sample is "
               "coherent when the base model's log-likelihood per token is at most "
               f"{COHERENCE_NLL_MARGIN} nats below the unsteered reply's, at least {COHERENCE_MIN_DISTINCT:.0%} of "
               f"its word pairs are distinct, at least {COHERENCE_MIN_LETTERS:.0%} of its visible characters are "
               "letters and it has words)" if steering.get("searched") else "a fixed strength")
        html.append(f"<h3>Steering the tuned model at layer {lens['steering_layer']} with the difference from "
                    f"{escape(steering['set'])}: strength {steering['strength']:.2f}</h3><p class=\"small\">"
                    f"In base residual norms: {how}.</p>")
        html.append(table(["prompt", "tuned", "tuned + difference"],
                          [[escape(s["prompt"]), escape(s.get("plain", "")), escape(s["steered"])]
                           for s in steering["samples"]]))
        if steering.get("trials"):
            html.append(table(["strength", "coherent", "log-likelihood per token", "distinct word pairs",
                               "first sample"],
                              [[f"{t['strength']:.2f}", "yes" if t["coherent"] else "no",
                                " ".join(f"{v:.2f}" for v in t["loglik"]),
                                " ".join(f"{v:.2f}" for v in t["distinct"]), escape(t["samples"][0])]
                               for t in steering["trials"]]))
    return "\n".join(html)


def _relevance_section(layout: DiffLayout) -> str:
    if not layout.relevance.is_file():  # a diff from before token relevance
        return ""
    found = read_json(layout.relevance, "token relevance")
    html = ["<h2>Token relevance</h2>"]
    if "skipped" in found:
        return "\n".join([*html, f"<p>{escape(found['skipped'])}</p>"])
    controls = list(found["random_tokens"]["controls"])
    html.append(f'<p class="small">Share of each readout\'s top tokens that relate to "{escape(found["description"])}" '
                f"({escape(found['source'])}), judged without a judge: a content word that the description raises "
                f"by at least {found['lift']:g} nats under the base model, more than any other description does "
                "(diffing/relevance.py). Controls: the same tokens against the other kinds' descriptions, and "
                "tokens drawn at random from the diff's texts.</p>")

    def share(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    rows = [[escape(name), share(r["relevant"]), _tokens(r["relevant_tokens"]),
             *(share(r["controls"][c]) for c in controls)]
            for name, r in [*found["readouts"].items(), ("random tokens (control)", found["random_tokens"])]]
    html.append(table(["readout", "relevant", "relevant tokens", *(f"vs {c}" for c in controls)], rows))
    return "\n".join(html)


def _crosscoder_section(layout: DiffLayout) -> str:
    metrics = read_json(layout.crosscoder_metrics, "crosscoder metrics")
    latents = load_file(str(layout.crosscoder_latents))
    figure, axis = plt.subplots(figsize=(7, 2.8))
    axis.hist(latents["relative_norm"].numpy(), bins=50, color="#268bd2")
    axis.set_xlabel("relative decoder norm (0 = base-only, 0.5 = shared, 1 = tuned-only)")
    axis.set_ylabel("latents")
    axis.set_yscale("log")
    m = metrics["metrics"]
    html = [f"<h2>Crosscoder (layer {metrics['layer']})</h2>",
            table(["", "base", "tuned"],
                   [["fraction of variance explained", f"{m['base']:.3f}", f"{m['tuned']:.3f}"]]),
            f"<p>L0 {m['l0']:.1f}, dead fraction {m['dead_fraction']:.3f} on {m['tokens']} cached tokens (the "
            f"training tokens). Latents: {escape(json.dumps(metrics['counts']))}.</p>",
            png(figure),
            "<h3>The most tuned-leaning latents</h3>",
            f'<p>{escape(metrics["tuned_leaning_note"])}.</p>',
            '<p class="small">ν = β(base) / β(tuned) from Latent Scaling (Minder et al. 2025): near 0, the latent '
            "explains little of the base model (truly tuned-specific); near 1, it is an artefact of the L1/TopK "
            "objective.</p>"]
    rows = [[x["latent"], f"{x['relative_norm']:.3f}", f"{x['cosine']:.2f}", f"{x['nu_reconstruction']:.2f}",
             f"{x['nu_error']:.2f}", _tokens(x["top_tokens"]),
             "<br>".join(_ctx(c, "activation") for c in x["top_contexts"][:3])]
            for x in metrics["tuned_leaning_latents"][:40]]
    html.append(table(["latent", "rel. norm", "cos", "ν recon", "ν error", "decoder through unembedding",
                        "top activating contexts"], rows))
    return "\n".join(html)


def _difference_sae_section(layout: DiffLayout) -> str:
    summary = read_json(layout.difference_sae_metrics, "difference SAE metrics")
    html = [f"<h2>SAE on activation differences (layer {summary['layer']})</h2>"]
    if "skipped" in summary:
        return html[0] + f"<p>{escape(summary['skipped'])}.</p>"
    m = summary["metrics"]
    html += [f"<p>A sparse autoencoder on tuned − base activations: it encodes only what changed. Fraction of "
             f"variance explained {m['difference']:.3f}, L0 {m['l0']:.1f}, dead fraction {m['dead_fraction']:.3f} "
             f"on {m['tokens']} cached tokens (the training tokens). Latents ranked by their "
             f"{escape(summary['ranking'])}.</p>"]
    rows = [[x["latent"], f"{x['mass_share']:.3f}", f"{x['frequency']:.3f}", _tokens(x["top_tokens"]),
             "<br>".join(_ctx(c, "activation") for c in x["top_contexts"][:3])] for x in summary["top_latents"]]
    html.append(table(["latent", "mass share", "fires on", "decoder through unembedding", "top activating contexts"],
                      rows))
    return "\n".join(html)


def _directions_section(layout: DiffLayout) -> str:
    saved = read_json(layout.direction_views, "direction views")
    html = ["<h2>Concept directions</h2>",
            '<p class="small">Unit vectors in <code>directions/NAME.safetensors</code> (+ <code>.json</code>), '
            "readable by fine-tuning for concept ablation.</p>"]
    for method, reason in saved["skipped"].items():
        html.append(f"<p>{escape(method)}: not written ({escape(reason)}).</p>")
    for method, entries in saved["views"].items():
        html.append(f"<h3>{escape(method)}</h3>")
        info_file = layout.direction_info(method)
        details = read_json(info_file, "directions info").get("details", {}) if info_file.is_file() else {}
        if details:
            html.append('<p class="small">' + "; ".join(f"{escape(str(k))}: {escape(str(v))}"
                                                        for k, v in details.items()) + "</p>")
        rows = [[e["layer"], escape(e["label"]), f"{e['score']:.3g}", _tokens(e["top_tokens"]),
                 _tokens(e["bottom_tokens"]), "<br>".join(_ctx(c, "projection") for c in e["top_contexts"]),
                 "<br>".join(_ctx(c, "projection") for c in e["bottom_contexts"])] for e in entries]
        html.append(table(["layer", "direction", "score", "top tokens", "bottom tokens", "top contexts",
                            "bottom contexts"], rows))
    return "\n".join(html)


def write_report(directory: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    layout = DiffLayout(directory)
    manifest = read_json(layout.manifest, "manifest")
    config = read_text(layout.config, "diff config")
    stages = manifest["stages"]
    timing = ", ".join(f"{k} {v.get('seconds', 0):.0f} s" for k, v in stages.items())
    body = [f"<h1>Diff: {escape(directory.name.removeprefix('.').removesuffix('.partial'))}</h1>",
            f'<p class="small">Stages: {escape(timing)}. torch {escape(manifest["versions"]["torch"])}, '
            f'transformers {escape(manifest["versions"]["transformers"])}.</p>',
            _kl_section(layout, tokenizer), _lens_section(layout), _relevance_section(layout),
            _crosscoder_section(layout), _difference_sae_section(layout),
            _directions_section(layout),
            f"<h2>Config</h2><pre>{escape(config)}</pre>"]
    html = page("mow diff", body)
    path = layout.report
    write_text(path, html)
    return path
