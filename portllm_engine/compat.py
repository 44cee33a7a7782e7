"""Can this patch go onto that base? Every problem is reported as data, never raised."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from portllm_engine import models, patches
from portllm_engine.compat_summary import Summary, summarise
from portllm_engine.errors import EngineError, UnsafeCheckpointError
from portllm_engine.models import checkpoint_key


@dataclass
class CompatReport:
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def compatible(self) -> bool:
        return not self.errors

    def error(self, code: str, message: str, **details: Any) -> None:
        self.errors.append({"code": code, "message": message, **details})

    def warn(self, code: str, message: str, **details: Any) -> None:
        self.warnings.append({"code": code, "message": message, **details})

    def summary(self) -> Summary:
        """For people: the reason first, then one bounded line per kind of problem."""
        return summarise(self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {"compatible": self.compatible, "errors": list(self.errors), "warnings": list(self.warnings)}


def check(patch_dir: str | Path, base_dir: str | Path) -> CompatReport:
    """Compare a patch (PortLLM or plain PEFT LoRA folder) with a base, from headers and manifests only."""
    report = CompatReport()
    lora = _read_patch(Path(patch_dir), report)
    base = _read_base(base_dir, report)
    if lora is None or base is None:
        return report
    manifest, modules = lora
    signature, tokenizer_fp, config = base
    _check_architecture(manifest, signature, report)
    _check_tied_embeddings(modules, signature, config, report)
    _check_modules(modules, signature, report)
    _check_tokenizer(manifest, tokenizer_fp, report)
    return report


def _read_patch(root: Path, report: CompatReport):
    try:
        manifest = patches.read_manifest(root)
        config = patches.read_adapter_config(root)
    except EngineError as exc:
        report.error("patch_unreadable", str(exc))
        return None
    problems = patches.unsupported_features(config)
    for problem in problems:
        report.error("unsupported_adapter", f"unsupported adapter: {problem}")
    if problems:
        return None
    try:
        modules = patches.lora_modules(root, config)
    except UnsafeCheckpointError as exc:
        report.error("unsafe_checkpoint", str(exc))
        return None
    except EngineError as exc:
        report.error("patch_unreadable", str(exc))
        return None
    if manifest is None:
        report.warn(
            "no_manifest",
            "plain PEFT folder: origin base, tokenizer and weights digest are unknown; only shapes and modules were checked",
            unknown=["origin_fingerprint", "origin_signature", "tokenizer_fingerprint", "weights_sha256"],
        )
    else:
        actual = patches.sha256_file(patches.adapter_weights_path(root))
        if actual != manifest.weights_sha256:
            report.error(
                "digest_mismatch",
                f"adapter weights sha256 {actual[:12]} does not match the manifest's {manifest.weights_sha256[:12]}: "
                "the patch was altered or corrupted",
                expected=manifest.weights_sha256,
                found=actual,
            )
        declared = set(manifest.target_modules)
        if declared != set(modules):
            report.error(
                "manifest_mismatch",
                "the manifest's target modules differ from the adapter weights: re-import the patch",
            )
    return manifest, modules


def _read_base(base_dir: str | Path, report: CompatReport):
    try:
        root = models.resolve_model_dir(base_dir)
        signature = models.architecture_signature(root)
        config = models.read_config(root)
    except UnsafeCheckpointError as exc:
        report.error("unsafe_checkpoint", str(exc))
        return None
    except (EngineError, OSError) as exc:
        report.error("base_unreadable", str(exc))
        return None
    try:
        tokenizer_fp = models.tokenizer_fingerprint(root)
    except EngineError as exc:
        report.warn("no_tokenizer", str(exc))
        tokenizer_fp = None
    return signature, tokenizer_fp, config


def _check_architecture(manifest, signature: dict[str, Any], report: CompatReport) -> None:
    origin = manifest.origin_signature if manifest is not None else None
    if not origin:
        return
    if origin.get("model_type") != signature.get("model_type"):
        report.error(
            "model_type_mismatch",
            f"patch was trained on a {origin.get('model_type')} model, the base is {signature.get('model_type')}",
            expected=origin.get("model_type"),
            found=signature.get("model_type"),
        )
    for key in ("hidden_size", "num_layers"):
        if origin.get(key) != signature.get(key):
            report.error(
                "architecture_mismatch",
                f"{key} differs: patch origin {origin.get(key)}, base {signature.get(key)}",
                field=key,
                expected=origin.get(key),
                found=signature.get(key),
            )
    if origin.get("vocab_size") != signature.get("vocab_size"):
        report.error(
            "vocab_mismatch",
            f"vocabulary size differs: patch origin {origin.get('vocab_size')}, base {signature.get('vocab_size')}",
            expected=origin.get("vocab_size"),
            found=signature.get("vocab_size"),
        )


def tied_embedding_reason(module: str) -> str:
    return (
        f"the patch adapts {module}, one matrix that this base shares between its input embeddings and "
        "output layer (tie_word_embeddings): a merge would change both with one delta, unlike the patch as trained; "
        "retrain the patch without embed_tokens and lm_head in target_modules (e.g. target_modules='all-linear')"
    )


def ties_embeddings(config: dict[str, Any], signature: dict[str, Any]) -> bool:
    """Whether the base shares one matrix between input embeddings and output layer."""
    text_config = config.get("text_config") or config
    tied = text_config.get("tie_word_embeddings", config.get("tie_word_embeddings"))
    # Without the flag, a checkpoint that stores no lm_head can only be reusing the embeddings.
    return bool(tied) if tied is not None else "lm_head" not in signature.get("modules", {})


def _check_tied_embeddings(modules, signature: dict[str, Any], config: dict[str, Any], report: CompatReport) -> None:
    if not ties_embeddings(config, signature):
        return
    for name, module in modules.items():
        if module.embedding or name.split(".")[-1] == "lm_head":
            report.error("tied_embeddings", tied_embedding_reason(name), module=name)


def _check_modules(modules: dict[str, patches.LoraModule], signature: dict[str, Any], report: CompatReport) -> None:
    base_modules = signature.get("modules", {})
    for name, module in modules.items():
        key = checkpoint_key(name, base_modules)
        if key is None:
            report.error("missing_module", f"the base has no module {name}", module=name)
            continue
        if list(base_modules[key]) != module.base_shape:
            report.error(
                "shape_mismatch",
                f"{name}: the patch expects a {tuple(module.base_shape)} weight, the base has {tuple(base_modules[key])}",
                module=name,
                expected=module.base_shape,
                found=list(base_modules[key]),
            )


def _check_tokenizer(manifest, tokenizer_fp: str | None, report: CompatReport) -> None:
    expected = manifest.tokenizer_fingerprint if manifest is not None else None
    if expected is None or tokenizer_fp is None:
        return
    if expected != tokenizer_fp:
        report.error(
            "tokenizer_mismatch",
            "the base's tokenizer differs from the one the patch was trained with (token ids would not line up): "
            "retrain or re-tune the patch on this base instead of transplanting it",
            expected=expected,
            found=tokenizer_fp,
        )
