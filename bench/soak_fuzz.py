"""The fuzz tests at soak length: the JSON API fuzzed from its OpenAPI description and
permalinks opened in headless Chromium, many more of each than `make test` runs.

    python bench/soak_fuzz.py [--calls 100000] [--links 500] [--seed 0]

Prints the calls and links tried, the answers by status and how many links showed a notice;
any 5xx, unreadable error, answer outside its model, page error, CSP violation or executed
payload stops it with the request that caused it.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=100_000)
    p.add_argument("--links", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    import test_fuzz
    from _app_atlas import build_app_atlas, build_comparison, start_server
    from fastapi.testclient import TestClient
    from app.server import create_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_app_atlas(root)
        (root / "syn").rename(root / "syn2")
        build_app_atlas(root)
        build_comparison(root / "syn-vs-syn2", root / "syn", root / "syn2")
        t = time.time()
        test_fuzz.N_CALLS = a.calls
        with TestClient(create_app(root), raise_server_exceptions=False) as c:
            test_fuzz.test_the_api_survives_ten_thousand_fuzzed_calls(c)
        print(f"API: {a.calls} fuzzed calls, no 5xx, every error readable, every answer in its model "
              f"({time.time() - t:.0f} s)")
        proc, base = start_server(root)
        try:
            t = time.time()
            noticed = test_fuzz.check_links(base, a.links, a.seed)
            print(f"links: {a.links} fuzzed permalinks rendered, {noticed} with a notice, nothing injected ran "
                  f"({time.time() - t:.0f} s)")
        finally:
            proc.terminate()
            proc.wait(timeout=20)


if __name__ == "__main__":
    main()
