"""reporting.cpu_model: the CPU behind every time and rate, told apart where the marketing name is shared."""

import shutil
import subprocess

import pytest

from tlgan import reporting

ZEN3 = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse4_2 avx fma avx2 sha_ni vaes\n\n"
        "processor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu sse4_2 avx fma avx2 sha_ni vaes\n")
ZEN4 = ("processor\t: 0\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\n"
        "flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16\n")
SAPPHIRE = ("processor\t: 0\ncpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R) Processor\n"
            "flags\t\t: fpu avx avx2 avx512f avx512_vnni amx_bf16 amx_tile\n")


@pytest.mark.parametrize("text, expected", [
    (ZEN3, "AMD EPYC (family 25 model 1, AVX2)"),
    (ZEN4, "AMD EPYC (family 25 model 17, AVX-512)"),  # the same lscpu name as ZEN3, told apart
    (SAPPHIRE, "Intel(R) Xeon(R) Processor (family 6 model 143, AVX-512 + AMX)"),
    ("processor\t: 0\nmodel name\t: Some CPU\n", "Some CPU"),  # nothing else known: the name alone
])
def test_cpu_model_tells_cpus_apart(tmp_path, text, expected):
  path = tmp_path / "cpuinfo"
  path.write_text(text)
  assert reporting.cpu_model(str(path)) == expected


@pytest.mark.parametrize("text, expected", [(ZEN3, "AVX2"), (ZEN4, "AVX-512"), (SAPPHIRE, "AVX-512 + AMX"),
                                           ("processor\t: 0\nmodel name\t: Some CPU\n", "")])
def test_vector_extension_is_the_widest_named_in_the_flags(tmp_path, text, expected):
  # what tlgan.models.layers.transposed_weight_gradient decides by
  path = tmp_path / "cpuinfo"
  path.write_text(text)
  assert reporting.vector_extension(str(path)) == expected
  assert reporting.vector_extension(str(tmp_path / "missing")) == ""


def test_cpu_model_without_cpuinfo(tmp_path):
  # no /proc/cpuinfo (macOS) or no model name in it (some ARM kernels): the platform's word, never empty
  assert reporting.cpu_model(str(tmp_path / "missing"))
  (tmp_path / "arm").write_text("processor\t: 0\nBogoMIPS\t: 50.00\n")
  assert reporting.cpu_model(str(tmp_path / "arm"))
  (tmp_path / "damaged").write_bytes(b"\xff\xfe\x00garbage\x80")  # not text: still a string, no exception
  assert reporting.cpu_model(str(tmp_path / "damaged"))


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="lscpu (util-linux) not installed")
def test_cpu_model_agrees_with_lscpu():
  out = subprocess.run(["lscpu"], capture_output=True, text=True, env={"LC_ALL": "C"}).stdout
  names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
  if not names:
    pytest.skip("lscpu shows no model name here")
  assert reporting.cpu_model().startswith(names[0])
