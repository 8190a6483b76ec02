"""Issue 35: every Linear weight of a Llama-style decoder in every format, against torchao.

The decoder (Hugging Face ``LlamaForCausalLM`` from a configuration, random weights drawn
with its own initializer, then every weight given heavier tails as trained weights have:
``w * (1 + |t_3|)``) has its Linear weights (torch's ``(out, in)``: blocks and groups along
``in``) quantized by encanalyze, by every method that applies, and by torchao in the same run:

- INT8 per channel: ours min-max / MSE / SQNR (the int8 symmetric grid, ``amax / 127``);
  torchao ``quantize_(Int8WeightOnlyConfig())`` (``amax / 127.5``).
- INT4 groups of 128: ours ``int4_g128`` min-max / MSE; torchao
  ``quantize_(IntxWeightOnlyConfig(torch.int4, PerGroup(128)))`` (its CPU path; the
  ``Int4WeightOnlyConfig`` kernels need CUDA or ``mslk`` here).
- FP8 E4M3 per channel: ours min-max / MSE / SQNR (``float8_weight``); torchao
  ``quantize_(Float8WeightOnlyConfig(granularity=PerRow()))``.
- MXFP8 E4M3, MXFP4: ours floor / MSE exponents; torchao ``to_mx`` (floor): bit-equal expected.
- NVFP4: ours amax / MSE block scales (two-level); torchao ``nvfp4_quantize``: bit-equal
  expected.

Then activations per token (after the weights, or alone with ``--activations-only``): the
decoder's Linear inputs quantized per token at run time with per-channel weights, W8A8 by
``encanalyze.torch.quantize(..., {"per_token_activations": True, "symmetric": True})`` against
torchao's ``Int8DynamicActivationInt8WeightConfig`` (per-token int8 activations), FP8 E4M3 by
``number_format="float8_e4m3fn"`` against ``Float8DynamicActivationFloat8WeightConfig(PerRow)``,
and encanalyze's static per-tensor activations (``quantize``'s default) for contrast: the
logits' SQNR on held-out tokens and the time to quantize (best of 3; ours calibrates its weights
on one batch, which its call needs).

Per format and method: the weight SQNR (dB of all weights together, and the worst layer's),
whether it equals torchao's bit for bit, and the time for every weight, quantized and
dequantized (best of 3, one run where it took over 5 s; torchao's ``quantize_`` on a fresh
copy of the model each time; ours through :mod:`encanalyze.formats`, as the model job's
blocks are, tested equal).

    python benchmarks/bench_llm_weights.py            # hidden 512, 4 layers (28M values)
    python benchmarks/bench_llm_weights.py --quick    # hidden 256, 2 layers
    python benchmarks/bench_llm_weights.py --activations-only
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine  # noqa: E402


def decoder(hidden: int, layers: int):
    import torch

    from tests.transformer_models import decoder_module

    heads = hidden // 64
    model = decoder_module(hidden=hidden, layers=layers, heads=heads, kv_heads=4, vocab=32000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                t = torch.distributions.StudentT(3.0).sample(m.weight.shape)
                m.weight.mul_(1 + t.abs().clamp(max=50))
    return model


def linears(model) -> dict:
    import torch

    return {
        n: m.weight.detach().float().contiguous()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
    }


def sqnr(pairs) -> tuple[float, float]:
    """(all weights together, worst weight) SQNR in dB of ``[(w, dequantized), ...]``."""
    sig = noise = 0.0
    worst = np.inf
    for w, d in pairs:
        w, d = np.asarray(w, np.float64), np.asarray(d, np.float64)
        s, n = float(np.sum(w * w)), float(np.sum((w - d) ** 2))
        sig, noise = sig + s, noise + n
        worst = min(worst, 10 * np.log10(s / n))
    return 10 * np.log10(sig / noise), worst


def best_time(fn, repeat: int = 3):
    """``fn()`` and its best time of ``repeat`` runs (one run where it took over 5 s)."""
    out, best = None, np.inf
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
        if best > 5:
            break
    return out, best


# -- encanalyze --------------------------------------------------------------------------------
def ours_int8(weights: dict, method: str) -> list:
    from encanalyze._calibration import weight_methods, weight_or_reason

    methods = weight_methods(method, None)
    out = []
    for name, w in weights.items():
        e = weight_or_reason(name, w.numpy(), 0, methods, 255, True)
        scale = np.asarray(e.scale, np.float32).reshape(-1, 1)
        offset = np.asarray(e.offset, np.float32).reshape(-1, 1)
        q = np.clip(np.rint(w.numpy() / scale) - offset, 0, 255)
        out.append((w.numpy(), (q + offset) * scale))
    return out


def ours_fp8(weights: dict, method: str) -> list:
    """FP8 E4M3 per output channel: amax scales, or the histogram search (``float8_weight``)."""
    from encanalyze import formats
    from encanalyze.onnx._float8 import float8_weight

    out = []
    for name, w in weights.items():
        x = w.numpy()
        if method == "minmax":
            out.append((x, formats.quantize_scaled(x, formats.E4M3FN, axis=1)))
            continue
        e = float8_weight(name, x, 0, formats.E4M3FN, (method,))
        scale = np.asarray(e.scales[method], np.float32).reshape(-1, 1)
        out.append((x, formats.quantize_scaled(x, formats.E4M3FN, scale=scale)))
    return out


def ours_blocks(weights: dict, scheme: str, fmt, method: str) -> list:
    """Blocks along ``in`` (a Linear weight's last axis) by :mod:`encanalyze.formats`."""
    from encanalyze import formats

    out = []
    for w in weights.values():
        x = w.numpy()
        if scheme == "mx":
            q, e = formats.mx_quantize(x, fmt, mode="floor" if method == "minmax" else "mse")
            d = formats.mx_dequantize(q, e)
        elif scheme == "nvfp4":
            ts = formats.nvfp4_tensor_scale(x)
            q, b = formats.nvfp4_quantize(x, ts, mode="amax" if method == "minmax" else "mse")
            d = formats.nvfp4_dequantize(q, b, ts)
        else:
            q, s = formats.int_block_quantize(x, fmt, mode="amax" if method == "minmax" else "mse")
            d = formats.int_block_dequantize(q, s)
        out.append((x, d))
    return out


# -- torchao -----------------------------------------------------------------------------------
def torchao_quantize(model, config) -> list:
    import torch
    from torchao.quantization import quantize_

    fresh = copy.deepcopy(model)
    originals = linears(fresh)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_(fresh, config)
    out = []
    for n, m in fresh.named_modules():
        if isinstance(m, torch.nn.Linear):
            out.append((originals[n].numpy(), m.weight.dequantize().float().numpy()))
    return out


def torchao_mx(weights: dict, elem) -> list:
    import torch
    from torchao.prototype.mx_formats import mx_tensor as mx
    from torchao.prototype.mx_formats.config import ScaleCalculationMode

    out = []
    for w in weights.values():
        scale, data = mx.to_mx(w, elem, 32, ScaleCalculationMode.FLOOR)
        out.append((w.numpy(), mx.to_dtype(data, scale, elem, 32, torch.float32).numpy()))
    return out


def torchao_nvfp4(weights: dict) -> list:
    import torch
    from torchao.prototype.mx_formats import nvfp4_tensor as nv

    out = []
    for w in weights.values():
        ts = nv.per_tensor_amax_to_scale(w.abs().max())
        scales, packed = nv.nvfp4_quantize(w, 16, ts)
        hp = nv.NVFP4Tensor(packed, scales, 16, torch.float32, per_tensor_scale=ts)
        out.append((w.numpy(), hp.dequantize().numpy()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--activations-only", action="store_true", help="the per-token table")
    args = parser.parse_args()
    import torch
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
    )
    from torchao.quantization.granularity import PerGroup, PerRow

    from encanalyze import formats

    torch.set_num_threads(torch.get_num_threads())
    hidden, layers = (256, 2) if args.quick else (512, 4)
    model = decoder(hidden, layers)
    weights = linears(model)
    count = sum(w.numel() for w in weights.values())
    print(f"# bench_llm_weights ({machine()}; torch {torch.__version__})")
    print(f"Llama decoder, hidden {hidden}, {layers} layers: {len(weights)} Linear weights, "
          f"{count / 1e6:.1f}M values\n")  # fmt: skip
    if args.activations_only:
        activations_table(model)
        return
    print("| format | method | weight SQNR (all / worst layer) | bit-equal to torchao | time |")
    print("| --- | --- | --- | --- | --- |")

    def each(fn, methods):
        return {m: (lambda m=m: fn(m)) for m in methods}

    three, two = ("minmax", "mse", "sqnr"), ("minmax", "mse")
    int4 = IntxWeightOnlyConfig(torch.int4, PerGroup(128))
    rows = [
        ("INT8 per channel", each(lambda m: ours_int8(weights, m), three),
         lambda: torchao_quantize(model, Int8WeightOnlyConfig()), "Int8WeightOnlyConfig"),
        ("INT4 groups of 128",
         each(lambda m: ours_blocks(weights, "int_groups", formats.INT4, m), two),
         lambda: torchao_quantize(model, int4), "IntxWeightOnlyConfig(int4, PerGroup(128))"),
        ("FP8 E4M3 per channel", each(lambda m: ours_fp8(weights, m), three),
         lambda: torchao_quantize(model, Float8WeightOnlyConfig(granularity=PerRow())),
         "Float8WeightOnlyConfig(PerRow)"),
        ("MXFP8 E4M3", each(lambda m: ours_blocks(weights, "mx", formats.E4M3FN, m), two),
         lambda: torchao_mx(weights, torch.float8_e4m3fn), "to_mx (floor)"),
        ("MXFP4", each(lambda m: ours_blocks(weights, "mx", formats.E2M1, m), two),
         lambda: torchao_mx(weights, torch.float4_e2m1fn_x2), "to_mx (floor)"),
        ("NVFP4", each(lambda m: ours_blocks(weights, "nvfp4", formats.E2M1, m), two),
         lambda: torchao_nvfp4(weights), "nvfp4_quantize (two-level)"),
    ]  # fmt: skip
    for label, ours, theirs, what in rows:
        ref, t_ref = best_time(theirs)
        all_db, worst = sqnr(ref)
        print(f"| {label} | torchao {what} | {all_db:.2f} / {worst:.2f} dB | - | {t_ref:.2f} s |",
              flush=True)  # fmt: skip
        for method, fn in ours.items():
            got, t = best_time(fn)
            all_db, worst = sqnr(got)
            same = all(np.array_equal(a[1], b[1]) for a, b in zip(got, ref))
            equal = "yes" if same else "no"
            print(f"| {label} | encanalyze {method} | {all_db:.2f} / {worst:.2f} dB | "
                  f"{equal} | {t:.2f} s ({t / t_ref:.2f}x) |", flush=True)  # fmt: skip
    activations_table(model)


def token_batches(count: int, seed: int) -> list:
    """``count`` batches of 4 x 64 random tokens (the decoder's vocabulary) with a mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [
        {"input_ids": torch.randint(0, 32000, (4, 64), generator=g),
         "attention_mask": torch.ones(4, 64, dtype=torch.long)}
        for _ in range(count)
    ]  # fmt: skip


def activations_table(model) -> None:
    """Per-token activations against torchao's dynamic configurations: logits SQNR and time."""
    import torch
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Int8DynamicActivationInt8WeightConfig,
        quantize_,
    )
    from torchao.quantization.granularity import PerRow

    from encanalyze.torch import quantize

    calib, held = token_batches(1, 1), token_batches(2, 2)
    with torch.no_grad():
        want = [model(**b).logits for b in held]

    def logits_sqnr(quantized) -> str:
        sig = noise = 0.0
        with torch.no_grad():
            for w, b in zip(want, held):
                got = quantized(**b)
                got = got.logits if hasattr(got, "logits") else got["logits"]
                sig += float((w.double() ** 2).sum())
                noise += float(((w.double() - got.double()) ** 2).sum())
        return f"{10 * np.log10(sig / noise):.2f} dB"

    def torchao_model(config):
        peer = copy.deepcopy(model)
        quantize_(peer, config)
        return peer

    def ours(config):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return quantize(model, calib, config)

    per_token = {"per_token_activations": True, "activations": "minmax", "weights": "minmax"}
    rows = [
        ("W8A8, activations per token", "torchao Int8DynamicActivationInt8WeightConfig",
         lambda: torchao_model(Int8DynamicActivationInt8WeightConfig())),
        ("W8A8, activations per token", "encanalyze per_token_activations, symmetric int8",
         lambda: ours({**per_token, "symmetric": True})),
        ("W8A8, activations per tensor", "encanalyze quantize default (static, auto)",
         lambda: ours({})),
        ("FP8 E4M3, activations per token",
         "torchao Float8DynamicActivationFloat8WeightConfig(PerRow)",
         lambda: torchao_model(Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))),
        ("FP8 E4M3, activations per token", "encanalyze per_token_activations, float8_e4m3fn",
         lambda: ours({**per_token, "number_format": "float8_e4m3fn"})),
    ]  # fmt: skip
    print("\n| scheme | by | held-out logits SQNR | time to quantize |")
    print("| --- | --- | --- | --- |")
    for scheme, who, make in rows:
        try:
            quantized, t = best_time(make)
        except Exception as err:  # a peer's kernels this machine lacks: say how it failed
            print(f"| {scheme} | {who} | failed: {type(err).__name__}: {str(err)[:90]} | - |")
            continue
        print(f"| {scheme} | {who} | {logits_sqnr(quantized)} | {t:.2f} s |", flush=True)


if __name__ == "__main__":
    main()
