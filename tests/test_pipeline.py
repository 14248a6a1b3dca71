"""The precompute pipeline end to end on the real SmolLM2: tiny atlas, kill and resume, bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.atlas import open_atlas
from precompute.errors import PrecomputeError
from precompute.models import hook_name, load_model
from precompute.pipeline import PrecomputeConfig, run_precompute
from precompute.saes import load_sae

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.model

# A run small enough to do twice (about 15 s in process): one layer, 3000 tokens.
MICRO = dict(layers=[1], max_tokens=3000, train_tokens=3000, seq_len=128, block_size=32, sae_width=128,
             sae_k=8, train_epochs=4, batch_size=4, checkpoint_every=1, eval_tokens=1024,
             word_pairs=False, geometry=False, progress=False, threads=1)
RAW = ["fire_count.npy", "cooc.npz", "subset_fire.npy", "blocks.npz", "block_subset.npy", "act_hist.npy",
       "act_hist_edges.npy", "contexts.parquet", "top_tokens.parquet", "decoder.npy"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "atlas"
    # geometry=False: the geometry stage has its own tests; this keeps the module near a minute
    return run_precompute(PrecomputeConfig(profile="tiny", out=out, progress=False, threads=1, geometry=False))


def test_tiny_profile_writes_a_valid_atlas(tiny):
    atlas = open_atlas(tiny)                       # checksums, shapes, dtypes
    m = atlas.manifest
    assert m.model.name == "SmolLM2-135M-Instruct" and (m.model.n_layers, m.model.d_model) == (30, 576)
    assert m.corpus.subsets == ["stdlib_code", "language_reference", "package_docs", "licenses", "math_docstrings"]
    assert m.corpus.n_tokens == 12_000 and m.configs["precompute"]["profile"] == "tiny"
    assert [i.layer for i in m.layers] == [2, 5]
    # published document length: seq_len (256 here) counts BOS, so 255 tokens follow it and a
    # long document has 3 full 64-token blocks, not 4
    assert m.corpus.doc_tokens == 255 and m.corpus.document_length == "256 tokens per document including BOS"
    assert m.layers[0].n_blocks <= 3 * m.corpus.n_documents
    for info in m.layers:
        L, F = info.layer, 512
        assert info.hook == hook_name(L) and info.threshold == 0.0 and info.n_tokens == 12_000
        assert info.sae.source == "trained" and info.sae.architecture == "topk" and info.sae.width == F
        assert info.sae.training["k"] == 16 and info.sae.metrics["explained_variance"] > 0.7
        fire = np.asarray(atlas.array(f"layers/{L}/fire_count.npy"))
        assert fire.shape == (F,) and fire.sum() / info.n_tokens == pytest.approx(16, abs=0.05)
        np.testing.assert_array_equal(np.asarray(atlas.array(f"layers/{L}/subset_fire.npy")).sum(1), fire)
        C, B = atlas.sparse(f"layers/{L}/cooc.npz"), atlas.sparse(f"layers/{L}/blocks.npz")
        assert B.shape == (info.n_blocks, F) and info.n_blocks > 100       # every block stored here
        np.testing.assert_array_equal(C.diagonal(), np.asarray(B.sum(0)).ravel())
        assert (C != C.T).nnz == 0
        # the SAE stored in the atlas loads with sae-lens and is the decoder of the atlas
        sae = load_sae(str(tiny / "saes" / str(L)))
        np.testing.assert_array_equal(sae.decoder(), np.asarray(atlas.array(f"layers/{L}/decoder.npy")))
        assert set(atlas.table(f"layers/{L}/contexts.parquet")["subset"]) <= set(m.corpus.subsets)


def test_tiny_word_pairs_are_hidden_states_of_the_last_token(tiny):
    atlas = open_atlas(tiny)
    pairs = atlas.table("wordpairs/pairs.parquet")
    assert list(pairs.columns) == ["task", "input", "output", "input_last_token", "output_last_token"]
    assert atlas.manifest.model.dtype in ("bfloat16", "float32")
    lm = load_model("smollm2", device="cpu", dtype=atlas.manifest.model.dtype)
    h_in = np.asarray(atlas.array("layers/5/word_h_in.npy"))
    assert h_in.shape == (len(pairs), 576)
    word = pairs["input"].iloc[3]
    ids = torch.tensor([[lm.bos_token_id] + lm.tokenize(word)])
    # published layer convention: Hugging Face's hidden_states[5], the stream entering block 5
    assert atlas.manifest.layer(5).word_pair_hook == "blocks.5.hook_resid_pre"
    with torch.no_grad():
        hs = lm.model(ids, output_hidden_states=True).hidden_states
    h, h_next = hs[5][0, -1].float().numpy(), hs[6][0, -1].float().numpy()
    # the pipeline ran 64 words per padded batch: in bfloat16 the batched and single-sequence
    # products round differently, so compare directions and norms, not bits
    def cosine(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    cos = cosine(h_in[3], h)
    assert cos > 0.999 and np.linalg.norm(h_in[3]) == pytest.approx(np.linalg.norm(h), rel=1e-2)
    assert cosine(h_in[3], h_next) < cos               # not block 5's output (the SAE hook)
    other = np.asarray(atlas.array("layers/5/word_h_in.npy"))[4]
    assert float(other @ h / (np.linalg.norm(other) * np.linalg.norm(h))) < cos
    assert pairs["input_last_token"].iloc[3] == lm.tokenizer.decode(lm.tokenize(word)[-1:])


def _same_raw(a: Path, b: Path):
    A, B = open_atlas(a), open_atlas(b)
    for L in A.layer_ids:
        for name in RAW:
            rel = f"layers/{L}/{name}"
            if name.endswith(".npy"):
                np.testing.assert_array_equal(A.array(rel), B.array(rel), err_msg=rel)
            elif name.endswith(".npz"):
                assert (A.sparse(rel) != B.sparse(rel)).nnz == 0, rel
            else:
                assert A.table(rel).equals(B.table(rel)), rel
    assert A.manifest.layers == B.manifest.layers


def test_sigkill_then_resume_gives_identical_counts(tmp_path):
    # three shards of two batches: the pass leaves something to resume from (a checkpoint
    # inside a shard, or saved shards) for longer than one shard's few batches
    run = {**MICRO, "shard_batches": 2}
    ref = run_precompute(PrecomputeConfig(**run, out=tmp_path / "ref"))
    out = tmp_path / "killed"
    cfg = json.dumps({**run, "out": str(out)})
    code = ("import json, sys; from precompute.pipeline import PrecomputeConfig, run_precompute; "
            "run_precompute(PrecomputeConfig(**json.loads(sys.argv[1])))")
    proc = subprocess.Popen([sys.executable, "-c", code, cfg], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    work = out.with_name("killed.partial")
    deadline = time.time() + 300
    try:   # kill in the middle of the statistics pass, after the SAE was trained and saved
        while not ((work / "stats.pt").exists() or any(work.glob("shards/*.pt"))) and proc.poll() is None \
                and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()                                  # nothing that looks like an atlas
    assert (work / "saes" / "1" / "cfg.json").is_file()
    resumed = run_precompute(PrecomputeConfig(**run, out=out, resume=True))
    _same_raw(ref, resumed)
    assert not work.exists()


def test_a_wide_layer_keeps_its_top_partners_and_says_so(tmp_path):
    """A layer wider than cooc_wide_from (128 features over 64 here): cooc.npz is each feature's
    top partners, exact; the manifest says so; only the geometry stage's wide path takes it."""
    from analysis.partners import top_partners
    from analysis.stage import GeometryConfig, run_geometry

    out = run_precompute(PrecomputeConfig(**MICRO, out=tmp_path / "a", cooc_wide_from=64, cooc_topk=4,
                                          geometry_config={"wide_from": 64}))
    atlas = open_atlas(out)
    info = atlas.manifest.layers[0]
    assert info.cooc_topk == 4 and atlas.manifest.configs["precompute"]["cooc_wide_from"] == 64
    C, B = atlas.sparse("layers/1/cooc.npz"), atlas.sparse("layers/1/blocks.npz")
    assert B.shape[0] == info.n_blocks > 50 and C.dtype == np.int64     # every block is stored here
    assert (C != top_partners(B, 4, dtype=np.int64)).nnz == 0
    assert C.nnz < 0.8 * (B.T.astype(np.int64) @ B).nnz
    small = dict(ks=[2, 4], n_permutations=5, n_random=2, umap=False, entropy_samples=256, entropy_bootstrap=2,
                 crystals=False)
    with pytest.raises(ValueError, match="top 4 co-occurrence partners only"):
        run_geometry(out, GeometryConfig(**small))             # the dense path up to 16,384 features
    run_geometry(out, GeometryConfig(**small, wide_from=64))
    assert any(c.startswith("wide:brain") for c in open_atlas(out).manifest.layers[0].computed)


def _refused(tmp_path, match, **kw):
    out = tmp_path / "bad"
    with pytest.raises(PrecomputeError, match=match):
        run_precompute(PrecomputeConfig(**{**MICRO, "out": out, **kw}))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]   # no temporary atlas left


def test_bad_input_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    _refused(tmp_path, r"layer 30 is outside the model: SmolLM2-135M-Instruct has layers 0\.\.29", layers=[30])
    _refused(tmp_path, "no layers and no SAEs", layers=[])
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n")
    _refused(tmp_path, "is empty", corpus=str(blank))
    _refused(tmp_path, "does not exist", corpus=str(tmp_path / "nothing.jsonl"))
    _refused(tmp_path, "not enough disk space", train_tokens=10 ** 13)
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    StandardSAE(StandardSAEConfig(d_in=768, d_sae=32, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_pre"))
                ).save_model(tmp_path / "gpt2_sae")
    _refused(tmp_path, "width 768, but SmolLM2-135M-Instruct has d_model = 576", layers=[],
             saes=[str(tmp_path / "gpt2_sae")])
    _refused(tmp_path, "unknown SAE 'nope/x'", layers=[], saes=["nope/x"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _refused(tmp_path, "Hub could not be reached", model="no-such-org/no-such-model")
    (tmp_path / "bad").mkdir()
    with pytest.raises(PrecomputeError, match="already exists"):
        run_precompute(PrecomputeConfig(**MICRO, out=tmp_path / "bad"))


def test_tiny_atlas_through_geometry_opens_in_the_explorer(tiny, tmp_path):
    """End to end: real SmolLM2 statistics -> geometry stage -> the app's API and page."""
    import shutil

    from fastapi.testclient import TestClient

    from analysis.stage import GeometryConfig, run_geometry
    from app.server import create_app

    root = tmp_path / "atlases"
    shutil.copytree(tiny, root / "tiny")
    run_geometry(root / "tiny", GeometryConfig(ks=[2, 4], n_permutations=10, n_random=5, umap=False,
                                               entropy_samples=256, entropy_bootstrap=3))
    atlas = open_atlas(root / "tiny")
    assert all("geometry" in i.computed and "brain" in i.computed for i in atlas.manifest.layers)
    client = TestClient(create_app(root))
    listing = client.get("/api/atlases").json()
    assert [(a["name"], a["model"], a["error"]) for a in listing] == [("tiny", "SmolLM2-135M-Instruct", None)]
    pts = client.get("/api/atlases/tiny/layers/5/points", params={"layout": "pca"}).json()
    assert len(pts["x"]) == 512
    f = int(np.argmax(np.asarray(atlas.array("layers/5/fire_count.npy"))))
    card = client.get(f"/api/atlases/tiny/layers/5/features/{f}").json()
    assert card["feature"] == f and card["contexts"] and card["neighbors"]
    peak = card["contexts"][0]
    assert isinstance(peak["tokens"][peak["peak"]], str)
    assert client.get("/api/atlases/tiny/layers/5/features/512").status_code == 404
    page = client.get("/", params={"atlas": "tiny", "layer": 5, "f": f})
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


def test_threshold_follows_the_sae_architecture(tmp_path):
    from precompute.pipeline import threshold_rule

    # the shipped SmolLM2 SAEs are TopK: a feature fires when it is among the k selected
    out = run_precompute(PrecomputeConfig(model="smollm2", saes=["embedded"], max_tokens=1024, seq_len=128,
                                          block_size=32, batch_size=4, eval_tokens=256, word_pairs=False,
                                          geometry=False, progress=False, threads=1, out=tmp_path / "a"))
    atlas = open_atlas(out)
    for info in atlas.manifest.layers:
        assert info.sae.architecture == "topk" and info.threshold == 0.0
        assert "top k" in info.threshold_rule
        fired = np.asarray(atlas.array(f"layers/{info.layer}/fire_count.npy")).sum() / info.n_tokens
        assert 31.0 < fired <= 32.0                  # k = 32 selections per token, (almost) all positive
    assert threshold_rule(None, "jumprelu") == (1.0, "architecture jumprelu: published threshold (activation > 1)")
    assert threshold_rule(None, "standard")[0] == 1.0 and threshold_rule(2.5, "topk")[0] == 2.5


def test_input_mistakes_are_found_before_the_model_loads(tmp_path, monkeypatch):
    import precompute.pipeline as pipeline

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _refused(tmp_path, "no layers and no SAEs", layers=[], corpus="hf:monology/pile-uncopyrighted")
    _refused(tmp_path, "does not exist", corpus=str(tmp_path / "nothing.jsonl"))
    _refused(tmp_path, "unknown SAE 'nope/x'", layers=[], saes=["nope/x"])
    _refused(tmp_path, "has no SAE 'layer_99", layers=[], saes=["gemma-scope-2b-pt-res-canonical/layer_99/width_16k/canonical"])
    _refused(tmp_path, "dataset", corpus="hf:monology/pile-uncopyrighted")       # the Hub is unreachable
    assert not (tmp_path / "bad.partial").exists()


def test_one_precompute_per_out_at_a_time(tmp_path):
    from precompute.pipeline import out_lock

    out = tmp_path / "atlas"
    with out_lock(out.resolve()):
        with pytest.raises(PrecomputeError, match=r"another precompute \(pid \d+\) is writing .*atlas; wait"):
            run_precompute(PrecomputeConfig(**MICRO, out=out))
    assert not out.exists() and not (tmp_path / "atlas.partial").exists()
    assert not list(tmp_path.glob(".atlas*"))                  # the lock goes with its holder
    # a holder killed with SIGKILL leaves no lock behind
    code = ("import os, sys, pathlib; sys.path.insert(0, %r); from precompute.pipeline import out_lock; "
            "cm = out_lock(pathlib.Path(%r)); cm.__enter__(); os.kill(os.getpid(), 9)") % (str(REPO), str(out.resolve()))
    subprocess.run([sys.executable, "-c", code], timeout=120)
    with out_lock(out.resolve()):
        pass


def test_unwritable_output_folder_is_one_clear_line(tmp_path):
    # a folder that cannot be made (its parent is a file): refused even for root, who can
    # write in any directory, and before the model loads
    (tmp_path / "file").write_text("x")
    with pytest.raises(PrecomputeError, match=r"cannot write in .*file/sub: Not a directory; choose another --out"):
        run_precompute(PrecomputeConfig(**MICRO, out=tmp_path / "file" / "sub" / "atlas"))


def test_full_disk_mid_run_is_one_line_keeps_earlier_atlases_and_resumes(tmp_path):
    from analysis.atlas import validate
    from analysis.synthetic import make_synthetic_atlas

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a size-limited tmpfs here (needs root)")
    try:
        earlier = make_synthetic_atlas(disk / "earlier", n_features=200, d_model=16, layers=(0,), n_blocks=200)
        (tmp_path / "run.json").write_text(json.dumps({**MICRO, "out": str(disk / "atlas")}))
        cmd = [sys.executable, "-m", "app.cli", "precompute", "--config", str(tmp_path / "run.json")]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 240
        while not (disk / "atlas.partial" / "config.json").exists():      # past every up-front check
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        with open(disk / "filler", "wb") as f:       # someone else fills the disk mid-run
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        _, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: the disk holding") and "--resume" in last and "atlas.partial" in last
        assert validate(earlier) == []                       # untouched
        assert not [p for p in disk.iterdir() if p.name.startswith(".atlas")]   # no half-written atlas
        (disk / "filler").unlink()
        done = subprocess.run(cmd + ["--resume"], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert validate(disk / "atlas") == [] and validate(earlier) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)])


# Every stage of a small run with all of them on: SAE training, statistics, word pairs, the
# atlas write, geometry over two layers, the latent capture.
ALL_STAGES = {**MICRO, "layers": [1, 2], "max_tokens": 12_000, "word_pairs": True, "geometry": True, "latent": True,
              "geometry_config": dict(ks=[2, 4], n_permutations=5, n_random=4, umap=False, entropy_samples=100,
                                      entropy_components=10, entropy_bootstrap=3, crystal_baseline_repeats=2),
              "latent_config": dict(n_docs=4, seq_len=32, sample_tokens=64, umap_tokens=0, vector_tokens=16,
                                    separation_tokens=32)}
ORDER = ["tokenizing", "training SAEs", "statistics", "word pairs", "writing the atlas", "geometry", "latent"]
KILL_AT = ["tokenizing", "training SAEs", "statistics", "statistics", "word pairs", "writing the atlas",
           "geometry", "geometry", "latent", "latent"]


def _stage_of(out: Path, since: float) -> str | None:
    """The stage a run started at ``since`` reports in ``<out>.partial/progress.json``."""
    try:
        p = json.loads((out.with_name(out.name + ".partial") / "progress.json").read_text())
    except (OSError, ValueError):
        return None
    return p.get("stage") if p.get("updated", 0) >= since else None


def _rank(stage: str | None) -> int:
    return max([i for i, name in enumerate(ORDER) if stage and name in stage], default=-1)


def _same_files(a: Path, b: Path):
    A, B = open_atlas(a), open_atlas(b)
    assert sorted(A.manifest.files) == sorted(B.manifest.files)
    for rel, info in A.manifest.files.items():
        if rel == "latent/latent.json":     # holds the stage's timings; everything else must agree
            # (its bytes count the files, this one included, whose timing digits vary in number)
            strip = lambda d: {k: v for k, v in d.items() if not k.startswith(("seconds", "bytes"))}  # noqa: E731
            assert strip(A.json(rel)) == strip(B.json(rel))
        else:
            assert info.sha256 == B.manifest.files[rel].sha256, rel


def test_sigkill_in_every_stage_then_resume_gives_an_identical_atlas(tmp_path):
    """Ten SIGKILLs, each at a random moment inside a named stage, each followed by --resume."""
    import random

    code = ("import json, sys; from precompute.pipeline import PrecomputeConfig, run_precompute; "
            "run_precompute(PrecomputeConfig(**json.loads(sys.argv[1])))")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}     # the same BLAS threads as the killed runs: same sums
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, "-c", code, json.dumps({**ALL_STAGES, "out": str(ref)})], cwd=REPO, env=env,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    out = tmp_path / "killed"
    cfg = json.dumps({**ALL_STAGES, "out": str(out), "resume": True})
    rng = random.Random(0)
    killed = []
    for target in KILL_AT:
        start = time.time()
        proc = subprocess.Popen([sys.executable, "-c", code, cfg], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, env=env)
        deadline = start + 300
        try:
            # wait until this run reaches the target stage (or one after it: a stage done
            # before the last kill is skipped on resume), then kill somewhere inside it
            while proc.poll() is None and _rank(_stage_of(out, start)) < ORDER.index(target) \
                    and time.time() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.4))
            stage = _stage_of(out, start)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed.append(stage or "starting")
            proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
        if out.exists() and not out.with_name("killed.partial").exists():
            break                                 # it finished: nothing left to kill
    assert len(killed) >= 10, killed
    reached = {ORDER[_rank(k)] for k in killed if _rank(k) >= 0}
    assert {"training SAEs", "statistics", "geometry", "latent"} <= reached, killed
    subprocess.run([sys.executable, "-c", code, cfg], cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=600)
    _same_files(ref, out)
    assert not out.with_name("killed.partial").exists()
