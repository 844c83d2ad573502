"""The severity stage: its spec, its outputs, array tasks that split and merge, resuming after a
stop without scoring an image twice, the real-set cache, and DISH from the index in evaluate."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_nets import save_tiny_generator

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.data.dataset import write_dataset
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.severity import SeverityStage
from cleftgan_hpc.storage.base import ObjectStore
from cleftgan_hpc.storage.local import LocalStore

FAST = {"batch": 2, "projection": {"steps": 2, "w_avg_samples": 50}, "adaptation": {"steps": 1}}


@pytest.fixture(scope="module")
def net16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_generator(tmp_path_factory.mktemp("nets") / "g16.safetensors", resolution=16, seed=3)


@pytest.fixture(scope="module")
def data16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 smooth 16x16 images (an odd count: the last batch is short)."""
    rng = np.random.RandomState(1)
    images = [(np.kron(rng.rand(4, 4, 3), np.ones((4, 4, 1))) * 255).astype(np.uint8) for _ in range(7)]
    return write_dataset(tmp_path_factory.mktemp("data") / "d16.zip", images)


def make_cfg(net: Path, **kw: Any) -> SeverityStage:
    base: dict[str, Any] = {"kind": "severity", "normal_network": str(net), "index": FAST, "overlays": 2,
                            "extremes": 1}
    return SeverityStage.model_validate({**base, **kw})


def make_ctx(store: ObjectStore, tmp_path: Path, run_id: str = "r", task: int | None = None) -> StageContext:
    return StageContext(store=store, run_id=run_id, stage="severity", scratch=tmp_path / f"scratch-{run_id}-{task}",
                        log=logging.getLogger("test-severity"), task=task)


@pytest.fixture
def scored_images(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many images each SeverityIndex.score call scored, in order."""
    from cleftgan_hpc.severity.scorer import SeverityIndex

    calls: list[int] = []
    original = SeverityIndex.score

    def counting(self: Any, images: Any, **kw: Any) -> Any:
        calls.append(len(images))
        return original(self, images, **kw)

    monkeypatch.setattr(SeverityIndex, "score", counting)
    return calls


def read_csv(store: ObjectStore, key: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(store.get_bytes(key).decode())))


# -- the spec --------------------------------------------------------------------------------

def test_exactly_one_image_source() -> None:
    with pytest.raises(ValueError, match="exactly one image source"):
        SeverityStage.model_validate({"kind": "severity", "normal_network": "n.pkl"})
    with pytest.raises(ValueError, match="exactly one image source"):
        SeverityStage.model_validate({"kind": "severity", "normal_network": "n.pkl", "dataset": "d.zip",
                                      "synthesized": "stage:s"})
    with pytest.raises(ValueError, match="network needs count"):
        SeverityStage.model_validate({"kind": "severity", "normal_network": "n.pkl", "network": "g.pkl"})
    with pytest.raises(ValueError, match="go with network"):
        SeverityStage.model_validate({"kind": "severity", "normal_network": "n.pkl", "dataset": "d.zip", "count": 3})
    cfg = SeverityStage.model_validate({"kind": "severity", "normal_network": "n.pkl", "dataset": "d.zip", "tasks": 4})
    assert cfg.array_tasks() == 4 and cfg.index.projection.steps == 300
    # a run stores its spec with every field written out; that must load again
    assert SeverityStage.model_validate(cfg.model_dump(mode="json")) == cfg


def test_spec_errors_point_at_the_field(tmp_path: Path) -> None:
    from cleftgan_hpc.errors import SpecError
    from cleftgan_hpc.jobspec.load import load_spec

    job = tmp_path / "job.yaml"
    job.write_text("name: sev\nstore: file://./store\nstages:\n  sev:\n    kind: severity\n    normal_network: n.pkl\n"
                   "    dataset: d.zip\n    index: {adaptation: {pull: 2}}\n")
    with pytest.raises(SpecError) as err:
        load_spec(job)
    assert f"{job}:8:" in str(err.value) and "index.adaptation.pull" in str(err.value)


def test_task_ranges_fall_on_whole_batches() -> None:
    from cleftgan_hpc.stages.severity import task_ranges

    assert task_ranges(7, 1, 2) == [(0, 7)]
    assert task_ranges(7, 2, 2) == [(0, 4), (4, 7)]
    assert task_ranges(10, 3, 4) == [(0, 4), (4, 8), (8, 10)]
    assert task_ranges(5, 4, 2) == [(0, 0), (0, 2), (2, 4), (4, 5)]  # more tasks than batches: one has nothing
    ranges = task_ranges(1000, 7, 8)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000 and all(a % 8 == 0 for a, _ in ranges)
    assert all(ranges[k][1] == ranges[k + 1][0] for k in range(6))


# -- outputs ----------------------------------------------------------------------------------

def test_scores_a_dataset_with_every_output(tmp_path: Path, net16: Path, data16: Path) -> None:
    from cleftgan_hpc.stages.severity import run

    store = LocalStore(tmp_path / "store")
    ctx = make_ctx(store, tmp_path)
    outputs = run(make_cfg(net16, dataset=str(data16)), ctx)
    assert outputs == {name: ctx.key(f) for name, f in SeverityStage.outputs.items()}
    rows = read_csv(store, outputs["scores"])
    assert len(rows) == 7 and rows[0]["key"] == "00000/img00000000.png"
    assert list(rows[0]) == ["index", "key", "score", "projection_loss", "adaptation_loss", "peak_row", "peak_col"]
    scores = np.array([float(r["score"]) for r in rows])
    assert np.all(np.isfinite(scores)) and np.all(scores >= 0)
    with np.load(io.BytesIO(store.get_bytes(outputs["table"])), allow_pickle=False) as z:
        np.testing.assert_allclose(z["score"], scores, rtol=1e-8)
        assert list(z["key"]) == [r["key"] for r in rows]
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(io.BytesIO(store.get_bytes(ctx.key("scores.parquet"))))
    np.testing.assert_allclose(table.column("score").to_numpy(), scores, rtol=1e-8)
    pngs = sorted(i.key.rsplit("/", 1)[1] for i in store.list(outputs["heatmaps"] + "/"))
    assert [p.split("-")[0] for p in pngs] == ["highest", "lowest", "sample", "sample"]
    assert pngs[0] == f"highest-01-img{int(np.argmax(scores)):08d}.png"
    assert Image.open(io.BytesIO(store.get_bytes(outputs["heatmaps"] + "/" + pngs[0]))).format == "PNG"
    assert Image.open(io.BytesIO(store.get_bytes(outputs["summary"]))).format == "PNG"
    record = store.get_json(outputs["record"])
    assert record["images"]["count"] == 7 and record["cache"] == "stored"
    assert record["index"]["options"]["projection"]["steps"] == 2 and record["index"]["scorer"] == "severity-index"
    assert record["statistics"]["max"] == pytest.approx(scores.max())
    assert not list(store.list(ctx.key("progress") + "/"))  # done: no progress left behind


def test_a_dataset_is_scored_once_then_cached(tmp_path: Path, net16: Path, data16: Path,
                                              scored_images: list[int]) -> None:
    from cleftgan_hpc.stages.severity import run

    store = LocalStore(tmp_path / "store")
    first = run(make_cfg(net16, dataset=str(data16), overlays=0, extremes=0), make_ctx(store, tmp_path, "one"))
    assert sum(scored_images) == 7
    scored_images.clear()
    second = run(make_cfg(net16, dataset=str(data16), overlays=0, extremes=0), make_ctx(store, tmp_path, "two"))
    assert scored_images == []  # every score from the cache
    assert store.get_json(second["record"])["cache"] == "hit"
    assert read_csv(store, first["scores"]) == read_csv(store, second["scores"])
    other = make_cfg(net16, dataset=str(data16), overlays=0, extremes=0,
                     index={**FAST, "reduce": "mean"})  # other options: another entry
    run(other, make_ctx(store, tmp_path, "three"))
    assert sum(scored_images) == 7


# -- array tasks, stopping and resuming -------------------------------------------------------

def test_array_tasks_split_and_merge_to_the_unsplit_scores(tmp_path: Path, net16: Path,
                                                           scored_images: list[int]) -> None:
    from cleftgan_hpc.stages.severity import run

    store = LocalStore(tmp_path / "store")
    source = {"network": str(net16), "count": 7, "first_seed": 5, "overlays": 0, "extremes": 0}
    whole = run(make_cfg(net16, **source), make_ctx(store, tmp_path, "whole"))
    scored_images.clear()
    split = make_cfg(net16, tasks=3, **source)
    for task in (2, 0, 1):  # any order, as a Slurm array runs them
        assert run(split, make_ctx(store, tmp_path, "split", task)) == {}
    assert sum(scored_images) == 7
    scored_images.clear()
    merged = run(split, make_ctx(store, tmp_path, "split"))  # the commit scores nothing again ...
    assert scored_images == []
    assert read_csv(store, merged["scores"]) == read_csv(store, whole["scores"])  # ... and merges exactly
    assert [r["key"] for r in read_csv(store, merged["scores"])][:2] == ["seed00000005", "seed00000006"]


def test_a_stopped_task_resumes_without_rescoring(tmp_path: Path, net16: Path, data16: Path,
                                                  scored_images: list[int]) -> None:
    from cleftgan_hpc.stages.severity import run

    store = LocalStore(tmp_path / "store")
    cfg = make_cfg(net16, dataset=str(data16), save_every_s=1e-9, overlays=0, extremes=0)
    whole = run(cfg, make_ctx(LocalStore(tmp_path / "other"), tmp_path, "whole"))
    scored_images.clear()
    ctx = make_ctx(store, tmp_path, "stopped")
    ctx.should_stop = lambda: _saved_rows(store, ctx.key("progress")) >= 4  # type: ignore[method-assign]
    with pytest.raises(StopRequested, match="4 of 7 scores saved"):
        run(cfg, ctx)
    assert sum(scored_images) == 4
    scored_images.clear()
    ctx.should_stop = lambda: False  # type: ignore[method-assign]
    resumed = run(cfg, ctx)
    assert sum(scored_images) == 3  # only the images not saved before the stop
    assert read_csv(store, resumed["scores"]) == read_csv(LocalStore(tmp_path / "other"), whole["scores"])


def test_a_stop_inside_a_batch_keeps_the_saved_batches(tmp_path: Path, net16: Path, data16: Path) -> None:
    from cleftgan_hpc.stages.severity import run

    store = LocalStore(tmp_path / "store")
    cfg = make_cfg(net16, dataset=str(data16), save_every_s=1e-9, index={**FAST, "projection": {"steps": 40}})
    ctx = make_ctx(store, tmp_path)
    calls = {"n": 0}

    def stop_in_second_batch() -> bool:
        calls["n"] += 1
        return _saved_rows(store, ctx.key("progress")) >= 2 and calls["n"] > 8  # mid-projection of batch 2

    ctx.should_stop = stop_in_second_batch  # type: ignore[method-assign]
    with pytest.raises(StopRequested):
        run(cfg, ctx)
    assert _saved_rows(store, ctx.key("progress")) == 2


def _saved_rows(store: ObjectStore, prefix: str) -> int:
    rows = 0
    for info in store.list(prefix + "/"):
        with np.load(io.BytesIO(store.get_bytes(info.key))) as npz:
            rows += len(npz["rows"])
    return rows


# -- other sources and bad inputs -------------------------------------------------------------

def test_scores_a_synthesized_dataset(tmp_path: Path, net16: Path) -> None:
    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
    from cleftgan_hpc.stages import severity, synthesize

    store = LocalStore(tmp_path / "store")
    synth = SynthesizeStage.model_validate({"kind": "synthesize", "network": str(net16), "count": 5, "shard_size": 2,
                                            "batch": 4, "dataset": "toy", "workers": 0})
    made = synthesize.run(synth, StageContext(store=store, run_id="r", stage="samples", scratch=tmp_path / "s",
                                              log=logging.getLogger("test-severity")))
    cfg = make_cfg(net16, synthesized=f"store:{made['manifest']}", tasks=2, overlays=0, extremes=1)
    for task in (0, 1):
        severity.run(cfg, make_ctx(store, tmp_path, "r", task))
    outputs = severity.run(cfg, make_ctx(store, tmp_path, "r"))
    rows = read_csv(store, outputs["scores"])
    assert [r["key"] for r in rows] == [f"{s:010d}" for s in range(5)]
    net_rows = read_csv(store, severity.run(make_cfg(net16, network=str(net16), count=5, overlays=0, extremes=0),
                                            make_ctx(store, tmp_path, "n"))["scores"])
    # the synthesized images are the network's images for the same seeds: the same scores
    np.testing.assert_allclose([float(r["score"]) for r in rows], [float(r["score"]) for r in net_rows], rtol=1e-6)


def test_images_of_another_size_are_refused_before_any_work(tmp_path: Path, net16: Path, tiny_dataset: Path,
                                                            scored_images: list[int]) -> None:
    from cleftgan_hpc.stages.severity import run

    with pytest.raises(CleftGanError, match=r"32x32, the normal-face network draws 16x16"):
        run(make_cfg(net16, dataset=str(tiny_dataset)), make_ctx(LocalStore(tmp_path / "store"), tmp_path))
    assert scored_images == []


def test_an_empty_dataset_is_refused(tmp_path: Path, net16: Path) -> None:
    import zipfile

    from cleftgan_hpc.stages.severity import run

    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("dataset.json", json.dumps({"labels": None}))
    with pytest.raises(CleftGanError, match="no PNG images"):
        run(make_cfg(net16, dataset=str(empty)), make_ctx(LocalStore(tmp_path / "store"), tmp_path))


# -- DISH from the index in evaluate ----------------------------------------------------------

def test_evaluate_takes_a_normal_network_for_dish() -> None:
    from cleftgan_hpc.jobspec.kinds.evaluate import EvaluateStage

    base = {"kind": "evaluate", "network": "g.pkl", "dataset": "d.zip", "metrics": ["dish"]}
    with pytest.raises(ValueError, match="or normal_network"):
        EvaluateStage.model_validate(base)
    with pytest.raises(ValueError, match="not both"):
        EvaluateStage.model_validate({**base, "severity_model": "demo", "normal_network": "n.pkl"})
    with pytest.raises(ValueError, match="more than num_images"):
        EvaluateStage.model_validate({**base, "normal_network": "n.pkl", "num_images": 10, "dish": {"images": 20}})
    cfg = EvaluateStage.model_validate({**base, "normal_network": "n.pkl"})
    assert cfg.dish_images == 1000 and cfg.severity_index.projection.steps == 300
    assert EvaluateStage.model_validate({**base, "severity_model": "demo"}).dish_images == 50_000


def test_evaluate_dish_from_the_severity_index(tmp_path: Path, net16: Path, data16: Path,
                                               scored_images: list[int]) -> None:
    from cleftgan_hpc.jobspec.kinds.evaluate import EvaluateStage
    from cleftgan_hpc.stages import evaluate, severity

    store = LocalStore(tmp_path / "store")
    cfg = EvaluateStage.model_validate({
        "kind": "evaluate", "network": str(net16), "dataset": str(data16), "metrics": ["dish"], "num_images": 8,
        "dish": {"bins": 5, "images": 6}, "normal_network": str(net16), "severity_index": FAST, "batch": 4,
    })

    def ctx_of(run_id: str) -> StageContext:
        return StageContext(store=store, run_id=run_id, stage="evaluate", scratch=tmp_path / run_id,
                            log=logging.getLogger("test-severity"))

    record = store.get_json(evaluate.run(cfg, ctx_of("e1"))["metrics"])
    assert sum(scored_images) == 7 + 6  # the real set, then the first dish.images generated images
    assert 0 <= record["metrics"]["dish"] <= 1
    assert record["dish"]["scorer"] == "severity_index" and record["dish"]["images"] == 6
    index = record["severity_index"]
    assert index["options"] == cfg.severity_index.model_dump(mode="json") and index["scorer"] == "severity-index"
    assert index["real_scores"] == "computed and cached"
    assert record["models"]["severity_index"] == index["digest"] and "severity_model" not in record["models"]

    scored_images.clear()  # a second evaluation scores only the generated images
    again = store.get_json(evaluate.run(cfg, ctx_of("e2"))["metrics"])
    assert sum(scored_images) == 6 and again["severity_index"]["real_scores"] == "from the cache"
    assert again["metrics"] == record["metrics"]

    scored_images.clear()  # and the severity stage on the same dataset, network and options reuses them too
    sev = severity.run(make_cfg(net16, dataset=str(data16), overlays=0, extremes=0), make_ctx(store, tmp_path, "s"))
    assert scored_images == [] and store.get_json(sev["record"])["cache"] == "hit"


def test_ratings_give_the_agreement_by_photo_name(tmp_path: Path, net16: Path, data16: Path) -> None:
    from cleftgan_hpc.stages.severity import run

    store = LocalStore(tmp_path / "store")
    ctx = make_ctx(store, tmp_path)
    report = tmp_path / "report.json"  # as preprocess writes it: photo name -> dataset image name
    report.write_text(json.dumps({"accepted": [{"file": f"photo{i}.png", "dataset_name": f"00000/img{i:08d}.png"}
                                               for i in range(7)]}))
    ratings = tmp_path / "labels.csv"
    ratings.write_text("file,severity\n" + "".join(f"photo{i}.png,{i % 3}\n" for i in range(6)) + "other.png,1\n")
    outputs = run(make_cfg(net16, dataset=str(data16), ratings=str(ratings), photo_names=str(report)), ctx)
    stats = store.get_json(outputs["agreement"])
    assert stats["pairs"] == 6  # photo6 has no rating; other.png is not in the dataset
    rows = read_csv(store, outputs["scores"])
    from cleftgan_hpc.severity.agreement import spearman

    expected = spearman(np.array([float(r["score"]) for r in rows[:6]]), np.array([i % 3 for i in range(6)], float))
    assert stats["spearman"] == pytest.approx(expected)
    assert Image.open(io.BytesIO(store.get_bytes(outputs["agreement_plot"]))).format == "PNG"
    assert store.get_json(outputs["record"])["agreement"]["pairs"] == 6


def test_photo_names_need_ratings_and_a_dataset(net16: Path, data16: Path) -> None:
    with pytest.raises(ValueError, match="photo_names .* needs ratings and dataset"):
        make_cfg(net16, dataset=str(data16), photo_names="report.json")
