"""Know what changed under a directory tree without walking it: inotify, read on demand.

A :class:`TreeWatcher` puts an inotify watch on each directory of a tree (the caller adds them,
typically while walking it: a watch added before a directory is listed misses nothing that
happens after the listing); afterwards :meth:`TreeWatcher.changes` reads the events the kernel
queued since the last read and returns the paths they touch. The kernel queues an event when the
file system operation happens, so a read at sync time sees every change made before it: no
thread, no polling, no latency.

What it reports, and what it leaves to the caller:

- ``files``: every non-directory entry of a watched directory that was created, written,
  closed after writing, had its attributes changed, was deleted, or moved in or out. The caller
  looks at each path again (it may be gone, or back).
- ``dirs``: every directory entry of a watched directory created, deleted, moved or changed
  (attributes), and each watched directory that itself went away. The watcher does not follow
  new directories; the caller decides (an ignored directory can be skipped, anything else means
  a walk).
- ``None``: the caller must walk. The event queue overflowed, a watch could not be added (no
  inotify -- not Linux --, or the per-user watch or instance limit was reached), or reading
  failed. A broken watcher stays broken.

Limits, as for every inotify user: changes made through another hard link to a file, through a
shared writable ``mmap``, or on another machine sharing a network file system raise no event.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import struct
import sys
from collections.abc import Iterable
from typing import NamedTuple

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)
_SELF = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED
_EVENT = struct.Struct("iIII")
MAX_DIRS = 20_000
"""The most directories one watcher watches; past that it reports ``None`` (walk)."""

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL | None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        except OSError:
            return None
    return _libc


class TreeChanges(NamedTuple):
    """What :meth:`TreeWatcher.changes` saw: absolute paths of non-directories and of
    directories touched since the last read."""

    files: set[str]
    dirs: set[str]


class TreeWatcher:
    """inotify watches on directories of the tree at ``root`` (added with :meth:`add`)."""

    def __init__(self, root: str, dirs: Iterable[str] = ()) -> None:
        self.root = root
        self.fd = -1
        self.broken = False
        self._wd: dict[int, str] = {}
        self._pid = os.getpid()
        lib = _lib()
        if lib is None:
            self.broken = True
            return
        fd = lib.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:  # EMFILE: the per-user instance limit
            self.broken = True
            return
        self.fd = fd
        for d in dirs:
            self.add(d)

    @property
    def ok(self) -> bool:
        """Whether :meth:`changes` can still answer (not broken, not closed, same process)."""
        return not self.broken and self.fd >= 0 and self._pid == os.getpid()

    @property
    def watched(self) -> int:
        """How many directories are watched."""
        return len(self._wd)

    def add(self, directory: str) -> bool:
        """Watch ``directory`` (absolute path); False if the watcher is (now) broken.

        A directory that is gone or unreadable is skipped: its parent's events tell of it
        coming back, and a walk cannot list an unreadable one either."""
        lib = _lib()
        if lib is None or not self.ok:
            self.broken = True
            return False
        if len(self._wd) >= MAX_DIRS:
            self.broken = True
            return False
        wd = lib.inotify_add_watch(self.fd, os.fsencode(directory), _MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                self.broken = True  # ENOSPC: max_user_watches reached; anything else: unknown
                return False
            return True
        self._wd[wd] = directory
        return True

    def changes(self) -> TreeChanges | None:
        """Paths touched since the last call, or None when the caller must walk."""
        if not self.ok:
            return None
        files: set[str] = set()
        dirs: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
            except OSError:
                self.broken = True
                return None
            if not data:
                break
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    self.broken = True
                    return None
                directory = self._wd.get(wd)
                if directory is None:
                    continue
                if mask & _SELF:
                    if mask & IN_IGNORED:
                        del self._wd[wd]  # the kernel dropped the watch: no more events
                    dirs.add(directory)
                    continue
                if not name:  # the watched directory's own attributes
                    dirs.add(directory)
                    continue
                path = os.path.join(directory, os.fsdecode(name))
                (dirs if mask & IN_ISDIR else files).add(path)
        return TreeChanges(files, dirs)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


def available() -> bool:
    """Whether inotify can be used here (Linux with a C library that has it)."""
    lib = _lib()
    return lib is not None and hasattr(lib, "inotify_init1")


__all__ = ["MAX_DIRS", "TreeChanges", "TreeWatcher", "available"]
