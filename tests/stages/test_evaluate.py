"""The evaluate stage: its spec, the numbers it records, its report, and resuming after a stop."""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_nets import save_tiny_generator

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.errors import CleftGanError, SpecError
from cleftgan_hpc.jobspec.kinds.evaluate import EvaluateStage
from cleftgan_hpc.storage.base import ObjectStore
from cleftgan_hpc.storage.local import LocalStore

ALL = ["fid", "kid", "ppl", "dish"]


@pytest.fixture(scope="module")
def net32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny unconditional 32x32 generator (the resolution of ``tiny_dataset``)."""
    return save_tiny_generator(tmp_path_factory.mktemp("nets") / "g32.safetensors", resolution=32, seed=3)


def make_cfg(net: Path, dataset: Path, **kw: Any) -> EvaluateStage:
    base: dict[str, Any] = {
        "kind": "evaluate", "network": str(net), "dataset": str(dataset), "metrics": ALL, "num_images": 20,
        "feature_extractor": "demo", "lpips": "demo", "severity_model": "demo", "ppl": {"samples": 10},
        "kid_subset_size": 8, "kid_subsets": 10, "batch": 8,
    }
    return EvaluateStage.model_validate({**base, **kw})


def make_ctx(store: ObjectStore, tmp_path: Path, run_id: str = "r") -> StageContext:
    return StageContext(store=store, run_id=run_id, stage="evaluate", scratch=tmp_path / f"scratch-{run_id}",
                        log=logging.getLogger("test-evaluate"))


def run_stage(cfg: EvaluateStage, ctx: StageContext) -> dict[str, Any]:
    from cleftgan_hpc.stages.evaluate import run

    outputs = run(cfg, ctx)
    assert outputs == {"metrics": ctx.key("metrics.json"), "report": ctx.key("report.png")}
    return ctx.store.get_json(outputs["metrics"])


# -- the spec ------------------------------------------------------------------------------

@pytest.mark.parametrize(("metric", "field"), [("fid", "feature_extractor"), ("kid", "feature_extractor"),
                                               ("ppl", "lpips"), ("dish", "severity_model")])
def test_each_metric_needs_its_model(metric: str, field: str) -> None:
    with pytest.raises(ValueError, match=f"needs {field}"):
        EvaluateStage.model_validate({"kind": "evaluate", "network": "/n", "dataset": "/d", "metrics": [metric]})


def test_spec_errors_name_file_line_and_field(tmp_path: Path) -> None:
    from cleftgan_hpc.jobspec.load import load_spec

    job = tmp_path / "job.yaml"
    job.write_text(
        "name: ev\nstore: file://./store\nstages:\n  ev:\n    kind: evaluate\n    network: n.pkl\n"
        "    dataset: d.zip\n    metrics: [fid]\n    feature_extractor: demo\n    dish: {bins: 1}\n"
    )
    with pytest.raises(SpecError) as err:
        load_spec(job)
    text = str(err.value)
    assert f"{job}:10:" in text and "dish.bins" in text


def test_dish_range_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="low < high"):
        EvaluateStage.model_validate({"kind": "evaluate", "network": "/n", "dataset": "/d", "metrics": ["dish"],
                                      "severity_model": "demo", "dish": {"range": [1.0, 0.0]}})


def test_a_metric_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        EvaluateStage.model_validate({"kind": "evaluate", "network": "/n", "dataset": "/d", "metrics": ["kid", "kid"],
                                      "feature_extractor": "demo"})


# -- what it computes ----------------------------------------------------------------------

def test_records_every_metric_and_a_report(store: ObjectStore, tmp_path: Path, net32: Path,
                                           tiny_dataset: Path) -> None:
    record = run_stage(make_cfg(net32, tiny_dataset), make_ctx(store, tmp_path))
    values = record["metrics"]
    assert sorted(values) == sorted(ALL)
    assert all(math.isfinite(v) for v in values.values())
    assert values["fid"] > 0  # a random network is far from the real images
    assert values["ppl"] > 0
    assert 0 <= values["dish"] <= 1  # Jensen-Shannon in bits
    assert record["generated"] == {"images": 20, "first_seed": 0, "truncation_psi": 1.0}
    assert record["dataset"]["images"] == 12
    assert set(record["models"]) == {"feature_extractor", "lpips", "severity_model"}
    assert sum(record["dish"]["real_hist"]) == pytest.approx(1) and len(record["dish"]["real_hist"]) == 20
    assert record["resumed"] is False
    png = Image.open(io.BytesIO(store.get_bytes("runs/r/stages/evaluate/report.png")))
    assert png.format == "PNG" and png.size[0] > 3 * png.size[1] // 2  # three panels side by side
    assert not list(store.list("runs/r/stages/evaluate/progress/"))  # done: no progress left behind


def test_fid_matches_the_metric_functions(tmp_path: Path, net32: Path, tiny_dataset: Path) -> None:
    """The stage's FID/KID are those of the images it says it evaluated (seeds 0..N-1)."""
    import torch

    from cleftgan_hpc.data.dataset import Dataset
    from cleftgan_hpc.metrics import fid_kid, load_feature_extractor, save_tiny_extractor, uint8_batches
    from cleftgan_hpc.metrics.cache import FeatureStats
    from cleftgan_hpc.synthesis.generate import generate_batch, load_generator

    store = LocalStore(tmp_path / "store")
    record = run_stage(make_cfg(net32, tiny_dataset, metrics=["fid", "kid"]), make_ctx(store, tmp_path))
    save_tiny_extractor(tmp_path / "x.pt")
    ext = load_feature_extractor(tmp_path / "x.pt")
    real = ext.features(uint8_batches(iter(Dataset(tiny_dataset)), 8))
    g = load_generator(net32)
    fake_images = generate_batch(g, list(range(20)), [None] * 20, 1.0, None, "cpu")  # the synthesize stage's images
    fake = ext.features([torch.from_numpy(fake_images).permute(0, 3, 1, 2).contiguous()])
    expected = fid_kid(FeatureStats.from_features(real), fake, 10, 8, 0)
    assert record["metrics"]["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    assert record["metrics"]["kid"] == pytest.approx(expected["kid"], rel=1e-6, abs=1e-9)


def test_a_stopped_evaluation_resumes_to_the_same_numbers(tmp_path: Path, net32: Path, tiny_dataset: Path) -> None:
    store = LocalStore(tmp_path / "store")
    cfg = make_cfg(net32, tiny_dataset, num_images=40, ppl={"samples": 70}, save_every_s=1e-9, batch=4)
    whole = run_stage(cfg, make_ctx(store, tmp_path, "whole"))

    ctx = make_ctx(store, tmp_path, "stopped")
    from cleftgan_hpc.stages.evaluate import run

    # a stop request once some images are saved (in the image pass) ...
    stop_once_saved(ctx, store, "features", 1)
    with pytest.raises(StopRequested):
        run(cfg, ctx)
    rows = _saved_rows(store, ctx.key("progress"))
    assert 0 < rows["features"] < 40 and "path_lengths" not in rows
    # ... then once some path lengths are (inside the PPL pass: a stop must not wait for a chunk)
    stop_once_saved(ctx, store, "path_lengths", 1)
    with pytest.raises(StopRequested):
        run(cfg, ctx)
    rows = _saved_rows(store, ctx.key("progress"))
    assert rows["features"] == 40 and 0 < rows["path_lengths"] < 70
    ctx.should_stop = lambda: False  # type: ignore[method-assign]
    resumed = run_stage(cfg, ctx)
    assert resumed["resumed"] is True
    assert resumed["metrics"] == whole["metrics"]  # exactly: every sample is a pure function of its index


def stop_once_saved(ctx: StageContext, store: ObjectStore, series: str, rows: int) -> None:
    """Make the stage see a stop request once ``rows`` rows of ``series`` are saved."""
    ctx.should_stop = lambda: _saved_rows(store, ctx.key("progress")).get(series, 0) >= rows  # type: ignore[method-assign]


def _saved_rows(store: ObjectStore, prefix: str) -> dict[str, int]:
    """Rows per series in the saved progress segments."""
    rows: dict[str, int] = {}
    for info in store.list(prefix + "/"):
        name = info.key.rsplit("/", 1)[1].rsplit("-", 1)[0]
        with np.load(io.BytesIO(store.get_bytes(info.key))) as npz:
            rows[name] = rows.get(name, 0) + len(npz["rows"])
    return rows


def test_progress_of_other_options_is_not_reused(tmp_path: Path, net32: Path, tiny_dataset: Path) -> None:
    from cleftgan_hpc.metrics.partial import PartialResults

    store = LocalStore(tmp_path / "store")
    ctx = make_ctx(store, tmp_path)
    stale = PartialResults(store, ctx.key("progress"), {"features": "another network or psi"})
    stale.extend("features", np.zeros((20, 64), dtype=np.float32))
    stale.save()
    record = run_stage(make_cfg(net32, tiny_dataset, metrics=["fid"]), ctx)
    assert record["resumed"] is False and record["metrics"]["fid"] > 0


def test_conditional_network_needs_fitting_labels(tmp_path: Path, tiny_dataset: Path) -> None:
    from cleftgan_hpc.stages.evaluate import label_rows

    rows = label_rows(np.array([0, 2, 1]), 3)
    assert rows is not None and rows.tolist() == [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    onehot_ints = label_rows(np.array([[0, 1, 0], [1, 0, 0]]), 3)  # rows already, written as integers
    assert onehot_ints is not None and onehot_ints.tolist() == [[0, 1, 0], [1, 0, 0]]
    assert label_rows(None, 0) is None
    with pytest.raises(CleftGanError, match="no labels"):
        label_rows(None, 3)
    with pytest.raises(CleftGanError, match="0..1"):
        label_rows(np.array([0, 2]), 2)
    with pytest.raises(CleftGanError, match="width 2"):
        label_rows(np.zeros((4, 2), dtype=np.float32), 3)


def test_conditional_network_end_to_end(tmp_path: Path, tiny_dataset: Path) -> None:
    """tiny_dataset has labels 0..2: a 3-class generator is evaluated with real labels drawn per seed."""
    net = save_tiny_generator(tmp_path / "cond.safetensors", resolution=32, c_dim=3, seed=5)
    cfg = make_cfg(net, tiny_dataset, metrics=["kid", "ppl"])
    record = run_stage(cfg, make_ctx(LocalStore(tmp_path / "s"), tmp_path))
    assert record["network"]["c_dim"] == 3
    assert math.isfinite(record["metrics"]["kid"]) and record["metrics"]["ppl"] > 0
    assert json.dumps(record)  # JSON-safe throughout


@pytest.mark.slow
def test_a_job_with_an_evaluate_stage_runs_on_the_local_backend(tmp_path: Path, net32: Path,
                                                                tiny_dataset: Path) -> None:
    """Through the real runner: spec -> plan -> local backend -> stage process -> the store."""
    import subprocess
    import sys

    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: ev\nstore: file://./store\nresources: {{cpus_per_task: 1}}\nstages:\n"
        f"  judge:\n    kind: evaluate\n    network: {net32}\n    dataset: {tiny_dataset}\n"
        f"    metrics: [kid, dish]\n    num_images: 16\n    feature_extractor: demo\n    severity_model: demo\n"
        f"    kid_subset_size: 8\n"
    )
    proc = subprocess.run([sys.executable, "-m", "cleftgan_hpc.cli", "run", str(job), "--run", "ev-1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    record = json.loads((tmp_path / "store/runs/ev-1/stages/judge/metrics.json").read_text())
    assert set(record["metrics"]) == {"kid", "dish"}
    assert (tmp_path / "store/runs/ev-1/stages/judge/report.png").stat().st_size > 1000


def test_a_series_saved_shorter_than_its_partner_is_recomputed(tmp_path: Path, net32: Path,
                                                              tiny_dataset: Path) -> None:
    """A crash between writing the features segment and the severity segment leaves severity
    short: the resume starts from the shorter series, so DISH still sees every image."""
    store = LocalStore(tmp_path / "store")
    cfg = make_cfg(net32, tiny_dataset, metrics=["kid", "dish"], num_images=24, save_every_s=1e-9, batch=4)
    whole = run_stage(cfg, make_ctx(store, tmp_path, "whole"))
    ctx = make_ctx(store, tmp_path, "cut")
    stop_once_saved(ctx, store, "severity", 12)
    from cleftgan_hpc.stages.evaluate import run

    with pytest.raises(StopRequested):
        run(cfg, ctx)
    severity = sorted(i.key for i in store.list(ctx.key("progress") + "/severity-"))
    store.delete(severity[-1])  # as if the process died between the two segments' puts
    ctx.should_stop = lambda: False  # type: ignore[method-assign]
    resumed = run_stage(cfg, ctx)
    assert resumed["resumed"] is True
    assert resumed["dish"] == whole["dish"] and resumed["metrics"] == whole["metrics"]


def test_networks_that_do_not_fit_the_dataset(tmp_path: Path, net32: Path, tiny_dataset: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    grey = save_tiny_generator(tmp_path / "grey.safetensors", resolution=32, channels=1)
    with pytest.raises(CleftGanError, match="1-channel images, the dataset has 3"):
        run_stage(make_cfg(grey, tiny_dataset, metrics=["kid"]), make_ctx(LocalStore(tmp_path / "a"), tmp_path))

    small = save_tiny_generator(tmp_path / "g16.safetensors", resolution=16)
    with caplog.at_level(logging.WARNING):
        record = run_stage(make_cfg(small, tiny_dataset, metrics=["kid"]), make_ctx(LocalStore(tmp_path / "b"), tmp_path))
    assert "16px images, the dataset's are 32px" in caplog.text
    assert record["sizes"] == {"network_px": 16, "dataset_px": 32}


def test_ppl_does_not_depend_on_truncation(tmp_path: Path, net32: Path, tiny_dataset: Path) -> None:
    """PPL is measured on the untruncated mapping, whatever psi the other metrics use."""
    values = [
        run_stage(make_cfg(net32, tiny_dataset, metrics=["ppl", "kid"], truncation_psi=psi),
                  make_ctx(LocalStore(tmp_path / f"s{psi}"), tmp_path, f"r{psi}"))["metrics"]
        for psi in (1.0, 0.5)
    ]
    assert values[0]["ppl"] == values[1]["ppl"]
    assert values[0]["kid"] != values[1]["kid"]  # while the generated images did change


def test_measuring_runs_without_tf32_and_restores_the_setting() -> None:
    import torch

    from cleftgan_hpc.metrics import exact_fp32

    torch.backends.cudnn.allow_tf32 = True
    with exact_fp32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32


def test_adding_a_metric_keeps_the_work_of_the_others(tmp_path: Path, net32: Path, tiny_dataset: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A preempted kid-only evaluation asked again with dish as well: the Inception features
    already saved are kept (not recomputed) and the numbers are those of one full run."""
    store = LocalStore(tmp_path / "store")
    both = make_cfg(net32, tiny_dataset, metrics=["kid", "dish"], num_images=24, save_every_s=1e-9, batch=4)
    whole = run_stage(both, make_ctx(store, tmp_path, "whole"))
    ctx = make_ctx(store, tmp_path, "grown")
    stop_once_saved(ctx, store, "features", 12)
    from cleftgan_hpc.stages.evaluate import run

    with pytest.raises(StopRequested):
        run(make_cfg(net32, tiny_dataset, metrics=["kid"], num_images=24, save_every_s=1e-9, batch=4), ctx)
    kept = _saved_rows(store, ctx.key("progress"))["features"]
    ctx.should_stop = lambda: False  # type: ignore[method-assign]
    from cleftgan_hpc.metrics.features import FeatureExtractor

    seen = {"images": 0}
    original = FeatureExtractor.__call__

    def counting(self: FeatureExtractor, images: Any) -> Any:
        seen["images"] += len(images)
        return original(self, images)

    monkeypatch.setattr(FeatureExtractor, "__call__", counting)
    with caplog.at_level(logging.INFO):
        grown = run_stage(both, ctx)
    assert f"resuming: features {kept}" in caplog.text
    assert seen["images"] == 24 - kept  # only the missing generated images (the real set is cached)
    assert grown["metrics"] == whole["metrics"]
