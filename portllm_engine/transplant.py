"""Transplant a patch onto a base: merge it into the weights, or attach several by name."""
from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from portllm_engine import compat, models, patches
from portllm_engine.errors import IncompatiblePatchError, PatchError
from portllm_engine.generate import stream_generate


def _require_compatible(patch_dir: str | Path, base_dir: str | Path) -> None:
    report = compat.check(patch_dir, base_dir)
    if not report.compatible:
        first = report.errors[0]["message"]
        more = f" (+{len(report.errors) - 1} more)" if len(report.errors) > 1 else ""
        raise IncompatiblePatchError(
            f"patch {Path(patch_dir).name} does not fit {Path(base_dir).name}: {first}{more}", report.to_dict()
        )


def merge_into(model, patch_dir: str | Path):
    """W ← W + scale·B·A for every adapted module, in place and in the base's dtype.

    The product is formed in float32 one module at a time and added with a single rounding
    into W, so a bf16 base loses no more precision than storing the merged weight requires.
    """
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
            a = tensors.get_tensor(lora.a_key).to(weight.device, torch.float32)
            b = tensors.get_tensor(lora.b_key).to(weight.device, torch.float32)
            if weight.dtype == torch.float32 and not (lora.embedding or lora.fan_in_fan_out):
                merged = torch.addmm(weight, b, a, alpha=lora.scale)
            else:
                delta = (b @ a).mul_(lora.scale)
                if lora.embedding or lora.fan_in_fan_out:
                    delta = delta.T
                merged = delta.add_(weight).to(weight.dtype)  # summed in float32, rounded once
            # Fresh memory rather than writing in place: on CPU the loaded weights are pages of the
            # mapped checkpoint, and copy-on-write page by page costs twice a plain copy.
            weight.data = merged
    return model


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
            if not self.patches:
                self.model = PeftModel.from_pretrained(self.base, str(patch_dir), adapter_name=name, is_trainable=False)
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
