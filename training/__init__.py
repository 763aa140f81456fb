"""Training of the learned refinement network on synthetic data only (the SynthMorph recipe).

* :mod:`training.labels`: random label maps (argmax of smoothed noise, randomly warped);
* :mod:`training.deform`: random smooth stationary-velocity deformations;
* :mod:`training.intensity`: MR-like and ultrasound-like images of a label map;
* :mod:`training.train`: pairs, loss, the resumable training loop, validation, export.

Every generator takes a ``torch.Generator`` (reproducible) and works on batches of tensors
``(B, C, D, H, W)``; fields are in voxels, fixed -> moving, as in :mod:`inference.deformable.fields`.
"""
