"""Document streams with subset labels, and their tokenization for the precompute.

``open_corpus(spec)`` returns a ``Corpus``: an iterable of ``Document(text, subset)`` in a
fixed order. ``spec`` is one of

* ``"default"`` - the embedded corpus: text every Python installation carries, each source
  its own subset (``EMBEDDED_SUBSETS``): standard-library source code, the language
  reference prose of ``pydoc_data``, installed packages' long descriptions and licence
  texts, and docstrings containing mathematics. No download; the order is fixed, so two
  runs on one installation read the same documents. The subsets are interleaved round
  robin, so any token budget samples all of them.
* a ``.txt`` / ``.jsonl`` / ``.json`` / ``.parquet`` file, or a folder of them (read in
  sorted order). A text file is one document; JSONL and Parquet rows hold the text in
  ``text_field`` and the subset label in ``subset_field`` (a dotted path such as
  ``meta.pile_set_name``). Without a subset field the subset is the file's stem.
* ``"hf:NAME"`` or ``"hf:NAME:CONFIG:SPLIT"`` - a Hugging Face dataset in streaming mode, e.g.
  ``hf:monology/pile-uncopyrighted`` (subset = ``meta.pile_set_name``).

``tokenize_corpus`` turns the first documents into a ``TokenizedCorpus`` (one flat int32
token array, BOS excluded, with document offsets and subset ids) under document and token
limits.
"""
from __future__ import annotations

import ast
import hashlib
import io
import json
import random
import re
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from precompute.errors import CorpusError

EMBEDDED_SUBSETS = ("stdlib_code", "language_reference", "package_docs", "licenses", "math_docstrings")
FILE_SUFFIXES = (".txt", ".md", ".jsonl", ".json", ".parquet")
PILE_SUBSET_FIELD = "meta.pile_set_name"
# Documents of the embedded corpus are cut at paragraph boundaries into pieces of about
# this many characters (~1000 tokens), so one long source file does not fill the budget.
CHUNK_CHARS = 4000


@dataclass(frozen=True)
class Document:
    text: str
    subset: str


@dataclass
class Corpus:
    """A named, re-iterable stream of documents."""

    name: str
    make: Callable[[], Iterator[Document]]
    subsets_hint: tuple[str, ...] = ()    # known subsets in their natural order, if any

    def __iter__(self) -> Iterator[Document]:
        return self.make()


# ---------------------------------------------------------------------- embedded


def _chunks(text: str, max_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Split ``text`` at blank lines into pieces of at most about ``max_chars``."""
    piece: list[str] = []
    size = 0
    for para in re.split(r"\n\s*\n", text):
        if size and size + len(para) > max_chars:
            yield "\n\n".join(piece)
            piece, size = [], 0
        while len(para) > max_chars:   # a single huge paragraph: hard cut at a line end
            cut = para.rfind("\n", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            yield para[:cut]
            para = para[cut:].lstrip("\n")
        piece.append(para)
        size += len(para) + 2
    if piece and "".join(piece).strip():
        yield "\n\n".join(piece)


def _stdlib_files() -> list[Path]:
    """Standard-library ``.py`` files (tests and third-party packages excluded), in a fixed
    pseudo-random order so the first documents come from many modules."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "dist-packages", "__pycache__", "idle_test", "lib2to3"}
    files = sorted(p for p in root.rglob("*.py")
                   if not skip.intersection(p.relative_to(root).parts[:-1]))
    random.Random(0).shuffle(files)
    return files


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _stdlib_code() -> Iterator[str]:
    for f in _stdlib_files():
        text = _read(f)
        if text:
            yield from _chunks(text)


def _language_reference() -> Iterator[str]:
    from pydoc_data.topics import topics  # prose of the Python language reference

    for key in sorted(topics):
        yield from _chunks(topics[key])


# The distributions whose texts the embedded corpus reads: those `make setup` installed when the
# shipped SAEs (precompute/embedded_saes) were trained. Their held-back documents are the
# corpus's last ones, so a dependency added to or removed from the project must not move the
# corpus: adding three serving packages once shifted it, and with it the held-back documents
# (tests/test_embedded_saes.py measured another explained variance). A distribution listed here but not installed
# changes the corpus, which that test then reports.
CORPUS_DISTRIBUTIONS = frozenset(json.loads((Path(__file__).with_name("corpus_distributions.json")).read_text()))


def _installed():
    """(lower-case name, distribution) of every package in the installation's own folders, by name."""
    from importlib import metadata

    # the installation's own package folders, not sys.path: sys.path changes at run time (importing
    # ray puts its bundled packages on it), and the corpus must not change with it
    paths = list(dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")))
    seen, dists = set(), []
    for d in metadata.distributions(path=paths):
        name = (d.metadata.get("Name") or "").lower()
        if name and name not in seen:
            seen.add(name)
            dists.append((name, d))
    return sorted(dists, key=lambda x: x[0])


def _distributions():
    return [d for name, d in _installed() if name in CORPUS_DISTRIBUTIONS]


def _foreign_files() -> set[Path]:
    """Files of installed distributions the corpus does not read."""
    out = set()
    for name, d in _installed():
        if name not in CORPUS_DISTRIBUTIONS:
            out.update(Path(d.locate_file(f)).resolve() for f in d.files or [])
    return out


def _package_docs() -> Iterator[str]:
    for d in _distributions():
        text = d.metadata.get_payload() or d.metadata.get("Description") or ""
        if len(text.strip()) > 200:
            yield from _chunks(text)


def _licenses() -> Iterator[str]:
    seen = set()
    for d in _distributions():
        names = sorted(str(f) for f in (d.files or [])
                       if re.search(r"(^|/)(LICEN[CS]E|COPYING|NOTICE)[^/]*$", str(f), re.I))
        for name in names:
            try:
                text = d.read_text(name) if "/" not in name else Path(d.locate_file(name)).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if not text or len(text.strip()) < 200:
                continue
            digest = hashlib.sha1(" ".join(text.split()).encode()).hexdigest()
            if digest in seen:  # the same MIT/BSD/Apache text ships in many packages
                continue
            seen.add(digest)
            yield from _chunks(text)


_MATH = re.compile(r"\*\*|\bsqrt\b|\bexp\(|\blog\(|\bsin\(|\bcos\(|\btan\(|\bpi\b|[πσΣ∑∫√≤≥±]|"
                   r"\bintegral\b|\bderivative\b|\bpolynomial\b|\bmatrix\b|\bvariance\b|"
                   r"\bprobability\b|\beigen|\bx\^|\bmodulo\b|\bfactorial\b|\blogarithm\b|"
                   r"\bgaussian\b|\bstandard deviation\b|\bdistribution\b|\bcoefficient", re.I)


def _math_docstrings() -> Iterator[str]:
    """Docstrings with at least three mathematical markers, from the standard library and
    then the installed packages' sources, in a fixed order."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    foreign = _foreign_files()
    seen = set()
    for root in roots:
        files = sorted(p for p in root.rglob("*.py") if "test" not in str(p.relative_to(root)).lower()
                       and p.resolve() not in foreign)
        for f in files:
            src = _read(f)
            if not src or ('"""' not in src and "'''" not in src):
                continue
            try:
                tree = ast.parse(src)
            except (SyntaxError, ValueError, RecursionError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)):
                    continue
                doc = ast.get_docstring(node)
                if doc and len(doc) > 200 and len(_MATH.findall(doc)) >= 3 and doc not in seen:
                    seen.add(doc)
                    yield from _chunks(doc)


_EMBEDDED_SOURCES = {
    "stdlib_code": _stdlib_code,
    "language_reference": _language_reference,
    "package_docs": _package_docs,
    "licenses": _licenses,
    "math_docstrings": _math_docstrings,
}


def _round_robin(sources: dict[str, Callable[[], Iterator[str]]]) -> Iterator[Document]:
    """One document from each subset in turn; exhausted subsets drop out."""
    live = [(name, iter(make())) for name, make in sources.items()]
    while live:
        still = []
        for name, it in live:
            text = next(it, None)
            if text is not None:
                if text.strip():
                    yield Document(text, name)
                still.append((name, it))
        live = still


def embedded_corpus() -> Corpus:
    return Corpus("default (python installation text)", lambda: _round_robin(_EMBEDDED_SOURCES),
                  EMBEDDED_SUBSETS)


# ---------------------------------------------------------------------- files


def _field(record: dict, path: str | None):
    if not path:
        return None
    cur = record
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _records_docs(records: Iterable[dict], where: str, text_field: str, subset_field: str | None,
                  default_subset: str) -> Iterator[Document]:
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise CorpusError(f"{where}: record {i} is not an object")
        text = _field(rec, text_field)
        if text is None:
            raise CorpusError(f"{where}: record {i} has no text field {text_field!r} "
                              f"(fields: {sorted(rec)[:10]}); set the text field option")
        field = subset_field or (PILE_SUBSET_FIELD if _field(rec, PILE_SUBSET_FIELD) is not None else None)
        subset = _field(rec, field) if field else None
        yield Document(str(text), str(subset) if subset is not None else default_subset)


def _file_docs(path: Path, text_field: str, subset_field: str | None) -> Iterator[Document]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".txt", ".md"):
            text = path.read_text(encoding="utf-8")
            if text.strip():
                yield Document(text, path.parent.name if path.parent.name else path.stem)
        elif suffix in (".jsonl", ".json"):
            with open(path, encoding="utf-8") as f:
                if suffix == ".json":
                    data = json.load(f)
                    records = data if isinstance(data, list) else [data]
                else:
                    records = (json.loads(line) for line in f if line.strip())
                yield from _records_docs(records, str(path), text_field, subset_field, path.stem)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            for batch in pf.iter_batches(batch_size=1024):
                yield from _records_docs(batch.to_pylist(), str(path), text_field, subset_field, path.stem)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        if isinstance(e, CorpusError):
            raise
        raise CorpusError(f"{path}: unreadable corpus file ({str(e).splitlines()[0]})") from None
    except Exception as e:  # pyarrow raises its own types for broken files
        if type(e).__module__.startswith("pyarrow"):
            raise CorpusError(f"{path}: unreadable Parquet file ({str(e).splitlines()[0]})") from None
        raise


def file_corpus(path: Path, text_field: str = "text", subset_field: str | None = None) -> Corpus:
    path = Path(path).expanduser()
    if not path.exists():
        raise CorpusError(f"corpus {path} does not exist (use 'default', a file or folder of "
                          f"{'/'.join(FILE_SUFFIXES)} files, or hf:NAME)")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus folder {path} holds no {'/'.join(FILE_SUFFIXES)} files")
    else:
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise CorpusError(f"corpus file {path}: unknown type {path.suffix!r} (use {'/'.join(FILE_SUFFIXES)})")
        files = [path]

    def make():
        for f in files:
            yield from _file_docs(f, text_field, subset_field)

    return Corpus(str(path), make)


# ---------------------------------------------------------------------- Hugging Face


def hf_corpus(spec: str, text_field: str = "text", subset_field: str | None = None) -> Corpus:
    """``NAME`` or ``NAME:CONFIG:SPLIT`` of a Hugging Face dataset, streamed."""
    from precompute.models import hub_error, hub_reachable

    parts = spec.split(":")
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    if not name:
        raise CorpusError("hf: corpus needs a dataset name, e.g. hf:monology/pile-uncopyrighted")
    if not hub_reachable():
        raise CorpusError(hub_error("dataset", name).replace("`hf download",
                                                              "`hf download --repo-type dataset"))

    def make():
        try:
            import datasets
        except ImportError:
            raise CorpusError("hf: corpora need the 'datasets' package (pip install datasets)") from None
        try:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "cannot open"
            raise CorpusError(f"could not open the Hugging Face dataset {spec!r}: {str(e).splitlines()[0]}") from None
        yield from _records_docs(ds, f"hf:{spec}", text_field, subset_field, name.split("/")[-1])

    return Corpus(f"hf:{spec}", make)


def open_corpus(spec: str = "default", text_field: str = "text", subset_field: str | None = None) -> Corpus:
    """The corpus named by ``spec`` (see the module docstring). Raises ``CorpusError``."""
    spec = str(spec)
    if spec in ("default", "embedded", ""):
        return embedded_corpus()
    if spec.startswith("hf:"):
        return hf_corpus(spec[3:], text_field, subset_field)
    return file_corpus(Path(spec), text_field, subset_field)


# ---------------------------------------------------------------------- tokens


@dataclass
class TokenizedCorpus:
    """The documents of one precompute run as token ids (BOS not stored).

    ``tokens[offsets[i]:offsets[i+1]]`` are the tokens of document ``i`` whose subset is
    ``subsets[subset_ids[i]]``.
    """

    tokens: np.ndarray       # int32 [n_tokens]
    offsets: np.ndarray      # int64 [n_docs + 1]
    subset_ids: np.ndarray   # int16 [n_docs]
    subsets: list[str]

    @property
    def n_docs(self) -> int:
        return len(self.subset_ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def save(self, path: Path) -> None:
        buf = io.BytesIO()
        np.savez(buf, tokens=self.tokens, offsets=self.offsets, subset_ids=self.subset_ids,
                 subsets=np.array(json.dumps(self.subsets)))
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> "TokenizedCorpus":
        with np.load(path) as z:
            return cls(z["tokens"], z["offsets"], z["subset_ids"], json.loads(str(z["subsets"])))


def tokenize_corpus(corpus: Corpus, tokenize: Callable[[str], list[int]], seq_len: int = 1024,
                    max_docs: int | None = None, max_tokens: int | None = None,
                    progress: bool = True) -> TokenizedCorpus:
    """Tokenize the first documents of ``corpus``.

    Each document is truncated to ``seq_len`` tokens (BOS excluded; the caller prepends it)
    and empty documents are skipped. Stops after ``max_docs`` documents or once
    ``max_tokens`` tokens are collected (the last document is cut so the total is exactly
    ``max_tokens``). Subsets are numbered in the corpus's own order when it declares one,
    otherwise in order of first appearance. Raises ``CorpusError`` for an empty corpus.
    """
    from tqdm.auto import tqdm

    subsets = list(corpus.subsets_hint)
    index = {s: i for i, s in enumerate(subsets)}
    toks, lens, sids = [], [], []
    total = 0
    bar = tqdm(total=max_tokens, desc="tokenize corpus", unit="tok", disable=not progress,
               dynamic_ncols=True)
    for doc in corpus:
        if max_docs is not None and len(lens) >= max_docs:
            break
        if max_tokens is not None and total >= max_tokens:
            break
        ids = tokenize(doc.text)[:seq_len]
        if max_tokens is not None:
            ids = ids[:max_tokens - total]
        if not ids:
            continue
        if doc.subset not in index:
            index[doc.subset] = len(subsets)
            subsets.append(doc.subset)
        toks.append(np.asarray(ids, dtype=np.int32))
        lens.append(len(ids))
        sids.append(index[doc.subset])
        total += len(ids)
        bar.update(len(ids))
    bar.close()
    if not lens:
        raise CorpusError(f"corpus {corpus.name} is empty: no document with any text was found")
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    return TokenizedCorpus(np.concatenate(toks), offsets, np.asarray(sids, dtype=np.int16), subsets)
