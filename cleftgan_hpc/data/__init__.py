"""Data: safe image decoding, FFHQ-style alignment, landmarks, dedupe, the zip dataset and demo faces."""
