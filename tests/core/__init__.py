"""Tests of the base layer (minisigma.core)."""
