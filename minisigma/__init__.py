"""minisigma: system-domain data curation on Ray and a miniature Sigma (DiffQKV) model.

The base layer (recipes, shards, manifests, the Ray stage runner) is `minisigma.core`; the
the three parts live in the top-level packages ``curation``, ``synth`` and ``model``.
"""

__version__ = "0.1.0"
