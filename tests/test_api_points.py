"""The JSON API's points route at a level of detail: wide layers, lobe and box selections.

One atlas ``wide`` (tests/_app_atlas.build_wide_atlas, built once per session and shared with
tests/test_cloud_scale.py): layer 0 of 262,144 features, layer 1 of 16,384; 64 blobs of
power-law sizes in 3-D, log-normal firing counts, phi lobes at k = 4, 16, 64.
"""
from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from _app_atlas import wide_atlas_root
from app.data import AtlasStore
from app.queries import lod
from app.server import create_app

WIDE, SMALL = 262_144, 16_384
URL = "/api/atlases/wide/layers/{}/points"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return wide_atlas_root(tmp_path_factory, (WIDE, SMALL))


@pytest.fixture(scope="module")
def client(root):
    return TestClient(create_app(root))


@pytest.fixture(scope="module")
def layer0(root):
    store = AtlasStore(root, verify="size")
    count, freq = store.frequency("wide", 0)
    return {"xyz": store.coords("wide", 0, "pca"), "count": count, "freq": freq,
            "lobes64": store.lobes("wide", 0, "phi", 64)}


def get(client, layer=0, **params):
    r = client.get(URL.format(layer), params=params)
    assert r.status_code == 200, r.text
    return r.json(), len(r.content)


def assert_most_frequent_of_each_cell(p, xyz, freq, among):
    """The points are, within every cell of the selection's grid, its most frequent features
    (ties: lower id), and with at least as many points as occupied cells every cell keeps its
    most frequent one; the rest are counted in the density, once each."""
    ids = np.asarray(p["ids"])
    cell = lod.Detail(xyz[among], freq[among], len(among)).cell          # the same grid, no selection
    local = np.searchsorted(among, ids)
    assert np.array_equal(among[local], ids)
    is_point = np.zeros(len(among), bool)
    is_point[local] = True
    order = np.lexsort((among, -freq[among], cell))                       # per cell, most frequent first
    c = cell[order]
    first = np.r_[True, c[1:] != c[:-1]]
    if len(ids) >= first.sum():
        assert is_point[order[first]].all()
    # within a cell, no feature that is not a point ranks above one that is
    pts = is_point[order]
    starts = np.flatnonzero(first)
    seen_rest = np.maximum.accumulate(np.where(~pts, np.arange(len(pts)), -1))
    reset = np.repeat(starts, np.diff(np.r_[starts, len(pts)]))
    assert not (pts & (seen_rest >= reset)).any()
    d = p["density"]
    assert sum(d["count"]) + len(ids) == len(among) == p["n_selected"]
    assert not np.isin(d["feature"], ids).any() and np.isin(d["feature"], among).all()


def test_a_wide_layer_answers_its_budget_of_most_frequent_points_and_density(client, layer0):
    p, size = get(client)
    xyz, freq = layer0["xyz"], layer0["freq"]
    ids = np.asarray(p["ids"])
    assert p["n"] == p["n_selected"] == WIDE and p["complete"] is False
    assert len(ids) == lod.POINT_BUDGET and np.all(np.diff(ids) > 0)
    assert_most_frequent_of_each_cell(p, xyz, freq, np.arange(WIDE))
    # the explorer's cloud draws the same points (one rule, app.queries.lod)
    from app.views import cloud
    assert cloud.POINT_BUDGET == lod.POINT_BUDGET and cloud.Detail is lod.Detail
    # values are the features' own, in the order of ids; coordinates exact as float32
    np.testing.assert_array_equal(np.asarray([p["x"], p["y"], p["z"]], np.float32).T, xyz[ids])
    np.testing.assert_array_equal(p["fire_count"], layer0["count"][ids])
    np.testing.assert_array_equal(p["frequency"], freq[ids])
    assert p["lobes"]["k"] == 4 and len(p["lobes"]["labels"]) == len(ids)
    d = p["density"]
    assert d["grid"] == lod.GRID and len(d["x"]) == len(d["count"]) == len(d["feature"]) <= lod.GRID ** 3
    # bounded: the points and cells, never the 262,144 features (~60 bytes of JSON each)
    assert size < 110 * (len(ids) + len(d["count"])) + 20_000 and size < 1_000_000, size
    # fewer points: a smaller answer, the same rule
    q, small = get(client, max_points=500)
    assert len(q["ids"]) == 500 and small < size / 3
    assert_most_frequent_of_each_cell(q, xyz, freq, np.arange(WIDE))


def test_a_layer_within_the_budget_is_answered_whole_as_before(client, root):
    store = AtlasStore(root, verify="size")
    xyz = store.coords("wide", 1, "pca")
    p, _ = get(client, 1, max_points=SMALL)
    assert p["complete"] is True and p["density"] is None and p["ids"] == list(range(SMALL))
    assert p["n"] == p["n_selected"] == len(p["x"]) == len(p["frequency"]) == SMALL
    np.testing.assert_array_equal(np.asarray(p["z"], np.float32), xyz[:, 2])
    p, _ = get(client, 1)                     # wider than the default budget: level of detail
    assert len(p["ids"]) == lod.POINT_BUDGET and p["complete"] is False


def test_a_lobe_answers_exactly_its_features(client, layer0):
    lab = layer0["lobes64"]
    members = np.flatnonzero(lab == 7)
    assert 100 < len(members) < 20_000
    p, _ = get(client, lobe=7, k=64, max_points=len(members))
    assert p["ids"] == members.tolist() and p["complete"] and p["n_selected"] == len(members)
    assert set(p["lobes"]["labels"]) == {7} and p["lobes"]["k"] == 64
    # more members than points: the most frequent of each cell of the lobe's own box
    p, _ = get(client, lobe=7, k=64, max_points=len(members) // 4)
    assert len(p["ids"]) == len(members) // 4 and np.isin(p["ids"], members).all()
    assert_most_frequent_of_each_cell(p, layer0["xyz"], layer0["freq"], members)


def test_a_box_answers_exactly_the_features_in_it_and_zooming_in_draws_more_there(client, layer0):
    xyz, freq = layer0["xyz"], layer0["freq"]
    lo, hi = np.percentile(xyz, [45, 55], axis=0)
    inside = np.flatnonzero(((xyz >= lo) & (xyz <= hi)).all(1))
    assert 50 < len(inside) < lod.POINT_BUDGET
    box = {"x_min": lo[0], "x_max": hi[0], "y_min": lo[1], "y_max": hi[1], "z_min": lo[2], "z_max": hi[2]}
    p, _ = get(client, **box)
    assert p["ids"] == inside.tolist() and p["complete"] and p["n_selected"] == len(inside)
    # the whole layer's answer has fewer of them as points: zoomed in, every one is
    whole, _ = get(client)
    assert np.isin(whole["ids"], inside).sum() < len(inside)
    # a larger box (half-open: no upper bounds) holds more features than points
    p, _ = get(client, x_min=lo[0], y_min=lo[1])
    wanted = np.flatnonzero((xyz[:, 0] >= lo[0]) & (xyz[:, 1] >= lo[1]))
    assert p["n_selected"] == len(wanted) > lod.POINT_BUDGET and np.isin(p["ids"], wanted).all()
    assert_most_frequent_of_each_cell(p, xyz, freq, wanted)
    d = p["density"]
    assert min(d["x"]) >= lo[0] and min(d["y"]) >= lo[1]
    # a box and a lobe: their intersection
    lab = layer0["lobes64"]
    both = np.flatnonzero((xyz[:, 0] >= lo[0]) & (xyz[:, 1] >= lo[1]) & (lab == 7))
    p, _ = get(client, x_min=lo[0], y_min=lo[1], lobe=7, k=64, max_points=max(len(both), 1))
    assert p["ids"] == both.tolist()


@pytest.mark.parametrize("params, status, words", [
    ({"x_min": 3, "x_max": 1}, 422, "empty box: x_min 3 is above x_max 1"),
    ({"z_min": "nan"}, 422, "z_min must be a finite number, got nan"),
    ({"y_max": "inf"}, 422, "y_max must be a finite number, got inf"),
    ({"x_min": 1000}, 404, "no feature of layer 0 lies in the box x 1000 to inf (pca coordinates span x "),
    ({"lobe": 99, "k": 64}, 404, "no lobe 99 among the phi lobes with k=64 of layer 0 (lobes 0 to 63)"),
    ({"lobe": 1, "k": 5}, 404, "no phi lobes with k=5 in layer 0 (computed: [4, 16, 64])"),
    ({"lobe": 1, "affinity": "jaccard"}, 404, "no jaccard lobes were computed for layer 0, so there is no lobe 1"),
    ({"max_points": 0}, 422, "greater than or equal to 1"),
    ({"lobe": -2}, 422, "greater than or equal to -1"),
    ({"x_min": "left"}, 422, "valid number"),
])
def test_bad_selections_get_a_readable_error(client, params, status, words):
    r = client.get(URL.format(0), params=params)
    assert r.status_code == status, r.text
    assert words in str(r.json()["detail"])
