"""No partial output, ever: every step writes into a temporary directory next to the
destination; the finished file is renamed onto the destination (an atomic rename on the same
file system) and the directory is removed on success, on error and on Ctrl-C/SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from .errors import ConvertError


class Workspace:
    """Scratch files for one run, all in a hidden directory beside the destination."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tappa-tmp", dir=dest.parent))
        self._n = 0

    def path(self, stem: str) -> Path:
        """A fresh file name in the scratch directory."""
        self._n += 1
        return self.dir / f"{self._n:02d}-{stem}.gguf"

    def commit(self, finished: Path) -> Path:
        """Move ``finished`` onto the destination (replacing an existing file atomically)."""
        os.replace(finished, self.dest)
        return self.dest

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def workspace(dest: str | Path) -> Iterator[Workspace]:
    """Yield a :class:`Workspace` for ``dest``; whatever happens, only a finished file reaches ``dest``.

    An existing ``dest`` is replaced only by a finished file (and left untouched on failure).
    SIGTERM is turned into KeyboardInterrupt for the duration so that ``kill`` cleans up too.
    """
    out = Path(dest).expanduser()
    if out.is_dir():
        raise ConvertError(f"output {out} is a directory; give a file name such as {out / 'model.gguf'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConvertError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConvertError(f"output directory {parent} is not writable")
    ws = Workspace(out.resolve())
    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        yield ws
    finally:
        ws.cleanup()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
