"""Learned refinement of the convex-Adam field (a SynthMorph-style network trained on synthetic data).

* :mod:`inference.refinement.model`: the U-Net, its velocity integration, weight files;
* :mod:`inference.refinement.stage`: :class:`RefineSettings` and :func:`refine`, the pipeline stage.
"""
