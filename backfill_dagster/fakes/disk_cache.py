"""Generated files kept on disk, least recently used evicted beyond a byte bound (the flat-files
fake's cache: a file is made once, streamed many times)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
from collections import OrderedDict
from pathlib import Path


class DiskCache:
    """Generated files on disk, least recently used evicted beyond `max_bytes`; one generation
    per name at a time (concurrent requests for the same file wait for the first)."""

    def __init__(self, folder: str | None, max_bytes: int):
        self._own = folder is None
        self._folder = Path(folder) if folder else None
        self._max = max_bytes
        self._lock = threading.Lock()
        self._making: dict[str, threading.Lock] = {}
        self._sizes: OrderedDict[str, int] = OrderedDict()
        self._total = 0

    @property
    def folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="fake-flatfiles-"))
            return self._folder

    def size(self, name: str) -> int | None:
        with self._lock:
            if name in self._sizes:
                return self._sizes[name]
            if self._own:
                return None  # a folder of our own holds only what we made
        try:
            return os.stat(os.path.join(self.folder, name)).st_size
        except OSError:
            return None

    def get(self, name: str, write) -> Path:
        """The file `name`, written by `write(path)` if it is not there yet."""
        path = self.folder / name
        with self._lock:
            if name in self._sizes and path.exists():
                self._sizes.move_to_end(name)
                return path
            making = self._making.setdefault(name, threading.Lock())
        with making:
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
                try:
                    write(partial)
                    os.replace(partial, path)  # readers never see half a file
                finally:
                    partial.unlink(missing_ok=True)
            size = path.stat().st_size
            with self._lock:
                self._making.pop(name, None)
                if name not in self._sizes:
                    self._total += size
                self._sizes[name] = size
                self._sizes.move_to_end(name)
                self._evict(keep=name)
        return path

    def _evict(self, keep: str) -> None:
        # An evicted file still being streamed stays readable through its open descriptor.
        while self._total > self._max and len(self._sizes) > 1:
            name, size = next(iter(self._sizes.items()))
            if name == keep:
                self._sizes.move_to_end(name)
                continue
            del self._sizes[name]
            self._total -= size
            try:
                (self._folder / name).unlink()
            except OSError:
                pass

    def close(self) -> None:
        if self._own and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            with self._lock:
                self._folder = None
                self._sizes.clear()
                self._total = 0
