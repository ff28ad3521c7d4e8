"""Models: loading causal LMs and tokenizers by hub id or local folder."""
