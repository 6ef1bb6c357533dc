"""Unit checks of tlgan.checkpoint that need no training run (the end-to-end cases are in test_reliability)."""

import asyncio
import gc
import logging

import pytest

from tlgan import checkpoint  # noqa: F401  (installs the asyncio log filter)


def _failing_coroutine(filename):
  """A coroutine whose failing frame lives in `filename`, as a real Orbax read does."""
  namespace = {}
  exec(compile("async def read():\n  raise ValueError('OUT_OF_RANGE: byte range is not valid')\n",
               filename, "exec"), namespace)
  return namespace["read"]()


@pytest.mark.parametrize("filename, shown", [
    ("/venv/site-packages/orbax/checkpoint/_src/serialization/serialization.py", False),
    ("/venv/site-packages/tensorstore/__init__.py", False),
    ("/work/research/my_loader.py", True),  # anybody else's lost task exception is still reported
])
@pytest.mark.parametrize("gathered", [False, True])
def test_abandoned_orbax_reads_are_not_logged_after_the_error(filename, shown, gathered):
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record)

  handler = Keep()
  logging.getLogger().addHandler(handler)
  try:
    loop = asyncio.new_event_loop()
    if gathered:  # asyncio.gather(...) of reads, as Orbax awaits them
      async def start():
        return asyncio.gather(_failing_coroutine(filename))
      task = loop.run_until_complete(start())
    else:
      task = loop.create_task(_failing_coroutine(filename))
    loop.run_until_complete(asyncio.sleep(0.01))  # the task fails; nobody asks for its result
    loop.close()
    del task
    gc.collect()
  finally:
    logging.getLogger().removeHandler(handler)
  lost = [r for r in records if "exception was never retrieved" in r.getMessage()]
  assert len(lost) == (1 if shown else 0)
