"""Replace a folder safely: the old one is never lost, and a new one is never left half-written.

Every replacement goes through ``replacing(target, is_complete=...)``: an
existing ``target`` is renamed aside to ``.{name}.replaced-XXXXXXXX``, the new
folder is made at ``target``, and the old one is deleted once the new one is
complete (``is_complete(target)``). If the new one fails before it is complete,
it is deleted and the old one renamed back. Two writers use it:

- a result folder (the report, the model export) is written under a hidden
  ``.{name}.staging-XXXXXXXX`` and renamed into place (``staged_folder``,
  ``swap_into_place``): it is complete as soon as it exists;
- a training run folder is trained in place, and is complete once it holds its
  first checkpoint (``utils.training.run_folder``).

A kill at any point leaves hidden leftovers that the next
``recover_leftovers(target, is_complete=...)`` (and so the next
``check_target_folder``) for the same ``target`` sorts out: staging folders are
deleted; the old folder is restored when ``target`` is missing or incomplete,
and deleted when ``target`` is complete. JSON files are written whole with
``write_json_atomic``.

This module sits at the bottom of the package: it imports only the standard library.

Example:
    >>> check_target_folder(out, overwrite=False, flag="--out", overwrite_flag="--overwrite",
    ...                     kind="report", marker_files=("summary.md",))
    >>> with staged_folder(out) as staging:
    ...     (staging / "summary.md").write_text("# run\\n")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STAGING = "staging"  # the new folder while it is being written
REPLACED = "replaced"  # the old folder between the swap and its deletion


def check_target_folder(
    target: Path, *, overwrite: bool, flag: str, overwrite_flag: str, kind: str, marker_files: tuple[str, ...]
) -> None:
    """Fail before any work if ``target`` cannot receive a new ``kind`` folder.

    First cleans up or recovers what an interrupted write left beside ``target``,
    so the checks see the folder as it really is. An empty existing folder is
    fine; one that holds files is replaced only with ``overwrite``, and only
    when it holds every one of ``marker_files`` (an earlier folder of this
    ``kind``), so an overwrite never deletes any other folder.

    Args:
        target: the folder to be written.
        overwrite: whether the user allowed replacing an earlier folder.
        flag: how the user named ``target`` (``--out``, ``output_dir``), for the messages.
        overwrite_flag: how the user allows an overwrite (``--overwrite``, ``overwrite=True``).
        kind: what the folder holds (``report``, ``export``), for the messages.
        marker_files: files every earlier folder of this kind holds.

    Raises:
        ValueError: naming ``flag``: ``target`` is a file, holds files (without
            ``overwrite``, or that are not a ``kind``), or cannot be made or written.
    """
    recover_leftovers(target)
    if target.exists() and not target.is_dir():
        raise ValueError(f"{flag} {target} is a file; pass a folder path")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ValueError(f"{flag} {target} already holds files; choose a new folder or pass {overwrite_flag}")
        if not all((target / name).is_file() for name in marker_files):
            raise ValueError(
                f"{flag} {target} holds files but no earlier {kind} (no {' and '.join(marker_files)}); "
                f"{overwrite_flag} only replaces a {kind} folder, so choose a new folder"
            )
    check_writable(target.resolve().parent, flag, target)


def check_writable(folder: Path, flag: str, given: Path | None = None) -> None:
    """Fail unless files can be made in ``folder``, or in the nearest existing folder above it.

    A throwaway folder is made and removed there: permission bits alone miss
    read-only or special filesystems and root's rights.

    Raises:
        ValueError: naming ``flag`` and the path the user gave (``given``, default ``folder``).
    """
    given = folder if given is None else given
    folder = folder.resolve()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() and existing == given.resolve():
        raise ValueError(f"{flag} {given} is a file; pass a folder path")
    if not existing.is_dir():
        raise ValueError(f"{flag} {given}: {existing} is a file, so the folder cannot be made there")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".write-check-", dir=existing))
    except OSError as err:
        raise ValueError(
            f"{flag} {given}: cannot write in {existing} ({err.strerror}); choose a folder you can write to"
        ) from err


def recover_leftovers(target: Path, *, is_complete: Callable[[Path], bool] | None = None) -> None:
    """Clean up or restore what an interrupted replacement left beside ``target``.

    Staging folders are deleted. When a replaced (old) folder is left, ``target``
    decides: complete, it stays and the old one is deleted; missing or incomplete
    (``is_complete(target)`` is False), it is deleted and the old one renamed back
    (the old folder is restored, never lost).

    Args:
        target: the folder that was being replaced.
        is_complete: whether an existing ``target`` is a whole new folder; default: any
            existing one is (a staged folder is renamed into place whole).
    """
    target = target.resolve()
    if not target.parent.is_dir():
        return
    for staging in _leftovers(target, STAGING):
        shutil.rmtree(staging, ignore_errors=True)
    try:
        replaced = sorted(_leftovers(target, REPLACED), key=os.path.getctime)
        if replaced and target.exists() and is_complete is not None and not is_complete(target):
            _remove(target)  # a new folder that never became whole: the old one it replaced comes back
        if replaced and not target.exists():
            replaced.pop().rename(target)  # the newest: the folder the interrupted write was replacing
    except FileNotFoundError:
        return  # another process (a DDP rank) is recovering the same folder right now
    for folder in replaced:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def replacing(target: Path, *, is_complete: Callable[[Path], bool]) -> Iterator[None]:
    """Set an existing ``target`` aside for a new folder made at ``target`` in the block; keep whichever is whole.

    When the block ends, or fails once the new folder is complete, the old one is
    deleted. When it fails before that, the new folder is deleted and the old one
    put back. A kill leaves what ``recover_leftovers(target, is_complete=...)`` sorts out.

    Example:
        >>> with replacing(run_dir, is_complete=lambda p: (p / "checkpoints" / "last.pt").is_file()):
        ...     train_into(run_dir)
    """
    aside = set_aside(target)
    try:
        yield
    except BaseException:
        if not is_complete(target):
            _remove(target)  # delete the half-made new folder first: a kill now leaves it incomplete
            if aside is not None:
                aside.rename(target)  # put the old folder back before reporting the error
                aside = None
        raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)  # the new folder is in place; the next run cleans up the rest


def set_aside(target: Path) -> Path | None:
    """Rename an existing ``target`` to a hidden replaced folder beside it, and return that; None if missing."""
    if not target.exists():
        return None
    aside = _sibling_name(target, REPLACED)
    target.rename(aside)
    return aside


def write_json_atomic(path: Path, data: Any, *, allow_nan: bool = True) -> None:
    """Write ``data`` (plain JSON data) to ``path`` as indented JSON: a crash never leaves a torn file.

    It is written to ``<path>.partial`` first and renamed over ``path``.

    Raises:
        TypeError, ValueError: ``data`` is not JSON (or holds NaN with ``allow_nan=False``); nothing is written.
    """
    text = json.dumps(data, indent=2, allow_nan=allow_nan) + "\n"  # fails before any file is touched
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder beside ``target``; swap it into place when the block ends cleanly.

    Missing parent folders are made first. On any error (Ctrl-C included) the
    staging folder is deleted and ``target`` is left as it was.

    Example:
        >>> with staged_folder(Path("exports/run-1")) as staging:
        ...     (staging / "config.json").write_text("{}")
    """
    target = target.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)  # e.g. the default reports/ on a fresh clone
    staging = make_sibling(target, STAGING)
    try:
        yield staging
        swap_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_into_place(staging: Path, target: Path) -> None:
    """Rename an old ``target`` aside, move ``staging`` in, then delete the old one.

    At every instant ``target`` is the whole old folder, the whole new one, or
    missing with the old one whole beside it (restored by ``recover_leftovers``).
    """
    with replacing(target, is_complete=Path.exists):
        staging.rename(target)


def make_sibling(target: Path, kind: str) -> Path:
    """Make an empty hidden ``kind`` folder beside ``target``; plain ``mkdir`` gives it the user's umask."""
    for _ in range(10):
        folder = _sibling_name(target, kind)
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue  # a 1-in-4-billion name clash; draw again
    raise FileExistsError(f"could not make a {kind} folder beside {target}")


def _sibling_name(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}.{kind}-{secrets.token_hex(4)}")


def _leftovers(target: Path, kind: str) -> list[Path]:
    """The ``kind`` folders left beside ``target``; the full-name match never takes another folder's."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.{kind}-[0-9a-f]{{8}}")
    return [p for p in target.parent.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]


def _remove(folder: Path) -> None:
    """Delete ``folder`` (or a file or link in its place) if it is there."""
    if folder.is_dir() and not folder.is_symlink():
        shutil.rmtree(folder, ignore_errors=True)
    elif folder.exists() or folder.is_symlink():
        folder.unlink()
