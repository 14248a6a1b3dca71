"""The statistics pass on a Ray cluster (``saegeo precompute --ray auto|local|ADDRESS``).

What is distributed: stage 3 of ``precompute.pipeline``, the expensive per-token part (model
forward, SAE encode, ``LayerStats.update``). The pipeline cuts it into shards of
``shard_batches`` consecutive batches; here each shard goes to a Ray actor that holds the model
and the SAEs (one GPU per actor where the cluster has GPUs, ``cpus_per_worker`` CPUs
otherwise) and returns the shard's partial statistics, keyed by shard id. The driver writes
each partial atomically into the run's work folder the moment it arrives and, once all are
there, merges them in shard order - the very function and files the single-process path
uses, so the atlas is bit-identical to a run without Ray (given the same device kind,
precision and ``threads``: the forward pass itself must be the same).

Failures: an actor keeps nothing between shards, so a killed worker loses only the shard it
was computing; Ray restarts the actor (``max_restarts``) and reruns that call
(``max_task_retries``), and the result is written once, by the driver, so nothing is counted
twice. A killed driver loses only shards in flight: ``--resume`` finds the saved partials
and sends out the others (with or without Ray: the partials are the same).

Why Ray Core actors and not Ray Data ``map_batches`` with an actor pool: the work is stateful
(a model and SAEs loaded once per worker, GPU memory held), its result is one mergeable
object per shard rather than a dataset of rows, and what must be explicit - which shard is
done, that it is saved before it counts, that a failed one is retried exactly once over -
is a loop of a dozen lines over actor calls. Ray Data would stream rows through an
executor whose batching, ordering and retries we would have to undo to get exact merges.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import socket
import sys
import time
from collections import deque
from pathlib import Path
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field

from precompute.errors import PrecomputeError

__all__ = ["RaySettings", "run_shards"]

# A test hook: set, every worker touches ``<dir>/start-<shard>-<pid>`` as it starts a shard and
# waits while ``<dir>/hold-<shard>`` exists, so a test can kill it at a known point.
HOOK_ENV = "SAEGEO_SHARD_HOOK"


class RaySettings(BaseModel):
    """How the statistics pass runs on Ray (recorded in the manifest with the other settings)."""
    model_config = ConfigDict(extra="forbid")

    # "auto": the running cluster (RAY_ADDRESS or `ray start` on this machine), else a new local
    # one; "local": always a new private cluster on this machine, shut down at the end;
    # otherwise a cluster address, "HOST:PORT" or "ray://HOST:PORT"
    address: str = "auto"
    workers: int | None = Field(None, ge=1)         # None: one per GPU, else one per cpus_per_worker CPUs
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float | None = Field(None, ge=0)   # None: 1 where the cluster has GPUs, else 0
    max_retries: int = Field(3, ge=0)               # restarts of a dead worker, and reruns of its shard


def _import_ray():
    try:
        import ray
    except ImportError as e:
        raise PrecomputeError(f"ray is not installed ({e}); install the extra with "
                              f"`pip install 'saegeo[ray]'` (or `pip install ray==2.60.0`)") from None
    return ray


def _reachable(address: str) -> None:
    """Refuse at once an address nobody listens on (ray.init would retry for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (ValueError, UnicodeError):
        raise PrecomputeError(f"bad Ray address {address!r}: use auto, local, HOST:PORT or ray://HOST:PORT") from None
    except OSError as e:
        raise PrecomputeError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}; start it with "
                              f"`ray start --head` there, or use `--ray local` (a cluster on this machine)") from None


def check(rs: RaySettings) -> None:
    """What can be refused before the model loads: ray missing, a cluster address that does
    not answer as a Ray cluster (joined once and left: the run joins again when its shards
    are ready)."""
    ray = _import_ray()
    if rs.address not in ("auto", "local") and _connect(ray, rs):
        ray.shutdown()


def _connect(ray, rs: RaySettings) -> bool:
    """Join or start the cluster; True when this call started the session (and must end it)."""
    if ray.is_initialized():
        return False
    local = dict(include_dashboard=False, log_to_driver=False)
    if rs.workers and not rs.gpus_per_worker:
        local["num_cpus"] = max(1, int(rs.workers * rs.cpus_per_worker + 0.999))
    if rs.address == "local":
        _start_local(ray, local)
    elif rs.address == "auto":
        try:
            ray.init(address="auto", log_to_driver=False)
        except ConnectionError:          # no cluster running: this machine is the cluster
            _start_local(ray, local)
    else:
        _reachable(rs.address)
        try:
            ray.init(address=rs.address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as e:
            raise PrecomputeError(f"cannot join the Ray cluster at {rs.address}: {str(e).splitlines()[0]}") from None
    return True


def _start_local(ray, kw: dict, tries: int = 3) -> None:
    """A new cluster on this machine. Ray gives its raylet a fixed 30 s to register, which a
    machine busy with other work can miss: start again rather than fail the run."""
    for attempt in range(tries):
        try:
            ray.init(address="local", **kw)
            return
        except Exception as e:
            if "timed out during startup" not in str(e):
                raise
            ray.shutdown()
            if attempt == tries - 1:
                raise PrecomputeError(f"the local Ray cluster did not start ({tries} tries of Ray's 30 s; is the "
                                      f"machine overloaded?): {str(e).splitlines()[0]}") from None


class ShardWorker:
    """A Ray actor: the model and the SAEs, loaded once; one shard's partial per ``run`` call.

    Nothing is kept between calls, so a restarted worker is as good as the one it replaces.
    """

    def __init__(self, cfg, saes, dtype: str, hook: str | None):
        import torch

        from precompute.models import load_model

        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.cfg, self.hook = cfg, hook
        self.lm = load_model(cfg.model, cfg.device, dtype)
        for s in saes:
            s.sae.to(self.lm.device)
        self.saes = saes

    def run(self, piece, thresholds: dict) -> dict:
        from precompute.pipeline import shard_statistics

        if self.hook:
            Path(self.hook, f"start-{piece.shard}-{os.getpid()}").touch()
            hold, t = Path(self.hook, f"hold-{piece.shard}"), time.time()
            while hold.exists() and time.time() - t < 600:
                time.sleep(0.05)
        return shard_statistics(self.cfg, self.lm, self.saes, thresholds, piece)

    def ready(self) -> str:
        return str(self.lm.device)


def _on_cpu(s):
    """The SAE as it travels: on the CPU, whatever device the driver holds it on."""
    if s.sae.W_dec.device.type == "cpu":
        return s
    return dataclasses.replace(s, sae=copy.deepcopy(s.sae).to("cpu"))


def _sizes(ray, rs: RaySettings, n_shards: int) -> tuple[int, float]:
    """Number of workers and GPUs per worker for this cluster."""
    res = ray.cluster_resources()
    gpus = rs.gpus_per_worker if rs.gpus_per_worker is not None else (1.0 if res.get("GPU", 0) >= 1 else 0.0)
    if rs.workers:
        n = rs.workers
    elif gpus:
        n = int(res.get("GPU", 0) // gpus)
    else:
        n = int(res.get("CPU", 1) // rs.cpus_per_worker)
    return max(1, min(n, n_shards)), gpus


def run_shards(cfg, lm, saes, thresholds: dict, todo: list[int], make_input: Callable[[int], object],
               finished: Callable[[dict], None]) -> dict:
    """Compute the shards ``todo`` on Ray; ``finished(partial)`` is called in the driver for
    each, as it arrives (it saves it). Returns when all are done, with the number of workers
    and the seconds spent starting them and computing; raises ``PrecomputeError`` when a
    worker cannot start or a shard fails for good (the finished ones stay saved for ``--resume``)."""
    ray = _import_ray()
    rs: RaySettings = cfg.ray
    started = _connect(ray, rs)
    t0 = time.perf_counter()
    try:
        n, gpus = _sizes(ray, rs, len(todo))
        Worker = ray.remote(ShardWorker).options(
            num_cpus=rs.cpus_per_worker, num_gpus=gpus, max_restarts=rs.max_retries,
            max_task_retries=rs.max_retries)
        dtype = str(lm.dtype).removeprefix("torch.")     # the driver's precision, recorded in the manifest
        # held until the end: a restarted worker reads its SAEs from this object again
        saes_ref = ray.put([_on_cpu(s) for s in saes])
        actors = [Worker.remote(cfg, saes_ref, dtype, os.environ.get(HOOK_ENV)) for _ in range(n)]
        try:   # a worker that cannot load the model (missing on its machine, no memory) says so here
            devices = ray.get([a.ready.remote() for a in actors])
        except ray.exceptions.RayError as e:
            raise PrecomputeError(f"a Ray worker could not start ({type(e).__name__}: {_first_line(e)})") from None
        t_ready = time.perf_counter()
        if cfg.progress:
            print(f"[saegeo precompute] statistics on Ray: {len(todo)} shards, {n} workers on "
                  f"{', '.join(sorted(set(devices)))} ({'%g GPU' % gpus if gpus else '%g CPU' % rs.cpus_per_worker} "
                  f"each), ready in {t_ready - t0:.0f} s", file=sys.stderr, flush=True)
        queue, idle, running = deque(todo), list(actors), {}
        while queue or running:
            while queue and idle:
                actor, s = idle.pop(), queue.popleft()
                running[actor.run.remote(make_input(s), thresholds)] = (s, actor)
            ready, _ = ray.wait(list(running), num_returns=1)
            s, actor = running.pop(ready[0])
            try:
                partial = ray.get(ready[0])
            except ray.exceptions.RayError as e:
                raise PrecomputeError(
                    f"shard {s} failed on the Ray cluster ({type(e).__name__}: {_first_line(e)}); the shards "
                    f"finished so far are saved: run the same command with --resume") from None
            finished(partial)
            idle.append(actor)
        return {"workers": n, "start_s": t_ready - t0, "shards_s": time.perf_counter() - t_ready}
    finally:
        if started:
            ray.shutdown()


def _first_line(e: BaseException) -> str:
    lines = [x for x in str(e).splitlines() if x.strip()]
    return lines[-1][:200] if lines else ""
