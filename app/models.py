"""What the queries answer and the JSON API serves: one pydantic model per shape.

The queries (app/queries/) build these, the Dash views read them, and the routers (app/api/)
declare them as response models, so the OpenAPI schema at ``/docs`` is the contract of both.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from analysis.artefacts import BrainRow, CrystalBaseline, Distractor, Galaxy, Lda
from app.data import Affinity, Layout


class LayerSummary(BaseModel):
    layer: int
    n_features: int
    hook: str = ""
    sae_source: str = ""


class AtlasSummary(BaseModel):
    name: str
    title: str = ""
    model: str = ""
    synthetic: bool = False
    layers: list[LayerSummary] = Field(default_factory=list)
    error: str | None = Field(None, description="why this atlas cannot be opened (validation failure)")


class LayerDetail(LayerSummary):
    n_tokens: int
    n_blocks: int
    threshold: float | None
    sae: dict
    layouts: list[Layout]
    lobes: dict[str, list[int]] = Field(description="affinity -> the k computed")
    files: list[str]


class AtlasDetail(BaseModel):
    name: str
    title: str
    synthetic: bool
    created: str
    model: dict
    corpus: dict
    layers: list[LayerDetail]
    notes: list[str]


class LobeLabels(BaseModel):
    affinity: Affinity
    k: int
    labels: list[int] = Field(description="lobe per feature (in Points: per point, in the order of ids); "
                                          "-1 = dead/excluded")
    names: dict[int, str] = Field(default_factory=dict, description="lobe -> its top tokens")


class Density(BaseModel):
    """The features of a selection that are not points, one entry per occupied cell of a
    grid³ grid over the selection's box: where they are, how many, the most frequent one."""
    grid: int = Field(description="cells per axis of the selection's box")
    x: list[float] = Field(description="mean position of the cell's features that are not points")
    y: list[float]
    z: list[float]
    count: list[int] = Field(description="features of the cell that are not points")
    feature: list[int] = Field(description="the most frequent of them")


class Points(BaseModel):
    atlas: str
    layer: int
    layout: Layout
    n: int = Field(description="features in the layer")
    n_selected: int = Field(description="features in the selection (lobe and box; the layer without them)")
    complete: bool = Field(description="every selected feature is a point (density is then None)")
    ids: list[int] = Field(description="feature id of each point, ascending; x, y, z, fire_count, frequency "
                                       "and lobes.labels are in this order")
    x: list[float]
    y: list[float]
    z: list[float]
    fire_count: list[int] | None
    frequency: list[float] | None = Field(description="fraction of tokens on which the feature fired")
    lobes: LobeLabels | None
    density: Density | None = Field(None, description="the selected features that are not points")


class Neighbor(BaseModel):
    feature: int
    cos: float


class Context(BaseModel):
    rank: int
    value: float
    doc: int
    subset: str
    tokens: list[str]
    peak: int


class TopToken(BaseModel):
    token: str
    count: int


class CoocPartner(BaseModel):
    feature: int
    blocks: int
    phi: float | None


class Crystal(BaseModel):
    index: int = Field(description="row of crystals.parquet")
    a: int
    b: int
    c: int
    d: int
    kind: str
    edge_cos: float | None = None
    length_ratio: float | None = None
    closing_error: float | None = None


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class LobeOf(BaseModel):
    affinity: str
    k: int
    lobe: int


class FeatureCard(BaseModel):
    atlas: str
    layer: int
    feature: int
    fire_count: int | None
    frequency: float | None
    neighbors: list[Neighbor] = Field(description="decoder-cosine neighbors, closest first")
    contexts: list[Context]
    top_tokens: list[TopToken]
    cooc_partners: list[CoocPartner] | None
    crystals: list[Crystal] | None
    act_hist: Histogram | None
    lobes: list[LobeOf]
    neuronpedia: str | None


class LobeRow(BaseModel):
    lobe: int
    size: int
    name: str
    subsets: dict[str, int] = Field(default_factory=dict, description="blocks won per corpus subset")


class Lobes(BaseModel):
    atlas: str
    layer: int
    affinity: Affinity
    k: int
    lobes: list[LobeRow]
    stats: BrainRow | None = Field(None, description="brain.json entry for (affinity, k): AMI, accuracy, z-scores")


class Spectrum(BaseModel):
    layer: int
    eigenvalues: list[float]
    fit: Galaxy | None = Field(description="the layer's galaxy.json: power-law fit, isotropic baseline, entropy")


class Spectra(BaseModel):
    atlas: str
    layers: list[Spectrum]


class AtomSummary(BaseModel):
    atlas: str
    layer: int
    n_faces: int | None = Field(None, description="faces in crystals.parquet (None: crystals not computed)")
    n_parallelogram: int | None = None
    n_trapezoid: int | None = None
    baseline: CrystalBaseline | None = Field(None, description="atom.json crystal_baseline: faces passing the same "
                                                    "thresholds on random directions of matched norms")
    best: list[Crystal] = Field(default_factory=list, description="best faces: highest edge cosine first")
    lda: Lda | None = Field(None, description="atom.json lda: silhouette per LDA dimension, raw silhouette")
    distractor: Distractor | None = Field(None, description="atom.json distractor: PC1 scores, length differences, r")
    n_pairs: int | None = None


class SearchHit(BaseModel):
    feature: int
    why: str


class SearchResult(BaseModel):
    query: str
    hits: list[SearchHit]


LatentProjection = Literal["pca", "umap"]
LatentColor = Literal["kind", "layer", "position"]


class LatentSummary(BaseModel):
    """What the latent capture of an atlas holds (manifest.latent, docs/atlas.md "Latent geometry")."""
    atlas: str
    model: str
    n_layers: int
    captures: list[str] = Field(description="capture slots in storage order (embedding, 4 per block, final norm)")
    kinds: list[str] = Field(description="the five captures of a block, in forward order")
    tensors: dict[str, str] = Field(description="capture kind -> the exact tensor in this architecture")
    n_docs: int
    n_positions: int
    bos: bool
    sample_tokens: int
    umap_tokens: int
    projections: list[LatentProjection] = Field(description="per-layer projections stored (all layers: pca only)")


class LatentPoints(BaseModel):
    """Points of the 3-D latent view: ``n_tokens`` sample tokens of every capture shown, capture-major
    (point ``i`` is capture ``slot[i]`` of sample token ``sample[i]``)."""
    atlas: str
    layer: int | None = Field(description="the block shown; None: every capture of every layer (one PCA)")
    projection: LatentProjection
    n: int
    n_tokens: int = Field(description="sample tokens per capture shown (a prefix of the sample: uniform)")
    x: list[float]
    y: list[float]
    z: list[float]
    slot: list[int] = Field(description="capture slot (row of captures) of each point")
    kind: list[str]
    depth: list[int] = Field(description="block of each point: -1 the embedding, n_layers the final norm")
    sample: list[int]
    doc: list[int]
    position: list[int]


class LatentNormSlot(BaseModel):
    slot: int
    capture: str
    kind: str
    depth: int
    median: float = Field(description="median norm over positions >= 1")
    p90: float
    pos0: float = Field(description="median norm at position 0")
    pos0_ratio: float


class LatentNorms(BaseModel):
    atlas: str
    slots: list[LatentNormSlot]
    by_position: list[list[float | None]] = Field(description="[slot][position]: median norm over documents")


class SeparationScores(BaseModel):
    accuracy: float
    accuracy_shuffled: float
    silhouette: float
    silhouette_shuffled: float


class LayerSeparation(BaseModel):
    layer: int
    raw: SeparationScores
    unit: SeparationScores = Field(description="on unit-normalised vectors")


class LatentSeparation(BaseModel):
    """Attention versus MLP outputs per block: cross-validated linear accuracy and silhouette,
    each with its label-shuffle baseline."""
    atlas: str
    tokens: int | None = Field(description="sample tokens per capture in the score")
    layers: list[LayerSeparation]


class LatentToken(BaseModel):
    """One captured token in its document: the tokens around it, the token at ``peak``."""
    atlas: str
    sample: int
    slot: int | None
    capture: str | None
    norm: float | None = Field(description="norm of this capture at this token")
    doc: int = Field(description="row of latent/docs.parquet")
    corpus_doc: int = Field(description="index of the document in the corpus")
    subset: str
    position: int
    token: str
    tokens: list[str] = Field(description="the decoded tokens of the window")
    peak: int = Field(description="index of the token in ``tokens``")
    start: int = Field(description="position of tokens[0] in the document")


# --------------------------------------------------------------------------- universality (METHODS 5)

Metric = Literal["svcca", "rsa"]
PairSort = Literal["corr", "-corr", "feature_b", "feature_a"]


class ComparisonSide(BaseModel):
    """One side of a comparison and the served atlas that holds its features."""
    path: str = Field(description="the atlas folder the comparison was computed from")
    title: str
    model: str
    tokenizer: str
    layers: list[int]
    widths: dict[int, int] = Field(description="layer -> features of its SAE")
    saes: dict[int, str] = Field(description="layer -> SAE source")
    atlas: str | None = Field(description="the served atlas of these features; None: not served here")
    note: str | None = Field(None, description="why no served atlas is linked, or how it was matched")


class ComparisonSummary(BaseModel):
    name: str
    title: str = ""
    a: ComparisonSide | None = None
    b: ComparisonSide | None = None
    error: str | None = Field(None, description="why this comparison cannot be opened (validation failure)")


class LayerPairStats(BaseModel):
    """The counts and nulls of one layer pair (summary.json)."""
    layer_a: int
    layer_b: int
    n_pairs: int = Field(description="pairs kept after the filters and the pairing rule")
    svcca: float | None
    svcca_p: float | None
    svcca_null_mean: float | None
    svcca_null_std: float | None
    rsa: float | None
    rsa_p: float | None
    rsa_null_mean: float | None
    rsa_null_std: float | None
    n_shuffles: int | None
    counts: dict[str, float] = Field(default_factory=dict,
                                     description="the filters' counts and mean correlations (n_corr_ok, ...)")


class ComparisonDetail(ComparisonSummary):
    """A comparison: both sides, the alignment, the settings, and the layer-by-layer matrices
    (rows: layers of A, columns: layers of B; None where fewer than 3 pairs)."""
    created: str = ""
    corpus: dict = Field(default_factory=dict)
    alignment: dict = Field(default_factory=dict)
    settings: dict = Field(default_factory=dict, description="configs.compare as run")
    notes: list[str] = Field(default_factory=list)
    svcca: list[list[float | None]] = Field(default_factory=list)
    svcca_p: list[list[float | None]] = Field(default_factory=list)
    rsa: list[list[float | None]] = Field(default_factory=list)
    rsa_p: list[list[float | None]] = Field(default_factory=list)
    n_pairs: list[list[int]] = Field(default_factory=list)
    layer_pairs: list[LayerPairStats] = Field(default_factory=list)


class PairFeature(BaseModel):
    """One feature of a pair, read from its own atlas when that atlas is served."""
    feature: int
    compare_tokens: list[str] = Field(description="its top tokens over the comparison's aligned units")
    top_tokens: list[TopToken] = Field(default_factory=list, description="top_tokens.parquet of its atlas")
    context: Context | None = Field(None, description="its strongest context (contexts.parquet of its atlas)")
    link: str | None = Field(None, description="permalink of its card in the feature cloud")


class FeaturePair(BaseModel):
    corr: float = Field(description="Pearson correlation over the aligned units")
    kept: bool = Field(description="passed the switched-on filters and the pairing rule")
    punctuation: bool
    shared_token: bool
    a: PairFeature
    b: PairFeature


class Pairs(BaseModel):
    """A page of the paired features of one layer pair (one row per B feature in the file)."""
    comparison: str
    layer_a: int
    layer_b: int
    atlas_a: str | None
    atlas_b: str | None
    total: int = Field(description="rows matching the filter")
    offset: int
    limit: int
    sort: PairSort
    pairs: list[FeaturePair]


class SubspaceRow(BaseModel):
    layer_a: int
    layer_b: int
    group: str
    n_a: int
    n_b: int
    n_pairs: int
    svcca: float | None
    svcca_p: float | None
    rsa: float | None
    rsa_p: float | None
    n_shuffles: int
    skipped: str = Field(description="why the group was skipped; empty when computed")


class Subspaces(BaseModel):
    comparison: str
    keyword_groups: dict[str, list[str]] = Field(default_factory=dict)
    rows: list[SubspaceRow]


class Health(BaseModel):
    status: Literal["ok"]
    atlases: int


class ErrorDetail(BaseModel):
    """The body of every error the API answers with its own message (404, 422, 503)."""
    detail: str
