"""Register what teams bring: bases, assistants with their KPI suites, and patches.

Every check runs before anything is written; files go into the content-addressed store and
are removed again when the registry transaction fails. The CLI, the demo and the workers call
these; none re-implements them. The engine (torch) is imported inside the functions that need it.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from portllm_core.errors import BadInput
from portllm_engine.errors import EngineError
from portllm_core.flows.releases import ReleaseStarted, enqueue_release, open_release
from portllm_core.staging import staged
from portllm_core.text import short
from portllm_core.validate import (
    check_fraction,
    check_name,
    check_on_release,
    check_prompt_format,
    existing_dir,
    existing_file,
    parse_live_guard,
)
from portllm_core.workspace import Workspace
from registry import services
from registry.errors import UnknownAssistant, UnknownBase


# -- bases ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BaseRegistered:
    label: str
    signature: dict
    fingerprint: str
    release: ReleaseStarted | None  # None: another label for weights the family has (`alias_of`), or `forced`
    warnings: list[str] = field(default_factory=list)
    alias_of: str | None = None  # "demo v3": the family's first label for these weights
    # Registered with `force` although its architecture is not the family's: how it differs. No release.
    forced: str | None = None


def register_base(ws: Workspace, family: str, version: str, ref: str, *, actor: str,
                  description: str = "", force: bool = False) -> BaseRegistered:
    """Fingerprint a local model folder (or a hub id in the local cache), register it, and start
    its release: the assistants live on the family get their runs (or offers) per their policy.

    Weights the family already has are registered as another label for them and release
    nothing: the release of their first label carried them to the live channels already.

    A base whose architecture is not the family's (that of its first base) is refused: no patch
    of the family could be carried onto it. With `force` it is registered anyway and releases
    nothing (its runs could only fail the compatibility check); `portllm release start` can still
    release it on purpose."""
    from portllm_engine.models import resolve_model_dir

    check_name("family", family)
    check_name("version", version)
    with ws.session() as s:
        existing = _find(services.get_base, s, family, version, missing=UnknownBase)
        if existing is not None:
            raise BadInput(f"base {family} {version} is already registered (from {existing.source_ref}); "
                           "pick a new version label")
    gguf_dir, gguf_record = _dequantized(ws, family, version, ref)
    model_dir = gguf_dir or resolve_model_dir(ref)
    source_ref = str(model_dir) if gguf_dir or Path(ref).expanduser().exists() else ref
    if gguf_record and not description:
        description = (f"dequantized from {gguf_record['file']} ({gguf_record['file_type']}, "
                       f"sha256 {gguf_record['sha256']})")
    signature = base_signature(model_dir)
    forced = _architecture_change(ws, family, version, signature, force=force)
    fingerprint, tokenizer_fp = _identity(model_dir)
    with ws.session() as s:
        warnings = [
            f"same weights as {twin.family} {twin.version} of another family (fingerprint {short(fingerprint)}); "
            f"registering {family} {version} anyway"
            for twin in services.list_bases(s, family=None)
            if twin.fingerprint == fingerprint and twin.family.lower() != family.lower()
        ]
        base = services.register_base(
            s, family=family, version=version, source_ref=source_ref, fingerprint=fingerprint,
            signature=signature, tokenizer_fingerprint=tokenizer_fp, actor=actor,
            **({"description": description} if description else {}),
            **({"forced_architecture": forced} if forced else {}),
        )
        first = services.earlier_label(s, base)
        if first is not None:
            return BaseRegistered(f"{family} {version}", signature, fingerprint, None, warnings,
                                  alias_of=f"{first.family} {first.version}")
        if forced:
            return BaseRegistered(f"{family} {version}", signature, fingerprint, None, warnings, forced=forced)
        release = open_release(s, base, actor=actor)
    enqueue_release(ws.queue, release)
    return BaseRegistered(release.label, signature, fingerprint, release, warnings)


def _dequantized(ws: Workspace, family: str, version: str, ref: str) -> tuple[Path | None, dict | None]:
    """A GGUF file (or a folder holding one, and no config.json) dequantized into a safetensors
    folder in the data dir, which is then registered, and the file's record (sha256,
    quantization); (None, None) for a plain model folder or hub id."""
    from portllm_engine.gguf import find_gguf, import_gguf

    path = Path(ref).expanduser()
    if not (path.suffix == ".gguf" or (path.is_dir() and not (path / "config.json").exists()
                                       and any(path.glob("*.gguf")))):
        return None, None
    out = ws.settings.data_dir / "models" / family / version
    staging = out.with_name(f".{version}-importing")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        record = import_gguf(find_gguf(path), staging)
    except EngineError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BadInput(str(exc)) from None
    shutil.rmtree(out, ignore_errors=True)  # a version is registered once: a leftover is an earlier failed try
    staging.rename(out)
    return out, record


def base_signature(model_dir: Path) -> dict:
    """The architecture signature, from the config and the weights' headers (no hashing yet)."""
    from portllm_engine.models import architecture_signature, read_config

    if read_config(model_dir).get("auto_map"):
        raise BadInput(f"{model_dir} needs remote code (config.json has auto_map); "
                       "PortLLM never runs trust_remote_code")
    return architecture_signature(model_dir)  # refuses pickled checkpoints before any hashing


def _identity(model_dir: Path) -> tuple[str, str]:
    """(weights fingerprint, tokenizer fingerprint): reads every weight."""
    from portllm_engine.models import fingerprint, tokenizer_fingerprint

    return fingerprint(model_dir), tokenizer_fingerprint(model_dir)


def _architecture_change(ws: Workspace, family: str, version: str, signature: dict, *, force: bool) -> str | None:
    """How `signature` differs from the family's architecture (its first base's), or None when it is
    the same or the family is new. Refused unless `force`: then the difference is returned."""
    from portllm_engine.models import signature_changes

    with ws.session() as s:
        bases = services.list_bases(s, family=family)
        if not bases:
            return None
        first = bases[0]
        changes = signature_changes(first.signature or {}, signature)
        founder = f"{first.family} {first.version}"
    if not changes:
        return None
    if not force:
        raise BadInput(
            f"{family} {version} is not the architecture of family {first.family} (that of {founder}): "
            f"{'; '.join(changes)}. No patch of the family could be carried onto it, so nothing was registered "
            f"or released. Register it as a family of its own, or pass --force to add it to {first.family} "
            "anyway (it releases nothing)."
        )
    return f"vs {founder}: {'; '.join(changes)}"


def _find(get, s, *args, missing: type[Exception]):
    try:
        return get(s, *args)
    except missing:
        return None


# -- assistants -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Suite:
    path: Path
    digest: str
    n_items: int


def load_suite(path: Path) -> Suite:
    """Validate every line of a KPI suite before anything is stored; errors name the line."""
    from portllm_engine.errors import SuiteError
    from portllm_engine.kpi import load_suite as read_items, suite_digest

    path = existing_file("suite", path)
    try:
        items = read_items(path)
    except SuiteError as exc:
        message = str(exc)
        raise BadInput(message if str(path) in message else f"suite {path}: {message}") from None
    return Suite(path, suite_digest(path), len(items))


def add_assistant(ws: Workspace, name: str, *, family: str, suite: Path, actor: str,
                  full_suite: Path | None = None, min_accuracy: float = 0.5, max_regression: float = 0.05,
                  approvers: list[str] = (), admins: list[str] = (), requesters: list[str] = (),
                  four_eyes: bool = False, system_prompt: str = "", owner: str = "", on_release: str = "auto",
                  live_guard: str | None = None, prompt_format: str = "chat") -> tuple[str, Suite]:
    """Register an assistant with its quick KPI suite (and optional full one, the gate's second
    stage); returns (the family as registered, the quick suite). `live_guard` is
    `MIN_RATINGS:MIN_SATISFACTION` (validate.parse_live_guard)."""
    check_name("assistant name", name)
    on_release = check_on_release(on_release)
    prompt_format = check_prompt_format(prompt_format)
    guard_n, guard_rate = parse_live_guard(live_guard) if live_guard else (None, None)
    check_fraction("--min-accuracy", min_accuracy)
    check_fraction("--max-regression", max_regression)
    with ws.session() as s:
        if _find(services.get_assistant, s, name, missing=UnknownAssistant) is not None:
            raise BadInput(f"assistant {name} already exists; use `portllm assistant set {name} …` to change it")
        family = registered_family(s, family)
    loaded = load_suite(suite)
    full = load_suite(full_suite) if full_suite is not None else None
    with staged(ws.store) as staging:
        suite_ref = staging.put_file(loaded.path)
        full_fields = {} if full is None else {"full_suite_ref": staging.put_file(full.path),
                                               "full_suite_digest": full.digest}
        with ws.session() as s:
            services.create_assistant(
                s, name=name, family=family, suite_ref=suite_ref, suite_digest=loaded.digest, **full_fields,
                min_accuracy=min_accuracy, max_regression=max_regression, approvers=list(approvers),
                admins=list(admins), requesters=list(requesters), four_eyes=four_eyes,
                system_prompt=system_prompt, prompt_format=prompt_format, owner=owner or actor, on_release=on_release,
                guard_min_ratings=guard_n, guard_min_satisfaction=guard_rate, actor=actor,
            )
    return family, loaded


def update_assistant(ws: Workspace, name: str, *, actor: str, suite: Path | None = None,
                     full_suite: Path | None = None, live_guard: str | None = None, **fields) -> list[str]:
    """Change an assistant's gate, people, prompt, suites, on-release policy or live guard
    (`MIN_RATINGS:MIN_SATISFACTION`, or `off`); returns the names of what changed."""
    check_fraction("--min-accuracy", fields.get("min_accuracy"))
    check_fraction("--max-regression", fields.get("max_regression"))
    if fields.get("on_release") is not None:
        fields["on_release"] = check_on_release(fields["on_release"])
    if fields.get("prompt_format") is not None:
        fields["prompt_format"] = check_prompt_format(fields["prompt_format"])
    if live_guard is not None:
        fields["guard_min_ratings"], fields["guard_min_satisfaction"] = parse_live_guard(live_guard)
    if suite is None and full_suite is None and not fields:
        raise BadInput(
            "nothing to change: pass --suite, --full-suite, --min-accuracy, --max-regression, --approver, "
            "--add-approver, --remove-approver, --admin, --add-admin, --remove-admin, --requester, --add-requester, "
            "--remove-requester, --four-eyes/--no-four-eyes, --system-prompt, --prompt-format, --on-release or "
            "--live-guard"
        )
    loaded = {prefix: load_suite(path) for prefix, path in (("", suite), ("full_", full_suite)) if path is not None}
    with staged(ws.store) as staging:
        for prefix, found in loaded.items():
            fields.update({f"{prefix}suite_ref": staging.put_file(found.path), f"{prefix}suite_digest": found.digest})
        with ws.session() as s:
            services.update_assistant(s, name, actor=actor, **fields)
    return sorted(k for k in fields if not k.endswith("suite_ref"))


def registered_family(s, family: str) -> str:
    """The family as it was registered (families match case-insensitively)."""
    bases = services.list_bases(s, family=family)
    if not bases:
        known = sorted({b.family for b in services.list_bases(s, family=None)})
        raise BadInput(
            f"unknown family {family!r}: register a base first with `portllm base add {family} VERSION REF`"
            + (f" (known families: {', '.join(known)})" if known else "")
        )
    return bases[0].family


# -- patches --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PatchTarget:
    """The assistant and origin base a patch is added for, read once and checked up front."""

    assistant: str
    family: str
    version: str
    base_id: int
    fingerprint: str
    prompt_format: str  # the assistant's, which a patch trained here learns in
    system_prompt: str
    base_dir: Path

    @property
    def label(self) -> str:
        return f"{self.family} {self.version}"


@dataclass(frozen=True)
class PatchAdded:
    patch_id: int
    target: PatchTarget
    rank: int
    alpha: float
    n_modules: int
    warnings: list[str] = field(default_factory=list)


def patch_target(ws: Workspace, assistant: str, version: str) -> PatchTarget:
    from portllm_engine.models import resolve_model_dir

    with ws.session() as s:
        owner = services.get_assistant(s, assistant)
        base = services.get_base(s, owner.family, version)
        found = (owner.name, owner.family, base.version, base.id, base.fingerprint, owner.prompt_format,
                 owner.system_prompt or "", base.source_ref)
    *head, source_ref = found
    return PatchTarget(*head, resolve_model_dir(source_ref))


def check_training_data(path: Path) -> Path:
    from portllm_engine.patches import read_examples

    path = existing_file("training data", path)
    read_examples(path)  # every line checked now; errors name the line
    return path


def add_patch(ws: Workspace, assistant: str, directory: Path, *, base: str, actor: str,
              train_data: Path | None = None) -> PatchAdded:
    """Add a PortLLM patch or any PEFT LoRA folder: compatibility with its base is checked first."""
    from portllm_engine import compat, patches

    target = patch_target(ws, assistant, base)
    src = existing_dir("patch folder", directory)
    data = check_training_data(train_data) if train_data is not None else None
    manifest = patches.read_manifest(src)
    report = compat.check(src, target.base_dir)
    if not report.compatible:
        n = len(report.errors)
        more = f" ({n} problems; `portllm engine compat --json` lists them)" if n > 1 else ""
        raise BadInput(f"patch {src} does not fit {target.label}: {report.summary().reason}{more}")
    if manifest is not None and manifest.origin_fingerprint not in (None, target.fingerprint):
        raise BadInput(
            f"{src} was trained on a base with fingerprint {short(manifest.origin_fingerprint)}, "
            f"but {target.label} is {short(target.fingerprint)}: "
            f"pass the --base it was trained on{_matching_version(ws, target.family, manifest.origin_fingerprint)}"
        )
    warnings = [issue["message"] for issue in report.warnings if issue["code"] != "no_manifest"]
    with tempfile.TemporaryDirectory(prefix="portllm-patch-") as tmp:
        staged_dir = Path(tmp) / "patch"
        if manifest is None:
            manifest = patches.import_peft(src, staged_dir, target.base_dir)
        else:
            patches.export_patch(src, staged_dir)  # verifies the weights' digest while copying
        added = store_patch(ws, target, staged_dir, manifest, data, actor=actor)
    return PatchAdded(added.patch_id, target, added.rank, added.alpha, added.n_modules, warnings)


def store_patch(ws: Workspace, target: PatchTarget, patch_dir: Path, manifest, train_data: Path | None,
                *, actor: str) -> PatchAdded:
    """Store a patch folder (and its training data) content-addressed, then register it."""
    with staged(ws.store) as staging:
        data_ref = staging.put_file(train_data) if train_data is not None else None
        ref = staging.put_dir(patch_dir)
        with ws.session() as s:
            patch = register_stored_patch(s, NewPatch(
                assistant=target.assistant, origin_base=target.base_id, ref=ref,
                size_bytes=folder_size(patch_dir), manifest=manifest, train_data_ref=data_ref, actor=actor))
            return PatchAdded(patch.id, target, manifest.rank, manifest.alpha, len(manifest.target_modules))


@dataclass(frozen=True)
class NewPatch:
    """A patch folder already in the artifact store, ready to register (the one place its row is built)."""

    assistant: str
    origin_base: int  # base id
    ref: str  # sha256:… in the artifact store
    size_bytes: int
    manifest: object  # portllm_engine.patches.PatchManifest
    actor: str
    train_data_ref: str | None = None
    parent_patch: int | None = None
    provenance: dict = field(default_factory=dict)  # added to the manifest's


def register_stored_patch(s, new: NewPatch):
    provenance = dict(new.manifest.provenance) | new.provenance
    if new.train_data_ref is not None:
        provenance.setdefault("dataset_sha256", new.train_data_ref.removeprefix("sha256:"))
    return services.register_patch(
        s, assistant=new.assistant, origin_base=new.origin_base, artifact_ref=new.ref,
        # Content-addressed: the ref is the digest the store computed while copying the folder in.
        artifact_digest=new.ref.removeprefix("sha256:"), rank=new.manifest.rank, alpha=new.manifest.alpha,
        use_rslora=new.manifest.use_rslora, target_modules=list(new.manifest.target_modules),
        size_bytes=new.size_bytes, provenance=provenance, train_data_ref=new.train_data_ref,
        parent_patch=new.parent_patch, actor=new.actor,
    )


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _matching_version(ws: Workspace, family: str, fingerprint: str) -> str:
    with ws.session() as s:
        twins = [b.version for b in services.list_bases(s, family=family) if b.fingerprint == fingerprint]
    return f" (that is {family} {twins[0]})" if twins else " (register that base first with `portllm base add`)"
