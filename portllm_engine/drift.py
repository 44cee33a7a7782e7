"""Relative Frobenius drift between two bases, streamed one tensor at a time."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portllm_engine import models
from portllm_engine.errors import EngineError


@dataclass
class DriftReport:
    overall: float
    modules: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "modules": dict(self.modules)}


def measure_drift(
    from_dir: str | Path, to_dir: str | Path, modules: list[str] | None = None
) -> DriftReport:
    """‖W₂−W₁‖/‖W₁‖ per module and over all of them; only two tensors are in memory at a time.

    `modules` are module paths (`model.layers.0.mlp.up_proj`); by default every weight matrix.
    """
    old_index = models.tensor_index(models.resolve_model_dir(from_dir))
    new_index = models.tensor_index(models.resolve_model_dir(to_dir))
    if modules is None:
        names = [n[: -len(".weight")] for n, (_, shape, _) in old_index.items() if n.endswith(".weight") and len(shape) >= 2]
    else:
        names = list(modules)
    if not names:
        raise EngineError("no weight matrices to compare")
    import torch

    per_module: dict[str, float] = {}
    total_diff = total_norm = 0.0
    for name in sorted(names):
        old_key, new_key = models.weight_key(name, old_index), models.weight_key(name, new_index)
        if old_key is None or new_key is None or old_key != new_key:
            side = from_dir if old_key is None else to_dir
            raise EngineError(f"module {name} is not in {side}: drift needs the same modules in both bases")
        key = old_key
        if old_index[key][1] != new_index[key][1]:
            raise EngineError(
                f"{name} has shape {old_index[key][1]} in {from_dir} but {new_index[key][1]} in {to_dir}: "
                "drift is only defined between bases of the same architecture"
            )
        old = _tensor(old_index[key][0], key)
        new = _tensor(new_index[key][0], key)
        # Norms reduce without a squared copy; only the difference is one temporary matrix.
        diff = float(torch.linalg.vector_norm(new.sub_(old))) ** 2
        norm = float(torch.linalg.vector_norm(old)) ** 2
        del old, new
        per_module[name] = math.sqrt(diff / norm) if norm > 0 else (0.0 if diff == 0 else math.inf)
        total_diff += diff
        total_norm += norm
    overall = math.sqrt(total_diff / total_norm) if total_norm > 0 else 0.0
    return DriftReport(overall=overall, modules=per_module)


def _tensor(file: Path, key: str):
    """One tensor as float32, its file opened and closed around it: a handle kept open keeps every
    page read through it resident, which over a whole comparison adds up to both bases."""
    from safetensors import safe_open

    with safe_open(str(file), framework="pt", device="cpu") as tensors:
        # A private copy-on-write view of the file that outlives the handle: changing it in place
        # costs the pages it writes, never the file.
        return tensors.get_tensor(key).float()
