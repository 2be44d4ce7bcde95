"""Files shipped inside a Hugging Face export (`minisigma export --format hf`).

`modeling_minisigma.py` is copied verbatim into the exported folder and loaded there by
transformers as remote code; nothing in minisigma imports it.
"""
