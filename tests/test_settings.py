"""Every precompute setting reachable from the command line, the published profiles, config files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from analysis.stage import GeometryConfig
from app.cli import app
from precompute.latent import LatentConfig
from precompute.pipeline import PrecomputeConfig

REPO = Path(__file__).resolve().parents[1]
# run-control options that are not settings of an atlas, or are set by their own flags only
NOT_SETTINGS = {"out", "profile"}


def cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, ["precompute", *[str(a) for a in args]])
    return r.exit_code, r.output


def resolved(*args) -> dict:
    code, out = cli(*args, "--print-config")
    assert code == 0, out
    return json.loads(out)


def other_value(default, annotation):
    """A valid value different from ``default`` for a field of this annotation."""
    choices = [a for a in typing.get_args(annotation) if isinstance(a, str)]
    if typing.get_origin(annotation) is typing.Literal or choices:
        if not choices:
            choices = [a for arg in typing.get_args(annotation) for a in typing.get_args(arg) if isinstance(a, str)]
        return next(c for c in choices if c != default)
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        return default + 1
    if isinstance(default, float):
        return default / 2
    if isinstance(default, str):
        return default + "x"
    if isinstance(default, list) and default and all(isinstance(x, int) for x in default):
        return [default[0], default[1] - 1] if len(default) == 2 else default[:-1] or [default[0] + 1]
    if isinstance(default, list) and default and all(isinstance(x, float) for x in default):
        return default[1:]
    return None      # not derivable generically: covered by the named cases below


@pytest.mark.parametrize("stage,prefix", [(PrecomputeConfig, ""), (GeometryConfig, "geometry."),
                                          (LatentConfig, "latent.")])
def test_every_setting_is_reachable_with_set(stage, prefix):
    base = resolved()
    section = {"": base, "geometry.": base["geometry_config"], "latent.": base["latent_config"]}[prefix]
    changed = 0
    for name, field in stage.model_fields.items():
        if name in NOT_SETTINGS or name in ("geometry_config", "latent_config"):
            continue
        value = other_value(section[name], field.annotation)
        if value is None:
            continue
        if prefix == "latent." and name == "profile":
            continue          # a latent profile rewrites several settings; tested in test_latent
        got = resolved("--set", f"{prefix}{name}={json.dumps(value)}")
        got_section = {"": got, "geometry.": got["geometry_config"], "latent.": got["latent_config"]}[prefix]
        assert got_section[name] == value, (name, value, got_section[name])
        changed += 1
    assert changed >= len(stage.model_fields) // 2        # the generic rule covers most fields


def test_the_settings_the_issue_names_have_options_and_set():
    r = resolved("--block-size", 128, "--threshold", 0.5, "--seq-len", 512, "--max-docs", 30,
                 "--set", "seq_len_includes_bos=false", "--set", "text_field=body", "--set", "subset_field=meta.src",
                 "--set", "sae_width=1024", "--set", "sae_k=16", "--set", "train_tokens=5000",
                 "--set", "geometry.ks=[2,4,8]", "--set", "geometry.n_permutations=20",
                 "--set", "geometry.entropy_estimator=published", "--set", "geometry.entropy_samples=2000")
    assert (r["block_size"], r["threshold"], r["seq_len"], r["max_docs"]) == (128, 0.5, 512, 30)
    assert r["seq_len_includes_bos"] is False and (r["text_field"], r["subset_field"]) == ("body", "meta.src")
    assert (r["sae_width"], r["sae_k"], r["train_tokens"]) == (1024, 16, 5000)
    g = r["geometry_config"]
    assert g["ks"] == [2, 4, 8] and g["n_permutations"] == 20
    assert (g["entropy_estimator"], g["entropy_samples"]) == ("published", 2000)


def test_published_profiles_resolve_to_the_published_settings():
    p = resolved("--profile", "published")
    assert p["model"] == "google/gemma-2-2b"
    assert p["saes"] == ["gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical"]
    assert (p["corpus"], p["max_docs"], p["max_tokens"]) == ("hf:monology/pile-uncopyrighted", 50_000, None)
    assert (p["seq_len"], p["seq_len_includes_bos"], p["block_size"], p["threshold"]) == (1024, True, 256, 1.0)
    assert p["word_pair_layer"] == "hidden_states"
    g = p["geometry_config"]
    assert g["ks"] == [2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert g["affinities"] == ["simple_matching", "jaccard", "dice", "overlap", "phi"]
    assert (g["n_permutations"], g["regression_ks"], g["fit_ranks"]) == (100, [2], [11, 150])
    assert (g["entropy_samples"], g["entropy_components"], g["entropy_k"], g["entropy_bootstrap"]) == (5000, 100, 1, 30)
    assert (g["n_init"], g["n_init_large_k"], g["per_k"]) == (10, None, False)   # ten k-means restarts at every k
    assert resolved()["geometry_config"]["n_init_large_k"] == 1                   # the default: one from k = 128
    galaxy = resolved("--profile", "published-galaxy")
    assert galaxy["saes"] == [f"gemma-scope-2b-pt-res-canonical/layer_{L}/width_65k/canonical" for L in range(26)]
    # a later option wins over the profile
    assert resolved("--profile", "published", "--set", "max_docs=10")["max_docs"] == 10


def test_mistakes_in_settings_are_named():
    code, out = cli("--set", "blok_size=3")
    assert code != 0 and "blok_size: unknown setting" in out
    code, out = cli("--set", "geometry.kss=[2]")
    assert code != 0 and "geometry_config.kss: unknown setting" in out
    code, out = cli("--set", "nokey")
    assert code != 0 and "KEY=VALUE" in out
    code, out = cli("--set", "foo.bar=1")
    assert code != 0 and "geometry.FIELD and latent.FIELD" in out
    code, out = cli("--profile", "nope")
    assert code != 0 and "unknown profile 'nope'" in out


def test_config_files_in_toml_yaml_and_json(tmp_path):
    (tmp_path / "a.toml").write_text('profile = "tiny"\nblock_size = 32\n[geometry]\nks = [2, 4]\n')
    (tmp_path / "a.yaml").write_text("profile: tiny\nblock_size: 32\ngeometry:\n  ks: [2, 4]\n")
    (tmp_path / "a.json").write_text(json.dumps({"profile": "tiny", "block_size": 32, "geometry_config": {"ks": [2, 4]}}))
    for name in ("a.toml", "a.yaml", "a.json"):
        r = resolved("--config", tmp_path / name)
        assert r["profile"] == "tiny" and r["layers"] == [2, 5]                 # the profile applies
        assert r["block_size"] == 32 and r["geometry_config"]["ks"] == [2, 4]   # the file overrides it
    assert resolved("--config", tmp_path / "a.toml", "--block-size", 16)["block_size"] == 16
    (tmp_path / "bad.yaml").write_text("x: [\n")
    code, out = cli("--config", tmp_path / "bad.yaml")
    assert code != 0 and "bad.yaml could not be read" in out
    code, out = cli("--config", tmp_path / "missing.toml")
    assert code != 0 and "does not exist" in out


@pytest.mark.model
def test_config_file_run_writes_its_resolved_settings_into_the_manifest(tmp_path):
    from analysis.atlas import open_atlas

    (tmp_path / "run.toml").write_text(
        'layers = [1]\nmax_tokens = 2000\ntrain_tokens = 2000\nseq_len = 128\nblock_size = 32\nsae_width = 64\n'
        'sae_k = 4\ntrain_epochs = 1\nbatch_size = 4\neval_tokens = 512\nword_pairs = false\ngeometry = false\n'
        'progress = false\nthreads = 1\n')
    code, out = cli("--config", tmp_path / "run.toml", "--out", tmp_path / "atlas", "--set", "block_size=16")
    assert code == 0, out
    m = open_atlas(tmp_path / "atlas").manifest
    cfg = m.configs["precompute"]
    assert (cfg["block_size"], cfg["sae_width"], cfg["seq_len"], cfg["seq_len_includes_bos"]) == (16, 64, 128, True)
    assert m.corpus.block_size == 16 and m.corpus.doc_tokens == 127


@pytest.mark.model
def test_published_profile_says_clearly_that_the_hub_is_unreachable(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "app.cli", "precompute", "--profile", "published", "--out",
                        str(tmp_path / "pub")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    # the corpus is checked first, before the model would load
    assert "monology/pile-uncopyrighted" in last and "Hub could not be reached" in last
    assert not (tmp_path / "pub").exists() and not (tmp_path / "pub.partial").exists()


def test_wide_cooccurrence_follows_the_geometry_and_never_undercuts_it():
    # layers wider than cooc_wide_from keep top partners only, which the dense geometry path
    # cannot use: by default the two thresholds are one, and a lower precompute one is refused
    assert (resolved()["cooc_wide_from"], resolved()["cooc_topk"]) == (16384, 32)
    assert resolved("--set", "geometry.wide_from=4096")["cooc_wide_from"] == 4096
    assert resolved("--set", "cooc_wide_from=65536")["geometry_config"]["wide_from"] == 16384
    code, out = cli("--set", "cooc_wide_from=4096")
    assert code != 0 and "cooc_wide_from (4096) is below geometry_config.wide_from (16384)" in out
    code, out = cli("--set", "cooc_topk=0")
    assert code != 0 and "cooc_topk" in out
