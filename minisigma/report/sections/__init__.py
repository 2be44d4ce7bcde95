"""One module per report section: each reads its stage's outputs (report.runfiles) and renders HTML."""
