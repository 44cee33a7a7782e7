"""Transplant a patch onto a base: merge it into the weights, or attach several by name."""
from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from portllm_engine import compat, models, patches
from portllm_engine.errors import EngineError, IncompatiblePatchError, PatchError
from portllm_engine.generate import stream_generate

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
        raise IncompatiblePatchError(
            f"patch {Path(patch_dir).name} does not fit {Path(base_dir).name}: {report.summary().reason}"
            f"{_problems(report)}", report.to_dict()
        )


def _problems(report) -> str:
    n = len(report.errors)
    return f" ({n} problems; `portllm engine compat --json` lists them)" if n > 1 else ""


def merged_weight(weight, a, b, lora: patches.LoraModule):
    """weight + scale·B·A in weight's dtype: the product is formed in float32 and rounded once into W,
    so a bf16 base loses no more precision than storing the merged weight requires.

    Other than a float32 weight (one fused addmm), a plain product then elementwise steps: each
    element's arithmetic is the same whether the whole weight or a block of its rows is merged, which
    lets the transplant to disk merge block by block.
    """
    import torch

    a, b = a.to(weight.device, torch.float32), b.to(weight.device, torch.float32)
    if _fused(weight.dtype, lora):
        return torch.addmm(weight, b, a, alpha=lora.scale)
    delta = (b @ a).mul_(lora.scale)
    if lora.embedding or lora.fan_in_fan_out:
        delta = delta.T
    # Widening a narrower weight to float32 first is exact, and keeps the add on torch's vectorised
    # same-dtype path (a mixed-dtype add casts element by element, several times slower).
    return delta.add_(weight if weight.dtype.itemsize > 4 else weight.float()).to(weight.dtype)


def _fused(dtype, lora: patches.LoraModule) -> bool:
    """Whether merged_weight is one addmm. MKL's rounding in it depends on the matrix shapes (with
    alpha != 1 it scales one factor first, and a rank-1 or small product takes other kernels), so such
    a weight is merged whole, never by blocks of rows."""
    import torch

    return dtype == torch.float32 and not (lora.embedding or lora.fan_in_fan_out)


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
    device: str | None = None,
) -> Path:
    """Merge a patch into a base on disk, streaming the merged weights straight into the output files.

    The output keeps the base's files: the same shards, index and headers, so each file's header is
    written first, then its data in order. Weights the patch leaves alone are copied as bytes by the
    kernel; each adapted weight is merged a block of rows at a time, MERGE_THREADS blocks at once,
    while a thread writes the blocks before them (a float32 weight, merged by one addmm, is merged whole
    between mapped files instead). Peak memory is a few blocks and one module's factors, whatever the
    size of the model, its shards or its largest tensor. The weights are identical to `transplant`'s
    on the same device. The folder appears complete or not at all: it is written aside, then renamed.
    """
    base_dir = models.resolve_model_dir(base_ref)
    layouts = [_SafetensorsLayout.read(file) for file in models.checkpoint_files(base_dir)]  # a damaged base says so
    _require_compatible(patch_dir, base_dir)  # this also checks the patch against its digest
    out = _fresh_out_dir(out_dir)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    staging.mkdir()
    try:
        _stream_merged_files(patch_dir, layouts, staging, progress, device or models.pick_device())
        for name in (models.INDEX_FILE, *SIDE_FILES):
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


# float32 bytes of the delta merged at a time. Measured on one thread over a 8192x3072 bf16 weight:
# 1 MiB blocks 0.040 s, 4 MiB 0.030 s, 12 MiB 0.125 s (the elementwise passes fall out of cache).
MERGE_BLOCK_BYTES = 4 * 1024**2
# Blocks being merged or waiting for the writer: bounds memory when the disk is slower than the math.
PENDING_WRITES = 6
# Blocks merged at once, each with one intra-op thread.
MERGE_THREADS = 2


def _stream_merged_files(patch_dir, layouts: list["_SafetensorsLayout"], out: Path, progress, device: str) -> None:
    import torch
    from safetensors import safe_open

    total = sum(len(layout.tensors) for layout in layouts)
    targets = _targets_by_key(patches.lora_modules(patch_dir), {key for layout in layouts for key in layout.tensors})
    done = 0
    with (
        torch.no_grad(),
        _one_cpu_thread(device),
        safe_open(str(patches.adapter_weights_path(patch_dir)), framework="pt") as factors,
        ThreadPoolExecutor(MERGE_THREADS, thread_name_prefix="transplant-merge") as merging,
        _BlockWriter() as writer,
    ):
        for layout in layouts:
            with open(layout.path, "rb") as src, open(out / layout.path.name, "wb+") as dst, writer.files():
                os.ftruncate(dst.fileno(), layout.size)  # the room a weight merged in place is mapped onto
                writer.write(dst.fileno(), 0, layout.header)
                for key, tensor in layout.tensors.items():
                    lora = targets.get(key)
                    if lora is None:
                        writer.copy(layout, src.fileno(), dst.fileno(), tensor)
                    else:
                        a, b = (factors.get_tensor(k).to(device, torch.float32) for k in (lora.a_key, lora.b_key))
                        if _fused(_weight_dtype(tensor), lora):
                            writer.wait(merging.submit(_merge_in_place, src, dst, layout, tensor, a, b, lora, device))
                        else:
                            for start, merged in _merged_blocks(merging, src, layout, tensor, a, b, lora, device):
                                writer.write(dst.fileno(), layout.data_start + start, merged)
                    done += 1
                    if progress is not None:
                        progress(done / total, key)


@contextmanager
def _one_cpu_thread(device: str) -> Iterator[None]:
    """On CPU, one intra-op thread per merging thread: each operation on a cache-sized block is too
    short for OpenMP's fork and join to pay (on a busy machine it costs several times the work);
    blocks are merged side by side instead."""
    import torch

    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _merged_blocks(merging, src, layout: "_SafetensorsLayout", tensor: "_TensorSpan", a, b, lora: patches.LoraModule, device: str):
    """(offset in the data, future bytes) of merged_weight(W, a, b, lora), a block of W's rows at a time.

    Row i of the merged weight depends on row i of W and on the factors' row i (B's, or A's column
    when the delta is transposed) alone, so each block is merged_weight's own arithmetic on its rows.
    """
    dtype = _weight_dtype(tensor)
    rows, cols = tensor.shape
    row_bytes = tensor.nbytes // rows if rows else 0
    # At least 2 rows: BLAS takes its matrix-vector path for one, which sums in another order.
    step = max(2, MERGE_BLOCK_BYTES // (4 * max(1, cols)))
    transposed = lora.embedding or lora.fan_in_fan_out
    first = 0
    while first < rows:
        # The last block takes the remainder with it rather than leaving a short (maybe 1-row) block.
        block = slice(first, first + step if rows - first >= 2 * step else rows)
        first = block.stop
        start = tensor.begin + block.start * row_bytes
        factors = (a[:, block], b) if transposed else (a, b[block])
        read = (src, layout, layout.data_start + start, (block.stop - block.start) * row_bytes)
        yield start, merging.submit(_merge_block, read, dtype, cols, *factors, lora, device)


def _merge_block(read, dtype, cols: int, a, b, lora: patches.LoraModule, device: str):
    raw = _read_exactly(*read)
    weight = raw.view(dtype).view(-1, cols).to(device)
    return merged_weight(weight, a, b, lora).contiguous().cpu()


def _merge_in_place(src, dst, layout: "_SafetensorsLayout", tensor: "_TensorSpan", a, b, lora: patches.LoraModule,
                    device: str) -> None:
    """merged_weight of a whole weight (a fused one), read from the base's mapped file and written into
    the output's: mapped pages are the page cache's, not the process's memory, whatever the weight's size."""
    import torch

    start = layout.data_start + tensor.begin
    weight, out = (_mapped(file, start, tensor.nbytes).view(torch.float32).view(tensor.shape) for file in (src, dst))
    if device == "cpu":
        torch.addmm(weight, b, a, alpha=lora.scale, out=out)
    else:
        out.copy_(merged_weight(weight.to(device), a, b, lora))


def _mapped(file, offset: int, size: int):
    """Bytes [offset, offset + size) of an open file as a uint8 tensor on a shared mapping (private for
    a read-only file); the mapping goes when the tensor does."""
    import mmap

    import torch

    aligned = offset - offset % mmap.ALLOCATIONGRANULARITY
    writable = "+" in file.mode
    mapped = mmap.mmap(file.fileno(), offset + size - aligned, offset=aligned,
                       access=mmap.ACCESS_WRITE if writable else mmap.ACCESS_COPY)
    return torch.frombuffer(mapped, dtype=torch.uint8, offset=offset - aligned, count=size)


def _weight_dtype(tensor: "_TensorSpan"):
    import torch

    if len(tensor.shape) != 2 or not all(tensor.shape):
        raise PatchError(f"{tensor.key} has shape {tuple(tensor.shape)}: only non-empty 2-D weights can take a LoRA delta")
    dtype = _TORCH_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise PatchError(f"{tensor.key} is stored as {tensor.dtype}: a LoRA delta merges into float weights only")
    return getattr(torch, dtype)


def _read_exactly(src, layout: "_SafetensorsLayout", offset: int, size: int):
    """`size` bytes of the file at `offset`, as a uint8 tensor (not zeroed first: every byte is read)."""
    import torch

    raw = torch.empty(size, dtype=torch.uint8)
    got = os.preadv(src.fileno(), [raw.numpy()], offset) if size else 0
    if got != size:
        raise EngineError(f"{layout.path} ended early while it was read: was it modified during the transplant?")
    return raw


_TORCH_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


@dataclass(frozen=True)
class _TensorSpan:
    """A tensor's place in a safetensors file: [begin, end) counted from the start of the data."""

    key: str
    dtype: str
    shape: list[int]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class _SafetensorsLayout:
    """Where each tensor lies in a safetensors file; the header bytes are reused as they are, since
    a merge changes no key, shape or dtype."""

    path: Path
    header: bytes  # the length prefix and the JSON header, as stored
    tensors: dict[str, _TensorSpan]  # in the order of their data

    @property
    def data_start(self) -> int:
        return len(self.header)

    @property
    def size(self) -> int:
        return self.data_start + max((span.end for span in self.tensors.values()), default=0)

    @classmethod
    def read(cls, path: Path) -> "_SafetensorsLayout":
        def damaged(why: str) -> EngineError:
            return EngineError(f"{path} is damaged ({why}): download or save the base again")

        size = path.stat().st_size
        with open(path, "rb") as fh:
            prefix = fh.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
            if not 0 < length <= size - 8:
                raise damaged("no safetensors header")
            raw = fh.read(length)
        try:
            entries = json.loads(raw)
            spans = sorted(
                (_TensorSpan(key, info["dtype"], list(info["shape"]), *info["data_offsets"])
                 for key, info in entries.items() if key != "__metadata__"),
                key=lambda span: span.begin,
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise damaged(f"unreadable header: {exc!r}") from None
        position = 0
        for span in spans:
            if span.begin != position or span.end < span.begin:
                raise damaged(f"{span.key} is not where the header says")
            position = span.end
        if 8 + length + position != size:
            missing = 8 + length + position - size
            raise damaged(f"{missing} bytes short of what its header describes" if missing > 0 else f"{-missing} bytes too long")
        return cls(path, prefix + raw, {span.key: span for span in spans})


class _BlockWriter:
    """Writes merged blocks and copies untouched byte ranges in a thread, in the order given, so the
    disk works while the next block is merged. A failed write is raised in the caller's thread."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue(maxsize=PENDING_WRITES)
        self._failure: BaseException | None = None
        self._skip = False  # set when the caller gave up: what is queued is dropped, not written
        self._thread = threading.Thread(target=self._run, name="transplant-writer", daemon=True)

    def __enter__(self) -> "_BlockWriter":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._jobs.put(None)
        self._thread.join()

    @contextmanager
    def files(self) -> Iterator[None]:
        """Around the use of open files: every job on them is done (or dropped, on an error) before
        they are closed, so no write ever lands on a closed or reused descriptor."""
        try:
            yield
        except BaseException:
            self._skip = True
            self._jobs.join()
            raise
        self._jobs.join()
        self._raise_failure()

    def write(self, fd: int, offset: int, data) -> None:
        """Write `data` (bytes, or a contiguous CPU tensor) at `offset` of file `fd`."""
        self._put((_write_all, fd, offset, data))

    def wait(self, merging: Future) -> None:
        """Hold later jobs, and the closing of the files, until a merge that writes for itself is done."""
        self._put((Future.result, merging))

    def copy(self, layout: _SafetensorsLayout, src: int, dst: int, span: _TensorSpan) -> None:
        """Copy a tensor's bytes from src (the file of `layout`) to the same place in dst."""
        self._put((_copy_range, layout.path, src, dst, layout.data_start + span.begin, span.nbytes))

    def _put(self, job) -> None:
        self._raise_failure()
        self._jobs.put(job)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._failure is None and not self._skip:
                    job[0](*job[1:])
                else:  # a merge still running reads from a file about to be closed: let it finish first
                    futures = [part for part in job[1:] if isinstance(part, Future)]
                    wait([future for future in futures if not future.cancel()])
            except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
                self._failure = exc
            finally:
                self._jobs.task_done()
        self._jobs.task_done()


def _write_all(fd: int, offset: int, data) -> None:
    import torch

    if isinstance(data, Future):
        data = data.result()
    view = memoryview(data if isinstance(data, bytes) else data.view(-1).view(torch.uint8).numpy())
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _copy_range(path: Path, src: int, dst: int, offset: int, count: int) -> None:
    """Bytes [offset, offset + count) of src (file `path`) to the same offset of dst, copied inside the kernel."""
    while count:
        copied = os.copy_file_range(src, dst, count, offset, offset)
        if copied == 0:
            raise EngineError(f"{path} ended early while it was copied: was it modified during the transplant?")
        offset, count = offset + copied, count - copied


def _targets_by_key(modules: dict[str, patches.LoraModule], index) -> dict[str, patches.LoraModule]:
    """Checkpoint tensor name -> the LoRA merged into it (index: the checkpoint's tensor names)."""
    targets = {}
    for name, lora in modules.items():
        key = models.weight_key(name, index)
        if key is None:
            raise PatchError(f"the base has no weight for {name}: check compatibility first")
        targets[key] = lora
    return targets


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

    def generate(self, name: str | None, turns, **kwargs) -> Iterator[str]:
        """Stream an answer to the conversation with patch `name`; the lock is held until the stream ends."""
        with self.use(name) as model:
            yield from stream_generate(model, self.tokenizer, turns, **kwargs)
