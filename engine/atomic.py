"""Folders written all at once: a reader sees the previous complete folder or the new complete one.

The new folder is written under a temp name beside the target, then renamed into place. A
process killed mid-write leaves only that temp folder, named with its pid, which the next write
of the same target removes once that pid is gone. The one instant without a target (the old
folder renamed aside, the new one not yet in place) is repaired by the next write: the aside
copy is put back first. A failed write (a full disk above all) raises one message and leaves
nothing of itself behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import ConfigError, SlimLabError


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clear_dead_temps(out: Path) -> None:
    """Remove the temp files and folders that writers of ``out`` killed midway left behind."""
    for tmp in out.parent.glob(f".{out.name}.tmp-*"):
        pid = tmp.name[len(f".{out.name}.tmp-"):].split("-", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _tidy(out: Path) -> None:
    """Clear dead writers' temps; put an aside copy back if the target is missing."""
    _clear_dead_temps(out)
    asides = sorted(out.parent.glob(f".{out.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if asides and not out.exists():
        asides.pop().rename(out)
    for aside in asides:
        shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: "str | Path", force: bool = False) -> Iterator[Path]:
    """Yield a temp folder beside ``out``; on success it replaces ``out`` in one rename."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _tidy(out)
    except OSError as exc:
        raise SlimLabError(f"Cannot write to '{out.parent}': {exc.strerror or exc}.") from None
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ConfigError(f"'{out}' already exists and is not empty; pass --force to overwrite it.")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        aside = out.with_name(f".{out.name}.old-{os.getpid()}")
        if out.exists():
            out.rename(aside)
        tmp.rename(out)
        shutil.rmtree(aside, ignore_errors=True)
    except OSError as exc:
        raise SlimLabError(f"Could not write '{out}': {exc.strerror or exc}. Nothing was written; "
                           "the folder that was there, if any, is unchanged.") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(out: "str | Path") -> Iterator[Path]:
    """Yield a temp file path beside ``out``; on success it replaces ``out`` in one rename, on a
    failure nothing of it is left (an OSError, a full disk above all, becomes one message)."""
    out = Path(out)
    _clear_dead_temps(out)
    handle, name = tempfile.mkstemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent)
    os.close(handle)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, out)
    except OSError as exc:
        raise SlimLabError(f"Could not write '{out}': {exc.strerror or exc}. Nothing was written; "
                           "the file that was there, if any, is unchanged.") from None
    finally:
        tmp.unlink(missing_ok=True)
