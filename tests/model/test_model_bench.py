"""`minisigma bench attention` end to end at toy sizes (no timing assertions: timings are reported,
not tested), and the GPU path, which runs only where CUDA is available."""

import json

import pytest
import torch
from typer.testing import CliRunner

from minisigma.cli import app


def test_bench_attention_quick_run(tmp_path):
    out = tmp_path / "bench"
    r = CliRunner().invoke(app, ["bench", "attention", "--contexts", "64,256", "--batches", "1,2", "--layers", "1",
                                 "--hidden", "512", "--train-seq", "16", "--repeats", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "DiffQKV / GQA = 0.6250 -> 37.5% smaller" in r.output and "exact: MET" in r.output
    assert "training step" in r.output and "prefill" in r.output
    if not torch.cuda.is_available():
        assert "GPU path skipped: torch.cuda.is_available() is False" in r.output
    assert (out / "decode_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads((out / "results.json").read_text())
    assert [(d["batch"], d["context"]) for d in res["decode"]] == [(1, 64), (1, 256), (2, 64), (2, 256)]
    for d in res["decode"]:
        assert all(v > 0 for v in d["layer_ms"].values()) and set(d["layer_ms"]) == {"gqa", "diffqkv", "diffqkv+augq"}
    assert res["kv_bytes_per_token_bf16"] == {"gqa": 1024, "diffqkv": 640, "diffqkv+augq": 640}


@pytest.mark.parametrize("args,msg", [(["--contexts", "1k"], "--contexts"), (["--hidden", "768"], "--hidden"),
                                      (["--dtype", "int8"], "--dtype")])
def test_bench_attention_rejects_bad_options(tmp_path, args, msg):
    r = CliRunner().invoke(app, ["bench", "attention", "--out", str(tmp_path), *args])
    assert r.exit_code == 2, r.output
    (line,) = [x for x in r.output.splitlines() if x.strip()]
    assert line.startswith("error: ") and msg in line


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: torch.cuda.is_available() is False")
def test_gpu_decode_matches_cpu_and_bench_runs(tmp_path):
    from model.gpt import grouped_decode_attention

    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 32, 1, 64, generator=g), torch.randn(2, 4, 300, 64, generator=g), torch.randn(2, 16, 300, 64, generator=g)
    cpu = grouped_decode_attention(q, k, v, 0.125)
    gpu = grouped_decode_attention(q.cuda(), k.cuda(), v.cuda(), 0.125).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-3, atol=1e-3)
    from benchmarks import bench_attention  # noqa: F401  (repository root is on sys.path under pytest)

    res = bench_attention.run(contexts=[256], batches=[1], layers=1, hidden=512, train_seq=16, repeats=2,
                              out_dir=tmp_path, log=lambda *_: None)
    assert res["gpu"] and res["gpu"][0]["kernel_ms"]["gqa"] > 0
