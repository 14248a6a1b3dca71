"""SAEs: load anything sae-lens loads, check it fits the model, or train one here with sae-lens.

* ``load_sae(spec)``: ``spec`` is a local folder saved by sae-lens (``SAE.load_from_disk``), or
  ``release/sae_id`` of sae-lens' pretrained directory (``SAE.from_pretrained``), e.g.
  ``gpt2-small-res-jb/blocks.8.hook_resid_pre`` or
  ``gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical`` or
  ``gemma-scope-2-270m-pt-res/layer_12_width_16k_l0_medium`` (Gemma Scope 2, offline from the cache too).
* ``check_fit(loaded, model, layer)``: refuses an SAE whose input width or hook does not
  match the model.
* ``train_sae(acts, hook, ...)``: a TopK SAE (Gao et al. 2024) trained with sae-lens' own
  ``TopKTrainingSAE`` and ``SAETrainer`` on captured activations, returned as the inference
  ``TopKSAE`` after a save/load round trip through the sae-lens disk format (so a trained
  SAE is loaded exactly like a pretrained one), with its training settings and metrics.
"""
from __future__ import annotations

import difflib
import math
import tempfile
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from precompute.errors import SAEError
from precompute.models import LoadedModel, hook_name, hub_reachable, parse_hook


@dataclass
class LoadedSAE:
    """An sae-lens SAE with where it came from and the hook it reads."""

    sae: object                 # sae_lens.SAE
    source: str                 # "sae-lens:<release>/<sae_id>", a local path, or "trained"
    hook: str                   # e.g. "blocks.12.hook_resid_post"
    layer: int
    architecture: str
    neuronpedia: str | None = None
    training: dict | None = None
    metrics: dict = field(default_factory=dict)

    @property
    def width(self) -> int:
        return int(self.sae.cfg.d_sae)

    @property
    def d_in(self) -> int:
        return int(self.sae.cfg.d_in)

    def decoder(self) -> np.ndarray:
        """Decoder rows W_dec, float32 [F, d]."""
        return self.sae.W_dec.detach().float().cpu().numpy()


def _wrap(sae, source: str, neuronpedia: str | None = None) -> LoadedSAE:
    hook = sae.cfg.metadata.hook_name
    if not hook:
        raise SAEError(f"SAE {source} does not say which hook it reads (cfg.metadata.hook_name is empty)")
    try:
        layer, _ = parse_hook(hook)
    except Exception:
        raise SAEError(f"SAE {source} reads hook {hook!r}, which saegeo cannot capture; supported: "
                       f"blocks.<L>.hook_resid_pre / hook_resid_post / hook_attn_out / hook_mlp_out") from None
    # sae-lens copies the directory's Neuronpedia id into the config, and a folder saved from
    # such an SAE keeps it; the directory lookup only covers SAEs loaded by release name.
    neuronpedia = getattr(sae.cfg.metadata, "neuronpedia_id", None) or neuronpedia
    return LoadedSAE(sae=sae, source=source, hook=hook, layer=layer, architecture=sae.cfg.architecture(),
                     neuronpedia=neuronpedia)


@contextmanager
def _tensor_shapes_from_cache():
    """sae-lens' Gemma Scope 2 converter (``gemma_3``) reads d_in and d_sae from the header of
    ``params.safetensors`` with HTTP range requests that ignore HF_HUB_OFFLINE, so a fully
    cached SAE still fails without network. While offline, read that header from the cached
    file instead; the rest of sae-lens' converter and loader runs unchanged."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    original = getattr(loaders, "get_safetensors_tensor_shapes", None)
    if original is None:    # a sae-lens without the remote header probe needs no help
        yield
        return

    def from_cache(repo_id: str, filename: str) -> dict[str, list[int]]:
        from huggingface_hub import hf_hub_download
        from safetensors import safe_open

        with safe_open(hf_hub_download(repo_id, filename), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}

    loaders.get_safetensors_tensor_shapes = from_cache
    try:
        yield
    finally:
        loaders.get_safetensors_tensor_shapes = original


def _split_release(spec: str) -> tuple[str, str]:
    """Split ``release/sae_id`` at the longest prefix that is a known release."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    parts = spec.split("/")
    for i in range(len(parts) - 1, 0, -1):
        release = "/".join(parts[:i])
        if release in directory:
            return release, "/".join(parts[i:])
    head = parts[0]
    close = difflib.get_close_matches(head, list(directory), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise SAEError(f"unknown SAE {spec!r}: not a local folder and no sae-lens release matches "
                   f"(expected release/sae_id, e.g. gpt2-small-res-jb/blocks.8.hook_resid_pre).{hint}")


def check_sae_spec(spec: str) -> None:
    """Raise ``SAEError`` unless ``spec`` names a sae-lens folder or a known release/sae_id.

    Needs neither the network nor the model, so a run can refuse a mistyped SAE at once.
    """
    spec = str(spec).removeprefix("sae-lens:")
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "cfg.json").is_file():
            raise SAEError(f"{path} is not an SAE saved by sae-lens (no cfg.json)")
        return
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, sae_id = _split_release(spec)
    lookup = get_pretrained_saes_directory()[release]
    if sae_id not in lookup.saes_map:
        close = difflib.get_close_matches(sae_id, list(lookup.saes_map), n=3, cutoff=0.3)
        some = close or list(lookup.saes_map)[:3]
        raise SAEError(f"release {release!r} has no SAE {sae_id!r}; for example: {', '.join(some)}")


def load_sae(spec: str, device: str | torch.device = "cpu") -> LoadedSAE:
    """Load an SAE from a local sae-lens folder or sae-lens' pretrained directory.

    Raises ``SAEError`` for unknown releases or ids, unreadable folders, or no network.
    """
    from sae_lens import SAE

    spec = str(spec)
    if spec.startswith("sae-lens:"):
        spec = spec[len("sae-lens:"):]
    device = str(device)
    path = Path(spec).expanduser()
    check_sae_spec(spec)
    if path.exists():
        try:
            # float32 whatever the file holds: the shipped SAEs are float16 on disk to stay
            # small, but encoding and the statistics are done in float32
            sae = SAE.load_from_disk(path, device=device, dtype="float32")
        except Exception as e:  # noqa: BLE001 - any failure to read the folder is the same problem
            raise SAEError(f"could not load the SAE in {path}: {str(e).splitlines()[0]}") from None
        return _wrap(sae, str(path.resolve()))

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    release, sae_id = _split_release(spec)
    lookup = get_pretrained_saes_directory()[release]
    from huggingface_hub import constants

    online = hub_reachable()
    offline_before = constants.HF_HUB_OFFLINE
    try:
        # Without network only the local cache can serve; offline mode fails at once
        # instead of retrying the connection for half a minute.
        constants.HF_HUB_OFFLINE = offline = offline_before or not online
        with warnings.catch_warnings(), (_tensor_shapes_from_cache() if offline else nullcontext()):
            warnings.simplefilter("ignore")
            sae = SAE.from_pretrained(release, sae_id, device=device)
    except Exception as e:  # noqa: BLE001 - the Hub client raises many types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        # Cache misses and refused connections are OSErrors; anything else (a damaged cached
        # file, say) is reported as itself rather than as a miss.
        if not online and isinstance(e, OSError):
            # Name the Hub repo and folder: release/sae_id is sae-lens' name, not a Hub path.
            raise SAEError(
                f"could not load SAE '{release}/{sae_id}': the Hugging Face Hub could not be reached and "
                f"it is not in the local cache ({constants.HF_HUB_CACHE}). On a machine with network "
                f"access, run `hf download {lookup.repo_id} --include '{lookup.saes_map[sae_id]}*'` and "
                f"copy its cache here (HF_HOME), or load the SAE there, save it with SAE.save_model and "
                f"pass that folder.") from None
        raise SAEError(f"could not load SAE {release}/{sae_id}: {msg}") from None
    finally:
        constants.HF_HUB_OFFLINE = offline_before
    return _wrap(sae, f"sae-lens:{release}/{sae_id}", lookup.neuronpedia_id.get(sae_id))


def check_fit(loaded: LoadedSAE, model: LoadedModel, layer: int | None = None) -> None:
    """Refuse an SAE that does not fit ``model`` (and, if given, the requested ``layer``)."""
    if loaded.d_in != model.d_model:
        raise SAEError(f"SAE {loaded.source} reads vectors of width {loaded.d_in}, but {model.name} "
                       f"has d_model = {model.d_model}: this SAE was trained for another model")
    if not 0 <= loaded.layer < model.n_layers:
        raise SAEError(f"SAE {loaded.source} reads {loaded.hook}, but {model.name} has layers "
                       f"0..{model.n_layers - 1}: this SAE was trained for another model")
    if layer is not None and loaded.layer != layer:
        raise SAEError(f"SAE {loaded.source} reads {loaded.hook} (layer {loaded.layer}), not layer {layer}; "
                       f"list the layers in the same order as the SAEs, or leave the layers out")


# ---------------------------------------------------------------------- metrics


@torch.no_grad()
def reconstruction_metrics(sae, acts: np.ndarray | torch.Tensor, threshold: float = 0.0,
                           batch: int = 4096) -> dict:
    """Explained variance ``1 - sum|x - x_hat|^2 / sum|x - mean x|^2``, mean L0 (features
    with activation > ``threshold`` per token) and dead features (never above it) of
    ``sae`` on activations [N, d]."""
    dev = sae.W_dec.device
    n_rows = len(acts)
    sum_x = torch.zeros(acts.shape[1], dtype=torch.float64)
    for i in range(0, n_rows, batch):   # chunked: 2M bf16 rows must never become one float64 copy
        sum_x += _as_float(acts[i:i + batch]).double().sum(0)
    mean = (sum_x / max(n_rows, 1)).to(dev)
    sse = sst = l0 = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=dev)
    for i in range(0, n_rows, batch):
        x = _as_float(acts[i:i + batch]).to(dev).to(sae.W_dec.dtype)
        f = sae.encode(x)
        xh = sae.decode(f)
        sse += float(((x.double() - xh.double()) ** 2).sum())
        sst += float(((x.double() - mean) ** 2).sum())
        on = f > threshold
        l0 += float(on.sum())
        fired |= on.any(0)
    n = max(n_rows, 1)
    return {"explained_variance": 1.0 - sse / sst if sst > 0 else float("nan"), "l0": l0 / n,
            "dead_features": int((~fired).sum()), "n_tokens": int(n_rows)}


# ---------------------------------------------------------------------- training


def _as_float(rows) -> torch.Tensor:
    """float32 tensor of rows read from a numpy array or a (bfloat16) torch tensor."""
    return rows.float() if torch.is_tensor(rows) else torch.from_numpy(np.asarray(rows, dtype=np.float32))


def _batches(acts, batch: int, seed: int, device, skip: int = 0):
    """Endless minibatches of rows of ``acts`` (numpy array, memmap or torch tensor),
    reshuffled every epoch (seeded); the first ``skip`` batches are passed over without being
    read, so a resumed run sees the same stream as an uninterrupted one."""
    rng = np.random.default_rng(seed)
    n = len(acts)
    per_epoch = max(1, n // batch)
    while True:
        order = rng.permutation(n)
        if skip >= per_epoch:
            skip -= per_epoch
            continue
        for i in range(skip * batch, n - batch + 1, batch):
            idx = np.sort(order[i:i + batch])   # sorted reads are faster on a memmap
            yield _as_float(acts[torch.from_numpy(idx)] if torch.is_tensor(acts) else acts[idx]).to(device)
        skip = 0


def train_sae(acts, hook: str, model_name: str = "", width: int = 2048, k: int = 32,
              n_samples: int | None = None, batch_size: int = 256, lr: float | None = None,
              seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
              autocast: bool = False, checkpoint_dir: str | Path | None = None,
              n_checkpoints: int = 0, metrics_tokens: int | None = None) -> LoadedSAE:
    """Train a TopK SAE on activations with sae-lens' ``TopKTrainingSAE`` + ``SAETrainer``.

    Parameters
    ----------
    acts : [N, d] activations of ``hook`` (BOS positions excluded by the caller): a float
        numpy array or memmap, or a torch tensor (bfloat16 keeps 2 million tokens in 2-3 GB).
    width, k : number of features F and active features per token (TopK, Gao et al. 2024).
    n_samples : training samples seen (default 4 epochs over ``acts``).
    batch_size : samples per step. lr : Adam learning rate (default ``6e-4 / sqrt(F / 2**14)``:
        the 1/sqrt(F) scaling of Gao et al., with a larger constant because the small
        batches and short runs here take few steps). Inputs are normalised to mean squared norm d_in
        (sae-lens ``expected_average_only_in``; folded back into the weights at the end).
    seed : weight initialisation and data order.
    autocast : bfloat16 autocast in the trainer (sae-lens ``autocast``): on CPUs with native
        bf16 matrix support about 1.4x the float32 samples/s; parameters and Adam stay float32.
    checkpoint_dir, n_checkpoints : save the SAE, optimiser and trainer state ``n_checkpoints``
        times during training into ``checkpoint_dir/latest`` (replaced atomically); a later call
        with the same arguments resumes from it.
    metrics_tokens : measure the returned training metrics on the first rows only.

    Returns the inference SAE (decoder rows folded to unit norm), loaded back through
    ``SAE.load_from_disk`` from a folder written by ``save_inference_model``, with
    ``training`` settings and ``metrics`` on the training activations.
    """
    from sae_lens import SAE
    from sae_lens.config import SAETrainerConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    layer, _ = parse_hook(hook)
    n, d = acts.shape
    if n < batch_size:
        batch_size = max(1, n)
    n_samples = int(n_samples or 4 * n)
    lr = float(lr or 6e-4 / math.sqrt(width / 2 ** 14))
    steps = max(1, n_samples // batch_size)
    device = str(device)
    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(
        d_in=d, d_sae=width, k=k, device=device, normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(model_name=model_name, hook_name=hook, prepend_bos=True))
    sae = TopKTrainingSAE(cfg)
    n_norm = max(1, min(50, n // batch_size))
    trainer_cfg = SAETrainerConfig(
        total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=lr,
        lr_end=0.0, lr_warm_up_steps=max(1, steps // 20), lr_decay_steps=steps // 5, device=device,
        dead_feature_window=max(50, steps // 10), feature_sampling_window=max(100, steps // 5),
        n_batches_for_norm_estimate=n_norm, autocast=autocast,
        n_checkpoints=n_checkpoints if checkpoint_dir else 0, checkpoint_path=None)
    latest = Path(checkpoint_dir) / "latest" if checkpoint_dir else None
    skip = 0
    if latest is not None and not latest.exists() and latest.with_name(".latest.old").exists():
        latest.with_name(".latest.old").rename(latest)   # killed between the two renames
    if latest is not None and (latest / "sae.pt").is_file():
        sae.load_state_dict(torch.load(latest / "sae.pt", map_location=device))
    trainer = SAETrainer(trainer_cfg, sae, iter(()))
    trainer.save_checkpoint_fn = _checkpoint_saver(latest, sae, trainer)
    if latest is not None and (latest / "sae.pt").is_file():
        trainer.load_trainer_state(latest)
        done = trainer.n_training_samples
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > done]
        skip = n_norm + done // batch_size   # the norm estimate read n_norm batches first
    trainer.data_provider = _batches(acts, batch_size, seed, device, skip=skip)
    with torch.random.fork_rng(devices=[]), _quiet_progress(progress):
        torch.manual_seed(seed)
        sae = trainer.fit()
    sae.fold_W_dec_norm()   # unit decoder rows: the point cloud of METHODS is the directions
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp, device=device)
    training = {
        "trainer": "sae_lens.SAETrainer", "architecture": "topk", "width": width, "k": k,
        "n_train_tokens": int(n), "n_samples": steps * batch_size, "batch_size": batch_size,
        "steps": steps, "lr": lr, "lr_warm_up_steps": trainer_cfg.lr_warm_up_steps,
        "lr_decay_steps": trainer_cfg.lr_decay_steps, "normalize_activations": "expected_average_only_in",
        "aux_loss_coefficient": cfg.aux_loss_coefficient, "autocast": bool(autocast), "seed": seed,
    }
    metrics = reconstruction_metrics(inference, acts[:metrics_tokens], threshold=0.0)
    out = _wrap(inference, "trained")
    out.layer, out.training, out.metrics = layer, training, {f"train_{k_}": v for k_, v in metrics.items()}
    return out


def _checkpoint_saver(latest: Path | None, sae, trainer):
    """sae-lens calls this at each of its checkpoints: the training SAE's own state dict and
    the trainer's state (optimiser, schedules, activation scaler), swapped in atomically."""
    def save(checkpoint_path=None):
        if latest is None:
            return
        import os
        import shutil

        tmp = latest.with_name(f".latest.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save(sae.state_dict(), tmp / "sae.pt")
        trainer.save_trainer_state(tmp)
        old = latest.with_name(".latest.old")
        shutil.rmtree(old, ignore_errors=True)
        if latest.exists():
            os.replace(latest, old)
        os.replace(tmp, latest)
        shutil.rmtree(old, ignore_errors=True)
    return save


class _quiet_progress:
    """Silence sae-lens' own progress bar when ``progress`` is False."""

    def __init__(self, progress: bool):
        self.progress = progress

    def __enter__(self):
        if not self.progress:
            import sae_lens.training.sae_trainer as st

            self._orig = st.tqdm
            st.tqdm = lambda *a, **kw: self._orig(*a, **{**kw, "disable": True})
        return self

    def __exit__(self, *exc):
        if not self.progress:
            import sae_lens.training.sae_trainer as st

            st.tqdm = self._orig


def save_sae(loaded: LoadedSAE, path: str | Path) -> Path:
    """Save in sae-lens format (``SAE.load_from_disk`` reads it back)."""
    path = Path(path)
    loaded.sae.save_model(path)
    return path


def default_hook(layer: int) -> str:
    return hook_name(layer, "resid_post")
