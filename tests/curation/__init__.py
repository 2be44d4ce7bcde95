"""Tests of curation/."""
