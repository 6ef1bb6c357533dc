"""Bad input, as a careless or unlucky user gives it, to every command-line tool: one `error:` line as the last
line of stderr, exit status 2, no traceback, and the input files and workdirs untouched (their tree hash).

Its own module (apart from test_reliability's kills and faults) so that the two pytest workers share the slow
real-process tests.
"""

import os
import shutil

import numpy as np
import pytest

from tests.helpers import GAN, checkpoint_steps, damage, reference_run, run_cli, tree_hash, with_config

pytestmark = pytest.mark.slow  # every row is a real CLI process

# The finished run of the rows about checkpoints and sample export: the reliability tests' GAN run, cut to 30
# steps with a checkpoint every 10 (its 1,500 steps are there to be hit mid-run; here they cost ~40 s for nothing).
STEPS, EVERY = 30, 10
RUN = with_config(GAN, num_steps=STEPS, checkpoint_every=EVERY)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """A finished GAN run: the workdir of the rows about checkpoints and sample export."""
  return reference_run(tmp_path_factory, RUN)


def _png_header(width, height):
  """The first chunks of a PNG that claims width x height pixels (its data is left out)."""
  import struct
  import zlib

  def chunk(kind, payload):
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
      chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def files(tmp_path_factory, reference):
  """Inputs for the table: workdirs, weights files and images, good and bad."""
  d = tmp_path_factory.mktemp("inputs")
  import pickle
  import torch
  import torchvision
  from tlgan import pretrained
  torch.save(torchvision.models.resnet18().state_dict(), d / "resnet18.pth")
  (d / "text.pth").write_text("not a state dict")

  class Payload:
    def __reduce__(self):
      return (os.system, (f"touch {d}/pwned",))
  with open(d / "evil.pth", "wb") as f:
    pickle.dump({"fc.weight": Payload()}, f)
  (d / "text.msgpack").write_text("not weights")
  (d / "zero.pth").write_bytes(b"")
  state = torchvision.models.resnet18().state_dict()
  torch.save({k: "string" for k in state}, d / "strings.pth")
  torch.save({**state, "fc.weight": {"nested": state["fc.weight"]}}, d / "nested.pth")
  broken = {k: v.clone() for k, v in state.items()}
  broken["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
  torch.save(broken, d / "nan.pth")
  (d / "outdir").mkdir()
  variables18 = pretrained.from_torchvision(state, "resnet18")
  variables18["params"]["layer2_0"]["conv1"]["kernel"][0, 0, 0, 0] = float("inf")
  pretrained.save(str(d / "inf.msgpack"), variables18, pretrained.WeightsMeta("resnet18", source="test"))
  variables = pretrained.from_torchvision(torchvision.models.resnet34().state_dict(), "resnet34")
  pretrained.save(str(d / "resnet34.msgpack"), variables, pretrained.WeightsMeta("resnet34", source="test"))
  from PIL import Image
  Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(d / "blank.png")
  (d / "bomb.png").write_bytes(_png_header(30000, 30000))  # 900 megapixels claimed by a 60-byte file
  shutil.copytree(reference, d / "cut_config")
  with open(d / "cut_config" / "config.json", "r+") as f:
    f.truncate(40)
  np.savez(d / "digits_samples.npz", images=np.zeros((64, 28, 28, 1), np.uint8))
  shutil.copytree(reference, d / "gan_run")
  shutil.copytree(reference, d / "all_damaged")
  for step in checkpoint_steps(str(d / "all_damaged")):
    damage(str(d / "all_damaged"), step, "truncate")
  return d


CLF = ["--config=configs/transfer.py:smoke", "--config.num_steps=2", "--config.data.name=digits"]  # small, offline
DP = ["--config=configs/private.py:digits,smoke"]
BAD_INPUT = [
    # (id, command, args, message prefix[, environment])
    ("unknown config field", "main", GAN + ["--config.foo=1"], "error: --config.foo: the config has no field 'foo'"),
    ("mistyped config field", "main", GAN + ["--config.model.latnt_dim=3"],
     "error: --config.model.latnt_dim: the config has no field 'latnt_dim' (did you mean latent_dim?)"),
    ("config value of the wrong type", "main", GAN + ["--config.batch_size=abc"],
     "error: flag --config.batch_size=abc: invalid literal for int()"),
    ("unknown variant", "main", ["--config=configs/gan.py:smok"],
     "error: --config=configs/gan.py:smok: unknown variant 'smok' of configs/gan.py: use one of mnist, cifar10,"),
    ("no such config file", "main", ["--config=configs/gna.py"], "error: --config=configs/gna.py: no such config file"),
    ("unknown dataset", "main", GAN + ["--config.data.name=imagenet42"],
     "error: data.name='imagenet42' is not one of"),
    ("non-positive batch", "main", GAN + ["--config.batch_size=-8"],
     "error: batch_size must be a positive whole number, got -8: set --config.batch_size"),
    ("zero eval samples", "main", GAN + ["--config.eval.num_samples=0"],
     "error: eval.num_samples must be a whole number >= 2, got 0: set --config.eval.num_samples"),
    ("zero checkpoints kept", "main", CLF + ["--config.keep_checkpoints=0"],
     "error: keep_checkpoints must be a positive whole number, got 0"),
    ("batch not divisible by the devices", "main", GAN + ["--config.batch_size=3"],
     "error: batch_size 3 is not divisible by the 2 devices", {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
    ("non-divisible batch", "main", CLF + ["--config.batch_size=8", "--config.grad_accum_steps=3"],
     "error: the per-device batch 8"),
    ("image_size too small", "main", CLF + ["--config.model.image_size=4"],
     "error: model.image_size must be a whole number >= 8, got 4"),
    ("num_classes vs dataset", "main", CLF + ["--config.model.num_classes=7"],
     "error: model.num_classes=7 but digits has 10 classes"),
    ("empty workdir", "main", GAN + ["--workdir="], "error: --workdir is empty"),
    ("unwritable workdir", "main", GAN + ["--workdir=/proc/tlgan-run"], "error: workdir /proc/tlgan-run is not writable"),
    ("checkpoint of another experiment", "main", CLF + ["--workdir={d}/gan_run"],
     f"error: workdir checkpoint {STEPS} in " "{d}/gan_run/checkpoints has experiment='gan', this run has 'classifier'"),
    ("resume with another batch size", "main", RUN + ["--workdir={d}/gan_run", "--config.batch_size=16"],
     f"error: workdir checkpoint {STEPS} in " "{d}/gan_run/checkpoints was trained with batch_size=8 (now 16): resuming "
     "with other values changes the run's trajectory"),
    ("resume with another seed and loss", "main", RUN + ["--workdir={d}/gan_run", "--config.seed=1",
                                                          "--config.loss=hinge"],
     f"error: workdir checkpoint {STEPS} in " "{d}/gan_run/checkpoints was trained with loss='nonsaturating' (now "
     "'hinge'), seed=0 (now 1)"),
    ("checkpoint with other shapes", "main", RUN + ["--workdir={d}/gan_run", "--config.model.g_features=16"],
     f"error: workdir checkpoint {STEPS} in " "{d}/gan_run/checkpoints does not fit this config"),
    ("corrupt checkpoints, no good one", "main", RUN + ["--workdir={d}/all_damaged"],
     "error: no loadable checkpoint in {d}/all_damaged/checkpoints "
     f"(steps {[STEPS - 2 * EVERY, STEPS - EVERY, STEPS]} are all damaged)"),
    ("init weights missing", "main", CLF + ["--config.init.weights={d}/none.msgpack"],
     "error: pretrained weights {d}/none.msgpack do not exist"),
    ("init weights not a weights file", "main", CLF + ["--config.init.weights={d}/text.msgpack"],
     "error: {d}/text.msgpack is not a tlgan weights file"),
    ("init weights of another arch", "main", CLF + ["--config.init.weights={d}/resnet34.msgpack"],
     "error: {d}/resnet34.msgpack holds resnet34 weights, the model is resnet18"),
    ("data missing offline", "main",
     GAN + ["--config.data.data_dir={d}/tfds", "--config.data.manual_dir={d}/none", "--config.data.download=false"],
     "error: dataset fashion_mnist is not available offline"),
    ("torch file missing", "convert", ["--torch-file={d}/none.pth"], "error: weights file {d}/none.pth does not exist"),
    ("torch file not a state dict", "convert", ["--torch-file={d}/text.pth"],
     "error: {d}/text.pth was refused by torch.load(weights_only=True)"),
    ("torch file of another arch", "convert", ["--torch-file={d}/resnet18.pth", "--arch=resnet50"],
     "error: state dict key 'layer1.0.conv1.weight' has shape (64, 64, 3, 3)"),
    ("torch file with a wrong sha256", "convert", ["--torch-file={d}/resnet18.pth", "--sha256=f37072fd"],
     "error: {d}/resnet18.pth has sha256"),
    ("torch file empty", "convert", ["--torch-file={d}/zero.pth"],
     "error: {d}/zero.pth was refused by torch.load(weights_only=True)"),
    ("torch state dict of strings", "convert", ["--torch-file={d}/strings.pth"],
     "error: state dict key 'conv1.weight' holds a str, not a tensor of numbers"),
    ("torch state dict with a nested dict", "convert", ["--torch-file={d}/nested.pth"],
     "error: state dict key 'fc.weight' holds a dict, not a tensor of numbers"),
    ("torch weights with NaN", "convert", ["--torch-file={d}/nan.pth"],
     "error: state dict key 'layer1.0.conv1.weight' holds 1 NaN or Inf values"),
    ("conversion output is a folder", "convert", ["--torch-file={d}/resnet18.pth", "--output={d}/outdir"],
     "error: output {d}/outdir is a folder"),
    ("init weights with Inf", "main", CLF + ["--config.init.weights={d}/inf.msgpack"],
     "error: {d}/inf.msgpack: params/layer2_0/conv1/kernel holds 1 NaN or Inf values"),
    ("torch file with pickled code", "convert", ["--torch-file={d}/evil.pth"],
     "error: {d}/evil.pth was refused by torch.load(weights_only=True)"),
    ("style image missing", "main", ["--config=configs/style.py:smoke", "--config.style={d}/none.jpg"],
     "error: image {d}/none.jpg does not exist"),
    ("style image not an image", "main", ["--config=configs/style.py:smoke", "--config.content={d}/text.pth"],
     "error: {d}/text.pth is not an image that Pillow can read"),
    ("style image blank", "main", ["--config=configs/style.py:smoke", "--config.content={d}/blank.png"],
     "error: {d}/blank.png is blank (every pixel is RGB [200, 200, 200])"),
    ("style image a decompression bomb", "main", ["--config=configs/style.py:smoke", "--config.style={d}/bomb.png"],
     "error: {d}/bomb.png has more pixels than Pillow will open safely"),
    ("style image a scikit-image helper", "main",
     ["--config=configs/style.py:smoke", "--config.style=skimage:download_all"],
     "error: scikit-image has no image 'download_all'"),
    ("sample export of a run with a cut config.json", "sample",
     ["--workdir={d}/cut_config", "--output={d}/out.npz"], "error: {d}/cut_config/config.json cannot be read"),
    ("sample export larger than memory", "sample", ["--workdir={d}/gan_run", "--num=100000000000",
                                                    "--output={d}/out.npz"], "error: --num=100000000000 needs about"),
    ("evaluation larger than memory", "evaluate", ["--workdir={d}/gan_run", "--num=100000000000"],
     "error: --num=100000000000 needs about"),
    ("sample export to a folder", "sample", ["--workdir={d}/gan_run", "--output={d}/outdir"],
     "error: --output={d}/outdir is a folder"),
    ("sample export --batch_size 0", "sample", ["--workdir={d}/gan_run", "--batch_size=0", "--output={d}/out.npz"],
     "error: --batch_size must be positive, got 0"),
    ("metric network with Inf weights", "evaluate",  # (it made FD's matrix square root spin for minutes)
     ["--samples={d}/digits_samples.npz", "--dataset=digits28", "--feature_weights={d}/inf.msgpack",
      "--cache_dir={d}/cache"], "error: {d}/inf.msgpack: params/layer2_0/conv1/kernel holds 1 NaN or Inf values"),
    ("GAN metric network with Inf weights", "main", GAN + ["--config.eval.enabled=true",
                                                         "--config.eval.feature_weights={d}/inf.msgpack"],
     "error: {d}/inf.msgpack: params/layer2_0/conv1/kernel holds 1 NaN or Inf values"),
    ("DP with BatchNorm statistics of private data", "main", DP + ["--config.model.norm=batch"],
     "error: dp.enabled with model.norm=batch trains BatchNorm statistics on private data (they mix examples): set "
     "model.norm=group or frozen_batch"),
    ("DP run beyond its privacy budget", "main", DP + ["--config.dp.target_epsilon=0", "--config.dp.noise_multiplier=0.5",
                                                       "--config.dp.max_epsilon=0.5"],
     "error: 6 steps reach epsilon"),
    ("private GAN with a BatchNorm discriminator", "main", GAN + ["--config.dp.enabled=true"],
     "error: dp.enabled with model.d_norm=batch: D's BatchNorm mixes private examples: set model.d_norm=group"),
    ("sample export --num 0", "sample", ["--workdir={d}/gan_run", "--num=0", "--output={d}/out.npz"],
     "error: --num must be positive, got 0"),
]


@pytest.mark.parametrize("case", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_one_line_error_and_nothing_changed(files, tmp_path, case):
  _, command, args, message, *env = case
  args = [a.format(d=files) for a in args]
  if command == "main" and not any(a.startswith("--workdir=") for a in args):
    args.append(f"--workdir={tmp_path}/work")
  module = {"main": "experiments.main", "convert": "tlgan.pretrained", "sample": "experiments.sample",
            "evaluate": "experiments.evaluate"}[command]
  if command == "convert" and not any(a.startswith("--output=") for a in args):
    args.append(f"--output={tmp_path}/work/weights.msgpack")
  before = tree_hash(str(files))
  result = run_cli(*args, module=module, env=env[0] if env else None)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = [l for l in result.stderr.strip().splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and lines[0] == result.stderr.strip().splitlines()[-1]
  assert lines[0].startswith(message.format(d=files)), lines[0]
  assert "Traceback" not in result.stderr
  assert tree_hash(str(files)) == before  # no workdir, weights file or checkpoint touched
  assert not os.path.exists(tmp_path / "work")  # nothing created either
  assert not os.path.exists(files / "pwned")


_LEAKING_WORK = """
import sys
from experiments import cli
from tlgan import stopping
from tlgan.errors import UserError

async def pending():
  pass

def work():
  global leak
  leak = pending()  # an abandoned asynchronous read (Orbax's, of a damaged checkpoint): collected at shutdown
  raise {error}

sys.exit(cli.guarded(work))
"""


@pytest.mark.parametrize("error,status,last", [
    ('UserError("no loadable checkpoint: move that folder away")', 2, "error: no loadable checkpoint: move that "
                                                                      "folder away"),
    ('stopping.Stopped("SIGTERM", "training")', 3, "stopped: SIGTERM received while training; files already "
                                                    "written are kept: run the same command to continue"),
])
def test_nothing_the_shutdown_collects_prints_below_the_final_line(tmp_path, error, status, last):
  """A coroutine never awaited, collected as the interpreter exits, warns on stderr (RuntimeWarning): after the
  one `error:` or `stopped:` line, nothing more (CI once saw 'Enable tracemalloc ...' below a checkpoint error)."""
  import subprocess
  import sys
  from tests.helpers import REPO
  script = tmp_path / "work.py"
  script.write_text(_LEAKING_WORK.format(error=error))
  result = subprocess.run([sys.executable, str(script)], cwd=REPO, env={**os.environ, "PYTHONPATH": REPO},
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == status, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [last]
