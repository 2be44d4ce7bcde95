"""Refinement: turn extracted documents into a clean training set.

One small module per stage (normalize, heuristics, langid, dedup_exact, classify, minhash, decontam),
each a `minisigma.core.runner.Stage` with a pydantic config; `pipeline.refine` runs them in order.
"""
