"""The ``saegeo`` command line.

Heavy modules are imported inside each command so that ``saegeo --help`` is instant and
``saegeo serve`` never imports torch.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="saegeo",
    help="Explore the geometry of sparse-autoencoder features: precompute an atlas, then browse it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_HOME = Path(os.environ.get("SAEGEO_HOME", "atlases"))


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="Atlas directory to check.")],
             quick: Annotated[bool, typer.Option(help="Check sizes, shapes and dtypes but skip checksums.")] = False):
    """Check an atlas: every file present, complete, of the right shape and checksum."""
    from analysis.atlas import validate as check

    problems = check(path, verify="size" if quick else "checksum")
    if problems:
        for p in problems:
            typer.echo(p, err=True)
        _fail(f"{len(problems)} problem(s) in {path}")
    typer.echo(f"OK {path}")


@app.command()
def synthetic(out: Annotated[Path, typer.Argument(help="Directory to write the atlas to (must not exist).")],
              features: Annotated[int, typer.Option(min=50, help="Features per layer.")] = 1200,
              d_model: Annotated[int, typer.Option(min=8, help="Width of the directions.")] = 64,
              layers: Annotated[int, typer.Option(min=1, max=64, help="Number of layers.")] = 3,
              seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
              force: Annotated[bool, typer.Option(help="Replace an existing atlas at OUT.")] = False):
    """Write an atlas with planted lobes, crystals and power-law spectra (no model needed)."""
    from analysis.synthetic import make_synthetic_atlas

    if out.exists() and not force:
        _fail(f"{out} already exists; pass --force to replace it or choose another path")
    make_synthetic_atlas(out, n_features=features, d_model=d_model, layers=tuple(range(layers)), seed=seed,
                         overwrite=force)
    typer.echo(f"wrote synthetic atlas {out}")


def _ensure_synthetic(home: Path) -> Path:
    from analysis.atlas import validate as check
    from analysis.synthetic import make_synthetic_atlas

    path = home / "synthetic"
    if check(path, verify="size"):
        typer.echo(f"building synthetic atlas in {path} ...")
        make_synthetic_atlas(path, overwrite=True)
    return path


@app.command()
def serve(atlas_dir: Annotated[Path, typer.Option(help="Folder of atlases (or one atlas) to serve, read-only.")] = DEFAULT_HOME,
          host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8050,
          synthetic: Annotated[bool, typer.Option("--synthetic", help="Serve a synthetic atlas (built on first use).")] = False,
          workers: Annotated[int | None, typer.Option(min=1, max=64, help="Worker processes (default: one per core, "
                                                      "at most 4); they share the memory-mapped atlases.")] = None):
    """Serve the explorer and the JSON API."""
    from app.server import serve as run

    if synthetic:
        atlas_dir.mkdir(parents=True, exist_ok=True)
        _ensure_synthetic(atlas_dir)
    if not atlas_dir.exists():
        _fail(f"atlas folder {atlas_dir} does not exist; build one with `saegeo precompute` or try `saegeo serve --synthetic`")
    typer.echo(f"saegeo explorer: http://{host}:{port}/  (atlases from {atlas_dir.resolve()})")
    run(atlas_dir, host=host, port=port, workers=workers)


@app.command()
def precompute(
    model: Annotated[Optional[str], typer.Option(help="Hugging Face model name or local folder; 'smollm2' (default) or 'gemma3-270m' = embedded.")] = None,
    sae: Annotated[Optional[list[str]], typer.Option(help="sae-lens 'release/sae_id', a local SAE folder, or 'embedded' (the SAEs shipped with an embedded model); repeat per layer. None: train SAEs here.")] = None,
    corpus: Annotated[Optional[str], typer.Option(help="'default' (embedded), a .txt/.jsonl/.parquet file or folder, or 'hf:NAME'.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated layer indices, e.g. 3,10,17.")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=1, help="Token budget for the statistics.")] = None,
    max_docs: Annotated[Optional[int], typer.Option(min=1, help="Read at most this many documents.")] = None,
    seq_len: Annotated[Optional[int], typer.Option(min=2, help="Tokens per document, BOS included (published 1024; see seq_len_includes_bos).")] = None,
    block_size: Annotated[Optional[int], typer.Option(min=1, help="Co-occurrence block in tokens (published 256).")] = None,
    threshold: Annotated[Optional[float], typer.Option(help="Firing threshold (default: by the SAE's architecture - TopK > 0, others > 1 as published).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Atlas directory to write.")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Preset: 'tiny' (tests, ~1 min), 'demo' (first run), 'published' (the P1 lobes: Gemma-2-2B, Gemma Scope 16k layer 12, 50,000 Pile documents; GPU and Hub) or 'published-galaxy' (26 layers of 65k SAEs).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="Settings file (.toml, .yaml/.yml or .json) of PrecomputeConfig fields, with geometry_config / latent_config tables; options given here override it.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any setting as KEY=VALUE (repeatable): a PrecomputeConfig field, or geometry.FIELD / latent.FIELD; VALUE is read as JSON when it parses (3, 0.5, true, [2,4], null), as text otherwise.")] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print every resolved setting (stages' defaults filled in) as JSON and exit without running.")] = False,
    device: Annotated[Optional[str], typer.Option(help="'auto' (default), 'cpu' or 'cuda'.")] = None,
    dtype: Annotated[Optional[str], typer.Option(help="Forward precision: 'auto' (default: bfloat16 on CUDA and on CPUs with native bf16, float32 elsewhere), 'float32', 'bfloat16', 'float16'.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its checkpoint.")] = False,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch (default: torch's choice).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing atlas at --out.")] = False,
    latent: Annotated[Optional[bool], typer.Option("--latent/--no-latent", help="Also capture the layer-wise latent geometry (raw activations of every layer; default: on in the demo profile).")] = None,
    ray: Annotated[Optional[str], typer.Option(help="Run the statistics pass on Ray: 'auto' (the running cluster, else a local one), 'local', or a cluster address HOST:PORT; the atlas is the one a run without Ray writes. Needs saegeo[ray].")] = None,
):
    """Run a model and its SAEs over a corpus and write an atlas (statistics + geometry).

    Settings resolve in this order, later ones winning: the defaults (the published settings
    where there are any), --profile, --config FILE, the options above, --set. The resolved
    settings are written into the atlas manifest; --print-config shows them without running.
    """
    try:
        from precompute.pipeline import PROFILES, PrecomputeConfig, PrecomputeError, run_precompute
    except ImportError as e:
        _fail(f"the precompute extra is not installed ({e}); run `pip install 'saegeo[precompute]'`")
    fields = _read_config(config) if config else {}
    if profile is not None:
        fields["profile"] = profile
    if fields.get("profile") is not None and fields["profile"] not in PROFILES:
        _fail(f"unknown profile {fields['profile']!r}; choose one of {', '.join(PROFILES)}")
    given = {"model": model, "corpus": corpus, "device": device, "dtype": dtype, "threads": threads, "latent": latent,
             "max_tokens": max_tokens, "max_docs": max_docs, "seq_len": seq_len, "block_size": block_size,
             "threshold": threshold, "saes": sae or None, "out": out, "ray": ray}
    fields.update({k: v for k, v in given.items() if v is not None})
    if resume:
        fields["resume"] = True
    if overwrite:
        fields["overwrite"] = True
    if layers:
        try:
            fields["layers"] = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            _fail(f"--layers must be comma-separated integers, got {layers!r}")
    for item in set_ or []:
        _set_field(fields, item)
    fields.setdefault("out", DEFAULT_HOME / (fields.get("profile") or "atlas"))
    try:
        cfg = PrecomputeConfig(**fields)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        _fail(f"bad precompute settings: {_first_problem(e)}")
    if print_config:
        typer.echo(json.dumps(cfg.resolved(), indent=2))
        return
    try:
        path = run_precompute(cfg)
    except PrecomputeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; run the same command with --resume to continue from the last checkpoint", 130)
    typer.echo(f"wrote atlas {path}")


_NESTED = {"geometry": "geometry_config", "latent": "latent_config"}


def _read_config(path: Path) -> dict:
    """The settings in a .toml, .yaml/.yml or .json file, as a dict (nested stage tables kept)."""
    if not path.is_file():
        _fail(f"config file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            _fail(f"config file {path}: unknown format {path.suffix!r} (use .toml, .yaml, .yml or .json)")
    except typer.Exit:
        raise
    except Exception as e:       # each parser has its own error type; all mean a malformed file
        _fail(f"config file {path} could not be read: {str(e).splitlines()[0]}")
    if not isinstance(data, dict):
        _fail(f"config file {path} must hold a table of settings, not {type(data).__name__}")
    for short, field in _NESTED.items():      # [geometry] / [latent] tables as in --set
        if short in data and isinstance(data[short], dict):
            data[field] = {**data.get(field, {}), **data.pop(short)}
    return data


def _set_field(fields: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        _fail(f"--set takes KEY=VALUE, got {item!r}")
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    head, dot, rest = key.partition(".")
    if dot:
        if head not in _NESTED and head not in _NESTED.values():
            _fail(f"--set {key}: only geometry.FIELD and latent.FIELD are nested settings")
        fields.setdefault(_NESTED.get(head, head), {})[rest] = value
    else:
        fields[key] = value


def _first_problem(e: ValueError) -> str:
    """pydantic's message, flattened to the field and the reason."""
    errors = getattr(e, "errors", None)
    if not callable(errors):
        return str(e).splitlines()[0]
    parts = []
    for err in errors():
        where = ".".join(str(x) for x in err.get("loc", ()))
        msg = err.get("msg", "").removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown setting"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) + " (every setting's name: `saegeo precompute --print-config`)"


@app.command("train-saes")
def train_saes(
    model: Annotated[str, typer.Option(help="'smollm2' or 'gemma3-270m' (embedded), or any model precompute takes.")] = "smollm2",
    layers: Annotated[Optional[str], typer.Option(help="Comma-separated layers (default for the embedded models: 8,15,20 / 5,9,12).")] = None,
    n_tokens: Annotated[int, typer.Option(min=1, help="Training tokens per SAE.")] = 2_000_000,
    eval_tokens: Annotated[int, typer.Option(min=1, help="Held-back tokens on which quality is measured.")] = 65_536,
    width: Annotated[int, typer.Option(min=1, help="Features per SAE.")] = 4096,
    k: Annotated[int, typer.Option(min=1, help="Active features per token (TopK).")] = 32,
    seed: Annotated[int, typer.Option(min=0, help="SAE initialisation and sample-order seed (the training text does not depend on it).")] = 0,
    corpus: Annotated[str, typer.Option(help="Corpus (as for precompute).")] = "default",
    dtype: Annotated[str, typer.Option(help="Forward precision: auto, float32, bfloat16, float16.")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default: the shipped precompute/embedded_saes/<model>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run.")] = False,
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch.")] = None,
):
    """Train the SAEs that ship with an embedded model (resumable; about an hour on two CPU cores)."""
    try:
        from precompute.train_saes import PrecomputeError, TrainSAEsConfig, run_train_saes
    except ImportError as e:
        _fail(f"the precompute extra is not installed ({e}); run `pip install 'saegeo[precompute]'`")
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        cfg = TrainSAEsConfig(model=model, n_tokens=n_tokens, eval_tokens=eval_tokens, width=width, k=k, seed=seed, corpus=corpus, dtype=dtype,
                              out=out, resume=resume,
                              layers=[int(x) for x in layers.split(",") if x.strip()] if layers else [])
        path = run_train_saes(cfg)
    except ValueError as e:
        _fail(f"bad train-saes settings: {e}")
    except PrecomputeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; run the same command with --resume to continue", 130)
    typer.echo(f"wrote SAEs to {path}")


@app.command()
def compare(
    atlas_a: Annotated[Path, typer.Argument(help="First atlas (A).")],
    atlas_b: Annotated[Path, typer.Argument(help="Second atlas (B); the same path as A compares its layers with each other.")],
    out: Annotated[Path, typer.Option(help="Comparison folder to write.")],
    layers_a: Annotated[Optional[str], typer.Option(help="Comma-separated layers of A (default: all).")] = None,
    layers_b: Annotated[Optional[str], typer.Option(help="Comma-separated layers of B (default: all).")] = None,
    corpus: Annotated[str, typer.Option(help="Text both SAE sets read: 'default' (embedded), a file or folder, or 'hf:NAME'.")] = "default",
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens of A's tokenizer to run.")] = 64_000,
    seq_len: Annotated[int, typer.Option(min=8, help="Tokens per document on each side.")] = 256,
    pairing: Annotated[str, typer.Option(help="'many_to_one' (each B feature with its best A feature) or 'one_to_one'.")] = "many_to_one",
    one_to_one_rule: Annotated[str, typer.Option(help="One-to-one: 'first' (published: first B feature keeps the A feature) or 'highest' (highest correlation keeps it).")] = "first",
    min_corr: Annotated[float, typer.Option(help="Drop pairs with correlation <= this (published 0.1; a negative value keeps every pair).")] = 0.1,
    filter_punctuation: Annotated[bool, typer.Option("--filter-punctuation/--no-filter-punctuation", help="Drop pairs whose top-5 tokens are all punctuation or special tokens.")] = True,
    require_shared_token: Annotated[bool, typer.Option("--require-shared-token/--no-require-shared-token", help="Drop pairs whose top-5 token lists share no token.")] = True,
    svcca_variant: Annotated[str, typer.Option(help="'correct' (99 % variance kept) or 'published' (P3's code: one direction).")] = "correct",
    n_shuffles: Annotated[int, typer.Option(min=0, help="Row shuffles of the null.")] = 100,
    n_shuffles_small: Annotated[int, typer.Option(min=0, help="Row shuffles for small pair sets and subspaces.")] = 1000,
    keywords: Annotated[Optional[Path], typer.Option(help="Keyword groups file (group<TAB>keyword lines; default: the shipped analysis/keywords.tsv).")] = None,
    device: Annotated[str, typer.Option(help="'auto', 'cpu' or 'cuda'.")] = "auto",
    dtype: Annotated[str, typer.Option(help="Forward precision: auto, float32, bfloat16, float16.")] = "auto",
    threads: Annotated[Optional[int], typer.Option(min=1, help="CPU threads for torch.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted comparison.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing comparison at --out.")] = False,
):
    """Compare the SAE features of two atlases on the same text (METHODS 5): pairing, SVCCA, RSA, subspaces."""
    try:
        from precompute.compare import CompareConfig, run_compare
        from precompute.errors import PrecomputeError   # CompareError, and model/SAE/corpus problems
    except ImportError as e:
        _fail(f"the precompute extra is not installed ({e}); run `pip install 'saegeo[precompute]'`")

    def ints(v, name):
        try:
            return [int(x) for x in v.split(",") if x.strip()] if v else []
        except ValueError:
            _fail(f"--{name} must be comma-separated integers, got {v!r}")

    try:
        cfg = CompareConfig(atlas_a=atlas_a, atlas_b=atlas_b, out=out, layers_a=ints(layers_a, "layers-a"),
                            layers_b=ints(layers_b, "layers-b"), corpus=corpus, max_tokens=max_tokens, seq_len=seq_len,
                            pairing=pairing, one_to_one_rule=one_to_one_rule,
                            min_corr=min_corr if min_corr >= 0 else None, filter_punctuation=filter_punctuation,
                            require_shared_token=require_shared_token, svcca_variant=svcca_variant,
                            n_shuffles=n_shuffles, n_shuffles_small=n_shuffles_small, keywords=keywords,
                            device=device, dtype=dtype, threads=threads, resume=resume, overwrite=overwrite)
    except ValueError as e:
        _fail(f"bad compare settings: {str(e).splitlines()[0]} ({'; '.join(str(e).splitlines()[1:3])})")
    try:
        path = run_compare(cfg)
    except PrecomputeError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        _fail("interrupted; run the same command with --resume to continue from the last checkpoint", 130)
    typer.echo(f"wrote comparison {path}")


@app.command()
def report(atlas: Annotated[Path, typer.Argument(help="Atlas directory, or a comparison folder (saegeo compare).")],
           as_json: Annotated[bool, typer.Option("--json", help="Print the numbers as JSON.")] = False,
           figures: Annotated[Optional[Path], typer.Option(help="Write PNG figures into this folder.")] = None):
    """Print the published-style tables of an atlas (lobes, crystals, galaxy) and write figures; or a comparison's tables."""
    from analysis.atlas import AtlasError, open_atlas
    from analysis.report import build_report, format_report, write_figures
    from analysis.universality import is_comparison

    if is_comparison(atlas):
        from analysis.report import comparison_report, format_comparison

        try:
            rep = comparison_report(atlas)
        except AtlasError as e:
            _fail(str(e))
        typer.echo(json.dumps(rep, indent=1, default=str) if as_json else format_comparison(rep))
        return
    try:
        opened = open_atlas(atlas)
    except AtlasError as e:
        _fail(str(e))
    rep = build_report(opened)
    typer.echo(json.dumps(rep, indent=1, default=str) if as_json else format_report(rep))
    if figures:
        for f in write_figures(opened, figures):
            typer.echo(f"wrote {f}", err=True)


# The demo's atlases: (folder, model, shipped SAE set under precompute/embedded_saes/). The two
# SmolLM2 variants - the same recipe with another seed, and half the width - exist for the
# universality comparisons (METHODS 5), whose pairs open cards in their clouds. They are built
# lighter (DEMO_VARIANT): half the statistics tokens, no crystal search (its random baseline
# is most of the geometry stage's time) and no latent stage (it reads the model only and
# would repeat `demo`'s); each manifest records what was left out.
DEMO_ATLASES = (("demo", "smollm2", "smollm2"), ("demo-gemma", "gemma3-270m", "gemma3-270m"),
                ("demo-seed1", "smollm2", "smollm2-seed1"), ("demo-w2048", "smollm2", "smollm2-w2048"))
DEMO_VARIANT = dict(latent=False, max_tokens=256_000)
DEMO_VARIANT_GEOMETRY = dict(crystals=False)
# (folder, atlas A, atlas B): each runs as soon as both of its atlases are built, over half the
# comparison's default tokens (two models' capture runs at a few hundred tokens/s on two CPU cores)
DEMO_COMPARE = dict(max_tokens=32_000)
DEMO_COMPARISONS = (("smollm2-vs-gemma3", "demo", "demo-gemma"),
                    ("smollm2-seed0-vs-seed1", "demo", "demo-seed1"),
                    ("smollm2-4096-vs-2048", "demo", "demo-w2048"))


@app.command()
def demo(atlas_dir: Annotated[Path, typer.Option(help="Where atlases are kept.")] = DEFAULT_HOME,
         host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
         port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8050):
    """Serve the explorer at once and build the demo atlases of the two embedded models, and their
    universality comparisons, behind it.

    The explorer runs in a process of its own from the start and shows what is being built.
    SmolLM2's atlas appears as soon as its statistics are written, its lobes and layouts
    layer by layer as the geometry stage finishes them; Gemma 3 270M's atlas follows. Builds
    run at lower CPU priority than the explorer; an interrupted build continues where it
    stopped on the next run.
    """
    import subprocess
    import time

    from analysis.atlas import validate as check

    atlas_dir.mkdir(parents=True, exist_ok=True)
    try:
        from precompute.pipeline import PROFILES, PrecomputeConfig, PrecomputeError, geometry_done, run_precompute
        from precompute.train_saes import shipped_saes
    except ImportError as e:
        typer.echo(f"precompute unavailable ({e}); serving a synthetic atlas instead", err=True)
        _ensure_synthetic(atlas_dir)
        serve(atlas_dir=atlas_dir, host=host, port=port, synthetic=False)
        return

    # A fresh process serves: it holds only what the explorer reads, not the model and the
    # statistics of the builds below.
    if not _port_free(host, port):
        _fail(f"the explorer could not start on {host}:{port}: the port is in use (choose another with --port)")
    server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--atlas-dir", str(atlas_dir),
                               "--host", host, "--port", str(port)])
    deadline = time.time() + 120
    while not _answers(host, port):
        if server.poll() is not None or time.time() > deadline:
            server.kill()
            _fail(f"the explorer could not start on {host}:{port} (see the messages above; another port: --port)")
        time.sleep(0.3)
    import signal

    # `kill` as well as Ctrl-C stops the explorer too (the finally below), never orphaning it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        os.nice(5)   # the builds yield to the explorer's requests
    except (AttributeError, OSError):
        pass
    try:
        ready = set()
        for name, model, sae_set in DEMO_ATLASES:
            target = atlas_dir / name
            saes = shipped_saes(sae_set)
            if not saes:
                typer.echo(f"no SAEs ship as {sae_set} yet, so the demo atlas {name} is not built: train them with "
                           f"`saegeo train-saes --model {model}` (resumable), then run the demo again", err=True)
                continue
            if check(target, verify="size") or not geometry_done(target) or not _latent_current(target):
                typer.echo(f"building the demo atlas {name} of {model} with the {sae_set} SAEs in {target} (first "
                           f"run only; the explorer shows its progress and opens it when ready)")
                variant = {} if sae_set == model else dict(
                    saes=[str(p) for p in saes], **DEMO_VARIANT,
                    geometry_config={**PROFILES["demo"]["geometry_config"], **DEMO_VARIANT_GEOMETRY})
                try:
                    run_precompute(PrecomputeConfig(profile="demo", model=model, out=target, resume=True, **variant))
                except PrecomputeError as e:
                    typer.secho(f"error: {e} (delete {target} to rebuild it from scratch)", fg=typer.colors.RED,
                                err=True)
                    continue
            ready.add(name)
            for cmp_name, a, b in DEMO_COMPARISONS:
                if {a, b} <= ready and name in (a, b):
                    _demo_comparison(atlas_dir, cmp_name, a, b)
        typer.echo("demo atlases ready; the explorer keeps running (Ctrl-C to stop)")
        if server.wait() != 0:
            _fail(f"the explorer stopped with exit status {server.returncode}")
    except KeyboardInterrupt:
        typer.echo("stopped; an unfinished build continues where it stopped on the next `saegeo demo`", err=True)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def _latent_current(target: Path) -> bool:
    """False for a demo atlas built before the latent stage existed, so the next `saegeo demo`
    adds it; an atlas the demo profile did not build (a user's, a synthetic one) or built
    without the latent stage on purpose (the SAE variants) is left as is."""
    from analysis.atlas import open_atlas
    from precompute.latent import LatentConfig, latent_done

    cfg = open_atlas(target, verify="size").manifest.configs.get("precompute") or {}
    return cfg.get("profile") != "demo" or cfg.get("latent") is False or latent_done(target, LatentConfig())


def _demo_comparison(atlas_dir: Path, name: str, a: str, b: str) -> None:
    """Compare demo atlases ``a`` and ``b`` into ``atlas_dir/name`` (DEMO_COMPARE, the rest at the
    comparison's defaults), unless a sound comparison is already there; an interrupted one resumes."""
    from analysis.universality import is_comparison, validate_comparison
    from precompute.compare import CompareConfig, run_compare
    from precompute.errors import PrecomputeError

    out = atlas_dir / name
    found = is_comparison(out)
    if found and not validate_comparison(out, verify="size"):
        return
    if out.exists() and not found:
        typer.secho(f"error: {out} exists and is not a comparison, so the demo's comparison of {a} and {b} is "
                    f"not written there (move it away and run the demo again)", fg=typer.colors.RED, err=True)
        return
    typer.echo(f"comparing the SAE features of {a} and {b} into {out} (first run only; the Universality "
               f"view lists it when ready)")
    try:
        run_compare(CompareConfig(atlas_a=atlas_dir / a, atlas_b=atlas_dir / b, out=out, resume=True,
                                  overwrite=out.exists(), **DEMO_COMPARE))
    except PrecomputeError as e:
        typer.secho(f"error: {e} (delete {out} and {out}.partial to compare from scratch)", fg=typer.colors.RED,
                    err=True)


def _port_free(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _answers(host: str, port: int) -> bool:
    """True once the explorer's health check answers on host:port."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
