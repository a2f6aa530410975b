"""Atomic file writes and checked reads (the only module besides the CLI, plots,
dataset and CAMELS readers that touches the file system)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from diffhmc.core.errors import DiffHMCError

SHIPPED_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
"""Where the package's shipped weights, model card and recalibration files live."""


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` on success.

    On an exception the temporary file is removed, so nothing half-written is left.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give ordinary permissions
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def exclusive_lock(target: str | os.PathLike[str], what: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (a folder being written) for the ``with`` block.

    The lock is ``flock`` on the hidden file ``.<name>.lock`` beside ``target`` (not inside:
    a folder swapped into place at the end would drop it; symbolic links resolved), holding
    the owner's pid and host, and removed on release. The kernel releases a lock when its
    process ends, so a killed writer leaves a file but no lock. A lock taken on a file that
    its owner removed in between is retaken on the new file (the inode check), so two
    holders never coexist.
    Raises :class:`DiffHMCError` naming ``what``, the folder and the owner's pid and host when
    another process (or another ``with`` in this one) holds it, and when the lock file cannot
    be made or the file system cannot lock.
    """
    import fcntl
    import socket

    folder = Path(target).resolve()
    lock = folder.parent / f".{folder.name}.lock"
    while True:
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise DiffHMCError(f"cannot create the lock file {lock} ({exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 128, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DiffHMCError(
                f"{what} {folder} is being written by another process ({owner}); wait "
                "for it to finish or stop it, then rerun (finished work is kept)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise DiffHMCError(
                f"cannot lock {lock} ({exc.strerror}): this file system has no flock"
            ) from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous owner removed this file after we opened it: retry
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield lock
    finally:
        lock.unlink(missing_ok=True)  # while still held, so no one locks a removed file
        os.close(fd)


def _write_with(path: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> Path:
    """Atomically write ``array`` as a ``.npy`` file."""

    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(array))

    return _write_with(path, _w)


def save_npz(path: str | os.PathLike[str], **arrays: np.ndarray) -> Path:
    """Atomically write several arrays as an uncompressed ``.npz`` file."""

    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    return _write_with(path, _w)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json_text(obj: Any, indent: int | None = 2) -> str:
    """JSON text of ``obj`` with numpy arrays/scalars and paths converted."""
    return json.dumps(obj, indent=indent, default=_json_default)


def json_normalise(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples -> lists, numpy -> Python, Path -> str)."""
    return json.loads(to_json_text(obj, indent=None))


def save_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (numpy scalars/arrays converted)."""
    text = to_json_text(obj)

    def _w(tmp: Path) -> None:
        tmp.write_text(text + "\n")

    return _write_with(path, _w)


def save_figure(path: str | os.PathLike[str], fig: Any, dpi: int = 120) -> Path:
    """Atomically save a matplotlib figure (format from the suffix of ``path``)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return _write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, bbox_inches="tight"))


def require_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """Return ``Path(path)`` or raise a one-line error if it does not exist."""
    p = Path(path)
    if not p.is_file():
        raise DiffHMCError(f"{what} not found: {p}")
    return p


def load_npy(path: str | os.PathLike[str], what: str = "array", mmap: bool = False) -> np.ndarray:
    """Load a ``.npy`` file with a clear error for a missing, truncated or corrupt file."""
    p = require_file(path, what)
    try:
        return np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DiffHMCError(f"{what} {p} is truncated or not a valid .npy file ({exc})") from None


def load_json(path: str | os.PathLike[str], what: str = "JSON file") -> Any:
    """Load JSON with a clear error for a missing or corrupt file."""
    p = require_file(path, what)
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiffHMCError(f"{what} {p} is not valid JSON ({exc})") from None


def new_run_dir(out: str | os.PathLike[str] | None, command: str, root: str = "runs") -> Path:
    """Create and return a fresh output folder.

    ``out=None`` gives ``runs/<command>-YYYYmmdd-HHMMSS`` (with ``-2``, ``-3``... appended if
    taken). An explicit ``out`` must not exist yet or be empty: run folders are never
    overwritten.
    """
    import time

    if out is None:
        stem = Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, i = stem, 1
        while path.exists():
            i += 1
            path = stem.with_name(f"{stem.name}-{i}")
    else:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise DiffHMCError(f"output folder {path} already exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    return path


def load_torch_file(path: str | os.PathLike[str], what: str = "checkpoint") -> Any:
    """``torch.load`` (CPU, weights only) with one-line errors for a missing file and for a
    truncated or corrupt one (torch raises many exception types for those)."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise DiffHMCError(f"{what} not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else ""
        raise DiffHMCError(
            f"{what} {p} is corrupt or truncated ({type(exc).__name__}: {first})"
        ) from None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes (identifies the model a recalibration was fitted for)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_format(
    obj: Any,
    path: str | os.PathLike[str],
    fmt: str,
    version: int,
    required: Sequence[str] = (),
    what: str = "checkpoint",
    hints: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Check a loaded self-describing file: a dict whose ``format`` is ``fmt``, whose
    ``format_version`` is ``version`` and that holds every key of ``required``; return it.

    One-line errors: ``"{path} is not a diffhmc {what}"`` (with ``hints``, followed by the
    format found and ``hints[found]``, e.g. which command reads that other format),
    ``"{what} {path} has format version ..."`` and ``"{what} {path} is missing [...]"``.
    """
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        msg = f"{path} is not a diffhmc {what}"
        if hints is not None:
            got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
            msg += f" (format {got!r}){hints.get(got, '') if isinstance(got, str) else ''}"
        raise DiffHMCError(msg)
    if obj.get("format_version") != version:
        raise DiffHMCError(
            f"{what} {path} has format version {obj.get('format_version')}, "
            f"this diffhmc reads version {version}"
        )
    missing = [k for k in required if k not in obj]
    if missing:
        raise DiffHMCError(f"{what} {path} is missing {missing}")
    return obj
