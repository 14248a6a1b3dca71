"""Per-layer SAE feature statistics for the atlas (METHODS 1 in docs/methods.md), accumulated batch by batch.

Usage (one object per layer)::

    stats = LayerStats(n_features=F, subsets=["github", "wiki"], vocab=id_to_str)
    for batch in batches:
        stats.update(acts, token_ids, doc_ids, subset_ids, lengths)
        if time_to_checkpoint:
            stats.save("ckpt/layer12.pt")           # or torch.save(stats.state_dict(), ...)
    ...
    stats = LayerStats(same arguments); stats.load("ckpt/layer12.pt")  # resume
    result = stats.finalize()
    for name, obj in result.files().items():        # "fire_count.npy" -> np.ndarray, ...
        write name with the atlas store
    layer_info(n_tokens=result.n_tokens, n_blocks=result.n_blocks, threshold=result.threshold)

Inputs of ``update`` (one call per batch of documents, all torch tensors on one device):

* ``acts`` [N, T, F]: SAE feature activations **with the BOS position already dropped** by the
  caller: ``acts[:, 0]`` is the first real token of each document. Any float dtype.
* ``token_ids`` [N, T] (or wider; extra columns are ignored): the token ids at the same
  positions (BOS dropped too).
* ``doc_ids`` [N] int: corpus-wide document ids (stored with the top contexts).
* ``subset_ids`` [N] int: index of each document's corpus subset in ``subsets``.
* ``lengths`` [N] int or None: number of valid (non-padding) positions per document, BOS
  excluded; documents are right-padded. None = all T positions are valid.

Rules (METHODS 1, published defaults):

* A feature fires on a token when its activation is ``> threshold`` (1.0; pass 0.0 for TopK
  SAEs, meaning "selected and > 0"). ``fire_count``, ``subset_fire``, ``act_hist`` and
  ``top_tokens`` count every valid token; ``n_tokens`` is the number of valid tokens.
* Each document is cut into non-overlapping blocks of ``block_size`` (256) tokens starting at
  position 0 (right after BOS); only full blocks count, the trailing partial block is dropped.
  A feature is present in a block when it fires on any of its tokens. ``C = B^T B`` over the
  block-by-feature 0/1 matrix ``B``; ``C[i, i]`` = blocks where i is present, ``n_blocks`` = T.

How C is accumulated: block presence rows are buffered and multiplied ``cooc_chunk_blocks`` at
a time (never one block at a time), on one of three paths by the width F:

* Dense path (``F <= dense_max_features``): ``R += B^T B`` with float32 ``addmm_`` on the
  device of the activations, only for row tiles up to the diagonal (C is symmetric, so this
  does about half the work; ``finalize`` mirrors the lower triangle). 0/1 inputs and integer
  partial sums below 2**24 are exact in float32 (also under TF32 / bf16 inputs, which hold 0
  and 1 exactly), and ``R`` is folded into an int64 accumulator before any entry could reach
  2**24 blocks. Memory: 4 F^2 bytes (1 GiB at F = 16384).
* Sparse path (``dense_max_features < F <= wide_from``): each chunk's ``B`` becomes a scipy
  CSR matrix on the CPU and ``B^T B`` (exact integer sparse product) is added to an int64 CSR
  accumulator. Memory grows with the number of co-occurring pairs.
* Wide path (``F > wide_from``, 16,384 by default as the geometry stage's ``wide_from``): the
  co-occurring pairs grow with every block fed (67 M entries after 2,048 blocks of ~220
  features at 262,144 features, ``bench/bench_wide_memory.py --stats``), so none is
  accumulated. Each chunk's presence rows are kept instead (int32 feature ids, 4 bytes per
  presence, and a count per block), and ``finalize`` forms C from
  them with ``analysis.partners.top_partners``: per feature the diagonal and the ``cooc_topk``
  largest off-diagonal counts (ties: lower column), symmetrised by union, exact counts for
  every kept pair, its rows formed at most ``cooc_chunk_entries`` entries at a time.
  ``LayerStatsResult.cooc_topk`` says that C holds top partners only (None: the full C).

Other outputs:

* ``act_hist`` [F, H]: counts of firing activations on common log-spaced edges fixed before
  any data is seen (``np.geomspace(lo, hi, H + 1)``, float32; default lo = threshold, or 1e-3
  when the threshold is 0, hi = 1e3, H = 64), so histograms of shards, checkpoints and layers
  add up exactly. The first and last bins are open-ended: values below ``lo`` count in bin 0,
  values at or above the last inner edge in bin H - 1.
* Top contexts: per feature, the ``top_k_contexts`` documents with the highest peak
  activation (one context per document: its maximum, first position on ties), each with a
  window of ``context_left`` tokens before and ``context_right`` after the peak, clipped at
  the document ends (BOS is never shown). Ties between documents keep the earlier-fed one.
* Top tokens: exact (feature, token id) firing counts in a sorted sparse accumulator (no
  F x vocab array). If it exceeds ``max_token_pairs`` pairs it is pruned to the
  ``token_prune_keep`` most frequent tokens per feature, after which counts of rare pairs are
  lower bounds (``LayerStatsResult.top_tokens_exact`` says whether that happened).
* Stored blocks: presence rows of a uniform sample of up to ``max_stored_blocks`` blocks of
  the whole pass - the blocks with the smallest ``block_keys`` (a fixed hash of document id
  and block index), in feeding order. The sample depends on neither the order nor the
  batching of the documents (so corpora fed subset by subset are sampled evenly), and a
  larger ``max_stored_blocks`` keeps every block a smaller one kept.

``state_dict()``/``load_state_dict()`` (and ``save``/``load``) capture the complete state;
resuming and feeding the remaining batches gives results identical to an uninterrupted run.
Results do not depend on how documents are grouped into batches.

Everything runs on the device of ``acts`` (CUDA or CPU, same code). Work is O(number of
firings) after one pass over ``acts`` to find them; on the CPU that pass and the key sorting
use numpy (several times faster than the torch kernels there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from analysis.partners import top_partners

# float32 represents every integer up to 2**24 exactly; the dense accumulator is folded into
# int64 before any entry could pass it.
_F32_EXACT = 2 ** 24


@dataclass
class LayerStatsResult:
    """Finished statistics of one layer; field names are the atlas file stems (docs/atlas.md)."""

    fire_count: np.ndarray        # int64 [F]
    cooc: sp.csr_matrix           # int64 [F, F], symmetric, diagonal = block counts (see cooc_topk)
    subset_fire: np.ndarray       # int64 [F, S]
    blocks: sp.csr_matrix         # bool [B, F]
    block_subset: np.ndarray      # int16 [B]
    act_hist: np.ndarray          # int64 [F, H]
    act_hist_edges: np.ndarray    # float32 [H + 1]
    contexts: pd.DataFrame        # feature, rank, value, doc, subset, tokens, peak
    top_tokens: pd.DataFrame      # feature, rank, token, count
    n_tokens: int
    n_blocks: int
    threshold: float
    block_size: int
    top_tokens_exact: bool
    cooc_topk: int | None = None  # cooc holds each feature's top cooc_topk partners (None: all)

    def files(self) -> dict:
        """{atlas file name: object} for the atlas store (the decoder is added by the pipeline)."""
        return {
            "fire_count.npy": self.fire_count,
            "cooc.npz": self.cooc,
            "subset_fire.npy": self.subset_fire,
            "blocks.npz": self.blocks,
            "block_subset.npy": self.block_subset,
            "act_hist.npy": self.act_hist,
            "act_hist_edges.npy": self.act_hist_edges,
            "contexts.parquet": self.contexts,
            "top_tokens.parquet": self.top_tokens,
        }


def hist_edges(threshold: float = 1.0, bins: int = 64, hist_range=None) -> np.ndarray:
    """Common log-spaced activation-histogram edges, float32 [bins + 1].

    ``hist_range=(lo, hi)``; default lo = threshold (1e-3 if threshold <= 0), hi = 1e3.
    """
    if hist_range is None:
        lo = threshold if threshold > 0 else 1e-3
        hist_range = (lo, max(1e3, 10 * lo))
    lo, hi = hist_range
    if not 0 < lo < hi:
        raise ValueError(f"hist_range must satisfy 0 < lo < hi, got {hist_range}")
    return np.geomspace(lo, hi, bins + 1).astype(np.float32)


class LayerStats:
    """Streaming accumulator of one layer's firing, co-occurrence, histogram and context stats.

    Parameters
    ----------
    n_features : SAE width F.
    subsets : corpus subset names (``manifest.corpus.subsets``, order matters).
    vocab : token id -> display string (e.g. ``tokenizer.convert_ids_to_tokens(range(V))``).
    threshold : firing threshold, fires when activation > threshold (published 1.0).
    block_size : tokens per co-occurrence block (published 256).
    max_stored_blocks : presence rows kept for ``blocks.npz`` (a uniform sample, ``block_keys``).
    hist_bins, hist_range : activation histogram (see ``hist_edges``).
    top_k_contexts, context_left, context_right : top-activating contexts per feature.
    top_k_tokens : tokens kept per feature in ``top_tokens``.
    dense_max_features : widest SAE accumulated as a dense F x F matrix on the device.
    wide_from : wider SAEs keep only each feature's ``cooc_topk`` top partners (wide path).
    cooc_topk : partners kept per feature on the wide path.
    cooc_chunk_blocks : blocks buffered per co-occurrence matrix product.
    cooc_chunk_entries : wide path; entries of C formed at once at finalize (bounds its memory).
    max_token_pairs, token_prune_keep : memory bound of the (feature, token) counter.
    device : where the state lives until the first ``update`` (then: the device of ``acts``).
    """

    def __init__(self, n_features: int, subsets, vocab, *, threshold: float = 1.0,
                 block_size: int = 256, max_stored_blocks: int = 20_000, hist_bins: int = 64,
                 hist_range=None, top_k_contexts: int = 10, context_left: int = 8,
                 context_right: int = 4, top_k_tokens: int = 10,
                 dense_max_features: int = 16_384, wide_from: int = 16_384, cooc_topk: int = 32,
                 cooc_chunk_blocks: int = 2048, cooc_chunk_entries: int = 2 ** 22,
                 max_token_pairs: int = 2 ** 25, token_prune_keep: int = 64, device="cpu"):
        self.F = int(n_features)
        self.subsets = [str(s) for s in subsets]
        self.vocab = vocab
        self.threshold = float(threshold)
        self.block_size = int(block_size)
        self.max_stored_blocks = int(max_stored_blocks)
        self.edges = hist_edges(self.threshold, hist_bins, hist_range)
        self.k_ctx = int(top_k_contexts)
        self.left, self.right = int(context_left), int(context_right)
        self.k_tok = int(top_k_tokens)
        if int(cooc_topk) < 1:
            raise ValueError(f"cooc_topk must be at least 1, got {cooc_topk}")
        self.wide = self.F > wide_from
        self.dense = not self.wide and self.F <= dense_max_features
        self.cooc_topk = int(cooc_topk)
        self.cooc_chunk_blocks = int(cooc_chunk_blocks)
        self.cooc_chunk_entries = int(cooc_chunk_entries)
        self.max_token_pairs = int(max_token_pairs)
        self.token_prune_keep = int(token_prune_keep)
        self.device = torch.device(device)
        self._init_state()

    # ------------------------------------------------------------------ state
    def _config(self) -> dict:
        return dict(F=self.F, subsets=self.subsets, V=len(self.vocab), threshold=self.threshold,
                    block_size=self.block_size, max_stored_blocks=self.max_stored_blocks,
                    edges=self.edges.tolist(), k_ctx=self.k_ctx, left=self.left,
                    right=self.right, dense=self.dense, wide=self.wide, cooc_topk=self.cooc_topk,
                    max_token_pairs=self.max_token_pairs,
                    token_prune_keep=self.token_prune_keep,
                    tok_merge_min=self._tok_merge_min)

    def _init_state(self):
        F, S, H, k, W = self.F, len(self.subsets), len(self.edges) - 1, self.k_ctx, self._W
        dev, i64 = self.device, torch.int64
        self.n_tokens = 0
        self.n_blocks = 0
        self.fire_count = torch.zeros(F, dtype=i64, device=dev)
        self.subset_fire = torch.zeros(S * F, dtype=i64, device=dev)
        self.hist = torch.zeros(F * H, dtype=i64, device=dev)
        self.ctx_val = torch.full((F, k), -torch.inf, device=dev)
        self.ctx_doc = torch.full((F, k), -1, dtype=i64, device=dev)
        self.ctx_sub = torch.full((F, k), -1, dtype=i64, device=dev)
        self.ctx_win = torch.full((F, k, W), -1, dtype=i64, device=dev)
        self.tok_keys = torch.zeros(0, dtype=i64, device=dev)     # sorted f * V + token
        self.tok_counts = torch.zeros(0, dtype=i64, device=dev)
        self.tok_pending: list = []                               # [(keys, counts)] unmerged
        self.tok_pruned = False
        self.buf: list = []          # buffered block presence (see _update_blocks)
        self.buf_blocks = 0
        self.cooc_f32 = None         # dense: float32 [F, F] partial sums (exact below 2**24)
        self.cooc_i64 = None         # dense: int64 [F, F] folded sums (rarely needed)
        self.since_fold = 0
        self.cooc_csr = sp.csr_matrix((F, F), dtype=np.int64)     # sparse path
        self.pres_features: list = []   # wide path: int32 feature ids of each block's presences,
        self.pres_sizes: list = []      # and presences per block, chunk by chunk in feeding order
        # candidate blocks of the sample: numpy chunks of (candidate row, feature) pairs and,
        # per candidate, its key, global block number and subset; pruned to the smallest keys
        self.stored_rows: list = []
        self.stored_cols: list = []
        self.stored_sub: list = []
        self.stored_keys: list = []
        self.stored_gidx: list = []
        self.n_stored = 0            # candidates held
        self.key_cut = _KEY_MAX      # a block with a key >= this can no longer enter the sample

    @property
    def _W(self):
        return self.left + 1 + self.right

    _tok_merge_min = 1 << 20     # pending (feature, token) pairs that trigger a merge

    _TENSORS = ("fire_count", "subset_fire", "hist", "ctx_val", "ctx_doc", "ctx_sub", "ctx_win",
                "tok_keys", "tok_counts", "cooc_f32", "cooc_i64")

    def _to(self, device):
        """Move the device-side state (buffers included) to ``device``."""
        device = torch.device(device)
        if device == self.device:
            return
        self._flush_cooc()
        for name in self._TENSORS:
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.to(device))
        self.tok_pending = [(a.to(device), b.to(device)) for a, b in self.tok_pending]
        self.device = device

    def state_dict(self) -> dict:
        """Complete state as CPU tensors and plain Python values (``torch.save``-able)."""
        self._flush_cooc()   # exact, so flushing here cannot change the final result
        pk, pc = self._pending_tokens()
        cpu = lambda t: None if t is None else t.detach().cpu().clone()  # noqa: E731
        csr = self.cooc_csr
        state = {name: cpu(getattr(self, name)) for name in self._TENSORS}
        state.update(
            config=self._config(), n_tokens=self.n_tokens, n_blocks=self.n_blocks,
            tok_pending_keys=cpu(pk), tok_pending_counts=cpu(pc), tok_pruned=self.tok_pruned,
            since_fold=self.since_fold, n_stored=self.n_stored, key_cut=int(self.key_cut),
            cooc_indptr=torch.from_numpy(csr.indptr.astype(np.int64)),
            cooc_indices=torch.from_numpy(csr.indices.astype(np.int64)),
            cooc_data=torch.from_numpy(csr.data.astype(np.int64)),
            pres_features=torch.from_numpy(_cat(self.pres_features, np.int32)),
            pres_sizes=torch.from_numpy(_cat(self.pres_sizes, np.int64)),
            stored_rows=torch.from_numpy(_cat(self.stored_rows, np.int64)),
            stored_cols=torch.from_numpy(_cat(self.stored_cols, np.int64)),
            stored_sub=torch.from_numpy(_cat(self.stored_sub, np.int64)),
            stored_keys=torch.from_numpy(_cat(self.stored_keys, np.uint64).view(np.int64)),
            stored_gidx=torch.from_numpy(_cat(self.stored_gidx, np.int64)),
        )
        return state

    def load_state_dict(self, state: dict):
        """Restore a ``state_dict()`` taken from a LayerStats built with the same arguments."""
        if state["config"] != self._config():
            diff = sorted(k for k in self._config() if state["config"].get(k) != self._config()[k])
            raise ValueError(f"checkpoint was made with different settings: {diff}")
        dev = self.device
        for name in self._TENSORS:
            t = state[name]
            setattr(self, name, None if t is None else t.to(dev))
        self.n_tokens, self.n_blocks = int(state["n_tokens"]), int(state["n_blocks"])
        pk, pc = state["tok_pending_keys"], state["tok_pending_counts"]
        self.tok_pending = [(pk.to(dev), pc.to(dev))] if len(pk) else []
        self.tok_pruned = bool(state["tok_pruned"])
        self.buf, self.buf_blocks = [], 0
        self.since_fold = int(state["since_fold"])
        self.cooc_csr = sp.csr_matrix(
            (state["cooc_data"].numpy(), state["cooc_indices"].numpy(),
             state["cooc_indptr"].numpy()), shape=(self.F, self.F))
        self.pres_features = [state["pres_features"].numpy()]
        self.pres_sizes = [state["pres_sizes"].numpy()]
        self.stored_rows = [state["stored_rows"].numpy()]
        self.stored_cols = [state["stored_cols"].numpy()]
        self.stored_sub = [state["stored_sub"].numpy()]
        self.stored_keys = [state["stored_keys"].numpy().view(np.uint64)]
        self.stored_gidx = [state["stored_gidx"].numpy()]
        self.n_stored = int(state["n_stored"])
        self.key_cut = np.uint64(state["key_cut"] % 2 ** 64)

    # ------------------------------------------------------------------ merge
    @torch.no_grad()
    def merge(self, other: "LayerStats") -> "LayerStats":
        """Add the statistics of ``other``, fed with the documents that come right after this
        one's (shards of one stream, merged in stream order); returns self.

        The result is that of one object fed both streams: counts, histograms and co-occurrence
        are integer sums; top contexts keep this side first on ties, as feeding order does;
        the block sample keeps the smallest keys with the other side's block numbers shifted
        past this side's. Only a (feature, token) counter pruned on either side (over
        ``max_token_pairs``) can differ from the unsplit stream, where pruning happens at
        other moments; ``top_tokens_exact`` is then False either way.
        """
        if other._config() != self._config():
            diff = sorted(k for k in self._config() if other._config()[k] != self._config()[k])
            raise ValueError(f"cannot merge statistics made with different settings: {diff}")
        other._to(self.device)
        self._flush_cooc()
        other._flush_cooc()
        self.fire_count += other.fire_count
        self.subset_fire += other.subset_fire
        self.hist += other.hist
        self._merge_contexts(other)
        self._merge_cooc(other)
        keys, counts = other._pending_tokens(merged=True)
        if len(keys):
            self.tok_pending.append((keys, counts))
            self._merge_pending_tokens()   # the rule a batch's tokens follow
        self.tok_pruned |= other.tok_pruned
        self._merge_sample(other)
        self.n_tokens += other.n_tokens
        self.n_blocks += other.n_blocks
        return self

    def _merge_contexts(self, other):
        k = self.k_ctx
        # this side first in the candidates: the stable sort keeps it ahead on ties, exactly
        # as the running top-k keeps earlier-fed documents ahead of later batches
        cand = torch.cat([self.ctx_val, other.ctx_val], dim=1)
        order = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :k]
        self.ctx_val = cand.gather(1, order)
        self.ctx_doc = torch.cat([self.ctx_doc, other.ctx_doc], 1).gather(1, order)
        self.ctx_sub = torch.cat([self.ctx_sub, other.ctx_sub], 1).gather(1, order)
        win = torch.cat([self.ctx_win, other.ctx_win], 1)
        self.ctx_win = win.gather(1, order[..., None].expand(-1, -1, self._W))

    def _merge_cooc(self, other):
        if self.wide:       # the other side's blocks follow this side's, as in one stream
            self.pres_features += other.pres_features
            self.pres_sizes += other.pres_sizes
            return
        if not self.dense:
            self.cooc_csr = (self.cooc_csr + other.cooc_csr).tocsr()
            return
        if other.cooc_f32 is None:
            return
        if self.cooc_f32 is None:
            self.cooc_f32 = torch.zeros(self.F, self.F, device=self.device)
        # entries of each float32 side are bounded by its blocks since its last fold: their sum
        # stays exact while the two counts together stay below 2**24
        if self.since_fold + other.since_fold >= _F32_EXACT:
            self._fold()
        self.cooc_f32 += other.cooc_f32
        self.since_fold += other.since_fold
        if other.cooc_i64 is not None:
            if self.cooc_i64 is None:
                self.cooc_i64 = torch.zeros(self.F, self.F, dtype=torch.int64, device=self.device)
            self.cooc_i64 += other.cooc_i64

    def _merge_sample(self, other):
        if not other.n_stored:
            return
        self.stored_rows.append(_cat(other.stored_rows, np.int64) + self.n_stored)
        self.stored_cols.append(_cat(other.stored_cols, np.int64))
        self.stored_sub.append(_cat(other.stored_sub, np.int64))
        self.stored_keys.append(_cat(other.stored_keys, np.uint64))
        self.stored_gidx.append(_cat(other.stored_gidx, np.int64) + self.n_blocks)
        self.n_stored += other.n_stored
        if self.n_stored >= self.max_stored_blocks:
            self._prune_sample()

    def save(self, path):
        """Write the state to ``path`` (torch.save of ``state_dict()``)."""
        torch.save(self.state_dict(), path)

    def load(self, path):
        """Load a state written by ``save`` into this (identically configured) object."""
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ----------------------------------------------------------------- update
    @torch.no_grad()
    def update(self, acts: torch.Tensor, token_ids, doc_ids, subset_ids, lengths=None):
        """Add one batch of documents (see the module docstring for the inputs)."""
        N, T, F = acts.shape
        if F != self.F:
            raise ValueError(f"acts has {F} features, expected {self.F}")
        self._to(acts.device)
        dev, i64 = acts.device, torch.int64
        token_ids = torch.as_tensor(token_ids, device=dev).to(i64).reshape(N, -1)[:, :T]
        doc_ids = torch.as_tensor(doc_ids, device=dev).to(i64).reshape(N)
        subset_ids = torch.as_tensor(subset_ids, device=dev).to(i64).reshape(N)
        if not bool(((subset_ids >= 0) & (subset_ids < len(self.subsets))).all()):
            raise ValueError(f"subset_ids must lie in [0, {len(self.subsets)})")
        if lengths is None:
            lengths = torch.full((N,), T, dtype=i64, device=dev)
        lengths = torch.as_tensor(lengths, device=dev).to(i64).reshape(N).clamp(0, T)

        # Firings as flat indices into acts: the only full pass over acts; everything below
        # works on these sparse firings (O(number of firings), not O(N T F)).
        flat = _firing_indices(acts, self.threshold)
        if bool((lengths < T).any()):                          # drop right padding
            flat = flat[(flat // F) % T < lengths[flat // (T * F)]]
        nt = flat // F                                          # document * T + position
        f = flat - nt * F
        n = nt // T
        t = nt - n * T
        v = acts.reshape(-1)[flat].float()
        tok = token_ids.reshape(-1)[nt]
        if len(tok) and not (0 <= int(tok.min()) and int(tok.max()) < len(self.vocab)):
            raise ValueError(f"token ids of firing tokens must lie in [0, {len(self.vocab)})")

        self.n_tokens += int(lengths.sum())
        S, H = len(self.subsets), len(self.edges) - 1
        sub = torch.bincount(subset_ids[n] * F + f, minlength=S * F)
        self.subset_fire += sub
        self.fire_count += sub.view(S, F).sum(0)
        inner = torch.as_tensor(self.edges[1:-1], device=dev)
        b = torch.bucketize(v, inner, right=True)  # bin i: edges[i] <= v < edges[i+1]
        self.hist += torch.bincount(f * H + b, minlength=F * H)

        self._update_tokens(f * len(self.vocab) + tok)
        self._update_contexts(n, t, f, v, N, T, token_ids, doc_ids, subset_ids, lengths)
        self._update_blocks(n, t, f, subset_ids, lengths, doc_ids)

    def _update_blocks(self, n, t, f, subset_ids, lengths, doc_ids):
        F, bs = self.F, self.block_size
        nfull = lengths // bs                                   # full blocks per document
        first = torch.cumsum(nfull, 0) - nfull                 # first block row per document
        nb = int(nfull.sum())
        # Presence matrix of this batch's blocks; firings in a trailing partial block go to a
        # scratch row nb that is cut off.
        row = torch.where(t < nfull[n] * bs, first[n] + t // bs, nb)
        pres = torch.zeros(nb + 1, F, dtype=torch.bool, device=self.device)
        pres[row, f] = True
        pres = pres[:nb]
        if self.max_stored_blocks and nb:
            self._sample_blocks(pres, nfull, first, subset_ids, doc_ids)
        self.n_blocks += nb
        # dense path: keep the 0/1 rows; sparse path: keep (row, feature) pairs
        self.buf.append(pres if self.dense else (pres.nonzero(), nb))
        self.buf_blocks += nb
        if self.buf_blocks >= self.cooc_chunk_blocks:
            self._flush_cooc()

    def _sample_blocks(self, pres, nfull, first, subset_ids, doc_ids):
        """Add this batch's blocks whose keys can still make the sample (see ``block_keys``)."""
        nb = pres.shape[0]
        per_doc = nfull.cpu().numpy()
        doc = np.repeat(doc_ids.cpu().numpy(), per_doc)
        within = np.arange(nb) - np.repeat(first.cpu().numpy(), per_doc)
        keys = block_keys(doc, within)
        take = np.flatnonzero(keys < self.key_cut)
        if not len(take):
            return
        r, c = pres[torch.from_numpy(take).to(pres.device)].nonzero(as_tuple=True)
        self.stored_rows.append(r.cpu().numpy() + self.n_stored)
        self.stored_cols.append(c.cpu().numpy())
        self.stored_sub.append(np.repeat(subset_ids.cpu().numpy(), per_doc)[take])
        self.stored_keys.append(keys[take])
        self.stored_gidx.append(self.n_blocks + take)
        self.n_stored += len(take)
        if self.n_stored >= 2 * self.max_stored_blocks:
            self._prune_sample()

    def _prune_sample(self):
        """Keep the ``max_stored_blocks`` candidates with the smallest keys, in feeding order."""
        keys = _cat(self.stored_keys, np.uint64)
        gidx = _cat(self.stored_gidx, np.int64)
        rows, cols = _cat(self.stored_rows, np.int64), _cat(self.stored_cols, np.int64)
        sub = _cat(self.stored_sub, np.int64)
        keep = np.lexsort((gidx, keys))[:self.max_stored_blocks]
        if len(keep) and len(keys) >= self.max_stored_blocks:
            self.key_cut = keys[keep[-1]]
        keep = keep[np.argsort(gidx[keep], kind="stable")]
        new_row = np.full(len(keys), -1, np.int64)
        new_row[keep] = np.arange(len(keep))
        mine = new_row[rows] >= 0
        self.stored_rows, self.stored_cols = [new_row[rows[mine]]], [cols[mine]]
        self.stored_sub, self.stored_keys, self.stored_gidx = [sub[keep]], [keys[keep]], [gidx[keep]]
        self.n_stored = len(keep)

    def _flush_cooc(self):
        """Add the buffered blocks' B^T B to the co-occurrence accumulator (wide path: keep
        their presence rows)."""
        nb = self.buf_blocks
        if nb == 0:
            return
        parts, self.buf, self.buf_blocks = self.buf, [], 0
        if self.dense:
            if self.cooc_f32 is None:
                self.cooc_f32 = torch.zeros(self.F, self.F, device=self.device)
            if self.since_fold + nb >= _F32_EXACT:
                self._fold()
            B = torch.cat(parts).float()
            # C is symmetric: accumulate only row tiles left of (and including) the diagonal
            # tile, about half of the full product; finalize mirrors the lower triangle.
            tile = max(256, -(-self.F // 16))
            for r0 in range(0, self.F, tile):
                r1 = min(self.F, r0 + tile)
                self.cooc_f32[r0:r1, :r1].addmm_(B[:, r0:r1].T, B[:, :r1])
            self.since_fold += nb
            return
        offset, rows, cols = 0, [], []
        for rc, nbp in parts:                                   # renumber rows chunk-wide
            rc = rc.cpu().numpy()
            rows.append(rc[:, 0] + offset)
            cols.append(rc[:, 1])
            offset += nbp
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        if self.wide:
            # nonzero() lists presences row by row, features ascending: the CSR rows of B
            self.pres_features.append(cols.astype(np.int32))
            self.pres_sizes.append(np.bincount(rows, minlength=nb).astype(np.int64))
            return
        B = sp.csr_matrix((np.ones(len(rows), np.int32), (rows, cols)), shape=(nb, self.F))
        self.cooc_csr = (self.cooc_csr + (B.T @ B).astype(np.int64)).tocsr()

    def _fold(self):
        if self.cooc_i64 is None:
            self.cooc_i64 = torch.zeros(self.F, self.F, dtype=torch.int64, device=self.device)
        self.cooc_i64 += self.cooc_f32.to(torch.int64)
        self.cooc_f32.zero_()
        self.since_fold = 0

    def _update_contexts(self, n, t, f, v, N, T, token_ids, doc_ids, subset_ids, lengths):
        F, k, dev = self.F, self.k_ctx, self.device
        # Per (document, feature): peak value and its first position.
        key = n * F + f
        peak = torch.full((N * F,), -torch.inf, device=dev)
        peak.scatter_reduce_(0, key, v, "amax")
        pos = torch.full((N * F,), T, dtype=torch.int64, device=dev)
        pos.scatter_reduce_(0, key, torch.where(v == peak[key], t, T), "amin")
        # Merge with the running top-k; stable sort keeps earlier documents first on ties.
        cand = torch.cat([self.ctx_val, peak.view(N, F).T], dim=1)          # [F, k + N]
        order = torch.sort(cand, dim=1, descending=True, stable=True).indices[:, :k]
        rows = (order >= k).any(1).nonzero()[:, 0]          # features whose top-k changed
        if len(rows) == 0:
            return
        o = order[rows]
        old = o.clamp(max=k - 1)
        val = cand[rows].gather(1, o)
        doc = self.ctx_doc[rows].gather(1, old)
        sub = self.ctx_sub[rows].gather(1, old)
        win = self.ctx_win[rows].gather(1, old[..., None].expand(-1, -1, self._W))
        i, r = (o >= k).nonzero(as_tuple=True)              # new entries: row i, rank r
        j = o[i, r] - k                                     # their document in the batch
        doc[i, r] = doc_ids[j]
        sub[i, r] = subset_ids[j]
        wp = pos.view(N, F)[j, rows[i]][:, None] + torch.arange(-self.left, self.right + 1,
                                                                 device=dev)
        ok = (wp >= 0) & (wp < lengths[j][:, None])       # clipped at the document ends
        win[i, r] = torch.where(ok, token_ids[j[:, None], wp.clamp(0, T - 1)], -1)
        self.ctx_val[rows], self.ctx_doc[rows], self.ctx_sub[rows] = val, doc, sub
        self.ctx_win[rows] = win

    def _update_tokens(self, keys):
        self.tok_pending.append(_count_unique(keys))
        self._merge_pending_tokens()

    def _merge_pending_tokens(self):
        # Merge when the pending pairs outgrow the merged ones: amortised O(log) re-sorting.
        if sum(len(p[0]) for p in self.tok_pending) > max(len(self.tok_keys), self._tok_merge_min):
            self.tok_keys, self.tok_counts = self._pending_tokens(merged=True)
            self.tok_pending = []
            if len(self.tok_keys) > self.max_token_pairs:
                self._prune_tokens()

    def _pending_tokens(self, merged=False):
        """Pending (keys, counts), summed over chunks; with merged=True also the running ones."""
        parts = self.tok_pending + ([(self.tok_keys, self.tok_counts)] if merged else [])
        if not parts:
            return self.tok_keys[:0], self.tok_counts[:0]
        return _sum_by_key(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))

    def _prune_tokens(self):
        V = len(self.vocab)
        rank = _rank_within(self.tok_keys // V, -self.tok_counts, self.tok_keys % V)
        keep = rank < self.token_prune_keep
        self.tok_keys, self.tok_counts = self.tok_keys[keep], self.tok_counts[keep]
        self.tok_pruned = True

    # --------------------------------------------------------------- finalize
    @torch.no_grad()
    def finalize(self) -> LayerStatsResult:
        """Everything as numpy / scipy / pandas objects named like the atlas files."""
        F, S, H, V = self.F, len(self.subsets), len(self.edges) - 1, len(self.vocab)
        self._flush_cooc()
        if self.dense:
            cooc = sp.csr_matrix((F, F), dtype=np.int64)
            if self.cooc_f32 is not None:
                full = _mirror_lower(self.cooc_f32)             # float32, still exact
                if self.cooc_i64 is not None:
                    full = full.to(torch.int64) + _mirror_lower(self.cooc_i64)
                cooc = _dense_to_csr(full.cpu().numpy())
                del full
        elif self.wide:
            sizes = _cat(self.pres_sizes, np.int64)
            B = sp.csr_matrix((np.ones(int(sizes.sum()), np.int32), _cat(self.pres_features, np.int32),
                               np.concatenate([[0], np.cumsum(sizes)])), shape=(len(sizes), F))
            cooc = top_partners(B, self.cooc_topk, dtype=np.int64, max_entries=self.cooc_chunk_entries)
            del B
        else:
            cooc = self.cooc_csr.copy()
        cooc.sort_indices()

        self._prune_sample()
        rows = _cat(self.stored_rows, np.int64)
        blocks = sp.csr_matrix((np.ones(len(rows), bool), (rows, _cat(self.stored_cols, np.int64))),
                               shape=(self.n_stored, F), dtype=bool)
        blocks.sort_indices()

        return LayerStatsResult(
            fire_count=_np(self.fire_count),
            cooc=cooc,
            subset_fire=_np(self.subset_fire.view(S, F).T),
            blocks=blocks,
            block_subset=_cat(self.stored_sub, np.int64).astype(np.int16),
            act_hist=_np(self.hist.view(F, H)),
            act_hist_edges=self.edges.copy(),
            contexts=self._contexts_table(),
            top_tokens=self._top_tokens_table(*self._pending_tokens(merged=True), V),
            n_tokens=self.n_tokens, n_blocks=self.n_blocks, threshold=self.threshold,
            block_size=self.block_size, top_tokens_exact=not self.tok_pruned,
            cooc_topk=self.cooc_topk if self.wide else None)

    def _contexts_table(self) -> pd.DataFrame:
        val = self.ctx_val.cpu().numpy()
        feat, rank = np.nonzero(val > -np.inf)                # rows sorted by feature, rank
        win = self.ctx_win.cpu().numpy()[feat, rank]          # [n, W], -1 = outside document
        vocab, subsets = self.vocab, self.subsets
        tokens = [[vocab[i] for i in w[w >= 0]] for w in win]
        peak = (win[:, :self.left] >= 0).sum(1)               # window clipped at document start
        return pd.DataFrame({
            "feature": feat.astype(np.int32), "rank": rank.astype(np.int16),
            "value": val[feat, rank].astype(np.float32),
            "doc": self.ctx_doc.cpu().numpy()[feat, rank].astype(np.int64),
            "subset": [subsets[i] for i in self.ctx_sub.cpu().numpy()[feat, rank]],
            "tokens": tokens, "peak": peak.astype(np.int16)})

    def _top_tokens_table(self, keys, counts, V) -> pd.DataFrame:
        feat, tok = keys // V, keys % V
        rank = _rank_within(feat, -counts, tok)
        keep = rank < self.k_tok
        feat, tok, rank, counts = (x[keep].cpu().numpy() for x in (feat, tok, rank, counts))
        order = np.lexsort((rank, feat))
        feat, tok, rank, counts = feat[order], tok[order], rank[order], counts[order]
        return pd.DataFrame({"feature": feat.astype(np.int32), "rank": rank.astype(np.int16),
                             "token": [self.vocab[i] for i in tok],
                             "count": counts.astype(np.int64)})


def _mirror_lower(x: torch.Tensor) -> torch.Tensor:
    """Symmetric matrix from the lower triangle (diagonal included) of x."""
    low = torch.tril(x, -1)
    full = low + low.T              # disjoint supports: no sums, exact in any dtype
    full.diagonal().copy_(x.diagonal())
    return full


def _dense_to_csr(a: np.ndarray) -> sp.csr_matrix:
    """int64 CSR of a dense 2-D array of integer values (faster than scipy's COO route)."""
    flat = np.flatnonzero(a)
    indptr = np.zeros(a.shape[0] + 1, np.int64)
    np.cumsum(np.count_nonzero(a, axis=1), out=indptr[1:])
    idx_dtype = np.int32 if a.shape[1] < 2 ** 31 and len(flat) < 2 ** 31 else np.int64
    return sp.csr_matrix((a.ravel()[flat].astype(np.int64), (flat % a.shape[1]).astype(idx_dtype),
                          indptr.astype(idx_dtype)), shape=a.shape)


def _firing_indices(acts: torch.Tensor, threshold: float) -> torch.Tensor:
    """Flat indices of acts > threshold, ascending (numpy is ~4x faster than torch on CPU)."""
    if acts.device.type == "cpu" and acts.dtype in (torch.float16, torch.float32, torch.float64):
        return torch.from_numpy(np.flatnonzero(acts.detach().reshape(-1).numpy() > threshold))
    return (acts > threshold).reshape(-1).nonzero()[:, 0]


def _count_unique(keys: torch.Tensor):
    """Sorted unique values of an int64 tensor and how often each occurs."""
    return _sum_by_key(keys, None)


def _sum_by_key(keys: torch.Tensor, counts, use_numpy=None):
    """Sorted unique keys and the sum of ``counts`` (None = ones) per key. On the CPU numpy's
    sorts are several times faster than torch.unique / torch.searchsorted."""
    if not (keys.device.type == "cpu" if use_numpy is None else use_numpy):
        if counts is None:
            return torch.unique(keys, return_counts=True)
        u, inv = torch.unique(keys, return_inverse=True)
        return u, torch.zeros_like(u).index_add_(0, inv, counts)
    k = keys.numpy()
    if counts is None:
        k, c = np.sort(k), None
    else:
        order = np.argsort(k, kind="stable")
        k, c = k[order], counts.numpy()[order]
    start = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    c = np.diff(np.r_[start, len(k)]) if c is None else np.add.reduceat(c, start) if len(k) else c
    return torch.from_numpy(k[start]), torch.from_numpy(np.asarray(c, dtype=np.int64))


def _rank_within(group: torch.Tensor, *sort_keys: torch.Tensor) -> torch.Tensor:
    """Rank of each element inside its group, ordered by ``sort_keys`` (first = primary)."""
    order = torch.arange(len(group), device=group.device)
    for key in reversed((group,) + sort_keys):                # least significant key first
        order = order[torch.sort(key[order], stable=True).indices]
    g = group[order]
    start = torch.ones_like(g, dtype=torch.bool)
    start[1:] = g[1:] != g[:-1]
    idx = torch.arange(len(g), device=g.device)
    first = torch.cummax(torch.where(start, idx, 0), 0).values
    rank = torch.empty_like(order)
    rank[order] = idx - first
    return rank


def _np(t: torch.Tensor) -> np.ndarray:
    """A contiguous numpy copy (never a view of the live state)."""
    return np.ascontiguousarray(t.detach().cpu().numpy()).copy()


_KEY_MAX = np.uint64(2 ** 64 - 1)


def block_keys(doc_ids, block_index) -> np.ndarray:
    """Sampling key [B] uint64 of each block from its document id and index within it.

    A fixed 64-bit mix (splitmix64's finaliser) of ``doc_id * 2**24 + block_index``: the
    blocks with the smallest keys form a uniform sample without replacement that is the
    same whatever order or batches the blocks arrive in, and samples of different sizes nest.
    """
    with np.errstate(over="ignore"):
        x = (np.asarray(doc_ids, np.int64).astype(np.uint64) << np.uint64(24)) \
            + np.asarray(block_index, np.int64).astype(np.uint64)
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _cat(chunks, dtype) -> np.ndarray:
    return np.concatenate(chunks).astype(dtype) if chunks else np.zeros(0, dtype)
