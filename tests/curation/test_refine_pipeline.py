"""fastText classifiers trained on real documentation, and the whole refine pipeline on a run."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from curation.refine.classifiers import (CategoryTrainConfig, FastTextParams, QualityTrainConfig, make_negatives,
                                         predict, train_category, train_quality)
from curation.refine.pipeline import load_refine_config, refine
from benchmarks.realtext import stdlib_docs, stdlib_sources
from minisigma.core import manifest
from minisigma.core.document import FIELDS, Document
from minisigma.core.shards import ShardWriter, list_shards, read_docs


@pytest.fixture(scope="module")
def docs():
    return stdlib_docs()


def test_quality_classifier_separates_docs_from_corruptions(docs, tmp_path):
    import fasttext

    info = train_quality(docs, QualityTrainConfig(), tmp_path / "q")
    h = info["heldout"]
    assert h["macro"]["f1"] >= 0.75 and h["heldout_examples"] >= 50
    assert set(info["training_data"]["negatives"]) == {"shuffled_words", "navigation", "spam", "garbled"}
    model = fasttext.load_model(str(tmp_path / "q" / "model.bin"))  # fasttext-numpy2: predict works on NumPy 2
    real = [d for d in docs if len(d["text"].split()) > 100][:20]
    assert sum(predict(model, d["text"], 400)[0][0] == "hq" for d in real) >= 16
    negs = make_negatives(real, ["spam", "navigation"], 1.0, seed=9)
    assert sum(predict(model, n["text"], 400)[0][0] == "lq" for n in negs) >= 16
    assert json.loads((tmp_path / "q" / "classifier.json").read_text())["heldout"]["per_label"]["lq"]["recall"] > 0.5


def test_category_classifier_beats_majority_on_weak_labels(docs, tmp_path):
    info = train_category(docs, CategoryTrainConfig(), tmp_path / "c")
    counts = Counter(d["metadata"]["category"] for d in docs)
    majority = max(counts.values()) / sum(counts.values())
    assert info["heldout"]["accuracy"] > majority + 0.1
    assert info["heldout"]["macro"]["f1"] > 0.25
    assert "gpu_accelerators" in info["left_out_labels"]  # no weak labels for it in this corpus


def test_fasttext_training_is_isolated_and_reproducible(docs, tmp_path):
    # A heap that already holds other data (torch and datasketch imported, numpy arrays freed): the state in
    # which fasttext-numpy2 trained in-process with word_ngrams=1 reads uninitialised memory and stops with
    # "Encountered NaN" from the second run on. Trained in a fresh interpreter, every run gives the same model.
    import hashlib

    import datasketch  # noqa: F401
    import numpy as np
    import torch  # noqa: F401

    junk = [np.random.default_rng(i).random((500, 100)) for i in range(40)]
    del junk
    c = QualityTrainConfig(fasttext=FastTextParams(word_ngrams=1))
    infos = [train_quality(docs, c, tmp_path / f"q{i}") for i in range(3)]
    digests = {hashlib.sha256((tmp_path / f"q{i}" / "model.bin").read_bytes()).hexdigest() for i in range(3)}
    assert len(digests) == 1
    assert infos[0]["heldout"] == infos[1]["heldout"] == infos[2]["heldout"]
    assert infos[0]["heldout"]["macro"]["f1"] >= 0.75


def test_refine_pipeline_end_to_end(docs, tmp_path):
    run = tmp_path / "run"
    extra = stdlib_sources(["shutil", "tarfile"])
    dup = [{**docs[i], "id": docs[i]["id"] + "-copy"} for i in range(0, 60, 6)]
    near = [{**docs[i], "id": docs[i]["id"] + "-near", "text": docs[i]["text"] + " See also the manual."}
            for i in range(3, 120, 7) if len(docs[i]["text"].split()) > 150]
    de = {"id": "de1", "source": "x", "metadata": {}, "text": "Der Kernel verwaltet den Speicher. " * 3}
    all_docs = docs + extra + dup + near + [de]
    for s, part in enumerate([all_docs[0::2], all_docs[1::2]]):
        with ShardWriter(run / "sources" / "pydoc" / f"{s:05d}.jsonl.gz") as w:
            w.write_all(part)
    held = run.parent / "val.jsonl.gz"
    with ShardWriter(held) as w:
        w.write({"id": "val", "text": docs[10]["text"]})
    yaml_text = f"""
refine:
  executor: local
  classify: {{quality_keep_fraction: 0.95}}
  decontam: {{heldout_paths: ["{held}"]}}
"""
    (tmp_path / "r.yaml").write_text(yaml_text)
    c = load_refine_config(tmp_path / "r.yaml")
    out = refine(run, c, progress=False)
    assert out == run / "curated" and list_shards(out)
    assert manifest.verify(run) == []
    stages = {}
    for d in manifest.stage_dirs(run):
        m = json.loads((d / "manifest.json").read_text())
        stages[m["stage"]] = m
        cnt = m["counts"]
        assert cnt["in"] == cnt["out"] + sum(cnt["dropped"].values()) + sum(cnt["quarantined"].values())
        assert "tokens_in" in cnt and "tokens_out" in cnt
    for name in ["normalize", "heuristics", "langid", "dedup_exact", "classify", "minhash", "decontam"]:
        assert name in stages
    assert stages["dedup_exact"]["counts"]["dropped"]["exact_duplicate"] >= 10
    assert stages["minhash"]["counts"]["dropped"].get("minhash_duplicate", 0) >= 1
    assert stages["classify"]["threshold"]["rule"] == "quality_keep_fraction"
    assert stages["decontam"]["counts"]["dropped"].get("decontam_heldout", 0) == 1
    # documents flow: each stage's in is the previous stage's out
    order = ["normalize", "heuristics", "langid", "dedup_exact", "classify", "minhash", "decontam"]
    for a, b in zip(order, order[1:]):
        assert stages[b]["counts"]["in"] == stages[a]["counts"]["out"]
    curated = [d for p in list_shards(out) for d in read_docs(p)]
    assert all("quality" in d["metadata"]["scores"] and d["metadata"].get("category_pred") for d in curated)
    assert (run / "classifiers" / "quality" / "classifier.json").exists()


def test_unknown_refine_key_is_one_line_error(tmp_path):
    from minisigma.core.errors import UserError

    (tmp_path / "r.yaml").write_text("refine:\n  minhash: {thresold: 0.7}\n")
    with pytest.raises(UserError, match=r"refine.minhash.thresold: unknown key"):
        load_refine_config(tmp_path / "r.yaml")


def test_a_registered_stage_runs_in_a_recipe_without_touching_the_pipeline(tmp_path):
    import tests.refine_plugin  # noqa: F401  (registers drop_mentions)

    run = tmp_path / "run"
    texts = ["the kernel schedules threads on cores " * 4, "this page is forbidden to read " * 4, "",
             "the page cache keeps recently read blocks " * 4]
    with ShardWriter(run / "sources" / "s" / "00000.jsonl.gz") as w:
        w.write_all([{"id": f"d{i}", "source": "s", "metadata": {}, "text": t} for i, t in enumerate(texts)])
    (tmp_path / "r.yaml").write_text("refine:\n  executor: local\n  stages: [normalize, drop_mentions]\n"
                                     "  drop_mentions: {word: forbidden}\n")
    c = load_refine_config(tmp_path / "r.yaml")
    out = refine(run, c, progress=False)
    kept = [d["id"] for p in list_shards(out) for d in read_docs(p)]
    assert kept == ["d0", "d3"]
    m = json.loads((out / "manifest.json").read_text())
    assert m["stage"] == "drop_mentions" and m["recipe"] == {"word": "forbidden"}
    assert m["counts"]["in"] == 3 and m["counts"]["dropped"] == {"mentions_forbidden": 1}
    assert m["stats"] == {"checked": 2}
    assert manifest.verify(run) == []
    (tmp_path / "bad.yaml").write_text("refine:\n  drop_mentions: {wrod: x}\n")
    from minisigma.core.errors import UserError

    with pytest.raises(UserError, match=r"refine.drop_mentions.wrod: unknown key"):
        load_refine_config(tmp_path / "bad.yaml")


def as_document(d: dict) -> Document:
    """A fixture record as the Document a filter gets (make_negatives' records carry their "kind")."""
    return Document.from_dict({k: d[k] for k in FIELDS if k in d})


def test_quality_threshold_per_source_keeps_the_top_fraction_of_each_source(docs, tmp_path):
    """A source unlike the training documents (here: the same pages with their words shuffled, which
    the quality model scores low) keeps its own top fraction instead of being dropped wholesale."""
    from curation.refine.classify import Classify, ClassifyConfig, resolve_threshold

    train_quality(docs, QualityTrainConfig(), tmp_path / "q")
    real = [{**d, "source": "pydoc"} for d in docs[:100]]  # the odd source is a small minority
    odd = [{**n, "id": f"odd{i}", "source": "odd", "metadata": {}}
           for i, n in enumerate(make_negatives(docs[100:112], ["shuffled_words"], 1.0, seed=3))]
    shard = tmp_path / "00000.jsonl.gz"
    with ShardWriter(shard) as w:
        w.write_all(real + odd)
    kept = {}
    for per_source in (False, True):
        cfg = ClassifyConfig(quality_keep_fraction=0.9, quality_per_source=per_source)
        thr, how = resolve_threshold(cfg, tmp_path / "q", [shard])
        assert isinstance(thr, dict) == per_source and how["keep_fraction"] == 0.9
        f = Classify(cfg, tmp_path / "q", None, thr)
        kept[per_source] = Counter(d["source"] for d in real + odd if f.decide(as_document(d)) is None)
    assert kept[False]["odd"] < 0.5 * len(odd)  # one threshold: the odd source mostly goes
    assert kept[True]["odd"] >= 0.85 * len(odd) and kept[True]["pydoc"] >= 0.85 * len(real)
