"""minisigma: system-domain data curation on Ray and a miniature Sigma (DiffQKV) model.

The shared infrastructure lives here (recipes, shards, manifests, the Ray stage runner, the CLI);
the three parts live in the top-level packages ``curation``, ``synth`` and ``model``.
"""

__version__ = "0.1.0"
