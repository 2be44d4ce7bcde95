"""Rewrites and the curated quality classifier; only kept rewrites reach the pretraining corpus.

The classifier is a real fastText model trained in the test by curation's own trainer
(curation.refine.classifiers.train_quality) on real documentation (standard-library docstrings),
the folder layout a curated run has (<run>/classifiers/quality: model.bin, classifier.json).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from benchmarks.realtext import stdlib_docs
from curation.refine.classifiers import QualityTrainConfig, make_negatives, train_quality
from minisigma.core.recipes import load_recipe
from minisigma.core.shards import ShardWriter, iter_docs, list_shards, read_docs, sha256_file
from synth.screen import RewriteScreen


def normalize(text: str) -> str:
    return " ".join(re.findall(r"[a-z]{4,}", text.lower()))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """(docs, run dir): a quality classifier trained on real docs into <run>/classifiers/quality."""
    docs = stdlib_docs()
    run = tmp_path_factory.mktemp("run")
    train_quality(docs, QualityTrainConfig(), run / "classifiers" / "quality")
    return docs, run


def _long(docs, n, skip=0):
    return [d for d in docs if 120 <= len(d["text"].split()) <= 400][skip:skip + n]


def test_low_quality_drops_what_the_curated_classifier_scores_low(classifier):
    docs, run = classifier
    qdir = run / "classifiers" / "quality"
    # no key-term floor: keyword-stuffed spam made of the page's own frequent words passes every other
    # check (nothing invented, no loop, long enough), so the classifier is what catches it
    screen = RewriteScreen(min_key_term_recall=0.0, quality_model=str(qdir), quality_label="hq", min_words=20)
    real = _long(docs, 12)
    spam = make_negatives(real, ["spam"], 1.0, seed=5)
    kept = [screen.check(d["text"], d["text"]) for d in real]
    dropped = [screen.check(d["text"], n["text"]) for d, n in zip(real, spam)]
    assert sum(r is None for r, _ in kept) >= 10, [i.get("quality") for _, i in kept]
    assert sum(r == "low_quality" for r, _ in dropped) >= 10, [(r, i.get("quality")) for r, i in dropped]
    assert all(i["flags"] == ["low_quality"] for r, i in dropped if r == "low_quality")  # only the classifier
    low = next(i for r, i in dropped if r == "low_quality")
    assert low["quality"] < 0.5 <= next(i for r, i in kept if r is None)["quality"]
    # "__label__hq" names the same label; the score is the one curation's Classify stage gives
    from curation.refine.classify import quality_score

    prefixed = RewriteScreen(quality_model=str(qdir), quality_label="__label__hq")
    text = spam[0]["text"]
    assert prefixed.quality(text) == pytest.approx(screen.quality(text))
    assert screen.quality(text) == pytest.approx(quality_score(str(qdir), text), abs=1e-5)


def _corpus(path: Path, docs: list[dict]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path / "00000.jsonl.gz") as w:
        w.write_all(docs)


def test_synth_screens_rewrites_with_the_curated_classifier_and_only_kept_ones_enter_pretraining(
        classifier, tmp_path, ray_local):
    """`quality_model: curated` is the classifier of the run the input belongs to; the manifest names it;
    reproduce's decontaminate stage takes the kept rewrites (never the rejects) into the train corpus,
    counted by source and template."""
    from minisigma.reproduce import ReproduceRecipe, _stages, resolve_recipe_path
    from synth.pipeline import run_synth

    docs, trained = classifier
    run = tmp_path / "run"
    shutil.copytree(trained / "classifiers", run / "classifiers")
    real = [{**d, "source": "localdocs"} for d in _long(docs, 6, skip=20)]
    pages = _long(docs, 6, skip=40)
    bad = [{**d, "id": f"spam-{i}", "text": n["text"], "source": "blogs"}  # a real page's record, spam text
           for i, (d, n) in enumerate(zip(pages, make_negatives(pages, ["spam"], 1.0, seed=7)))]
    _corpus(run / "curated", real + bad)
    recipe = tmp_path / "synth.yaml"
    recipe.write_text(yaml.safe_dump({
        "executor": "local", "backend": {"kind": "offline"}, "commands": {"enabled": False},
        "qa": {"enabled": False},
        "rewrite": {"enabled": True, "min_words": 15, "min_key_term_recall": 0.0, "quality_model": "curated",
                    "quality_label": "hq", "templates": [{"name": "summary", "prompt": "Summarise:\n\n{text}",
                                                          "max_tokens": 120}]}}))
    m = run_synth(recipe, run / "curated", run / "synth", progress=False)["rewrites"]
    qdir = (run / "classifiers" / "quality").resolve()
    assert m["quality_model"]["path"] == str(qdir) and "missing" not in m["quality_model"]
    assert m["quality_model"]["sha256"] == sha256_file(qdir / "model.bin")
    assert m["quality_model"]["heldout_macro"]["f1"] > 0.7
    assert "quality_model_missing" not in m["stats"]
    c = m["counts"]
    assert c["in"] == 12 and c["dropped"].get("low_quality", 0) >= 4, c
    kept = [d for s in list_shards(run / "synth" / "rewrites") for d in read_docs(s)]
    rejects = list(iter_docs(run / "synth" / "rewrites" / "rejects"))
    assert kept and len(kept) == c["out"] and all(d["metadata"]["source"] == "localdocs" for d in kept)
    assert all(d["metadata"]["quality"] >= 0.5 for d in kept)
    assert {r["reason"] for r in rejects if r["doc"]["metadata"]["source"] == "blogs"} <= {"low_quality"}
    from minisigma import report

    html = report.section_rewrites(run)
    assert "Quality classifier" in html and str(qdir) in html and "low_quality" in html

    # reproduce's decontaminate stage: curated documents + the kept rewrites, nothing from rejects/
    r = load_recipe(resolve_recipe_path("mini"), ReproduceRecipe)
    decontaminate = dict(_stages(r, run, None, False))["decontaminate"]
    info = decontaminate()
    tm = json.loads((run / "train_corpus" / "manifest.json").read_text())
    src = tm["sources"]
    assert src["synthetic_rewrites"] == len(kept) == info["synthetic_rewrites_in"]
    assert src["synthetic_rewrites_by_source"] == {"localdocs": len(kept)}
    assert src["synthetic_rewrites_by_template"] == {"summary": len(kept)}
    corpus = list(iter_docs(run / "train_corpus"))
    synthetic = {d["id"] for d in corpus if d["source"] == "synthetic"}
    assert synthetic == {d["id"] for d in kept}
    assert not synthetic & {r["doc"]["id"] for r in rejects}
    assert len(corpus) == len(real) + len(bad) + len(kept)


def test_the_mini_reproduction_screens_rewrites_with_the_classifier_its_curation_trained(tmp_path):
    from curation import recipe as curation_recipe
    from curation.refine.classify import ClassifyConfig, classifier_dirs
    from minisigma.reproduce import ReproduceRecipe, curated_quality_model, rerooted_copy, resolve_recipe_path
    from synth.recipe import SynthRecipe

    r = load_recipe(resolve_recipe_path("mini"), ReproduceRecipe)
    over = curated_quality_model(r, r.runs_prefix, tmp_path)
    cur = curation_recipe.load(tmp_path / "recipes" / "curation.yaml")
    want = classifier_dirs(tmp_path, getattr(cur.refine, "classify", None) or ClassifyConfig())[0]
    assert want == tmp_path / "classifiers" / "quality"  # where the curation's classify stage trains it
    assert over == {"rewrite": {"quality_model": str(want)}}
    synth = load_recipe(rerooted_copy(r.synth, r.runs_prefix, tmp_path, "synth", over), SynthRecipe)
    assert synth.rewrite.enabled and synth.rewrite.quality_model == str(want)
    assert synth.rewrite.quality_label.removeprefix("__label__") == "hq"  # the label curation trains
    n_requests = synth.rewrite.max_docs * len(synth.rewrite.templates)
    assert n_requests <= 24 and sum(t.max_tokens for t in synth.rewrite.templates) * synth.rewrite.max_docs <= 2000


def test_explain_template_gets_the_command_and_its_own_line_and_each_template_its_own_length_floor(tmp_path):
    """{command_help} is what the page says the command does; a template's min_words overrides the
    stage's (a one-sentence answer is judged as one sentence, everything else unchanged)."""
    from synth.manpage import parse_manpage
    from synth.pipeline import run_synth
    from synth.rewrite import command_of
    from tests.synth_manpages import build_corpus

    corpus = tmp_path / "corpus"
    build_corpus(corpus, ["gzip"])
    page_doc = next(d for s in list_shards(corpus) for d in read_docs(s) if d["metadata"].get("tool") == "gzip")
    command, help_text = command_of(parse_manpage(page_doc["text"], "gzip"), page_doc)
    assert "gzip" in command and help_text[:1].isupper() and not help_text.startswith("Using ")
    words = re.findall(r"[a-z]{4,}", help_text.lower())  # the page's own words, not a template's
    assert words and all(w in page_doc["text"].lower() for w in words), help_text
    recipe = tmp_path / "r.yaml"
    explain = "The {tool} manual says that `{command}` means: {command_help}\n\nExplain `{command}` in one sentence."
    recipe.write_text(yaml.safe_dump({
        "executor": "local", "backend": {"kind": "offline"}, "commands": {"enabled": False}, "qa": {"enabled": False},
        "rewrite": {"enabled": True, "passage": "manpage_section", "max_docs": 2, "min_words": 500,
                    "min_key_term_recall": 0.0, "check_numbers": False,
                    "templates": [{"name": "short_floor", "prompt": explain, "max_tokens": 60, "min_words": 3},
                                  {"name": "stage_floor", "prompt": explain, "max_tokens": 60}]}}))
    m = run_synth(recipe, corpus, tmp_path / "out", progress=False)["rewrites"]
    st = m["stats"]
    assert st.get("kept_short_floor", 0) >= 1 and "kept_stage_floor" not in st
    rejects = list(iter_docs(tmp_path / "out" / "rewrites" / "rejects"))
    assert {r["reason"] for r in rejects if r["doc"]["metadata"]["template"] == "stage_floor"} == {"too_short"}
    kept = [d for s in list_shards(tmp_path / "out" / "rewrites") for d in read_docs(s)]
    assert all(d["metadata"]["command"] for d in kept)
    # the offline backend answers from the prompt's own sentences: the page's line about the command is in it
    pages = {d["id"]: d for s in list_shards(corpus) for d in read_docs(s)}
    for d in kept:
        src = pages[d["metadata"]["source_id"]]
        cmd, line = command_of(parse_manpage(src["text"], src["metadata"].get("tool")), src)
        assert d["metadata"]["command"] == cmd and normalize(line) in normalize(d["text"]), (line, d["text"])
