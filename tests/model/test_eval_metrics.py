"""The CMDGen metrics, each on hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model.evaluation.metrics import (
    Embedder,
    Execution,
    calibration,
    cosine,
    exact_match,
    normalize_command,
    normalize_output,
    score_task,
    success,
    summarize,
)


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


# ----------------------------------------------------------------------------- exact match
@pytest.mark.parametrize("a,b", [
    ("ls  -l   'a b'", 'ls -l "a b"'),  # whitespace and quote style
    ("ls|wc -l", "ls | wc -l"),  # operators glued to words
    ("  grep -r foo .  ", "grep -r foo ."),
    ("echo a\\ b", "echo 'a b'"),  # backslash escape == quotes
    ("find . -name '*.py'", 'find . -name "*.py"'),
])
def test_exact_match_normalises_whitespace_and_quoting(a, b):
    assert normalize_command(a) == normalize_command(b)
    assert exact_match(a, b)


@pytest.mark.parametrize("a,b", [
    ("ls -l", "ls -la"),
    ("ls -l a b", "ls -l 'a b'"),  # two words vs one word: different commands
    ("rm -r x", "rm -rf x"),
    ("", ""),  # an empty reference never matches
])
def test_exact_match_rejects_different_commands(a, b):
    assert not exact_match(a, b)


def test_unbalanced_quote_falls_back_to_whitespace():
    assert normalize_command("echo 'oops   x") == "echo 'oops x"


def test_normalize_output():
    assert normalize_output("a  \r\nb\t\n\n\n") == "a\nb"
    assert normalize_output("") == ""


# ----------------------------------------------------------------------------- cosine / embeddings
def test_cosine_by_hand():
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(np.array([1.0, 2.0]), np.array([-2.0, 1.0])) == pytest.approx(0.0)
    assert cosine(np.array([3.0, 4.0]), np.array([-3.0, -4.0])) == pytest.approx(-1.0)
    assert cosine(np.zeros(3), np.ones(3)) == 0.0


def test_embedder_matches_an_independent_mean_pooling(embedder):
    """The CMD score equals mean-pooled, L2-normalised MiniLM embeddings computed with plain
    transformers from the same weights (all-MiniLM-L6-v2's definition)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from model.evaluation.metrics import minilm_path

    path = minilm_path()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = ["tar -xzf archive.tar.gz", "extract the gzip tarball archive.tar.gz"]
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    vec = (hidden * mask).sum(1) / mask.sum(1)
    vec = torch.nn.functional.normalize(vec, dim=-1)
    expected = float(vec[0] @ vec[1])
    assert embedder.similarity(*texts) == pytest.approx(expected, abs=1e-5)


def test_embedding_similarity_is_semantic(embedder):
    assert embedder.similarity("ls -la", "ls -la") == 1.0
    near = embedder.similarity("ls -la", "ls -al")
    far = embedder.similarity("ls -la", "nvidia-smi --query-gpu=memory.used --format=csv")
    assert 0.5 < near < 1.0 and far < near
    # symmetric
    assert embedder.similarity("a b", "b c") == pytest.approx(embedder.similarity("b c", "a b"), abs=1e-6)


# ----------------------------------------------------------------------------- calibration / success
def test_calibration_by_hand():
    assert calibration(0.81, None, 0.8)
    assert calibration(0.2, 0.9, 0.8)
    assert not calibration(0.8, 0.8, 0.8)  # strictly above the threshold
    assert not calibration(0.5, None, 0.8)


def ok(out: str) -> Execution:
    return Execution("ok", 0, out)


def test_success_by_hand():
    assert success(ok("3\n"), ok("3"))  # trailing newline does not matter
    assert not success(ok("3"), ok("4"))
    assert not success(Execution("error", 2, "3"), ok("3"))  # a failing command is no success
    assert not success(Execution("not_executable", 127, ""), Execution("not_executable", 127, ""))
    assert not success(None, ok(""))
    assert success(ok(""), ok(""))  # both ran cleanly and printed nothing (e.g. mkdir)


# ----------------------------------------------------------------------------- per task
def test_score_task_cases(embedder):
    # exact match but the tool is missing: accuracy through exact match, no output score
    r = score_task(embedder, "nvidia-smi  -L", "nvidia-smi -L",
                   Execution("not_executable", 127, ""), Execution("not_executable", 127, ""), 0.8)
    assert r == {"cmd_score": 1.0, "output_score": None, "calibration": True, "exact_match": True,
                 "success": False, "accuracy": True}
    # different command, same output: success -> accuracy; output score exactly 1
    r = score_task(embedder, "echo $((2+1))", "expr 1 + 2", ok("3\n"), ok("3\n"), 0.8)
    assert r["success"] and r["accuracy"] and not r["exact_match"] and r["output_score"] == 1.0
    assert r["calibration"] and r["cmd_score"] < 1.0
    # reference ran, generated could not: output score 0, no success
    r = score_task(embedder, "frobnicate -x", "ls", Execution("not_executable", 127, ""), ok("a\n"), 0.8)
    assert r["output_score"] == 0.0 and not r["success"] and not r["accuracy"]
    # an empty generation: all zero
    r = score_task(embedder, "", "ls", Execution("empty", None, ""), ok("a\n"), 0.8)
    assert r == {"cmd_score": 0.0, "output_score": 0.0, "calibration": False, "exact_match": False,
                 "success": False, "accuracy": False}


def test_summarize_by_hand():
    rows = [
        {"tool": "ls", "cmd_score": 1.0, "output_score": 1.0, "calibration": True, "exact_match": True,
         "success": True, "accuracy": True, "generated_status": "ok"},
        {"tool": "ls", "cmd_score": 0.5, "output_score": None, "calibration": False, "exact_match": False,
         "success": False, "accuracy": False, "generated_status": "not_executable"},
        {"tool": "tar", "cmd_score": 0.2, "output_score": 0.4, "calibration": False, "exact_match": False,
         "success": True, "accuracy": True, "generated_status": "ok"},
    ]
    s = summarize(rows)
    o = s["overall"]
    assert o["tasks"] == 3 and o["cmd_score"] == pytest.approx(1.7 / 3, abs=1e-6)
    assert o["output_score"] == pytest.approx(0.7) and o["output_scored"] == 2
    assert o["accuracy"] == pytest.approx(2 / 3, abs=1e-6) and o["exact_match"] == pytest.approx(1 / 3, abs=1e-6)
    assert o["not_executable"] == 1
    assert s["per_tool"]["ls"]["cmd_score"] == 0.75 and s["per_tool"]["ls"]["output_score"] == 1.0
    assert s["per_tool"]["tar"]["success"] == 1.0 and s["per_tool"]["tar"]["tasks"] == 1


def test_paired_accuracy_counts_discordant_tasks_and_mcnemar_p():
    from model.evaluation.metrics import paired_accuracy

    def rows(flags):
        return [{"id": f"t{i}", "accuracy": f} for i, f in enumerate(flags)]

    # A right on 8 tasks B misses, B right on 1 task A misses, both right on 2, both wrong on 9
    a = rows([True] * 8 + [False] + [True] * 2 + [False] * 9)
    b = rows([False] * 8 + [True] + [True] * 2 + [False] * 9)
    r = paired_accuracy(a, b)
    assert (r["tasks"], r["both"], r["only_a"], r["only_b"]) == (20, 2, 8, 1)
    # exact binomial by hand: 2 * (C(9,0) + C(9,1)) / 2^9 = 20/512
    assert r["mcnemar_p"] == pytest.approx(20 / 512, abs=1e-6)
    assert paired_accuracy(a, a)["mcnemar_p"] == 1.0  # no discordant task: no evidence either way
    assert paired_accuracy(b, a)["only_a"] == 1  # symmetric roles
    assert paired_accuracy(a[:5], b)["tasks"] == 5  # matched by id, extra tasks of one side ignored
