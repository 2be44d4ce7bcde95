"""minisigma: system-domain data curation on Ray and a miniature Sigma (DiffQKV) model.

Three layers, imports pointing down only (import-linter checks it):
- ``minisigma.core``: the base (recipes, shards, manifests, the Ray stage runner, errors, progress);
- ``curation``, ``synth``, ``model``: the domains, each built on the base;
- ``minisigma.cli``, ``minisigma.reproduce``, ``minisigma.report``: the application composing them.
"""

__version__ = "0.1.0"
