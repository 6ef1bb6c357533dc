"""torchvision ResNet weights -> tlgan Flax variables, and merging them into a model to fine-tune.

    python -m tlgan.pretrained --arch=resnet18 --output=weights/resnet18.msgpack            # download
    python -m tlgan.pretrained --arch=resnet18 --output=weights/resnet18.msgpack --torch-file=resnet18-f37072fd.pth

Conversion is a rename and a transpose: conv kernels OIHW -> HWIO, the fc weight transposed, BatchNorm
weight/bias -> scale/bias (params) and running_mean/var -> mean/var (batch_stats), `num_batches_tracked`
dropped. Every key of the state dict must be consumed and every variable of the model filled, with equal
shapes; the first key that does not fit is named in the error.

Files are loaded with `torch.load(..., weights_only=True)`: a file that carries pickled code is refused.
torch is needed only here (`pip install -e .[torch]`) and imported lazily.
"""

import dataclasses
import hashlib
import os
import re
import sys
import tempfile
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import jax
import numpy as np
from flax import serialization, traverse_util

from tlgan import files
from tlgan.errors import UserError

ARCHS = {
    "resnet18": dict(module="ResNet18",
                     url="https://download.pytorch.org/models/resnet18-f37072fd.pth", sha256_prefix="f37072fd"),
    "resnet34": dict(module="ResNet34",
                     url="https://download.pytorch.org/models/resnet34-b627a593.pth", sha256_prefix="b627a593"),
    "resnet50": dict(module="ResNet50",
                     url="https://download.pytorch.org/models/resnet50-0676ba61.pth", sha256_prefix="0676ba61"),
}
INCEPTION_FID = "inception_v3_fid"
ARCHS[INCEPTION_FID] = dict(
    module=None, sha256_prefix="6726825d",
    url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth")
FORMAT = "tlgan-pretrained-v1"
# Every tlgan ResNet is fed [0, 1] pixels normalised with ImageNet's statistics (`classifier_input`).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConversionError(UserError):
  """A state dict that does not fit the architecture."""


def model_for(arch: str, num_classes: int = 1000, **kwargs):
  from tlgan.models import resnet
  if arch not in ARCHS or ARCHS[arch]["module"] is None:
    resnets = [a for a, info in ARCHS.items() if info["module"]]
    raise UserError(f"unknown ResNet architecture {arch!r}: choose one of {', '.join(resnets)}")
  return getattr(resnet, ARCHS[arch]["module"])(num_classes=num_classes, **kwargs)


def _flax_path(torch_key: str) -> Tuple[str, Tuple[str, ...]]:
  """'layer2.0.downsample.1.running_var' -> ('batch_stats', ('layer2_0', 'downsample_bn', 'var'))."""
  parts = torch_key.split(".")
  path = []
  i = 0
  while i < len(parts) - 1:
    if re.fullmatch(r"layer\d", parts[i]) and i + 1 < len(parts) - 1 and parts[i + 1].isdigit():
      path.append(f"{parts[i]}_{parts[i + 1]}")
      i += 2
    elif parts[i] == "downsample" and i + 1 < len(parts) - 1:
      path.append({"0": "downsample_conv", "1": "downsample_bn"}.get(parts[i + 1], f"downsample_{parts[i + 1]}"))
      i += 2
    else:
      path.append(parts[i])
      i += 1
  leaf = parts[-1]
  is_bn = bool(path) and (path[-1].startswith("bn") or path[-1] == "downsample_bn")
  if leaf == "weight":
    return "params", tuple(path) + (("scale",) if is_bn else ("kernel",))
  if leaf == "bias":
    return "params", tuple(path) + ("bias",)
  if leaf in ("running_mean", "running_var"):
    return "batch_stats", tuple(path) + (leaf[len("running_"):],)
  return "unknown", tuple(path) + (leaf,)


def _to_flax_array(value: np.ndarray, path: Tuple[str, ...]) -> np.ndarray:
  if path[-1] == "kernel" and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if path[-1] == "kernel" and value.ndim == 2:
    return value.T  # (out, in) -> (in, out)
  return value


def from_torchvision(state_dict: Mapping[str, Any], arch: str = "resnet18", norm: str = "batch") -> Dict[str, Any]:
  """A torchvision ResNet state dict -> {'params': ..., 'batch_stats': ...} for `tlgan.models.ResNet*`.

  The number of classes is read from `fc.weight`. `norm='group'`: a ResNet built with
  `norm_layer=lambda c: nn.GroupNorm(32, c)` (no running statistics). Raises `ConversionError` naming the first
  key that is unknown, missing, or of the wrong shape.
  """
  if not isinstance(state_dict, Mapping) or "fc.weight" not in state_dict:
    raise ConversionError(f"not a torchvision {arch} state dict (no 'fc.weight' key)")
  for key, value in state_dict.items():
    array = _to_numpy(value) if hasattr(value, "detach") or isinstance(value, np.ndarray) else None
    if array is None or array.dtype.kind not in "fiub":
      raise ConversionError(f"state dict key {key!r} holds a {type(value).__name__}, not a tensor of numbers: not a "
                            f"torchvision {arch} state dict")
  if np.ndim(_to_numpy(state_dict["fc.weight"])) != 2:
    raise ConversionError(f"state dict key 'fc.weight' has shape {np.shape(_to_numpy(state_dict['fc.weight']))}, not "
                          f"(classes, features): not a torchvision {arch} state dict")
  if arch == INCEPTION_FID:
    from tlgan.models.inception import InceptionV3FID
    model, sample = InceptionV3FID(), np.zeros((1, 299, 299, 3), np.float32)
  else:
    model = model_for(arch, int(np.shape(state_dict["fc.weight"])[0]), norm=norm)
    sample = np.zeros((1, 64, 64, 3), np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), sample))
  return _convert(state_dict, shapes, arch)


def _convert(state_dict, shapes, arch) -> Dict[str, Any]:
  expected = {col: traverse_util.flatten_dict(tree) for col, tree in shapes.items()}
  out: Dict[str, Dict[Tuple[str, ...], np.ndarray]] = {col: {} for col in expected}
  for key in state_dict:
    if key.endswith("num_batches_tracked"):
      continue
    col, path = _flax_path(key)
    if col not in expected or path not in expected[col]:
      raise ConversionError(f"state dict key {key!r} has no place in tlgan's {arch}: not a {arch} state dict?")
    # A copy: torch's .numpy() shares memory, and torch updates BatchNorm statistics in place.
    value = _to_flax_array(np.array(_to_numpy(state_dict[key]), np.float32, copy=True), path)
    if value.shape != expected[col][path].shape:
      raise ConversionError(f"state dict key {key!r} has shape {tuple(np.shape(state_dict[key]))}, "
                            f"which does not fit {'/'.join(path)} {expected[col][path].shape} of {arch}")
    if not np.all(np.isfinite(value)):
      raise ConversionError(f"state dict key {key!r} holds {int(np.sum(~np.isfinite(value)))} NaN or Inf values: "
                            "the weights are broken; get the file again")
    out[col][path] = value
  for col, paths in expected.items():
    missing = sorted(set(paths) - set(out[col]))
    if missing:
      raise ConversionError(f"the state dict has nothing for {col} {'/'.join(missing[0])} of {arch} "
                            f"({len(missing)} variables missing): not a complete {arch} state dict")
  return {col: traverse_util.unflatten_dict(tree) for col, tree in out.items()}


def _to_numpy(value):
  if hasattr(value, "detach"):  # a torch tensor
    return value.detach().cpu().numpy()
  return np.asarray(value)


def merge_pretrained(fresh: Mapping[str, Any], pretrained: Mapping[str, Any],
                     not_loaded: Iterable[str] = ("fc",)) -> Tuple[Dict[str, Any], Tuple[str, ...]]:
  """Copies `pretrained` into a freshly initialised variable tree.

  Top-level modules named in `not_loaded` (the head, a different stem) keep their fresh values; every other
  variable must exist in `pretrained` with the same shape, else `ConversionError` names it.
  Returns the merged tree and the sorted names of the variables that were not loaded.
  """
  skip = tuple(not_loaded)
  merged, kept = {}, []
  for col, tree in fresh.items():
    flat = traverse_util.flatten_dict(tree)
    source = traverse_util.flatten_dict(pretrained.get(col, {}))
    out = {}
    for path, value in flat.items():
      name = "/".join(path)
      if path[0] in skip:
        out[path] = value
        kept.append(f"{col}/{name}")
        continue
      if path not in source:
        raise ConversionError(f"pretrained weights have no {col}/{name}: another architecture? "
                              f"(add '{path[0]}' to the modules not loaded if that is intended)")
      if np.shape(source[path]) != np.shape(value):
        raise ConversionError(f"pretrained {col}/{name} has shape {np.shape(source[path])}, the model needs "
                              f"{np.shape(value)} (add '{path[0]}' to the modules not loaded if intended)")
      out[path] = np.asarray(source[path], np.asarray(value).dtype)
    merged[col] = traverse_util.unflatten_dict(out)
  return merged, tuple(sorted(kept))


# ---------------------------------------------------------------------------------------------------------
# Files.

def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with files.open_read(path) as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def load_torch_file(path: str) -> Dict[str, Any]:
  """A state dict from a .pth file, refusing anything but tensors and plain containers (no pickled code)."""
  if not os.path.isfile(path):
    raise UserError(f"weights file {path} does not exist: check --torch-file")
  try:
    import torch
  except ImportError:
    raise UserError("converting torch weights needs torch: pip install -e .[torch]") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for garbage or an empty file
    detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    raise UserError(f"{path} was refused by torch.load(weights_only=True): it is not a plain state dict "
                    f"(or carries pickled code, or is empty): {detail}") from None
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path} holds a {type(obj).__name__}, not a state dict")
  return dict(obj)


def download(arch: str, cache_dir: Optional[str] = None) -> str:
  """Downloads torchvision's ImageNet weights for `arch` (checking the sha256 prefix); returns the path."""
  info = ARCHS[arch]
  cache_dir = cache_dir or os.path.expanduser("~/.cache/tlgan")
  path = os.path.join(cache_dir, os.path.basename(info["url"]))
  if not os.path.exists(path):
    import urllib.request
    os.makedirs(cache_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    os.fchmod(fd, files.new_file_mode())
    os.close(fd)
    try:
      urllib.request.urlretrieve(info["url"], tmp)
    except OSError as e:
      os.unlink(tmp)
      raise UserError(f"could not download {info['url']} ({type(e).__name__}): offline? Get the file "
                      f"elsewhere and pass --torch-file=PATH") from None
    os.replace(tmp, path)
  digest = sha256_of(path)
  if not digest.startswith(info["sha256_prefix"]):
    raise UserError(f"{path} has sha256 {digest[:8]}..., expected {info['sha256_prefix']}...: delete it and retry")
  return path


@dataclasses.dataclass(frozen=True)
class WeightsMeta:
  """What a tlgan weights file says about its network: written by `save`, read by `load`, nowhere else.

  `arch`: a key of ARCHS. `stem`, `width`, `num_classes`: the model's shape. How the network was fed in
  training (`classifier_input` repeats it): `image_size` (0: any, e.g. ImageNet conversions), `channels`,
  `source_size` (> 0: images were first reduced to it). Provenance: `source`, `sha256` (of a converted source
  file), `dataset` ('' for ImageNet conversions)."""
  arch: str
  source: str = ""
  sha256: str = ""
  stem: str = "imagenet"
  width: int = 64
  num_classes: int = 1000
  image_size: int = 0
  channels: int = 3
  source_size: int = 0
  dataset: str = ""
  name: str = ""  # a metric network's name, e.g. resnet18w16-fashion_mnist
  test_accuracy: str = ""

  @classmethod
  def from_file(cls, raw: Mapping[str, Any], variables: Mapping[str, Any], path: str) -> "WeightsMeta":
    """The record of a file's metadata; fields older files lack come from the variables or the defaults."""
    from tlgan.models import small_cnn  # the DP baselines a classifier run exports too (they import this module)
    known = (*ARCHS, *small_cnn.ARCHS)
    if raw.get("arch") not in known:
      raise UserError(f"{path} names no known architecture (arch={raw.get('arch')!r}): not a tlgan weights file "
                      f"of {', '.join(known)}")
    params = variables.get("params", {}) if isinstance(variables, Mapping) else {}
    derived = {}
    if raw["arch"] != INCEPTION_FID:
      resnet = raw["arch"] in ARCHS
      try:
        derived = {"num_classes": int(np.shape(params["fc"]["kernel"])[-1])}
        if resnet:
          derived["width"] = int(np.shape(params["conv1"]["kernel"])[-1])
      except (KeyError, TypeError, IndexError):
        raise UserError(f"{path} has no {'conv1/' if resnet else ''}fc parameters: not the weights of a tlgan "
                        f"{raw['arch']}") from None
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    values = {k: (int(v) if fields[k] in (int, "int") else str(v)) for k, v in raw.items() if k in fields}
    return cls(**{**values, **derived})


def save(path: str, variables: Mapping[str, Any], meta: WeightsMeta) -> None:
  """Writes variables + metadata as one flax msgpack file, atomically: the file is complete or not there (a
  failed write leaves nothing behind, and an existing file at `path` untouched)."""
  if files.isdir(path):
    raise UserError(f"output {path} is a folder: give a file path, e.g. {os.path.join(path, 'weights.msgpack')}")
  fields = dataclasses.asdict(meta)
  for derived in ("width", "num_classes"):  # always read back from the variables themselves
    fields.pop(derived)
  payload = {"format": FORMAT, **fields, "variables": jax.tree.map(np.asarray, dict(variables))}
  data = serialization.msgpack_serialize(payload)
  try:
    files.atomic_write(path, lambda f: f.write(data))
  except OSError as e:
    raise UserError(f"could not write {path} ({type(e).__name__}: {e.strerror or e}): check the folder, its "
                    "permissions and free space") from None


def load(path: str) -> Tuple[Dict[str, Any], WeightsMeta]:
  """Reads a file written by `save`: (variables, metadata)."""
  if not files.isfile(path):
    raise UserError(f"pretrained weights {path} do not exist: convert them with python -m tlgan.pretrained")
  try:
    payload = serialization.msgpack_restore(files.read_bytes(path))
  except Exception:
    raise UserError(f"{path} is not a tlgan weights file (convert with python -m tlgan.pretrained)") from None
  if not isinstance(payload, dict) or payload.get("format") != FORMAT or not isinstance(payload.get("variables"), dict):
    raise UserError(f"{path} is not a tlgan weights file (convert with python -m tlgan.pretrained)")
  variables = payload.pop("variables")
  payload.pop("format")
  for key, value in traverse_util.flatten_dict(variables, sep="/").items():
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
      raise UserError(f"{path}: {key} holds {array.dtype} values, not numbers: not a tlgan weights file")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
      raise UserError(f"{path}: {key} holds {int(np.sum(~np.isfinite(array)))} NaN or Inf values: the weights are "
                      "broken; convert or train them again")
  return variables, WeightsMeta.from_file(payload, variables, path)


def open_network(path: str, **model_kwargs):
  """(model, variables, metadata) of a tlgan weights file: the one way to get a network out of a file. The
  shape comes from the file (`model_kwargs`, e.g. dtype or conv_impl, go to the ResNet), and every variable
  the model needs must be in the file with its shape, else `ConversionError` names the first that is not."""
  variables, meta = load(path)
  if meta.arch == INCEPTION_FID:
    from tlgan.models.inception import InceptionV3FID
    model, size = InceptionV3FID(), 299
  else:
    model, size = model_for(meta.arch, meta.num_classes, stem=meta.stem, width=meta.width, **model_kwargs), 32
  init = (lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))) if meta.arch == INCEPTION_FID \
      else (lambda: model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32), train=False))
  for col, tree in jax.eval_shape(init).items():
    have = traverse_util.flatten_dict(variables.get(col, {})) if isinstance(variables.get(col), Mapping) else {}
    for key, want in traverse_util.flatten_dict(tree).items():
      if key not in have or np.shape(have[key]) != want.shape:
        found = "nothing" if key not in have else f"shape {np.shape(have[key])}"
        raise ConversionError(f"{path} has {found} for {col}/{'/'.join(key)} of its {meta.arch} (needs "
                              f"{want.shape}): a damaged or foreign weights file")
  return model, variables, meta


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of tf.image.crop_and_resize along one axis, unshifted: output pixel i samples
  the source at (i + 0.5) * size_in / size_out - 0.5 (half-pixel centres); outside [0, size_in - 1] it is 0."""
  m = np.zeros((size_out, size_in), np.float64)
  for i in range(size_out):
    pos = (i + 0.5) * size_in / size_out - 0.5
    if pos < 0 or pos > size_in - 1:
      continue  # crop_and_resize's extrapolation value (0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, size_in - 1)
    m[i, lo] += 1.0 - (pos - lo)
    m[i, hi] += pos - lo
  return m


def _area_matrix(size_in: int, size_out: int) -> np.ndarray:
  """(size_out, size_in) weights of tf.image.resize(method='area') along one axis: each output pixel is the
  mean of the source over its footprint, partial pixels weighted by their overlap."""
  m = np.zeros((size_out, size_in), np.float64)
  scale = size_in / size_out
  for i in range(size_out):
    start, end = i * scale, (i + 1) * scale
    for j in range(int(np.floor(start)), min(int(np.ceil(end)), size_in)):
      m[i, j] = (min(end, j + 1) - max(start, j)) / scale
  return m


def classifier_input(pixels, meta: WeightsMeta):
  """Images as the classifier in a weights file saw them in training (`tlgan.preprocessing.classifier_map_fn`,
  unaugmented): `pixels` in [0, 1], (N, H, W, C) -> channels repeated to `meta.channels`, reduced to
  `meta.source_size` by area averaging, resized to `meta.image_size` exactly as tf.image.crop_and_resize does
  (half-pixel centres, zeros beyond the border), ImageNet-normalised. Differentiable (G's gradients flow
  through it in the projected discriminator); the resizes are two small matrix products."""
  import jax.numpy as jnp
  x = pixels.astype(jnp.float32)
  if x.shape[-1] == 1 and meta.channels == 3:
    x = jnp.repeat(x, 3, axis=-1)
  if meta.source_size and x.shape[1] != meta.source_size:
    x = _resize(x, _area_matrix(x.shape[1], meta.source_size), _area_matrix(x.shape[2], meta.source_size))
  if meta.image_size and x.shape[1:3] != (meta.image_size, meta.image_size):
    x = _resize(x, _bilinear_matrix(x.shape[1], meta.image_size), _bilinear_matrix(x.shape[2], meta.image_size))
  c = x.shape[-1]
  return (x - jnp.asarray(IMAGENET_MEAN[:c], jnp.float32)) / jnp.asarray(IMAGENET_STD[:c], jnp.float32)


def _resize(x, rows: np.ndarray, cols: np.ndarray):
  import jax.numpy as jnp
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("oh,nhwc->nowc", jnp.asarray(rows, jnp.float32), x, precision=hi)
  return jnp.einsum("pw,nowc->nopc", jnp.asarray(cols, jnp.float32), x, precision=hi)


def check_sha256(path: str, expected_prefix: str) -> None:
  digest = sha256_of(path)
  if not digest.startswith(expected_prefix.lower()):
    raise UserError(f"{path} has sha256 {digest[:12]}..., expected {expected_prefix}...: the file is not the one "
                    "you meant (a truncated or other download?); get it again")


def convert(arch: str, output: str, torch_file: Optional[str] = None,
            sha256: Optional[str] = None) -> WeightsMeta:
  """The CLI's work: (download or read) -> check -> convert -> save. Returns the metadata written.

  A local file is checked against `sha256` (a prefix) when given, and against torchvision's published hash
  when it carries torchvision's file name.
  """
  if arch not in ARCHS:
    raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
  if torch_file and not os.path.isfile(torch_file):
    raise UserError(f"weights file {torch_file} does not exist: check --torch-file")
  if os.path.isdir(output):
    raise UserError(f"output {output} is a folder: give a file path, e.g. {os.path.join(output, 'weights.msgpack')}")
  source = torch_file or download(arch)
  if sha256:
    check_sha256(source, sha256)
  elif torch_file and os.path.basename(torch_file) == os.path.basename(ARCHS[arch]["url"]):
    check_sha256(source, ARCHS[arch]["sha256_prefix"])
  variables = from_torchvision(load_torch_file(source), arch)
  meta = WeightsMeta(arch=arch, source=os.path.basename(source), sha256=sha256_of(source))
  save(output, variables, meta)
  return meta


def main(argv=None) -> int:
  import argparse
  parser = argparse.ArgumentParser(prog="python -m tlgan.pretrained", description=__doc__.split("\n")[0])
  parser.add_argument("--arch", default="resnet18", choices=sorted(ARCHS))
  parser.add_argument("--output", required=True, help="where to write the Flax msgpack file")
  parser.add_argument("--torch-file", default=None, help="a local torchvision .pth (otherwise: download)")
  parser.add_argument("--sha256", default=None, help="expected sha256 (or a prefix) of the .pth file")
  args = parser.parse_args(argv)
  try:
    meta = convert(args.arch, args.output, args.torch_file, args.sha256)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}: {meta.arch} from {meta.source} (sha256 {meta.sha256[:12]}...)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
