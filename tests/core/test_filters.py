"""The Filter base: a filter decides on a typed Document; the base reads, counts and writes back."""

from __future__ import annotations

from minisigma.core import manifest
from minisigma.core.document import Document
from minisigma.core.filters import Filter
from minisigma.core.runner import run_stage
from minisigma.core.shards import ShardWriter, read_docs


class Tag(Filter):
    name = "tag"
    seen: list = []

    def decide(self, doc: Document) -> str | None:
        Tag.seen.append(type(doc))
        if "drop" in doc.text:
            return "dropped_word"
        doc.text = doc.text.upper()
        doc.metadata["tagged"] = True
        return None


def test_filter_gets_documents_and_the_base_writes_them_back(tmp_path):
    keep = {"id": "k", "text": "keep me", "source": "s", "url": "u", "metadata": {"a": 1}}
    drop = {"id": "d", "text": "drop me", "source": "s", "url": None, "metadata": {}}
    no_source = {"id": "n", "text": "no source"}
    extra = {"id": "e", "text": "extra key", "source": "s", "lang": "en"}
    no_text = {"id": "t", "source": "s", "metadata": {}}
    with ShardWriter(tmp_path / "in" / "00000.jsonl.gz") as w:
        w.write_all([keep, drop, no_source, extra, no_text])
    m = run_stage(Tag(), [tmp_path / "in" / "00000.jsonl.gz"], tmp_path / "out", executor="local", progress=False)
    assert Tag.seen == [Document, Document]
    assert list(read_docs(tmp_path / "out" / "00000.jsonl.gz")) == [
        {"id": "k", "text": "KEEP ME", "source": "s", "url": "u", "metadata": {"a": 1, "tagged": True}}]
    c = m["counts"]
    assert c["in"] == 5 and c["out"] == 1 and c["dropped"] == {"dropped_word": 1}
    assert c["quarantined"] == {"not_a_document": 2, "no_text": 1}
    rejects = {r["doc"]["id"]: r for r in read_docs(tmp_path / "out" / "rejects" / "00000.jsonl.gz")}
    assert rejects["d"]["doc"] == drop and rejects["n"]["reason"] == "not_a_document"
    assert manifest.verify(tmp_path / "out") == []
