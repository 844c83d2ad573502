"""Image-quality metrics: feature extractors, FID, KID and the real-set statistics cache."""

from cleftgan_hpc.metrics.cache import FeatureStats, FeatureStatsCache
from cleftgan_hpc.metrics.compute import fid_kid, generated_features, uint8_batches
from cleftgan_hpc.metrics.features import (
    FeatureExtractor,
    images_to_uint8,
    load_feature_extractor,
    save_tiny_extractor,
)
from cleftgan_hpc.metrics.fid import fid_from_features, frechet_distance
from cleftgan_hpc.metrics.kid import kid_from_features

__all__ = [
    "FeatureExtractor",
    "FeatureStats",
    "FeatureStatsCache",
    "fid_from_features",
    "fid_kid",
    "frechet_distance",
    "generated_features",
    "images_to_uint8",
    "kid_from_features",
    "load_feature_extractor",
    "save_tiny_extractor",
    "uint8_batches",
]
