"""Settings shared by every test."""
from __future__ import annotations

import os

# Before numpy/scikit-learn load: OpenMP threads on a busy 2-core machine spin against
# each other (k-means on a few hundred points went from 0.1 s to 5 s per fit).
os.environ.setdefault("OMP_NUM_THREADS", "1")
