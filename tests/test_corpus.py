"""Corpora: embedded default, files, Hugging Face offline, tokenization limits."""
from __future__ import annotations

import itertools
import json

import pandas as pd
import pytest

from precompute.corpus import EMBEDDED_SUBSETS, open_corpus, tokenize_corpus
from precompute.errors import CorpusError


def chars(text):  # a stand-in tokenizer: one token per character
    return [ord(c) for c in text]


def test_embedded_corpus_interleaves_every_subset_deterministically():
    c = open_corpus("default")
    first = list(itertools.islice(c, 15))
    assert [d.subset for d in first[:5]] == list(EMBEDDED_SUBSETS)
    assert {d.subset for d in first} == set(EMBEDDED_SUBSETS)
    assert all(d.text.strip() for d in first)
    again = list(itertools.islice(open_corpus("default"), 15))
    assert [d.text for d in again] == [d.text for d in first]
    code = next(d.text for d in first if d.subset == "stdlib_code")
    assert "def " in code or "import " in code or "class " in code
    ref = next(d.text for d in first if d.subset == "language_reference")
    assert len(ref) > 100


def test_embedded_corpus_ignores_packages_put_on_sys_path_at_run_time(tmp_path, monkeypatch):
    # importing ray puts its bundled packages on sys.path; the held-back documents on which the
    # shipped SAEs were measured shifted with it (a package's description joined the corpus)
    def package_docs():
        return [d.text for d in itertools.islice(open_corpus("default"), 3000) if d.subset == "package_docs"]

    before = package_docs()
    meta = tmp_path / "aaa_extra-1.0.dist-info"
    meta.mkdir()
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: aaa-extra\nVersion: 1.0\n\n"
                                   + "A package on sys.path only. " * 40)
    monkeypatch.syspath_prepend(str(tmp_path))
    from importlib import metadata

    assert "aaa-extra" in {d.metadata["Name"] for d in metadata.distributions()}   # findable on sys.path
    assert package_docs() == before


def test_jsonl_subset_field_dotted_and_pile_default(tmp_path):
    rows = [{"text": f"doc {i}", "meta": {"pile_set_name": s}} for i, s in enumerate(["Github", "Wiki", "Github"])]
    f = tmp_path / "pile.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = list(open_corpus(str(f)))                      # meta.pile_set_name found by itself
    assert [(d.text, d.subset) for d in docs] == [("doc 0", "Github"), ("doc 1", "Wiki"), ("doc 2", "Github")]
    tc = tokenize_corpus(open_corpus(str(f)), chars, progress=False)
    assert tc.subsets == ["Github", "Wiki"] and tc.subset_ids.tolist() == [0, 1, 0]


def test_folder_of_text_and_parquet(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first text document")
    pd.DataFrame({"body": ["p0", "p1"], "src": ["x", "y"]}).to_parquet(tmp_path / "b.parquet")
    docs = list(open_corpus(str(tmp_path), text_field="body", subset_field="src"))
    assert [(d.text, d.subset) for d in docs] == [("first text document", "a"), ("p0", "x"), ("p1", "y")]


def test_token_limits_are_exact(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": "x" * n}) for n in [50, 0, 30, 40, 40]))
    tc = tokenize_corpus(open_corpus(str(f)), chars, seq_len=35, max_tokens=100, progress=False)
    # 50 -> cut to seq_len 35, the empty document skipped, 30, then 35 of 40 to reach 100
    assert tc.lengths().tolist() == [35, 30, 35] and tc.n_tokens == 100
    tc = tokenize_corpus(open_corpus(str(f)), chars, max_docs=2, progress=False)
    assert tc.lengths().tolist() == [50, 30]


def test_bad_corpora_give_clear_errors(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        open_corpus(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="holds no"):
        open_corpus(str(tmp_path / "empty"))
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n")
    with pytest.raises(CorpusError, match="empty"):
        tokenize_corpus(open_corpus(str(blank)), chars, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(CorpusError, match="unreadable"):
        list(open_corpus(str(bad)))
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"content": "ok"}\n')
    with pytest.raises(CorpusError, match="no text field 'text'"):
        list(open_corpus(str(nofield)))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(CorpusError, match="unknown type"):
        open_corpus(str(tmp_path / "x.csv"))


def test_hugging_face_dataset_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CorpusError, match="Hub could not be reached"):
        open_corpus("hf:monology/pile-uncopyrighted")


def test_document_length_counts_bos_as_published():
    from precompute.pipeline import PrecomputeConfig

    assert PrecomputeConfig().doc_tokens() == 1023           # 3 full 256-token blocks after BOS
    assert PrecomputeConfig(seq_len_includes_bos=False).doc_tokens() == 1024


def test_embedded_corpus_reads_only_the_distributions_it_was_trained_on():
    """A package the project added later (janus, for Dash's FastAPI backend) is installed but
    not read: its description, licence and docstrings would move the held-back documents."""
    from importlib import metadata

    from precompute import corpus

    assert metadata.version("janus") and "janus" not in corpus.CORPUS_DISTRIBUTIONS
    names = {(d.metadata.get("Name") or "").lower() for d in corpus._distributions()}
    assert names <= corpus.CORPUS_DISTRIBUTIONS and "numpy" in names and "janus" not in names
    janus_files = {p for p in corpus._foreign_files() if "janus" in p.parts}
    assert janus_files and all(p.suffix != ".py" or p.exists() for p in janus_files)
