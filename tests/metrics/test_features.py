"""Loading feature extractors from files: the tiny stand-in, the Inception calling convention,
and clear errors for missing or wrong files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.metrics.features import (
    INCEPTION_FILENAME,
    INCEPTION_URL,
    TINY_FEATURE_DIM,
    extractor_digest,
    images_to_uint8,
    load_feature_extractor,
    save_tiny_extractor,
)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("extractor") / "tiny.pt"
    save_tiny_extractor(path)
    return path


def images(n: int, seed: int, size: int = 32, c: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_tiny_extractor_loads_like_the_real_one(tiny_path: Path) -> None:
    ext = load_feature_extractor(tiny_path)
    # the module is TorchScript, called with the Inception convention
    assert isinstance(ext.module, torch.jit.ScriptModule)
    feats = ext(images(5, 0))
    assert feats.shape == (5, TINY_FEATURE_DIM) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    # any input size; grey images are expanded to RGB
    assert ext(images(2, 1, size=80)).shape == (2, TINY_FEATURE_DIM)
    grey = images(2, 2, c=1)
    assert torch.equal(ext(grey), ext(grey.expand(-1, 3, -1, -1)))


def test_tiny_extractor_is_deterministic_wherever_it_is_written(tmp_path: Path, tiny_path: Path) -> None:
    other = tmp_path / "elsewhere" / "another-name.pt"
    digest = save_tiny_extractor(other)
    assert digest == extractor_digest(tiny_path)
    assert hashlib.sha256(other.read_bytes()).digest() == hashlib.sha256(tiny_path.read_bytes()).digest()
    x = images(4, 3)
    assert torch.equal(load_feature_extractor(other)(x), load_feature_extractor(tiny_path)(x))
    assert save_tiny_extractor(tmp_path / "seed2.pt", seed=2) != digest


def test_features_separate_different_image_distributions(tiny_path: Path) -> None:
    ext = load_feature_extractor(tiny_path)
    dark = ext.features([images(16, s) // 4 for s in range(2)])
    bright = ext.features([images(16, s + 10) // 4 + 190 for s in range(2)])
    assert dark.shape == (32, TINY_FEATURE_DIM) and dark.dtype == np.float32
    gap = np.linalg.norm(dark.mean(0) - bright.mean(0))
    assert gap > 5 * np.linalg.norm(dark.mean(0) - ext.features([images(32, 99) // 4]).mean(0))


def test_missing_file_says_how_to_stage_it(tmp_path: Path) -> None:
    with pytest.raises(CleftGanError) as err:
        load_feature_extractor(tmp_path / INCEPTION_FILENAME)
    msg = str(err.value)
    assert "does not exist" in msg and INCEPTION_URL in msg and "never downloaded" in msg


def test_not_torchscript_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip archive")
    with pytest.raises(CleftGanError, match="not a TorchScript file"):
        load_feature_extractor(bad)
    with pytest.raises(CleftGanError, match="is a directory"):
        load_feature_extractor(tmp_path)


def test_wrong_input_is_a_clear_error(tiny_path: Path) -> None:
    ext = load_feature_extractor(tiny_path)
    with pytest.raises(CleftGanError, match="uint8"):
        ext(torch.zeros(1, 3, 8, 8))


def test_images_to_uint8_quantises_as_the_reference() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 0.5, 1.0]).view(1, 1, 1, 5)
    assert images_to_uint8(x).flatten().tolist() == [0, 0, 128, 191, 255]


def test_stand_ins_have_one_digest_in_every_process(tmp_path: Path) -> None:
    """The stand-ins' digests key the store's feature cache: two processes with different hash
    seeds (TorchScript writes some things in hash order) must save files with the same digest."""
    import subprocess
    import sys

    code = (
        "import sys; from cleftgan_hpc.metrics.features import save_tiny_extractor; "
        "from cleftgan_hpc.metrics.lpips import save_tiny_lpips; "
        "from cleftgan_hpc.metrics.severity import save_demo_severity_model; d = sys.argv[1]; "
        "print(save_tiny_extractor(d + '/x.pt'), save_tiny_lpips(d + '/l.pt'), save_demo_severity_model(d + '/s.pt'))"
    )
    digests = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / seed)], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        digests.append(out.stdout.split())
    assert len(digests[0]) == 3 and digests[0] == digests[1]
