"""Seeing why: embedding and saliency analysis of trained runs.

``run_loading`` finds and restores runs, ``samples`` picks the images,
``embeddings`` and ``rise`` measure, ``reports`` ties them together for
``python -m ffr_jax.analyze`` (docs/analysis.md).
"""
