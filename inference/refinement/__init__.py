"""Learned refinement engine: a SynthMorph-style network trained on synthetic data.

* :mod:`~remind2reg.inference.refinement.model`: the U-Net and its weight files;
* :mod:`~remind2reg.inference.refinement.tto`: test-time optimisation of its residual.

The pipeline stage that uses them is :mod:`remind2reg.inference.stages.refinement`.
"""
