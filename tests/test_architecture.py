"""The layering of app/: views never reach into the HTTP layer or into other modules' private names;
and no module but analysis/atlas.py (``LayerFiles``) spells the paths of a layer's files.

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


ROOT = APP.parent
LAYER_FILES_HELPER = ROOT / "analysis" / "atlas.py"


def layer_paths(path: Path) -> list[tuple[int, str]]:
    """``(line, text)`` of every string in ``path`` that spells a layer's files by hand: a
    literal (or the literal head of an f-string) starting ``layers/``, or ``/ "layers"`` joined
    onto a path. URL routes (``.../layers/{layer}``) do not start with it."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("layers/"):
            out.append((node.lineno, node.value))
        elif (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and isinstance(node.right, ast.Constant)
              and node.right.value == "layers"):
            out.append((node.lineno, "/ 'layers'"))
    return out


CODE = sorted(p for d in ("analysis", "app", "precompute", "bench") for p in (ROOT / d).rglob("*.py")
              if p != LAYER_FILES_HELPER)


@pytest.mark.parametrize("path", CODE, ids=lambda p: str(p.relative_to(ROOT)))
def test_only_the_layer_files_helper_names_a_layers_files(path):
    # analysis.atlas.LayerFiles is the one place that knows a layer's folder layout
    assert layer_paths(path) == []


def test_the_rule_sees_hand_spelled_layer_paths(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text('L = 3\na = f"layers/{L}/brain.json"\nb = "layers/" + str(L)\nc = root / "layers" / str(L)\n'
                   'ok = f"/api/atlases/x/layers/{L}/points"\n')
    assert [line for line, _ in layer_paths(bad)] == [2, 3, 4]
