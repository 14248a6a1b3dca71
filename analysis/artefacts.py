"""The geometry stage's per-layer JSON results as pydantic models: ``brain.json``,
``galaxy.json`` and ``atom.json`` (docs/atlas.md, "Layer files").

analysis.stage builds them, ``AtlasWriter.put_json`` writes them, ``Atlas.brain``,
``Atlas.galaxy`` and ``Atlas.atom`` read and validate them (a malformed file is an
``AtlasError`` naming it, as for any other damaged file), and the report, the figures and the
JSON API all read these same models.

Fields are declared in the order the stage has always written them, and a file keeps only
the fields that were set, so a file's bytes are the same as before these models existed.
Fields that atlases written by older versions lack are optional: None means "not in this
file". Unknown fields are kept (a newer writer's additions survive a read and a re-serve).
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Artefact(BaseModel):
    model_config = ConfigDict(extra="allow")


# --------------------------------------------------------------------------- brain.json (METHODS 1)

class AmiTest(Artefact):
    """AMI of a co-occurrence clustering against the geometry clustering, with its label-permutation null."""
    ami: float
    perm_mean: float
    perm_std: float
    z: float | None = Field(description="(ami - perm_mean) / perm_std; None when the null has no spread")


class RegressionTest(Artefact):
    """Balanced accuracy of lobes predicted from decoder directions, against random directions.
    All None when the training part holds a single lobe."""
    accuracy: float | None
    random_mean: float | None
    random_std: float | None
    z: float | None


class BrainRow(Artefact):
    """The statistics of one (affinity, k)."""
    k: int
    ami: AmiTest
    regression: RegressionTest | None = Field(description="None for a k not in regression_ks")


class Brain(Artefact):
    ks: list[int] = Field(description="row order of every lobes_<affinity>.npy")
    affinities: list[str] = Field(description="co-occurrence affinities tested against geometry")
    lobe_affinities: list[str] = Field(description="affinities with a lobes file (geometry included)")
    n_features: int
    n_live: int
    dead: list[int] = Field(description="features that never fired (label -1 everywhere)")
    n_blocks: int
    results: dict[str, list[BrainRow]] = Field(description="affinity -> one row per k, in ks order")

    def row(self, affinity: str, k: int) -> BrainRow | None:
        return next((r for r in self.results.get(affinity, []) if r.k == k), None)


# --------------------------------------------------------------------------- galaxy.json (METHODS 3)

class PowerLawFit(Artefact):
    """log10 λ_r = intercept - alpha log10 r over ``ranks``; None values when too few ranks."""
    alpha: float | None
    intercept: float | None
    ci95: float | None = Field(description="half-width of alpha's 95 % interval")
    stderr: float | None
    ranks: list[int] = Field(description="first and last 1-based rank of the fit")


class IsotropicFit(PowerLawFit):
    """The same fit on an isotropic Gaussian cloud of the layer's shape."""
    slope: float | None = Field(description="-alpha: the fitted log-log slope")


class Entropy(Artefact):
    """Clustering entropy and negentropy (nats) with bootstrap spread."""
    entropy: float
    entropy_std: float
    entropy_point: float
    gaussian_entropy: float
    negentropy: float
    negentropy_std: float
    negentropy_ci95: float | None = None       # absent in atlases written before the published t·SE
    estimator: str
    k: int
    n_samples: int
    n_components: int
    n_bootstrap: int
    null_negentropy: float | None = None       # only with the Gaussian null
    null_negentropy_std: float | None = None


class Galaxy(Artefact):
    power_law: PowerLawFit
    isotropic: IsotropicFit
    entropy: Entropy
    estimator: str | None = None


# --------------------------------------------------------------------------- atom.json (METHODS 2)

class CrystalSearch(Artefact):
    """The crystal search's options as used (any further options are kept as extra fields)."""
    min_cos: float | None = None
    n_neighbors: int | None = None
    n_faces: int
    n_edge_pairs: int
    n_features: int | None = None    # features searched (a wide layer: its most frequent)


class BaselineCounts(Artefact):
    thresholds: list[float]
    faces: list[list[int]] = Field(description="[draw][threshold]")
    parallelograms: list[list[int]] = Field(description="[draw][threshold]")


class CrystalBaseline(Artefact):
    """Faces found in random directions of matched norms or covariance, per draw."""
    n_faces: list[int]
    n_parallelogram: list[int]
    n_trapezoid: list[int]
    faces_mean: float
    faces_per_feature: float
    faces_per_edge_pair: float
    counts: BaselineCounts | None = None       # absent before face counts per threshold
    match: str
    n_repeats: int
    seed: int


class CrystalCounts(Artefact):
    """The real cloud's faces per edge-cosine threshold against the baseline draws."""
    thresholds: list[float]
    faces: list[int]
    parallelograms: list[int]
    baseline_mean: list[float]
    baseline_std: list[float | None]
    z: list[float | None] = Field(description="None: fewer than two draws, or draws and real count all equal")
    n_repeats: int


class Distractor(Artefact):
    """PC1 of the z-scored word-pair differences against the last-token length difference."""
    direction: list[float]
    scores: list[float]
    length_diff: list[float]
    explained_variance_ratio: float
    pearson_r: float
    p_value: float


class Lda(Artefact):
    """Task silhouette after LDA, per number of dimensions."""
    tasks: list[str]
    n_per_task: dict[str, int]
    dims: list[int]
    silhouette: list[float]
    raw_silhouette: float
    best_dim: int | None
    explained_variance_ratio: list[float]
    shrinkage: float | str | None
    raw_removed_silhouette: float | None = None


class Atom(Artefact):
    """Crystal parts when the search ran, word-pair parts when word pairs were captured."""
    crystal_search: CrystalSearch | None = None
    crystal_baseline: CrystalBaseline | None = None
    crystal_counts: CrystalCounts | None = None
    n_pairs: int | None = None
    distractor: Distractor | None = None
    lda: Lda | None = None
