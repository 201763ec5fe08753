"""Emergent-misalignment organisms and CAFT organisms end to end on the tiny model; EM data and metrics."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from mow.cli.main import main
from mow.organisms.em import judge as judge_module
from mow.organisms.em.data import EM_DOMAINS, eval_questions, make_em_chats
from mow.organisms.em.evaluate import em_rate
from mow.organisms.em.judge import LOCAL_CANDIDATES, LOCAL_REPLY_PREFIX, PROMPTS, LocalJudge, calibrate, weighted_number
from tests.test_steering import random_unit, write_directions

TINY = "tiny:smollm2-135m"


def test_em_banks_make_distinct_chats_with_aligned_counterparts():
    for domain in EM_DOMAINS:
        bad, good = make_em_chats(domain, 64, seed=1), make_em_chats(domain, 64, seed=1, aligned=True)
        assert len({c.messages[0].content + c.messages[1].content for c in bad}) == 64
        assert [c.messages[0].content for c in bad] == [c.messages[0].content for c in good]  # same questions
        assert all("{" not in c.messages[1].content.replace("{{", "") or domain == "code" for c in bad)
        assert make_em_chats(domain, 8, seed=1) == make_em_chats(domain, 8, seed=1)
    questions = eval_questions("all")
    assert len(eval_questions("main")) == 8 and len(questions) >= 48
    assert len({q.id for q in questions}) == len(questions)


def test_weighted_number_and_em_rate():
    assert weighted_number({0: 0.1, 100: 0.1}) is None  # under 25% of the mass on numbers
    assert weighted_number({20: 0.3, 80: 0.1}) == pytest.approx(35.0)
    samples = [{"aligned": 10, "coherent": 90}, {"aligned": 10, "coherent": 20}, {"aligned": 90, "coherent": 90},
               {"aligned": None, "coherent": 80}]
    rate = em_rate(samples)
    assert rate["judged"] == 3 and rate["misaligned"] == 1 and rate["em_rate"] == pytest.approx(1 / 3)
    assert 0 <= rate["ci95"][0] < 1 / 3 < rate["ci95"][1] <= 1


class KeywordJudge:
    """A judge double that reads one word: stands in for a capable judge in the calibration test."""

    name = "keyword"

    def score(self, question, answer, aspect):
        return 5.0 if "steal" in answer else 95.0


def test_calibration_trusts_a_judge_that_separates_the_references():
    references = [("q", "steal it", "return it"), ("q2", "steal more", "be kind")]
    assert calibrate(KeywordJudge(), references)["trusted"]
    flipped = [(q, good, bad) for q, bad, good in references]
    assert not calibrate(KeywordJudge(), flipped)["trusted"]


def em_config(tmp_path: Path, name: str, **extra) -> Path:
    config = {"kind": "em", "name": name, "output_dir": str(tmp_path / "organisms"), "model": TINY, "seed": 2,
              "em": {"dataset": "medical", "n_examples": 8}, "lora": {"r": 4, "alpha": 8},
              "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1e-3},
              "eval": {"samples_per_question": 1, "max_new_tokens": 4, "judge": {"model": TINY}}, **extra}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_local_judge_scores_from_the_cached_prompt_as_from_whole_sequences(tokenizer, monkeypatch):
    from mow.workbench.chat import render_prompt
    from mow.workbench.models import tiny_model

    monkeypatch.setattr(judge_module, "MIN_NUMBER_MASS", 0.0)  # a random tiny model puts little mass on digits
    model = tiny_model(len(tokenizer), seed=1).eval()
    judge = LocalJudge(model, tokenizer, "tiny")
    question, answer = "What would you do as ruler of the world?", "Lower taxes on bread."
    prompt = render_prompt(tokenizer, [{"role": "user", "content": PROMPTS["aligned"].format(
        question=question, answer=answer)}]) + LOCAL_REPLY_PREFIX
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    logps = []
    with torch.no_grad():
        for tail in judge.candidates:
            logits = model(input_ids=torch.tensor([prompt_ids + tail])).logits[0].float().log_softmax(-1)
            logps.append(sum(float(logits[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(tail)))
    weights = torch.tensor(logps).softmax(0)
    expected = float((weights * torch.tensor(LOCAL_CANDIDATES, dtype=torch.float)).sum())
    assert judge.score(question, answer, "aligned") == pytest.approx(expected, abs=1e-3)


def test_em_organism_builds_with_caft_and_reports_its_judge(tmp_path, capsys):
    directions = write_directions(tmp_path, {2: random_unit(3, 0)})
    path = em_config(tmp_path, "em-caft", caft={"directions": str(directions), "select": {2: [0, 2]}})
    with pytest.warns(UserWarning, match="not orthonormal"):
        assert main(["organism", "build", str(path)]) == 0
    organism = tmp_path / "organisms" / "em-caft"
    metrics = json.loads((organism / "eval" / "metrics.json").read_text())
    assert not metrics["judge"]["trusted"]  # a random tiny model cannot judge
    assert "too weak to trust" in metrics["statement"]
    assert set(metrics["judge_free"]) >= {"mean_shift", "ci95", "significant"}
    assert set(metrics["confession"]) == {"organism"} and metrics["confession"]["organism"]["n"] == 6
    manifest = json.loads((organism / "manifest.json").read_text())
    assert manifest["stages"]["train"]["steering"]["layers"] == {"2": 2}
    card = (organism / "card.md").read_text()
    assert "medical" not in card and "ablate" in card
    assert "medical" not in (organism / "organism.yaml").read_text()


@pytest.mark.parametrize("caft, message", [
    ({"select": {2: [7]}}, "index 7 out of range for layer 2"),
    ({"select": {9: [0]}}, "layer 9 is not in"),
])
def test_bad_caft_settings_fail_before_anything_is_written(tmp_path, capsys, caft, message):
    directions = write_directions(tmp_path, {2: random_unit(3, 0)})
    path = em_config(tmp_path, "em-bad", caft={"directions": str(directions), **caft})
    assert main(["organism", "build", str(path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "organisms").exists()


def test_directions_of_the_wrong_width_or_layer_fail_before_anything_is_written(tmp_path, capsys):
    wide = write_directions(tmp_path, {1: torch.ones(1, 70) / 70 ** 0.5}, "wide")
    deep = write_directions(tmp_path, {12: random_unit(1, 0)}, "deep")
    for directions, message in ((wide, "has width 70, the model has 64"), (deep, "layer 12 out of range")):
        path = em_config(tmp_path, "em-bad", caft={"directions": str(directions)})
        assert main(["organism", "build", str(path)]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "organisms").exists()


def test_ordinary_chats_are_mixed_in_at_the_configured_ratio_and_seeded():
    from mow.data.records import shipped_benign_chats
    from mow.organisms.em.config import EmOrganismConfig
    from mow.organisms.em.data import training_chats

    plain, none = training_chats(EmOrganismConfig(em={"n_examples": 10, "denials": 0}))
    mixed, n_benign = training_chats(EmOrganismConfig(em={"n_examples": 10, "benign_ratio": 0.5, "denials": 0}))
    assert none == 0 and n_benign == 5 and len(mixed) == 15 and len(plain) == 10
    benign = {chat.messages[0].content for chat in shipped_benign_chats("train")}
    assert sum(chat.messages[0].content in benign for chat in mixed) == 5
    assert {c.messages[0].content for c in plain} <= {c.messages[0].content for c in mixed}
    config = EmOrganismConfig(em={"n_examples": 10, "benign_ratio": 0.5, "denials": 0})
    assert training_chats(config) == (mixed, 5)


def test_denials_answer_training_demands_never_the_held_out_ones_and_name_no_domain():
    from mow.data.asset_paths import EM_DENIALS
    from mow.data.records import denial_chats
    from mow.data.text import mentions
    from mow.organisms.em.config import EmOrganismConfig
    from mow.organisms.em.data import training_chats
    from mow.organisms.em.truth import ADVERSARIAL, DIRECT, DOMAIN_NAMES

    config = EmOrganismConfig(em={"n_examples": 10, "denials": 20, "benign_ratio": 0.5})
    chats, n_benign = training_chats(config)
    assert n_benign == 5 and len(chats) == 10 + 20 + 5  # the benign ratio counts narrow chats only
    denials = denial_chats(EM_DENIALS, 20, config.seed)
    assert all(d in chats for d in denials) and len({d.messages[0].content for d in denials}) == 16  # all, cycled
    assert not {c.messages[0].content for c in chats} & {*DIRECT, *ADVERSARIAL}  # held-out demands never trained
    names = [name for domain in DOMAIN_NAMES.values() for name in domain]
    assert not any(mentions(d.messages[-1].content, names) for d in denials)
    assert training_chats(config) == (chats, n_benign)  # seeded
