"""Base models: resolve, fingerprint, describe (from safetensors headers) and load safely.

Weights are read from safetensors only. A folder that holds only pickled checkpoints is refused
before anything is opened, because unpickling runs arbitrary code.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from portllm_engine.errors import EngineError, ModelNotFoundError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "vocab.txt",
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
INDEX_FILE = "model.safetensors.index.json"


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT wrapping a model (get_peft_model, PeftModel.from_pretrained): PEFT probes
    `model.is_gradient_checkpointing`, which transformers 5 deprecated with a FutureWarning that
    says nothing to our users. Only that warning is silenced, only here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model_dir(ref: str | Path) -> Path:
    """A local model folder, or a hub id resolved from the local HF cache (network only when allowed)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        return path.resolve()
    text = str(ref)
    if path.exists():
        raise ModelNotFoundError(f"{text} is a file, not a model folder: pass the folder that holds config.json")
    if not HUB_ID.match(text):
        raise ModelNotFoundError(f"model {text!r} not found: pass an existing folder or a hub id like org/name")
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        local = snapshot_download(
            text,
            local_files_only=offline,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"],
        )
    except Exception as exc:  # hub errors come in many types; all mean "not available here"
        hint = "it is not in the local HF cache (HF_HUB_OFFLINE is set)" if offline else type(exc).__name__
        raise ModelNotFoundError(f"model {text!r} not found: {hint}") from None
    return Path(local)


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model folder; refuses folders holding only pickled weights."""
    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    if files:
        return files
    pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        raise UnsafeCheckpointError(
            f"{model_dir} holds only pickled weights ({', '.join(pickled)}); "
            "convert them to safetensors first (pickles are never loaded)"
        )
    raise ModelNotFoundError(f"no *.safetensors weights in {model_dir}")


def read_config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ModelNotFoundError(f"{model_dir} has no config.json: is it an HF-format model folder?")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {path}: {exc}") from None


def weights_dtype(model_dir: Path) -> str:
    """The dtype `load_base` gives this model ("auto": the config's), without loading it."""
    config = read_config(model_dir)
    return str(config.get("dtype") or config.get("torch_dtype") or "float32").removeprefix("torch.")


def device_kind(device: str | None) -> str:
    """cpu or cuda: the part of a device that can change a score's numbers."""
    return (device or pick_device()).split(":")[0]


def safetensors_header(path: Path) -> dict[str, Any]:
    """Tensor name -> {"dtype", "shape"} of a safetensors file, from its header (no tensor is read)."""
    from safetensors import SafetensorError, safe_open

    try:
        # numpy framework: reading a header must not import torch (the admin CLI calls this).
        with safe_open(str(path), framework="numpy") as fh:
            slices = {name: fh.get_slice(name) for name in fh.keys()}
            return {name: {"dtype": part.get_dtype(), "shape": part.get_shape()} for name, part in slices.items()}
    except SafetensorError as exc:
        raise EngineError(f"{path} is not a safetensors file ({exc}): re-save it with safetensors") from None


def checkpoint_files(model_dir: Path) -> list[Path]:
    """The weight files a loader reads: those named by model.safetensors.index.json, else every one."""
    index = Path(model_dir) / INDEX_FILE
    if not index.is_file():
        return weight_files(model_dir)
    try:
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        raise EngineError(f"cannot read {index} ({exc}): restore it or delete it to read every shard") from None
    missing = [name for name in names if not (Path(model_dir) / name).is_file()]
    if missing:
        raise ModelNotFoundError(f"{index.name} names missing shards ({', '.join(missing)}): the download is incomplete")
    return [Path(model_dir) / name for name in names]


def tensor_index(model_dir: Path) -> dict[str, tuple[Path, list[int], str]]:
    """Tensor name -> (file, shape, dtype) over the checkpoint's safetensors files."""
    index: dict[str, tuple[Path, list[int], str]] = {}
    for file in checkpoint_files(model_dir):
        for name, info in safetensors_header(file).items():
            index[name] = (file, list(info["shape"]), info["dtype"])
    return index


def checkpoint_key(module: str, names) -> str | None:
    """The name a module has in the checkpoint: some (GPT-2 era) files drop the model prefix."""
    if module in names:
        return module
    unprefixed = module.split(".", 1)[-1]
    return unprefixed if unprefixed in names else None


def weight_key(module: str, index: dict[str, Any]) -> str | None:
    """The checkpoint tensor holding `module`'s weight (index: tensor names as keys), or None."""
    found = checkpoint_key(module, {name[: -len(".weight")] for name in index if name.endswith(".weight")})
    return None if found is None else f"{found}.weight"


@functools.lru_cache(maxsize=64)
def _sha256_files(paths: tuple[Path, ...], root: Path, stats: tuple[tuple[int, int, int, int], ...]) -> str:
    """Cached on each file's identity, size and mtime: a run asking again does not re-read a 16 GB base."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            hashlib.file_digest(fh, lambda: digest)  # feeds the one running digest, file after file
        digest.update(b"\0")
    return digest.hexdigest()


def fingerprint(model_dir: str | Path) -> str:
    """sha256 over config.json and the weight files, streamed (a 7B base never sits in memory)."""
    root = resolve_model_dir(model_dir)
    read_config(root)
    paths = (root / "config.json", *weight_files(root))
    return _sha256_files(paths, root, tuple(_identity(path) for path in paths))


def _identity(path: Path) -> tuple[int, int, int, int]:
    """Changes whenever the file is replaced or rewritten."""
    info = path.stat()
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def architecture_signature(model_dir: str | Path) -> dict[str, Any]:
    """model_type, sizes and the shape of every weight matrix, from config and safetensors headers."""
    root = resolve_model_dir(model_dir)
    config = read_config(root)
    text_config = config.get("text_config") or config
    modules = {
        name[: -len(".weight")]: shape
        for name, (_, shape, _) in sorted(tensor_index(root).items())
        if name.endswith(".weight") and len(shape) >= 2
    }
    signature = {
        "model_type": config.get("model_type"),
        "hidden_size": text_config.get("hidden_size"),
        "num_layers": text_config.get("num_hidden_layers"),
        "vocab_size": text_config.get("vocab_size"),
        "modules": modules,
    }
    signature["digest"] = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()
    return signature


SIGNATURE_FIELDS = ("model_type", "hidden_size", "num_layers", "vocab_size")


def signature_changes(before: dict[str, Any], after: dict[str, Any], named: int = 3) -> list[str]:
    """How architecture `after` differs from `before`, for people (empty when they agree): the
    sizes that changed, then the weight matrices missing, added or of another shape, a few named."""
    changes = [f"{key} {before.get(key)} → {after.get(key)}" for key in SIGNATURE_FIELDS
               if key in before and key in after and before[key] != after[key]]
    old, new = before.get("modules"), after.get("modules")
    if old is None or new is None:  # a signature recorded before shapes were: sizes only
        return changes

    def listed(what: str, names: list[str]) -> None:
        if names:
            more = f" and {len(names) - named} more" if len(names) > named else ""
            noun = "weight matrix" if len(names) == 1 else "weight matrices"
            changes.append(f"{len(names)} {noun} {what}: {', '.join(names[:named])}{more}")

    listed("of another shape", [m for m in old if m in new and list(old[m]) != list(new[m])])
    listed("missing", [m for m in old if m not in new])
    listed("new", [m for m in new if m not in old])
    return changes


def tokenizer_fingerprint(model_dir: str | Path) -> str:
    """sha256 of what decides tokenization (vocab, merges, normalizer...), not padding settings."""
    root = resolve_model_dir(model_dir)
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = root / name
        if not path.is_file():
            continue
        found = True
        digest.update(name.encode() + b"\0")
        if name == "tokenizer.json":
            spec = json.loads(path.read_text())
            for runtime_only in ("truncation", "padding", "version"):
                spec.pop(runtime_only, None)
            digest.update(json.dumps(spec, sort_keys=True).encode())
        else:
            digest.update(path.read_bytes())
    if not found:
        raise ModelNotFoundError(f"no tokenizer files in {root} (expected one of {', '.join(TOKENIZER_FILES)})")
    return digest.hexdigest()


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer

    root = resolve_model_dir(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(root, trust_remote_code=False)
    except Exception as exc:
        raise EngineError(f"cannot load the tokenizer in {root}: {str(exc).splitlines()[0][:200]}") from None
    if tokenizer.pad_token is None:
        # Batching needs a pad id; padded positions are always masked, so EOS is safe to reuse.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(ref: str | Path, device: str | None = None, dtype=None):
    """Load a causal LM and its tokenizer: safetensors only, never remote code, eval mode."""
    from transformers import AutoModelForCausalLM

    root = resolve_model_dir(ref)
    read_config(root)
    weight_files(root)  # refuses pickle-only folders before transformers sees them
    try:
        model = AutoModelForCausalLM.from_pretrained(
            root,
            trust_remote_code=False,
            use_safetensors=True,
            dtype=dtype if dtype is not None else "auto",
        )
    except Exception as exc:
        raise EngineError(f"cannot load the model in {root}: {str(exc).splitlines()[0][:200]}") from None
    model.to(device or pick_device())
    model.eval()
    return model, load_tokenizer(root)
