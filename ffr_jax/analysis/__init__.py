"""Seeing why: embedding and saliency analysis of trained runs.

* :mod:`ffr_jax.analysis.run_loading`: a finished run's config, model and best
  variables, from its workdir.
* :mod:`ffr_jax.analysis.samples`: which real and synthetic images to look at
  (held-out synthetic images by default).
* :mod:`ffr_jax.analysis.embeddings`: t-SNE of real vs synthetic embeddings,
  a linear real-vs-synthetic probe and per-group centroid distances.
* :mod:`ffr_jax.analysis.rise`: RISE saliency maps, sharded over devices.

The command is ``python -m ffr_jax.analyze`` (see docs/analysis.md).
"""
