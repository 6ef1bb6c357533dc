"""A workdir in Google Cloud Storage, end to end, against a GCS emulator on 127.0.0.1 (gcp-storage-emulator):
run, resume bit-exactly, kill -9 in the middle of a run, fall back from a damaged checkpoint, refuse a bucket
that does not exist. The same bytes reach the emulator as would reach GCS: etils.epath through gcsfs (the
run's files), Orbax through TensorStore (the checkpoints)."""

import json
import os
import socket

import jax
import numpy as np
import pytest

from tests.helpers import GAN, run_cli, smoke_gan, start, train_gan, wait_for

pytestmark = pytest.mark.slow  # end-to-end runs

BUCKET = "tlgan-test"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _send_generation_headers(objects) -> None:
  """GCS answers a media download with the object's generation in `x-goog-generation`; the emulator leaves it
  out. TensorStore reads it when it re-reads an OCDBT manifest before a conditional write, and without it
  failed about one checkpoint save in ten ('Malformed StorageGeneration'); with it, none in 25 trials."""
  if getattr(objects.download, "sends_generation", False):
    return
  download = objects.download

  def with_generation(request, response, storage, *args, **kwargs):
    result = download(request, response, storage, *args, **kwargs)
    try:
      obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # noqa: BLE001 - not found: the handler answered 404 already
      return result
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    return result

  with_generation.sends_generation = True
  objects.download = with_generation


@pytest.fixture(scope="module")
def emulator():
  """The emulator in a thread of this process, and the variables that point every client at it (also for the
  CLI processes the tests start): gcsfs and google-cloud-storage read STORAGE_EMULATOR_HOST, TensorStore
  TENSORSTORE_GCS_HTTP_URL (and a fixed token instead of credentials); etils.epath is told to use gcsfs, not
  TensorFlow's GCS client, which cannot be pointed at an emulator."""
  pytest.importorskip("gcsfs")
  objects = pytest.importorskip("gcp_storage_emulator.handlers.objects")
  _send_generation_headers(objects)  # before the server module builds its table of handlers
  import gcp_storage_emulator.server as server_module
  port = _free_port()
  server = server_module.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  url = f"http://127.0.0.1:{port}"
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url, "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
         "EPATH_USE_TF": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  _forget_whether_tensorflow_is_installed()  # etils caches it at its first path, local ones included
  import fsspec
  fs = fsspec.filesystem("gs")
  try:
    yield env, fs
  finally:
    server.stop()
    for key, value in saved.items():
      if value is None:
        os.environ.pop(key, None)
      else:
        os.environ[key] = value
    _forget_whether_tensorflow_is_installed()


def _forget_whether_tensorflow_is_installed() -> None:
  """etils.epath decides once per process (functools.cache) whether TensorFlow's GCS client serves gs://, at
  the first path of any kind; this process used paths before EPATH_USE_TF was set."""
  from etils.epath import gpath
  cached = getattr(gpath, "_is_tf_installed", None)
  if hasattr(cached, "cache_clear"):
    cached.cache_clear()


def _complete_steps(fs, workdir):
  """The checkpoint steps Orbax finished in `workdir` (a gs:// URL), read afresh from the store."""
  fs.invalidate_cache()
  folder = workdir[len("gs://"):] + "/checkpoints"
  if not fs.exists(folder):
    return []
  names = [p.rsplit("/", 1)[-1] for p in fs.ls(folder, refresh=True)]
  return sorted(int(n) for n in names if n.isdigit() and fs.exists(f"{folder}/{n}/commit_success.txt"))


def _state(workdir, config=None):
  from tlgan.checkpoint import Checkpointer
  from tlgan.trainers import gan as gan_trainer
  state = gan_trainer.build_state(config or smoke_gan(), (28, 28, 1))
  return Checkpointer(f"{workdir}/checkpoints", {}).restore_latest(state)


def _assert_same_parameters(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def resumed_run(emulator, tmp_path_factory):
  """2 steps, then on to 4, in a bucket; and the same 4 steps uninterrupted in a local folder."""
  _, fs = emulator
  workdir = f"gs://{BUCKET}/resumed"
  cache = {"eval.cache_dir": f"gs://{BUCKET}/cache"}  # the reference features too: written once, then read
  first = train_gan(smoke_gan(num_steps=2, **cache), workdir)
  second = train_gan(smoke_gan(num_steps=4, **cache), workdir)
  local = str(tmp_path_factory.mktemp("local"))
  train_gan(smoke_gan(num_steps=4), local)
  return workdir, local, first, second


def test_a_run_in_a_bucket_writes_everything_and_resumes_bit_exactly(emulator, resumed_run):
  _, fs = emulator
  workdir, local, first, second = resumed_run
  assert first["status"] == second["status"] == "completed"
  assert second["resumed_from_step"] == 2 and second["step"] == 4
  (remote_state, step), (local_state, local_step) = _state(workdir), _state(local)
  assert step == local_step == 4
  _assert_same_parameters(remote_state, local_state)  # the bucket's run is the local run, bit for bit
  root = workdir[len("gs://"):]
  assert json.loads(fs.cat(f"{root}/summary.json")) == second
  rows = [json.loads(line) for line in fs.cat(f"{root}/metrics.jsonl").decode().splitlines()]
  assert [r["step"] for r in rows] == [2, 4] and "d_loss" in rows[0]
  for png in ("samples.png", "losses.png", "fd.png", "samples/step_000002.png", "samples/step_000004.png"):
    assert fs.cat(f"{root}/{png}")[:8] == b"\x89PNG\r\n\x1a\n", png
  events = [p for p in fs.ls(f"{root}/tensorboard", refresh=True) if "events.out.tfevents" in p]
  assert len(events) == 2 and all(fs.size(p) > 0 for p in events)  # one per session, uploaded whole
  assert json.loads(fs.cat(f"{root}/config.json"))["num_steps"] == 4
  leftovers = [p for p in fs.find(root) if ".tlgan-write-test" in p or "/.tmp-" in p]
  assert not leftovers
  cached = fs.find(f"{BUCKET}/cache/reference")
  assert cached and all(p.endswith(".npz") and fs.size(p) > 0 for p in cached)


def test_a_damaged_checkpoint_in_a_bucket_falls_back_and_is_moved_aside(emulator, resumed_run):
  _, fs = emulator
  workdir, local, _, _ = resumed_run
  root = workdir[len("gs://"):]
  arrays = [p for p in fs.find(f"{root}/checkpoints/4/state") if "/d/" in p]
  fs.rm(max(arrays, key=fs.size))  # the largest array file of the last checkpoint
  _, step = _state(workdir)
  assert step == 2  # skipped the damaged one, with a warning
  summary = train_gan(smoke_gan(num_steps=4), workdir)
  assert summary["resumed_from_step"] == 2 and summary["step"] == 4
  fs.invalidate_cache()
  assert fs.exists(f"{root}/checkpoints_damaged/4/commit_success.txt")  # kept for inspection
  (remote_state, step), (local_state, _) = _state(workdir), _state(local)
  assert step == 4
  _assert_same_parameters(remote_state, local_state)


def test_kill_9_mid_run_then_the_same_command_resumes_bit_exactly(emulator, tmp_path):
  env, fs = emulator
  args = [a for a in GAN if not a.startswith(("--config.num_steps", "--config.checkpoint_every"))]
  args += ["--config.num_steps=600", "--config.checkpoint_every=200"]
  reference = str(tmp_path / "reference")
  assert run_cli(f"--workdir={reference}", *args).returncode == 0
  workdir = f"gs://{BUCKET}/killed"
  proc = start(workdir, args, env=env, log=str(tmp_path / "killed.log"))
  wait_for(lambda: _complete_steps(fs, workdir), proc)  # the first checkpoint is in the bucket
  proc.kill()
  proc.wait()
  assert _complete_steps(fs, workdir)[-1] < 600  # killed mid-run
  again = run_cli(f"--workdir={workdir}", *args, env=env)
  assert again.returncode == 0, again.stderr[-3000:]
  (remote_state, step), (local_state, _) = _state(workdir), _state(reference)
  assert step == 600
  _assert_same_parameters(remote_state, local_state)


def test_a_bucket_that_does_not_exist_is_one_line_and_writes_nothing(emulator):
  from tlgan.errors import UserError
  from tlgan.trainers import loop
  _, fs = emulator
  with pytest.raises(UserError) as error:
    loop.check_workdir("gs://no-such-bucket/run")
  message = str(error.value)
  assert message.startswith("workdir gs://no-such-bucket/run cannot be written") and "\n" not in message
  assert "bucket does not exist" in message
  fs.invalidate_cache()
  assert not fs.exists("no-such-bucket")
