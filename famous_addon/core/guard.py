"""Guards at the edges: untrusted text and names in, output folders out.

What a user hands FAMOUS (box files, class configs, ``obj.names``, a run
folder's ``run.json``, possibly downloaded or shared) may hold bytes that are
not text or class names that are not safe as file names; what FAMOUS writes
must stay inside the folder the user chose, and two runs must not write one
folder at once. Each guard fails with a one-line :class:`~.errors.FamousError`
naming the file and the fix. Like :mod:`.fileio` this module sits low: it
imports nothing of the package but :mod:`.errors`.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import FamousError

# Characters that are path separators or invalid in file names on Windows, and
# control characters; a class name becomes a folder and file name on export.
_UNSAFE_NAME = re.compile(r'[/\\<>:"|?*\x00-\x1f\x7f]')
MAX_NAME_LENGTH = 64
LOCK_NAME = ".famous.lock"


def decode_text(data: bytes, path: str | Path | None, what: str, fix: str) -> str:
    """``data`` as UTF-8 text (a byte-order mark allowed), or a FamousError naming ``path``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FamousError(
            f"is not a text {what}: byte {exc.start} ({data[exc.start]:#04x}) is not UTF-8.",
            path,
            fix,
        ) from None


def check_class_name(name, path: str | Path | None, where: str = "") -> str:
    """A class name that is safe as a folder and file name, or a FamousError.

    Class names name the folders and files of exported meshes
    (``meshes/<class>/<class>_<id>.stl``), so a name with a path separator or
    ``..`` could write outside the output folder.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str) or not name.strip():
        raise FamousError(f"{prefix}a class has no name.", path, 'give it name = "...".')
    problem = None
    if _UNSAFE_NAME.search(name):
        problem = 'a path separator, control character or one of < > : " | ? *'
    elif ".." in name or name.startswith("."):
        problem = "'..' or a leading '.'"
    elif name != name.strip():
        problem = "leading or trailing spaces"
    elif len(name) > MAX_NAME_LENGTH:
        problem = f"more than {MAX_NAME_LENGTH} characters"
    if problem:
        raise FamousError(
            f"{prefix}class name {name!r} holds {problem}; class names become file names.",
            path,
            "use letters, digits, spaces, '_' and '-' (e.g. early_endosome).",
        )
    return name


def inside(root: str | Path, *parts: str) -> Path:
    """``root / parts...``, refused when it would lie outside ``root``.

    The last line of defence for paths built from names read from files
    (class names are checked where they are read, see :func:`check_class_name`).
    """
    root = Path(root)
    path = root.joinpath(*parts)
    base = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([base, real]) != base:
        raise FamousError(
            f"the output path {path} would lie outside the output folder.",
            root,
            "rename the class (or file) whose name holds '..' or a path separator.",
        )
    return path


def writable_folder(path: str | Path, fix: str = "choose another --out folder.") -> Path:
    """Create ``path`` if needed and check that files can be written in it.

    An ``--out`` that is a file, lies under a file or on a read-only disk
    fails here with one line instead of a traceback after the work is done.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FamousError("exists and is a file, not a folder.", path, fix)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".famous-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FamousError(
            f"cannot be written ({exc.strerror or exc}).",
            path,
            f"check the permissions and free space, or {fix}",
        ) from None
    return path


class FolderLock:
    """An exclusive lock on a folder, so that two runs never write it at once.

    The lock is an OS lock on ``FOLDER/.famous.lock`` (``flock`` on Unix,
    ``msvcrt.locking`` on Windows): the OS releases it when the process ends,
    however it ends, so a killed run never leaves a stale lock. The file is
    removed on :meth:`release`.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        """Take the lock, or fail with a FamousError saying another run holds it."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            if not _try_lock(fd):
                os.close(fd)
                raise FamousError(
                    "another FAMOUS run is writing this folder.",
                    self.folder,
                    "wait for it to finish (or stop it), or choose another --out folder.",
                )
            # a releasing holder may have removed the file between our open and our lock:
            # the lock must be on the file that is there now
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                self._fd = fd
                return self
            _unlock(fd)
            os.close(fd)

    def release(self) -> None:
        """Remove the lock file and give the lock up."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if os.name == "nt":
            # Windows cannot remove an open file; a later run locks the file left behind
            _unlock(fd)
            os.close(fd)
            return
        # removed while still locked, so that no one locks the file on its way out
        self.path.unlink(missing_ok=True)
        _unlock(fd)
        os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _try_lock(fd: int) -> bool:
    if os.name == "nt":
        import msvcrt  # here, not on top: Windows only

        os.lseek(fd, 0, os.SEEK_SET)  # msvcrt locks bytes from the current position
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl  # here, not on top: Unix only (no fcntl on Windows)

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt  # here, not on top: Windows only

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    import fcntl  # here, not on top: Unix only (no fcntl on Windows)

    fcntl.flock(fd, fcntl.LOCK_UN)
