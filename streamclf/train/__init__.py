"""Teach the daemon a genre taxonomy of your own (the `train` extra: torch).

datasets (files, labels, leak-free splits) → features (cached frozen musicnn embeddings per
window) → heads (logistic regression, MLP, attention pooling) → trainer (class-balanced,
early-stopped) → export (one ONNX file with musicnn and the head, plus its card); evaluation
of a model against a dataset needs no torch. docs/training.md walks through it.

The builders of the shipped engines live here too, being the other torch-side work: `fused`
fits the calibrated default model on datasets/genres (docs/model-quality.md), and `split` cuts a
model into the two graphs of incremental inference (docs/incremental.md).
"""
