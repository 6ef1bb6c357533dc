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

import hashlib
import os
import re
import sys
import tempfile
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import jax
import numpy as np
from flax import serialization, traverse_util

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


def from_torchvision(state_dict: Mapping[str, Any], arch: str = "resnet18") -> Dict[str, Any]:
  """A torchvision ResNet state dict -> {'params': ..., 'batch_stats': ...} for `tlgan.models.ResNet*`.

  The number of classes is read from `fc.weight`. Raises `ConversionError` naming the first key that is
  unknown, missing, or of the wrong shape.
  """
  if not isinstance(state_dict, Mapping) or "fc.weight" not in state_dict:
    raise ConversionError(f"not a torchvision {arch} state dict (no 'fc.weight' key)")
  if arch == INCEPTION_FID:
    from tlgan.models.inception import InceptionV3FID
    model, sample = InceptionV3FID(), np.zeros((1, 299, 299, 3), np.float32)
  else:
    model, sample = model_for(arch, int(np.shape(state_dict["fc.weight"])[0])), np.zeros((1, 64, 64, 3), np.float32)
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
  with open(path, "rb") as f:
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
  except Exception as e:  # UnpicklingError for code, RuntimeError/EOFError for garbage
    raise UserError(f"{path} was refused by torch.load(weights_only=True): it is not a plain state dict "
                    f"(or carries pickled code): {str(e).splitlines()[0][:200]}") from None
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


def save(path: str, variables: Mapping[str, Any], meta: Mapping[str, str]) -> None:
  """Writes variables + metadata as one flax msgpack file, atomically."""
  payload = {"format": FORMAT, **meta, "variables": jax.tree.map(np.asarray, dict(variables))}
  data = serialization.msgpack_serialize(payload)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def load(path: str) -> Tuple[Dict[str, Any], Dict[str, str]]:
  """Reads a file written by `save`: (variables, metadata)."""
  if not os.path.isfile(path):
    raise UserError(f"pretrained weights {path} do not exist: convert them with python -m tlgan.pretrained")
  with open(path, "rb") as f:
    try:
      payload = serialization.msgpack_restore(f.read())
    except Exception:
      raise UserError(f"{path} is not a tlgan weights file (convert with python -m tlgan.pretrained)") from None
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise UserError(f"{path} is not a tlgan weights file (convert with python -m tlgan.pretrained)")
  variables = payload.pop("variables")
  payload.pop("format")
  return variables, payload


def check_sha256(path: str, expected_prefix: str) -> None:
  digest = sha256_of(path)
  if not digest.startswith(expected_prefix.lower()):
    raise UserError(f"{path} has sha256 {digest[:12]}..., expected {expected_prefix}...: the file is not the one "
                    "you meant (a truncated or other download?); get it again")


def convert(arch: str, output: str, torch_file: Optional[str] = None,
            sha256: Optional[str] = None) -> Dict[str, str]:
  """The CLI's work: (download or read) -> check -> convert -> save. Returns the metadata written.

  A local file is checked against `sha256` (a prefix) when given, and against torchvision's published hash
  when it carries torchvision's file name.
  """
  if arch not in ARCHS:
    raise UserError(f"unknown architecture {arch!r}: choose one of {', '.join(ARCHS)}")
  if torch_file and not os.path.isfile(torch_file):
    raise UserError(f"weights file {torch_file} does not exist: check --torch-file")
  source = torch_file or download(arch)
  if sha256:
    check_sha256(source, sha256)
  elif torch_file and os.path.basename(torch_file) == os.path.basename(ARCHS[arch]["url"]):
    check_sha256(source, ARCHS[arch]["sha256_prefix"])
  variables = from_torchvision(load_torch_file(source), arch)
  meta = {"arch": arch, "source": os.path.basename(source), "sha256": sha256_of(source)}
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
  print(f"wrote {args.output}: {meta['arch']} from {meta['source']} (sha256 {meta['sha256'][:12]}...)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
