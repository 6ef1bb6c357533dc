"""tlgan's hand-written TensorBoard event files, read back by TensorFlow's own record reader and Event proto."""

import glob
import os

import numpy as np
import pytest

from tlgan import events, reporting


def _read(folder):
  """(step, tag, value) of every scalar in the events files of `folder`, and the file versions, by TensorFlow."""
  import tensorflow as tf
  from tensorflow.core.util import event_pb2
  rows, versions = [], []
  for path in sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*"))):
    for raw in tf.data.TFRecordDataset(path):  # checks both CRCs of every record
      e = event_pb2.Event.FromString(raw.numpy())
      if e.file_version:
        versions.append(e.file_version)
      rows += [(e.step, v.tag, v.simple_value) for v in e.summary.value]
  return rows, versions


def test_crc32c_equals_google_crc32c():
  google_crc32c = pytest.importorskip("google_crc32c")
  rng = np.random.default_rng(0)
  for n in (0, 1, 7, 8, 9, 100, 4096):
    data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    assert events.crc32c(data) == google_crc32c.value(data)


def test_metric_writer_files_read_back_by_tensorflow(tmp_path, monkeypatch):
  monkeypatch.setattr(reporting, "is_writer", lambda: True)
  workdir = str(tmp_path)
  writer = reporting.MetricWriter(workdir)
  written = [(0, {"loss": 1.5, "FD[fmnist]": 12.25}), (7, {"loss": -0.125}), (2**40, {"loss": 3e-8})]
  for step, values in written:
    writer.write(step, values)
  writer.close()
  again = reporting.MetricWriter(workdir)  # a resumed run: a second events file
  again.write(9, {"acc": 0.5})
  again.close()
  rows, versions = _read(os.path.join(workdir, "tensorboard"))
  assert versions == ["brain.Event:2"] * 2
  expected = [(s, k.replace("[", "/").rstrip("]"), np.float32(v)) for s, vs in written for k, v in vs.items()]
  assert rows == expected + [(9, "acc", np.float32(0.5))]
  assert [r["step"] for r in reporting.read_jsonl(os.path.join(workdir, "metrics.jsonl"))] == [0, 7, 2**40, 9]


def test_a_corrupted_record_is_refused_by_tensorflow(tmp_path):
  """The CRCs are really checked: a flipped byte makes TensorFlow's reader fail (so the test above can fail)."""
  import tensorflow as tf
  path = tmp_path / "events.out.tfevents.1"
  data = bytearray(events.header() + events.scalars(3, {"loss": 2.0}))
  data[-6] ^= 0x01
  path.write_bytes(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(str(path)))
