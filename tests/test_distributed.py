"""The statistics pass on a local Ray cluster (real SmolLM2, SAE trained here): the same atlas
as one process, byte for byte; a worker killed mid-shard is retried; a killed driver resumes
from the shards it saved."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from precompute.errors import PrecomputeError
from precompute.pipeline import PrecomputeConfig, run_precompute

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'saegeo[ray]')")

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.model

# 48 documents in 12 batches, 6 shards of 2 batches; the first ~2,000 tokens (shards 0-1) train
# the SAE and are read back from the capture, the others go through the model in the workers.
RUN = dict(layers=[1], max_tokens=6000, train_tokens=2000, seq_len=128, block_size=32, sae_width=128, sae_k=8,
           train_epochs=4, batch_size=4, shard_batches=2, checkpoint_every=1, eval_tokens=4096,
           word_pairs=False, geometry=False, progress=False, threads=1)
N_SHARDS = 6
RAY = {"address": "local", "workers": 2}
# how the run was made and when: the only manifest fields allowed to differ
HOW = {"created", "configs.precompute.out", "configs.precompute.ray", "configs.precompute.resume",
       "configs.precompute.progress"}


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def assert_same_atlas(a: Path, b: Path, how: set = HOW) -> None:
    """Every file byte-identical (sha256 of what is on disk), the manifest equal but for ``how``."""
    def files(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file() and p.name != "manifest.json"}
    fa, fb = files(a), files(b)
    assert sorted(fa) == sorted(fb)
    assert [rel for rel in fa if fa[rel] != fb[rel]] == []
    def what(root):
        flat = _flat(json.loads((root / "manifest.json").read_text()))
        return {k: v for k, v in flat.items() if not any(k == h or k.startswith(h + ".") for h in how)}
    assert what(a) == what(b)


def _started(hook: Path) -> list[tuple[int, int]]:
    """(shard, worker pid) of every shard start the workers reported."""
    return sorted((int(p.name.split("-")[1]), int(p.name.split("-")[2])) for p in hook.glob("start-*"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    return run_precompute(PrecomputeConfig(**RUN, out=tmp_path_factory.mktemp("single") / "atlas"))


@pytest.fixture(autouse=True)
def no_ray_left_behind():
    """A test leaves no Ray process of its own running (the pytest process's children)."""
    yield
    deadline = time.time() + 30
    while (left := [p for p in psutil.Process().children(recursive=True) if _is_ray(p)]) and time.time() < deadline:
        time.sleep(0.5)
    for p in left:
        p.kill()
    assert not left, [p.name() for p in left]


def _is_ray(p: psutil.Process) -> bool:
    try:
        return any(x in " ".join(p.cmdline()) for x in ("raylet", "gcs_server", "ray::", "ray/", "default_worker"))
    except psutil.Error:
        return False


def test_two_workers_give_the_single_process_atlas(reference, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    monkeypatch.setenv("SAEGEO_SHARD_HOOK", str(hook))
    out = run_precompute(PrecomputeConfig(**RUN, out=tmp_path / "atlas", ray=RAY))
    assert_same_atlas(reference, out)
    started = _started(hook)
    assert sorted(s for s, _ in started) == list(range(N_SHARDS))       # each shard once
    assert len({pid for _, pid in started} - {os.getpid()}) == 2           # on two workers, not here
    m = json.loads((out / "manifest.json").read_text())["configs"]["precompute"]
    assert m["shard_batches"] == 2 and m["ray"]["address"] == "local" and m["ray"]["workers"] == 2


def test_the_shard_size_does_not_change_the_atlas(reference, tmp_path):
    # 3 shards of 5, 5 and 2 batches instead of 6 of 2, in one process: the merge is exact
    out = run_precompute(PrecomputeConfig(**{**RUN, "shard_batches": 5}, out=tmp_path / "atlas"))
    assert_same_atlas(reference, out, HOW | {"configs.precompute.shard_batches"})


def test_a_worker_killed_mid_shard_is_retried_and_the_atlas_is_unchanged(reference, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "hold-3").touch()      # the worker that takes shard 3 waits there until it is killed
    monkeypatch.setenv("SAEGEO_SHARD_HOOK", str(hook))
    killed = []

    def kill_the_holder():
        deadline = time.time() + 300
        while not list(hook.glob("start-3-*")) and time.time() < deadline:
            time.sleep(0.05)
        for start in hook.glob("start-3-*"):
            killed.append(int(start.name.split("-")[2]))
            os.kill(killed[0], signal.SIGKILL)
        (hook / "hold-3").unlink()

    t = threading.Thread(target=kill_the_holder)
    t.start()
    try:
        out = run_precompute(PrecomputeConfig(**RUN, out=tmp_path / "atlas", ray=RAY))
    finally:
        t.join()
    assert killed and not psutil.pid_exists(killed[0])
    runs_of_3 = [pid for s, pid in _started(hook) if s == 3]
    assert len(runs_of_3) == 2 and killed[0] in runs_of_3                  # killed once, redone once
    assert sorted({s for s, _ in _started(hook)}) == list(range(N_SHARDS))
    assert_same_atlas(reference, out)


def test_a_killed_driver_resumes_from_its_saved_shards(reference, tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({**RUN, "out": str(tmp_path / "atlas"), "ray": RAY, "progress": True}))
    cmd = [sys.executable, "-m", "app.cli", "precompute", "--config", str(cfg)]
    hook, shards = tmp_path / "hook1", tmp_path / "atlas.partial" / "shards"
    hook.mkdir()
    (hook / "hold-4").touch()      # the run cannot finish: shard 4 waits
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SAEGEO_SHARD_HOOK": str(hook)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    family = []
    try:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline and \
                not (len(list(shards.glob("0*.pt"))) >= 4 and list(hook.glob("start-4-*"))):
            family = _descendants(proc.pid) or family
            time.sleep(0.1)
        assert proc.poll() is None, "the driver ended before it could be killed"
        family = _descendants(proc.pid) or family
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        _end(family)              # its local cluster, if the driver's death did not take it along
    done = sorted(int(p.stem) for p in shards.glob("0*.pt"))
    assert len(done) >= 4 and 4 not in done
    assert not (tmp_path / "atlas").exists()

    hook2 = tmp_path / "hook2"
    hook2.mkdir()
    res = subprocess.run(cmd + ["--resume"], cwd=REPO, env={**env, "SAEGEO_SHARD_HOOK": str(hook2)},
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{len(done)} of {N_SHARDS} shards already done" in res.stderr
    redone = sorted(s for s, _ in _started(hook2))
    assert redone == sorted(set(range(N_SHARDS)) - set(done))            # saved shards not redone
    assert_same_atlas(reference, tmp_path / "atlas")


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _end(procs: list[psutil.Process]) -> None:
    """Kill, by pid, the processes of ours still alive a while after their parent died."""
    deadline = time.time() + 10
    while [p for p in procs if p.is_running()] and time.time() < deadline:
        time.sleep(0.5)
    left = []
    for p in procs:
        try:
            p.kill()
            left.append(p.pid)
        except psutil.Error:
            pass
    print(f"processes of the killed driver still alive after 10 s: {left}", file=sys.stderr)


def test_bad_ray_settings_are_refused_before_the_model_loads(tmp_path, monkeypatch):
    import precompute.pipeline as pipeline

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the Ray settings were checked")

    monkeypatch.setattr(pipeline, "load_model", no_model)
    with pytest.raises(PrecomputeError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:9: .*ray start --head"):
        run_precompute(PrecomputeConfig(**RUN, out=tmp_path / "a", ray="127.0.0.1:9"))
    with pytest.raises(PrecomputeError, match=r"bad Ray address 'nowhere'"):
        run_precompute(PrecomputeConfig(**RUN, out=tmp_path / "a", ray="nowhere"))
    monkeypatch.setitem(sys.modules, "ray", None)          # as if the extra were not installed
    with pytest.raises(PrecomputeError, match=r"ray is not installed .*pip install 'saegeo\[ray\]'"):
        run_precompute(PrecomputeConfig(**RUN, out=tmp_path / "b", ray="auto"))
    with pytest.raises(ValueError, match="workers"):
        PrecomputeConfig(**RUN, out=tmp_path / "c", ray={"address": "local", "workers": 0})
    assert not list(tmp_path.iterdir())


def test_the_ray_option_reaches_the_settings(tmp_path):
    # `saegeo precompute --ray ADDRESS` is `ray=ADDRESS`: the resolved settings say so, and an
    # explicit address that no Ray cluster answers at is refused before any model loads
    cmd = [sys.executable, "-m", "app.cli", "precompute", "--profile", "tiny", "--print-config"]
    out = subprocess.run([*cmd, "--ray", "local"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ray"]["address"] == "local"
    bad = subprocess.run([*cmd[:-1], "--out", str(tmp_path / "atlas"), "--ray", "127.0.0.1:9"], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "cannot reach the Ray cluster at 127.0.0.1:9" in bad.stderr, bad.stderr[-2000:]
    assert "--ray local" in bad.stderr and "Traceback" not in bad.stderr
    assert not any(tmp_path.iterdir())       # refused before anything was written
