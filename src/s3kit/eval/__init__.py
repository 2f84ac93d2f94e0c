"""Evaluation: SpEAT bias tests, isotropy, t-SNE, utterance embeddings."""
