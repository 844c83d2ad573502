"""Image-quality metrics: FID, KID (feature extractors, real-set statistics cache), PPL (LPIPS) and DISH
(severity histograms), and the saved progress a long evaluation resumes from."""

from cleftgan_hpc.metrics.cache import FeatureStats, FeatureStatsCache
from cleftgan_hpc.metrics.compute import exact_fp32, fid_kid, generated_features, uint8_batches
from cleftgan_hpc.metrics.dish import DishResult, dish
from cleftgan_hpc.metrics.features import (
    FeatureExtractor,
    images_to_uint8,
    load_feature_extractor,
    save_tiny_extractor,
)
from cleftgan_hpc.metrics.fid import fid_from_features, frechet_distance
from cleftgan_hpc.metrics.kid import kid_from_features
from cleftgan_hpc.metrics.lpips import LPIPSNet, load_lpips, save_tiny_lpips
from cleftgan_hpc.metrics.partial import PartialResults
from cleftgan_hpc.metrics.ppl import PPLSettings, path_lengths, ppl_from_lengths
from cleftgan_hpc.metrics.severity import SeverityModel, load_severity_model, save_demo_severity_model

__all__ = [
    "DishResult",
    "FeatureExtractor",
    "FeatureStats",
    "FeatureStatsCache",
    "fid_from_features",
    "fid_kid",
    "frechet_distance",
    "generated_features",
    "images_to_uint8",
    "dish",
    "exact_fp32",
    "kid_from_features",
    "load_feature_extractor",
    "load_lpips",
    "load_severity_model",
    "LPIPSNet",
    "PartialResults",
    "path_lengths",
    "PPLSettings",
    "ppl_from_lengths",
    "save_demo_severity_model",
    "save_tiny_extractor",
    "save_tiny_lpips",
    "SeverityModel",
    "uint8_batches",
]
