"""Where clones live: paths under REPO_ROOT, and their removal apart from the worker."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from rqjobs.settings import Settings, get_settings

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = '.partial'  # a clone in progress; a warehouse id never holds a dot
TRASH_DIR = '.trash'  # REPO_ROOT/.trash: what is being removed in the background
# Removes the trees named in argv; run apart from the worker, so that removing a million files blocks no job.
_removers: list[subprocess.Popen] = []  # the removals started by this process that may still run
_REMOVER = 'import shutil, sys\nfor path in sys.argv[1:]:\n    shutil.rmtree(path, ignore_errors=True)\n'
_WAREHOUSE_ID = re.compile(r'[A-Za-z0-9-]{1,64}')


def clone_path(warehouse_id: str, settings: Settings | None = None) -> Path:
    """Return where the warehouse's clone lives: REPO_ROOT/<warehouse_id>."""
    settings = settings or get_settings()
    if not isinstance(warehouse_id, str) or not _WAREHOUSE_ID.fullmatch(warehouse_id):
        raise ValueError(
            f'Warehouse id {str(warehouse_id)[:80]!r} must be 1 to 64 letters, digits or "-", '
            f'for example 3f6c2a9e-0d4b-4c1e-9a8f-2b7d5e1c0a11.'
        )
    return inside_root(Path(settings.repo_root).resolve() / warehouse_id, settings)


def partial_path(dest: Path) -> Path:
    """Return where a new clone of `dest` is written before it is complete: a sibling named <id>.partial."""
    return dest.with_name(dest.name + PARTIAL_SUFFIX)


def remove_clone(dest: Path, settings: Settings | None = None) -> bool:
    """Remove a clone and any unfinished clone beside it (only ever inside REPO_ROOT); True if something went.

    They leave their place at once; their files are removed in the background (see `discard`).
    """
    settings = settings or get_settings()
    removed = _remove_inside(Path(dest), settings, 'clone removed')
    return remove_partial(dest, settings) or removed


def remove_partial(dest: Path, settings: Settings | None = None) -> bool:
    """Remove what an interrupted clone into `dest` left behind; True if something was removed."""
    return _remove_inside(partial_path(Path(dest)), settings or get_settings(), 'unfinished clone removed')


def _remove_inside(path: Path, settings: Settings, what: str) -> bool:
    path = inside_root(path, settings)
    if not os.path.lexists(path):
        return False
    discard(path, settings)
    logger.info('%s: %s', path.name, what)
    return True


def discard(path: Path, settings: Settings | None = None) -> subprocess.Popen | None:
    """Move a tree inside REPO_ROOT into REPO_ROOT/.trash at once, and remove the trash in the background.

    A rename takes no time however many files there are; their removal can take minutes, and runs in a process of its
    own, which outlives the job. What a killed removal leaves in the trash is taken by the next one (`empty_trash`).
    Returns that process, or None when there was nothing to move or it was removed here (it could not be moved).
    """
    settings = settings or get_settings()
    path = inside_root(path, settings)
    trash = Path(settings.repo_root).resolve() / TRASH_DIR
    try:
        trash.mkdir(exist_ok=True)
        os.rename(path, inside_root(trash, settings) / f'{path.name}.{os.urandom(6).hex()}')
    except FileNotFoundError:
        return None
    except OSError as exc:  # another file system (a mount inside REPO_ROOT): removed here, the slow way
        logger.warning('%s: cannot be moved to %s (%s); removing it in place', path, trash, exc.strerror)
        _remove_tree(path)
        return None
    return empty_trash(settings)


def empty_trash(settings: Settings | None = None) -> subprocess.Popen | None:
    """Remove everything in REPO_ROOT/.trash in a background process; return it, or None if the trash is empty."""
    settings = settings or get_settings()
    trash = Path(settings.repo_root).resolve() / TRASH_DIR
    if not os.path.lexists(trash):
        return None
    entries = [os.fspath(entry) for entry in inside_root(trash, settings).iterdir()]
    if not entries:
        return None
    try:
        # Its own session: neither a cap killing a git process group nor a killed work horse takes it down. Two
        # removers working on one tree is harmless (ignore_errors), so every call hands it all there is.
        remover = subprocess.Popen(
            [sys.executable, '-c', _REMOVER, *entries],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        logger.warning('%s: the removal cannot be started (%s); the next removal takes it', trash, exc.strerror)
        return None
    # Held until it has ended, then reaped: a long-lived process (a worker) collects no zombies.
    _removers[:] = [process for process in _removers if process.poll() is None]
    _removers.append(remover)
    return remover


def inside_root(dest: Path | str, settings: Settings) -> Path:
    """Return `dest` resolved, or raise ValueError unless it lies strictly inside REPO_ROOT and is no symlink."""
    root = Path(settings.repo_root).resolve()
    path = Path(dest)
    if not path.is_absolute():
        raise ValueError(f'{path} is not an absolute path inside REPO_ROOT ({root})')
    resolved = path.resolve()
    if path.is_symlink() or resolved == root or not resolved.is_relative_to(root):
        raise ValueError(f'{path} is not a directory inside REPO_ROOT ({root}); refusing to touch it')
    return resolved


def _remove_tree(path: Path) -> None:
    # rmtree never follows symlinks found inside the tree, so a checked-out link cannot redirect the removal.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def disk_usage(path: Path, max_bytes: int | None = None, max_files: int | None = None) -> tuple[int, int]:
    """Return the bytes allocated on disk under `path` and its number of files and directories.

    Allocated blocks (as `du` counts them), not lengths: a million files of 100 bytes take 4 GB, not 100 MB. Symlinks
    are not followed; counting stops once past either limit.
    """
    allocated, files, pending = 0, 0, [os.fspath(path)]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        allocated += entry.stat(follow_symlinks=False).st_blocks * 512
                        files += 1
                    except FileNotFoundError:
                        continue  # git removes temporary files while we count
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        if (max_bytes is not None and allocated > max_bytes) or (max_files is not None and files > max_files):
            break
    return allocated, files
