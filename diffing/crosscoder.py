"""Crosscoders (Lindsey et al. 2024; Minder et al. 2025): one sparse dictionary over paired activations of two models.

Model index 0 is the BASE model, index 1 the TUNED model. Activations come as raw (B, 2, d) float tensors of one layer;
the trainer knows nothing about language models. Shuffling and caching are the caller's business.

The same code with one source, (B, 1, d), is a plain sparse autoencoder: `mow diff` trains one on the tuned − base
activation differences (diffing/difference_sae.py). What compares the two models (relative decoder norm, decoder
cosine, Latent Scaling) needs two sources and says so otherwise.

Normalisation: each model's activations are multiplied by `scale[m]` before encoding (the caller picks it, usually so
that each model's mean squared norm is d), and everything below (losses, decoder norms, latent scaling) lives in that
normalised space, so a model with larger activations does not dominate the dictionary.

Relative decoder norm (Minder et al.): `0.5 * ((|d_tuned| - |d_base|) / max(|d_tuned|, |d_base|) + 1)`, in [0, 1].
Orientation: 0 = base-only latent, 0.5 = shared (equal norms), 1 = tuned-only latent.

Variants:
- "l1": ReLU latents, sparsity penalty `f_i * (|d_i^base| + |d_i^tuned|)`. Decoder rows are not constrained to unit
  norm: their norms carry the per-model information.
- "batchtopk" (Bussmann et al. 2024): in training, the k*B largest scores `f_i * (|d_i^base| + |d_i^tuned|)` of a
  batch of B tokens survive; at inference, a latent fires when its score exceeds a threshold learned in training
  (an EMA of the smallest surviving score), so evaluation does not depend on the batch. An auxiliary loss
  (Gao et al. 2024) lets dead latents model the reconstruction error.

Training is sparse where the code is: a BatchTopK batch keeps k of F latents per token, so the decoder, its backward
pass and the encoder's weight gradient work on the k*B active entries only (`SparseCode`, embedding-bag kernels,
which read table rows in place instead of materialising them); only the encoder's forward product is dense. Autograd
through a masked dense code would do four more dense (B x 2d x F) products per step. Initialisation follows the
reference trainer (Minder et al.'s crosscoder_learning): unit-norm decoder rows in each model, the encoder their
transpose, the decoder bias at the geometric median of the first batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from mow.diffing.config import CrosscoderSettings
from mow.workbench.config import format_validation_error
from mow.workbench.errors import UserError
from mow.workbench.files import read_json

MODELS = ("base", "tuned")
WEIGHTS_FILE = "crosscoder.safetensors"
CONFIG_FILE = "crosscoder.json"
# initial decoder row norm per model: unit rows for BatchTopK (as the reference trainer), small rows for the L1
# variant, whose penalty scales with the norms (Anthropic's recipe)
INIT_DECODER_NORM = {"batchtopk": 1.0, "l1": 0.1}
MEDIAN_ITERATIONS = 100
THRESHOLD_DECAY = 0.99
# the auxiliary loss runs dense over the dead latents' rows while they number at most this many times aux_k: matmuls
# do a multiply-add about ten times faster than the sparse kernels' gathers (measured, 2 CPU cores)
DENSE_AUX_RATIO = 4
LOG_EVERY = 20
WARMUP_FRACTION = 0.05
DECAY_FRACTION = 0.2


def check_batch(x: object, d: int, sources: int = 2) -> torch.Tensor:
    """A raw activation batch as float32, or a UserError naming its shape."""
    if not isinstance(x, torch.Tensor):
        raise UserError(f"activation batch is a {type(x).__name__}; expected a tensor of shape "
                        f"(batch, {sources}, {d})")
    if x.ndim != 3 or x.shape[1] != sources or x.shape[2] != d:
        raise UserError(f"activation batch has shape {tuple(x.shape)}; expected (batch, {sources}, {d})")
    if not x.is_floating_point():
        raise UserError(f"activation batch has dtype {x.dtype}; expected a floating-point tensor")
    return x.float()


class SparseCode(NamedTuple):
    """The active latents of a batch of `batch` tokens, token-major: entry i is latent `latent[i]` of token
    `token[i]`, with activation `value[i]`."""

    token: torch.Tensor
    latent: torch.Tensor
    value: torch.Tensor
    batch: int
    latents: int

    def offsets(self) -> torch.Tensor:
        """Where each token's entries start (embedding-bag offsets); tokens without entries get empty bags."""
        counts = torch.bincount(self.token, minlength=self.batch)
        return torch.cumsum(counts, 0) - counts

    def fired(self) -> torch.Tensor:
        """(F,) bool: latents active on some token of the batch."""
        fired = torch.zeros(self.latents, dtype=torch.bool, device=self.latent.device)
        fired[self.latent[self.value > 0]] = True
        return fired

    def l0(self) -> float:
        return int((self.value > 0).sum()) / self.batch

    def dense(self) -> torch.Tensor:
        """(B, F) activations."""
        f = self.value.new_zeros(self.batch, self.latents)
        return f.index_put((self.token, self.latent), self.value)


class _ChosenPreActivations(torch.autograd.Function):
    """The encoder's ReLU pre-activations at chosen (token, latent) entries, already computed without autograd, with
    the gradient that reaches W_enc and b_enc through those entries only: per latent, the sum of its tokens' inputs
    weighted by their gradients (an embedding bag over tokens, N*2d work instead of a dense (2d x B) @ (B x F)).
    No gradient reaches the activations (they are data)."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, encoder_rows: torch.Tensor, b_enc: torch.Tensor,
                x_flat: torch.Tensor, token: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x_flat, token, latent, values > 0)
        ctx.n_latents = encoder_rows.shape[0]
        return values.clone()

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_flat, token, latent, positive = ctx.saved_tensors
        grad = grads[0] * positive  # the ReLU
        order = torch.argsort(latent)
        counts = torch.bincount(latent, minlength=ctx.n_latents)
        grad_rows = F.embedding_bag(token[order], x_flat, torch.cumsum(counts, 0) - counts, mode="sum",
                                    per_sample_weights=grad[order])  # (F, 2d), the encoder rows' layout
        grad_b = grad.new_zeros(ctx.n_latents).index_add_(0, latent, grad)
        return None, grad_rows, grad_b, None, None, None


def geometric_median(points: torch.Tensor, iterations: int = MEDIAN_ITERATIONS, tol: float = 1e-5) -> torch.Tensor:
    """(S, d) per-source geometric median of (B, S, d) points (Weiszfeld's iteration from the mean): the point with
    the least summed distance, robust to the outliers (attention-sink tokens) that pull the mean."""
    guess = points.mean(0)
    for _ in range(iterations):
        distance = (points - guess).norm(dim=-1).clamp_min(1e-8)  # (B, S)
        weights = 1 / distance
        new = (weights[..., None] * points).sum(0) / weights.sum(0)[:, None]
        if bool(((new - guess).norm(dim=-1) < tol).all()):
            return new
        guess = new
    return guess


class Crosscoder(nn.Module):
    """W_enc (S, d, F), b_enc (F,), W_dec (S, F, d), b_dec (S, d) for S = `sources` (2: base and tuned; 1: an SAE);
    buffers `scale` (S,) and the batchtopk inference `threshold` (). Tied init: decoder rows of norm
    INIT_DECODER_NORM in each source, encoder = decoder transposed.

    Both weights are stored one latent per row, `encoder_rows` and `decoder_rows` (F, S*d): the sparse kernels read
    and write whole latents, and W_enc and W_dec are views of these (files keep the (S, d, F) and (S, F, d) shapes)."""

    scale: torch.Tensor  # buffers, registered in __init__
    threshold: torch.Tensor

    def __init__(self, d: int, settings: CrosscoderSettings, scale: torch.Tensor | None = None, sources: int = 2):
        super().__init__()
        if d <= 0:
            raise UserError(f"crosscoder width d={d} must be positive")
        if sources <= 0:
            raise UserError(f"crosscoder sources={sources} must be positive")
        if settings.variant == "batchtopk" and settings.k >= settings.latents:
            raise UserError(f"crosscoder k={settings.k} must be smaller than latents={settings.latents}")
        scale = torch.ones(sources) if scale is None else torch.as_tensor(scale, dtype=torch.float32).detach().clone()
        if scale.shape != (sources,) or not bool(torch.isfinite(scale).all()) or not bool((scale > 0).all()):
            raise UserError(f"crosscoder scale must be {sources} positive finite numbers, got {scale.tolist()}")
        self.d = d
        self.sources = sources
        self.settings = settings
        n = settings.latents
        directions = torch.randn(sources, n, d)
        decoder = INIT_DECODER_NORM[settings.variant] * directions / directions.norm(dim=-1, keepdim=True)
        rows = decoder.transpose(0, 1).reshape(n, sources * d)
        self.decoder_rows = nn.Parameter(rows.clone())
        self.encoder_rows = nn.Parameter(rows.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(torch.zeros(sources, d))
        self.register_buffer("scale", scale)
        # -1 = not yet estimated; scores are >= 0, so an untrained model keeps every positive latent
        self.register_buffer("threshold", torch.tensor(-1.0))

    @property
    def latents(self) -> int:
        return self.settings.latents

    @property
    def W_enc(self) -> torch.Tensor:
        """(S, d, F) view of the encoder rows."""
        return self.encoder_rows.view(self.latents, self.sources, self.d).permute(1, 2, 0)

    @property
    def W_dec(self) -> torch.Tensor:
        """(S, F, d) view of the decoder rows."""
        return self.decoder_rows.view(self.latents, self.sources, self.d).transpose(0, 1)

    def check(self, x: object) -> torch.Tensor:
        return check_batch(x, self.d, self.sources).to(self.encoder_rows.device)

    def require_pair(self, what: str) -> None:
        """A UserError unless this dictionary reads two models (a crosscoder, not an SAE)."""
        if self.sources != 2:
            raise UserError(f"{what} compares two models; this dictionary reads {self.sources} source(s)")

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale[:, None]

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.scale[:, None]

    def pre_activations(self, x_norm: torch.Tensor) -> torch.Tensor:
        return torch.relu(x_norm.reshape(len(x_norm), -1) @ self.encoder_rows.T + self.b_enc)

    def decoder_norms(self) -> torch.Tensor:
        return self.W_dec.norm(dim=-1)

    def encode(self, x_raw: torch.Tensor, *, training: bool = False) -> torch.Tensor:
        return self._activations(self.normalize(self.check(x_raw)), training)[0]

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return (f @ self.decoder_rows).view(len(f), self.sources, self.d) + self.b_dec

    def forward(self, x_raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents and the reconstruction in normalised space; batchtopk selects per batch only in train mode."""
        f = self.encode(x_raw, training=self.training)
        return f, self.decode(f)

    def decode_sparse(self, code: SparseCode, bias: bool = True) -> torch.Tensor:
        """(B, S, d) reconstruction of a sparse code: an embedding bag over the decoder rows (as (F, S*d))."""
        out = F.embedding_bag(code.latent, self.decoder_rows, code.offsets(), mode="sum",
                              per_sample_weights=code.value).view(code.batch, self.sources, self.d)
        return out + self.b_dec if bias else out

    def _chosen(self, pre: torch.Tensor, x_norm: torch.Tensor, token: torch.Tensor, latent: torch.Tensor
                ) -> SparseCode:
        """The code of the chosen entries of the dense ReLU pre-activations `pre`, differentiable in the encoder."""
        values = _ChosenPreActivations.apply(pre[token, latent], self.encoder_rows, self.b_enc,
                                             x_norm.reshape(len(x_norm), -1), token, latent)
        return SparseCode(token, latent, values, pre.shape[0], self.latents)

    def _activations(self, x_norm: torch.Tensor, training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, ReLU pre-activations)."""
        pre = self.pre_activations(x_norm)
        if self.settings.variant == "l1":
            return pre, pre
        with torch.no_grad():
            score = pre * self.decoder_norms().sum(0)
            mask = self._batch_topk(score) if training else score > self.threshold
        return pre * mask, pre

    def _batch_topk(self, score: torch.Tensor) -> torch.Tensor:
        """Mask of the k*B largest scores of the batch; moves the inference threshold towards the smallest kept one."""
        kept = score.flatten().topk(self.settings.k * score.shape[0], sorted=False)
        mask = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
        mask[kept.indices] = True
        self._update_threshold(kept.values)
        return mask.view_as(score)

    def _update_threshold(self, kept_scores: torch.Tensor) -> None:
        """Move the inference threshold (an EMA) towards the smallest positive score a training batch kept."""
        positive = kept_scores[kept_scores > 0]
        if positive.numel():
            smallest = positive.min()
            first = self.threshold < 0
            self.threshold.copy_(torch.where(first, smallest, THRESHOLD_DECAY * self.threshold
                                             + (1 - THRESHOLD_DECAY) * smallest))

    def training_loss(self, x_raw: torch.Tensor, dead: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, dict[str, float], SparseCode]:
        """Loss = mse + sparsity_or_aux (the l1 penalty, or the weighted batchtopk auxiliary loss over the `dead`
        latents, a (F,) bool mask). Returns the loss, its parts as floats, and the (detached) training code."""
        x = self.normalize(self.check(x_raw))
        if self.settings.variant == "l1":
            f = self.pre_activations(x)
            error = x - self.decode(f)
            extra = self.settings.l1_coefficient * (f * self.decoder_norms().sum(0)).sum(1).mean()
            code = self._code_of(f.detach())
        else:
            with torch.no_grad():
                pre = self.pre_activations(x)
                kept = (pre * self.decoder_norms().sum(0)).flatten().topk(self.settings.k * len(x), sorted=False)
                self._update_threshold(kept.values)
                flat = kept.indices.sort().values
            code = self._chosen(pre, x, flat // self.latents, flat % self.latents)
            error = x - self.decode_sparse(code)
            extra = self.settings.aux_coefficient * self._aux_loss(pre, x, error.detach(), dead)
        mse = error.pow(2).sum((1, 2)).mean()
        loss = mse + extra
        detached = code._replace(value=code.value.detach())
        return loss, {"loss": loss.item(), "mse": mse.item(), "sparsity_or_aux": extra.item()}, detached

    def _code_of(self, f: torch.Tensor) -> SparseCode:
        token, latent = f.nonzero(as_tuple=True)
        return SparseCode(token, latent, f[token, latent], f.shape[0], self.latents)

    def _aux_loss(self, pre: torch.Tensor, x_norm: torch.Tensor, error: torch.Tensor, dead: torch.Tensor | None
                  ) -> torch.Tensor:
        """How much of the residual `error` the top aux_k dead latents per token explain (normalised MSE)."""
        if dead is None or not bool(dead.any()):
            return pre.new_zeros(())
        dead_ids = dead.nonzero().flatten()
        aux_k = min(self.settings.aux_k, len(dead_ids))
        if len(dead_ids) <= DENSE_AUX_RATIO * aux_k:
            # few dead latents: dense products over their rows cost less than the gathers of a sparse code
            pre_dead = torch.relu(x_norm.reshape(len(x_norm), -1) @ self.encoder_rows[dead_ids].T
                                  + self.b_enc[dead_ids])
            with torch.no_grad():
                top = pre_dead.topk(aux_k, dim=1, sorted=False).indices
                keep = torch.zeros_like(pre_dead, dtype=torch.bool).scatter_(1, top, True)
            predicted = ((pre_dead * keep) @ self.decoder_rows[dead_ids]).view_as(error)
        else:
            with torch.no_grad():
                top = pre[:, dead_ids].topk(aux_k, dim=1, sorted=False).indices
            token = torch.arange(len(pre), device=pre.device).repeat_interleave(aux_k)
            predicted = self.decode_sparse(self._chosen(pre, x_norm, token, dead_ids[top.flatten()]), bias=False)
        return (error - predicted).pow(2).sum() / error.pow(2).sum().clamp_min(1e-12)

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors of a crosscoder file: W_enc (S, d, F) and W_dec (S, F, d), not the rows they are kept in."""
        state = dict(self.state_dict())
        del state["encoder_rows"], state["decoder_rows"]
        return {"W_enc": self.W_enc, "W_dec": self.W_dec, **state}

    @torch.no_grad()
    def load_file_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.W_enc.copy_(tensors["W_enc"])
        self.W_dec.copy_(tensors["W_dec"])
        self.load_state_dict({name: t for name, t in tensors.items() if name not in ("W_enc", "W_dec")}, strict=False)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({name: t.detach().contiguous().cpu() for name, t in self.file_tensors().items()},
                  str(directory / WEIGHTS_FILE))
        config = {"d": self.d, "sources": self.sources, "settings": self.settings.model_dump(mode="json")}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Crosscoder:
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        for path in (config_path, weights_path):
            if not path.is_file():
                raise UserError(f"{path}: crosscoder file not found")
        try:
            config = read_json(config_path, "crosscoder config")
            d, raw_settings = int(config["d"]), config["settings"]
            sources = int(config.get("sources", 2))  # files written before SAEs shared this code are crosscoders
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{config_path}: not a crosscoder config ({type(exc).__name__}: {exc})") from None
        try:
            settings = CrosscoderSettings.model_validate(raw_settings)
        except ValidationError as exc:
            raise UserError(format_validation_error(exc, str(config_path))) from None
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG alone
            model = cls(d, settings, sources=sources)
        state = load_file(str(weights_path))
        expected = {name: tuple(t.shape) for name, t in model.file_tensors().items()}
        found = {name: tuple(t.shape) for name, t in state.items()}
        if found != expected:
            raise UserError(f"{weights_path}: tensors {found} do not match {config_path} (expected {expected})")
        model.load_file_tensors(state)
        return model.eval()


def _rechunk(batches: Iterable[torch.Tensor], size: int, d: int, sources: int) -> Iterator[torch.Tensor]:
    """Batches of exactly `size` tokens (the last one of the pass may be smaller), whatever sizes come in."""
    pending: list[torch.Tensor] = []
    count = 0
    for x in batches:
        x = check_batch(x, d, sources)
        pending.append(x)
        count += x.shape[0]
        if count >= size:
            flat = torch.cat(pending)
            full = (count // size) * size
            yield from flat[:full].split(size)
            pending, count = [flat[full:]], count - full
    if count:
        yield torch.cat(pending)


def _lr_factor(step: int, total: int) -> float:
    """Linear warmup over the first 5% of steps, constant, linear decay to 0 over the last 20%."""
    warmup = max(1, round(WARMUP_FRACTION * total))
    decay_start = total - max(1, round(DECAY_FRACTION * total))
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_start:
        return max(0.0, (total - step) / (total - decay_start))
    return 1.0


def train_crosscoder(batches: Callable[[], Iterable[torch.Tensor]], d: int, settings: CrosscoderSettings,
                     scale: torch.Tensor, progress: bool = True,
                     tokens: int | None = None) -> tuple[Crosscoder, list[dict]]:
    """Train a crosscoder on raw (B, S, d) activation batches, S = len(scale) sources (2 for base and tuned, 1 for an
    SAE); `batches()` gives a fresh pass each epoch.

    Incoming batches are re-chunked to `settings.batch_size` tokens. The schedule needs the number of steps: give
    `tokens`, a pass's token count, where it is known (an activation cache's `n_tokens`); otherwise the first pass is
    read once up front only to count them, which for a cache on disk is one more read of all of it. Every pass should
    yield the same data.
    Returns the model in eval mode and a history of {step, loss, mse, sparsity_or_aux, l0, dead} every 20 steps,
    where loss = mse + sparsity_or_aux and dead counts latents silent for `dead_after_tokens` training tokens.
    """
    torch.manual_seed(settings.seed)
    sources = torch.as_tensor(scale).numel()
    model = Crosscoder(d, settings, scale, sources)
    if tokens is None:
        tokens = sum(check_batch(x, d, sources).shape[0] for x in batches())
    if tokens == 0:
        raise UserError("no activations to train the crosscoder on")
    total = settings.epochs * math.ceil(tokens / settings.batch_size)
    # fused: one kernel for the whole update; the per-tensor loop took 8 of a step's 19 ms at 1024 latents (2 cores)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, total))
    silent_for = torch.zeros(settings.latents, dtype=torch.long)
    history: list[dict] = []
    step = 0
    model.train()
    with tqdm(total=total, desc="crosscoder", disable=not progress) as bar:
        for epoch in range(settings.epochs):
            seen = 0
            for x in _rechunk(batches(), settings.batch_size, d, sources):
                seen += x.shape[0]
                if step == 0:
                    with torch.no_grad():
                        model.b_dec.copy_(geometric_median(model.normalize(model.check(x))))
                dead = silent_for >= settings.dead_after_tokens
                loss, parts, code = model.training_loss(x, dead)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                silent_for += x.shape[0]
                silent_for[code.fired().cpu()] = 0
                step += 1
                bar.update()
                if step % LOG_EVERY == 0 or step == total:
                    l0 = code.l0()
                    history.append({"step": step, **parts, "l0": l0, "dead": int(dead.sum())})
                    bar.set_postfix(loss=f"{parts['loss']:.4g}", l0=f"{l0:.1f}")
            if seen != tokens:  # the schedule was planned for `tokens` a pass
                raise RuntimeError(f"crosscoder training: pass {epoch + 1} gave {seen} tokens, not the {tokens} "
                                   "its schedule was planned for")
    return model.eval(), history


@torch.no_grad()
def evaluate_crosscoder(model: Crosscoder, batches: Iterable[torch.Tensor], names: tuple[str, ...] = MODELS
                        ) -> dict:
    """Fraction of variance explained per source, keyed by `names` ('base', 'tuned' for a crosscoder; normalised
    space, over the whole eval set), 'l0' (mean active latents per token, inference mode), 'dead_fraction' (latents
    that never fired), 'tokens'."""
    if len(names) != model.sources:
        raise UserError(f"{len(names)} source names {names} for a dictionary of {model.sources} source(s)")
    sse = torch.zeros(model.sources, dtype=torch.float64)
    sum_sq = torch.zeros(model.sources, dtype=torch.float64)
    sum_x = torch.zeros(model.sources, model.d, dtype=torch.float64)
    fired = torch.zeros(model.latents, dtype=torch.bool)
    active, tokens = 0, 0
    for x in batches:
        x = model.normalize(model.check(x))
        f = model._activations(x, training=False)[0]
        sse += (x - model.decode(f)).double().pow(2).sum((0, 2)).cpu()
        sum_sq += x.double().pow(2).sum((0, 2)).cpu()
        sum_x += x.double().sum(0).cpu()
        fired |= (f > 0).any(0).cpu()
        active += int((f > 0).sum())
        tokens += x.shape[0]
    if tokens == 0:
        raise UserError("no activations to evaluate the crosscoder on")
    variance = sum_sq - sum_x.pow(2).sum(-1) / tokens
    fve = 1 - sse / variance
    return {**{name: fve[i].item() for i, name in enumerate(names)}, "l0": active / tokens,
            "dead_fraction": 1 - fired.float().mean().item(), "tokens": tokens}


@torch.no_grad()
def relative_decoder_norm(model: Crosscoder) -> torch.Tensor:
    """(F,) in [0, 1]: 0 = base-only, 0.5 = shared, 1 = tuned-only."""
    model.require_pair("the relative decoder norm")
    base, tuned = model.decoder_norms()
    return 0.5 * ((tuned - base) / torch.maximum(tuned, base).clamp_min(1e-12) + 1)


@torch.no_grad()
def decoder_cosine(model: Crosscoder) -> torch.Tensor:
    """(F,) cosine similarity between each latent's base and tuned decoder rows."""
    model.require_pair("the decoder cosine")
    return torch.cosine_similarity(model.W_dec[0], model.W_dec[1], dim=-1)


def classify_latents(rel: torch.Tensor, tuned_only: float = 0.9, base_only: float = 0.1,
                     shared_band: tuple[float, float] = (0.4, 0.6)) -> dict[str, torch.Tensor]:
    """Latent indices by relative decoder norm: 'tuned_only' (>= tuned_only), 'base_only' (<= base_only),
    'shared' (inside shared_band, inclusive) and 'other'."""
    if not base_only < shared_band[0] <= shared_band[1] < tuned_only:
        raise UserError(f"latent classes overlap: need base_only < shared_band < tuned_only, got "
                        f"{base_only}, {shared_band}, {tuned_only}")
    masks = {"tuned_only": rel >= tuned_only, "base_only": rel <= base_only,
             "shared": (rel >= shared_band[0]) & (rel <= shared_band[1])}
    masks["other"] = ~(masks["tuned_only"] | masks["base_only"] | masks["shared"])
    return {name: mask.nonzero().flatten() for name, mask in masks.items()}


@torch.no_grad()
def latent_scaling(model: Crosscoder, batches: Iterable[torch.Tensor], latents: torch.Tensor
                   ) -> dict[str, torch.Tensor]:
    """Latent Scaling (Minder et al. 2025) for the latent indices `latents` (n,), with each latent's tuned decoder
    row d: for model m and target y, beta = sum_t f(t) d·y_t / sum_t f(t)^2 |d|^2, where y is the normalised
    activation x_m ('recon') or the reconstruction error with the latent's own contribution put back
    x_m - x̂_m + f d_m ('error'). nu = beta_base / beta_tuned (NaN for a latent that never fired): small for a
    latent the base model does not use. Keys: beta_{recon,error}_{base,tuned}, nu_reconstruction, nu_error."""
    model.require_pair("Latent Scaling")
    latents = torch.as_tensor(latents, dtype=torch.long).flatten()
    if latents.numel() and (int(latents.min()) < 0 or int(latents.max()) >= model.latents):
        raise UserError(f"latent indices must lie in [0, {model.latents}), got {latents.tolist()}")
    rows = model.W_dec[:, latents].double()  # (2, n, d)
    direction = rows[1]
    own = (rows * direction).sum(-1)  # (2, n): d_m · d
    recon = torch.zeros(2, len(latents), dtype=torch.float64)
    error = torch.zeros(2, len(latents), dtype=torch.float64)
    f_sq = torch.zeros(len(latents), dtype=torch.float64)
    for x in batches:
        x = model.normalize(model.check(x))
        f = model._activations(x, training=False)[0]
        residual = (x - model.decode(f)).double()
        fj = f[:, latents].double()
        recon += torch.einsum("bn,bmd,nd->mn", fj, x.double(), direction)
        error += torch.einsum("bn,bmd,nd->mn", fj, residual, direction) + fj.pow(2).sum(0) * own
        f_sq += fj.pow(2).sum(0)
    denominator = f_sq * direction.pow(2).sum(-1)
    beta_recon, beta_error = (recon / denominator).float(), (error / denominator).float()
    return {"beta_recon_base": beta_recon[0], "beta_recon_tuned": beta_recon[1],
            "beta_error_base": beta_error[0], "beta_error_tuned": beta_error[1],
            "nu_reconstruction": beta_recon[0] / beta_recon[1], "nu_error": beta_error[0] / beta_error[1]}


@torch.no_grad()
def top_activations(model: Crosscoder, batches: Iterable[torch.Tensor], n: int = 8
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per latent, its n largest activations (F, n) and their global token indices (F, n) in iteration order;
    index -1 and value 0 where a latent fired fewer than n times."""
    if n <= 0:
        raise UserError(f"top_activations n={n} must be positive")
    values = torch.full((model.latents, n), -math.inf)
    indices = torch.full((model.latents, n), -1, dtype=torch.long)
    offset = 0
    for x in batches:
        x = model.check(x)
        f = model.encode(x).cpu().T  # (F, B)
        batch_values = torch.where(f > 0, f, -math.inf)
        batch_indices = torch.arange(offset, offset + f.shape[1]).expand_as(f)
        merged_values = torch.cat([values, batch_values], dim=1)
        merged_indices = torch.cat([indices, batch_indices], dim=1)
        values, order = merged_values.topk(n, dim=1)
        indices = merged_indices.gather(1, order)
        offset += f.shape[1]
    silent = values == -math.inf
    return values.masked_fill(silent, 0.0), indices.masked_fill(silent, -1)
