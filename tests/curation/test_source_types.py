"""Per-source counts in every manifest, grouped by the paper's Table 9 types in the report."""

from __future__ import annotations

from curation.sources.types import by_type, source_type
from minisigma import report
from minisigma.core import manifest
from minisigma.core.runner import Sink, Stage, Task, run_stage


class Docs(Stage):
    name = "docs"

    def tasks(self, inputs):
        return [Task(0, ("a",)), Task(1, ("b",))]

    def process(self, task: Task, sink: Sink) -> None:
        for i, src in enumerate(["papers", "ccf", "blogs", "manpages", "blogs"]):
            sink.take()
            sink.write({"id": f"{task.index}-{i}", "source": src, "text": "word " * (i + 1), "url": "x",
                        "metadata": {}})


def test_manifest_counts_per_source_and_report_groups_them_by_table9_type(tmp_path):
    m = run_stage(Docs(None), [], tmp_path / "curated", executor="local", progress=False)
    assert m["counts"]["by_source"] == {"blogs": {"docs": 4, "tokens": 16}, "ccf": {"docs": 2, "tokens": 4},
                                        "manpages": {"docs": 2, "tokens": 8}, "papers": {"docs": 2, "tokens": 2}}
    assert manifest.verify(tmp_path / "curated") == []
    types = by_type(m["counts"]["by_source"])
    assert types["papers"] == {"docs": 4, "tokens": 6, "sources": ["ccf", "papers"]}
    assert source_type("stackexchange") == "stackexchange" and source_type("localdocs") == "other"
    html = report.section_sources(tmp_path)
    assert "2 of the paper&#x27;s 4 source types present" in html or "2 of the paper's 4 source types present" in html
    assert "CCF-ranked venues (papers)" in html and "3.3B" in html and "Stack Overflow: no documents" in html
