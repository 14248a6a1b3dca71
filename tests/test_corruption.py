"""Every kind of damaged atlas is refused with the file named - by `saegeo validate`, by
`saegeo report` and by the server (a 503 for that atlas, the others still served). A typed
result of the geometry stage (brain.json here) with a field of the wrong type counts as damage."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from _app_atlas import REPO, start_server
from analysis.synthetic import make_synthetic_atlas

DECODER = "layers/0/decoder.npy"


def _edit_manifest(path: Path, change) -> None:
    m = path / "manifest.json"
    man = json.loads(m.read_text())
    change(man)
    m.write_text(json.dumps(man))


def _flip(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01                 # one bit in the middle of the array data
    f.write_bytes(bytes(data))


def _brain_of_wrong_type(path: Path) -> None:
    # written through the store, so sizes and checksums agree: only its content is wrong
    from analysis.atlas import AtlasWriter

    with AtlasWriter.update(path) as w:
        w.put_json("layers/0/brain.json", {"ks": [2], "affinities": ["phi"], "lobe_affinities": ["phi", "geometry"],
                                           "n_features": 300, "n_live": "most of them", "dead": [], "n_blocks": 200,
                                           "results": {}})


# name: (damage, what every surface must say)
DAMAGE = {
    "truncated": (lambda p: (p / DECODER).write_bytes((p / DECODER).read_bytes()[:-64]), "decoder.npy: size"),
    "bit-flipped": (lambda p: _flip(p / DECODER), "decoder.npy: checksum mismatch"),
    "missing": (lambda p: (p / DECODER).unlink(), "decoder.npy: missing"),
    "wrong-shape": (lambda p: np.save(p / DECODER, np.zeros((32, 300), np.float32)), "decoder.npy"),
    "wrong-dtype": (lambda p: np.save(p / DECODER, np.zeros((300, 32), np.int32)), "decoder.npy"),
    "manifest-edited": (lambda p: _edit_manifest(p, lambda m: m["files"][DECODER].update(sha256="0" * 64)),
                        "decoder.npy: checksum mismatch"),
    "future-schema": (lambda p: _edit_manifest(p, lambda m: m.update(schema_version=99)),
                      "unknown schema version 99"),
    "manifest-not-json": (lambda p: (p / "manifest.json").write_text("{half a manifest"), "not valid JSON"),
    "brain-wrong-type": (_brain_of_wrong_type, "brain.json: invalid field 'n_live'"),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("damaged")
    make_synthetic_atlas(root / "good", n_features=300, d_model=32, layers=(0,), n_blocks=200, geometry=False)
    for name, (damage, _) in DAMAGE.items():
        shutil.copytree(root / "good", root / name)
        damage(root / name)
    return root


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("name", list(DAMAGE))
def test_validate_and_report_refuse_and_name_the_file(damaged, name):
    said = DAMAGE[name][1]
    v = _cli("validate", damaged / name)
    assert v.returncode != 0 and said in v.stdout + v.stderr, (v.stdout, v.stderr)
    r = _cli("report", damaged / name)
    assert r.returncode != 0 and said in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_server_refuses_each_damaged_atlas_and_serves_the_rest(damaged):
    assert _cli("validate", damaged / "good").returncode == 0
    proc, base = start_server(damaged)
    try:
        with httpx.Client(base_url=base, timeout=60) as c:
            listed = {a["name"]: a for a in c.get("/api/atlases").json()}
            assert set(listed) >= {"good"} | set(DAMAGE) - {"manifest-not-json", "future-schema"}
            for name, (_, said) in DAMAGE.items():
                r = c.get(f"/api/atlases/{name}/layers/0/points")
                assert r.status_code in (404, 503), (name, r.status_code)
                if r.status_code == 503:
                    assert said in r.json()["detail"] and "Traceback" not in r.text, (name, r.text)
                else:   # a manifest that cannot be read at all does not make an atlas to list
                    assert name in ("manifest-not-json", "future-schema") and name in r.json()["detail"]
                # the others are still served, every time
                assert c.get("/api/atlases/good/layers/0/points").status_code == 200
                assert c.get("/api/atlases/good/layers/0/features/5").status_code == 200
            assert c.get("/").status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
