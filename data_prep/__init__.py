"""data_prep: from raw domain text to a curated corpus, a tokenizer and packed token shards.

Knows nothing of the model or of training: its products are files (corpus, tokenizer.json, shards + manifest).
It builds on slmkit's base modules and plugs into slmkit through the `slmkit.plugins` entry point (data_prep.plugin).
"""
