"""Filesystem steps that survive a power loss: the file's data, then the directory entry (Maildir's rule).

A rename or link is on disk only once its directory is fsync'd, and a file's content only once the
file is; a kill -9 cannot show the difference, a power cut can.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (renames, links, new files in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, text: str) -> None:
    """Write a new file and its content durably."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def touch(path: Path) -> None:
    """Create an empty marker file durably."""
    write(path, "")


def rename(source: Path, target: Path) -> None:
    """os.replace, durable in both directories (raises as os.replace does)."""
    os.replace(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def link(source: Path, target: Path) -> None:
    """os.link of the entry itself, a symlink not followed (fails if `target` exists), durable once it returns."""
    os.link(source, target, follow_symlinks=False)
    fsync_dir(target.parent)
