"""Explainability: CAMs (grad-cam package), embeddings, t-SNE / UMAP, overlays, shortcut audit.

Functions return arrays; plotting functions take arrays and return a matplotlib Figure.
"""
