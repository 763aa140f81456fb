"""Deformable registration: dense correlation, coupled convex optimisation, Adam refinement."""
