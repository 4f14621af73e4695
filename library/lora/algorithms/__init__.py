"""Network algorithms, one module each: lora (LoRA/LoCon), loha, lokr, and dora (on top of any).

The registry (which algorithm a file's keys belong to, building an adapter from a file's
tensors, a file module's delta weight) lives in `library.lora.algorithms.registry`.
"""
