"""Train the SAEs that ship with the embedded models (``saegeo train-saes``).

The demo needs SAEs whose decoder directions are clearly not random, and that takes millions
of tokens - far more than a first ``make demo`` can afford on two CPU cores. So the SAEs are
trained once with this command and their weights ship in the repository
(``precompute/embedded_saes/<model>/<hook>/``, sae-lens format, float16 safetensors);
``make demo`` then spends its minutes on statistics. Anyone can rebuild them:

    saegeo train-saes --model smollm2          # about an hour on two CPU cores
    saegeo train-saes --model gemma3-270m

Stages, each checkpointed in ``<out>.partial/`` so ``--resume`` continues after any
interruption: tokenize the embedded corpus, holding back one document in ``holdout_every``;
capture the residual stream of every layer in bfloat16 (the model's own precision here);
train one TopK SAE per layer with sae-lens' trainer (its state saved ``n_checkpoints`` times);
measure each SAE on the held-back documents; write the folders and swap them in atomically.

Quality recorded per SAE (``training.json`` beside ``cfg.json``): explained variance, L0 and
dead features on held-back text, and the median cosine between each feature's decoder row
and its nearest other row, against random unit directions of the same shape.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, Field

from precompute.corpus import open_corpus, tokenize_corpus
from precompute.errors import PrecomputeError
from precompute.models import embedded_name, hook_name, load_model

EMBEDDED_SAES = Path(__file__).resolve().parent / "embedded_saes"

# Matching relative depths (about 0.28, 0.5 and 0.67 of the stack) in both models, so that
# the cross-model comparisons pair like with like; Gemma's are layers with public Gemma Scope 2
# SAEs (5, 9, 12), so a user with the Hub can compare ours against Google's.
DEFAULT_LAYERS = {"smollm2": [8, 15, 20], "gemma3-270m": [5, 9, 12]}


def shipped_saes(model: str) -> list[Path]:
    """Folders of the SAEs shipped with embedded model ``model``, shallowest layer first."""
    folder = EMBEDDED_SAES / (embedded_name(model) or model)
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if (p / "cfg.json").is_file() and (p / "training.json").is_file()),
                  key=lambda p: int(p.name.split(".")[1]))


class TrainSAEsConfig(BaseModel):
    """How the embedded SAEs are trained (serialised into each SAE's ``training.json``)."""

    model: str = "smollm2"
    layers: list[int] = Field(default_factory=list)   # [] = DEFAULT_LAYERS of an embedded model
    corpus: str = "default"
    n_tokens: int = 2_000_000       # training tokens per SAE (BOS excluded)
    epochs: float = 1.0             # passes over them
    eval_tokens: int = 65_536       # held-back tokens on which quality is measured
    holdout_every: int = 20         # one document in 20 (seeded random) is held back
    seq_len: int = 1024             # tokens per document after BOS
    width: int = 4096               # features F
    k: int = 32                     # active features per token (TopK)
    batch_size: int = 1024          # samples per optimiser step
    lr: float | None = None         # None: 6e-4 / sqrt(F / 2^14) (train_sae's default)
    dtype: str = "auto"             # model forward precision (auto: bf16 where native)
    autocast: bool | None = None    # bf16 autocast in the SAE trainer (None: when dtype is bf16)
    forward_batch: int = 8          # documents per forward pass
    n_checkpoints: int = 8          # trainer checkpoints per SAE
    seed: int = 0                   # SAE initialisation and sample order (layer L uses seed + L)
    split_seed: int = 0             # which documents are held back; fixed, so that SAEs trained
                                    # with two seeds see the same training text
    out: Path | None = None         # None: precompute/embedded_saes/<model>
    resume: bool = False
    progress: bool = True

    def resolved_layers(self) -> list[int]:
        if self.layers:
            return sorted(self.layers)
        name = embedded_name(self.model)
        if name is None:
            raise PrecomputeError(f"--layers is required for {self.model!r} (defaults exist only for "
                                  f"the embedded models {sorted(DEFAULT_LAYERS)})")
        return DEFAULT_LAYERS[name]

    def out_dir(self) -> Path:
        return Path(self.out) if self.out else EMBEDDED_SAES / (embedded_name(self.model) or
                                                                self.model.replace("/", "--"))


def _log(cfg: TrainSAEsConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[saegeo train-saes] {msg}", file=sys.stderr, flush=True)


def nearest_cosine(W: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """For each row of ``W`` [F, d], the largest cosine to any other row."""
    U = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    U = U.astype(np.float32)
    best = np.empty(len(U), dtype=np.float32)
    for i in range(0, len(U), chunk):
        c = U[i:i + chunk] @ U.T
        c[np.arange(len(c)), np.arange(i, i + len(c))] = -np.inf
        best[i:i + chunk] = c.max(1)
    return best


def direction_quality(W: np.ndarray, seed: int = 0) -> dict:
    """Median nearest-other-row cosine of ``W`` and of random Gaussian directions of the same
    shape; their ratio says how far the decoder is from random (1.0 = indistinguishable)."""
    med = float(np.median(nearest_cosine(W)))
    R = np.random.default_rng(seed).standard_normal(W.shape).astype(np.float32)
    rnd = float(np.median(nearest_cosine(R)))
    return {"nn_cos_median": med, "nn_cos_median_random": rnd, "nn_cos_ratio": med / rnd}


def held_back(n_docs: int, holdout_every: int = 20, seed: int = 0) -> np.ndarray:
    """Which of the first ``n_docs`` corpus documents are held back from training: a seeded
    random choice of one in ``holdout_every`` (its first entries do not depend on ``n_docs``,
    so a test can find the held-back documents among the first few). Not every n-th
    document: the corpus interleaves its subsets in turn, so a stride would hold back one
    subset only."""
    return np.random.default_rng(seed).random(n_docs) < 1.0 / holdout_every


def _split(cfg: TrainSAEsConfig, lm, work: Path):
    """Tokenized training and held-back documents (cached in the work folder)."""
    path = work / "tokens.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    need = int(max(cfg.n_tokens * cfg.holdout_every / (cfg.holdout_every - 1), cfg.eval_tokens * cfg.holdout_every) * 1.1)
    tc = tokenize_corpus(open_corpus(cfg.corpus), lm.tokenize, seq_len=cfg.seq_len, max_tokens=need,
                         progress=cfg.progress)
    held = held_back(tc.n_docs, cfg.holdout_every, cfg.split_seed)
    lens = tc.lengths()
    out = {}
    for name, mask, budget in (("train", ~held, cfg.n_tokens), ("eval", held, cfg.eval_tokens)):
        docs = np.flatnonzero(mask)
        keep = docs[: int(np.searchsorted(np.cumsum(lens[docs]), budget)) + 1]
        if lens[keep].sum() < budget:
            raise PrecomputeError(f"the corpus has only {int(lens[keep].sum())} {name} tokens, "
                                  f"{budget} needed; lower --n-tokens or use a larger --corpus")
        out[f"{name}_docs"] = keep
    out.update(tokens=tc.tokens, offsets=tc.offsets, subset_ids=tc.subset_ids,
               subsets=np.array(json.dumps(tc.subsets)))
    tmp = path.with_name(".tokens.tmp.npz")
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def _capture(cfg, lm, split, layers, work: Path, part: str, budget: int) -> dict[int, np.ndarray]:
    """Residual-stream activations of the ``part`` documents at each layer, as bfloat16 bits
    in int16 ``.npy`` memmaps [budget, d] (resumable per forward batch)."""
    docs = split[f"{part}_docs"]
    offsets, tokens = split["offsets"], split["tokens"]
    hooks = [hook_name(L) for L in layers]
    prog = work / f"{part}_progress.json"
    done = json.loads(prog.read_text())["docs"] if prog.is_file() else 0
    mode = "r+" if prog.is_file() else "w+"
    mm = {L: np.lib.format.open_memmap(work / f"{part}_{L}.npy", mode=mode, dtype=np.int16,
                                       shape=(budget, lm.d_model)) for L in layers}
    from tqdm.auto import tqdm

    lens = offsets[docs + 1] - offsets[docs]
    pos = int(min(lens[:done].sum(), budget))
    bar = tqdm(total=budget, initial=pos, desc=f"capture {part}", unit="tok", unit_scale=True,
               disable=not cfg.progress, dynamic_ncols=True)
    i = done
    while i < len(docs) and pos < budget:
        batch = docs[i:i + cfg.forward_batch]
        blens = lens[i:i + cfg.forward_batch]
        ids = np.full((len(batch), int(blens.max()) + 1), lm.bos_token_id, dtype=np.int64)
        for r, j in enumerate(batch):
            ids[r, 1:blens[r] + 1] = tokens[offsets[j]:offsets[j + 1]]
        acts = lm.capture(torch.from_numpy(ids), hooks)
        for L, h in zip(layers, hooks):
            flat = torch.cat([acts[h][r, 1:int(n) + 1] for r, n in enumerate(blens)])[: budget - pos]
            mm[L][pos:pos + len(flat)] = flat.to(torch.bfloat16).view(torch.int16).cpu().numpy()
        pos += int(min(blens.sum(), budget - pos))
        i += len(batch)
        bar.update(int(min(blens.sum(), bar.total - bar.n)))
        if i % (cfg.forward_batch * 10) == 0 or pos >= budget:
            for m in mm.values():
                m.flush()
            tmp = prog.with_name(f".{prog.name}.tmp")
            tmp.write_text(json.dumps({"docs": i}))
            os.replace(tmp, prog)
    bar.close()
    return mm


def _bf16(mm: np.ndarray) -> torch.Tensor:
    """The int16 memmap read into RAM as the bfloat16 tensor it stores."""
    return torch.from_numpy(np.ascontiguousarray(mm)).view(torch.bfloat16)


def run_train_saes(cfg: TrainSAEsConfig) -> Path:
    """Train, measure and write the SAEs of ``cfg``; returns the output folder."""
    from precompute.saes import reconstruction_metrics, save_sae, train_sae

    t0 = time.time()
    layers = cfg.resolved_layers()
    out = cfg.out_dir()
    work = out.with_name(out.name + ".partial")
    ident = json.dumps(cfg.model_dump(mode="json", exclude={"resume", "progress", "out"}), sort_keys=True)
    if work.exists():
        prev = (work / "config.json").read_text() if (work / "config.json").is_file() else None
        if not cfg.resume or prev != ident:
            if cfg.resume and prev is not None:
                raise PrecomputeError(f"{work} holds a run with other settings; resume with the same "
                                      f"settings, or delete that folder to start over")
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(ident)
    lm = load_model(cfg.model, dtype=cfg.dtype)
    for L in layers:
        if not 0 <= L < lm.n_layers:
            raise PrecomputeError(f"layer {L} is outside {lm.name} (layers 0..{lm.n_layers - 1})")
    autocast = cfg.autocast if cfg.autocast is not None else lm.dtype == torch.bfloat16
    _log(cfg, f"{lm.name} in {str(lm.dtype).removeprefix('torch.')} on {lm.device}; layers {layers}; "
              f"width {cfg.width}, k {cfg.k}, {cfg.n_tokens} tokens each")
    split = _split(cfg, lm, work)
    train = _capture(cfg, lm, split, layers, work, "train", cfg.n_tokens)
    held = _capture(cfg, lm, split, layers, work, "eval", cfg.eval_tokens)
    subsets = json.loads(str(split["subsets"]))
    for L in layers:
        final = work / "saes" / hook_name(L)
        if (final / "training.json").is_file():
            continue
        _log(cfg, f"training layer {L}")
        t = time.time()
        acts = _bf16(train[L])
        s = train_sae(acts, hook_name(L), model_name=lm.name, width=cfg.width, k=cfg.k,
                      n_samples=int(cfg.epochs * cfg.n_tokens), batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed + L,
                      device=lm.device, progress=cfg.progress, autocast=autocast,
                      checkpoint_dir=work / "ckpt" / str(L), n_checkpoints=cfg.n_checkpoints,
                      metrics_tokens=cfg.eval_tokens)
        del acts
        quality = reconstruction_metrics(s.sae, _bf16(held[L]), threshold=0.0)
        quality = {f"heldout_{k}": v for k, v in quality.items()}
        quality.update(direction_quality(s.decoder(), seed=cfg.seed))
        s.sae.to(dtype=torch.float16)
        s.sae.cfg.dtype = "float16"   # half-precision weights keep the shipped files small
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_sae(s, tmp)
        training = {**s.training, "model": lm.name, "model_source": lm.source,
                    "model_dtype": str(lm.dtype).removeprefix("torch."), "hook_tensor": lm.hooks["resid_post"],
                    "corpus": cfg.corpus, "corpus_subsets": subsets, "seconds": round(time.time() - t),
                    "config": json.loads(ident)}
        (tmp / "training.json").write_text(json.dumps({"training": training, "metrics": {**s.metrics, **quality}},
                                                      indent=1))
        shutil.rmtree(final, ignore_errors=True)
        final.parent.mkdir(exist_ok=True)
        os.replace(tmp, final)
        shutil.rmtree(work / "ckpt" / str(L), ignore_errors=True)
        _log(cfg, f"layer {L}: held-out explained variance {quality['heldout_explained_variance']:.3f}, "
                  f"L0 {quality['heldout_l0']:.1f}, dead {quality['heldout_dead_features']}, nearest-cosine "
                  f"median {quality['nn_cos_median']:.3f} vs random {quality['nn_cos_median_random']:.3f} "
                  f"({quality['nn_cos_ratio']:.2f}x), {time.time() - t:.0f} s")
    # swap the finished set in at once; the old one is removed only after the rename
    new = out.with_name(f".{out.name}.new")
    shutil.rmtree(new, ignore_errors=True)
    shutil.copytree(work / "saes", new)
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(new, out)
    shutil.rmtree(old, ignore_errors=True)
    del train, held
    shutil.rmtree(work, ignore_errors=True)
    _log(cfg, f"SAEs written to {out} in {time.time() - t0:.0f} s")
    return out
