"""The `refine:` section of a curation recipe, and the built-in stage order.

    refine:
      stages: [normalize, heuristics, langid, dedup_exact, classify, minhash, decontam]  # run in this order
      executor: ray
      classifiers: {...}          # how the fastText classifiers are trained (used by classify)
      <stage name>: {...}         # each stage's own section, validated by that stage's Config

`BUILTIN` is the one list of built-in stages; a stage registered with `curation.refine.registry.register`
is configured the same way. Every registered stage gets its section with defaults when the recipe
leaves it out, so `config.section("minhash")` (or `config.minhash`) always answers.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from minisigma.core.recipes import Section

from curation.refine.classifiers import ClassifiersConfig
from curation.refine.classify import Classify
from curation.refine.decontam import Decontam
from curation.refine.dedup_run import DedupExact, MinHashDedup
from curation.refine.heuristics import Heuristics
from curation.refine.langid import LangId
from curation.refine.normalize import Normalize
from curation.refine.registry import REGISTRY, register

# classify runs before minhash so that the MinHash keep rule can prefer the higher quality score.
BUILTIN = [Normalize, Heuristics, LangId, DedupExact, Classify, MinHashDedup, Decontam]
for _stage in BUILTIN:
    register(_stage)
DEFAULT_STAGES = [s.name for s in BUILTIN]


class RefineConfig(Section):
    """The refine section: which registered stages run, in which order, and each one's section."""

    model_config = ConfigDict(extra="allow", validate_default=True)  # stage sections, checked below

    stages: list[str] = list(DEFAULT_STAGES)
    executor: Literal["ray", "local"] = "ray"
    classifiers: ClassifiersConfig = ClassifiersConfig()

    @model_validator(mode="wrap")
    @classmethod
    def _stage_sections(cls, data: Any, handler):
        """Validate `refine.<stage>` with that stage's Config (defaults when absent); other keys fail."""
        if isinstance(data, RefineConfig):
            return data
        if not isinstance(data, dict):
            return handler(data)
        data, errors = dict(data), []
        for key in [k for k in data if k not in cls.model_fields]:
            if key not in REGISTRY:
                errors.append(InitErrorDetails(type="extra_forbidden", loc=(key,), input=data[key]))
                continue
            try:
                data[key] = REGISTRY[key].Config.model_validate(data[key] if data[key] is not None else {})
            except ValidationError as e:
                errors += [InitErrorDetails(type=err["type"], loc=(key, *err["loc"]), input=err["input"],
                                            ctx=err.get("ctx", {})) for err in e.errors()]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        for name, stage in REGISTRY.items():
            data.setdefault(name, stage.Config())
        return handler(data)

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, stages: list[str]) -> list[str]:
        unknown = [s for s in stages if s not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown refine stage {unknown[0]!r} (known: {', '.join(REGISTRY)})")
        if len(set(stages)) != len(stages):
            raise ValueError("a stage is listed twice")
        return stages

    def section(self, name: str) -> Section:
        """The recipe section of stage `name` (its defaults when the recipe left it out)."""
        return getattr(self, name, None) or REGISTRY[name].Config()


__all__ = ["BUILTIN", "DEFAULT_STAGES", "RefineConfig"]
