"""Sweeps: train every combination of a few settings and rank the variants (`lorasmith sweep`)."""
