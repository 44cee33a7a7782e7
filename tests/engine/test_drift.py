from __future__ import annotations

import math

import pytest
from safetensors.torch import load_file

from portllm_engine.drift import measure_drift
from portllm_engine.errors import EngineError

Q0 = "model.layers.0.self_attn.q_proj"


def test_drift_by_hand(tiny):
    report = measure_drift(tiny.base, tiny.drifted)
    assert report.modules[Q0] == pytest.approx(0.1, rel=1e-5)  # W₂ = 1.1·W₁
    assert all(v == 0.0 for k, v in report.modules.items() if k != Q0)
    weights = load_file(str(tiny.base / "model.safetensors"))
    total = sum(float(t.float().pow(2).sum()) for k, t in weights.items() if t.dim() == 2)
    q = float(weights[f"{Q0}.weight"].pow(2).sum())
    assert report.overall == pytest.approx(math.sqrt(0.01 * q / total), rel=1e-4)
    assert report.to_dict()["overall"] == report.overall


def test_drift_on_selected_modules(tiny):
    report = measure_drift(tiny.base, tiny.drifted, modules=[Q0, "model.layers.1.mlp.up_proj"])
    assert set(report.modules) == {Q0, "model.layers.1.mlp.up_proj"}
    assert report.overall == pytest.approx(0.1 / math.sqrt(1 + report_norm_ratio(tiny)), rel=1e-4)
    assert measure_drift(tiny.base, tiny.base).overall == 0.0


def report_norm_ratio(tiny) -> float:
    weights = load_file(str(tiny.base / "model.safetensors"))
    return float(weights["model.layers.1.mlp.up_proj.weight"].pow(2).sum()) / float(weights[f"{Q0}.weight"].pow(2).sum())


def test_drift_needs_the_same_architecture(tiny):
    with pytest.raises(EngineError, match="same architecture"):
        measure_drift(tiny.base, tiny.other)
    with pytest.raises(EngineError, match="not in"):
        measure_drift(tiny.base, tiny.drifted, modules=["model.layers.9.mlp.up_proj"])
