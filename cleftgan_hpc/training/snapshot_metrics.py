"""FID/KID of G_ema against the training set at each snapshot.

Real-set features are computed once per (dataset, extractor) and cached in the store. The
generated set is the same at every snapshot (z and labels seeded by image index), so changes
in the metric come from the network, not from sampling noise. In a data-parallel job every
rank generates a contiguous slice of that set and rank 0 gathers the features and computes
the values, so a snapshot's metrics take 1/world_size of the time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.metrics import (
    FeatureStatsCache,
    exact_fp32,
    fid_kid,
    generated_features,
    load_feature_extractor,
    save_tiny_extractor,
    uint8_batches,
)
from cleftgan_hpc.seeds import derive_seed
from cleftgan_hpc.storage.base import sha256_file
from cleftgan_hpc.training import distributed
from cleftgan_hpc.training.trainer import TrainData


class SnapshotMetrics:
    """Computes the configured metrics for a generator: call it on every rank (a collective);
    rank 0 gets the values, the others an empty dict."""

    def __init__(
        self,
        names: list[str],
        extractor: str,
        dataset_file: Path,
        data: TrainData,
        num_samples: int,
        seed: int,
        ctx: StageContext,
        device: torch.device,
        batch: int = 32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        self.names, self.data, self.num_samples, self.seed, self.device, self.batch = (
            names,
            data,
            num_samples,
            seed,
            device,
            batch,
        )
        if extractor == "demo":  # the project's own small extractor: no file to stage
            path = ctx.scratch / "demo_extractor.pt"
            save_tiny_extractor(path)
        else:
            path = ctx.fetch(extractor)
        self.extractor = load_feature_extractor(path, device)
        self.real = None
        if rank != 0:  # only rank 0 compares with the real set
            return
        cache = FeatureStatsCache(ctx.store)
        images = data.images.permute(0, 2, 3, 1).numpy()  # [N, H, W, C] uint8, no mirroring: the real set
        with exact_fp32():  # the cache is shared with the evaluate stage: same precision
            self.real, hit = cache.get_or_compute(
                sha256_file(dataset_file),
                self.extractor.digest,
                lambda: self.extractor.features(uint8_batches(iter(images), batch)),
            )
        ctx.log.info(
            f"metrics {names}: real-set features {'from the cache' if hit else 'computed and cached'} "
            f"({self.real.num_items} images), {num_samples} generated images per snapshot"
        )

    @torch.no_grad()
    def __call__(self, G: torch.nn.Module) -> dict[str, float]:
        def generate(start: int, n: int) -> torch.Tensor:
            idx = range(start, start + n)
            z = torch.stack(
                [
                    torch.randn(G.z_dim, generator=torch.Generator().manual_seed(derive_seed("metric-z", self.seed, i)))
                    for i in idx
                ]
            ).to(self.device)
            c = None
            if self.data.labels is not None:
                pick = [derive_seed("metric-c", self.seed, i) % self.data.labels.shape[0] for i in idx]
                c = self.data.labels[pick].to(self.device)
            return G(z, c)

        per_rank = -(-self.num_samples // self.world_size)
        first = min(self.rank * per_rank, self.num_samples)
        count = min(per_rank, self.num_samples - first)
        with exact_fp32():
            mine = generated_features(self.extractor, generate, count, self.batch, first) if count else np.zeros((0, 0))
        feats = distributed.gather_rows(mine, self.world_size)  # images 0 .. num_samples - 1, in order
        if self.real is None:
            return {}
        values = fid_kid(self.real, feats, seed=self.seed)
        return {k: float(values[k]) for k in self.names}
