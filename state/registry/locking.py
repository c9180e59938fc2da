"""Exclusive access to a registry root, and private staging directories for registrations.

Every mutation holds an flock on root/.lock. A registration writes its files into a staging
directory whose own lock file its process holds until the directory is renamed into versions/
(or removed); a leftover whose lock can be taken belongs to a dead process and is removed."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger("state.registry")


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """An exclusive flock on `lock_path` for the block. flock belongs to the open file, not the
    process, so each call's own open() also excludes other threads of this process. Never nest:
    a second exclusive() on the same file in the same thread would wait for itself."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


@contextmanager
def staging(staging_dir: Path) -> Iterator[Path]:
    """A private staging directory whose lock file this process holds until it is renamed away
    (success) or removed (failure); a crash releases the lock and leaves it to `clean_staging`."""
    staging_dir.mkdir(parents=True, exist_ok=True)
    while True:
        name = f"{os.getpid()}-{uuid.uuid4().hex}"
        lock_path = staging_dir / f"{name}.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # a cleaner removed it between create and lock: take a new name
    stage = staging_dir / name
    try:
        stage.mkdir()
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # gone already after a successful rename
        lock_path.unlink(missing_ok=True)
        os.close(fd)


def clean_staging(staging_dir: Path) -> None:
    """Remove staging leftovers of dead writers (their lock can be taken) and gc trash."""
    try:
        entries = list(staging_dir.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(".lock"):
            try:
                fd = os.open(entry, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if try_lock(fd):
                    shutil.rmtree(staging_dir / entry.name[: -len(".lock")], ignore_errors=True)
                    entry.unlink(missing_ok=True)
                    log.info("registry staging %s: removed leftover %s", staging_dir, entry.stem)
            finally:
                os.close(fd)
        elif entry.is_dir() and not (staging_dir / f"{entry.name}.lock").exists():
            shutil.rmtree(entry, ignore_errors=True)  # gc trash, or a dir without an owner


def trash_name(staging_dir: Path, version: str) -> Path:
    """Where gc moves a version before deleting it (inside staging: cleaned if a crash interrupts)."""
    return staging_dir / f"gc-{version}-{uuid.uuid4().hex[:8]}"
