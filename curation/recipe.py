"""The curation recipe: which sources, how to crawl and extract, how to refine.

Each entry of `sources:` is the section of a registered source type (curation.sources.registry),
chosen by its `type` key and validated by that source module's own section class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import SerializeAsAny, ValidationError, model_validator
from pydantic_core import InitErrorDetails

from curation.crawl import CrawlConfig
from curation.extract import ExtractConfig
from curation.refine.config import RefineConfig
from curation.sources.registry import SOURCES, load_builtin
from minisigma.core.recipes import Section, load_recipe
from minisigma.core.shards import FORMATS


class RayConfig(Section):
    address: str | None = None  # None: RAY_ADDRESS or a local Ray; "auto" joins a running `ray start` cluster
    executor: Literal["ray", "local"] = "ray"  # "local": in-process, one shard after another (debugging)


load_builtin()


class CurationRecipe(Section):
    name: str
    description: str = ""
    ray: RayConfig = RayConfig()
    sources: list[SerializeAsAny[Section]]  # each a registered source type's section (validated below)
    crawl: CrawlConfig = CrawlConfig()
    extract: ExtractConfig = ExtractConfig()
    refine: Optional[RefineConfig] = None  # curation.refine.pipeline: normalize ... decontam
    # the shards of every document stage (sources, extract, refine, curated): NNNNN.jsonl.gz or
    # NNNNN.parquet (minisigma.core.shards); package records, WARCs and dedup work files keep theirs
    shard_format: Literal["jsonl.gz", "parquet"] = "jsonl.gz"
    # fsspec storage options by protocol for a run at a URL, e.g. {s3: {endpoint_url: "http://..."}}
    # (minisigma.core.storage; credentials are better left to the AWS_* environment)
    storage_options: dict[str, dict[str, Any]] = {}

    @model_validator(mode="wrap")
    @classmethod
    def _source_sections(cls, data: Any, handler):
        """`sources[i]` validated by the section class of its `type` (errors keep their dotted path,
        e.g. sources.0.arxiv.windows)."""
        if not isinstance(data, dict) or not isinstance(data.get("sources"), list):
            return handler(data)
        sources, errors = [], []
        for i, item in enumerate(data["sources"]):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in SOURCES:
                errors.append(InitErrorDetails(
                    type="union_tag_invalid", loc=("sources", i), input=item,
                    ctx={"discriminator": "'type'", "tag": str(kind), "expected_tags": ", ".join(map(repr, SOURCES))}))
                continue
            try:
                sources.append(SOURCES[kind].section.model_validate(item))
            except ValidationError as e:
                errors += [InitErrorDetails(type=err["type"], loc=("sources", i, kind, *err["loc"]), input=err["input"],
                                            ctx=err.get("ctx", {})) for err in e.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return handler({**data, "sources": sources})

    @property
    def shard_suffix(self) -> str:
        return FORMATS[self.shard_format]


def load(path: str | Path) -> CurationRecipe:
    return load_recipe(path, CurationRecipe)
