"""Bad input through the real `minisigma` command line: one line `error: PATH: what is wrong` on
stderr and exit code 2, never a traceback or a bare "Aborted!".

Each case runs the CLI in a subprocess on small damaged files made here (no pipeline is run to
make them): a recipe with invalid UTF-8, manifests that are not JSON or lack `outputs`, shards with
a non-JSON line or cut short, `--out` where a file is in the way or the file system is read-only,
damaged model files and training checkpoints, a missing crawl folder.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from minisigma.core.shards import ShardWriter

REPO = Path(__file__).resolve().parents[2]
TINY_CURATION = REPO / "recipes" / "curation" / "tiny.yaml"


def minisigma(*args, cwd: Path, prefix: tuple[str, ...] = (), timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "200"}
    return subprocess.run([*prefix, sys.executable, "-m", "minisigma.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(r: subprocess.CompletedProcess, path, *fragments: str) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    assert len(lines) == 1, r.stderr[-3000:]
    line = lines[0]
    assert line.startswith(f"error: {path}"), line
    for f in fragments:
        assert f in line, (f, line)
    return line


# --------------------------------------------------------------------------- fixtures (small files)
def _write_shard(path: Path, docs: int, text: str = "the page cache keeps file data in memory") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with ShardWriter(path) as w:
        for i in range(docs):
            w.write({"id": f"d{i}", "text": f"{text} {i}", "source": "manpages", "metadata": {}})
    return path


def _stage(dir_: Path, shard: Path | None = None, docs: int = 0) -> Path:
    """A stage directory whose manifest lists `shard` with its true sha256 (so verify reads it)."""
    dir_.mkdir(parents=True, exist_ok=True)
    outputs = []
    if shard is not None:
        outputs.append({"path": shard.name, "sha256": hashlib.sha256(shard.read_bytes()).hexdigest(), "docs": docs,
                        "bytes": shard.stat().st_size})
    m = {"stage": dir_.name, "counts": {"in": docs, "out": docs, "dropped": {}, "quarantined": {}},
         "outputs": outputs, "rejects": []}
    (dir_ / "manifest.json").write_text(json.dumps(m))
    return dir_


@pytest.fixture(scope="module")
def fx(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("badinput")
    f: dict[str, Path] = {"root": root}

    # a recipe with invalid UTF-8 on its second line
    f["bad_utf8_recipe"] = root / "bad-utf8.yaml"
    f["bad_utf8_recipe"].write_bytes(b"name: x\nkind: pretrain \xff\xfe\n")

    # manifests
    f["manifest_not_json"] = root / "m_notjson"
    f["manifest_not_json"].mkdir()
    (f["manifest_not_json"] / "manifest.json").write_text('{"counts": {"in": 1,\n  oops}\n')
    f["manifest_no_outputs"] = root / "m_nooutputs"
    f["manifest_no_outputs"].mkdir()
    (f["manifest_no_outputs"] / "manifest.json").write_text(
        json.dumps({"counts": {"in": 0, "out": 0, "dropped": {}, "quarantined": {}}}))
    f["good_stage"] = _stage(root / "good_stage")

    # shards: one with a non-JSON third line, one cut in half
    nj = _write_shard(root / "cur_notjson" / "00000.jsonl.gz", 2)
    nj.write_bytes(gzip.compress(gzip.decompress(nj.read_bytes()) + b"{not json\n", mtime=0))
    f["cur_notjson"] = nj.parent
    tr = _write_shard(root / "cur_trunc" / "00000.jsonl.gz", 400, text="lorem ipsum dolor sit amet " * 20)
    tr.write_bytes(tr.read_bytes()[: tr.stat().st_size // 2])
    f["cur_trunc"] = tr.parent
    f["stage_notjson"] = _stage(root / "stage_notjson", _copy(nj, root / "stage_notjson"), docs=3)
    f["stage_trunc"] = _stage(root / "stage_trunc", _copy(tr, root / "stage_trunc"), docs=400)
    f["cur_good"] = _write_shard(root / "cur_good" / "00000.jsonl.gz", 3).parent

    # a file where a directory is expected
    f["a_file"] = root / "a-file"
    f["a_file"].write_text("not a directory\n")

    # a synth recipe that runs in-process (no Ray start for a quick failure)
    f["synth_local"] = root / "synth-local.yaml"
    f["synth_local"].write_text((REPO / "recipes/synth/default.yaml").read_text()
                                .replace("executor: ray", "executor: local"))
    assert "executor: local" in f["synth_local"].read_text()

    # model checkpoints: a good one and copies with one damaged file each
    f["ckpt"] = _tiny_checkpoint(root / "ckpt")
    for name, damage in [("ckpt_trunc_weights", lambda d: _truncate(d / "model.safetensors", 1000)),
                         ("ckpt_random_weights", lambda d: (d / "model.safetensors").write_bytes(os.urandom(20000))),
                         ("ckpt_bad_tokenizer", lambda d: (d / "tokenizer.json").write_text('{"version": "1.0",\n'))]:
        d = root / name
        shutil.copytree(f["ckpt"], d)
        damage(d)
        f[name] = d

    # training runs whose last.ckpt is damaged (checked before any data is loaded)
    for name, write in [("run_ckpt_random", lambda p: p.write_bytes(os.urandom(5000))),
                        ("run_ckpt_trunc", lambda p: p.write_bytes(_zip_bytes()[:-200])),
                        ("run_ckpt_crc", lambda p: p.write_bytes(_zip_bytes(damage=True)))]:
        out = root / name
        (out / "ckpt").mkdir(parents=True)
        write(out / "ckpt" / "last.ckpt")
        recipe = root / f"{name}.yaml"
        recipe.write_text(f"name: {name}\nkind: pretrain\nout_dir: {out}\ndata: {{tokens_dir: {root / 'tokens'}}}\n"
                          "model: {preset: tiny}\ntrain: {max_steps: 2, micro_batch: 2, seq_len: 32}\n")
        f[name] = recipe
    # token folders for `train`: a train.bin cut short, a manifest that is not JSON
    for name in ("tokens_trunc", "tokens_badmanifest"):
        f[name] = _tokens_dir(root / name, damage=name)
        recipe = root / f"{name}.yaml"
        recipe.write_text(f"name: {name}\nkind: pretrain\nout_dir: {root / ('train-' + name)}\n"
                          f"data: {{tokens_dir: {f[name]}}}\nmodel: {{preset: tiny}}\n"
                          "train: {max_steps: 2, micro_batch: 2, seq_len: 16}\n")
        f[name + "_recipe"] = recipe
    f["tasks"] = root / "tasks.jsonl"
    f["tasks"].write_text(json.dumps({"id": "t1", "tool": "ls", "task": "list the files", "command": "ls"}) + "\n")
    return f


def _copy(src: Path, dest_dir: Path) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(src, dest_dir / src.name))


def _truncate(p: Path, n: int) -> None:
    p.write_bytes(p.read_bytes()[:n])


def _zip_bytes(damage: bool = False) -> bytes:
    """A zip like torch.save's (stored members); `damage` flips bytes inside a member's data."""
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00." + bytes(64))
        z.writestr("archive/data/0", bytes(range(256)) * 16)
    b = bytearray(buf.getvalue())
    if damage:
        i = b.find(bytes(range(256)))
        for j in range(i + 100, i + 140):
            b[j] ^= 0xFF
    return bytes(b)


def _tokens_dir(d: Path, damage: str) -> Path:
    """What `minisigma tokenize` writes (tokenizer.json, train.bin, val.bin, manifest.json), then damaged."""
    import numpy as np

    from model.tokenizer import train_tokenizer

    d.mkdir()
    tok, _ = train_tokenizer([{"text": "the page cache keeps file data in memory"}] * 20, vocab_size=300)
    tok.save(str(d / "tokenizer.json"))
    np.arange(200, dtype=np.uint16).tofile(d / "train.bin")
    np.arange(50, dtype=np.uint16).tofile(d / "val.bin")
    (d / "manifest.json").write_text(json.dumps({"dtype": "uint16", "train_tokens": 200, "val_tokens": 50,
                                                 "vocab_size": tok.get_vocab_size()}))
    if damage == "tokens_trunc":
        _truncate(d / "train.bin", 301)
    else:
        (d / "manifest.json").write_text('{"dtype": "uint16",\n "train_tokens": 200,,\n}')
    return d


def _tiny_checkpoint(d: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from model.gpt import GPT, ModelConfig
    from model.io import save_pretrained

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world"] * 10, trainer=trainers.BpeTrainer(
        vocab_size=270, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    save_pretrained(GPT(ModelConfig.preset("tiny", vocab_size=tok.get_vocab_size(), max_seq_len=64)), d, tok)
    return d


# --------------------------------------------------------------------------- the cases
# (id, argv with {fixture} placeholders, the path the line must start with, fragments it must hold)
CASES = [
    # a recipe with invalid UTF-8, through every command that reads one
    ("recipe-utf8-curate", ["curate", "{bad_utf8_recipe}", "--out", "{root}/o"], "{bad_utf8_recipe}", ["line 2", "invalid UTF-8"]),
    ("recipe-utf8-tokenize", ["tokenize", "{bad_utf8_recipe}", "--in", "{cur_good}", "--out", "{root}/o"], "{bad_utf8_recipe}", ["invalid UTF-8"]),
    ("recipe-utf8-train", ["train", "{bad_utf8_recipe}"], "{bad_utf8_recipe}", ["invalid UTF-8"]),
    ("recipe-utf8-synth", ["synth", "{bad_utf8_recipe}", "--in", "{cur_good}", "--out", "{root}/o"], "{bad_utf8_recipe}", ["invalid UTF-8"]),
    ("recipe-utf8-eval", ["eval", "{bad_utf8_recipe}"], "{bad_utf8_recipe}", ["invalid UTF-8"]),
    ("recipe-utf8-refine", ["refine", "{bad_utf8_recipe}", "--run", "{root}/o"], "{bad_utf8_recipe}", ["invalid UTF-8"]),
    ("recipe-utf8-reproduce", ["reproduce", "--recipe", "{bad_utf8_recipe}"], "{bad_utf8_recipe}", ["invalid UTF-8"]),
    # --data-from a directory that is no `--data-only` run
    ("data-from-not-a-run", ["reproduce", "--recipe", "tiny", "--data-from", "{good_stage}", "--out", "{root}/r"], "{good_stage}", ["--data-from needs a run made with `minisigma reproduce --data-only`"]),
    # manifests: not JSON, or no `outputs`
    ("manifest-json-verify", ["manifest", "verify", "{manifest_not_json}"], "{manifest_not_json}/manifest.json:2", ["invalid JSON"]),
    ("manifest-json-show", ["manifest", "show", "{manifest_not_json}"], "{manifest_not_json}/manifest.json:2", ["invalid JSON"]),
    ("manifest-json-diff", ["manifest", "diff", "{good_stage}", "{manifest_not_json}"], "{manifest_not_json}/manifest.json:2", ["invalid JSON"]),
    ("manifest-outputs-verify", ["manifest", "verify", "{manifest_no_outputs}"], "{manifest_no_outputs}/manifest.json", ["outputs: Field required"]),
    ("manifest-outputs-show", ["manifest", "show", "{manifest_no_outputs}"], "{manifest_no_outputs}/manifest.json", ["outputs: Field required"]),
    ("manifest-outputs-diff", ["manifest", "diff", "{manifest_no_outputs}", "{good_stage}"], "{manifest_no_outputs}/manifest.json", ["outputs: Field required"]),
    # a shard with a non-JSON line
    ("shard-json-verify", ["manifest", "verify", "{stage_notjson}"], "{stage_notjson}/00000.jsonl.gz:3", ["invalid JSON"]),
    ("shard-json-tokenize", ["tokenize", str(REPO / "recipes/train/tiny.yaml"), "--in", "{cur_notjson}", "--out", "{root}/tok1"], "{cur_notjson}/00000.jsonl.gz:3", ["invalid JSON"]),
    ("shard-json-synth", ["synth", "{synth_local}", "--in", "{cur_notjson}", "--out", "{root}/syn1", "--quiet"], "{cur_notjson}/00000.jsonl.gz:3", ["invalid JSON"]),
    # a truncated gzip shard
    ("shard-trunc-verify", ["manifest", "verify", "{stage_trunc}"], "{stage_trunc}/00000.jsonl.gz", ["truncated, after line"]),
    ("shard-trunc-tokenize", ["tokenize", str(REPO / "recipes/train/tiny.yaml"), "--in", "{cur_trunc}", "--out", "{root}/tok2"], "{cur_trunc}/00000.jsonl.gz", ["truncated"]),
    ("shard-trunc-synth", ["synth", "{synth_local}", "--in", "{cur_trunc}", "--out", "{root}/syn2", "--quiet"], "{cur_trunc}/00000.jsonl.gz", ["truncated"]),
    # --out where a file is in the way
    ("out-file-curate", ["curate", str(TINY_CURATION), "--out", "{a_file}", "--quiet"], "{a_file}", ["is a file"]),
    ("out-file-curate-below", ["curate", str(TINY_CURATION), "--out", "{a_file}/run", "--quiet"], "{a_file}", ["is a file"]),
    ("out-file-tokenize", ["tokenize", str(REPO / "recipes/train/tiny.yaml"), "--in", "{cur_good}", "--out", "{a_file}"], "{a_file}", ["is a file"]),
    ("out-file-report", ["report", "{good_stage}", "--out", "{a_file}/index.html"], "{a_file}", ["is a file"]),
    ("out-dir-report", ["report", "{good_stage}", "--out", "{root}"], "{root}", ["is a directory"]),
    ("out-file-eval-cmdgen", ["eval", "cmdgen", "--tasks", "{tasks}", "--checkpoint", "{ckpt}", "--out", "{a_file}", "--no-execute"], "{a_file}", ["is a file"]),
    ("out-file-synth", ["synth", "{synth_local}", "--in", "{cur_good}", "--out", "{a_file}", "--quiet"], "{a_file}", ["is a file"]),
    ("out-file-snapshot", ["manifest", "snapshot", "{good_stage}", "{a_file}"], "{a_file}", ["is a file"]),
    # damaged model files
    ("weights-trunc-generate", ["generate", "--checkpoint", "{ckpt_trunc_weights}", "--prompt", "hi"], "{ckpt_trunc_weights}/model.safetensors", ["not a readable safetensors file"]),
    ("weights-random-generate", ["generate", "--checkpoint", "{ckpt_random_weights}", "--prompt", "hi"], "{ckpt_random_weights}/model.safetensors", ["not a readable safetensors file"]),
    ("weights-trunc-serve", ["serve", "--checkpoint", "{ckpt_trunc_weights}", "--port", "0", "--no-auth"], "{ckpt_trunc_weights}/model.safetensors", ["not a readable safetensors file"]),
    ("weights-random-serve", ["serve", "--checkpoint", "{ckpt_random_weights}", "--port", "0", "--no-auth"], "{ckpt_random_weights}/model.safetensors", ["not a readable safetensors file"]),
    ("weights-trunc-eval-cmdgen", ["eval", "cmdgen", "--tasks", "{tasks}", "--checkpoint", "{ckpt_trunc_weights}", "--out", "{root}/ev", "--no-execute"], "{ckpt_trunc_weights}/model.safetensors", ["not a readable safetensors file"]),
    ("tokenizer-generate", ["generate", "--checkpoint", "{ckpt_bad_tokenizer}", "--prompt", "hi"], "{ckpt_bad_tokenizer}/tokenizer.json", ["not a valid tokenizer.json"]),
    ("tokenizer-serve", ["serve", "--checkpoint", "{ckpt_bad_tokenizer}", "--port", "0", "--no-auth"], "{ckpt_bad_tokenizer}/tokenizer.json", ["not a valid tokenizer.json"]),
    # train --resume from a damaged last.ckpt
    ("resume-random", ["train", "{run_ckpt_random}", "--resume"], "{root}/run_ckpt_random/ckpt/last.ckpt", ["not a readable checkpoint"]),
    ("resume-truncated", ["train", "{run_ckpt_trunc}", "--resume"], "{root}/run_ckpt_trunc/ckpt/last.ckpt", ["not a readable checkpoint"]),
    ("resume-crc", ["train", "{run_ckpt_crc}", "--resume"], "{root}/run_ckpt_crc/ckpt/last.ckpt", ["damaged checkpoint", "archive/data/0"]),
    # train on a damaged token folder
    ("tokens-trunc-train", ["train", "{tokens_trunc_recipe}"], "{tokens_trunc}/train.bin", ["301 bytes", "200 uint16 tokens"]),
    ("tokens-manifest-train", ["train", "{tokens_badmanifest_recipe}"], "{tokens_badmanifest}/manifest.json:2", ["invalid JSON"]),
    # a missing or wrong folder
    ("bench-curation-missing", ["bench", "curation", "{root}/no-such-crawl"], "{root}/no-such-crawl", ["not a directory"]),
    ("bench-curation-file", ["bench", "curation", "{a_file}"], "{a_file}", ["not a directory"]),
    ("bench-dedup-executor", ["bench", "dedup", "--executor", "spark"], "--executor", ["ray or local"]),
]


# These commands import Lightning (model.data) before they read their input: 20-50 s each on this
# loaded 2-core machine. One case per kind of damage stays in the quick run; the rest are slow.
SLOW = {"recipe-utf8-tokenize", "recipe-utf8-train", "shard-json-tokenize", "out-file-tokenize",
        "resume-random", "resume-crc", "tokens-trunc-train", "tokens-manifest-train"}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c[0] in SLOW else c for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(fx, case):
    _, argv, path, fragments = case
    r = minisigma(*[a.format(**fx) for a in argv], cwd=fx["root"])
    assert_one_error_line(r, path.format(**fx), *fragments)
    assert "Traceback" not in r.stdout + r.stderr


def _readonly_prefix(ro: Path) -> tuple[str, ...]:
    """Run the CLI with `ro` bind-mounted read-only (bubblewrap, a project dependency: the sandbox).

    chmod would not do: root ignores permission bits, and these tests run as root in CI."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        pytest.skip("bubblewrap is not installed (scripts/system-deps.sh)")
    prefix = (bwrap, "--dev-bind", "/", "/", "--ro-bind", str(ro), str(ro), "--")
    probe = subprocess.run([*prefix, "sh", "-c", f"touch {ro}/probe"], capture_output=True, text=True)
    if probe.returncode == 0 or "Read-only file system" not in probe.stderr:
        pytest.skip(f"bubblewrap cannot make a read-only bind mount here: {probe.stderr.strip()}")
    return prefix


READONLY_CASES = [
    ("curate", ["curate", str(TINY_CURATION), "--out", "{ro}/run", "--quiet"]),
    pytest.param(("tokenize", ["tokenize", str(REPO / "recipes/train/tiny.yaml"), "--in", "{cur_good}", "--out", "{ro}/tok"]),
                 marks=pytest.mark.slow),
    ("synth", ["synth", "{synth_local}", "--in", "{cur_good}", "--out", "{ro}/syn", "--quiet"]),
    ("report", ["report", "{good_stage}", "--out", "{ro}/report/index.html"]),
]


@pytest.mark.parametrize("case", READONLY_CASES, ids=["curate", "tokenize", "synth", "report"])
def test_out_on_a_read_only_file_system(fx, tmp_path, case):
    ro = tmp_path / "ro"
    ro.mkdir()
    _, argv = case
    r = minisigma(*[a.format(ro=ro, **fx) for a in argv], cwd=fx["root"], prefix=_readonly_prefix(ro))
    assert_one_error_line(r, ro, "Read-only file system")
    assert not any(ro.iterdir())


def test_truncated_shard_names_the_last_good_line(fx):
    """The records before the damage were read; the line says where the shard stops being readable."""
    r = minisigma("manifest", "verify", fx["stage_trunc"], cwd=fx["root"])
    line = assert_one_error_line(r, fx["stage_trunc"] / "00000.jsonl.gz", "truncated")
    last_good = int(line.rsplit("after line ", 1)[1])
    assert 0 < last_good < 400


def test_manifest_with_a_bad_count_is_refused(tmp_path):
    """A listed shard's `docs` must be a count: the line names the key."""
    stage = _stage(tmp_path / "s")
    m = json.loads((stage / "manifest.json").read_text())
    m["outputs"] = [{"path": "00000.jsonl.gz", "sha256": "0" * 64, "docs": "many"}]
    (stage / "manifest.json").write_text(json.dumps(m))
    r = minisigma("manifest", "verify", stage, cwd=tmp_path)
    assert_one_error_line(r, stage / "manifest.json", "outputs.0.docs", "valid integer")


def test_bad_usage_is_still_exit_2_and_good_input_still_works(fx):
    """The handler changes nothing for good input, and click's own usage errors keep exit 2."""
    ok = minisigma("manifest", "verify", fx["good_stage"], cwd=fx["root"])
    assert ok.returncode == 0, ok.stderr
    assert "1 stage(s), 0 problem(s)" in ok.stdout
    usage = minisigma("generate", "--checkpoint", fx["ckpt"], cwd=fx["root"])
    assert usage.returncode == 2 and "--prompt" in usage.stderr and "Traceback" not in usage.stderr


def test_user_error_in_a_ray_task_reaches_the_driver_as_itself(ray_local, tmp_path):
    """A Ray task's UserError is re-raised on the driver as the UserError itself (not a RayTaskError
    carrying the worker's traceback in its message), so the CLI prints its one line."""
    from minisigma.core.errors import UserError
    from minisigma.core.runner import Stage as _Stage
    from minisigma.core.runner import run_stage, text_docs

    class Passthrough(_Stage):
        name = "passthrough"

        def process(self, task, sink):
            for doc in text_docs(task.inputs[0], sink):
                sink.write(doc)

    shard = _write_shard(tmp_path / "in" / "00000.jsonl.gz", 2)
    shard.write_bytes(gzip.compress(gzip.decompress(shard.read_bytes()) + b"[1, 2\n", mtime=0))
    with pytest.raises(UserError) as info:
        run_stage(Passthrough(), [shard], tmp_path / "out", executor="ray", progress=False)
    assert type(info.value) is UserError
    assert str(info.value) == f"{shard}:3: invalid JSON (Expecting ',' delimiter at column 7)"
    assert not (tmp_path / "out" / "00000.jsonl.gz").exists()


@pytest.mark.slow
def test_ray_synth_bad_shard_is_one_error_line(fx):
    """End to end through Ray (the default synth executor): the worker's error is the driver's one line."""
    r = minisigma("synth", REPO / "recipes/synth/default.yaml", "--in", fx["cur_notjson"], "--out",
                  fx["root"] / "syn-ray", "--quiet", cwd=fx["root"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "RayTaskError" not in r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [(f"error: {fx['cur_notjson']}/00000.jsonl.gz:3: invalid JSON "
                       "(Expecting property name enclosed in double quotes at column 2)")], r.stderr[-3000:]
