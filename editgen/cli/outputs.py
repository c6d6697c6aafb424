"""Atomic output files: write to a temporary sibling, rename on success, so a failed
command never leaves a half-written file (or directory) behind; decoded audio written
chunk by chunk."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from editgen.errors import OutputPathError


def check_writable_file(path: str | os.PathLike) -> Path:
    """Fail early (before any model work) when `path` cannot be created."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise OutputPathError(f"output path {path} is a directory: give a file name")
    if not parent.is_dir():
        raise OutputPathError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write {path}: directory {parent} is not writable")
    return path


def check_writable_dir(path: str | os.PathLike) -> Path:
    """An output directory may exist (files in it are replaced) or not, but its parent
    must: a typo should not create a tree of directories. Checked by path, not with
    os.access alone, which says yes to everything when running as root."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"output directory {path} is a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        why = "is not a directory" if parent.exists() else "does not exist (create it first)"
        raise OutputPathError(f"cannot write to {path}: {parent} {why}")
    if not os.access(parent, os.W_OK):
        raise OutputPathError(f"cannot write to {path}: {parent} is not writable")
    return path


def current_umask() -> int:
    """The process umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike):
    """Yields a temporary path next to `path`; renamed onto `path` only on success."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent or ".")
    os.close(fd)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask).
        os.chmod(tmp, 0o666 & ~current_umask())
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yields a temporary directory; its files are moved into `path` only on success."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    try:
        yield tmp
        path.mkdir(exist_ok=True)
        for item in tmp.iterdir():
            target = path / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_decoded(backend, path: Path, codes, *, show_progress: bool, what: str = "audio") -> None:
    """Decodes codes [K, frames] chunk by chunk (editgen.engine.codec_chunks) into a WAV at
    `path`: a long song is never in memory at once; a bar over the chunks when there are
    several."""
    from editgen.cli.progress import progress
    from editgen.engine.audio import write_wav_chunks
    from editgen.engine.codec_chunks import CodecChunks, decode_chunks

    chunks = CodecChunks()
    count = len(chunks.spans(codes.shape[-1]))
    decoded = progress(decode_chunks(backend, codes, chunks), enabled=count > 1 and show_progress,
                       desc=f"decoding {what}", unit="chunk", total=count)
    write_wav_chunks(path, decoded, backend.shapes.sample_rate)
