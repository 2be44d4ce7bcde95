"""The curation recipe: which sources, how to crawl and extract, how to refine.

Source sections are a tagged union on `type`; each source module defines its own section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Field

from curation.crawl import CrawlConfig
from curation.extract import ExtractConfig
from curation.refine.config import RefineConfig
from curation.sources.arxiv import ArxivSource
from curation.sources.blogs import BlogsSource
from curation.sources.ccf import CcfSource
from curation.sources.datatrove_reader import DatatroveSource
from curation.sources.localdocs import LocalDocsSource
from curation.sources.stackexchange import StackExchangeSource
from minisigma.core.recipes import Section, load_recipe
from minisigma.core.shards import FORMATS


class RayConfig(Section):
    address: str | None = None  # None: RAY_ADDRESS or a local Ray; "auto" joins a running `ray start` cluster
    executor: Literal["ray", "local"] = "ray"  # "local": in-process, one shard after another (debugging)


SourceConfig = Annotated[Union[LocalDocsSource, ArxivSource, CcfSource, StackExchangeSource, BlogsSource,
                               DatatroveSource],
                         Field(discriminator="type")]


class CurationRecipe(Section):
    name: str
    description: str = ""
    ray: RayConfig = RayConfig()
    sources: list[SourceConfig]
    crawl: CrawlConfig = CrawlConfig()
    extract: ExtractConfig = ExtractConfig()
    refine: Optional[RefineConfig] = None  # curation.refine.pipeline: normalize ... decontam
    # the shards of every document stage (sources, extract, refine, curated): NNNNN.jsonl.gz or
    # NNNNN.parquet (minisigma.core.shards); package records, WARCs and dedup work files keep theirs
    shard_format: Literal["jsonl.gz", "parquet"] = "jsonl.gz"

    @property
    def shard_suffix(self) -> str:
        return FORMATS[self.shard_format]


def load(path: str | Path) -> CurationRecipe:
    return load_recipe(path, CurationRecipe)
