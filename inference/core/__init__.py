"""The ground floor: pure functions that every stage, engine, the trainer and the simulator share.

Nothing here imports a stage, an engine or the pipeline. Modules: ``pointfit`` (rigid/affine
point-set fits, least trimmed squares), ``sector`` (the ultrasound field of view).
"""
