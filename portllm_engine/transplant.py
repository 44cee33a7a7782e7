"""Transplant a patch onto a base: merge it into the weights, or attach several by name."""
from __future__ import annotations

import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from portllm_engine import compat, models, patches
from portllm_engine.errors import EngineError, IncompatiblePatchError, PatchError
from portllm_engine.generate import stream_generate

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
# What a merged model folder needs besides its weights; a transplant never changes these files.
SIDE_FILES = (
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    *models.TOKENIZER_FILES,
)


def _require_compatible(patch_dir: str | Path, base_dir: str | Path) -> None:
    report = compat.check(patch_dir, base_dir)
    if not report.compatible:
        first = report.errors[0]["message"]
        more = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise IncompatiblePatchError(
            f"patch {Path(patch_dir).name} does not fit {Path(base_dir).name}: {first}{more}", report.to_dict()
        )


def merged_weight(weight, a, b, lora: patches.LoraModule):
    """weight + scale·B·A in weight's dtype: the product is formed in float32 and rounded once into W,
    so a bf16 base loses no more precision than storing the merged weight requires."""
    import torch

    a, b = a.to(weight.device, torch.float32), b.to(weight.device, torch.float32)
    if weight.dtype == torch.float32 and not (lora.embedding or lora.fan_in_fan_out):
        return torch.addmm(weight, b, a, alpha=lora.scale)
    delta = (b @ a).mul_(lora.scale)
    if lora.embedding or lora.fan_in_fan_out:
        delta = delta.T
    return delta.add_(weight).to(weight.dtype)


def merge_into(model, patch_dir: str | Path):
    """W ← W + scale·B·A for every adapted module, in place and in the base's dtype."""
    import torch
    from safetensors import safe_open

    patches.verify_weights(patch_dir)
    modules = patches.lora_modules(patch_dir)
    named = dict(model.named_modules())
    with torch.no_grad(), safe_open(str(patches.adapter_weights_path(patch_dir)), framework="pt") as tensors:
        for name, lora in modules.items():
            target = named.get(name)
            if target is None or not hasattr(target, "weight"):
                raise PatchError(f"the model has no module {name}: check compatibility first")
            weight = target.weight
            if list(weight.shape) != lora.base_shape:
                raise PatchError(f"{name}: patch expects {tuple(lora.base_shape)}, model has {tuple(weight.shape)}")
            if _is_tied_embedding(model, weight):
                raise PatchError(compat.tied_embedding_reason(name))
            # Fresh memory rather than writing in place: on CPU the loaded weights are pages of the
            # mapped checkpoint, and copy-on-write page by page costs twice a plain copy.
            weight.data = merged_weight(weight, tensors.get_tensor(lora.a_key), tensors.get_tensor(lora.b_key), lora)
    return model


def _is_tied_embedding(model, weight) -> bool:
    """Whether `weight` is one tensor shared by the input embeddings and the output layer."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight and weight is output.weight


def transplant(patch_dir: str | Path, base_ref: str | Path, out_dir: str | Path | None = None, device: str | None = None):
    """Check, load the base, merge the patch; with out_dir, save a plain safetensors model folder."""
    base_dir = models.resolve_model_dir(base_ref)
    _require_compatible(patch_dir, base_dir)
    model, tokenizer = models.load_base(base_dir, device=device)
    merge_into(model, patch_dir)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    return model, tokenizer


def transplant_to_dir(
    patch_dir: str | Path,
    base_ref: str | Path,
    out_dir: str | Path,
    progress: patches.Progress | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    device: str | None = None,
) -> Path:
    """Merge a patch into a base on disk, one shard and one tensor at a time.

    Peak memory is about one output shard (at most max_shard_bytes, twice while it is written)
    plus the patch, whatever the model's size. The weights are identical to `transplant`'s on the
    same device. The folder appears complete or not at all: it is written aside, then renamed.
    """
    base_dir = models.resolve_model_dir(base_ref)
    _require_compatible(patch_dir, base_dir)  # this also checks the patch against its digest
    out = _fresh_out_dir(out_dir)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        _write_merged_shards(patch_dir, base_dir, staging, progress, max_shard_bytes, device or models.pick_device())
        for name in SIDE_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, staging / name)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _fresh_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise EngineError(f"{out} already exists and is not an empty folder: pass a new --out folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _write_merged_shards(patch_dir, base_dir: Path, out: Path, progress, max_shard_bytes: int, device: str) -> None:
    import torch
    from safetensors import safe_open

    index = models.tensor_index(base_dir)
    targets = _targets_by_key(patches.lora_modules(patch_dir), index)
    writer = _ShardWriter(out, max_shard_bytes)
    done = 0
    with torch.no_grad(), safe_open(str(patches.adapter_weights_path(patch_dir)), framework="pt") as factors:
        for file in models.checkpoint_files(base_dir):
            with safe_open(str(file), framework="pt") as shard:
                for key in shard.keys():
                    tensor = shard.get_tensor(key)
                    lora = targets.get(key)
                    if lora is not None:
                        a, b = factors.get_tensor(lora.a_key), factors.get_tensor(lora.b_key)
                        tensor = merged_weight(tensor.to(device), a, b, lora).contiguous().cpu()
                    writer.add(key, tensor)
                    done += 1
                    if progress is not None:
                        progress(done / len(index), key)
    writer.finish()


def _targets_by_key(modules: dict[str, patches.LoraModule], index: dict[str, Any]) -> dict[str, patches.LoraModule]:
    """Checkpoint tensor name -> the LoRA merged into it."""
    targets = {}
    for name, lora in modules.items():
        key = models.weight_key(name, index)
        if key is None:
            raise PatchError(f"the base has no weight for {name}: check compatibility first")
        targets[key] = lora
    return targets


class _ShardWriter:
    """Collects tensors into safetensors shards of at most max_bytes (a bigger tensor gets its own),
    named and indexed as transformers names them once the count is known."""

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder, self.max_bytes = folder, max_bytes
        self.pending: dict[str, Any] = {}
        self.pending_bytes = self.total_bytes = 0
        self.shards: list[list[str]] = []

    def add(self, name: str, tensor) -> None:
        if self.pending and self.pending_bytes + tensor.nbytes > self.max_bytes:
            self._flush()
        self.pending[name] = tensor
        self.pending_bytes += tensor.nbytes
        self.total_bytes += tensor.nbytes

    def _flush(self) -> None:
        from safetensors.torch import save_file

        save_file(self.pending, str(self._part(len(self.shards))), metadata={"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def _part(self, number: int) -> Path:
        return self.folder / f"part-{number:05d}"

    def finish(self) -> None:
        if self.pending or not self.shards:
            self._flush()
        if len(self.shards) == 1:
            self._part(0).rename(self.folder / "model.safetensors")
            return
        weight_map = {}
        for number, names in enumerate(self.shards):
            file = f"model-{number + 1:05d}-of-{len(self.shards):05d}.safetensors"
            self._part(number).rename(self.folder / file)
            weight_map.update(dict.fromkeys(names, file))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.folder / models.INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


class PatchServer:
    """One resident base with named patches attached; `use(name)` switches per request.

    Switching only flips which LoRA factors PEFT applies, so the base is never reloaded.
    A lock serialises requests because the active adapter is model-wide state.
    """

    def __init__(self, base_ref: str | Path, device: str | None = None, dtype=None) -> None:
        self.base_dir = models.resolve_model_dir(base_ref)
        self.base, self.tokenizer = models.load_base(self.base_dir, device=device, dtype=dtype)
        self.model = self.base
        self.patches: dict[str, Path] = {}
        self._lock = threading.RLock()

    def attach(self, name: str, patch_dir: str | Path) -> None:
        from peft import PeftModel

        _require_compatible(patch_dir, self.base_dir)
        patches.verify_weights(patch_dir)
        with self._lock:
            if name in self.patches:
                self.detach(name)
            with models.peft_wrapping():
                if not self.patches:
                    self.model = PeftModel.from_pretrained(self.base, str(patch_dir), adapter_name=name,
                                                           is_trainable=False)
                else:
                    self.model.load_adapter(str(patch_dir), adapter_name=name, is_trainable=False)
            self.model.eval()
            self.patches[name] = Path(patch_dir)

    def detach(self, name: str) -> None:
        with self._lock:
            if name not in self.patches:
                raise PatchError(f"no patch named {name} is attached")
            del self.patches[name]
            if self.patches:
                if name in self.model.active_adapters:
                    self.model.set_adapter(next(iter(self.patches)))
                self.model.delete_adapter(name)
            else:
                self.model = self.model.unload()  # removes the LoRA layers, leaves the base untouched
                self.base = self.model

    @contextmanager
    def use(self, name: str | None):
        """The model with patch `name` active (None: the base alone), held exclusively."""
        with self._lock:
            if name is None:
                if self.patches:
                    with self.model.disable_adapter():
                        yield self.model
                else:
                    yield self.model
                return
            if name not in self.patches:
                raise PatchError(f"no patch named {name} is attached (attached: {', '.join(self.patches) or 'none'})")
            self.model.set_adapter(name)
            yield self.model

    def forward(self, name: str | None, input_ids, attention_mask=None):
        import torch

        with self.use(name) as model, torch.no_grad():
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

    def generate(self, name: str | None, prompt: str, **kwargs) -> Iterator[str]:
        """Stream an answer with patch `name`; the lock is held until the stream ends."""
        with self.use(name) as model:
            yield from stream_generate(model, self.tokenizer, prompt, **kwargs)
