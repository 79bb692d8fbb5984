"""data_prep: from raw domain text to a curated corpus, a tokenizer and packed token shards.

Knows nothing of the model or of training: its products are files (corpus, tokenizer.json, shards + manifest).
"""
