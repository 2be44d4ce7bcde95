"""How `minisigma curate` (curation.pipeline) runs the internet source adapters.

Each runner runs its adapter's stage into <run>/sources/<name>/ and returns the crawl sites it
wants the pipeline's shared crawl stage to visit: the open-access landing pages of CCF papers
(`landing_pages: true`) and the HTML full texts of arXiv papers (`fulltext_html: true`); the
pipeline's extract stage turns those pages into documents of the same source.
"""

from __future__ import annotations

from curation.sources.arxiv import ArxivStage, html_sites
from curation.sources.blogs import BlogsStage
from curation.sources.ccf import CcfStage, landing_page_sites
from curation.sources.datatrove_reader import DatatroveStage
from curation.sources.stackexchange import StackExchangeStage

STAGES = {"arxiv": ArxivStage, "ccf": CcfStage, "stackexchange": StackExchangeStage, "blogs": BlogsStage,
          "datatrove": DatatroveStage}


def run_adapter(src, ctx) -> list[dict]:
    out = ctx.run_dir / "sources" / src.name
    ctx.run(ctx.docs(STAGES[src.type](src)), [], out, recipe_section=src.model_dump(mode="json", by_alias=True))
    if src.type == "ccf" and src.landing_pages:
        return landing_page_sites(out, src.name)
    if src.type == "arxiv" and src.fulltext_html:
        return html_sites(out, src)
    return []


RUNNERS = {name: run_adapter for name in STAGES}
