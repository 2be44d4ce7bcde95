"""How `minisigma curate` (curation.pipeline) runs the internet source adapters.

Each runner runs its adapter's stage into <run>/sources/<name>/. An arXiv or CCF source with a
`fulltext:` section is harvested into <run>/harvest/<name>/ instead, and the full-text stage
(curation.sources.fulltext: the polite crawler to each paper's PDF, PDF/HTML text extraction)
writes the same records, with their full text where one was reached, into <run>/sources/<name>/.
"""

from __future__ import annotations

from curation.sources.arxiv import ArxivStage
from curation.sources.blogs import BlogsStage
from curation.sources.ccf import CcfStage
from curation.sources.fulltext import FullText
from curation.sources.stackexchange import StackExchangeStage
from minisigma.core.shards import list_shards

STAGES = {"arxiv": ArxivStage, "ccf": CcfStage, "stackexchange": StackExchangeStage, "blogs": BlogsStage}


def run_adapter(src, ctx) -> list[dict]:
    section = src.model_dump(mode="json", by_alias=True)
    fulltext = getattr(src, "fulltext", None)
    out = ctx.run_dir / ("harvest" if fulltext is not None else "sources") / src.name
    ctx.run(STAGES[src.type](src), [], out, recipe_section=section)
    if fulltext is not None:
        ctx.run(FullText(fulltext, src.type), list_shards(out), ctx.run_dir / "sources" / src.name,
                recipe_section=section)
    return []


RUNNERS = {name: run_adapter for name in STAGES}
