"""What a run leaves for a researcher: TensorBoard events, a JSON-lines metrics file, PNG grids and curves,
and JSON summaries. Every writer is a no-op outside process 0, and files are written atomically
(`tlgan.files.atomic_write`), so a killed run never leaves a half-written PNG or JSON behind; the workdir may
be a local folder or a URL (gs://bucket/run).
"""

import json
import math
import os
from typing import Dict, Iterable, List, Optional

import jax
import numpy as np
from PIL import Image

from tlgan import events, files
from tlgan.files import atomic_write


def is_writer() -> bool:
  return jax.process_index() == 0


def _vector_isa(flags) -> str:
  """The widest x86 vector extension in /proc/cpuinfo's flags ('AVX-512', 'AVX2', ...), '' if none is named."""
  for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sse4_2", "SSE4.2")):
    if flag in flags:
      return name + (" + AMX" if "amx_tile" in flags else "")
  return ""


def _cpuinfo(path: str) -> Dict[str, str]:
  """The first processor's fields in /proc/cpuinfo ({} if it cannot be read)."""
  fields = {}
  try:
    with open(path, errors="replace") as f:  # a damaged file must not cost a run its summary
      for line in f:
        if not line.strip():
          if fields:
            break  # the first processor's block is enough
          continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
  except OSError:
    return {}
  return fields


def vector_extension(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's widest x86 vector extension ('AVX-512', 'AVX2 + AMX', ...), '' if none is named."""
  return _vector_isa(set(_cpuinfo(cpuinfo).get("flags", "").split()))


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The processor's model name as lscpu shows it, with its family, model and widest vector extension:
  "AMD EPYC (family 25 model 1, AVX2)". A time or a rate means little without it, and one name covers
  different CPUs (an "AMD EPYC" may be a Zen 3 without AVX-512 or a Zen 4 with it)."""
  fields = _cpuinfo(cpuinfo)
  name = fields.get("model name")
  if not name:
    import platform
    return platform.processor() or platform.machine() or "unknown"
  detail = []
  if "cpu family" in fields and "model" in fields:
    detail.append(f"family {fields['cpu family']} model {fields['model']}")
  if isa := _vector_isa(set(fields.get("flags", "").split())):
    detail.append(isa)
  return f"{name} ({', '.join(detail)})" if detail else name


def machine() -> Dict[str, object]:
  """What produced a run's times and rates: CPU model and cores, JAX's backend and devices."""
  devices = jax.devices()
  return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "backend": jax.default_backend(),
          "device_kind": devices[0].device_kind, "devices": len(devices)}


def write_json(path: str, obj) -> None:
  if is_writer():
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")


def image_grid(images: np.ndarray, columns: Optional[int] = None, padding: int = 2) -> np.ndarray:
  """(N, H, W, C) floats in [-1, 1] -> one uint8 image (rows x columns tiles, white padding)."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  columns = columns or int(math.ceil(math.sqrt(n)))
  rows = int(math.ceil(n / columns))
  tiles = np.clip(np.rint((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
  grid = np.full((rows * (h + padding) + padding, columns * (w + padding) + padding, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, columns)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = tiles[i]
  return grid


def save_image_grid(path: str, images: np.ndarray, upscale: int = 2) -> None:
  if not is_writer():
    return
  grid = image_grid(images)
  pil = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if upscale > 1:
    pil = pil.resize((pil.width * upscale, pil.height * upscale), Image.NEAREST)
  atomic_write(path, lambda f: pil.save(f, format="PNG"))


def plot_curves(path: str, history: List[Dict[str, float]], keys: Iterable[str], title: str = "",
                log_keys: Iterable[str] = ()) -> None:
  """Line plots of `keys` over `history` (dicts with a 'step'), one panel per key; `log_keys` on a log axis."""
  if not is_writer() or not history:
    return
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = [k for k in keys if any(k in row for row in history)]
  fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
  for ax, key in zip(axes[0], keys):
    rows = [row for row in history if key in row]
    ax.plot([row["step"] for row in rows], [row[key] for row in rows])
    ax.set_title(key)
    if key in log_keys:
      ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
  plt.close(fig)


class MetricWriter:
  """Scalars to TensorBoard (`tlgan.events`) and to `metrics.jsonl`; keeps the history for plots. Locally both
  files are appended to (a kill -9 loses at most the record being written). In a remote workdir, where objects
  cannot be appended to, both are uploaded whole at each write."""

  def __init__(self, workdir: str):
    self.history: List[Dict[str, float]] = []
    self._jsonl = self._events = None
    self._open = False
    if is_writer():
      self._remote = files.is_remote(workdir)
      tb_dir = files.join(workdir, "tensorboard")
      files.makedirs(tb_dir)
      self._events_path = files.join(tb_dir, events.file_name())  # one per process, as TensorBoard expects
      self._events_data = events.header()
      if not self._remote:
        self._events = open(self._events_path, "ab")
      self._flush_events()
      self._jsonl_path = files.join(workdir, "metrics.jsonl")
      self.history = read_jsonl(self._jsonl_path)
      self._open = True
      if not self._remote:
        self._jsonl = open(self._jsonl_path, "a")

  def _flush_events(self) -> None:
    if self._events is not None:  # local: append the new records
      self._events.write(self._events_data)
      self._events.flush()
      self._events_data = b""
    else:  # remote: the whole file again
      data = self._events_data
      atomic_write(self._events_path, lambda f: f.write(data))

  def truncate_after(self, step: int) -> None:
    """Drops rows logged after `step` (a resumed run re-logs them)."""
    if not self._open:
      return
    self._rewrite([row for row in self.history if row["step"] <= step])

  def _rewrite(self, rows: List[Dict[str, float]]) -> None:
    self.history = rows
    if self._jsonl is not None:
      self._jsonl.close()
    atomic_write(self._jsonl_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in rows), "w")
    if not self._remote:
      self._jsonl = open(self._jsonl_path, "a")

  def write(self, step: int, scalars: Dict[str, float]) -> None:
    if not self._open:
      return
    row = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
    if self._remote:
      self._rewrite(self.history + [row])
    else:
      self.history.append(row)
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    # 'FD[net]' -> 'FD/net': TensorBoard groups it, and allows it
    record = events.scalars(step, {k.replace("[", "/").rstrip("]"): float(v) for k, v in scalars.items()})
    self._events_data += record
    self._flush_events()

  def replace(self, step: int, scalars: Dict[str, float]) -> None:
    """Writes `scalars` at `step`, first dropping the values of the same names logged at that step before
    (the end of a run, redone), so that no name appears twice at one step."""
    if not self._open or not scalars:
      return
    rows = [{k: v for k, v in row.items() if row["step"] != step or k not in scalars} for row in self.history]
    self._rewrite([row for row in rows if len(row) > 1])
    self.write(step, scalars)

  def close(self) -> None:
    if self._open:
      self._open = False
      if self._jsonl is not None:
        self._jsonl.close()
      if self._events is not None:
        self._events.close()


def read_jsonl(path: str) -> List[Dict[str, float]]:
  if not files.exists(path):
    return []
  rows = []
  for line in files.read_text(path).splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:  # a line cut by a kill -9
      break
  return rows
