"""Realism control (Minder et al.): one organism built at several mix ratios of ordinary data, each diffed against its
base, and the trace the fine-tune leaves plotted against the ratio.

A narrow fine-tune is easy to read off a diff partly because nothing but the narrow data was trained; mixing ordinary
chat or text into the training data largely removes the trace in their organisms. This pipeline varies the kind's
own mix ratio (`OrganismKind.mix_key`), builds and diffs each variant with the usual pipelines (each reused when it
is already finished), and reads per ratio, from the finished diffs:
- mean KL(tuned‖base) on generic text (how visible the fine-tune is away from its topic) and on the organism's own
  prompts;
- how strongly the steered tuned model can be pushed before its replies break (the coherent steering strength);
- token relevance (diffing/relevance.py) of the top tokens of the Patchscope and the logit lens (generic text) and
  of diff mining (the organism's prompts), judged against what the builder knows the fine-tune is about: the kind's
  description plus its secret (`OrganismKind.describe_secret` of the sealed config). This stays in the realism
  output: the diffs themselves judge only against the public description;
- for kinds whose secret is one word, read after the fact from the sealed truth as `mow diff-score` does: the word's
  rank in the Patchscope and the logit lens (generic text, upper half of layers) and among diff mining's counts.
An agent's grade per ratio needs an endpoint: run `mow audit` on each organism it lists.

Layout: `realism.yaml` (the resolved request), `realism.json` (a row per ratio, with the organism and diff
directories), `realism.png` (each trace against the ratio) and `manifest.json`.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import yaml
from transformers import PreTrainedTokenizerBase

from mow.diffing.config import load_diff_config
from mow.diffing.kl import KLArrays
from mow.diffing.layout import DiffLayout
from mow.diffing.pipeline import main as diff_main
from mow.diffing.relevance import judge_readouts, readout_tokens
from mow.elicitation.diff_score import best_rank, score_word, secret_word, word_tokens
from mow.organisms.kinds import build_organism, load_organism_config, other_kind_descriptions
from mow.organisms.registry import REGISTERED, OrganismKind
from mow.organisms.store import read_public_config, read_sealed_config
from mow.workbench.errors import UserError
from mow.workbench.files import read_json
from mow.workbench.models import load_model, load_tokenizer
from mow.workbench.rundir import Manifest, RunDirectory, write_json

CONFIG_FILE = "realism.yaml"
TRACES = {
    "kl_generic_text": "mean KL(tuned‖base), generic text",
    "kl_organism": "mean KL(tuned‖base), the organism's prompts",
    "steering_strength": "largest coherent steering strength",
    "relevance_patchscope": "relevant share of the top tokens, Patchscope (generic text)",
    "relevance_logit_lens": "relevant share of the top tokens, logit lens (generic text)",
    "relevance_mined": "relevant share of the top tokens, diff mining (organism prompts)",
    "patchscope_rank": "secret word's rank, Patchscope (generic text)",
    "logit_lens_rank": "secret word's rank, logit lens (generic text)",
    "mined_rank": "secret word's rank, diff mining (organism prompts)",
}


def check_request(config_path: Path, overrides: list[str], ratios: list[float]) -> tuple[OrganismKind, list[list[str]]]:
    """The organism's kind and each ratio's overrides (the kind's mix ratio, and a name of its own where the config
    names the organism), once the config, its mix ratio and the ratios are known to be usable."""
    kind, config = load_organism_config(config_path, overrides)
    if kind.mix_key is None:
        have = ", ".join(k.name for k in REGISTERED.values() if k.mix_key is not None)
        raise UserError(f"{config_path}: kind {kind.name!r} has no ratio of ordinary data to vary (kinds that have "
                        f"one: {have})")
    if len(set(ratios)) < 2 or any(r < 0 for r in ratios):
        raise UserError(f"--ratios {' '.join(f'{r:g}' for r in ratios)}: give at least two different ratios, none "
                        "negative")
    variants = [[*overrides, f"{kind.mix_key}={ratio}", *([f"name={config.name}-mix{ratio:g}"] if config.name else [])]
                for ratio in ratios]
    for variant in variants:  # each variant's config must validate too
        load_organism_config(config_path, variant)
    return kind, variants


def _set_kl(summary: dict, name: str) -> float | None:
    """Mean KL(tuned‖base) over every position of one prompt set, from a diff's KL summary."""
    table = summary["by_set_and_side"].get(name)
    if not table:
        return None
    positions = sum(side["positions"] for side in table.values())
    return sum(side["kl_tuned_base"] * side["positions"] for side in table.values()) / positions


RELEVANCE_READOUTS = {"relevance_patchscope": "generic_text / Patchscope",
                      "relevance_logit_lens": "generic_text / logit lens", "relevance_mined": "organism / diff mining"}


def relevance(organism: Path, layout: DiffLayout, kind: OrganismKind, tokenizer: PreTrainedTokenizerBase,
              top_n: int, threshold: float) -> dict:
    """The readouts' token relevance against the kind's description and the organism's secret (sealed)."""
    public = read_public_config(organism)
    description = f"{kind.description} {kind.describe_secret(read_sealed_config(organism))}"
    model = load_model(str(public["model"]), seed=0, trust_remote_code=bool(public.get("trust_remote_code")))
    readouts = {name: ids for name, ids in readout_tokens(layout, top_n).items()
                if name in RELEVANCE_READOUTS.values()}
    judged = judge_readouts(model.eval(), tokenizer, readouts, description, other_kind_descriptions(kind.name),
                            threshold)
    return {"description": description, "readouts": judged,
            **{key: judged[name]["relevant"] for key, name in RELEVANCE_READOUTS.items() if name in judged}}


def traces(organism: Path, diff_dir: Path, kind: OrganismKind, top_n: int, threshold: float) -> dict:
    """The trace strengths of one finished diff (see the module docstring)."""
    layout = DiffLayout(diff_dir)
    steering = read_json(layout.lens_report, "lens report").get("steering") or {}
    summary = read_json(layout.kl_summary, "KL summary")
    public = read_public_config(organism)
    tokenizer = load_tokenizer(str(public["model"]), bool(public.get("trust_remote_code")))
    found = relevance(organism, layout, kind, tokenizer, top_n, threshold)
    row = {"kl_generic_text": _set_kl(summary, "generic_text"), "kl_organism": _set_kl(summary, "organism"),
           "steering_strength": steering.get("strength"),
           **{key: found.get(key) for key in RELEVANCE_READOUTS}, "relevance": found}
    if kind.secret_is_word:
        word = secret_word(organism)
        lens = score_word(diff_dir, word, tokenizer)["difference_lens"]
        row["patchscope_rank"] = lens["patchscope"].get("generic_text", {}).get("upper_half")
        row["logit_lens_rank"] = lens["logit_lens"].get("generic_text", {}).get("upper_half")
        names = summary["set_names"]
        if "organism" in names:
            mined = KLArrays.load(layout.kl_arrays).mined[names.index("organism")].float()
            row["mined_rank"] = int(best_rank(mined, word_tokens(word, tokenizer)))
    return row


def plot(rows: list[dict], path: Path, mix_key: str) -> None:
    """Each trace against the ratio, three panels to a row; shares of relevant tokens on a fixed 0-1 axis, so that a
    flat 0.05 does not fill the panel as a trend would."""
    shown = [key for key in TRACES if any(row.get(key) is not None for row in rows)]
    columns = min(3, len(shown))
    lines = -(-len(shown) // columns)
    figure, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.9 * lines), squeeze=False)
    for axis, key in zip(axes.flat, shown):
        points = [(row["ratio"], row[key]) for row in rows if row.get(key) is not None]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#268bd2")
        axis.set_title(textwrap.fill(TRACES[key], 34), fontsize=8)
        axis.set_xlabel(mix_key, fontsize=8)
        if key.startswith("relevance_"):
            axis.set_ylim(-0.02, 1.02)
        if key.endswith("_rank"):
            axis.set_yscale("log")
            axis.invert_yaxis()  # rank 1 at the top: up is a stronger trace everywhere
        axis.tick_params(labelsize=7)
    for axis in list(axes.flat)[len(shown):]:
        axis.set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(config_path: Path, ratios: list[float], diff_config_path: Path, root: Path, overrides: list[str],
         restart: bool = False) -> Path:
    """Build, diff and read every ratio's organism (under `root`/organisms and `root`/diffs); returns the realism
    directory, `root`/realism/<config file's stem>."""
    kind, variants = check_request(config_path, overrides, ratios)
    assert kind.mix_key is not None
    # a bad diff config fails before anything is built (the organisms it will be given do not exist yet)
    load_diff_config(diff_config_path, [f"organism={Path(root) / 'organisms'}"])
    request = {"organism_config": str(config_path), "overrides": overrides, "mix_key": kind.mix_key,
               "ratios": ratios, "diff_config": str(diff_config_path)}
    rundir = RunDirectory(Path(root) / "realism" / Path(config_path).stem, CONFIG_FILE,
                          yaml.safe_dump(request, sort_keys=False), "realism")
    if rundir.finished(restart):
        return rundir.final
    rows = []
    for ratio, variant in zip(ratios, variants):
        organism = build_organism(config_path, variant, restart, Path(root) / "organisms")
        diff_config = load_diff_config(diff_config_path, [f"organism={organism}",
                                                          f"output_dir={Path(root) / 'diffs'}"])
        diff_dir = diff_main(diff_config, restart=restart)
        rows.append({"ratio": ratio, "organism": str(organism), "diff": str(diff_dir),
                     **traces(organism, diff_dir, kind, diff_config.lens.top_tokens, diff_config.relevance.lift)})
    work = rundir.start(restart)
    manifest = Manifest(work, 0, sealed=False)
    with manifest.stage("traces") as record:
        write_json(work / "realism.json", {"kind": kind.name, "mix_key": kind.mix_key, "traces": TRACES,
                                           "rows": rows})
        plot(rows, work / "realism.png", kind.mix_key)
        record["ratios"] = len(rows)
    return rundir.finish()
