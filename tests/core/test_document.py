"""The Document record: ids, shard round trip, datatrove conversion."""

from __future__ import annotations

import pytest

from minisigma.core.document import Document
from minisigma.core.shards import ShardWriter, read_docs, stable_id


def test_document_round_trips_through_a_shard_and_keeps_a_stable_id(tmp_path):
    d = Document.create("blogs", "https://example.org/a", "The page cache.", metadata={"title": "A"})
    assert d.id == stable_id("blogs", "https://example.org/a") == Document.create("blogs", "https://example.org/a", "x").id
    assert d.url == "https://example.org/a"
    with ShardWriter(tmp_path / "00000.jsonl.gz") as w:
        w.write(d.to_dict())
    (back,) = [Document.from_dict(r) for r in read_docs(tmp_path / "00000.jsonl.gz")]
    assert back == d
    with pytest.raises(ValueError, match="'tool'"):
        Document.from_dict({**d.to_dict(), "tool": "ls"})


def test_document_converts_to_and_from_datatrove():
    datatrove = pytest.importorskip("datatrove.data")
    d = Document.create("arxiv", "arxiv:2501.13629", "Sigma: DiffQKV attention.", metadata={"category": "os_kernel"})
    dt = d.to_datatrove()
    assert isinstance(dt, datatrove.Document) and dt.id == d.id and dt.text == d.text
    assert dt.metadata == {"category": "os_kernel", "source": "arxiv", "url": "arxiv:2501.13629"}
    assert Document.from_datatrove(dt) == d
    plain = datatrove.Document(text="t", id="x1", metadata={"lang": "en"})
    assert Document.from_datatrove(plain, source="fineweb") == Document("x1", "t", "fineweb", None, {"lang": "en"})
