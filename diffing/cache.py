"""Residual-stream activations of base and tuned at chosen layers, on disk.

Layout of a cache directory:
- `meta.json`: the model pair's fingerprint, layers, dtype, budget; on completion the token count and per-model,
  per-layer normalisation (`scale` makes the mean squared norm equal the hidden size, Lindsey et al. 2024);
- `progress.json`: sequences and tokens written so far, saved only after the arrays are flushed, so a killed run
  resumes from the last finished block;
- `tokens.npy` (n,) token ids, `positions.npy` (n, 2) sequence index and position: the context of every row;
- `{base,tuned}_L{layer}.npy` (n, d) memory-mapped activations (bfloat16 is stored as raw 16-bit words).
The first `skip_first` positions of each text are left out: the attention-sink position has norms orders of
magnitude larger than the rest and would dominate any statistic.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mow.diffing.pair import ModelPair
from mow.diffing.prompts import TokenSequence
from mow.workbench.errors import UserError
from mow.workbench.files import read_json
from mow.workbench.generation import model_device
from mow.workbench.hooks import check_layer, residual_states
from mow.workbench.rundir import write_json

MODELS = ("base", "tuned")
# tokens per block: the base model reads a block's batches (adapter off), then the tuned model with its adapter
# merged into the weights, so the weights are merged and restored once per block, not once per batch
BLOCK_TOKENS = 8192
_STORAGE = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}


def _to_storage(x: torch.Tensor, dtype: str) -> np.ndarray:
    if dtype == "bfloat16":
        return x.to(torch.bfloat16).view(torch.uint16).numpy()
    return x.to(getattr(torch, dtype)).numpy()


def _from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array))  # a copy: memmaps are read-only
    return tensor.view(torch.bfloat16).float() if dtype == "bfloat16" else tensor.float()


class ActivationCache:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        meta = self.directory / "meta.json"
        if not meta.is_file():
            raise UserError(f"{self.directory}: not an activation cache (meta.json missing)")
        self.meta = read_json(meta, "activation cache meta")

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    @property
    def layers(self) -> list[int]:
        return list(self.meta["layers"])

    @property
    def n_tokens(self) -> int:
        return int(self.meta["n_tokens"])

    def scale(self, layer: int) -> torch.Tensor:
        """(2,) factors that bring base and tuned activations at `layer` to the same RMS."""
        stats = self.meta["normalization"][str(layer)]
        return torch.tensor([stats["base"]["scale"], stats["tuned"]["scale"]])

    def _array(self, name: str) -> np.ndarray:
        return np.load(self.directory / f"{name}.npy", mmap_mode="r")

    def _check_layer(self, layer: int) -> None:
        if layer not in self.layers:
            raise UserError(f"{self.directory}: layer {layer} is not cached (cached: {self.layers})")

    def activations(self, model: str, layer: int, start: int = 0, stop: int | None = None) -> torch.Tensor:
        self._check_layer(layer)
        stop = self.n_tokens if stop is None else min(stop, self.n_tokens)
        return _from_storage(self._array(f"{model}_L{layer}")[start:stop], self.meta["dtype"])

    def tokens(self) -> np.ndarray:
        return np.array(self._array("tokens")[: self.n_tokens])

    def positions(self) -> np.ndarray:
        return np.array(self._array("positions")[: self.n_tokens])

    def context_text(self, row: int, tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
        """The cached text before `row` and the row's own token, decoded (for top-activating context tables)."""
        ids, at = self.context(row)
        return {"before": tokenizer.decode(ids[:at]), "token": tokenizer.decode(ids[at : at + 1])}

    def context(self, row: int, window: int = 16) -> tuple[list[int], int]:
        """Token ids of the cached text up to and including `row` (same sequence), and the row's index in them."""
        positions = self._array("positions")
        tokens = self._array("tokens")
        start = row
        while start > 0 and row - start < window and positions[start - 1, 0] == positions[row, 0]:
            start -= 1
        return [int(t) for t in tokens[start : row + 1]], row - start

    def prefetch(self, model: str, layer: int, start: int, stop: int) -> None:
        """Ask the kernel to start reading rows [start, stop) of a model's activations into the page cache
        (POSIX_FADV_WILLNEED), without waiting: blocks come in a shuffled order, which the kernel's own read-ahead
        cannot guess. A no-op where the platform has no posix_fadvise."""
        if not hasattr(os, "posix_fadvise"):
            return
        path = self.directory / f"{model}_L{layer}.npy"
        array = np.load(path, mmap_mode="r")
        assert isinstance(array, np.memmap), "np.load with mmap_mode gives a memmap"
        row_bytes = array.strides[0]
        stop = min(stop, self.n_tokens)
        with open(path, "rb") as handle:
            os.posix_fadvise(handle.fileno(), array.offset + start * row_bytes, max(stop - start, 0) * row_bytes,
                             os.POSIX_FADV_WILLNEED)

    def paired_batches(self, layer: int, batch_size: int, seed: int | None = 0, block: int = 8192,
                       prefetch: bool = True) -> Iterator[torch.Tensor]:
        """(B, 2, d) raw activations [base, tuned]; shuffled by blocks then within blocks (cheap on a memmap).
        With `prefetch`, the next block is read from disk while the caller works on this one, so a cache that is
        not in the page cache (one larger than memory, or a cold one) streams at the caller's speed
        (benchmarks/cache_streaming.py measures it)."""
        self._check_layer(layer)  # before any prefetch opens a file the cache does not have
        n = self.n_tokens
        starts = list(range(0, n, block))
        rng = np.random.default_rng(seed) if seed is not None else None
        if rng is not None:
            rng.shuffle(starts)
        for index, start in enumerate(starts):
            if prefetch and index + 1 < len(starts):
                for model in MODELS:
                    self.prefetch(model, layer, starts[index + 1], starts[index + 1] + block)
            pair = torch.stack([self.activations(m, layer, start, start + block) for m in MODELS], dim=1)
            order = torch.from_numpy(rng.permutation(len(pair))) if rng is not None else torch.arange(len(pair))
            for i in range(0, len(pair), batch_size):
                yield pair[order[i : i + batch_size]]


def _check_existing(directory: Path, wanted: dict) -> None:
    meta = read_json(directory / "meta.json", "activation cache meta")
    if meta["fingerprint"] != wanted["fingerprint"]:
        old, new = meta["fingerprint"], wanted["fingerprint"]
        raise UserError(f"{directory}: activation cache from a different model pair "
                        f"(cached base={old['base']} tuned={old['tuned']}, now base={new['base']} "
                        f"tuned={new['tuned']}); use another directory")
    for key in ("layers", "dtype", "token_budget", "skip_first"):
        if meta[key] != wanted[key]:
            raise UserError(f"{directory}: activation cache made with {key}={meta[key]}, now {wanted[key]}; "
                            "use another directory")


def _next_block(usable: list[TokenSequence], first: int, batch_size: int, budget: int, skip_first: int
                ) -> list[list[TokenSequence]]:
    """The batches of the next block from sequence `first`: up to BLOCK_TOKENS tokens, and no more batches than the
    remaining token `budget` needs."""
    block: list[list[TokenSequence]] = []
    tokens = 0
    while first < len(usable) and tokens < min(budget, BLOCK_TOKENS):
        batch = usable[first : first + batch_size]
        block.append(batch)
        tokens += sum(len(s.ids) - skip_first for s in batch)
        first += len(batch)
    return block


@torch.no_grad()
def build_cache(pair: ModelPair, sequences: list[TokenSequence], directory: Path, layers: list[int],
                token_budget: int, dtype: str = "float32", batch_size: int = 8, skip_first: int = 1,
                progress: bool = True) -> ActivationCache:
    """Write (or finish writing) the cache; returns it complete with normalisation statistics."""
    layers = sorted({check_layer(pair.tuned_model, layer, "cache.layers") for layer in layers})
    wanted = {"fingerprint": pair.fingerprint(), "layers": layers, "dtype": dtype, "token_budget": token_budget,
              "skip_first": skip_first, "d": pair.hidden_size}
    directory = Path(directory)
    if (directory / "meta.json").is_file():
        _check_existing(directory, wanted)
        cache = ActivationCache(directory)
        if cache.complete:
            return cache
    directory.mkdir(parents=True, exist_ok=True)
    usable_index = [i for i, s in enumerate(sequences) if len(s.ids) > skip_first]
    usable = [sequences[i] for i in usable_index]
    if not usable:
        raise UserError(f"activation cache: no text longer than skip_first={skip_first} tokens to cache")
    d, storage = pair.hidden_size, _STORAGE[dtype]
    progress_file = directory / "progress.json"
    fresh = not progress_file.is_file()
    if fresh:
        write_json(directory / "meta.json", {**wanted, "complete": False})
    mode = "w+" if fresh else "r+"

    def open_array(name: str, shape: tuple, np_dtype) -> np.memmap:
        return np.lib.format.open_memmap(directory / f"{name}.npy", mode=mode, dtype=np_dtype, shape=shape)

    tokens = open_array("tokens", (token_budget,), np.int32)
    positions = open_array("positions", (token_budget, 2), np.int32)
    acts = {(m, layer): open_array(f"{m}_L{layer}", (token_budget, d), storage) for m in MODELS for layer in layers}
    state = (read_json(progress_file, "activation cache progress") if not fresh
             else {"sequences_done": 0, "tokens_done": 0})
    done_seq, done_tok = state["sequences_done"], state["tokens_done"]
    device = model_device(pair.tuned_model)
    bar = tqdm(total=min(token_budget, sum(len(s.ids) - skip_first for s in usable)), initial=done_tok,
               desc="activation cache", disable=not progress, leave=False)
    while done_seq < len(usable) and done_tok < token_budget:
        block = _next_block(usable, done_seq, batch_size, token_budget - done_tok, skip_first)
        outputs: dict[str, list[dict[int, torch.Tensor]]] = {}
        for model_name, context in (("base", pair.base), ("tuned", pair.tuned_merged)):
            with context() as model:
                outputs[model_name] = []
                for batch in block:
                    input_ids, mask = pair.batch([s.ids for s in batch])
                    captured = residual_states(model, layers, input_ids=input_ids.to(device),
                                               attention_mask=mask.to(device))
                    outputs[model_name].append({layer: captured[layer].float().cpu() for layer in layers})
        for index, batch in enumerate(block):
            for row, seq in enumerate(batch):
                take = min(len(seq.ids) - skip_first, token_budget - done_tok)
                if take <= 0:
                    break
                rows = slice(done_tok, done_tok + take)
                cols = slice(skip_first, skip_first + take)
                tokens[rows] = seq.ids[cols]
                positions[rows, 0] = usable_index[done_seq + row]
                positions[rows, 1] = np.arange(skip_first, skip_first + take)
                for (model_name, layer), array in acts.items():
                    array[rows] = _to_storage(outputs[model_name][index][layer][row, cols], dtype)
                done_tok += take
            done_seq += len(batch)
        for array in (tokens, positions, *acts.values()):
            array.flush()
        write_json(progress_file, {"sequences_done": done_seq, "tokens_done": done_tok})
        bar.update(done_tok - bar.n)
    bar.close()
    normalization: dict[str, dict[str, dict[str, float]]] = {}
    for layer in layers:
        normalization[str(layer)] = {}
        for model_name in MODELS:
            sq = 0.0
            for start in range(0, done_tok, 8192):
                chunk = _from_storage(acts[(model_name, layer)][start : min(done_tok, start + 8192)], dtype)
                sq += float(chunk.double().pow(2).sum())
            mean_sq = sq / max(done_tok, 1)
            normalization[str(layer)][model_name] = {"mean_squared_norm": mean_sq,
                                                     "scale": float(np.sqrt(d / mean_sq)) if mean_sq > 0 else 1.0}
    write_json(directory / "meta.json", {**wanted, "complete": True, "n_tokens": done_tok,
                                         "n_sequences": done_seq, "normalization": normalization})
    return ActivationCache(directory)
