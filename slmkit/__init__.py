"""slmkit: train small, domain-specific language models from scratch — corpus, tokenizer, model, evaluation, export."""

__version__ = "0.1.0"
