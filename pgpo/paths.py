"""The one home of pgpo's cache folders.

``$PGPO_CACHE`` (default ``~/.cache/pgpo``) is the cache *root*; every cache is a named subfolder of it
(:func:`cache_dir`): the dequantised SmolLM2 (:func:`smollm2_dir`) and the demo's warm starts (:func:`warmstart_dir`).

:func:`check_cache_writable` probe-writes the root before work whose result goes there. A cache folder is written by
:func:`atomic_folder`: into a fresh temp folder next to the target, then renamed onto it, so a crash never leaves a
half-written folder that looks complete. A folder pgpo writes carries a marker file
(:data:`MARKER`); pgpo replaces an existing target only when it carries that marker, and never deletes a folder it
did not create (``PGPO_CACHE=~/.cache`` is safe: pgpo only ever touches ``~/.cache/<its own names>``).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "PGPO_CACHE"
DEFAULT_CACHE_ROOT = "~/.cache/pgpo"
MARKER = ".pgpo-cache"
SMOLLM2_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """``$PGPO_CACHE`` or ``~/.cache/pgpo`` (``~`` expanded). Not created here."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT).expanduser()


def cache_dir(name: str) -> Path:
    """The cache subfolder ``name`` (one path component) of :func:`cache_root`."""
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(f"a cache name is one path component, got {name!r}")
    return cache_root() / name


def smollm2_dir() -> Path:
    """The dequantised SmolLM2-135M-Instruct (safetensors + tokenizer)."""
    return cache_dir(SMOLLM2_NAME)


def warmstart_dir(key: str) -> Path:
    """A warm-started demo VLM, keyed by its settings (:meth:`pgpo.demo.warmstart.WarmStartConfig.key`)."""
    return cache_dir(f"warmstart-{key}")


def check_cache_writable() -> Path:
    """Create :func:`cache_root` if missing and probe-write it, so that an unwritable cache fails before the work it
    would keep (minutes of training), not after. ``OSError`` naming ``$PGPO_CACHE``, the folder and the fix."""
    root = cache_root()
    try:
        if root.exists() and not root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder")
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pgpo-write-probe-", dir=root)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        setting = os.environ.get(CACHE_ENV) or f"unset: {DEFAULT_CACHE_ROOT}"
        raise OSError(
            err.errno,
            f"the pgpo cache {root} is not writable ({err.strerror or err}): set ${CACHE_ENV} (now {setting}) to a "
            f"writable folder, e.g. {CACHE_ENV}=/tmp/pgpo-cache, or make {root} writable",
        ) from err
    return root


def created_by_pgpo(folder: Path) -> bool:
    """Does ``folder`` carry pgpo's marker (so pgpo may replace it)?"""
    return (Path(folder) / MARKER).is_file()


@contextmanager
def atomic_folder(target: str | os.PathLike, is_complete: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Write a folder atomically: yields a temp folder next to ``target``; on success it is renamed onto ``target``.

    If ``target`` appeared meanwhile and ``is_complete(target)`` (another process wrote it first), that one is kept.
    An existing ``target`` is replaced only if pgpo created it (it carries :data:`MARKER`); otherwise
    ``FileExistsError`` is raised and nothing is deleted. On an error the temp folder is removed and ``target`` is
    left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the published folder gets the usual permissions
    try:
        yield tmp
        (tmp / MARKER).write_text("written by pgpo; pgpo may replace this folder\n")
        _publish(tmp, target, is_complete)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # our own temp folder


def _publish(tmp: Path, target: Path, is_complete: Callable[[Path], bool] | None) -> None:
    try:
        os.rename(tmp, target)  # atomic; fails if target exists and is not empty
        return
    except OSError:
        if not target.exists():
            raise
    if is_complete is not None and is_complete(target):
        return  # written by someone else in the meantime: keep theirs (ours is removed by the caller)
    if not created_by_pgpo(target):
        raise FileExistsError(
            f"{target} exists and was not created by pgpo; pgpo does not delete it. Remove it yourself or point "
            f"${CACHE_ENV} elsewhere."
        )
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.rename(target, old / target.name)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)  # pgpo's own previous version (it carried the marker)
