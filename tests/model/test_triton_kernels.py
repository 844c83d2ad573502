"""The Triton kernels of the filtered leaky ReLU (ops/compiled.py, ops/triton_kernels.py), on CPU.

The kernels are checked in Triton's interpreter (TRITON_INTERPRET=1), which must be set before
triton is imported: triton_interpret_checks.py runs every check in one child process started
with it, and each check is a test here. Interpret mode runs a kernel as NumPy code, so the
shapes are tiny. On a GPU the same kernels are compiled (benchmarks/gpu_check.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cleftgan_hpc.launch import doctor
from cleftgan_hpc.model import ops
from cleftgan_hpc.model.ops import compiled

pytest.importorskip("triton", reason="triton is not installed (the `triton` extra; `make test` installs it)")

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from triton_interpret_checks import CHECKS  # noqa: E402


@pytest.fixture(scope="module")
def interpreted_results() -> dict[str, str]:
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    env.pop("CLEFTGAN_TRITON", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, str(HERE / "triton_interpret_checks.py")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=HERE.parents[1])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(CHECKS))
def test_interpreted_kernels(interpreted_results: dict[str, str], name: str) -> None:
    """match[CASE-DTYPE]: forward, gradients and the no-grad forward equal the plain ops;
    codes_are_lean_format, double_backward, failing_kernel[...] (one warning, PyTorch ops),
    stylegan3_self_checks, doctor_paths: see triton_interpret_checks.py."""
    result = interpreted_results[name]
    if result.startswith("skip: "):
        pytest.skip(result[6:])
    assert result == "ok", result


def test_doctor_without_a_gpu_says_the_cpu_runs_pytorch_ops() -> None:
    compiled.reset()
    checks = doctor.check_kernels()
    kernels = next(c for c in checks if c.name == "kernels")
    assert kernels.level == doctor.OK and "no GPU" in kernels.detail and "triton 3." in kernels.detail, kernels
    op = next(c for c in checks if c.name == "op" and c.detail.startswith("filtered_lrelu"))
    assert "cpu device: pytorch ops" in op.detail


def test_doctor_says_when_triton_is_not_installed_or_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled.reset()
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` fails as when it is not installed
    try:
        assert compiled.kernels() is None
        assert compiled.status(torch.device("cuda", 0)) == "pytorch ops: triton: not installed"
        checks = doctor.check_kernels()
        assert any("triton: not installed" in c.detail for c in checks if c.name == "kernels"), checks
    finally:
        compiled.reset()
    monkeypatch.setenv("CLEFTGAN_TRITON", "0")
    assert compiled.status(torch.device("cuda", 0)) == "pytorch ops: switched off by CLEFTGAN_TRITON=0"
    assert "switched off by CLEFTGAN_TRITON=0" in dict(ops.op_paths("cuda:0"))["filtered_lrelu"]


def test_the_cpu_path_does_not_load_the_kernels() -> None:
    """Off CUDA (outside the interpreted checks) the op never imports the kernel module."""
    compiled.reset()
    x = torch.randn(1, 2, 6, 6, requires_grad=True)
    f = torch.tensor([0.2, 0.5, 0.3])
    ops.filtered_lrelu(x, f, f, None, up=2, down=2, padding=(2, 1, 2, 1)).sum().backward()
    with torch.no_grad():
        ops.filtered_lrelu(x, f, f, None, up=2, down=2, padding=(2, 1, 2, 1))
    assert compiled.KERNEL_MODULE not in sys.modules


def test_the_image_cache_manager_reads_prebuilt_kernels_and_writes_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cleftgan_hpc.model.ops.triton_cache import PrebuiltFirstCache

    prebuilt, writable = tmp_path / "prebuilt", tmp_path / "home-cache"
    (prebuilt / "KEY").mkdir(parents=True)
    (prebuilt / "KEY" / "k.cubin").write_bytes(b"prebuilt")
    monkeypatch.setenv("CLEFTGAN_TRITON_PREBUILT", str(prebuilt))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(writable))
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # read-only, as in an Apptainer image (even for root)
    cache = PrebuiltFirstCache("KEY")
    assert cache.get_file("k.cubin") == str(prebuilt / "KEY" / "k.cubin")
    stored = cache.put(b"new", "other.json")
    assert stored == str(writable / "KEY" / "other.json") and Path(stored).read_bytes() == b"new"
    assert not (prebuilt / "KEY" / "other.json").exists()
    missing = PrebuiltFirstCache("OTHER")  # not prebuilt: the ordinary cache
    assert missing.cache_dir == str(writable / "OTHER") and missing.get_file("k.cubin") is None


def test_warm_without_a_gpu_or_architectures_prebuilds_nothing_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from cleftgan_hpc.model.ops import warm

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "before"))  # restored afterwards
    monkeypatch.setenv("TRITON_CACHE_MANAGER", "cleftgan_hpc.model.ops.triton_cache:PrebuiltFirstCache")
    assert warm.main(["--cache", str(tmp_path / "prebuilt"), "--archs", ""]) == 0
    out = capsys.readouterr().out
    assert "no GPU visible" in out and "nothing compiled now" in out, out
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "prebuilt")
    assert warm.parse_archs("8.0;sm_90, 86") == [80, 90, 86] and warm.parse_archs("none") == []


def test_prebuild_compiles_for_a_gpu_architecture_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the image build does (here one small configuration, float16, sm_90): the kernels
    compile with Triton's compiler into the cache, and a second prebuild finds all of them there."""
    import time

    compiled.reset()
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TRITON_CACHE_MANAGER", raising=False)
    cfg = dict(fu=torch.full([2], 0.5), fd=torch.full([2, 2], 0.25), up=2, down=2, padding=(1, 0, 1, 0),
               gain=2**0.5, slope=0.2, clamp=256.0, bias=False)  # the separable up, 2-D down passes, both epilogues
    act = dict(cfg, fu=None, fd=None, up=1, down=1, padding=(0, 0, 0, 0))  # the elementwise kernel
    assert compiled.prebuild([90], [cfg, act], (torch.float16,)) == {90: []}
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) >= 9, entries  # forward x/y passes (with and without codes), down, backward; activation
    assert any(p.suffix == ".cubin" for p in (tmp_path / "cache").rglob("*")), "no GPU binary was written"
    t0 = time.perf_counter()
    assert compiled.prebuild([90], [cfg, act], (torch.float16,)) == {90: []}
    assert time.perf_counter() - t0 < 2 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries
    assert compiled.may_run_on(torch.device("cpu")) is False  # nothing left switched on


def test_gpu_check_imports_parses_its_arguments_and_stops_without_a_gpu() -> None:
    script = HERE.parents[1] / "benchmarks" / "gpu_check.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    run = lambda *args: subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,  # noqa: E731
                                       timeout=120, env=env, cwd=script.parent)
    help_ = run("--help")
    assert help_.returncode == 0 and "--ops-only" in help_.stdout and "--reference" in help_.stdout
    bad = run("--paths", "triton,nope")
    assert bad.returncode == 2 and "unknown nope" in bad.stderr
    if not torch.cuda.is_available():
        out = run("--quick", "--paths", "triton")
        assert out.returncode == 2 and "no CUDA device visible" in out.stderr
