"""Data: safe image decoding, FFHQ-style alignment, landmarks, dedupe, the zip dataset and demo faces.

Synthesized datasets (WebDataset shards) are read with ``cleftgan_hpc.synthesis.ShardDataset``.
"""
