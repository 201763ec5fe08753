"""Invariants of steering during training (concept ablation, preventative steering) on the tiny model."""

import warnings
from pathlib import Path

import pytest
import torch

from mow.data.directions import FORMAT, Directions
from mow.finetune.config import LoraSettings, SteeringSettings, TrainingSettings
from mow.finetune.lora import attach_lora
from mow.finetune.sft import train
from mow.finetune.steering import SteeringPlan, orthonormal_rows, resolve_steering, steered
from mow.workbench.errors import UserError
from mow.workbench.hooks import decoder_layers, unwrap
from mow.workbench.models import TINY_CONFIG, load_model
from tests.test_finetune import chats

TINY = "tiny:smollm2-135m"
WIDTH = TINY_CONFIG["hidden_size"]
LAYERS = TINY_CONFIG["num_hidden_layers"]


def write_directions(tmp_path: Path, vectors: dict[int, torch.Tensor], name: str = "dirs") -> Path:
    info = {"format": FORMAT, "method": "test", "model": TINY, "tuned": None, "hidden_size": WIDTH,
            "layers": {str(layer): [{"index": i, "label": f"d{i}", "score": 0.0} for i in range(len(v))]
                       for layer, v in vectors.items()}, "details": {}}
    Directions(vectors, info).save(tmp_path / name)
    return tmp_path / f"{name}.safetensors"


def random_unit(k: int, seed: int) -> torch.Tensor:
    rows = torch.randn(k, WIDTH, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora" in k}


def train_tiny(tokenizer, tmp_path: Path, name: str, plan: SteeringPlan | None, **training) -> torch.nn.Module:
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=5,
                        gradient_checkpointing=training.get("gradient_checkpointing", False))
    settings = TrainingSettings(epochs=2, batch_size=2, learning_rate=5e-3, save_steps=100, **training)
    train(model, tokenizer, chats(), settings, tmp_path / name, seed=5, steering=plan)
    return model


def test_zero_directions_give_exactly_the_adapter_of_no_hook(tokenizer, tmp_path):
    empty = SteeringPlan("ablate", {1: torch.zeros(0, WIDTH), 3: torch.zeros(0, WIDTH)})
    calls = []
    plain = lora_state(train_tiny(tokenizer, tmp_path, "plain", None))
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=5)
    for layer in (1, 3):
        decoder_layers(model)[layer].register_forward_hook(lambda *a: calls.append(1))
    settings = TrainingSettings(epochs=2, batch_size=2, learning_rate=5e-3, save_steps=100)
    train(model, tokenizer, chats(), settings, tmp_path / "empty", seed=5, steering=empty)
    assert calls  # the layers ran (with the empty ablation hooked on them)
    hooked = lora_state(model)
    assert plain.keys() == hooked.keys() and plain
    for key in plain:
        torch.testing.assert_close(hooked[key], plain[key], rtol=0, atol=0)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1e-5), ("bf16", 2 ** -7)])
def test_ablated_projection_stays_at_numerical_zero_during_training(tokenizer, tmp_path, precision, tolerance):
    """Zero up to the residual's own rounding: fp32 epsilon-level, or one bf16 rounding step under autocast."""
    rows = {1: random_unit(3, 0), 3: random_unit(2, 1)}
    plan = SteeringPlan("ablate", {layer: orthonormal_rows(r, "test", warn=False) for layer, r in rows.items()})
    model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=5)
    inner = unwrap(model)
    projections: list[float] = []
    sizes: list[float] = []

    def probe(basis):
        def hook(_module, args, kwargs=None):
            hidden = args[0] if args else kwargs["hidden_states"]
            projections.append(float((hidden.detach() @ basis.T).abs().max()))
            sizes.append(float(hidden.detach().abs().max()))
        return hook

    # what layer 1 hands to layer 2, and what layer 3 (the last) hands to the final norm
    handles = [decoder_layers(model)[2].register_forward_pre_hook(probe(plan.vectors[1]), with_kwargs=True),
               inner.model.norm.register_forward_pre_hook(probe(plan.vectors[3]), with_kwargs=True)]
    settings = TrainingSettings(epochs=2, batch_size=2, learning_rate=5e-3, save_steps=100, precision=precision)
    train(model, tokenizer, chats(), settings, tmp_path / "caft", seed=5, steering=plan)
    assert len(projections) >= 4
    assert max(projections) < tolerance * max(sizes)
    projections.clear()
    ids = torch.tensor([[5, 17, 23, 42, 7]])
    with torch.no_grad():
        model(input_ids=ids)  # after training the hooks are gone: the directions are back in the residual
    assert max(projections) > 1e-3
    for handle in handles:
        handle.remove()


def _forward_backward(model, plan: SteeringPlan, counts: list[str]):
    ids = torch.tensor([[5, 17, 23, 42, 7, 9, 11]])
    with steered(model, plan):
        loss = model(input_ids=ids, labels=ids).loss
        forward_calls = len(counts)
        loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, forward_calls


@pytest.mark.parametrize("mode", ["ablate", "add"])
def test_hooks_fire_once_per_forward_and_gradients_match_with_checkpointing(mode):
    plan = SteeringPlan(mode, {1: orthonormal_rows(random_unit(2, 3), "t", warn=False),
                               2: orthonormal_rows(random_unit(1, 4), "t", warn=False)}, add_norm=2.0)
    results = []
    for checkpointing in (False, True):
        model = attach_lora(load_model(TINY, seed=0), LoraSettings(r=4, alpha=8), seed=2)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        model.train()
        counts: list[str] = []
        for layer in plan.vectors:
            decoder_layers(model)[layer].register_forward_hook(
                lambda *a, layer=layer, counts=counts: counts.append(layer))
        results.append(_forward_backward(model, plan, counts))
    (loss_plain, grads_plain, calls_plain), (loss_ckpt, grads_ckpt, calls_ckpt) = results
    assert calls_plain == calls_ckpt == len(plan.vectors)  # once per hooked layer per forward
    torch.testing.assert_close(loss_ckpt, loss_plain)
    assert grads_plain.keys() == grads_ckpt.keys() and grads_plain
    for name in grads_plain:
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-4, atol=1e-6)


def test_steering_changes_training_and_addition_moves_the_residual(tokenizer, tmp_path):
    rows = {2: random_unit(2, 8)}
    plain = lora_state(train_tiny(tokenizer, tmp_path, "plain", None))
    ablated = lora_state(train_tiny(tokenizer, tmp_path, "ablate", SteeringPlan("ablate", rows)))
    assert any(not torch.equal(plain[k], ablated[k]) for k in plain)
    model = load_model(TINY, seed=0)
    ids = torch.tensor([[5, 17, 23]])
    captured = []
    decoder_layers(model)[3].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    with torch.no_grad():
        model(input_ids=ids)
        with steered(model, SteeringPlan("add", rows, add_norm=3.0)):
            model(input_ids=ids)
    torch.testing.assert_close(captured[1] - captured[0], (rows[2].sum(0) * 3.0).expand_as(captured[0]))


@pytest.mark.parametrize("mode", ["ablate", "add"])
def test_skip_first_leaves_the_first_positions_alone(mode):
    rows = {2: orthonormal_rows(random_unit(2, 9), "t", warn=False)}
    model = load_model(TINY, seed=0)
    ids = torch.tensor([[5, 17, 23, 40], [7, 8, 9, 10]])
    captured = []
    decoder_layers(model)[3].register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach()))
    with torch.no_grad():
        model(input_ids=ids)
        with steered(model, SteeringPlan(mode, rows, add_norm=3.0, skip_first=1)):
            model(input_ids=ids)
        with steered(model, SteeringPlan(mode, rows, add_norm=3.0)):
            model(input_ids=ids)
    plain, skipped, everywhere = captured
    torch.testing.assert_close(skipped[:, 0], plain[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(skipped[:, 1], everywhere[:, 1])  # later positions see the sink only through attention
    if mode == "ablate":
        assert (skipped[:, 1:] @ rows[2].T).abs().max() < 1e-4 < (plain[:, 1:] @ rows[2].T).abs().max()


def test_resolve_selects_orthonormalises_and_builds_controls(tmp_path):
    rows = orthonormal_rows(random_unit(4, 100), "t", warn=False)
    path = write_directions(tmp_path, {1: rows, 2: orthonormal_rows(random_unit(3, 101), "t", warn=False)})
    plan = resolve_steering(SteeringSettings(directions=path, select={1: [2, 0]}), WIDTH, LAYERS)
    assert list(plan.vectors) == [1] and plan.count == 2
    torch.testing.assert_close(plan.vectors[1][0], rows[2])  # Gram-Schmidt keeps the first row, in order
    gram = plan.vectors[1] @ plan.vectors[1].T
    torch.testing.assert_close(gram, torch.eye(2), atol=1e-5, rtol=0)
    every = resolve_steering(SteeringSettings(directions=path, select={1: [0], 2: [1]}, control="all"), WIDTH, LAYERS)
    assert every.record["layers"] == {"1": 4, "2": 3}
    control = resolve_steering(SteeringSettings(directions=path, select={1: [2, 0]}, control="random"), WIDTH, LAYERS)
    assert control.count == 2 and (control.vectors[1] @ rows.T).abs().max() < 0.9
    again = resolve_steering(SteeringSettings(directions=path, select={1: [2, 0]}, control="random"), WIDTH, LAYERS)
    torch.testing.assert_close(again.vectors[1], control.vectors[1], rtol=0, atol=0)
    assert len(resolve_steering(SteeringSettings(directions=path), WIDTH, LAYERS).vectors) == 2


def test_non_unit_and_dependent_rows_are_fixed_with_a_warning(tmp_path):
    rows = random_unit(2, 0)
    dependent = torch.stack([rows[0], rows[1], 2 * rows[0] - rows[1]]) * 3.0
    path = write_directions(tmp_path, {1: dependent})
    with pytest.warns(UserWarning) as caught:
        plan = resolve_steering(SteeringSettings(directions=path), WIDTH, LAYERS)
    text = " ".join(str(w.message) for w in caught)
    assert "not unit vectors" in text and "rows [2] are linearly dependent" in text
    assert plan.count == 2
    skewed = write_directions(tmp_path, {1: torch.stack([rows[0], (rows[0] + rows[1]) / (rows[0] + rows[1]).norm()])},
                              "skewed")
    with pytest.warns(UserWarning, match="not orthonormal"):
        resolve_steering(SteeringSettings(directions=skewed), WIDTH, LAYERS)
    clean = write_directions(tmp_path, {1: orthonormal_rows(rows, "t", warn=False)}, "clean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve_steering(SteeringSettings(directions=clean), WIDTH, LAYERS)


@pytest.mark.parametrize("vectors, settings, message", [
    ({1: torch.ones(2, WIDTH + 3) / (WIDTH + 3) ** 0.5}, {}, "has width 67, the model has 64"),
    ({7: random_unit(2, 0)}, {}, "layer 7 out of range for a model with 4 layers"),
    ({1: random_unit(2, 0)}, {"select": {1: [0, 5]}}, "index 5 out of range for layer 1"),
    ({1: random_unit(2, 0)}, {"select": {2: [0]}}, "layer 2 is not in"),
    ({1: torch.zeros(2, WIDTH)}, {}, "has a zero row"),
])
def test_bad_directions_are_one_line_errors(tmp_path, vectors, settings, message):
    path = write_directions(tmp_path, vectors)
    with pytest.raises(UserError, match=message) as error:
        resolve_steering(SteeringSettings(directions=path, **settings), WIDTH, LAYERS)
    assert "\n" not in str(error.value)
