"""Quality of the SAEs shipped with the embedded models against the previous demo's recipe.

"after": the shipped SAEs (``precompute/embedded_saes``), as recorded in their
``training.json`` (held-back explained variance, L0, dead features) and re-measured here for
the decoder geometry: the median cosine of each feature's nearest other decoder row, against
random unit directions of the same shape (ratio 1.0 = indistinguishable from random).

"before": SAEs trained in this run with the recipe the demo used before (64,000 tokens,
width 2,048, k = 32, 2.5 epochs, batch 256) on the same model and layers, through the same
``saegeo train-saes`` machinery, measured on the same kind of held-back documents.

    python bench/bench_sae_quality.py                 # both models (about 10 min on 2 cores)
    python bench/bench_sae_quality.py --quick         # SmolLM2, one layer
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from precompute.models import hook_name  # noqa: E402
from precompute.saes import load_sae  # noqa: E402
from precompute.train_saes import (DEFAULT_LAYERS, EMBEDDED_SAES, TrainSAEsConfig,  # noqa: E402
                                   direction_quality, run_train_saes)

BEFORE = dict(n_tokens=64_000, epochs=2.5, width=2048, k=32, batch_size=256)


def _row(tag: str, L: int, rec: dict, q: dict) -> str:
    m = rec["metrics"]
    return (f"  {tag:6s} layer {L:2d}  tokens {rec['training']['n_train_tokens']:>9,d}  width {rec['training']['width']:5d}"
            f"  EV {m['heldout_explained_variance']:.3f}  L0 {m['heldout_l0']:5.1f}  dead {m['heldout_dead_features']:4d}"
            f"  nn-cos {q['nn_cos_median']:.3f} vs random {q['nn_cos_median_random']:.3f} = {q['nn_cos_ratio']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="SmolLM2, one layer")
    args = ap.parse_args()
    models = {"smollm2": DEFAULT_LAYERS["smollm2"][1:2]} if args.quick else DEFAULT_LAYERS
    for model, layers in models.items():
        print(f"== {model}")
        with tempfile.TemporaryDirectory() as tmp:
            before_dir = run_train_saes(TrainSAEsConfig(model=model, layers=layers, out=Path(tmp) / "before",
                                                        progress=False, eval_tokens=16_384, **BEFORE))
            for L in layers:
                after = EMBEDDED_SAES / model / hook_name(L)
                b = before_dir / hook_name(L)
                qa = direction_quality(load_sae(after).decoder())
                qb = direction_quality(load_sae(b).decoder())
                ra = json.loads((after / "training.json").read_text())
                rb = json.loads((b / "training.json").read_text())
                print(_row("before", L, rb, qb))
                print(_row("after", L, ra, qa))
                print(f"  ratio after/before: nn-cos {qa['nn_cos_ratio'] / qb['nn_cos_ratio']:.2f}x, EV "
                      f"{ra['metrics']['heldout_explained_variance'] - rb['metrics']['heldout_explained_variance']:+.3f}")


if __name__ == "__main__":
    main()
