"""BERT-style text classification example."""
