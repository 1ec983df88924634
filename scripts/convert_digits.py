#!/usr/bin/env python3
"""Writes tests/data/digits/digits.bin from scikit-learn's copy of the UCI optical
handwritten digits (8x8, 1797 images; `sklearn.datasets.load_digits`, shipped inside the
scikit-learn wheel, so no download).

Format: 1797 records of 65 bytes, in load_digits() order: 64 pixel values (0..16, row-major
8x8) then the label (0..9). Used by examples/train_digits.rs.

    pip install scikit-learn && python3 scripts/convert_digits.py
"""
import hashlib
import os

import numpy as np
from sklearn.datasets import load_digits

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "data", "digits", "digits.bin")

d = load_digits()
x = d.data.astype(np.int64)
y = d.target.astype(np.int64)
assert x.shape == (1797, 64) and y.shape == (1797,)
assert x.min() >= 0 and x.max() <= 16 and (x == d.data).all()
rec = np.concatenate([x, y[:, None]], axis=1).astype(np.uint8)
blob = rec.tobytes()
with open(OUT, "wb") as f:
    f.write(blob)
print(f"wrote {OUT}: {len(blob)} bytes, sha256 {hashlib.sha256(blob).hexdigest()}")
