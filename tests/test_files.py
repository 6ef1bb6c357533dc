"""Files a run writes get the mode a plain open() would give them (0o666 less the umask), not mkstemp's
private 0o600: a team sharing a cache or a workdir can read them, and a user's strict umask is respected."""

import os
import stat

import numpy as np
import pytest

from tlgan import pretrained, reporting


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
  previous = os.umask(request.param)
  yield request.param
  os.umask(previous)


def mode(path):
  return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_have_the_mode_of_a_plain_open(tmp_path, umask):
  with open(tmp_path / "plain", "w"):
    pass
  expected = mode(tmp_path / "plain")
  assert expected == 0o666 & ~umask
  reporting.write_json(str(tmp_path / "summary.json"), {"a": 1})
  reporting.save_image_grid(str(tmp_path / "grid.png"), np.zeros((4, 8, 8, 1), np.float32))
  pretrained.save(str(tmp_path / "w.msgpack"), {"params": {"x": np.ones(2, np.float32)}},
                  pretrained.WeightsMeta("resnet18", source="test"))
  for name in ("summary.json", "grid.png", "w.msgpack"):
    assert mode(tmp_path / name) == expected, name
  assert sorted(os.listdir(tmp_path)) == ["grid.png", "plain", "summary.json", "w.msgpack"]  # no temporaries


@pytest.mark.parametrize("workdir, words", [
    ("foo://bucket/run", "tlgan does not write to foo:// URLs"),
    ("file:///tmp/run", "give a local path without 'file://'"),
    ("gs://", "names no bucket"),
    ("gs:///run", "names no bucket"),
])
def test_a_workdir_url_tlgan_cannot_use_is_one_line_and_creates_nothing(tmp_path, monkeypatch, workdir, words):
  """Without the check, 'foo://bucket/run' became a local folder 'foo:' in the current directory."""
  from tlgan.errors import UserError
  from tlgan.trainers import loop
  monkeypatch.chdir(tmp_path)
  with pytest.raises(UserError) as error:
    loop.check_workdir(workdir)
  assert words in str(error.value) and "\n" not in str(error.value)
  assert os.listdir(tmp_path) == []


def test_url_paths_stay_urls():
  from tlgan import files
  assert files.is_remote("gs://b/run") and not files.is_remote("runs/gan") and not files.is_remote("foo://x")
  assert files.absolute("gs://b/run/") == "gs://b/run" and files.join("gs://b/run/", "checkpoints") == "gs://b/run/checkpoints"
  assert files.absolute("runs/gan") == os.path.abspath("runs/gan")
