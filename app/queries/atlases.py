"""Atlas-level answers: the atlases served, one atlas's manifest, the spectra of its layers."""
from __future__ import annotations

import numpy as np

from app.data import AtlasStore
from app.models import AtlasDetail, AtlasSummary, LayerDetail, LayerSummary, Spectra, Spectrum
from analysis.atlas import AtlasError, LayerFiles


def summaries(store: AtlasStore) -> list[AtlasSummary]:
    """Every atlas served; one that fails validation is listed with its error, not left out."""
    out = []
    for name in store.names():
        try:
            m = store.open(name).manifest
        except AtlasError as e:
            out.append(AtlasSummary(name=name, error=str(e)))
            continue
        out.append(AtlasSummary(
            name=name, title=m.title, model=m.model.name, synthetic=m.synthetic,
            layers=[LayerSummary(layer=li.layer, n_features=store.n_features(name, li.layer), hook=li.hook,
                                 sae_source=li.sae.source) for li in m.layers]))
    return out


def detail(store: AtlasStore, atlas: str) -> AtlasDetail:
    """The manifest of one atlas, with what is computed per layer."""
    m = store.open(atlas).manifest
    layers = []
    for li in m.layers:
        prefix = LayerFiles(li.layer).folder
        layers.append(LayerDetail(
            layer=li.layer, n_features=store.n_features(atlas, li.layer), hook=li.hook,
            sae_source=li.sae.source, n_tokens=li.n_tokens, n_blocks=li.n_blocks, threshold=li.threshold,
            sae=li.sae.model_dump(exclude={"training"}), layouts=store.layouts(atlas, li.layer),
            lobes=store.lobe_options(atlas, li.layer),
            files=sorted(f[len(prefix):] for f in m.files if f.startswith(prefix))))
    return AtlasDetail(name=atlas, title=m.title, synthetic=m.synthetic, created=m.created,
                       model=m.model.model_dump(), corpus=m.corpus.model_dump(), layers=layers, notes=m.notes)


def spectra(store: AtlasStore, atlas: str) -> Spectra:
    """The eigenvalue spectrum of every layer that has one, with its galaxy.json fit."""
    a = store.open(atlas)
    out = []
    for L in a.layer_ids:
        rel = LayerFiles(L).spectrum
        if a.has(rel):
            out.append(Spectrum(layer=L, eigenvalues=np.asarray(a.array(rel), float).tolist(), fit=a.galaxy(L)))
    return Spectra(atlas=atlas, layers=out)
