"""Training of the learned refinement network on synthetic data only (the SynthMorph recipe).

* :mod:`remind2reg.training.labels`: random label maps (argmax of smoothed noise, randomly warped);
* :mod:`remind2reg.training.deform`: random smooth stationary-velocity deformations;
* :mod:`remind2reg.training.intensity`: MR-like and ultrasound-like images of a label map;
* :mod:`remind2reg.training.train`: pairs, loss, the resumable training loop, validation, export.

Every generator takes a ``torch.Generator`` (reproducible) and works on batches of tensors
``(B, C, D, H, W)``; fields are in voxels, fixed -> moving, as in :mod:`remind2reg.inference.core.fields`.
"""
