"""Crosscoders on synthetic activations with planted shared, tuned-only and base-only features."""

import json
from dataclasses import dataclass

import pytest
import torch

from mow.diffing.config import CrosscoderSettings
from mow.diffing.crosscoder import (
    Crosscoder,
    _lr_factor,
    classify_latents,
    decoder_cosine,
    evaluate_crosscoder,
    latent_scaling,
    relative_decoder_norm,
    top_activations,
    train_crosscoder,
)
from mow.workbench.errors import UserError

D = 32
N_SHARED, N_TUNED, N_BASE = 12, 6, 6
# each token turns each feature on with this probability: 24 * 0.083 = 2 active features per token, matching k=2
P_ACTIVE = 0.083

SETTINGS = {
    # batchtopk: k equal to the true number of active features; k larger makes BatchTopK split features in two
    "batchtopk": CrosscoderSettings(variant="batchtopk", latents=64, k=2, aux_k=32, dead_after_tokens=5000,
                                    batch_size=256, epochs=8, learning_rate=3e-3),
    "l1": CrosscoderSettings(variant="l1", latents=64, l1_coefficient=0.5, batch_size=256, epochs=8,
                             learning_rate=1e-3),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These matrices are tiny: one thread is fastest, and two threads on a busy 2-core machine are ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Planted:
    x: torch.Tensor  # (tokens, 2, D) raw activations
    on: torch.Tensor  # (tokens, features) bool
    directions: torch.Tensor  # (features, D) unit vectors: shared, then tuned-only, then base-only
    scale: torch.Tensor

    def batches(self, size: int = 256):
        return self.x.split(size)


def planted(seed: int = 0, tokens: int = 30_000) -> Planted:
    g = torch.Generator().manual_seed(seed)
    n = N_SHARED + N_TUNED + N_BASE
    directions = torch.randn(n, D, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    on = torch.rand(tokens, n, generator=g) < P_ACTIVE
    magnitude = on * (1 + torch.rand(tokens, n, generator=g))
    shared, tuned = slice(0, N_SHARED), slice(N_SHARED, N_SHARED + N_TUNED)
    base = slice(N_SHARED + N_TUNED, n)
    x_base = magnitude[:, shared] @ directions[shared] + magnitude[:, base] @ directions[base]
    x_tuned = magnitude[:, shared] @ directions[shared] + magnitude[:, tuned] @ directions[tuned]
    # the tuned model's activations are 3x larger: normalisation has to even that out
    x = torch.stack([x_base, 3 * x_tuned], dim=1) + 0.01 * torch.randn(tokens, 2, D, generator=g)
    scale = (D / x.pow(2).sum(-1).mean(0)).sqrt()  # mean squared norm d in each model, as the activation cache does
    return Planted(x, on, directions, scale)


@pytest.fixture(scope="module")
def data() -> Planted:
    return planted()


@pytest.fixture(scope="module")
def trained(data) -> dict:
    return {variant: train_crosscoder(data.batches, D, settings, data.scale, progress=False)
            for variant, settings in SETTINGS.items()}


def best_latents(model: Crosscoder, directions: torch.Tensor, sides: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For each planted direction: the latent whose decoder rows (on `sides`) match it best, and the worst of the
    cosines on those sides."""
    rows = model.W_dec.detach()
    cos = torch.einsum("mfd,nd->mnf", rows / rows.norm(dim=-1, keepdim=True), directions)[sides]  # (sides, n, F)
    best = cos.mean(0).argmax(1)
    return best, cos[:, torch.arange(len(directions)), best].min(0).values


@pytest.mark.parametrize("variant", ["batchtopk", "l1"])
def test_planted_features_are_recovered_and_separated(variant, data, trained):
    model, history = trained[variant]
    assert not model.training
    assert history[-1]["loss"] < history[0]["loss"] and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    shared, tuned = slice(0, N_SHARED), slice(N_SHARED, N_SHARED + N_TUNED)
    base = slice(N_SHARED + N_TUNED, None)
    match_shared, cos_shared = best_latents(model, data.directions[shared], [0, 1])
    match_tuned, cos_tuned = best_latents(model, data.directions[tuned], [1])
    match_base, cos_base = best_latents(model, data.directions[base], [0])
    for cos in (cos_shared, cos_tuned, cos_base):
        assert cos.min() > 0.9
    assert len(set(torch.cat([match_shared, match_tuned, match_base]).tolist())) == N_SHARED + N_TUNED + N_BASE

    rel = relative_decoder_norm(model)
    assert rel[match_tuned].min() > 0.9
    assert rel[match_base].max() < 0.1
    assert rel[match_shared].min() > 0.3 and rel[match_shared].max() < 0.7
    groups = classify_latents(rel)
    assert set(match_tuned.tolist()) <= set(groups["tuned_only"].tolist())
    assert set(match_base.tolist()) <= set(groups["base_only"].tolist())
    assert decoder_cosine(model)[match_shared].min() > 0.9

    metrics = evaluate_crosscoder(model, data.batches(4096))
    assert metrics["base"] > 0.8 and metrics["tuned"] > 0.8
    assert metrics["tokens"] == len(data.x)

    scaling = latent_scaling(model, data.batches(4096), torch.cat([match_tuned, match_shared]))
    assert scaling["nu_error"][:N_TUNED].abs().max() < 0.2
    assert scaling["nu_reconstruction"][:N_TUNED].abs().max() < 0.3
    assert scaling["nu_error"][N_TUNED:].min() > 0.5
    assert scaling["nu_reconstruction"][N_TUNED:].min() > 0.5

    values, rows = top_activations(model, data.batches(1000), n=8)
    for feature, latent in enumerate(match_tuned.tolist()):
        assert (rows[latent] >= 0).all()
        assert data.on[rows[latent], N_SHARED + feature].all()  # its strongest tokens carry the planted feature


def test_batchtopk_inference_l0_and_dead_tracking(data, trained):
    model, history = trained["batchtopk"]
    k = model.settings.k
    assert model.threshold > 0
    l0 = evaluate_crosscoder(model, data.batches(4096))["l0"]
    assert k / 2 <= l0 <= 2 * k
    # the threshold makes inference independent of how tokens are batched
    assert torch.allclose(model.encode(data.x[:7]), model.encode(data.x[:4096])[:7], atol=1e-5)
    # 24 planted features for 64 latents: the tracker finds dead latents, but never one the features need
    assert 0 < history[-1]["dead"] <= model.latents - (N_SHARED + N_TUNED + N_BASE)
    assert all(h["sparsity_or_aux"] >= 0 for h in history)


def test_auxiliary_loss_revives_dead_latents(data):
    """Half the latents get tiny decoder rows, so they never make the top k; only the auxiliary loss trains them."""
    fired_again = {}
    for aux in (0.0, 1 / 32):
        torch.manual_seed(0)
        model = Crosscoder(D, CrosscoderSettings(latents=64, k=2, aux_k=16, aux_coefficient=aux), data.scale)
        dead = torch.arange(64) >= 32
        with torch.no_grad():
            model.W_dec[:, dead] *= 1e-3
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        fired = torch.zeros(64, dtype=torch.bool)
        for epoch in range(2):
            for x in data.batches():
                loss, parts, code = model.training_loss(x, dead)
                assert torch.isfinite(loss) and (parts["sparsity_or_aux"] > 0) == (aux > 0)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                if epoch == 1:
                    fired |= code.fired()
        fired_again[aux] = int(fired[dead].sum())
    assert fired_again[0.0] == 0
    assert fired_again[1 / 32] >= 8


def test_latent_scaling_on_a_hand_built_crosscoder():
    """Latent j reads tuned coordinate j; the base model carries the same feature at c_j times its tuned size, and
    the base decoder row has its own (wrong) norm: both betas must recover c_j exactly."""
    c = torch.tensor([0.0, 0.5, 1.0, 2.0])
    model = Crosscoder(4, CrosscoderSettings(variant="l1", latents=4))
    with torch.no_grad():
        model.W_enc.zero_()
        model.W_enc[1] = torch.eye(4)
        model.W_dec[0] = torch.diag(torch.tensor([0.3, 0.0, 1.0, 5.0]))
        model.W_dec[1] = 2 * torch.eye(4)  # f_j = tuned_j and a tuned row of norm 2: beta_tuned = 1 / 2
    tuned = torch.rand(300, 4, generator=torch.Generator().manual_seed(0)) + 0.1
    x = torch.stack([tuned * c, tuned], dim=1)
    scaling = latent_scaling(model, x.split(64), torch.tensor([3, 1, 0]))
    for target in ("recon", "error"):
        assert torch.allclose(scaling[f"beta_{target}_base"], c[[3, 1, 0]] / 2, atol=1e-5)
        assert torch.allclose(scaling[f"beta_{target}_tuned"], torch.full((3,), 0.5), atol=1e-5)
    assert torch.allclose(scaling["nu_reconstruction"], c[[3, 1, 0]], atol=1e-5)
    assert torch.allclose(scaling["nu_error"], c[[3, 1, 0]], atol=1e-5)


@pytest.mark.parametrize("aux_k", [8, 2])  # 13 dead latents: the auxiliary loss's dense path, then its sparse one
def test_sparse_training_step_equals_the_dense_masked_one(data, aux_k):
    """The sparse path (embedding bags, gradients through the chosen entries only) computes the same loss and the same
    gradient for every parameter as autograd through dense products with the code as a mask."""
    torch.manual_seed(3)
    settings = CrosscoderSettings(latents=64, k=4, aux_k=aux_k)
    model = Crosscoder(D, settings, data.scale)
    x, dead = data.x[:300], torch.arange(64) % 5 == 0
    loss, _, code = model.training_loss(x, dead)
    loss.backward()
    sparse = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    x_norm = model.normalize(x)
    pre = torch.relu(torch.einsum("bmd,mdf->bf", x_norm, model.W_enc) + model.b_enc)
    error = x_norm - (torch.einsum("bf,mfd->bmd", pre * (code.dense() > 0), model.W_dec) + model.b_dec)
    dead_pre = pre[:, dead]
    top = dead_pre.detach().topk(settings.aux_k, dim=1).indices
    predicted = torch.einsum("bn,mnd->bmd", torch.zeros_like(dead_pre).scatter(1, top, dead_pre.gather(1, top)),
                             model.W_dec[:, dead])
    residual = error.detach()
    aux = (residual - predicted).pow(2).sum() / residual.pow(2).sum()
    dense_loss = error.pow(2).sum((1, 2)).mean() + settings.aux_coefficient * aux
    dense_loss.backward()
    assert torch.allclose(loss, dense_loss, rtol=1e-5)
    for name, p in model.named_parameters():
        assert torch.allclose(sparse[name], p.grad, rtol=1e-4, atol=1e-6), name


def test_auxiliary_loss_only_moves_dead_latents(data):
    grads = {}
    dead = torch.arange(16) % 4 == 0
    for aux in (0.0, 1.0):
        torch.manual_seed(1)
        model = Crosscoder(D, CrosscoderSettings(latents=16, k=2, aux_coefficient=aux), data.scale)
        model.training_loss(data.x[:512], dead)[0].backward()
        grads[aux] = model.decoder_rows.grad.view(16, 2, D).transpose(0, 1)
    changed = (grads[1.0] - grads[0.0]).abs().sum((0, 2)) > 0
    assert torch.equal(changed, dead)


def test_save_load_round_trip(tmp_path, data, trained):
    model = trained["batchtopk"][0]
    model.save(tmp_path / "xc")
    loaded = Crosscoder.load(tmp_path / "xc")
    assert loaded.settings == model.settings and loaded.d == D and not loaded.training
    assert torch.equal(loaded.scale, model.scale) and torch.equal(loaded.threshold, model.threshold)
    x = data.x[:500]
    for ours, theirs in zip(model(x), loaded(x)):
        assert torch.equal(ours, theirs)

    with pytest.raises(UserError, match="not found"):
        Crosscoder.load(tmp_path / "missing")
    config = json.loads((tmp_path / "xc" / "crosscoder.json").read_text())
    config["d"] = D + 1
    (tmp_path / "xc" / "crosscoder.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="do not match"):
        Crosscoder.load(tmp_path / "xc")
    config["d"], config["settings"]["latents"] = D, 0
    (tmp_path / "xc" / "crosscoder.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="latents"):
        Crosscoder.load(tmp_path / "xc")


def test_scale_factors_normalise_the_inputs(data, trained):
    model = trained["l1"][0]
    factor = torch.tensor([10.0, 0.25])
    rescaled = Crosscoder(D, model.settings, model.scale / factor)
    rescaled.load_state_dict({**model.state_dict(), "scale": model.scale / factor})
    x = data.x[:3000]
    x_big = x * factor[:, None]
    assert torch.allclose(model.normalize(x), rescaled.normalize(x_big), atol=1e-5)
    assert torch.allclose(rescaled.denormalize(rescaled.normalize(x_big)), x_big, atol=1e-5)
    ours, theirs = evaluate_crosscoder(model, [x]), evaluate_crosscoder(rescaled, [x_big])
    assert ours["tokens"] == theirs["tokens"]
    for key in ("base", "tuned", "l0", "dead_fraction"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4)
    # and scaling one model's inputs without telling the crosscoder does change the result
    wrong = evaluate_crosscoder(model, [x_big])
    assert min(wrong["base"], wrong["tuned"]) < min(ours["base"], ours["tuned"]) - 0.1


def test_batches_are_rechunked_to_the_batch_size(data):
    settings = CrosscoderSettings(latents=32, k=2, batch_size=128, epochs=1, learning_rate=3e-3)
    x = data.x[:2000]
    chunked, history = train_crosscoder(lambda: x.split(128), D, settings, data.scale, progress=False)
    ragged, _ = train_crosscoder(lambda: [x[:5], x[5:400], x[400:1000], x[1000:]], D, settings, data.scale,
                                 progress=False)
    assert history[-1]["step"] == 16  # ceil(2000 / 128)
    for name, tensor in chunked.state_dict().items():
        assert torch.allclose(tensor, ragged.state_dict()[name], atol=1e-6), name


def test_bad_inputs_raise_user_errors(data, trained):
    model = trained["l1"][0]
    settings = CrosscoderSettings(latents=16, k=2, epochs=1)
    with pytest.raises(UserError, match=r"\(64, 2, 31\)"):
        train_crosscoder(lambda: [torch.zeros(64, 2, D - 1)], D, settings, data.scale, progress=False)
    with pytest.raises(UserError, match=r"\(64, 32\)"):
        evaluate_crosscoder(model, [torch.zeros(64, D)])
    with pytest.raises(UserError, match=r"\(8, 3, 32\)"):
        model.encode(torch.zeros(8, 3, D))
    with pytest.raises(UserError, match="k=16"):
        Crosscoder(D, CrosscoderSettings(latents=16, k=16))
    for scale in (torch.tensor([1.0, 0.0]), torch.tensor([1.0, float("nan")]), torch.ones(3)):
        with pytest.raises(UserError, match="scale"):
            Crosscoder(D, settings, scale)
    with pytest.raises(UserError, match="no activations"):
        train_crosscoder(lambda: [], D, settings, data.scale, progress=False)


def test_decoder_geometry_helpers():
    model = Crosscoder(4, CrosscoderSettings(latents=4, k=1))
    with torch.no_grad():
        model.W_dec.copy_(torch.tensor([
            [[1.0, 0, 0, 0], [0, 0.0, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]],  # base rows
            [[0.0, 0, 0, 0], [0, 3.0, 0, 0], [0, 0, 2, 0], [0, 0, 0, -0.5]],  # tuned rows
        ]))
    rel = relative_decoder_norm(model)
    assert torch.allclose(rel, torch.tensor([0.0, 1.0, 0.5, 0.25]))
    assert torch.allclose(decoder_cosine(model)[2:], torch.tensor([1.0, -1.0]))
    groups = classify_latents(rel)
    assert {name: idx.tolist() for name, idx in groups.items()} == {
        "tuned_only": [1], "base_only": [0], "shared": [2], "other": [3]}
    with pytest.raises(UserError, match="overlap"):
        classify_latents(rel, tuned_only=0.5)


def test_top_activations_match_a_full_sort(data, trained):
    model = trained["batchtopk"][0]
    x = data.x[:3000]
    values, rows = top_activations(model, [x[:1], x[1:700], x[700:]], n=5)
    f = model.encode(x).T
    expected = f.topk(5, dim=1).values
    assert torch.allclose(values, expected, atol=1e-5)
    fired = values > 0
    assert torch.allclose(f.gather(1, rows.clamp_min(0))[fired], values[fired], atol=1e-5)
    assert (rows[~fired] == -1).all() and (values[~fired] == 0).all()
    assert (~fired).any()  # the dead latents of this model fill their rows with -1


def test_learning_rate_schedule():
    factors = [_lr_factor(step, 100) for step in range(100)]
    assert factors[0] == pytest.approx(0.2)  # warmup over the first 5 steps
    assert factors[4:80] == [1.0] * 76
    assert factors[80] == 1.0 and factors[90] == pytest.approx(0.5) and factors[99] == pytest.approx(0.05)


def test_one_source_is_a_sparse_autoencoder_that_finds_planted_difference_features(tmp_path):
    """The difference SAE of `mow diff` is this trainer with one source: it recovers sparse planted directions, keeps
    its source count through a save, and refuses the two-model readouts."""
    g = torch.Generator().manual_seed(3)
    n, tokens = 8, 20_000
    directions = torch.randn(n, D, generator=g)
    directions /= directions.norm(dim=1, keepdim=True)
    on = torch.rand(tokens, n, generator=g) < 0.25
    x = ((on * (1 + torch.rand(tokens, n, generator=g))) @ directions)[:, None] * 5
    x += 0.01 * torch.randn(tokens, 1, D, generator=g)
    scale = (D / x.pow(2).sum(-1).mean()).sqrt().reshape(1)
    settings = CrosscoderSettings(latents=32, k=2, aux_k=16, dead_after_tokens=5000, epochs=6, learning_rate=3e-3)
    model, _ = train_crosscoder(lambda: x.split(256), D, settings, scale, progress=False)
    assert model.sources == 1 and model.W_dec.shape == (1, 32, D)
    rows = model.W_dec[0].detach()
    cos = (rows / rows.norm(dim=-1, keepdim=True)) @ directions.T  # (F, n)
    assert cos.max(0).values.min() > 0.9  # every planted direction has a latent
    metrics = evaluate_crosscoder(model, x.split(4096), ("difference",))
    assert metrics["difference"] > 0.8 and metrics["tokens"] == tokens
    with pytest.raises(UserError, match="2 source names"):
        evaluate_crosscoder(model, x.split(4096), ("base",) * 2)
    for readout in (lambda: relative_decoder_norm(model), lambda: decoder_cosine(model),
                    lambda: latent_scaling(model, x.split(4096), torch.tensor([0]))):
        with pytest.raises(UserError, match="compares two models"):
            readout()
    with pytest.raises(UserError, match=r"\(8, 2, 32\)"):
        model.encode(torch.zeros(8, 2, D))
    model.save(tmp_path / "sae")
    loaded = Crosscoder.load(tmp_path / "sae")
    assert loaded.sources == 1 and torch.equal(loaded.encode(x[:100]), model.encode(x[:100]))
