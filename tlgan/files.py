"""Every file of a workdir, local or in cloud storage: the few file operations tlgan needs, on a local path
through `os` (atomic renames, the umask) and on a remote one (`gs://`, `s3://`, ...) through `etils.epath`.

A remote path keeps the guarantees of a local one where the store gives them: an object store's write is
atomic (an object appears only when its upload completes), so `atomic_write` assembles the content in memory
and uploads it once; there is no append, so `metrics.jsonl` is rewritten whole (`reporting.MetricWriter`).
Orbax and TensorStore read and write checkpoints themselves, to the same URLs.

Which library reaches `gs://`: etils.epath uses TensorFlow's GCS filesystem when TensorFlow is installed and
gcsfs (fsspec) otherwise, or always with EPATH_USE_TF=false (what a GCS emulator needs: TensorFlow's client
cannot be pointed at one). TensorBoard's events files (`tlgan.events`) go through `atomic_write` like the rest.
"""

import io
import os
import re
import tempfile
from typing import Callable, List

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
SCHEMES = ("gs", "s3", "az")  # the object stores etils.epath writes to


def scheme(path) -> str:
  """'gs' for gs://bucket/run, '' for a local path."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1) if match else ""


def is_remote(path) -> bool:
  """Whether `path` is a URL of an object store tlgan writes to (gs://bucket/run), not a local path."""
  return scheme(path) in SCHEMES


def check_url(path: str, what: str) -> None:
  """Raises ValueError naming the problem when `path` looks like a URL tlgan cannot use: an unknown scheme
  (which would otherwise become a local folder named 'foo:'), or no bucket."""
  name = scheme(path)
  if not name:
    return
  if name not in SCHEMES:
    raise ValueError(f"{what} {path}: tlgan does not write to {name}:// URLs (only to local folders and "
                     f"{', '.join(s + '://' for s in SCHEMES)}); give a local path without '{name}://'")
  bucket = os.fspath(path)[len(name) + 3:].split("/", 1)[0]
  if not bucket:
    raise ValueError(f"{what} {path} names no bucket: write {name}://BUCKET/FOLDER")


def absolute(path: str) -> str:
  """A local path made absolute; a URL as it is (less a trailing '/')."""
  path = os.fspath(path)
  if is_remote(path):
    return path.rstrip("/") if not path.endswith("://") else path
  return os.path.abspath(path)


def join(folder: str, *names: str) -> str:
  return "/".join([os.fspath(folder).rstrip("/"), *names]) if is_remote(folder) else os.path.join(folder, *names)


def epath(path):
  """The `etils.epath.Path` of a URL or a local path."""
  from etils import epath as _epath
  return _epath.Path(os.fspath(path))


def exists(path: str) -> bool:
  return epath(path).exists() if is_remote(path) else os.path.exists(path)


def isdir(path: str) -> bool:
  return epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def isfile(path: str) -> bool:
  return epath(path).is_file() if is_remote(path) else os.path.isfile(path)


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    return epath(path).read_bytes()
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8")


def open_read(path: str, mode: str = "rb"):
  """A file object to read `path` (a stream for big files; `read_bytes` for small ones)."""
  return epath(path).open(mode) if is_remote(path) else open(path, mode)


def glob(folder: str, pattern: str) -> List[str]:
  """The paths in `folder` matching `pattern` (one level: no '**')."""
  if is_remote(folder):
    return sorted(os.fspath(p) for p in epath(folder).glob(pattern))
  import glob as _glob
  return sorted(_glob.glob(os.path.join(folder, pattern)))


def makedirs(path: str) -> None:
  if is_remote(path):
    epath(path).mkdir(parents=True, exist_ok=True)  # object stores: nothing to create; others make the folder
  else:
    os.makedirs(path, exist_ok=True)


def move(source: str, target: str) -> None:
  """Moves a file or a folder (local: one rename; an object store, which has no rename and no folders until
  something is in them: copies every object, then deletes the source)."""
  if not (is_remote(source) or is_remote(target)):
    os.replace(source, target)
    return
  _copy_tree(epath(source), epath(target))
  epath(source).rmtree() if epath(source).is_dir() else epath(source).unlink()


def _copy_tree(source, target) -> None:
  if source.is_dir():
    for child in source.iterdir():
      _copy_tree(child, target / child.name)
  else:
    source.copy(target)


def rmtree(path: str) -> None:
  """Removes a folder and everything in it; what cannot be removed stays (best effort)."""
  if is_remote(path):
    try:
      epath(path).rmtree()
    except Exception:  # noqa: BLE001 - a leftover is harmless; the caller reports the real failure
      pass
  else:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def new_file_mode() -> int:
  """The mode `open()` gives a new file (0o666 less the umask, 0o644 typically): what a team sharing a cache
  or a workdir expects. (`mkstemp` makes its files private to their owner, 0o600.)"""
  return 0o666 & ~_umask()


def _umask() -> int:
  """The process's umask, read without changing it where Linux shows it (setting and restoring it would leave
  a moment in which a file created by another thread, an Orbax writer say, gets no umask at all)."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  umask = os.umask(0o077)  # elsewhere: briefly the strictest, never a looser one
  os.umask(umask)
  return umask


def atomic_write(path: str, write_fn: Callable, mode: str = "wb") -> None:
  """Writes `path` through `write_fn(f)` so that the file is whole or not there (a failure leaves nothing
  behind, and an existing file at `path` as it was). Local: a temporary file in the same folder, renamed over
  `path` when complete, with `new_file_mode()`. Remote: the content is made in memory and uploaded as one
  object, which the store makes visible only when the upload completes."""
  if is_remote(path):
    buffer = io.StringIO() if "b" not in mode else io.BytesIO()
    write_fn(buffer)
    data = buffer.getvalue()
    epath(path).write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  try:
    os.fchmod(fd, new_file_mode())
    with os.fdopen(fd, mode) as f:
      write_fn(f)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def check_remote_writable(folder: str) -> None:
  """Writes and deletes one empty object in `folder` (a URL): the one test an object store answers truly
  (no bucket, no credentials, no permission). Raises what the store's client raised."""
  import uuid
  probe = join(folder, f".tlgan-write-test-{uuid.uuid4().hex}")
  epath(probe).write_bytes(b"")
  epath(probe).unlink()
