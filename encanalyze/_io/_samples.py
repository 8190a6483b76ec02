"""Built-in sample tensors: deterministic, realistic stand-ins for weights and activations."""

from __future__ import annotations

import numpy as np

__all__ = ["sample_tensors"]


def sample_tensors(seed: int = 0) -> dict[str, np.ndarray]:
    """Return named float32 sample tensors (NumPy), the same for every call with one ``seed``.

    ``conv.weight`` (64, 32, 3, 3) and ``fc.weight`` (256, 512) are weight-like with per-channel
    scales; ``relu.out`` (32, 512) is a post-ReLU activation; ``attn.logits`` (8, 128, 128) is
    heavy-tailed (Student t, 3 degrees of freedom); ``ffn.out`` (64, 768) has a few large
    outliers in two channels; ``const`` (16, 16) is constant.
    """
    rng = np.random.default_rng(seed)
    conv = rng.standard_normal((64, 32, 3, 3)) * rng.uniform(0.01, 0.2, (64, 1, 1, 1))
    fc = rng.standard_normal((256, 512)) * rng.uniform(0.02, 0.1, (256, 1))
    relu = np.maximum(rng.standard_normal((32, 512)) * 1.5 + 0.3, 0.0)
    logits = rng.standard_t(3, (8, 128, 128)) * 2.0
    ffn = rng.standard_normal((64, 768))
    ffn[rng.integers(0, 64, 6), 17] = rng.uniform(40, 80, 6)
    ffn[rng.integers(0, 64, 3), 501] = -rng.uniform(30, 60, 3)
    const = np.full((16, 16), 0.75)
    tensors = {
        "conv.weight": conv,
        "fc.weight": fc,
        "relu.out": relu,
        "attn.logits": logits,
        "ffn.out": ffn,
        "const": const,
    }
    return {name: t.astype(np.float32) for name, t in tensors.items()}
