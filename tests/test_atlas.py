"""The atlas store on real files: round trips, atomic writes, every corruption named."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from analysis.atlas import (AtlasError, AtlasWriter, CorpusInfo, LayerInfo, Manifest, ModelInfo, SAEInfo,
                            list_atlases, open_atlas, validate)

REPO = Path(__file__).resolve().parents[1]


def _manifest(layers=(3,)):
    return Manifest(model=ModelInfo(name="m", d_model=4, n_layers=8), corpus=CorpusInfo(name="c", subsets=["a", "b"]),
                    layers=[LayerInfo(layer=L, sae=SAEInfo(source="synthetic", width=5, d_in=4)) for L in layers])


@pytest.fixture
def small(tmp_path) -> Path:
    path = tmp_path / "small"
    rng = np.random.default_rng(0)
    with AtlasWriter(path, _manifest()) as w:
        w.put_array("layers/3/decoder.npy", rng.normal(size=(5, 4)).astype(np.float32))
        w.put_array("layers/3/fire_count.npy", np.arange(5, dtype=np.int64))
        w.put_sparse("layers/3/cooc.npz", sp.csr_matrix(np.diag([1, 2, 0, 4, 5])))
        w.put_table("layers/3/contexts.parquet", pd.DataFrame({"feature": [0, 1], "tokens": [["a", "b"], ["c"]]}))
        w.put_json("layers/3/extra.json", {"alpha": np.float64(0.3)})  # any JSON (galaxy.json is typed)
    return path


def test_round_trip(small):
    atlas = open_atlas(small)
    assert atlas.layer_ids == [3]
    W = atlas.array("layers/3/decoder.npy")
    assert isinstance(W, np.memmap) and W.shape == (5, 4) and W.dtype == np.float32
    assert np.allclose(W, np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    assert atlas.sparse("layers/3/cooc.npz").diagonal().tolist() == [1, 2, 0, 4, 5]
    assert atlas.table("layers/3/contexts.parquet")["tokens"].map(list).tolist() == [["a", "b"], ["c"]]
    assert atlas.json("layers/3/extra.json") == {"alpha": 0.3}
    info = atlas.manifest.files["layers/3/decoder.npy"]
    assert info.shape == [5, 4] and info.dtype == "<f4" and len(info.sha256) == 64
    assert "numpy" in atlas.manifest.software
    assert validate(small) == []
    assert list_atlases(small.parent) == [small]


def test_update_is_copy_on_write(small):
    before = open_atlas(small).array("layers/3/fire_count.npy").copy()
    with AtlasWriter.update(small) as w:
        w.put_array("layers/3/fire_count.npy", np.zeros(5, np.int64))
        w.put_array("layers/3/coords_pca.npy", np.ones((5, 3), np.float32))
        w.manifest.layer(3).computed.append("geometry")
    atlas = open_atlas(small)
    assert atlas.array("layers/3/fire_count.npy").tolist() == [0] * 5
    assert atlas.has("layers/3/coords_pca.npy") and atlas.manifest.layer(3).computed == ["geometry"]
    assert before.tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in small.parent.iterdir()] == ["small"]  # no temporary or old folders left


def test_failed_update_leaves_atlas_untouched(small):
    with pytest.raises(RuntimeError):
        with AtlasWriter.update(small) as w:
            w.put_array("layers/3/fire_count.npy", np.zeros(5, np.int64))
            raise RuntimeError("stage crashed")
    assert open_atlas(small).array("layers/3/fire_count.npy").tolist() == [0, 1, 2, 3, 4]
    assert [p.name for p in small.parent.iterdir()] == ["small"]


def test_refuses_to_overwrite_and_bad_names(small, tmp_path):
    with pytest.raises(AtlasError, match="already exists"):
        with AtlasWriter(small, _manifest()):
            pass
    with pytest.raises(ValueError, match="relative path"):
        with AtlasWriter(tmp_path / "x", _manifest()) as w:
            w.put_array("../escape.npy", np.zeros(2))
    assert not (tmp_path / "x").exists()


def _damage(path: Path, rel: str, how: str) -> None:
    f = path / rel
    if how == "delete":
        f.unlink()
    elif how == "truncate":
        f.write_bytes(f.read_bytes()[:-8])
    elif how == "flip":
        data = bytearray(f.read_bytes())
        data[-1] ^= 0xFF
        f.write_bytes(bytes(data))


@pytest.mark.parametrize("how, rel, message", [
    ("delete", "layers/3/decoder.npy", "decoder.npy: missing"),
    ("truncate", "layers/3/decoder.npy", "decoder.npy: size"),
    ("flip", "layers/3/decoder.npy", "decoder.npy: checksum mismatch"),
    ("flip", "layers/3/contexts.parquet", "contexts.parquet: checksum mismatch"),
    ("delete", "manifest.json", "manifest.json: missing"),
])
def test_corruption_is_named(small, how, rel, message):
    _damage(small, rel, how)
    problems = validate(small)
    assert len(problems) == 1 and message in problems[0]
    with pytest.raises(AtlasError, match=message.replace(".", r"\.")):
        open_atlas(small)


def test_shape_and_dtype_mismatch(small):
    # Same byte size, different shape / dtype: only the header check can catch it.
    np.save(small / "layers/3/decoder.npy", np.zeros((4, 5), np.float32))
    assert "array is <f4[4, 5], manifest says <f4[5, 4]" in validate(small, verify="size")[0]
    np.save(small / "layers/3/decoder.npy", np.zeros((5, 4), np.int32))
    assert "array is <i4[5, 4], manifest says <f4[5, 4]" in validate(small, verify="size")[0]


def test_truncated_array_data_with_forged_size(small):
    f = small / "layers/3/fire_count.npy"
    data = f.read_bytes()
    man = json.loads((small / "manifest.json").read_text())
    man["files"]["layers/3/fire_count.npy"]["bytes"] = len(data) - 8
    (small / "manifest.json").write_text(json.dumps(man))
    f.write_bytes(data[:-8])
    assert "fire_count.npy: array data is truncated" in validate(small, verify="size")[0]


def test_schema_version_and_bad_manifest(small):
    m = small / "manifest.json"
    man = json.loads(m.read_text())
    m.write_text(json.dumps({**man, "schema_version": 99}))
    assert "unknown schema version 99" in validate(small)[0]
    m.write_text("{not json")
    assert "not valid JSON" in validate(small)[0]
    m.write_text(json.dumps({**man, "layers": "nope"}))
    assert "invalid manifest field 'layers'" in validate(small)[0]


def test_sigkill_during_write_leaves_no_complete_atlas(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from analysis.atlas import AtlasWriter, Manifest, ModelInfo, CorpusInfo, LayerInfo, SAEInfo
        m = Manifest(model=ModelInfo(name="m", d_model=4, n_layers=1), corpus=CorpusInfo(name="c"),
                     layers=[LayerInfo(layer=0, sae=SAEInfo(source="x", width=2, d_in=4))])
        with AtlasWriter({str(tmp_path / 'killed')!r}, m) as w:
            w.put_array("layers/0/decoder.npy", np.zeros((2, 4), np.float32))
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed").exists()
    assert list_atlases(tmp_path) == []  # the hidden temporary folder is not an atlas
    assert "no such atlas directory" in validate(tmp_path / "killed")[0]


def test_cli_validate(small):
    exe = Path(sys.executable).with_name("saegeo")
    ok = subprocess.run([str(exe), "validate", str(small)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("OK")
    _damage(small, "layers/3/decoder.npy", "flip")
    bad = subprocess.run([str(exe), "validate", str(small)], capture_output=True, text=True)
    assert bad.returncode == 1
    assert "decoder.npy: checksum mismatch" in bad.stderr and "Traceback" not in bad.stderr


def test_synthetic_atlas_is_valid_and_planted(tmp_path):
    from analysis.synthetic import make_synthetic_atlas

    path = make_synthetic_atlas(tmp_path / "s", n_features=300, d_model=32, layers=(0, 5), alphas=(0.3, 0.45),
                                n_blocks=300, geometry=False)
    atlas = open_atlas(path)
    assert atlas.manifest.synthetic and atlas.layer_ids == [0, 5]
    for L, alpha in ((0, 0.3), (5, 0.45)):
        W = np.asarray(atlas.array(f"layers/{L}/decoder.npy"), np.float64)
        ev = np.linalg.eigvalsh(np.cov(W.T))[::-1]
        r = np.arange(1, len(ev) + 1)
        slope = np.polyfit(np.log10(r[10:]), np.log10(ev[10:]), 1)[0]
        assert abs(-slope - alpha) < 0.02
        C = atlas.sparse(f"layers/{L}/cooc.npz")
        assert (C != C.T).nnz == 0
        B = atlas.sparse(f"layers/{L}/blocks.npz").astype(np.int64)
        assert np.array_equal((B.T @ B).toarray(), C.toarray())
        faces = atlas.table(f"layers/{L}/planted_crystals.parquet")
        par = faces[faces.kind == "parallelogram"].iloc[0]
        e1, e2 = W[par.a] - W[par.b], W[par.c] - W[par.d]
        assert np.linalg.norm(e1 - e2) < 0.1 * np.linalg.norm(e1)
