"""The stages of the registration pipeline, one module each, in the order they run.

Each stage is a function that takes typed inputs and returns a new typed result; no stage
modifies another's result. :func:`remind2reg.inference.pipeline.run_pipeline` calls them in
this order and collects their timings and notes:

1. :mod:`.sector`: the US field of view and the working grid (a crop at about 1 mm);
2. :mod:`.features`: the images on the working grid and their MIND-SSC features;
3. :mod:`.global_alignment`: an optional rigid/affine transform per group of sequences
   (MIND block matching or ``reg_aladin``), and the MR pre-warped by it;
4. :mod:`.deformable`: coupled convex optimisation, then Adam, fused across sequences;
5. :mod:`.refinement`: the optional learned residual;
6. :mod:`.guard`: the input alignment is kept where the result does not raise the NMI;
7. :mod:`.embedding`: the working-grid result as challenge-format fields on the full grid.

Shared types: :mod:`.transforms` (:class:`~.transforms.Alignment`,
:class:`~.transforms.GroupTransform`: one transform shared by the sequences of a group).
"""
