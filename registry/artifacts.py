"""Content-addressed artifact store: patches, suites and per-item results, keyed by sha256."""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from registry.errors import RegistryError

REF_PREFIX = "sha256:"


class ArtifactError(RegistryError):
    pass


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class Stored(NamedTuple):
    ref: str
    new: bool  # False: the same content was already in the store


class ArtifactStore:
    """Files and folders stored once under `root/sha256/<aa>/<digest>`, referenced as `sha256:<digest>`.

    Writes go to a temporary sibling first and are renamed into place, so a failure (or a
    concurrent writer of the same content) never leaves a half-written artifact behind.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root).expanduser()

    def put_dir(self, src: Path | str) -> str:
        return self.add_dir(src).ref

    def put_file(self, src: Path | str) -> str:
        return self.add_file(src).ref

    def add_dir(self, src: Path | str) -> Stored:
        """Store a folder (hashed once); `new` says whether this call brought it into the store."""
        src = Path(src)
        if not src.is_dir():
            raise ArtifactError(f"{src} is not a folder.")
        return self._store(self.digest_dir(src), lambda tmp: shutil.copytree(src, tmp / "x"))

    def add_file(self, src: Path | str) -> Stored:
        src = Path(src)
        if not src.is_file():
            raise ArtifactError(f"{src} is not a file.")
        return self._store(file_sha256(src), lambda tmp: shutil.copyfile(src, tmp / "x"))

    def path(self, ref: str) -> Path:
        target = self._target(self._digest_of(ref))
        if not target.exists():
            raise ArtifactError(f"Artifact {ref} is not in the store at {self.root}.")
        return target

    def exists(self, ref: str) -> bool:
        return self._target(self._digest_of(ref)).exists()

    @staticmethod
    def digest_dir(path: Path | str) -> str:
        """sha256 over every file's relative path and content, in a fixed order; links refused."""
        root = Path(path)
        digest = hashlib.sha256()
        for file in sorted(p for p in root.rglob("*") if not p.is_dir() or p.is_symlink()):
            if file.is_symlink() or not file.is_file():
                raise ArtifactError(f"{file} is a link or special file; artifacts hold plain files only.")
            rel = file.relative_to(root).as_posix()
            digest.update(rel.encode() + b"\0" + file_sha256(file).encode() + b"\n")
        return digest.hexdigest()

    def _store(self, digest: str, write) -> Stored:
        ref = REF_PREFIX + digest
        target = self._target(digest)
        if target.exists():
            return Stored(ref, new=False)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            write(tmp)
            try:
                os.rename(tmp / "x", target)
            except OSError:
                # Another writer stored the same content first: theirs is identical (and theirs to keep).
                if not target.exists():
                    raise
                return Stored(ref, new=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Stored(ref, new=True)

    def _target(self, digest: str) -> Path:
        return self.root / "sha256" / digest[:2] / digest

    @staticmethod
    def _digest_of(ref: str) -> str:
        digest = ref.removeprefix(REF_PREFIX)
        if not ref.startswith(REF_PREFIX) or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ArtifactError(f"'{ref}' is not an artifact reference (expected sha256:<64 hex digits>).")
        return digest
