"""The permalink: ViewState <-> query string, tolerant parsing, nearest valid view."""
from __future__ import annotations

import pytest

from _app_atlas import app_atlas_root
from app.data import AtlasStore
from app.state import Coloring, ViewState, parse_query, resolve


@pytest.fixture(scope="module")
def store(request, tmp_path_factory) -> AtlasStore:
    return AtlasStore(app_atlas_root(request, tmp_path_factory))


def test_round_trip_is_short_and_readable():
    st = ViewState(atlas="demo", layer=10, layout="umap", color="lobe:phi:8", f=123, size=True, q=0.95,
                   face=3, cam=(1.25, -0.5, 0.75))
    q = st.to_query()
    assert q == "?atlas=demo&layer=10&layout=umap&color=lobe:phi:8&size=freq&f=123&q=0.95&face=3&cam=1.25,-0.5,0.75"
    back, problems = parse_query(q)
    assert problems == [] and back == st
    assert ViewState(atlas="a", layer=0).to_query() == "?atlas=a&layer=0&layout=pca&color=lobe"
    # the open panel is part of the view (the default, spectra, is left out)
    st = ViewState(atlas="a", layer=0, panel="crystals", face=2)
    assert st.to_query() == "?atlas=a&layer=0&layout=pca&color=lobe&face=2&panel=crystals"
    assert parse_query(st.to_query()) == (st, [])


@pytest.mark.parametrize("query, key", [
    ("layer=ten", "layer"), ("layout=tsne", "layout"), ("color=rainbow", "color"), ("color=lobe:phi:x", "color"),
    ("f=1e3", "f"), ("q=2", "q"), ("cam=1,2", "cam"), ("cam=a,b,c", "cam"), ("atlas=../etc", "atlas"),
    ("atlas=..", "atlas"), ("size=huge", "size"), ("panel=cloud", "panel"),
])
def test_malformed_values_are_dropped_with_a_message(query, key):
    st, problems = parse_query("?" + query)
    assert len(problems) == 1 and problems[0].startswith(f"ignored {key}=")
    assert st == ViewState()


def test_unknown_keys_and_huge_links_never_raise():
    st, problems = parse_query("?atlas=syn&%3Cscript%3E=1&zzz=2")
    assert st.atlas == "syn" and "unknown parameter" in problems[0]
    st, problems = parse_query("?f=" + "9" * 5000)
    assert st == ViewState() and "too long" in problems[0]
    assert parse_query(None) == (ViewState(), [])


def test_markup_in_a_link_is_kept_as_inert_text():
    st, problems = parse_query("?color=<img src=x onerror=alert(1)>&atlas=<b>x</b>")
    assert str(st.coloring) == "lobe" and st.atlas is None
    # the message quotes the value (repr) as text; the page renders it as text, never as markup
    assert any("'<img src=x onerror=alert(1)>'" in p for p in problems)


def test_resolve_keeps_a_valid_view(store):
    st = ViewState(atlas="syn", layer=1, layout="umap", color="lobe:phi:4", f=42, q=0.9, face=2)
    assert resolve(st, store) == (st, [])


def test_resolve_moves_to_the_nearest_valid_view(store):
    st, notes = resolve(ViewState(atlas="nope", layer=7, color="lobe:phi:5", f=10_000, face=999), store)
    assert (st.atlas, st.layer, str(st.coloring), st.feature, st.face) == ("syn", 2, "lobe:phi:4", None, None)
    text = " ".join(notes)
    for expected in ("no atlas 'nope'", "layer 7", "k=5", "feature 10000", "crystal face 999"):
        assert expected in text
    st, notes = resolve(ViewState(atlas="syn", layer=-3, color="geometry:3"), store)
    assert (st.layer, str(st.coloring)) == (0, "geometry:2") and len(notes) == 2


def test_default_colouring_is_a_lobe_colouring(store):
    st, notes = resolve(ViewState(), store)
    assert st.atlas == "syn" and st.layer == 0 and str(st.coloring) == "lobe:phi:4" and notes == []


def test_camera_centre_round_trips_and_bad_ones_are_dropped():
    st = ViewState(atlas="a", layer=0, face=3, q=0.999, cam=(0.69, 0.14, -0.29), ctr=(0.452, 0.263, -0.37))
    q = st.to_query()
    assert q.endswith("&q=0.999&face=3&cam=0.69,0.14,-0.29&ctr=0.452,0.263,-0.37")
    assert parse_query(q) == (st, [])
    for bad in ("ctr=1,2", "ctr=nan,0,0", "ctr=x,y,z"):
        back, problems = parse_query("?" + bad)
        assert back.center is None and len(problems) == 1 and problems[0].startswith("ignored ctr=")


def test_short_keys_are_aliases_of_the_named_fields():
    by_key = ViewState(atlas="a", layer=3, color="lobe:phi:8", size=True, f=7, face=2, q=0.9, cam=(1, 2, 3),
                       ctr=(0.1, 0.2, 0.3))
    by_name = ViewState(atlas="a", layer=3, coloring=Coloring(kind="lobe", affinity="phi", k=8), size_by_freq=True,
                        feature=7, face=2, min_edge_cos=0.9, eye=(1, 2, 3), center=(0.1, 0.2, 0.3))
    assert by_key == by_name and (by_name.feature, by_name.min_edge_cos, by_name.eye) == (7, 0.9, (1, 2, 3))
    # the permalink keeps the short keys, and parses back to the same state
    q = by_name.to_query()
    assert q == "?atlas=a&layer=3&layout=pca&color=lobe:phi:8&size=freq&f=7&q=0.9&face=2&cam=1,2,3&ctr=0.1,0.2,0.3"
    assert parse_query(q) == (by_name, [])
    # the explorer stores a state as its dump (plain values) and reads it back
    dump = by_name.model_dump()
    assert dump["coloring"] == "lobe:phi:8" and dump["feature"] == 7
    assert ViewState.model_validate(dump) == by_name
    # a change may use either spelling, and is validated like a new state
    assert by_name.with_(f=None) == by_name.with_(feature=None) and by_name.with_(f=None).feature is None
    assert by_name.with_(color="geometry:4").coloring == Coloring(kind="geometry", k=4)
    with pytest.raises(ValueError):
        by_name.with_(coloring="rainbow")


@pytest.mark.parametrize("text, kind, affinity, k, lobes", [
    ("lobe", "lobe", None, None, None), ("lobe:jaccard", "lobe", "jaccard", None, None),
    ("lobe:phi:8", "lobe", "phi", 8, ("phi", 8)), ("geometry", "geometry", None, None, None),
    ("geometry:4", "geometry", None, 4, ("geometry", 4)), ("freq", "freq", None, None, None),
    ("subset", "subset", None, None, None),
])
def test_a_colouring_is_parsed_once_into_its_parts(text, kind, affinity, k, lobes):
    c = Coloring.parse(text)
    assert (c.kind, c.affinity, c.k, c.lobes) == (kind, affinity, k, lobes) and str(c) == text
    assert ViewState(color=text).coloring == c


@pytest.mark.parametrize("text", ["rainbow", "lobe:cosine:4", "lobe:phi:x", "freq:3", "geometry:phi", "lobe:phi:8:1",
                                  "freq\n", ""])
def test_malformed_colourings_are_refused(text):
    with pytest.raises(ValueError, match="use lobe:<affinity>:<k>"):
        Coloring.parse(text)


@pytest.mark.parametrize("parts", [
    {"kind": "freq", "k": 3}, {"kind": "lobe", "k": 3}, {"kind": "geometry", "affinity": "phi"},
    {"kind": "lobe", "affinity": "cosine", "k": 3}, {"kind": "lobe", "affinity": "phi", "k": -1},
])
def test_a_colouring_built_from_parts_obeys_the_same_grammar(parts):
    with pytest.raises(ValueError, match="use lobe:<affinity>:<k>"):
        Coloring(**parts)


# --------------------------------------------------------------------------- the Latent view's keys


def test_latent_keys_round_trip_and_stay_out_of_cloud_links():
    st = ViewState(atlas="demo", layer=9, view="latent", ll=12, lp="umap", lc="position", pt=(49, 17))
    q = st.to_query()
    assert q == "?atlas=demo&layer=9&layout=pca&color=lobe&view=latent&ll=12&lp=umap&lc=position&pt=49:17"
    assert parse_query(q) == (st, [])
    # all layers at once is the default, written out in the latent view
    st = ViewState(atlas="demo", layer=9, view="latent")
    assert st.to_query().endswith("&view=latent&ll=all&lp=pca&lc=kind")
    assert parse_query(st.to_query()) == (st, [])
    # the cloud view's links are as they were: latent settings kept in the state, not written
    cloud = st.with_(view="cloud", ll=3, lc="layer")
    assert cloud.to_query() == "?atlas=demo&layer=9&layout=pca&color=lobe"
    # a model-only atlas (no SAE layer) has no feature keys to write
    assert ViewState(atlas="m", view="latent").to_query() == "?atlas=m&view=latent&ll=all&lp=pca&lc=kind"


@pytest.mark.parametrize("query, key", [
    ("view=galaxy", "view"), ("ll=-1", "ll"), ("ll=first", "ll"), ("lp=tsne", "lp"), ("lc=rainbow", "lc"),
    ("pt=12", "pt"), ("pt=a:b", "pt"), ("pt=1:2:3", "pt"), ("pt=-1:2", "pt"),
])
def test_malformed_latent_values_are_dropped_with_a_message(query, key):
    st, problems = parse_query("?" + query)
    assert len(problems) == 1 and problems[0].startswith(f"ignored {key}="), problems
    assert st == ViewState()


def test_an_atlas_without_a_latent_capture_shows_the_cloud_with_a_notice(store):
    st, notes = resolve(parse_query("?atlas=syn&layer=1&view=latent&ll=3&pt=2:5")[0], store)
    assert st.view == "cloud" and st.latent_point is None and (st.atlas, st.layer) == ("syn", 1)
    assert notes == ["atlas 'syn' has no latent capture (saegeo precompute --latent); showing the feature cloud"]
    assert "view" not in st.to_query()


def test_universality_keys_round_trip_and_stay_out_of_other_links():
    st = ViewState(atlas="a", layer=1, view="universality", cmp="a-vs-b", um="rsa", cell=(15, 9), pair=380)
    q = st.to_query()
    assert q == "?atlas=a&layer=1&layout=pca&color=lobe&view=universality&cmp=a-vs-b&um=rsa&cell=15:9&pair=380"
    assert parse_query(q) == (st, [])
    # switching views keeps the universality fields, but cloud and latent links do not carry them
    assert "cmp" not in st.with_(view="cloud").to_query() and "cell" not in st.with_(view="latent").to_query()
    assert st.with_(view="cloud").comparison == "a-vs-b"


@pytest.mark.parametrize("query, key", [
    ("view=compare", "view"), ("cmp=../x", "cmp"), ("um=cka", "um"), ("cell=15", "cell"), ("cell=a:b", "cell"),
    ("cell=-1:2", "cell"), ("pair=#3", "pair"), ("pair=-1", "pair"),
])
def test_malformed_universality_values_are_dropped_with_a_message(query, key):
    st, problems = parse_query("?" + query)
    assert len(problems) == 1 and problems[0].startswith(f"ignored {key}="), problems
    assert st == ViewState()


def test_without_a_comparison_the_universality_view_falls_back_to_the_cloud(store):
    st, notes = resolve(parse_query("?view=universality&cell=1:0")[0], store)
    assert st.view == "cloud" and st.cell is None and any("no comparison is served" in n for n in notes)
