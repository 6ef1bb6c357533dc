"""sha256 of every array in the latest checkpoint of each workdir given (for "bit-identical before and after"
checks of refactors): `python scripts/checkpoint_digest.py WORKDIR...` prints one line per workdir and array count.

Trains nothing; reads the Orbax `state` item without a template, hashing each array's dtype, shape and bytes in
sorted path order."""

import hashlib
import os
import sys

import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util


def digest(workdir: str) -> str:
  folder = os.path.abspath(os.path.join(workdir, "checkpoints"))
  step = max(int(s) for s in os.listdir(folder) if s.isdigit())
  tree = ocp.StandardCheckpointer().restore(os.path.join(folder, str(step), "state"))
  flat = traverse_util.flatten_dict(tree, sep="/")
  h = hashlib.sha256()
  for path in sorted(flat):
    a = np.asarray(flat[path])
    h.update(f"{path}:{a.dtype}:{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return f"{workdir}: step {step}, {len(flat)} arrays, sha256 {h.hexdigest()}"


if __name__ == "__main__":
  for w in sys.argv[1:]:
    print(digest(w))
