"""Transformers from a configuration with random weights, exported with dynamic axes.

``encoder`` is a BERT (Hugging Face's ``BertModel``) and ``decoder`` a Llama
(``LlamaForCausalLM``, grouped-query attention, rotary positions, SwiGLU, RMSNorm), both
exported by ``torch.onnx.export(..., dynamo=True)`` with dynamic batch and sequence axes (the
TorchScript exporter bakes the sequence length into its Reshapes). ``groups`` writes
variable-length token data as ``--data`` takes it: a folder of ``.npz`` files, one sequence
length per file, with padded samples in ``attention_mask``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

VOCAB = 1000


def _export(module, path: Path, outputs: list[str], max_len: int) -> Path:
    import torch

    ids = torch.randint(0, VOCAB, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=max_len)
    with warnings.catch_warnings():  # the exporter's notices
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (ids, mask),
            str(path),
            dynamo=True,
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            input_names=["input_ids", "attention_mask"],
            output_names=outputs,
            verbose=False,
        )
    return path


def encoder_module(
    hidden: int = 64, layers: int = 2, heads: int = 4, vocab: int = VOCAB, max_len: int = 128
):
    """A BERT encoder with random weights (eval mode)."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * hidden,
        max_position_embeddings=max_len,
    )
    return BertModel(config).eval()


def decoder_module(
    hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = VOCAB
):
    """A Llama decoder (logits only, no cache) with random weights (eval mode)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=-(-int(hidden * 8 / 3) // 128) * 128,  # groups of 128 fit
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        use_cache=False,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def logits_of(model):
    """``forward(input_ids, attention_mask) -> logits`` of a causal language model."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    return Logits(model)


def encoder(path: Path, **config) -> Path:
    """Export :func:`encoder_module` to ``path`` (inputs ``input_ids``, ``attention_mask``)."""
    return _export(encoder_module(**config), path, ["last_hidden_state", "pooler_output"], 128)


def decoder(path: Path, **config) -> Path:
    """Export :func:`decoder_module` to ``path`` (output ``logits``)."""
    return _export(logits_of(decoder_module(**config)), path, ["logits"], 512)


def token_batch(rng, samples: int, length: int, pad: bool = True) -> dict[str, np.ndarray]:
    """Random token ids and a mask that pads the first sample's second half."""
    mask = np.ones((samples, length), np.int64)
    if pad and length > 1:
        mask[0, length // 2 :] = 0
    return {"input_ids": rng.integers(0, VOCAB, (samples, length)), "attention_mask": mask}


def groups(folder: Path, lengths, samples: int = 4, seed: int = 0) -> Path:
    """Write one ``.npz`` group of ``samples`` sequences per length of ``lengths``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, length in enumerate(lengths):
        np.savez(folder / f"group{k:03d}.npz", **token_batch(rng, samples, length))
    return folder
