"""Writing outputs without losing anything, in one place for every command and library writer.

    check_output_file(path, what, suffixes=None, inputs={})   before any expensive work: refuse a directory, a
                                                              missing or unwritable folder, a wrong extension, or
                                                              a path that names one of `inputs`
    check_output_dir(path, what, inputs={})                   the same for an output folder (created later)
    check_distinct(outputs)                                   no two outputs name the same file
    write_atomic(path, data, what)                            bytes or text, written to a temporary file beside
                                                              `path` and renamed over it only when complete
    write_json(path, data, what)                              JSON through write_atomic; NaN and inf refused
    save_image(image, path, what)                             a PIL image through write_atomic

A failed write (disk full, a folder that became read-only) is a LensError naming the output and the system's
reason; the file that was there before is left as it was. An existing target that is not a regular file (a
device such as /dev/stdout, a FIFO) is written in place: renaming over it would replace the device node.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import LensError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _same_file(a: Path, b: Path) -> bool:
    """`a` and `b` name one file: the same path once resolved, or (both existing) the same inode (hard links)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_not_an_input(path: Path, what: str, inputs: Mapping[str, Path | str | None]) -> None:
    for name, source in inputs.items():
        if source is not None and _same_file(path, Path(source)):
            kind = "folder" if Path(source).is_dir() else "file"
            raise LensError(
                f"{what} {path} is the {name} {kind}: writing it would destroy the input; pass another path"
            )


def check_writable_folder(folder: Path, what: str) -> None:
    """Refuse a folder this process cannot create files in. Probed by creating (and removing) an empty temporary
    file: permission bits alone do not tell (root ignores them; /proc and read-only mounts refuse everyone)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".lens-write-probe-", dir=folder)
    except OSError as exc:
        raise LensError(f"{what}: cannot write to folder {folder} ({_reason(exc)}); choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(
    path: Path | str | None,
    what: str,
    suffixes: tuple[str, ...] | None = None,
    inputs: Mapping[str, Path | str | None] | None = None,
) -> None:
    """Refuse an output file before any expensive work: a directory, a file in a folder that does not exist or
    cannot be written, (with `suffixes`) an extension not among them, or the same file as one of `inputs`
    ({"--image": path, ...})."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        example = f" such as {path / ('out' + suffixes[0])}" if suffixes else ""
        raise LensError(f"{what} {path} is a directory; pass a file name{example}")
    if not path.parent.is_dir():
        raise LensError(f"{what} {path}: folder {path.parent} does not exist; create it first")
    if suffixes is not None and path.suffix.lower() not in suffixes:
        got = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise LensError(f"{what} {path} has {got}; expected a file name ending in {', '.join(suffixes)}")
    _check_not_an_input(path, what, inputs or {})
    if path.exists() and not path.is_file():  # a device or FIFO: written in place
        if not os.access(path, os.W_OK):
            raise LensError(f"{what} {path} cannot be written (permission denied)")
        return
    check_writable_folder(path.parent, f"{what} {path}")


def check_output_dir(path: Path | str, what: str, inputs: Mapping[str, Path | str | None] | None = None) -> None:
    """Refuse an output folder before any expensive work: an existing file, a parent folder that does not exist
    or cannot be written, or the same path as one of `inputs`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise LensError(f"{what} {path} is a file; pass a folder")
    _check_not_an_input(path, what, inputs or {})
    if path.is_dir():
        check_writable_folder(path, f"{what} {path}")
        return
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        raise LensError(f"{what} {path}: {parent} is a file, not a folder")
    check_writable_folder(parent, f"{what} {path}")


def check_distinct(outputs: Mapping[str, Path | str | None]) -> None:
    """Refuse two outputs that name the same file ({"--out-mask": a, "--out-overlay": b}): the second write
    would replace the first."""
    given = [(name, Path(p)) for name, p in outputs.items() if p is not None]
    for i, (name_a, a) in enumerate(given):
        for name_b, b in given[i + 1 :]:
            if _same_file(a, b):
                raise LensError(f"{name_a} and {name_b} are the same file {a}; pass a different path to each")


def write_atomic(path: Path | str, data: bytes | str, what: str = "output") -> Path:
    """Write `data` to `path`: into a temporary file in the same folder, flushed to disk, then renamed over `path`,
    so that a reader (or a crash) sees the old file or the complete new one, never a part. LensError naming
    `what` and the reason when the write fails; nothing is left behind then."""
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if path.exists() and not path.is_file():  # a device or FIFO (e.g. /dev/stdout): no rename over it
        try:
            with path.open("wb") as stream:
                stream.write(raw)
        except OSError as exc:
            raise LensError(f"cannot write {what} {path}: {_reason(exc)}") from None
        return path
    real = path.resolve()  # a symlink keeps pointing at the file it named
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".partial", dir=real.parent)
        with os.fdopen(fd, "wb") as stream:
            stream.write(raw)
            stream.flush()
            os.fsync(stream.fileno())
        if real.exists():
            os.chmod(tmp, real.stat().st_mode & 0o7777)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, real)
        tmp = None
    except OSError as exc:
        raise LensError(f"cannot write {what} {path}: {_reason(exc)}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def json_text(data: Any, what: str = "output", **dump_options) -> str:
    """`data` as JSON text; LensError when it holds NaN or infinity, which JSON cannot express."""
    try:
        return json.dumps(data, allow_nan=False, **dump_options)
    except ValueError:
        bad = _non_finite_keys(data)
        raise LensError(f"{what}: refusing to write a non-finite number (NaN or inf) at {', '.join(bad)}") from None


def _non_finite_keys(data: Any, prefix: str = "") -> list[str]:
    if isinstance(data, float) and not math.isfinite(data):
        return [prefix or "the top level"]
    if isinstance(data, dict):
        return [k for key, value in data.items() for k in _non_finite_keys(value, f"{prefix}.{key}".lstrip("."))]
    if isinstance(data, (list, tuple)):
        return [k for i, value in enumerate(data) for k in _non_finite_keys(value, f"{prefix}[{i}]")]
    return []


def write_json(path: Path | str, data: Any, what: str = "output", indent: int | None = 2) -> Path:
    """`data` as JSON (one trailing newline) through `write_atomic`; NaN and infinity are refused (`json_text`)."""
    return write_atomic(path, json_text(data, f"{what} {path}", indent=indent) + "\n", what)


def save_image(image, path: Path | str, what: str = "image") -> Path:
    """A PIL image, in the format of `path`'s extension, through `write_atomic`."""
    from PIL import Image

    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower())
    if image_format is None:
        raise LensError(f"{what} {path}: unknown image extension {path.suffix!r}")
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return write_atomic(path, buffer.getvalue(), what)
