"""`saegeo demo` as a user runs it: the explorer from a process of its own, built atlases not
rebuilt, a clear message when the port is taken, nothing left running after it is stopped."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from analysis.synthetic import make_synthetic_atlas
from app.cli import DEMO_ATLASES, DEMO_COMPARISONS
from tests._app_atlas import build_comparison, free_port

REPO = Path(__file__).resolve().parents[1]
TINY = {"affinities": ["phi"], "ks": [2, 4], "n_permutations": 5, "n_random": 5, "entropy_bootstrap": 3,
        "umap": False, "entropy_samples": 200, "entropy_components": 10}


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """An atlas folder where every demo atlas (geometry included) and every demo comparison is
    already complete."""
    root = tmp_path_factory.mktemp("demo-home")
    for name, _, _ in DEMO_ATLASES:
        make_synthetic_atlas(root / name, n_features=200, d_model=32, layers=(0, 1), n_blocks=300, seed=0,
                             geometry_config=TINY)
    for name, a, b in DEMO_COMPARISONS:
        build_comparison(root / name, root / a, root / b, layers_a=(0, 1), layers_b=(0, 1), n_shuffles=5)
    return root


def _demo(home: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "demo", "--atlas-dir", str(home), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_demo_serves_built_atlases_from_a_child_process_and_stops_cleanly(home):
    port = free_port()
    proc = _demo(home, port)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(x.decode(errors="replace") for x in proc.stdout), daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "the demo's explorer did not come up within 90 s"
            time.sleep(0.3)
        names = [a["name"] for a in httpx.get(base + "/api/atlases", timeout=10).json()]
        assert names == sorted(name for name, _, _ in DEMO_ATLASES)
        compared = [c["name"] for c in httpx.get(base + "/api/comparisons", timeout=10).json()]
        assert sorted(compared) == sorted(name for name, _, _ in DEMO_COMPARISONS)
        assert httpx.get(base + "/", timeout=10).status_code == 200
        # the process answering is not the demo process itself (which would hold the builds' memory)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 1
        deadline = time.time() + 120   # checking the built atlases and comparisons, then idle
        while not any("demo atlases ready" in x for x in lines) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGTERM)          # as `kill` does; Ctrl-C's SIGINT is Python's own
        proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    assert "building" not in out and "comparing" not in out   # complete atlases and comparisons are kept
    assert "demo atlases ready" in out
    deadline = time.time() + 10
    while _port_open(port) and time.time() < deadline:
        time.sleep(0.2)
    assert not _port_open(port), "the explorer kept running after the demo was stopped"


def test_demo_says_when_its_port_is_taken(home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _demo(home, port)
        out = proc.communicate(timeout=60)[0].decode(errors="replace")
    assert proc.returncode != 0
    assert f"could not start on 127.0.0.1:{port}" in out and "--port" in out
