"""The layering of app/: views never reach into the HTTP layer or into other modules' private names.

    app/api/*      routers (HTTP)      ->  app/queries/*, app/models, app/data
    app/views/*    Dash views          ->  app/queries/*, app/models, app/state, app/figures
    app/queries/*  domain queries      ->  app/data, app/models, app/state, app/figures
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[1] / "app"


def imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every import in ``path`` (name None for ``import module``)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(a.name, None) for a in node.names]
    return out


LOWER = sorted([*APP.glob("views/*.py"), APP / "figures.py", *APP.glob("queries/*.py"), APP / "state.py",
                APP / "models.py", APP / "data.py"])


@pytest.mark.parametrize("path", LOWER, ids=lambda p: str(p.relative_to(APP)))
def test_below_the_http_layer_nothing_imports_it(path):
    for module, name in imports(path):
        assert not (module == "app.api" or module.startswith("app.api.") or (module == "app" and name == "api")), \
            (module, name)
        assert not module.startswith(("fastapi", "starlette")), module


@pytest.mark.parametrize("path", sorted(APP.rglob("*.py")), ids=lambda p: str(p.relative_to(APP)))
def test_no_module_imports_a_private_name_of_another(path):
    private = [(m, n) for m, n in imports(path) if m.startswith("app") and n and n.startswith("_")]
    assert private == []


@pytest.mark.parametrize("path", sorted(APP.glob("api/*.py")), ids=lambda p: str(p.relative_to(APP)))
def test_routes_translate_no_errors_themselves(path):
    # the handlers registered once in app/api/errors.py do that
    tree = ast.parse(path.read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Try)]
