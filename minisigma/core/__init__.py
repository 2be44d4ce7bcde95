"""The base layer: what every domain builds on, knowing none of them.

Recipes (YAML validated by pydantic), shards and the document record, manifests, the Ray stage
runner, user errors and progress. Nothing here imports ``curation``, ``synth``, ``model`` or the
application modules of ``minisigma`` (cli, reproduce, report); import-linter checks that in CI.
"""
