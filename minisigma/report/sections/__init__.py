"""One module per report section: each reads its stage's outputs through that stage's own reader (see report.runfiles) and renders HTML."""
