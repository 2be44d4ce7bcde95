"""Evaluation: perplexity / bits per byte, the CMDGen-mini benchmark with the paper's metrics, and
the sandbox that executes generated and reference commands.

Modules (each with one job):
    metrics     the AIMicius CMDGen metrics (CMD score, Output score, Calibration, Exact match,
                Success, Accuracy) and their aggregation
    sandbox     bubblewrap-based isolated execution of shell commands with resource limits
    cmdgen      the task-file format, the prompt, generation + execution + scoring of a checkpoint
    perplexity  per-source / per-category loss, perplexity and bits per byte on held-out text
    recipe      the `minisigma eval RECIPE` recipe and its runner
"""
