"""Multi-process all-reduce over gloo ranks on the CPU, spawned by the test."""

import numpy as np
import pytest

import encanalyze as ea
from tests import _dist_worker as worker

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _spawn(target, tmp_path, world: int, *args) -> None:
    """Run ``target(rank, world, rendezvous file, tmp_path, *args)`` on ``world`` processes."""
    import torch.multiprocessing as mp

    rendezvous = str(tmp_path / "rendezvous")
    mp.spawn(target, args=(world, rendezvous, str(tmp_path), *args), nprocs=world, join=True)


def _state(analyzer):
    arrays = {k: np.asarray(v) for k, v in analyzer.state_dict()["state"].items()}
    key = "lo" if "lo" in arrays else "min"
    arrays.setdefault("num_nan", np.zeros(np.shape(arrays[key]), np.int64))
    return arrays


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow  # (the fast run's 2-rank runs: calibrate over ranks, the lockstep)
@pytest.mark.parametrize("world", [2, 3])
def test_all_reduce_equals_one_process(tmp_path, world):
    _spawn(worker.run, tmp_path, world)
    batches, parts = worker.dataset(world)
    for method in worker.METHODS:
        ranks = [ea.load(tmp_path / f"{method}-{r}.npz") for r in range(world)]
        for other in ranks[1:]:  # every rank holds the same merged statistics
            _assert_same(_state(other), _state(ranks[0]))
        if method == "minmax":  # equals one process that saw the whole dataset
            whole = worker.make(method)
            for b in batches:
                whole.update_stats(b)
            want = whole
        else:  # equals merging the per-rank analyzers in one process
            local = []
            for part in parts:
                a = worker.make(method)
                worker.feed(method, a, part)
                local.append(a)
            want = local[0].merge(*local[1:])
        _assert_same(_state(ranks[0]), _state(want))
        nan = "1 NaN values"  # the NaN seen on one rank
        if method not in ("minmax", "ema"):  # the infinities of the rank without data count
            counts = _state(ranks[0])["counts"]
            values = sum(int(np.count_nonzero(~np.isnan(b))) for b in batches)
            assert counts.sum() == values + np.count_nonzero(~np.isnan(worker.INFINITIES))
            nan = "2 NaN values"  # and the one among them
        with pytest.warns(RuntimeWarning, match=nan):
            got_enc = ranks[0].compute_encodings(255, False)
        with pytest.warns(RuntimeWarning, match=nan):
            want_enc = want.compute_encodings(255, False)
        for g, w in zip(got_enc, want_enc):
            np.testing.assert_array_equal(g, w)


def test_needs_an_initialized_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized")
    from encanalyze.distributed import all_reduce_stats

    with pytest.raises(RuntimeError, match="init_process_group"):
        all_reduce_stats(ea.MinMaxEncodingAnalyzer((1,)))


@pytest.mark.slow  # a docs example: run by the full matrix
def test_docs_torchrun_example(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "examples" / "calibrate_distributed.py"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(script),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [line for line in out.stdout.splitlines() if "values from 2 ranks" in line]
    # 2 ranks x 4 batches x 256 rows, in 64 channel histograms
    assert len(lines) == 2 and all(
        line.split(":")[1].split()[0] == str(2 * 4 * 256 * 64) for line in lines
    )


@pytest.mark.slow  # (the lockstep's own error case stays in the fast run)
def test_mismatched_ranks_raise_the_same_error_everywhere(tmp_path):
    _spawn(worker.run_mismatch, tmp_path, 2)
    for name in worker.MISMATCHES:
        outcomes = {(tmp_path / f"{name}-{r}.txt").read_text() for r in range(2)}
        assert outcomes == {"raised"}, name
    dtypes = {(tmp_path / f"dtype-{r}.txt").read_text() for r in range(2)}
    a16 = ea.MinMaxEncodingAnalyzer((1,))
    a16.update_stats(torch.tensor([1.0, -2.0], dtype=torch.float16))
    bf = ea.MinMaxEncodingAnalyzer((1,))
    bf.update_stats(torch.tensor([1.0, -4.0], dtype=torch.bfloat16))
    assert dtypes == {str(ea.merge_stats(a16.get_stats(), bf.get_stats()).min.dtype)}
    assert dtypes == {"torch.float32"}


@pytest.mark.parametrize("frontend", ["torch", "onnx"])
def test_calibrate_over_ranks_equals_one_process(tmp_path, frontend):
    """Issue 35: encanalyze.torch / encanalyze.onnx calibrate(group=...) on a shard per rank
    gives every rank the same encodings, also for a layer one rank never reached (torch) and
    with one rank given more batches (ONNX): one process's on all the data, bit for bit, the
    histograms themselves too (torch): the ranks update them in lockstep, in one process's
    order (one process re-bins as its range grows; a merge at the end would be within a bin)."""
    if frontend == "onnx":
        pytest.importorskip("onnxruntime")
        import onnx

        from tests import onnx_models

        onnx.save(onnx_models.mlp(), str(tmp_path / "mlp.onnx"))
    world = 2
    _spawn(worker.run_calibrate, tmp_path, world, frontend)
    batches, _ = worker.frontend_batches(frontend, world)
    for method, one in worker.calibrations(frontend, str(tmp_path), batches).items():
        ranks = [dict(np.load(tmp_path / f"{frontend}-{method}-{r}.npz")) for r in range(world)]
        assert all(int(r["num_batches"]) == len(batches) for r in ranks)
        if frontend == "torch":
            assert "head:input" in ranks[1]  # (the head ran on rank 0's batches only)
        want = one.arrays
        if frontend == "torch" and method != "minmax":
            assert "head:input#counts" in want  # the histograms themselves, bit for bit
        for got in ranks:
            assert set(got) - {"num_batches"} == set(want)
            for name, scale in want.items():
                np.testing.assert_array_equal(got[name], ranks[0][name])
                np.testing.assert_array_equal(got[name], scale, err_msg=name)


@pytest.mark.slow  # a docs example: run by the full matrix
def test_docs_torchrun_model_example(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "docs" / "examples"
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script / "calibrate_model_distributed.py")],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    import re

    found = sorted(
        re.findall(r"rank (\d): (\d+) batches from 2 ranks, \S+ scale ([\d.]+)", out.stdout)
    )
    assert [(r, n) for r, n, _ in found] == [("0", "8"), ("1", "8")]  # (lines may interleave)
    assert found[0][2] == found[1][2]  # the same encodings
    assert (tmp_path / "encodings.json").is_file()


@pytest.mark.slow  # five processes and a model job: the full matrix
@pytest.mark.parametrize("activations", ["minmax", "auto"])
def test_the_command_under_torchrun_shards_the_data_and_rank_0_writes(tmp_path, activations):
    import json
    import subprocess
    import sys

    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from tests import onnx_models as om

    onnx.save(om.cnn(), str(tmp_path / "m.onnx"))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(88, 3, 8, 8)).astype("f4") * rng.uniform(0.5, 3, (88, 1, 1, 1))
    np.savez(tmp_path / "d.npz", x=x.astype("f4"))
    common = ["m.onnx", "--data", "d.npz", "--batch-size", "8", "--format", "json",
              "--activation-method", activations, "--qdq-model"]  # fmt: skip

    def run(*launcher, out):
        done = subprocess.run(
            [sys.executable, *launcher, "-m", "encanalyze", "calibrate", *common, f"{out}.onnx",
             "--output", f"{out}.json"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    one = run(out="one")
    two = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", out="two")
    assert one.stdout.count('"config"') == two.stdout.count('"config"') == 1  # rank 0 alone
    assert "calibrated on 2 ranks (9 batches in all)" in two.stderr  # 66 of 88 samples by 8
    want, got = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert got["param_encodings"] == want["param_encodings"]
    mine = {e["name"]: e for e in got["activation_encodings"]}
    assert sorted(mine) == sorted(e["name"] for e in want["activation_encodings"])
    for encoding in want["activation_encodings"]:  # bit for bit (histograms in lockstep)
        assert mine[encoding["name"]] == encoding
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["m.onnx", "d.npz", "one.onnx", "one.json", "two.onnx", "two.json"]
    )  # one set of outputs, no leftovers of either rank


def test_lockstep_histograms_equal_one_process_bit_for_bit(tmp_path):
    """Issue 35: ranks that update their histograms in lockstep (batch t * W + r on rank r)
    hold one process's statistics on the batches in that order, bit for bit: with growing
    ranges, NaN, an empty batch, infinities only, a one-value row, a growth limit and |x|
    histograms, one rank with a batch more. A batch one rank cannot take raises on every
    rank and changes no statistics."""
    world = 2
    _spawn(worker.run_lockstep, tmp_path, world)
    batches, shards = worker.lockstep_batches(world)
    assert len(shards[0]) == len(shards[1]) + 1
    for method in worker.HISTOGRAM_METHODS:
        one = worker.make_analyzer(method)
        for b in batches:
            one.observe(b)
        merged = [worker.make_analyzer(method) for _ in range(world)]
        for a, shard in zip(merged, shards):
            for b in shard:
                a.observe(b)
        at_end = merged[0].merge(*merged[1:])  # what a merge at the end would hold
        assert not np.array_equal(_state(at_end)["counts"], _state(one)["counts"]), method
        for r in range(world):
            got = ea.load(tmp_path / f"lockstep-{method}-{r}.npz")
            _assert_same(_state(got), _state(one))
    for r in range(world):
        outcome = (tmp_path / f"lockstep-error-{r}.txt").read_text()
        assert outcome.startswith("raised, kept True: rank 1 could not take its batch"), outcome
