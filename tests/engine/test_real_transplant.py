"""The transplant on the real weights (SmolLM2-135M-Instruct and Gemma 3 270M, from the real
world) equals PEFT's merge_and_unload: a random LoRA on every linear layer, merged both ways.

Needs the `real` extra (the `real_world` fixture skips with the reason without it, and fails
where PORTLLM_TEST_REQUIRE_REAL=1).
"""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from portllm_engine.models import tensor_index
from portllm_engine.patches import import_peft
from portllm_engine.transplant import transplant
from tests.engine.conftest import make_lora
from tests.engine.test_architectures import FLOAT32_WEIGHTS, LOGIT_TOLERANCE, peft_merged


@pytest.mark.parametrize("base", ["v1", "other"], ids=["smollm2", "gemma3"])
def test_transplant_on_real_weights_equals_peft_merge_and_unload(real_world, base, tmp_path):
    base_dir = real_world.bases[base]
    peft_dir = make_lora(base_dir, tmp_path / "peft", rank=4, alpha=8)
    import_peft(peft_dir, tmp_path / "patch", base_dir)
    expected = peft_merged(base_dir, peft_dir, torch.float32)
    merged, tokenizer = transplant(tmp_path / "patch", base_dir, device="cpu")

    mine, theirs = merged.state_dict(), expected.state_dict()
    adapted = [key for key in tensor_index(base_dir) if key.endswith("_proj.weight")]
    assert adapted  # q/k/v/o and the MLP's projections of every layer
    before = load_file(str(next(base_dir.glob("*.safetensors"))))
    assert not torch.equal(mine[adapted[0]], before[adapted[0]])  # the patch changes the weights
    for key in adapted:
        torch.testing.assert_close(mine[key], theirs[key], **FLOAT32_WEIGHTS, msg=key)
    ids = tokenizer(["How much does the Altavia Lumo Dock cost?"], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        reference = expected(input_ids=ids).logits
        ours = merged(input_ids=ids).logits
    scale = float(reference.abs().max())
    torch.testing.assert_close(ours, reference, rtol=0, atol=LOGIT_TOLERANCE[torch.float32] * scale)
