"""Refinement: turn extracted documents into a clean training set.

One small module per stage (normalize, heuristics, langid, dedup_exact, classify, minhash, decontam).
Each stage is one class: a runner stage (mostly a `minisigma.core.filters.Filter`, which implements only
its keep-or-reason decision) with a recipe section `Config`, made known by name in
`curation.refine.registry`; `curation.refine.config.BUILTIN` is the built-in order and
`pipeline.refine` runs the recipe's `refine.stages` in their order.
"""
