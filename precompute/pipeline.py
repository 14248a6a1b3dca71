"""The precompute pipeline: model + corpus + SAEs -> an atlas of raw statistics (METHODS 1-2 in docs/methods.md).

``run_precompute(PrecomputeConfig(...))`` runs, in order (each stage checkpointed into the
work directory ``<out>.partial/`` so ``resume=True`` continues after any interruption,
SIGKILL included, with results identical to an uninterrupted run):

1. tokenize the corpus (``tokens.npz``);
2. when no SAE is given: capture the hooked activations of the first ``train_tokens``
   tokens (``train/acts_<L>.npy``) and train one TopK SAE per layer with sae-lens
   (``saes/<L>/``);
3. the statistics pass, in shards of ``shard_batches`` batches: every batch of documents
   through the model (the batches captured in 2. are read back instead of recomputed), the
   SAE encodes each layer, and ``precompute.cooccur.LayerStats`` accumulates firing,
   co-occurrence, histograms, contexts and tokens; each shard's partial is saved in
   ``shards/`` (inside a shard ``stats.pt`` is replaced atomically every ``checkpoint_every``
   batches) and the partials are merged exactly in shard order. With ``ray`` set the shards
   run on a Ray cluster (``precompute.distributed``), giving the same atlas;
4. word-pair hidden states at the last token of each word (METHODS 2);
5. the atlas is written through ``analysis.atlas.AtlasWriter`` (temporary sibling, atomic
   rename) and the work directory removed;
6. the geometry stage (``analysis.stage.run_geometry``) runs on it when available;
7. when ``latent`` is set, the latent-geometry stage (``precompute.latent.run_latent``,
   METHODS 4) adds ``latent/`` with the model still loaded (one atomic update).

Every user mistake raises ``PrecomputeError`` with a one-line message before anything is
written to ``out``.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from tqdm.auto import tqdm

from precompute.corpus import TokenizedCorpus, open_corpus, tokenize_corpus
from precompute.distributed import RaySettings
from precompute.errors import PrecomputeError
from precompute.models import LoadedModel, hook_name, load_model, parse_hook
from precompute.saes import LoadedSAE, check_fit, load_sae, save_sae, train_sae
from precompute.train_saes import EMBEDDED_SAES, shipped_saes

__all__ = ["PrecomputeConfig", "PrecomputeError", "PROFILES", "run_precompute"]

# Profile values fill every field the caller did not set explicitly.
PROFILES: dict[str, dict[str, Any]] = {
    # tests: about a minute on two CPU cores
    "tiny": dict(layers=[2, 5], max_tokens=12_000, train_tokens=12_000, seq_len=256, block_size=64,
                 sae_width=512, sae_k=16, train_epochs=6, batch_size=8, checkpoint_every=4,
                 eval_tokens=4096, max_stored_blocks=2_000,
                 geometry_config=dict(ks=[2, 4, 8, 16], n_permutations=20, n_random=10,
                                      entropy_samples=512, entropy_bootstrap=5)),
    # first run of `make demo`: the SAEs shipped with the embedded model (trained once on 2M
    # tokens by `saegeo train-saes`), statistics over 512k tokens in 256-token blocks as
    # published. Measured for SmolLM2 on two busy CPU cores: the atlas is written 410 s after
    # the start (statistics at ~1.4k tokens/s), then the geometry adds about 4 minutes per
    # layer (4,096 features) while the explorer already shows the atlas
    "demo": dict(saes=["embedded"], max_tokens=512_000, seq_len=1024, block_size=256, batch_size=8,
                 checkpoint_every=10, eval_tokens=65_536,
                 # latent geometry at its defaults: 64 documents x 512 positions, a few minutes
                 latent=True,
                 # k-means for k up to 1024 on 4,096 features alone takes longer than the
                 # whole budget, and k > 128 leaves a handful of features per lobe at this width
                 # two random crystal draws (not three): a z per threshold at ~1.5 min per draw and layer
                 geometry_config=dict(ks=[2, 3, 4, 8, 16, 32, 64, 128], n_random=20,
                                      crystal_baseline_repeats=2)),
    # the published P1 lobe setup (docs/methods.md, METHODS 1), for a machine with a GPU and
    # the Hugging Face Hub: Gemma-2-2B with Gemma Scope's canonical 16k SAE of layer 12, the
    # first 50,000 documents of the uncopyrighted Pile, 1,024 tokens with BOS, BOS dropped,
    # 256-token blocks, threshold 1, all eleven k with ten k-means restarts each (sklearn's
    # default, which the published code used), every other setting at the published default
    "published": dict(model="google/gemma-2-2b", saes=["gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"],
                      corpus="hf:monology/pile-uncopyrighted", max_docs=50_000, max_tokens=None, seq_len=1024,
                      seq_len_includes_bos=True, block_size=256, threshold=1.0, word_pair_layer="hidden_states",
                      geometry_config=dict(ks=[2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024], n_init_large_k=None)),
    # the published galaxy (METHODS 3): the 65k canonical SAEs of all 26 layers; the spectra and
    # entropy need only the decoders, so the corpus pass is short (cards) and the F x F lobe
    # analysis, which the paper ran at 16k only, is left to the profile above
    "published-galaxy": dict(model="google/gemma-2-2b",
                             saes=[f"gemma-scope-2b-pt-res-canonical/layer_{L}/width_65k/canonical" for L in range(26)],
                             corpus="hf:monology/pile-uncopyrighted", max_docs=2_000, max_tokens=None, seq_len=1024,
                             seq_len_includes_bos=True, block_size=256, threshold=1.0, word_pairs=False,
                             geometry_config=dict(crystals=False, umap=False, max_brain_features=0)),
}


class PrecomputeConfig(BaseModel):
    """Everything that determines an atlas. Field names are the CLI options.

    Unknown fields are refused (a mistyped setting must not be ignored), and the nested
    ``geometry_config`` / ``latent_config`` are checked against their stages' configs here,
    before any model is loaded.
    """
    model_config = ConfigDict(extra="forbid")

    model: str = "smollm2"                  # "smollm2" / "gemma3-270m" (embedded), a Hub id, or a folder
    # sae-lens "release/sae_id" or folders; ["embedded"] = the SAEs shipped with an embedded
    # model; [] = train here
    saes: list[str] = Field(default_factory=list)
    layers: list[int] = Field(default_factory=list)  # [] with saes: the SAEs' own layers
    corpus: str = "default"                 # "default", a file/folder, or "hf:NAME[:CONFIG:SPLIT]"
    text_field: str = "text"
    subset_field: str | None = None         # dotted path; None: meta.pile_set_name when present
    max_tokens: int | None = 64_000          # tokens in the statistics pass (BOS excluded)
    max_docs: int | None = None
    seq_len: int = 1024                     # tokens per document (published: 1024, BOS included)
    # published: the 1,024 include BOS, so a long document has 1,023 tokens after it and 3 full
    # 256-token blocks; False counts seq_len after BOS (4 blocks)
    seq_len_includes_bos: bool = True
    # which hidden state of "layer L" the word pairs take: hidden_states = Hugging Face's
    # hidden_states[L], the residual stream entering block L (published; L = 0 is the
    # embedding output); sae_hook = the SAE's own hook (resid_post of block L)
    word_pair_layer: Literal["hidden_states", "sae_hook"] = "hidden_states"
    block_size: int = 256                   # co-occurrence block (published: 256)
    threshold: float | None = None          # None: by the SAE's architecture (threshold_rule)
    sae_width: int = 2048
    sae_k: int = 32
    train_tokens: int = 64_000
    train_epochs: float = 2.5
    train_batch_size: int = 256
    eval_tokens: int = 16_384               # tokens on which explained variance is measured
    max_stored_blocks: int = 20_000
    # co-occurrence of layers wider than cooc_wide_from: each feature's cooc_topk top partners
    # (exact counts) formed at the end from the blocks' presences, in bounded memory; the full C
    # grows with its co-occurring pairs (precompute.cooccur). None: geometry_config's wide_from
    # (16,384), filled in here so the manifest records the number; never below it, as the
    # dense geometry path needs the full C.
    cooc_wide_from: int | None = Field(None, ge=0)
    cooc_topk: int = Field(32, ge=1)
    device: str = "auto"
    # model forward precision: auto = bfloat16 on CUDA and on CPUs with native bf16, float32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int | None = None              # torch CPU threads (None: torch's default)
    batch_size: int = 8                     # documents per forward pass
    checkpoint_every: int = 10              # batches between checkpoints
    # batches per statistics shard: the unit a Ray worker computes (and redoes when it fails)
    # and the merge adds up; the atlas is the same for any value (precompute.cooccur merge)
    shard_batches: int = Field(64, ge=1)
    # run the statistics pass on a Ray cluster: "auto", "local", an address, or RaySettings
    # fields; None = in this process. Same atlas either way (precompute.distributed)
    ray: RaySettings | None = None
    out: Path = Path("atlases/demo")
    overwrite: bool = False
    profile: Literal["tiny", "demo", "published", "published-galaxy"] | None = None
    resume: bool = False
    seed: int = 0
    word_pairs: bool = True
    geometry: bool = True
    geometry_config: dict[str, Any] = Field(default_factory=dict)  # GeometryConfig overrides
    latent: bool = False                    # the latent-geometry stage (METHODS 4); on in the demo profile
    latent_config: dict[str, Any] = Field(default_factory=dict)    # LatentConfig overrides
    progress: bool = True

    @field_validator("ray", mode="before")
    @classmethod
    def _ray_address(cls, v: Any) -> Any:
        return {"address": v} if isinstance(v, str) else v

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("profile"):
            if data["profile"] not in PROFILES:
                raise ValueError(f"unknown profile {data['profile']!r}; use one of {sorted(PROFILES)}")
            given = {k: v for k, v in data.items() if v is not None}
            return {**PROFILES[data["profile"]], **given}
        return data

    @model_validator(mode="after")
    def _check_stage_configs(self) -> "PrecomputeConfig":
        from analysis.stage import GeometryConfig
        from precompute.latent import LatentConfig

        for name, stage in (("geometry_config", GeometryConfig), ("latent_config", LatentConfig)):
            try:
                stage(**getattr(self, name))
            except ValidationError as e:
                raise ValueError("; ".join(
                    ".".join([name, *(str(x) for x in err["loc"])]) + ": "
                    + ("unknown setting" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, "))
                    for err in e.errors())) from None
        wide_from = GeometryConfig(**self.geometry_config).wide_from
        if self.cooc_wide_from is None:
            self.cooc_wide_from = wide_from
        if self.geometry and self.cooc_wide_from < wide_from:
            raise ValueError(f"cooc_wide_from ({self.cooc_wide_from}) is below geometry_config.wide_from "
                             f"({wide_from}): layers between would keep top co-occurrence partners only, "
                             "which the dense geometry path cannot use; lower geometry_config.wide_from too")
        return self

    def resolved(self) -> dict:
        """Every setting as run, the stages' own defaults filled in (``--print-config``)."""
        from analysis.stage import GeometryConfig
        from precompute.latent import LatentConfig

        out = self.model_dump(mode="json")
        out["geometry_config"] = GeometryConfig(**self.geometry_config).model_dump(mode="json")
        out["latent_config"] = LatentConfig(**self.latent_config).model_dump(mode="json")
        return out

    def doc_tokens(self) -> int:
        """Tokens kept per document after BOS (every sequence gets a BOS first)."""
        return self.seq_len - 1 if self.seq_len_includes_bos else self.seq_len

    def work_dir(self) -> Path:
        out = Path(self.out).expanduser().resolve()
        return out.with_name(out.name + ".partial")

    def identity(self) -> dict:
        """The settings a checkpoint must agree with to be resumed."""
        return self.model_dump(mode="json", exclude={"resume", "out", "overwrite", "progress", "profile",
                                                     "geometry", "checkpoint_every", "threads", "ray",
                                                     "latent", "latent_config"})


# ---------------------------------------------------------------------- helpers


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _progress(work: Path, model: str, stage: str, done: int | None = None, total: int | None = None) -> None:
    """``<out>.partial/progress.json``: what a running build is doing, for the explorer to show."""
    atomic_write_bytes(work / "progress.json", json.dumps(
        {"model": model, "stage": stage, "done": done, "total": total, "updated": time.time()}).encode())


def _log(cfg: PrecomputeConfig, msg: str) -> None:
    if cfg.progress:
        print(f"[saegeo precompute] {msg}", file=sys.stderr, flush=True)


def _bar(cfg: PrecomputeConfig, total: int, desc: str, initial: int = 0, unit: str = "tok"):
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=True,
                disable=not cfg.progress, dynamic_ncols=True)


def _check_disk(cfg: PrecomputeConfig, d_model: int, n_layers: int, width: int, train: bool) -> None:
    """Refuse to start when the disk obviously cannot hold the work files and the atlas."""
    out = Path(cfg.out).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    need = 0
    if train:
        need += cfg.train_tokens * d_model * 4 * n_layers          # captured training activations
    need += n_layers * width * (width * 12 // 4 + d_model * 4 * 3)  # co-occurrence (sparse) + decoders
    need += n_layers * width * 64 * 8 * 2                          # histograms, counts, state
    need = int(need * 1.5) + (200 << 20)
    free = shutil.disk_usage(out.parent).free
    if free < need:
        raise PrecomputeError(f"not enough disk space in {out.parent}: about {need / 2**30:.1f} GiB needed, "
                              f"{free / 2**30:.1f} GiB free; free space or choose another --out")


def _batches(tc: TokenizedCorpus, batch_size: int) -> list[tuple[int, int]]:
    """Document ranges [start, stop) of the forward batches, in corpus order."""
    return [(i, min(i + batch_size, tc.n_docs)) for i in range(0, tc.n_docs, batch_size)]


def _batch_ids(tc: TokenizedCorpus, start: int, stop: int, bos: int):
    """[N, T + 1] token ids with BOS first, right-padded; and lengths (BOS excluded)."""
    lens = tc.lengths()[start:stop]
    T = int(lens.max())
    ids = np.full((stop - start, T + 1), bos, dtype=np.int64)
    for r, j in enumerate(range(start, stop)):
        ids[r, 1:lens[r] + 1] = tc.tokens[tc.offsets[j]:tc.offsets[j + 1]]
    return torch.from_numpy(ids), torch.from_numpy(lens.astype(np.int64))


def _flat(h: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Valid positions of [N, T + 1, d] (BOS and padding dropped), concatenated: [sum(lens), d]."""
    return torch.cat([h[r, 1:int(n) + 1] for r, n in enumerate(lens)])


def _unflat(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_flat`` without the BOS position: [N, T, d], zero padded."""
    T = int(lens.max())
    out = x.new_zeros(len(lens), T, x.shape[-1])
    o = 0
    for r, n in enumerate(lens.tolist()):
        out[r, :n] = x[o:o + n]
        o += n
    return out


def _vocab(lm: LoadedModel) -> list[str]:
    if "vocab" not in lm.extra:
        tok = lm.tokenizer
        lm.extra["vocab"] = [tok.decode([i]) for i in range(len(tok))]
    return lm.extra["vocab"]


# ---------------------------------------------------------------------- stages


def keep_work_dir(work: Path, ident: str, resume: bool) -> bool:
    """Keep an unfinished run's work folder when resuming it with the same settings (``ident``,
    its ``config.json``); remove it when not resuming or when it has no settings; refuse to
    resume one made with other settings. Returns whether a folder was kept (or none existed)."""
    if not work.exists():
        return True
    prev = (work / "config.json").read_text() if (work / "config.json").is_file() else None
    if resume and prev is not None and prev != ident:
        raise PrecomputeError(f"{work} holds a run with other settings; resume with the same settings, "
                              f"or delete that folder to start over")
    if resume and prev is not None:
        return True
    shutil.rmtree(work)
    return False


def _preflight(cfg: PrecomputeConfig) -> None:
    """Refuse what can be refused before the model loads (which takes 10-100 s): no layers
    and no SAEs, a corpus that cannot be opened (missing file, unreachable Hub dataset), an
    SAE that names no folder and no known sae-lens release or id."""
    from precompute.saes import check_sae_spec

    if not cfg.saes and not cfg.layers:
        raise PrecomputeError("no layers and no SAEs given: pass --layers (SAEs are then trained here), "
                              "--sae, or --profile tiny/demo")
    open_corpus(cfg.corpus, cfg.text_field, cfg.subset_field)
    for spec in _expand_saes(cfg.saes, cfg.model):
        check_sae_spec(spec)
    if cfg.ray is not None:
        from precompute.distributed import check

        check(cfg.ray)


def _resolve_saes(cfg: PrecomputeConfig, lm: LoadedModel) -> tuple[list[int], list[LoadedSAE]]:
    """Load and check the given SAEs; the layers they read."""
    if not cfg.saes:
        if not cfg.layers:
            raise PrecomputeError("no layers and no SAEs given: pass --layers (SAEs are then trained here), "
                                  "--sae, or --profile tiny/demo")
        for L in cfg.layers:
            if not 0 <= L < lm.n_layers:
                raise PrecomputeError(f"layer {L} is outside the model: {lm.name} has layers 0..{lm.n_layers - 1}")
        if len(set(cfg.layers)) != len(cfg.layers):
            raise PrecomputeError(f"layers {cfg.layers} list a layer twice")
        return sorted(cfg.layers), []
    specs, want = _expand_saes(cfg.saes, cfg.model), list(cfg.layers)
    if cfg.saes == ["embedded"] and want:   # --layers picks among the shipped SAEs
        have = {parse_hook(Path(p).name)[0]: p for p in specs}
        missing = [L for L in want if L not in have]
        if missing:
            raise PrecomputeError(f"no shipped SAE reads layer(s) {missing} of {cfg.model}; shipped layers: "
                                  f"{sorted(have)} (train others with `saegeo train-saes --layers ...`)")
        specs = [have[L] for L in want]
    if want and len(want) != len(specs):
        raise PrecomputeError(f"{len(specs)} SAE(s) but {len(want)} layer(s): give one layer per SAE "
                              f"(same order) or leave the layers out")
    loaded = []
    for i, spec in enumerate(specs):
        s = load_sae(spec, device=lm.device)
        if Path(spec).parent.parent == EMBEDDED_SAES:
            _embedded_provenance(s, Path(spec))
        check_fit(s, lm, cfg.layers[i] if cfg.layers else None)
        loaded.append(s)
    layers = [s.layer for s in loaded]
    if len(set(layers)) != len(layers):
        raise PrecomputeError(f"two SAEs read the same layer ({layers}); one SAE per layer")
    order = np.argsort(layers)
    return [layers[i] for i in order], [loaded[i] for i in order]


def _expand_saes(specs: list[str], model: str) -> list[str]:
    """``embedded`` -> the folders of the SAEs shipped with the embedded model ``model``."""
    if "embedded" not in specs:
        return list(specs)
    shipped = shipped_saes(model)
    if not shipped:
        have = sorted(p.name for p in EMBEDDED_SAES.iterdir() if shipped_saes(p.name)) if EMBEDDED_SAES.is_dir() else []
        raise PrecomputeError(f"no SAEs ship with model {model!r} (they ship for {have}); pass --sae, or "
                              f"train them with `saegeo train-saes --model {model}`")
    out = []
    for spec in specs:
        out += [str(p) for p in shipped] if spec == "embedded" else [spec]
    return out


def _embedded_provenance(s: LoadedSAE, folder: Path) -> None:
    """Name a shipped SAE by what it is, not by this machine's path, with its training record."""
    s.source = f"saegeo:embedded_saes/{folder.parent.name}/{folder.name}"
    meta = folder / "training.json"
    if meta.is_file():
        rec = json.loads(meta.read_text())
        s.training, s.metrics = rec.get("training"), dict(rec.get("metrics", {}))


def _tokenize(cfg: PrecomputeConfig, lm: LoadedModel, work: Path) -> TokenizedCorpus:
    path = work / "tokens.npz"
    if path.is_file():
        return TokenizedCorpus.load(path)
    corpus = open_corpus(cfg.corpus, cfg.text_field, cfg.subset_field)
    tc = tokenize_corpus(corpus, lm.tokenize, seq_len=cfg.doc_tokens(), max_docs=cfg.max_docs,
                         max_tokens=cfg.max_tokens, progress=cfg.progress)
    import io

    buf = io.BytesIO()
    np.savez(buf, tokens=tc.tokens, offsets=tc.offsets, subset_ids=tc.subset_ids,
             subsets=np.array(json.dumps(tc.subsets)), name=np.array(corpus.name))
    atomic_write_bytes(path, buf.getvalue())
    return tc


def _corpus_name(work: Path, cfg: PrecomputeConfig) -> str:
    with np.load(work / "tokens.npz") as z:
        return str(z["name"]) if "name" in z else cfg.corpus


def _train_batches(cfg: PrecomputeConfig, tc: TokenizedCorpus, batches) -> int:
    """Number of leading batches whose tokens train the SAEs (at least ``train_tokens``)."""
    done = 0
    for b, (start, stop) in enumerate(batches):
        if done >= cfg.train_tokens:
            return b
        done += int(tc.offsets[stop] - tc.offsets[start])
    return len(batches)


def _capture_training(cfg, lm, tc, batches, n_train_batches, hooks, work: Path) -> dict[str, np.memmap]:
    """Stage 2a: activations of the training batches into memory-mapped files (resumable)."""
    tdir = work / "train"
    tdir.mkdir(exist_ok=True)
    n_tok = int(tc.offsets[batches[n_train_batches - 1][1]])
    prog_path = tdir / "progress.json"
    done = json.loads(prog_path.read_text())["batches"] if prog_path.is_file() else 0
    mode = "r+" if done else "w+"
    mm = {h: np.lib.format.open_memmap(tdir / f"acts_{i}.npy", mode=mode, dtype=np.float32,
                                       shape=(n_tok, lm.d_model)) for i, h in enumerate(hooks)}
    if done < n_train_batches:
        bar = _bar(cfg, n_tok, "capture (SAE training)", initial=int(tc.offsets[batches[done][0]]))
        for b in range(done, n_train_batches):
            start, stop = batches[b]
            ids, lens = _batch_ids(tc, start, stop, lm.bos_token_id)
            acts = lm.capture(ids, hooks)
            o0, o1 = int(tc.offsets[start]), int(tc.offsets[stop])
            for h in hooks:
                mm[h][o0:o1] = _flat(acts[h], lens).float().cpu().numpy()
            bar.update(o1 - o0)
            if (b + 1) % cfg.checkpoint_every == 0 or b + 1 == n_train_batches:
                for m in mm.values():
                    m.flush()
                atomic_write_bytes(prog_path, json.dumps({"batches": b + 1}).encode())
        bar.close()
    return mm


def _train(cfg, lm, layers, hooks, mm, work: Path) -> list[LoadedSAE]:
    """Stage 2b: one TopK SAE per layer, each saved into the work dir once trained."""
    sdir = work / "saes"
    sdir.mkdir(exist_ok=True)
    out = []
    for L, h in zip(layers, hooks):
        final = sdir / str(L)
        if not (final / "training.json").is_file():
            acts = mm[h]
            _log(cfg, f"training a TopK SAE on {h}: width {cfg.sae_width}, k {cfg.sae_k}, {len(acts)} tokens")
            s = train_sae(acts, h, model_name=lm.name, width=cfg.sae_width, k=cfg.sae_k,
                          n_samples=int(cfg.train_epochs * len(acts)), batch_size=cfg.train_batch_size,
                          seed=cfg.seed + L, device=lm.device, progress=cfg.progress)
            tmp = sdir / f".{L}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            save_sae(s, tmp)
            (tmp / "training.json").write_text(json.dumps({"training": s.training, "metrics": s.metrics}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _log(cfg, f"layer {L}: explained variance {s.metrics['train_explained_variance']:.3f}, "
                      f"L0 {s.metrics['train_l0']:.1f}, dead {s.metrics['train_dead_features']}")
        s = load_sae(final, device=lm.device)
        meta = json.loads((final / "training.json").read_text())
        s.source, s.training, s.metrics = "trained", meta["training"], meta["metrics"]
        out.append(s)
    return out


class _EV:
    """Explained variance of an SAE over the first ``limit`` tokens of the pass.

    Each batch's float64 sums are kept as one term and the terms are added in corpus order
    only in ``value``: a shard starting at token ``start`` measures its own batches, and the
    shards' terms concatenated in order give the very sums of one uninterrupted pass (float
    addition is not associative, so summing per shard first would change the last bits).
    """

    def __init__(self, d: int, limit: int, start: int = 0):
        self.d, self.limit, self.n = d, limit, start
        self.terms: list[tuple] = []      # (tokens, sse, sum of squares, sum_x [d]) per batch

    def update(self, sae, x: torch.Tensor, feats: torch.Tensor) -> None:
        if self.n >= self.limit:
            return
        x, feats = x[: self.limit - self.n], feats[: self.limit - self.n]
        xh = sae.decode(feats)
        xd = x.double()
        self.terms.append((len(x), float(((xd - xh.double()) ** 2).sum()), float((xd ** 2).sum()),
                           xd.sum(0).cpu()))
        self.n += len(x)

    def merge(self, state: dict) -> None:
        """Append the terms of the shard that follows (a ``state()``)."""
        self.terms += [tuple(t) for t in state["terms"]]

    def value(self) -> float | None:
        n, sse, sum_sq, sum_x = 0, 0.0, 0.0, torch.zeros(self.d, dtype=torch.float64)
        for tn, t_sse, t_sq, t_x in self.terms:
            n, sse, sum_sq = n + tn, sse + t_sse, sum_sq + t_sq
            sum_x += t_x
        if n == 0:
            return None
        sst = sum_sq - float((sum_x ** 2).sum()) / n
        return 1.0 - sse / sst if sst > 0 else None

    def state(self) -> dict:
        return {"n": self.n, "terms": [(n, a, b, x.clone()) for n, a, b, x in self.terms]}

    def load(self, st: dict) -> None:
        self.n, self.terms = st["n"], [tuple(t) for t in st["terms"]]


# ------------------------------------------------------------ the statistics in shards
#
# The statistics pass is cut into shards of ``shard_batches`` consecutive batches. Each shard
# is measured on its own (``shard_statistics``: fresh LayerStats, its own explained-variance
# terms) and its partial saved in ``shards/``; the atlas is the merge of all partials in shard
# order (``_merge_shards``). The single-process path and the Ray workers
# (``precompute.distributed``) run the same function on the same shards and the driver merges
# the same files, so where a shard ran cannot change a bit of the atlas, and a shard that was
# retried or resumed is counted once: its file is written atomically, once, by the driver.


@dataclass
class ShardInput:
    """Everything a worker needs for one shard, without the corpus around it."""

    shard: int
    doc0: int                         # corpus-wide id of the shard's first document
    tok0: int                         # tokens of the corpus before it (explained variance)
    corpus: TokenizedCorpus           # the shard's documents, offsets from 0
    batches: list[tuple[int, int]]    # document ranges within ``corpus``
    n_cached: int = 0                 # leading batches whose activations were captured for training
    cached: dict | None = None        # hook -> [their tokens, d] activations (read, not recomputed)


def _shards(batches: list, shard_batches: int) -> list[list[tuple[int, int]]]:
    return [batches[i:i + shard_batches] for i in range(0, len(batches), shard_batches)]


def shard_input(tc: TokenizedCorpus, shards: list, s: int, shard_batches: int, n_cached: int = 0,
                mm: dict | None = None, copy: bool = False) -> ShardInput:
    """Shard ``s`` cut out of the corpus; ``copy`` reads its cached activations into memory
    (for a worker elsewhere) instead of keeping memory-mapped views."""
    bl = shards[s]
    d0, d1 = bl[0][0], bl[-1][1]
    t0, t1 = int(tc.offsets[d0]), int(tc.offsets[d1])
    sub = TokenizedCorpus(tc.tokens[t0:t1], tc.offsets[d0:d1 + 1] - t0, tc.subset_ids[d0:d1], tc.subsets)
    nc = max(0, min(len(bl), n_cached - s * shard_batches))
    cached = None
    if nc:
        c1 = int(tc.offsets[bl[nc - 1][1]])
        cached = {h: (np.array if copy else np.asarray)(m[t0:c1]) for h, m in mm.items()}
    return ShardInput(s, d0, t0, sub, [(a - d0, b - d0) for a, b in bl], nc, cached)


def new_layer_stats(cfg: PrecomputeConfig, saes, thresholds: dict, subsets, vocab, device) -> dict:
    from precompute.cooccur import LayerStats

    return {s.layer: LayerStats(s.width, subsets, vocab, threshold=thresholds[s.layer], block_size=cfg.block_size,
                                max_stored_blocks=cfg.max_stored_blocks, wide_from=cfg.cooc_wide_from,
                                cooc_topk=cfg.cooc_topk, device=device) for s in saes}


def shard_statistics(cfg: PrecomputeConfig, lm: LoadedModel, saes: list[LoadedSAE], thresholds: dict,
                     piece: ShardInput, resume: dict | None = None, checkpoint=None) -> dict:
    """The partial statistics of one shard (``{"shard", "tokens", "layers", "ev"}``, CPU
    tensors): every batch through the model, each SAE, LayerStats and explained variance.

    ``resume`` continues a shard from a state taken between two batches; after every batch but
    the last, ``checkpoint(batches done, tokens done, state())`` may save one (the
    single-process path checkpoints inside long shards; the Ray workers do not).
    """
    tc, hooks = piece.corpus, [s.hook for s in saes]
    stats = new_layer_stats(cfg, saes, thresholds, tc.subsets, _vocab(lm), lm.device)
    evs = {s.layer: _EV(lm.d_model, cfg.eval_tokens, piece.tok0) for s in saes}
    start_b = 0
    if resume is not None:
        start_b = resume["batch"]
        for L in stats:
            stats[L].load_state_dict(resume["layers"][L])
            evs[L].load(resume["ev"][L])
    doc_ids_all = torch.arange(piece.doc0, piece.doc0 + tc.n_docs)
    subset_all = torch.from_numpy(tc.subset_ids.astype(np.int64))
    for b in range(start_b, len(piece.batches)):
        start, stop = piece.batches[b]
        ids, lens = _batch_ids(tc, start, stop, lm.bos_token_id)
        o0, o1 = int(tc.offsets[start]), int(tc.offsets[stop])
        if b < piece.n_cached:   # captured for SAE training: read back, do not recompute
            flat = {h: torch.from_numpy(np.asarray(piece.cached[h][o0:o1])).to(lm.device) for h in hooks}
        else:
            acts = lm.capture(ids, hooks)
            flat = {h: _flat(acts[h], lens).float() for h in hooks}
            del acts
        tok = ids[:, 1:].to(lm.device)
        with torch.no_grad():
            for s in saes:
                x = flat[s.hook].to(s.sae.W_dec.dtype)
                f = s.sae.encode(x)
                evs[s.layer].update(s.sae, x, f)
                stats[s.layer].update(_unflat(f, lens), tok, doc_ids_all[start:stop], subset_all[start:stop], lens)
        if checkpoint is not None and b + 1 < len(piece.batches):
            checkpoint(b + 1, o1, lambda: {"layers": {L: st.state_dict() for L, st in stats.items()},
                                           "ev": {L: ev.state() for L, ev in evs.items()}})
    return {"shard": piece.shard, "tokens": tc.n_tokens,
            "layers": {L: _pack(st.state_dict()) for L, st in stats.items()},
            "ev": {L: ev.state() for L, ev in evs.items()}}


# A shard's dense co-occurrence is an F x F matrix (1 GiB at 16k features), mostly zeros when
# the features are many and the shard's blocks few: then it travels and is stored as a sparse
# tensor. A sparse entry costs 20 bytes (two int64 indices, the value) against 4 dense.
_DENSE = ("cooc_f32", "cooc_i64")


def _compact(t: torch.Tensor | None):
    return t.to_sparse() if t is not None and 5 * int(torch.count_nonzero(t)) < t.numel() else t


def _pack(state: dict) -> dict:
    return {k: (_compact(v) if k in _DENSE else v) for k, v in state.items()}


def _unpack(state: dict) -> dict:
    return {k: (v.to_dense() if k in _DENSE and v is not None and v.is_sparse else v) for k, v in state.items()}


def shard_path(work: Path, s: int) -> Path:
    return work / "shards" / f"{s:06d}.pt"


def save_shard(work: Path, partial: dict) -> None:
    _atomic_torch_save(partial, shard_path(work, partial["shard"]))


def _merge_shards(cfg, lm, saes, thresholds, subsets, n_shards: int, work: Path):
    """Every shard's partial, merged in shard order into one result per layer."""
    vocab = _vocab(lm)
    acc = new_layer_stats(cfg, saes, thresholds, subsets, vocab, "cpu")
    evs = {s.layer: _EV(lm.d_model, cfg.eval_tokens) for s in saes}
    for i in range(n_shards):
        p = torch.load(shard_path(work, i), map_location="cpu", weights_only=True)
        part = new_layer_stats(cfg, saes, thresholds, subsets, vocab, "cpu")
        for L in acc:
            part[L].load_state_dict(_unpack(p["layers"][L]))
            acc[L].merge(part[L])
            evs[L].merge(p["ev"][L])
        del p, part
    return {L: st.finalize() for L, st in acc.items()}, {L: ev.value() for L, ev in evs.items()}


def _statistics(cfg, lm, tc, batches, n_cached, mm, layers, hooks, saes, thresholds, work: Path):
    """Stage 3: SAE encoding and LayerStats over every batch, shard by shard (each shard's
    partial saved once done, long shards checkpointed inside; resumable), then merged."""
    shards = _shards(batches, cfg.shard_batches)
    (work / "shards").mkdir(exist_ok=True)
    todo = [s for s in range(len(shards)) if not shard_path(work, s).is_file()]
    if len(todo) < len(shards):
        _log(cfg, f"statistics: {len(shards) - len(todo)} of {len(shards)} shards already done, {len(todo)} to go")
    left = sum(int(tc.offsets[shards[s][-1][1]] - tc.offsets[shards[s][0][0]]) for s in todo)
    bar = _bar(cfg, tc.n_tokens, "SAE statistics", initial=tc.n_tokens - left)

    def note() -> None:
        _progress(work, lm.name, "statistics", bar.n, tc.n_tokens)

    if todo and cfg.ray is not None:
        from precompute.distributed import run_shards

        def finished(partial: dict) -> None:
            save_shard(work, partial)
            bar.update(partial["tokens"])
            note()

        run_shards(cfg, lm, saes, thresholds, todo,
                   lambda s: shard_input(tc, shards, s, cfg.shard_batches, n_cached, mm, copy=True), finished)
    else:
        for s in todo:
            _local_shard(cfg, lm, saes, thresholds, shard_input(tc, shards, s, cfg.shard_batches, n_cached, mm),
                         work, bar, note)
    bar.close()
    return _merge_shards(cfg, lm, saes, thresholds, tc.subsets, len(shards), work)


def _local_shard(cfg, lm, saes, thresholds, piece: ShardInput, work: Path, bar, note) -> None:
    """One shard in this process, checkpointed every ``checkpoint_every`` batches."""
    ckpt = work / "stats.pt"
    resume = torch.load(ckpt, map_location="cpu", weights_only=True) if ckpt.is_file() else None
    if resume is not None and resume["shard"] != piece.shard:     # left by a shard since saved
        resume = None
    seen = [int(piece.corpus.offsets[piece.batches[resume["batch"] - 1][1]]) if resume else 0]
    bar.update(seen[0])

    def checkpoint(b: int, o1: int, state) -> None:
        bar.update(o1 - seen[0])
        seen[0] = o1
        if b % cfg.checkpoint_every == 0:
            _atomic_torch_save({"shard": piece.shard, "batch": b, **state()}, ckpt)
            note()

    save_shard(work, shard_statistics(cfg, lm, saes, thresholds, piece, resume, checkpoint))
    ckpt.unlink(missing_ok=True)
    bar.update(piece.corpus.n_tokens - seen[0])
    note()


def word_pair_hooks(cfg: PrecomputeConfig, layers: list[int], hooks: list[str]) -> list[str]:
    """The hook each layer's word pairs are read at (``cfg.word_pair_layer``)."""
    if cfg.word_pair_layer == "sae_hook":
        return list(hooks)
    return [hook_name(L, "resid_pre") for L in layers]


def _word_pairs(cfg, lm, layers, hooks):
    """Stage 4: hidden state at the last token of each word of the relation pairs (METHODS 2),
    read at ``word_pair_hooks`` (by default Hugging Face's ``hidden_states[L]``)."""
    hooks = word_pair_hooks(cfg, layers, hooks)
    try:
        from analysis.atom import load_word_pairs
    except ImportError:
        _log(cfg, "word pairs skipped: analysis.atom.load_word_pairs is not available")
        return None, {}
    pairs = load_word_pairs()
    words = list(dict.fromkeys(list(pairs["input"]) + list(pairs["output"])))
    ids_of = {w: lm.tokenize(w) or [lm.bos_token_id] for w in words}
    h_of: dict[str, dict[int, np.ndarray]] = {}
    bar = _bar(cfg, len(words), "word pairs", unit="word")
    for i in range(0, len(words), 64):
        chunk = words[i:i + 64]
        lens = torch.tensor([len(ids_of[w]) for w in chunk])
        ids = torch.full((len(chunk), int(lens.max()) + 1), lm.bos_token_id, dtype=torch.long)
        for r, w in enumerate(chunk):
            ids[r, 1:lens[r] + 1] = torch.tensor(ids_of[w])
        acts = lm.capture(ids, hooks)
        for r, w in enumerate(chunk):
            h_of[w] = {L: acts[h][r, int(lens[r])].float().cpu().numpy() for L, h in zip(layers, hooks)}
        bar.update(len(chunk))
    bar.close()
    table = pairs[["task", "input", "output"]].copy()
    table["input_last_token"] = [lm.tokenizer.decode([ids_of[w][-1]]) for w in table["input"]]
    table["output_last_token"] = [lm.tokenizer.decode([ids_of[w][-1]]) for w in table["output"]]
    from analysis.atlas import LayerFiles

    arrays = {}
    for L in layers:
        arrays[LayerFiles(L).word_h_in] = np.stack([h_of[w][L] for w in table["input"]]).astype(np.float32)
        arrays[LayerFiles(L).word_h_out] = np.stack([h_of[w][L] for w in table["output"]]).astype(np.float32)
    return table, arrays


# ---------------------------------------------------------------------- driver


@contextlib.contextmanager
def out_lock(out: Path):
    """Hold an exclusive lock on ``out`` for one run; a second run on the same ``out`` is
    refused at once instead of interleaving its checkpoints and files with the first's.

    An ``flock`` on a hidden sibling file: the kernel releases it when the holder dies, even
    by SIGKILL, so a killed run never leaves a stale lock behind for ``--resume``.
    """
    import fcntl

    path = out.with_name(f".{out.name}.lock")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise PrecomputeError(f"cannot write in {out.parent}: {e.strerror or e}; choose another --out") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise PrecomputeError(f"another precompute ({holder}) is writing {out}; wait for it to finish, "
                              f"or choose another --out") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        f.close()


def run_precompute(cfg: PrecomputeConfig) -> Path:
    """Run the whole precompute for ``cfg`` and return the atlas path (see ``_run``); one run
    per ``out`` at a time (``out_lock``)."""
    out = Path(cfg.out).expanduser().resolve()
    with out_lock(out):
        try:
            return _run(cfg)
        except (OSError, RuntimeError) as e:
            if not _disk_full(e, out):
                raise
            raise PrecomputeError(
                f"the disk holding {out.parent} is full ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                f"free some space and run the same command with --resume: the checkpoints written so far are "
                f"kept in {cfg.work_dir()} and earlier atlases are untouched") from None


def _disk_full(e: BaseException, out: Path) -> bool:
    """ENOSPC/EDQUOT, or any write error while the disk has (almost) nothing left - torch.save
    reports a full disk as a RuntimeError of its stream writer, without an errno."""
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(out.parent).free < (1 << 20)
    except OSError:
        return False


def _run(cfg: PrecomputeConfig) -> Path:
    """Run the whole precompute for ``cfg`` and return the atlas path.

    Raises ``PrecomputeError`` (one-line message, nothing written to ``cfg.out``) for bad
    input: unknown model or SAE, an SAE that does not fit the model, an empty corpus, a
    layer outside the model, or too little disk space.
    """
    from analysis.atlas import (AtlasWriter, CorpusInfo, LayerFiles, LayerInfo, Manifest, ModelInfo, SAEInfo)

    t0 = time.time()
    out = Path(cfg.out).expanduser().resolve()
    if out.exists() and not cfg.overwrite:
        if cfg.resume and _statistics_done(out):
            # interrupted after the statistics were written: finish the later stages
            if cfg.geometry:
                _geometry(cfg, out)
            if cfg.latent:
                _latent(cfg, out)
            return out
        raise PrecomputeError(f"{out} already exists; choose another --out or pass overwrite")
    work = cfg.work_dir()
    ident = json.dumps(cfg.identity(), sort_keys=True)
    if not keep_work_dir(work, ident, cfg.resume):
        _log(cfg, f"starting over: removing the unfinished run in {work}")
    _preflight(cfg)
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    lm = load_model(cfg.model, cfg.device, cfg.dtype)
    layers, saes = _resolve_saes(cfg, lm)
    train = not saes
    hooks = [hook_name(L) for L in layers] if train else [s.hook for s in saes]
    _check_disk(cfg, lm.d_model, len(layers), cfg.sae_width if train else max(s.width for s in saes), train)
    fresh = not work.exists()
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(ident)
    _progress(work, lm.name, "tokenizing")

    try:
        tc = _tokenize(cfg, lm, work)
    except PrecomputeError:
        if fresh:      # nothing worth resuming was written (e.g. the dataset went away)
            shutil.rmtree(work, ignore_errors=True)
        raise
    _progress(work, lm.name, "statistics", 0, tc.n_tokens)
    _log(cfg, f"{tc.n_docs} documents, {tc.n_tokens} tokens, subsets {tc.subsets}")
    batches = _batches(tc, cfg.batch_size)
    n_cached, mm = 0, {}
    if train:
        _progress(work, lm.name, "training SAEs")
        n_cached = _train_batches(cfg, tc, batches)
        mm = _capture_training(cfg, lm, tc, batches, n_cached, hooks, work)
        saes = _train(cfg, lm, layers, hooks, mm, work)
    rules = {L: threshold_rule(cfg.threshold, s.architecture) for L, s in zip(layers, saes)}
    thresholds = {L: rule[0] for L, rule in rules.items()}
    results, evs = _statistics(cfg, lm, tc, batches, n_cached, mm, layers, hooks, saes, thresholds, work)
    pairs, word_arrays = (None, {})
    if cfg.word_pairs:
        _progress(work, lm.name, "word pairs")
        pairs, word_arrays = _word_pairs(cfg, lm, layers, hooks)
    _progress(work, lm.name, "writing the atlas")

    infos = []
    for L, h, s in zip(layers, hooks, saes):
        r = results[L]
        fired = r.fire_count > 0
        metrics = dict(s.metrics)
        metrics.update(explained_variance=evs[L], eval_tokens=min(cfg.eval_tokens, tc.n_tokens),
                       l0=float(r.fire_count.sum() / max(r.n_tokens, 1)),
                       dead_features=int((~fired).sum()), top_tokens_exact=r.top_tokens_exact)
        infos.append(LayerInfo(
            layer=L, hook=h, n_tokens=r.n_tokens, n_blocks=r.n_blocks, threshold=r.threshold,
            threshold_rule=rules[L][1], cooc_topk=r.cooc_topk,
            word_pair_hook=word_pair_hooks(cfg, [L], [h])[0] if pairs is not None else None,
            computed=["stats"] + (["word_pairs"] if pairs is not None else []),
            sae=SAEInfo(source=s.source, width=s.width, d_in=s.d_in, architecture=s.architecture, hook=h,
                        neuronpedia=s.neuronpedia, training=s.training, metrics=metrics)))
    manifest = Manifest(
        title=f"{lm.name} - {_corpus_name(work, cfg)}",
        model=ModelInfo(name=lm.name, source=lm.source, d_model=lm.d_model, n_layers=lm.n_layers,
                        tokenizer=type(lm.tokenizer).__name__, vocab_size=len(lm.tokenizer),
                        dtype=str(lm.dtype).removeprefix("torch."), hooks=lm.hook_tensors()),
        corpus=CorpusInfo(name=_corpus_name(work, cfg), subsets=tc.subsets, n_documents=tc.n_docs,
                          n_tokens=tc.n_tokens, block_size=cfg.block_size, doc_tokens=cfg.doc_tokens(),
                          document_length=f"{cfg.seq_len} tokens per document "
                                          f"{'including' if cfg.seq_len_includes_bos else 'after'} BOS",
                          threshold=thresholds[layers[0]] if len(set(thresholds.values())) == 1 else None),
        layers=infos, configs={"precompute": cfg.model_dump(mode="json")})
    with AtlasWriter(out, manifest, overwrite=cfg.overwrite) as w:
        for L, s in zip(layers, saes):
            w.put_array(LayerFiles(L).decoder, s.decoder())
            for name, obj in results[L].files().items():
                w.put(LayerFiles(L).file(name), obj)
            if train:
                w.put_dir(LayerFiles(L).sae_dir, work / "saes" / str(L))
        if pairs is not None:
            w.put_table("wordpairs/pairs.parquet", pairs)
            for rel, arr in word_arrays.items():
                w.put_array(rel, arr)
    del mm
    shutil.rmtree(work, ignore_errors=True)
    _log(cfg, f"atlas written to {out} in {time.time() - t0:.0f} s")

    # lobes first: they are what the explorer waits for; the latent capture (minutes) after
    if cfg.geometry:
        _geometry(cfg, out)
    if cfg.latent:
        _latent(cfg, out, lm)
    return out


def threshold_rule(threshold: float | None, architecture: str) -> tuple[float, str]:
    """The firing threshold of an SAE and the rule that chose it (recorded in the manifest).

    An explicit ``threshold`` wins. Otherwise TopK SAEs (``topk``, ``batchtopk``) fire when
    a feature is among the k selected, i.e. its activation is > 0: their selected values
    have no common scale, and a cut at 1 would drop selections arbitrarily. Every other
    architecture (JumpReLU as in Gemma Scope, ReLU, gated) gets the published P1 threshold,
    activation > 1 (METHODS 1 in docs/methods.md).
    """
    if threshold is not None:
        return float(threshold), f"set: activation > {threshold:g}"
    if architecture.lower() in ("topk", "batchtopk"):
        return 0.0, f"architecture {architecture}: selected among the top k (activation > 0)"
    return 1.0, f"architecture {architecture or 'unknown'}: published threshold (activation > 1)"


def _statistics_done(out: Path) -> bool:
    from analysis.atlas import validate

    return not validate(out, verify="size")


def geometry_done(out: Path) -> bool:
    """True when every layer of the atlas at ``out`` went through the geometry stage."""
    from analysis.atlas import open_atlas

    atlas = open_atlas(out, verify="size")
    return all("geometry" in info.computed for info in atlas.manifest.layers)


def _latent(cfg: PrecomputeConfig, out: Path, lm: LoadedModel | None = None) -> None:
    from precompute.latent import LatentConfig, LatentError, latent_done, run_latent

    try:
        lcfg = LatentConfig(**cfg.latent_config)
    except ValueError as e:
        raise PrecomputeError(f"bad latent settings: {str(e).splitlines()[0]}") from None
    if latent_done(out, lcfg):
        return
    work = cfg.work_dir()
    work.mkdir(parents=True, exist_ok=True)
    _progress(work, cfg.model, "latent geometry (raw activations of every layer)")
    if lm is None:
        lm = load_model(cfg.model, cfg.device, cfg.dtype)
    try:
        run_latent(out, lcfg, lm=lm, progress=cfg.progress)
    except LatentError:
        raise
    except Exception as e:
        raise PrecomputeError(f"the raw statistics are in {out}, but the latent stage failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _geometry(cfg: PrecomputeConfig, out: Path) -> None:
    from analysis.stage import GeometryConfig, run_geometry

    if geometry_done(out):
        return
    t = time.time()
    work = cfg.work_dir()   # only the progress note lives here during this stage
    work.mkdir(parents=True, exist_ok=True)

    def on_layer(layer: int, i: int, n: int) -> None:
        _progress(work, cfg.model, f"geometry of layer {layer} (lobes, spectra, crystals, layouts)", i, n)

    _progress(work, cfg.model, "geometry (lobes, spectra, crystals, layouts)")
    try:
        run_geometry(out, GeometryConfig(**cfg.geometry_config), progress=cfg.progress, on_layer=on_layer)
        shutil.rmtree(work, ignore_errors=True)
    except Exception as e:
        raise PrecomputeError(f"the raw statistics are in {out}, but the geometry stage failed: "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    _log(cfg, f"geometry stage done in {time.time() - t:.0f} s")
