"""A run's records name no folder of the machine that made it (storage.recorded): a small run through
every kind of record writer (stage manifests and commit markers of curate and refine with
decontamination, the tokenizer and token manifests, an evaluation with its perplexity file, the
classifiers' classifier.json, reproduce.json) holds no absolute path of this machine, and it still
verifies and resolves its recorded paths after it is moved. The tiny reproduction (slow,
tests/app/test_reproduce.py) checks the same of every record a whole reproduction writes."""

from __future__ import annotations

import json
import os
import random
import shutil
import sysconfig
from pathlib import Path

import yaml

from minisigma.core import manifest, storage
from minisigma.core.paths import REPO_ROOT


def machine_paths(root: Path, *also: Path) -> dict[str, list[str]]:
    """Every JSON file under `root` (commit markers included) with a path into a folder of this machine,
    and the first such paths: the run itself, the checkout, minisigma's cache, site-packages, the home
    folder, or a folder in `also`."""
    folders = {str(root), str(REPO_ROOT), str(storage.cache_base()), os.path.expanduser("~"),
               *(sysconfig.get_paths()[k] for k in ("purelib", "platlib")), *map(str, also)}
    found: dict[str, list[str]] = {}

    def strings(v):
        if isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from strings(x)
        elif isinstance(v, list):
            for x in v:
                yield from strings(x)
        elif isinstance(v, str):
            yield v

    for p in sorted(root.rglob("*.json")):
        if p.name == "tokenizer.json":  # a vocabulary ("/tmp" may be a token), not a record
            continue
        bad = [s for s in strings(json.loads(p.read_text())) if any(s == f or s.startswith(f + os.sep) for f in folders)]
        if bad:
            found[p.relative_to(root).as_posix()] = bad[:3]
    return found


def test_a_small_runs_records_hold_no_absolute_path_and_survive_a_move(tmp_path, monkeypatch):
    import tests.source_plugin  # noqa: F401  (registers type: paragraphs)
    from benchmarks.realtext import stdlib_docs
    from curation.pipeline import curate
    from curation.recipe import load
    from curation.refine.classifiers import ClassifiersConfig, train_all
    from minisigma.reproduce import Progress, ReproduceRecipe, resolve_recipe_path
    from minisigma.core.recipes import load_recipe
    from minisigma.core.shards import ShardWriter
    from model.data import DataSection, tokenize
    from model.evaluation import recipe as eval_recipe
    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained
    from model.tokenizer import TokenizerSection, load_tokenizer

    monkeypatch.setenv("MINISIGMA_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    words = ("kernel thread core page cache file block socket port route packet disk volume mount inode lock queue "
             "signal process memory swap device driver module buffer stream pipe shell command option flag user "
             "group permission network address table index query log record").split()
    paras = [" ".join(random.Random(i).sample(words, 24)) for i in range(14)]  # no 10 words in common
    (run / "inputs").mkdir(parents=True)
    (run / "inputs" / "notes.txt").write_text("\n\n".join(paras + paras[:2]) + "\n", encoding="utf-8")
    (run / "heldout.jsonl").write_text(json.dumps({"id": "v", "text": paras[5]}) + "\n")
    (run / "evalset.jsonl").write_text(json.dumps({"id": "e", "task": paras[7]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "movable", "ray": {"executor": "local"},
        "sources": [{"type": "paragraphs", "name": "notes", "path": str(run / "inputs" / "notes.txt")}],
        "refine": {"executor": "local", "stages": ["normalize", "heuristics", "dedup_exact", "decontam"],
                   "heuristics": {"min_words": 5},
                   "decontam": {"heldout_paths": [str(run / "heldout.jsonl")],
                                "eval_sets": [{"name": "tasks", "path": str(run / "evalset.jsonl")}]}}}))
    try:
        curate(load(recipe), run, progress=False)
        counts = manifest.read_json(run / "curated" / "manifest.json")["counts"]
        assert set(counts["dropped"]) == {"decontam_heldout", "decontam_tasks"} and counts["out"] > 0
        tokenize(TokenizerSection(vocab_size=300), DataSection(val_fraction=0.3), run / "curated", run / "tokens")
        tok = load_tokenizer(run / "tokens")
        save_pretrained(GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size())), run / "model", tok)
        ev = tmp_path / "eval.yaml"
        ev.write_text(yaml.safe_dump({"out": str(run / "eval"), "checkpoints": {"m": str(run / "model")},
                                      "perplexity": {"docs": str(run / "curated"), "split": "all", "context": 32}}))
        eval_recipe.run(ev, show_progress=False)
        with ShardWriter(run / "pool" / "00000.jsonl.gz") as w:  # what the classifiers train on
            w.write_all(stdlib_docs())
        pool = str(run / "pool")
        train_all([], ClassifiersConfig.model_validate({"quality": {"positive_paths": [pool]},
                                                        "category": {"paths": [pool]}}), run / "classifiers")
        source = resolve_recipe_path("tiny")
        state = Progress(run, load_recipe(source, ReproduceRecipe), source)
        state.record("pretrain:m", "done", 1.0, export=str(run / "model"))
        state.record("report", "done", 1.0, file=str(run / "report" / "index.html"))

        assert machine_paths(run, tmp_path) == {}
        rec = json.loads((run / "reproduce.json").read_text())
        assert rec["recipe_file"] == "recipes/reproduce/tiny.yaml"
        assert rec["stages"]["pretrain:m"]["export"] == "model"
        m = manifest.read_json(run / "sources" / "notes" / "manifest.json")
        assert m["recipe"]["path"] == "../../inputs/notes.txt"
        m = manifest.read_json(run / "curated" / "manifest.json")
        assert m["recipe"]["heldout_paths"] == ["../heldout.jsonl"]
        assert m["recipe"]["eval_sets"][0]["path"] == "../evalset.jsonl"
        assert m["inputs"][0]["path"].startswith("../refine/dedup_exact/")
        e = json.loads((run / "eval" / "eval.json").read_text())
        assert e["models"]["m"]["checkpoint"] == "../model" and e["recipe"]["perplexity"]["docs"] == "../curated"
        assert json.loads((run / "eval" / "m" / "perplexity.json").read_text())["docs_path"] == "../../curated"
        assert json.loads((run / "tokens" / "manifest.json").read_text())["inputs"][0]["path"] == \
            "../curated/00000.jsonl.gz"
        info = json.loads((run / "classifiers" / "quality" / "classifier.json").read_text())
        assert info["config"]["positive_paths"] == ["../../pool"]
    finally:
        storage.unbind(run)

    # moved: every recorded path resolves from the folder of the file that records it, and it verifies
    moved = storage.run_dir(tmp_path / "elsewhere" / "run")
    try:
        moved.parent.mkdir()
        shutil.move(str(run), str(moved))
        assert manifest.verify(moved) == []
        e = json.loads((moved / "eval" / "eval.json").read_text())
        assert (moved / "eval" / e["models"]["m"]["checkpoint"] / "model.safetensors").is_file()
        m = manifest.read_json(moved / "curated" / "manifest.json")
        assert all((moved / "curated" / i["path"]).is_file() for i in m["inputs"])
    finally:
        storage.unbind(moved)
