"""Seeing why: embedding and saliency analysis of trained runs (docs/analysis.md)."""
