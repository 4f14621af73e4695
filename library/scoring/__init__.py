"""Measuring a LoRA against its base model: fixed-noise fidelity and prior drift per epoch.

A layer below both the trainer (which scores its own network at epoch saves) and
the tools above it (`lorasmith evaluate`, sweeps, the GUI): it may use the models,
LoRA loading and the sampler's LoRA stack, never library.training or anything above.
"""
