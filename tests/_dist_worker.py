"""A rank of the multi-process tests: calibrate a slice of a dataset, then all-reduce."""

from __future__ import annotations

import os

import numpy as np

METHODS = ("minmax", "percentile", "sqnr", "tf_enhanced", "mse", "entropy", "ema")


def dataset(rank_count: int):
    """Per-rank batches: rank r gets every batch i with i % (world - 1) == r; the last rank none."""
    rng = np.random.default_rng(7)
    batches = [rng.standard_normal((16, 6)).astype(np.float32) * (1 + i) for i in range(5)]
    batches[2][3, 1] = np.nan
    parts = [
        [b for i, b in enumerate(batches) if i % (rank_count - 1) == r]
        for r in range(rank_count - 1)
    ]
    return batches, parts + [[]]


def make(method: str):
    import encanalyze as ea

    extra = {
        "percentile": {"num_bins": 32, "percentile": 99},
        "sqnr": {"num_bins": 32, "histogram_growth_limit": 2.0},
        "mse": {"num_bins": 32},
        "entropy": {"num_bins": 256},
    }
    return ea.METHODS[method].analyzer((1, 6), **extra.get(method, {}))


INFINITIES = np.array([[np.inf, -np.inf, np.nan, np.inf, -np.inf, np.inf]], np.float32)


def feed(method: str, analyzer, part: list) -> None:
    """Update with a rank's batches; the rank with none sees an empty batch and, for the
    histogram methods, a batch of infinities only (no range: they wait in the end bins)."""
    for batch in part:
        analyzer.update_stats(batch)
    if not part:
        analyzer.update_stats(np.zeros((0, 6), np.float32))
        if method not in ("minmax", "ema"):
            analyzer.update_stats(INFINITIES)


def run(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    import encanalyze as ea
    from encanalyze.distributed import all_reduce_stats

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _, parts = dataset(world)
        for method in METHODS:
            analyzer = make(method)
            feed(method, analyzer, parts[rank])
            all_reduce_stats(analyzer)
            ea.save(analyzer, os.path.join(out_dir, f"{method}-{rank}.npz"))
    finally:
        dist.destroy_process_group()


MISMATCHES = {
    "shape": lambda rank, ea: ea.PercentileEncodingAnalyzer((4, 1) if rank == 0 else (1, 4)),
    "num_bins": lambda rank, ea: ea.PercentileEncodingAnalyzer((1,), num_bins=64 << rank),
    "class": lambda rank, ea: (
        ea.PercentileEncodingAnalyzer if rank else ea.MinMaxEncodingAnalyzer
    )((1,)),
    "growth": lambda rank, ea: ea.SqnrEncodingAnalyzer((1,), histogram_growth_limit=2.0 + rank),
}


def run_mismatch(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Each mismatch must raise the same ValueError on every rank; float16 + bfloat16 ranks
    agree on float32, as merge_stats does."""
    import torch
    import torch.distributed as dist

    import encanalyze as ea
    from encanalyze.distributed import all_reduce_stats

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for name, make_one in MISMATCHES.items():
            analyzer = make_one(rank, ea)
            analyzer.update_stats(np.ones((4, 4), np.float32) * (rank + 1))
            try:
                all_reduce_stats(analyzer)
                outcome = "merged"
            except ValueError as err:
                outcome = "raised" if "analyzers differ" in str(err) else f"other: {err}"
            with open(os.path.join(out_dir, f"{name}-{rank}.txt"), "w") as f:
                f.write(outcome)
        dtype = torch.float16 if rank == 0 else torch.bfloat16
        analyzer = ea.MinMaxEncodingAnalyzer((1,))
        analyzer.update_stats(torch.tensor([1.0, -2.0 * (rank + 1)], dtype=dtype))
        all_reduce_stats(analyzer)
        with open(os.path.join(out_dir, f"dtype-{rank}.txt"), "w") as f:
            f.write(str(analyzer.get_stats().min.dtype))
    finally:
        dist.destroy_process_group()


class BranchNet:
    """A small torch model whose ``head`` runs only when asked (one rank never asks)."""

    @staticmethod
    def build():
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(3)
                self.body = torch.nn.Linear(6, 8)
                self.head = torch.nn.Linear(8, 3)

            def forward(self, x, head=True):
                h = torch.relu_(self.body(x))  # in place: after the hook saw body's output
                return self.head(h) if head else h

        return Net().eval()

    @staticmethod
    def batches(world: int):
        """Every batch, and each rank's shard: rank r takes batches r, r + world, ...; the
        head runs on rank 0's batches only."""
        import torch

        g = torch.Generator().manual_seed(11)
        batches = [(torch.randn(16, 6, generator=g) * (1 + i), i % world == 0) for i in range(6)]
        return batches, [batches[r::world] for r in range(world)]


def frontend_batches(frontend: str, world: int) -> tuple[list, list]:
    """Every batch of ``frontend``'s model (``"torch"``: BranchNet, ``"onnx"``: the MLP) and
    each rank's shard of them."""
    if frontend == "torch":
        return BranchNet.batches(world)
    batches = mlp_batches()
    return batches, [batches[r::world] for r in range(world)]


def calibrations(frontend: str, out_dir: str, batches: list, group=None) -> dict:
    """Each method's calibration of ``batches`` by ``frontend``'s calibrate (``group``: over
    ranks); the ONNX model is ``out_dir/mlp.onnx``."""
    if frontend == "torch":
        from encanalyze.torch import calibrate

        model, extra = BranchNet.build(), {"batch_to_inputs": lambda b: b}
    else:
        from encanalyze.onnx import calibrate

        model, extra = os.path.join(out_dir, "mlp.onnx"), {}
    options = {"minmax": None, "percentile": {"percentile": 99.0}, "mse": None}
    out = {}
    for m, o in options.items():
        stats: dict = {}
        if frontend == "torch":
            extra["statistics"] = stats
        out[m] = calibrate(
            model, batches, activations=m, activation_options=o, group=group, **extra
        )
        out[m].arrays = {k: np.asarray(e.scale) for k, e in out[m].encodings.items()}
        for name, st in stats.get("stats", {}).items():  # torch: each histogram's counts
            if hasattr(st, "histogram"):
                out[m].arrays[f"{name}#counts"] = st.histogram.numpy()
    return out


def run_calibrate(rank: int, world: int, init_file: str, out_dir: str, frontend: str) -> None:
    """Calibrate this rank's shard with ``frontend``'s calibrate(group=WORLD); save the scales."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _, shards = frontend_batches(frontend, world)
        found = calibrations(frontend, out_dir, shards[rank], dist.group.WORLD)
        for method, result in found.items():
            arrays = dict(result.arrays)
            arrays["num_batches"] = np.asarray(result.num_batches)
            np.savez(os.path.join(out_dir, f"{frontend}-{method}-{rank}.npz"), **arrays)
    finally:
        dist.destroy_process_group()


def mlp_batches() -> list:
    rng = np.random.default_rng(5)
    return [rng.standard_normal((8, 4)).astype(np.float32) * (1 + i) for i in range(5)]


HISTOGRAM_METHODS = ("percentile", "sqnr", "entropy")  # plain, growth-limited, |x|


def lockstep_batches(world: int) -> tuple[list, list]:
    """Every batch (growing ranges, a NaN, an empty batch, infinities only, a point) and each
    rank's shard (every ``world``-th from its rank: one rank gets one batch more)."""
    rng = np.random.default_rng(9)
    batches = [rng.standard_t(4, (32, 6)).astype(np.float32) * (1 + i % 3) for i in range(7)]
    batches[1][4, 2] = np.nan
    batches[3] = np.zeros((0, 6), np.float32)
    batches[4] = INFINITIES.copy()
    batches[5][:, 0] = 2.5  # a row of one value: its own edges are widened
    return batches, [batches[r::world] for r in range(world)]


def run_lockstep(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Each histogram method through Lockstep on this rank's shard; a tensor of a shape the
    analyzer cannot take on rank 1 must raise on every rank and change nothing."""
    import torch.distributed as dist

    import encanalyze as ea
    from encanalyze.distributed import Lockstep

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        _, shards = lockstep_batches(world)
        for method in HISTOGRAM_METHODS:
            made: dict = {}

            def make(name, shape, axis, method=method, made=made):
                made[name] = make_analyzer(method)
                return [made[name]]

            steps = Lockstep(dist.group.WORLD, make)
            for batch in shards[rank]:
                analyzer = made.get("t") or make("t", (1, 6), None)[0]
                steps.add("t", None, analyzer, batch)
                steps.step()
            steps.finish()
            ea.save(made["t"], os.path.join(out_dir, f"lockstep-{method}-{rank}.npz"))
        analyzer = make_analyzer("percentile")
        analyzer.update_stats(shards[0][0])
        before = {k: np.asarray(v).copy() for k, v in analyzer.state_dict()["state"].items()}
        steps = Lockstep(dist.group.WORLD, lambda *a: [analyzer])
        steps.add("t", None, analyzer, np.ones((4, 5 if rank == 1 else 6), np.float32))
        try:
            steps.step()
            outcome = "stepped"
        except ValueError as err:
            after = analyzer.state_dict()["state"]
            kept = all(np.array_equal(np.asarray(after[k]), v) for k, v in before.items())
            outcome = f"raised, kept {kept}: {err}"
        with open(os.path.join(out_dir, f"lockstep-error-{rank}.txt"), "w") as f:
            f.write(outcome)
    finally:
        dist.destroy_process_group()


def make_analyzer(method: str):
    """A histogram analyzer of ``method`` of shape (1, 6) with few bins (re-binning matters)."""
    import encanalyze as ea

    extra = {"sqnr": {"histogram_growth_limit": 2.0}, "entropy": {"start_bin": 16}}
    return ea.METHODS[method].analyzer((1, 6), num_bins=64, **extra.get(method, {}))
