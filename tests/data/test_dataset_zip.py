"""The dataset zip: reference layout, byte-identical output, and the reader."""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from cleftgan_hpc.data.dataset import DatasetWriter, archive_name, open_dataset, write_dataset
from cleftgan_hpc.errors import DataError


def images(n: int, res: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (res, res, 3), dtype=np.uint8) for _ in range(n)]


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_names_follow_the_reference_layout():
    assert archive_name(0) == "00000/img00000000.png"
    assert archive_name(999) == "00000/img00000999.png"
    assert archive_name(1000) == "00001/img00001000.png"
    assert archive_name(123456) == "00123/img00123456.png"


def test_byte_identical_for_identical_input(tmp_path):
    ims = images(5)
    a = write_dataset(tmp_path / "a.zip", ims, [0, 1, 2, 1, 0])
    b = write_dataset(tmp_path / "sub" / "b.zip", [Image.fromarray(x) for x in ims], [0, 1, 2, 1, 0])
    assert sha(a) == sha(b)
    assert sha(a) != sha(write_dataset(tmp_path / "c.zip", ims, [0, 1, 2, 1, 1]))
    with zipfile.ZipFile(a) as z:
        infos = z.infolist()
        assert [i.filename for i in infos] == [archive_name(i) for i in range(5)] + ["dataset.json"]
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        meta = json.loads(z.read("dataset.json"))
    assert meta == {"labels": [[archive_name(i), v] for i, v in enumerate([0, 1, 2, 1, 0])]}
    assert not list(tmp_path.glob(".*.tmp"))


def test_reader_int_float_and_no_labels(tmp_path):
    ims = images(3, res=64)
    ds = open_dataset(write_dataset(tmp_path / "i.zip", ims, [2, 0, 1]))
    assert (ds.count, ds.resolution, ds.channels, len(ds)) == (3, 64, 3, 3)
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(ds[1], ims[1])
    assert ds.array().shape == (3, 64, 64, 3) and ds.array("NCHW").shape == (3, 3, 64, 64)

    f = open_dataset(write_dataset(tmp_path / "f.zip", ims, [np.float32(0.5), 0.25, 1.0]))
    assert f.labels.dtype == np.float32 and f.labels.tolist() == [0.5, 0.25, 1.0]
    v = open_dataset(write_dataset(tmp_path / "v.zip", ims, [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]]))
    assert v.labels.shape == (3, 2)
    n = open_dataset(write_dataset(tmp_path / "n.zip", ims))
    assert n.labels is None
    clone = pickle.loads(pickle.dumps(n))  # DataLoader workers get their own zip handle
    np.testing.assert_array_equal(clone[2], ims[2])
    n.close()


def test_greyscale_dataset_has_one_channel(tmp_path):
    grey = [np.full((32, 32), i * 40, dtype=np.uint8) for i in range(2)]
    ds = open_dataset(write_dataset(tmp_path / "g.zip", grey))
    assert ds.channels == 1 and ds[1].shape == (32, 32, 1) and ds[1][0, 0, 0] == 40


def test_writer_and_reader_errors(tmp_path):
    with pytest.raises(DataError, match="earlier ones"), DatasetWriter(tmp_path / "x.zip") as w:
        w.add(images(1, 32)[0])
        w.add(images(1, 64)[0])
    assert not (tmp_path / "x.zip").exists() and not list(tmp_path.iterdir())
    with pytest.raises(DataError, match="square"):
        write_dataset(tmp_path / "y.zip", [np.zeros((32, 16, 3), np.uint8)])
    with pytest.raises(DataError, match="labels for"):
        write_dataset(tmp_path / "z.zip", images(2), [1])
    (tmp_path / "bad.zip").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable dataset"):
        open_dataset(tmp_path / "bad.zip")
    with pytest.raises(DataError, match="not a readable dataset"):
        open_dataset(tmp_path / "missing.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("dataset.json", '{"labels": null}')
    with pytest.raises(DataError, match="no PNG"):
        open_dataset(tmp_path / "empty.zip")
