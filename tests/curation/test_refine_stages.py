"""Refine stages on real text: normalisation, code-aware heuristics, language ID, exact dedup,
decontamination."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from curation.refine.dedup_exact import DedupExactConfig, normalised_hash
from curation.refine.dedup_run import run_dedup_exact
from curation.refine.decontam import Decontam, DecontamConfig, EvalSet
from curation.refine.heuristics import Heuristics, HeuristicsConfig, check
from curation.refine.langid import LangId, LangIdConfig
from curation.refine.normalize import Normalize, normalize_text
from benchmarks.realtext import stdlib_docs, stdlib_sources
from minisigma.core import manifest
from minisigma.core.runner import run_stage
from minisigma.core.shards import ShardWriter, list_shards, read_docs


def shard(path: Path, docs: list[dict]) -> Path:
    with ShardWriter(path) as w:
        w.write_all(docs)
    return path


def shell_scripts(n: int = 6) -> list[str]:
    out = []
    for p in sorted(Path("/usr/bin").iterdir()):
        try:
            if p.is_file() and os.path.getsize(p) > 3000 and p.read_bytes()[:2] == b"#!":
                out.append(p.read_text(errors="replace"))
        except OSError:
            continue
        if len(out) >= n:
            break
    return out


def test_normalize_text():
    text, n = normalize_text("Cafe\u0301\u00a0bar\r\nline\x07 two   \n\n\n\n\n    indented\u200b code")
    assert text == "Café bar\nline two\n\n\n    indented code" and n == 1


def test_code_heavy_docs_survive_prose_rules_but_garbage_does_not():
    code_docs = [d["text"] for d in stdlib_sources(["json.decoder", "shutil", "tarfile", "argparse"])]
    code_docs += shell_scripts()
    assert len(code_docs) >= 6
    on, off = HeuristicsConfig(), HeuristicsConfig(detect_code=False)
    for t in code_docs:
        reason, facts = check(t, on)
        assert reason is None, (reason, facts, t[:200])
        assert facts["code_fraction"] >= 0.5
    # the prose rules do bite when code detection is off: most code documents would be lost
    assert sum(check(t, off)[0] is not None for t in code_docs) >= len(code_docs) - 1
    prose = [d["text"] for d in stdlib_docs() if len(d["text"].split()) > 120][:20]
    assert sum(check(t, on)[0] is None for t in prose) >= 15
    spam = "Buy the cheap kernel online now and have the best kernel with free download.\n" * 40
    assert check(spam, on)[0].startswith("rep_")
    nav = "\n".join(["Home", "About", "Docs", "Blog", "Contact"] * 8)
    assert check(nav, on)[0] is not None


def test_heuristics_and_langid_stages(tmp_path):
    docs = stdlib_docs()[:40] + stdlib_sources(["shutil"])
    docs.append({"id": "de", "text": (
        "Der Kernel verwaltet den Speicher und die Prozesse des Systems. Er plant die Aufgaben der Anwendungen "
        "auf allen Prozessoren des Rechners und sorgt dafür, dass kein Programm den Speicher eines anderen "
        "überschreibt. Wenn ein Gerät einen Interrupt auslöst, unterbricht der Kernel die laufende Aufgabe, "
        "bearbeitet das Ereignis und kehrt danach zurück. Dateisysteme, Netzwerkprotokolle und Treiber sind "
        "Teile des Kernels, die über Systemaufrufe erreichbar sind. Die Anwendungen selbst laufen im "
        "Benutzermodus und haben keinen direkten Zugriff auf die Hardware des Computers."), "source": "de",
        "metadata": {}})
    docs.append({"id": "notext", "metadata": {}})
    inp = shard(tmp_path / "in" / "00000.jsonl.gz", docs)
    m = run_stage(Normalize(), [inp], tmp_path / "norm", executor="local", progress=False)
    assert m["counts"]["quarantined"] == {"no_text": 1}
    h = run_stage(Heuristics(), list_shards(tmp_path / "norm"), tmp_path / "heur", executor="local", progress=False)
    assert h["counts"]["out"] > 20
    # (Gopher's stop words are English, so heuristics alone drop the German text: identify on its input)
    assert {r["doc"]["id"]: r["reason"] for r in read_docs(tmp_path / "heur" / "rejects" / "00000.jsonl.gz")}.get(
        "de") == "gopher_stop_words"
    lid = run_stage(LangId(LangIdConfig()), list_shards(tmp_path / "norm"), tmp_path / "lang", executor="local",
                    progress=False)
    assert lid["counts"]["dropped"].get("lang_de") == 1
    kept = {d["id"]: d for d in read_docs(list_shards(tmp_path / "lang")[0])}
    assert docs[-3]["id"] in kept  # the shutil source (code) is kept
    assert all(d["metadata"]["lang"] in ("en", "und") for d in kept.values())
    rejects = [r for r in read_docs(tmp_path / "lang" / "rejects" / "00000.jsonl.gz")]
    assert rejects[0]["doc"]["id"] == "de" and rejects[0]["reason"] == "lang_de"
    assert manifest.verify(tmp_path / "lang") == []


def test_exact_dedup_keeps_smallest_id(tmp_path):
    base = stdlib_docs()[:30]
    copies = [{**base[i], "id": f"zz{i}", "text": "  " + base[i]["text"].upper() + "\n"} for i in range(0, 30, 3)]
    copies.append({**base[0], "id": "000first"})
    inputs = [shard(tmp_path / "in" / "00000.jsonl.gz", base[:15] + copies[:5]),
              shard(tmp_path / "in" / "00001.jsonl.gz", base[15:] + copies[5:])]
    m = run_dedup_exact(inputs, tmp_path / "out", DedupExactConfig(records_per_bucket=10), executor="local",
                        progress=False)
    every = base + copies
    natural = len(base) - len({normalised_hash(d["text"]) for d in base})  # docstrings repeated in the stdlib
    assert m["counts"]["dropped"] == {"exact_duplicate": 11 + natural}
    assert len(every) - m["counts"]["dropped"]["exact_duplicate"] == len({normalised_hash(d["text"]) for d in every})
    kept = {d["id"] for p in list_shards(tmp_path / "out") for d in read_docs(p)}
    assert "000first" in kept and base[0]["id"] not in kept and not any(k.startswith("zz") for k in kept)
    assert manifest.verify(tmp_path / "out") == []


def test_decontam_drops_docs_with_eval_items_and_records_ngrams(tmp_path):
    items = [{"id": "cmdgen-1", "task": "show the last ten lines of the system log and follow it",
              "command": "tail -n 10 -f /var/log/syslog | grep --line-buffered kernel", "tool": "tail"}]
    (tmp_path / "cmdgen.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    held = shard(tmp_path / "val.jsonl.gz", [{"id": "v1", "text": stdlib_docs()[5]["text"]}])
    docs = [{"id": "a", "source": "t", "text": "To watch it live: tail -n 10 -f /var/log/syslog | grep --line-buffered kernel ok"},
            {"id": "b", "source": "t", "text": stdlib_docs()[7]["text"]},
            {"id": "c", "source": "t", "text": "intro\n" + stdlib_docs()[5]["text"][:2000]},
            {"id": "d", "source": "t", "text": "tail -n 10 shows lines; grep filters them"}]
    c = DecontamConfig(eval_sets=[EvalSet(name="cmdgen", path=str(tmp_path / "cmdgen.jsonl"))],
                       heldout_paths=[str(held)])
    m = run_stage(Decontam(c), [shard(tmp_path / "in" / "00000.jsonl.gz", docs)], tmp_path / "out",
                  executor="local", progress=False)
    assert m["counts"]["dropped"] == {"decontam_cmdgen": 1, "decontam_heldout": 1}
    rej = {r["doc"]["id"]: r for r in read_docs(tmp_path / "out" / "rejects" / "00000.jsonl.gz")}
    assert set(rej) == {"a", "c"}
    grams = rej["a"]["doc"]["metadata"]["decontam"]["ngrams"]
    assert grams and all(g["item"] == "cmdgen-1" for g in grams) and any("syslog" in g["ngram"] for g in grams)


def test_decontam_missing_eval_set_is_a_user_error(tmp_path):
    from minisigma.core.errors import UserError

    with pytest.raises(UserError, match="no such file"):
        Decontam(DecontamConfig(eval_sets=[EvalSet(name="x", path=str(tmp_path / "nope.jsonl"))]))
