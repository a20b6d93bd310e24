"""Safe file output: whole-or-nothing writes, one writer per output directory, disk errors as one line.

Every file hsae writes goes through here: it is written to `NAME.tmp`, synced, then renamed over
NAME (`publish`), so a reader, a crash or a full disk never leaves half a file under the real
name. A write that fails for a reason the user can fix (ENOSPC, EDQUOT, EROFS, EFBIG, EIO, EACCES)
removes its temporary file and becomes a one-line `UserError` naming the path (so does an output
directory where a file is in the way).

`output_lock(dir, command)` takes an exclusive `fcntl.flock` on `dir/.hsae.lock` for a command
that writes into `dir`. The OS drops the lock when its holder exits, even on kill -9, so nothing
stale is left behind; the file keeps the holder's PID and command for the message a second
writer (or a reader, `check_not_writing`) gets. Under torchrun only rank 0 takes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path

from .config import UserError

LOCK = ".hsae.lock"
# errors a user fixes by freeing space, remounting, fixing permissions or the path: reported, never a traceback
SPACE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
WRITE_ERRORS = SPACE_ERRORS | {errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM, errno.EEXIST, errno.ENOTDIR,
                               errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP}
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the umask can only be read by setting it
_held: dict[Path, int] = {}  # output directories this process holds the lock of -> lock file descriptor


def write_failed(path: Path | str, e: BaseException) -> UserError | None:
    """The one-line error for a failed write of path, or None if e is not a write failure a user can fix."""
    code = getattr(e, "errno", None)
    if code is None:  # safetensors reports the OS error inside its message: "... (os error 28)"
        m = re.search(r"os error (\d+)|code: (\d+)", str(e))
        code = int(m.group(1) or m.group(2)) if m and type(e).__name__ == "SafetensorError" else None
    if code not in WRITE_ERRORS:
        return None
    if code in (errno.EEXIST, errno.ENOTDIR):  # mkdir of an output where a file stands
        return UserError(f"cannot write {path}: a file is in the way of that directory; choose another output")
    fix = "free space" if code in SPACE_ERRORS else "fix that"
    return UserError(f"cannot write {path}: {os.strerror(code)}; {fix} and rerun the same command to continue")


@contextlib.contextmanager
def writing(path: Path | str, tmp: Path | None = None):
    """Turn a failed write of `path` into a one-line UserError, deleting the partial temporary file."""
    try:
        yield
    except BaseException as e:  # an interrupt too leaves no temporary file behind
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        err = write_failed(path, e) if isinstance(e, Exception) else None
        if err is None:
            raise
        raise err from None


def tmp_of(path: Path) -> Path:
    """The temporary name a file is written under before it is published."""
    return path.with_name(path.name + ".tmp")


def publish(tmp: Path, path: Path) -> None:
    """Sync a fully written temporary file to disk, then atomically rename it to `path`."""
    with writing(path, tmp):
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)  # safetensors creates 0600: colleagues sharing a run could not read it
        os.replace(tmp, path)


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file so that readers see either the old content or the whole new one."""
    path = Path(path)
    tmp = tmp_of(path)
    with writing(path, tmp):
        tmp.write_bytes(data)
    publish(tmp, path)


def save_tensors(tensors: dict, path: Path | str, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file (torch tensors or numpy arrays) atomically."""
    path = Path(path)
    tmp = tmp_of(path)
    first = next(iter(tensors.values()), None)
    if first is not None and type(first).__module__.startswith("numpy"):
        from safetensors.numpy import save_file
    else:
        from safetensors.torch import save_file
    with writing(path, tmp):
        save_file(tensors, str(tmp), metadata=metadata)
    publish(tmp, path)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 16 MB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _holder(lock: Path) -> str:
    """'`hsae train` (PID 123)' from a lock file, as far as it can be read."""
    try:
        info = json.loads(lock.read_text())
        return f"`hsae {info['command']}` (PID {int(info['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another hsae process"


def _main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def output_lock(out: Path | str, command: str):
    """Hold the exclusive writer's lock of directory `out` (created if missing) for the block."""
    out = Path(out).resolve()
    if not _main_rank() or out in _held:  # torchrun: rank 0 holds it; nested use by the same process
        yield
        return
    created = not out.exists()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise UserError(f"{out} is being written by {_holder(out / LOCK)}; wait for it or use another output") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        _held[out] = fd
        yield
    finally:
        _held.pop(out, None)
        if created and [p.name for p in out.iterdir()] == [LOCK]:  # a command that wrote nothing leaves nothing
            (out / LOCK).unlink()
            out.rmdir()
        os.close(fd)  # closing drops the lock; the file stays (removing it would race a new holder)


def check_not_writing(path: Path | str) -> None:
    """UserError if another process holds the writer's lock of directory `path` (a reader's check)."""
    path = Path(path).resolve()
    lock = path / LOCK
    if path in _held or not lock.is_file():
        return
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise UserError(f"{path} is still being written by {_holder(lock)}; wait for it to finish") from None
    finally:
        os.close(fd)
