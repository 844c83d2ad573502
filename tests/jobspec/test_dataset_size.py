"""max_images larger than the dataset: refused at validate time where the spec tells the size."""

from __future__ import annotations

import textwrap
import zipfile
from pathlib import Path

import pytest

from cleftgan_hpc.errors import SpecError
from cleftgan_hpc.jobspec import dataset_size
from cleftgan_hpc.jobspec.load import parse_spec

DEMO = """\
name: x
stages:
  faces:
    kind: demo_data
    count: 48
  dataset:
    kind: preprocess
    images: stage:faces.images
    resolution: 32
  train:
    kind: finetune
    network: random
    dataset: stage:dataset
    grid:
      max_images: [24, 100, null]
"""


def load(text: str, base: Path | None = None):  # noqa: ANN201
    return parse_spec(textwrap.dedent(text), file="job.yaml", env={}, base_dir=base)


def problems(text: str, base: Path | None = None) -> list:
    with pytest.raises(SpecError) as info:
        load(text, base)
    return info.value.problems


def dataset_zip(path: Path, images: int) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(images):
            zf.writestr(f"00000/img{i:08d}.png", b"png")
        zf.writestr("dataset.json", '{"labels": null}')
    return path


def test_more_than_a_demo_data_stage_draws_is_refused_at_the_grid_value() -> None:
    (p,) = problems(DEMO)
    assert (p.file, p.line, p.col, p.field) == ("job.yaml", 15, 24, "stages.train[100].max_images")
    assert p.message == ("max_images 100 is more than the 48 images that stage 'dataset' can make from the 48 faces "
                         "of demo_data stage 'faces'; use at most 48, or null for all of them")
    assert load(DEMO.replace("100", "48")).spec  # as many as there are: fine


def test_the_demo_default_count_is_the_models() -> None:
    (p,) = problems(DEMO.replace("    count: 48\n", "").replace("100", "65"))
    assert "the 64 faces" in p.message
    load(DEMO.replace("    count: 48\n", "").replace("100", "64"))


def test_a_local_dataset_zip_is_counted(tmp_path: Path) -> None:
    dataset_zip(tmp_path / "data.zip", 5)
    text = """\
    name: x
    stages:
      train:
        kind: finetune
        network: random
        dataset: data.zip
        max_images: 6
      tune:
        kind: sweep
        network: random
        dataset: data.zip
        feature_extractor: demo
        base:
          max_images: 7
        space: {glr: {choice: [0.002]}}
    """
    found = {p.field: p for p in problems(text, tmp_path)}
    assert set(found) == {"stages.train.max_images", "stages.tune.base.max_images"}
    assert found["stages.train.max_images"].line == 7
    assert "max_images 6 is more than the 5 images of the dataset data.zip" in found["stages.train.max_images"].message
    assert found["stages.tune.base.max_images"].line == 14
    load(text.replace("6", "5").replace("max_images: 7", "max_images: 5"), tmp_path)


def test_a_folder_of_photos_bounds_what_preprocess_makes(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "a").mkdir(parents=True)
    for name in ("a/1.jpg", "2.PNG", "3.webp", "notes.txt", "a/4.csv"):
        (photos / name).write_bytes(b"x")
    text = """\
    name: x
    stages:
      dataset:
        kind: preprocess
        images: photos
      train:
        kind: finetune
        network: random
        dataset: stage:dataset.dataset
        max_images: 4
    """
    (p,) = problems(text, tmp_path)
    assert p.line == 10 and "more than the 3 images that stage 'dataset' can make from the 3 photos in" in p.message
    load(text.replace("max_images: 4", "max_images: 3"), tmp_path)


def test_a_size_the_spec_cannot_tell_is_left_to_the_stage(tmp_path: Path) -> None:
    text = """\
    name: x
    stages:
      a:
        kind: finetune
        network: random
        dataset: store:datasets/cleft.zip
        max_images: 100000
      b:
        kind: finetune
        network: random
        dataset: missing.zip
        max_images: 100000
      c:
        kind: finetune
        network: random
        dataset: stage:a.network
        max_images: 100000
      d:
        kind: preprocess
        images: store:photos
      e:
        kind: finetune
        network: random
        dataset: stage:d
        max_images: 100000
    """
    load(text, tmp_path)


def test_a_large_folder_is_not_walked_past_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(30):
        (tmp_path / f"{i}.txt").write_bytes(b"")
    (tmp_path / "one.jpg").write_bytes(b"")
    monkeypatch.setattr(dataset_size, "MAX_ENTRIES_SCANNED", 10)
    assert dataset_size._photos(tmp_path, 5) is None  # unknown, so not refused
    monkeypatch.setattr(dataset_size, "MAX_ENTRIES_SCANNED", 1000)
    assert dataset_size._photos(tmp_path, 5) == 1
    assert dataset_size._photos(tmp_path, 1) == 1  # stops once it has found enough


def test_photo_suffixes_are_what_preprocess_reads() -> None:
    from cleftgan_hpc.data.images import IMAGE_SUFFIXES

    assert dataset_size.PHOTO_SUFFIXES == IMAGE_SUFFIXES
