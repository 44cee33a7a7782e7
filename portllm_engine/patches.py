"""Patch artifacts: a PEFT LoRA folder plus a `portllm.json` manifest.

A patch folder is loadable by PEFT as is (`adapter_config.json`, `adapter_model.safetensors`);
the manifest records where it came from so compatibility can be checked before any merge.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from portllm_engine import models
from portllm_engine.errors import EngineError, PatchError, UnsafeCheckpointError
from portllm_engine.prompt import CHAT, PromptFormat, Turn, render

MANIFEST = "portllm.json"
FORMAT_VERSION = 1
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
# Config switches that turn a LoRA into something a plain W += s·B·A merge would get wrong: why, what to do.
UNSUPPORTED_SWITCHES = {
    "use_dora": "DoRA rescales every weight by a learned magnitude that W += scale·B·A cannot carry; "
    "retrain it as plain LoRA (use_dora=False) or serve it with PEFT directly",
    "use_qalora": "QALoRA pools the inputs of a quantized base; retrain it as plain LoRA",
    "layer_replication": "it stacks copies of base layers; retrain it without layer_replication",
    "target_parameters": "it adapts raw parameters (e.g. MoE experts), not modules; retrain it with target_modules",
    "modules_to_save": "it carries fully trained copies of whole modules, which a LoRA merge would silently drop; "
    "retrain it with those modules in target_modules instead of modules_to_save",
}
_LORA_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?$")
# PEFT stores whole base matrices next to the factors when LoRA targets embeddings (save_embedding_layers).
_CARRIED_KEY = re.compile(r"^(?P<module>.+)\.base_layer\.weight$")

Progress = Callable[[float, str], None]


@dataclass
class PatchManifest:
    format_version: int
    origin_fingerprint: str | None
    origin_signature: dict[str, Any] | None
    tokenizer_fingerprint: str | None
    target_modules: list[str]
    rank: int
    alpha: float
    use_rslora: bool
    weights_sha256: str
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchManifest:
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        missing = {"format_version", "target_modules", "rank", "alpha", "weights_sha256"} - known.keys()
        if missing:
            raise PatchError(f"{MANIFEST} lacks {', '.join(sorted(missing))}: re-import the patch")
        known.setdefault("use_rslora", False)
        for optional in ("origin_fingerprint", "origin_signature", "tokenizer_fingerprint"):
            known.setdefault(optional, None)
        return cls(**known)


@dataclass
class LoraModule:
    """One adapted module as stored on disk (shapes only; tensors are read when merging)."""

    name: str  # module path in the base model, e.g. model.layers.0.self_attn.q_proj
    a_key: str
    b_key: str
    a_shape: list[int]
    b_shape: list[int]
    scale: float
    embedding: bool
    fan_in_fan_out: bool

    @property
    def rank(self) -> int:
        return self.a_shape[0]

    @property
    def base_shape(self) -> list[int]:
        """The shape of the base weight this delta is added to."""
        if self.embedding:
            return [self.a_shape[1], self.b_shape[0]]
        if self.fan_in_fan_out:
            return [self.a_shape[1], self.b_shape[0]]
        return [self.b_shape[0], self.a_shape[1]]


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_manifest(patch_dir: str | Path) -> PatchManifest | None:
    """The manifest of a PortLLM patch, or None for a plain PEFT folder."""
    root = Path(patch_dir)
    if not root.is_dir():
        raise PatchError(f"patch folder {root} not found")
    path = root / MANIFEST
    if not path.is_file():
        if (root / ADAPTER_CONFIG).is_file():
            return None
        raise PatchError(f"{root} is neither a PortLLM patch ({MANIFEST}) nor a PEFT folder ({ADAPTER_CONFIG})")
    return PatchManifest.from_dict(_read_json_object(path))


def read_adapter_config(patch_dir: str | Path) -> dict[str, Any]:
    path = Path(patch_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise PatchError(f"{patch_dir} has no {ADAPTER_CONFIG}: not a PEFT adapter folder")
    return _read_json_object(path)


def _read_json_object(path: Path) -> dict[str, Any]:
    """A patch's JSON file, or a PatchError that names the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PatchError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise PatchError(f"{path} is not a JSON object")
    return data


def unsupported_features(config: dict[str, Any]) -> list[str]:
    """Why this adapter cannot be merged as W += scale·B·A (empty when it can)."""
    problems = []
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        problems.append(f"adapter kind {kind or 'unknown'} (only LORA is supported)")
    for switch, reason in UNSUPPORTED_SWITCHES.items():
        if config.get(switch):
            problems.append(f"{switch} is set: {reason}")
    return problems


def adapter_weights_path(patch_dir: str | Path) -> Path:
    root = Path(patch_dir)
    path = root / ADAPTER_WEIGHTS
    if path.is_file():
        return path
    pickled = sorted(p.name for p in root.iterdir() if p.suffix in models.PICKLE_SUFFIXES) if root.is_dir() else []
    if pickled:
        raise UnsafeCheckpointError(
            f"{root} holds only pickled adapter weights ({', '.join(pickled)}); save it with safetensors"
        )
    raise PatchError(f"{root} has no {ADAPTER_WEIGHTS}")


def _pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    # PEFT matches rank_pattern / alpha_pattern keys as regexes against the module path's end.
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def carried_copies(header: dict[str, Any]) -> dict[str, str]:
    """Module name -> adapter key of each whole base matrix the adapter carries."""
    found = {key: _CARRIED_KEY.match(key) for key in header}
    return {match["module"].removeprefix(PEFT_PREFIX): key for key, match in found.items() if match}


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def lora_modules(patch_dir: str | Path, config: dict[str, Any] | None = None) -> dict[str, LoraModule]:
    """Module name -> LoRA factors' keys, shapes and scale, from the safetensors header only."""
    config = config if config is not None else read_adapter_config(patch_dir)
    header = models.safetensors_header(adapter_weights_path(patch_dir))
    parts: dict[str, dict[str, tuple[str, list[int]]]] = {}
    carried = carried_copies(header)
    if carried:
        raise PatchError(
            f"{ADAPTER_WEIGHTS} in {patch_dir} carries whole copies of {', '.join(carried)} (PEFT's "
            "save_embedding_layers), which would overwrite a new base's own weights: import it with its origin "
            "base (copies equal to that base are dropped) or re-save it with save_embedding_layers=False"
        )
    for key, info in header.items():
        match = _LORA_KEY.match(key)
        if match is None:
            raise PatchError(f"unexpected tensor {key} in {ADAPTER_WEIGHTS}: not a plain LoRA adapter")
        module = match["module"].removeprefix(PEFT_PREFIX)
        parts.setdefault(module, {})[match["part"].replace("embedding_", "")] = (key, list(info["shape"]))
    result = {}
    for name, found in sorted(parts.items()):
        if set(found) != {"lora_A", "lora_B"}:
            raise PatchError(f"module {name} lacks {'lora_B' if 'lora_A' in found else 'lora_A'} in the adapter")
        (a_key, a_shape), (b_key, b_shape) = found["lora_A"], found["lora_B"]
        embedding = "lora_embedding_A" in a_key  # stored as A (r, num), B (dim, r)
        rank = a_shape[0]
        alpha = _pattern_value(config.get("alpha_pattern"), name, config.get("lora_alpha", 8))
        result[name] = LoraModule(
            name=name,
            a_key=a_key,
            b_key=b_key,
            a_shape=a_shape,
            b_shape=b_shape,
            scale=lora_scale(float(alpha), rank, bool(config.get("use_rslora"))),
            embedding=embedding,
            fan_in_fan_out=bool(config.get("fan_in_fan_out")),
        )
    if not result:
        raise PatchError(f"{ADAPTER_WEIGHTS} in {patch_dir} holds no LoRA factors")
    return result


def _manifest_for(
    patch_dir: Path, origin_dir: Path, config: dict[str, Any], provenance: dict[str, Any]
) -> PatchManifest:
    modules = lora_modules(patch_dir, config)
    ranks = {m.rank for m in modules.values()}
    return PatchManifest(
        format_version=FORMAT_VERSION,
        origin_fingerprint=models.fingerprint(origin_dir),
        origin_signature=models.architecture_signature(origin_dir),
        tokenizer_fingerprint=models.tokenizer_fingerprint(origin_dir),
        target_modules=sorted(modules),
        rank=max(ranks),
        alpha=float(config.get("lora_alpha", 8)),
        use_rslora=bool(config.get("use_rslora")),
        weights_sha256=sha256_file(patch_dir / ADAPTER_WEIGHTS),
        provenance=provenance,
    )


def write_manifest(patch_dir: Path, manifest: PatchManifest) -> None:
    (Path(patch_dir) / MANIFEST).write_text(json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n")


Example = tuple[list[Turn], str, str | None]  # (turns ending with the user's, the reply, the data's own system prompt)


def _example(row: Any) -> Example | None:
    """An example in one of TRL's two formats: `{"messages": [...]}` ending with the assistant's
    reply, or `{"prompt", "completion"}` as strings or as messages. None when it is neither."""
    if not isinstance(row, dict):
        return None
    if "messages" in row:
        messages = row["messages"]
    elif isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return [{"role": "user", "content": row["prompt"]}], row["completion"], None
    elif isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        messages = row["prompt"] + row["completion"]
    else:
        return None
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in messages
    ):
        return None
    system = [m["content"] for m in messages if m["role"] == "system"]
    turns = [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"]
    if len(turns) < 2 or turns[-1]["role"] != "assistant" or turns[-2]["role"] != "user":
        return None
    return turns[:-1], turns[-1]["content"], (system[0] if system else None)


def read_examples(data_jsonl: str | Path) -> list[Example]:
    """The examples of a training JSONL in TRL's formats (errors name the line)."""
    path = Path(data_jsonl)
    if not path.is_file():
        raise EngineError(f"training data {path} not found")
    examples = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise EngineError(f"{path} line {number}: not valid JSON") from None
        example = _example(row)
        if example is None:
            raise EngineError(
                f"{path} line {number}: needs {{\"messages\": [...]}} ending with a user turn and the assistant's "
                "reply, or string fields 'prompt' and 'completion' (TRL's formats)"
            )
        examples.append(example)
    if not examples:
        raise EngineError(f"training data {path} has no examples")
    return examples


def encode_example(tokenizer, example: Example, fmt: PromptFormat, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels through the one prompt function: the loss falls on the reply and its
    end-of-turn only. The data's own system prompt, where it has one, replaces the assistant's."""
    turns, reply, system = example
    if system is not None:
        fmt = PromptFormat(fmt.kind, system)
    rendered = render(tokenizer, turns, fmt, reply)
    ids = rendered.ids + rendered.reply_ids
    labels = [-100] * len(rendered.ids) + rendered.reply_ids
    return ids[-max_len:], labels[-max_len:]


def train_patch(
    base_dir: str | Path,
    data_jsonl: str | Path,
    out_dir: str | Path,
    *,
    rank: int = 8,
    alpha: float = 16,
    epochs: int = 3,
    lr: float = 2e-4,
    seed: int = 0,
    target_modules: list[str] | str | None = None,
    init_from: Path | None = None,
    progress: Progress | None = None,
    device: str | None = None,
    batch_size: int = 16,
    use_rslora: bool = False,
    weight_decay: float = 0.0,
    prompt_format: str = CHAT,
    system_prompt: str = "",
) -> PatchManifest:
    """LoRA fine-tune on conversations rendered in `prompt_format` with `system_prompt` (loss on the
    replies), seeded; writes a patch folder that records the format it learned."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model

    started = time.perf_counter()
    base_root = models.resolve_model_dir(base_dir)
    data = read_examples(data_jsonl)
    fmt = PromptFormat(prompt_format, system_prompt)
    device = device or models.pick_device()
    torch.manual_seed(seed)
    model, tokenizer = models.load_base(base_root, device=device, dtype=torch.float32)
    if init_from is not None:
        # Warm start (re-tune): continue from an existing patch's factors.
        with models.peft_wrapping():
            model = PeftModel.from_pretrained(model, str(init_from), is_trainable=True)
        config = read_adapter_config(init_from)
        rank, alpha, use_rslora = int(config["r"]), float(config["lora_alpha"]), bool(config.get("use_rslora"))
    else:
        lora_config = LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=0.0,
            target_modules=target_modules or "all-linear",
            use_rslora=use_rslora,
            task_type="CAUSAL_LM",
        )
        with models.peft_wrapping():
            model = get_peft_model(model, lora_config)
    model.train()
    max_len = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    examples = [encode_example(tokenizer, example, fmt, max_len) for example in data]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    order = random.Random(seed)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total)
    pad = tokenizer.pad_token_id
    step, loss_value = 0, float("nan")
    for epoch in range(epochs):
        indices = list(range(len(examples)))
        order.shuffle(indices)
        for start in range(0, len(indices), batch_size):
            batch = [examples[i] for i in indices[start : start + batch_size]]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=device)
            labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch], device=device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=device)
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            loss_value = float(loss.detach())
            if progress is not None:
                progress(step / total, f"epoch {epoch + 1}/{epochs} loss {loss_value:.3f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    config = read_adapter_config(out)
    config["base_model_name_or_path"] = None  # a local path would leak and mislead; the manifest names the base
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    provenance = {
        "kind": "retune" if init_from is not None else "train",
        "dataset_sha256": sha256_file(Path(data_jsonl)),
        "examples": len(data),
        "hyperparameters": {
            "rank": rank,
            "alpha": alpha,
            "epochs": epochs,
            "lr": lr,
            "batch_size": batch_size,
            "use_rslora": use_rslora,
            "weight_decay": weight_decay,
            "target_modules": target_modules or "all-linear",
        },
        "seed": seed,
        "prompt_format": {"kind": fmt.kind, "system_prompt": fmt.system_prompt, "digest": fmt.digest(tokenizer)},
        "steps": step,
        "final_loss": loss_value,
        "duration_s": round(time.perf_counter() - started, 3),
        "device": device,
    }
    if init_from is not None:
        provenance["init_from_sha256"] = sha256_file(Path(init_from) / ADAPTER_WEIGHTS)
    manifest = _manifest_for(out, base_root, config, provenance)
    write_manifest(out, manifest)
    return manifest


def import_peft(src_dir: str | Path, out_dir: str | Path, origin_base_dir: str | Path) -> PatchManifest:
    """Copy a plain PEFT LoRA folder into a PortLLM patch, naming the base it was trained on."""
    src, out = Path(src_dir), Path(out_dir)
    config = read_adapter_config(src)
    problems = unsupported_features(config)
    if problems:
        raise PatchError(f"cannot import {src}: {problems[0]}")
    weights = adapter_weights_path(src)
    origin = models.resolve_model_dir(origin_base_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / ADAPTER_CONFIG, out / ADAPTER_CONFIG)
    carried = carried_copies(models.safetensors_header(weights))
    if carried:
        _save_without_copies(weights, carried, origin, out / ADAPTER_WEIGHTS)
    else:
        shutil.copyfile(weights, out / ADAPTER_WEIGHTS)
    manifest = _manifest_for(out, origin, config, {"kind": "import", "source": src.name})
    write_manifest(out, manifest)
    return manifest


def _save_without_copies(weights: Path, carried: dict[str, str], origin: Path, out: Path) -> None:
    """The adapter's factors alone, once every carried base matrix is shown equal to the origin's:
    a copy equal to the origin adds nothing, while a changed one (say, a resized vocabulary)
    is a full fine-tune of that matrix that no delta can carry."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    index = models.tensor_index(origin)
    with safe_open(str(weights), framework="pt") as adapter:
        for module, key in carried.items():
            found, carried_tensor = models.weight_key(module, index), adapter.get_tensor(key)
            if found is None or not torch.equal(carried_tensor, _origin_tensor(index, found).to(carried_tensor.dtype)):
                raise PatchError(
                    f"the adapter carries a copy of {module} that differs from {origin.name}'s (a resized vocabulary "
                    "or a fully trained matrix): it cannot be carried as a LoRA delta; retrain it on the new base"
                )
        kept = {key: adapter.get_tensor(key) for key in adapter.keys() if key not in carried.values()}
        save_file(kept, str(out), metadata=adapter.metadata())


def _origin_tensor(index: dict[str, Any], key: str):
    from safetensors import safe_open

    with safe_open(str(index[key][0]), framework="pt") as shard:
        return shard.get_tensor(key)


def verify_weights(patch_dir: str | Path) -> PatchManifest | None:
    """Raises PatchError when the adapter weights do not match the manifest's sha256."""
    manifest = read_manifest(patch_dir)
    if manifest is not None:
        actual = sha256_file(adapter_weights_path(patch_dir))
        if actual != manifest.weights_sha256:
            raise PatchError(
                f"adapter weights in {patch_dir} do not match {MANIFEST} (sha256 {actual[:12]} != "
                f"{manifest.weights_sha256[:12]}): the patch was altered or corrupted"
            )
    return manifest


def export_patch(patch_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a verified patch (PEFT files + manifest) to out_dir, loadable by PEFT alone."""
    src, out = Path(patch_dir), Path(out_dir)
    verify_weights(src)
    out.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MANIFEST):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    return out
