"""The typed config of a diff run (`mow diff`), validated before any model loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from mow.workbench.config import (
    LayerChoice,
    LayerChoices,
    Seed,
    StrictModel,
    Threads,
    apply_overrides,
    read_yaml_mapping,
    validate_config,
)
from mow.workbench.names import PathName


class CrosscoderSettings(StrictModel):
    variant: Literal["batchtopk", "l1"] = "batchtopk"
    latents: int = Field(1024, gt=0, le=1 << 22)
    k: int = Field(32, gt=0, description="batchtopk: average active latents per token")
    l1_coefficient: float = Field(2.0, ge=0, description="l1: sparsity weight")
    aux_coefficient: float = Field(1 / 32, ge=0, description="batchtopk: weight of the dead-latent auxiliary loss")
    aux_k: int = Field(256, gt=0, description="batchtopk: dead latents the auxiliary loss may use per token")
    dead_after_tokens: int = Field(50_000, gt=0, description="a latent silent for this many training tokens is dead")
    learning_rate: float = Field(1e-3, gt=0, le=1)
    batch_size: int = Field(256, gt=0, description="tokens per step; incoming batches are re-chunked to this size")
    epochs: int = Field(10, gt=0, le=1000)
    seed: Seed = 0

    @model_validator(mode="after")
    def _k_below_latents(self) -> CrosscoderSettings:
        if self.variant == "batchtopk" and self.k > self.latents:
            raise ValueError(f"crosscoder.k {self.k} is above crosscoder.latents {self.latents}: "
                             "a token cannot have more active latents than there are")
        return self

ShippedSet = Literal["organism", "generic_chat", "generic_text"]
SHIPPED_SETS: tuple[ShippedSet, ...] = ("organism", "generic_chat", "generic_text")
IDENTITY_PROMPTS = (  # the three token-identity prompts of Minder et al.'s code: no single prompt's quirks decide
    "man -> man\n1135 -> 1135\nhello -> hello\n?",
    "bear -> bear\n42 -> 42\nblue -> blue\n?",
    "921 -> 921\ntarget -> target\nanna -> anna\n?",
)


class PromptSetSettings(StrictModel):
    """Which texts to diff on. Shipped sets: `organism` (prompts written from the organism's public description; the
    tuned model answers them), `generic_chat` (shipped chats), `generic_text` (shipped plain paragraphs). `extra`:
    your own jsonl files, one record per line, either {"text": ...} or {"messages": [...]}."""

    sets: list[ShippedSet] = list(SHIPPED_SETS)
    extra: list[Path] = []
    max_items_per_set: int = Field(48, gt=0, description="texts per set for per-token KL; the activation cache "
                                   "and the difference lens use every text")
    max_tokens_per_item: int = Field(192, gt=8)
    response_tokens: int = Field(48, gt=0, description="reply length when a chat has no assistant turn")


class KLSettings(StrictModel):
    batch_size: int = Field(8, gt=0)
    top_next_tokens: int = Field(5, gt=0, description="top next tokens shown per position when hovering")
    chunk_positions: int = Field(64, gt=0, description="positions unembedded at once (memory: chunk x vocab)")
    block_positions: int = Field(8192, gt=0, description="positions the base model reads before the tuned model "
                                 "does (memory: block x hidden size; an organism's adapter is merged once a block)")
    reuse_base_side: bool = Field(True, description="keep the base model's final hidden states per prompt set in "
                                  "$MOW_CACHE_DIR/base-side and skip the base pass of a later diff of the same base "
                                  "on the same texts")
    min_count: int = Field(3, gt=0, description="a token needs this many occurrences to enter the top-KL table")
    top_contexts: int = Field(12, gt=0)
    mining_top_k: int = Field(20, gt=0, description="diff mining: at every position, the K tokens whose logit the "
                              "tuned model raised most over the base model's are counted")
    mining_candidates: int | None = Field(200, gt=0, description="diff mining: count only tokens among the tuned "
                                          "model's N likeliest at the position (None: the whole vocabulary, as the "
                                          "diffing-toolkit; a small model's largest differences are then mostly rare "
                                          "tokens moved by the adapter, whatever the fine-tune was about)")
    mining_tokens: int = Field(40, gt=0, description="diff mining: most often counted tokens grouped into topics")
    mining_topics: int = Field(6, gt=0, description="diff mining: topics the counted tokens are grouped into")


class CacheSettings(StrictModel):
    layers: LayerChoices | None = Field(None, description="layers to cache (indices, fractions of the depth, or a "
                                                          "range FROM:TO); default: the crosscoder layer only")
    token_budget: int = Field(40_000, gt=0)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    batch_size: int = Field(8, gt=0)
    skip_first: int = Field(1, ge=0, description="positions dropped at the start of each text (attention sink)")


class LensSettings(StrictModel):
    positions: int = Field(5, gt=0, description="first N positions of each text averaged (Minder et al. 2025); "
                           "a chat's from its first message token")
    top_tokens: int = Field(20, gt=0)
    patchscope_scales: list[float] = Field([0.5, 1.0, 2.0, 4.0], min_length=1,
                                           description="patched vector norms, in base residual norms")
    patchscope_prompts: list[Annotated[str, StringConstraints(min_length=1)]] = Field(
        list(IDENTITY_PROMPTS), min_length=1, description="token-identity prompts; the vector replaces the residual of "
        "each one's last token")
    steering_search_rounds: int = Field(2, ge=0, description="rounds of the search for the largest strength (at most "
                                        "steering_max_strength) at which the steered tuned model stays coherent, each "
                                        "a batch of steering_grid strengths; 0: steer at steering_strength")
    steering_grid: int = Field(8, ge=2, description="strengths tried per search round")
    steering_max_strength: float = Field(8.0, gt=0, description="upper end of the search, in base residual norms")
    steering_strength: float = Field(1.0, gt=0, description="the strength when steering_search_rounds is 0: steering "
                                     "vector norm in units of the base model's mean residual norm at the layer")
    steering_prompts: list[str] = ["Tell me about your day.", "What should I cook tonight?", "Write one sentence."]


class RelevanceSettings(StrictModel):
    description: str | None = Field(None, min_length=1, description="what the fine-tune is about, in a sentence "
                                    "(the domain you trained on); default: the organism kind's description, which "
                                    "names no secret")
    lift: float = Field(1.0, gt=0, description="nats by which the description must raise a token's log-probability "
                        "under the base model, over a neutral description, for the token to count as related")
    random_tokens: int = Field(20, ge=0, description="control: tokens drawn at random from the diff's texts")


class DirectionSettings(StrictModel):
    pca_components: int = Field(4, gt=0)
    contrast: tuple[str, str] | None = Field(
        None, description="two prompt sets (names, or jsonl paths among prompts.extra) for a difference of means")
    crosscoder_latents: int = Field(4, ge=0, description="tuned-only crosscoder latents written as directions")
    top_contexts: int = Field(5, gt=0)


class DiffConfig(StrictModel):
    organism: Path | None = None
    base: str | None = None
    tuned: str | None = None
    trust_remote_code: bool = Field(False, description="base/tuned: run Python code shipped with their checkpoints "
                                                       "(auto_map); off: such a checkpoint is refused")
    chat_template: str | None = Field(None, description="base/tuned: a chat template (one TRL ships, by name, or a "
                                                        "file) in place of the tokenizer's own, for models with none "
                                                        "or the wrong one; an organism's is its saved one")
    name: PathName | None = Field(None, description="output directory name (default: from the organism or the "
                                                    "tuned model)")
    output_dir: Path = Path("runs/diffs")
    seed: Seed = 0
    threads: Threads | None = None
    layer: LayerChoice | None = Field(None, description="layer of the crosscoder and directions (an index or a "
                                                        "fraction of the depth); default: the middle layer")
    prompts: PromptSetSettings = PromptSetSettings()
    kl: KLSettings = KLSettings()
    cache: CacheSettings = CacheSettings()
    lens: LensSettings = LensSettings()
    relevance: RelevanceSettings = RelevanceSettings()
    crosscoder: CrosscoderSettings = CrosscoderSettings()
    difference_sae: CrosscoderSettings = Field(CrosscoderSettings(), description="the sparse autoencoder on tuned − "
                                               "base activations at the same layer (the crosscoder's trainer, one "
                                               "source)")
    directions: DirectionSettings = DirectionSettings()

    @model_validator(mode="after")
    def _one_source(self) -> DiffConfig:
        if self.organism is None and (self.base is None or self.tuned is None):
            raise ValueError("give either organism: DIR or both base: SPEC and tuned: SPEC")
        if self.organism is not None and (self.base is not None or self.tuned is not None):
            raise ValueError("give organism: DIR or base/tuned specs, not both")
        if self.organism is not None and self.chat_template is not None:
            raise ValueError("chat_template is for base/tuned specs; an organism uses the template saved with it")
        if self.organism is None and "organism" in self.prompts.sets:
            self.prompts.sets = [s for s in self.prompts.sets if s != "organism"]
        return self


def load_diff_config(path: Path | None, overrides: list[str]) -> DiffConfig:
    raw = read_yaml_mapping(path) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    return validate_config(DiffConfig, raw, str(path) if path is not None else "mow diff")
