"""`minisigma bench minhash` without the datatrove peer (its environment needs a package index): ours
against datasketch's `update_batch` on the same shingle hashes; the stored agreement is checked, never
a speed (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_minhash_agrees_with_datasketch_and_stores_its_result_under_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MINISIGMA_BENCH_RESULTS", str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "minisigma.cli", "bench", "minhash", "--docs", "30", "--rounds", "1",
                        "--no-peer", "--name", "t-minhash"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "t-minhash.json").read_text())
    n = res["docs"]
    assert res["benchmark"] == "t-minhash" and n > 0
    assert res["agreement"]["identical_signatures_vs_datasketch"] == f"{n} of {n}"
    assert res["agreement"]["ours_text_equals_ours_sign"] == f"{n} of {n}"
    assert "datatrove_matched" not in res["sides"] and res["settings"]["datasketch"]["api"] == "MinHash.update_batch"
