"""The benchmarks in ``benchmarks/`` at tiny sizes, and the ``bptt bench`` entry point.

``benchmarks/`` is a folder of scripts, not part of the installed package: its
modules are imported here by putting the folder on ``sys.path``, as running a
script there does.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_cases  # noqa: E402
import bench_report  # noqa: E402
import bench_step  # noqa: E402
import bench_timing  # noqa: E402
import numpy_variant  # noqa: E402

import bptt  # noqa: E402
from bptt import cli  # noqa: E402
from bptt.cli import bench as bench_command  # noqa: E402
from bptt.execution.numpy_exec import threads  # noqa: E402

TINY = "4x3x8x5x5"
FAST = ["--reps", "1", "--pause", "0", "--min-block", "0", "--gemm-n", "64", "--guard", "0"]
ROW_KEYS = {
    "size", "B", "T", "D", "M", "C", "dtype", "impl", "schedule", "ms_per_step", "iqr_pct",
    "samples_ms", "vs_torch", "chars_per_s", "floor_fraction", "gemm_gflops",
    "floor_fraction_same_time", "gemm_gflops_same_time", "peak_mib", "update_ms",
    "first_call_ms", "calls_per_block", "retried_blocks", "contended_blocks",
}  # fmt: skip


def _script_rows(name: str, *args: str) -> tuple[str, list[list[str]]]:
    """Run benchmarks/NAME with ARGS; its output and the words of each line after the header."""
    out = subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return out, [line.split() for line in out.splitlines()[1:]]


# ---- the table ---------------------------------------------------------------------------


def test_rows_and_columns_numpy_torch_and_jax() -> None:
    rows = bench_step.run_benchmark(
        [TINY], ["float32"], [("numpy", None)], reps=2, pause=0.0, min_block=0.0, gemm_n=64
    )
    impls = [r["impl"] for r in rows]
    assert sorted(impls) == sorted(["bptt", "numpy-only", "torch", "jax", "bptt[jax.jit]"])
    assert impls[:3] == ["bptt", "numpy-only", "torch"]  # the columns that always run
    if importlib.util.find_spec("jax") is None:
        assert {r["status"] for r in rows if "jax" in r["impl"]} == {"not installed"}
    timed = [r for r in rows if "status" not in r]
    flops = 6 * 3 * 4 * 8 * (8 + 5)
    for r in timed:
        assert set(r) == ROW_KEYS
        assert r["ms_per_step"] > 0 and len(r["samples_ms"]) == 2 and r["first_call_ms"] > 0
        assert r["chars_per_s"] == pytest.approx(3 * 4 / (r["ms_per_step"] / 1e3))
        assert r["vs_torch"] > 0 and r["gemm_gflops_same_time"] > 0
        rate = r["gemm_gflops_same_time"] * 1e9
        assert r["floor_fraction_same_time"] == pytest.approx(
            flops / (r["ms_per_step"] / 1e3) / rate
        )
    assert "gemm" not in impls  # a reference, not a contender
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["torch"]["vs_torch"] == 1.0
    assert by_impl["bptt"]["schedule"] == "single"  # what auto picks at this size
    assert by_impl["bptt"]["peak_mib"] > 0 and by_impl["bptt"]["update_ms"] > 0
    jit = by_impl["bptt[jax.jit]"]
    assert "status" in jit or jit["schedule"] == "scan"
    assert not jit.get("status", "").startswith("failed"), jit
    table = bench_report.format_table(rows).splitlines()
    assert table[0] == bench_report.HEADER and len(table) == len(rows) + 1
    assert all(line.startswith(f"{TINY} float32  ") for line in table[1:])
    meta = {**bench_report.environment(), "date": "d", "command": "c", "reps": 2}
    markdown = bench_report.format_markdown(rows, meta).splitlines()
    table_lines = [line for line in markdown if line.startswith("|")]
    assert len(table_lines) == len(rows) + 2  # the column names, the rule, one per row
    assert {line.count("|") for line in table_lines} == {bench_report.COLUMNS.count("|")}


def test_sizes() -> None:
    assert bench_cases.SIZES["S3"].flops == 6 * 200 * 128 * 512 * (512 + 128)
    assert bench_cases.parse_size("2x3x4x5x6") == ("2x3x4x5x6", bench_cases.Size(2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="BxTxDxMxC"):
        bench_cases.parse_size("S9")


def test_numpy_variant_gives_bptts_numbers() -> None:
    """The yardstick must do the same arithmetic as the step it is compared with."""
    _, size = bench_cases.parse_size("5x4x8x6x7")
    params = bptt.init_params(size.M, size.D, size.C, dtype="float64", seed=1, backend="numpy")
    x, y = bench_cases.data(size, seed=1)
    loss, grads, _ = bptt.loss_and_grad(params, x, y, schedule="single")
    for _ in range(2):  # the second call reuses the kept buffers
        theirs, their_grads = numpy_variant.loss_and_grad(params, x, y)
        np.testing.assert_allclose(theirs, loss, rtol=1e-12)
        for k in params:
            np.testing.assert_allclose(their_grads[k], grads[k], rtol=1e-10, atol=1e-14)
    numpy_variant.clear_buffers()


# ---- timing ------------------------------------------------------------------------------


def test_blocks_are_sized_after_two_warm_up_calls() -> None:
    """A slow first call (JAX or CuPy compiling) must not size the timing blocks."""
    calls = []

    def step() -> None:
        calls.append(1)
        time.sleep(0.1 if len(calls) <= 2 else 0.001)  # two slow calls, as if compiling

    case = bench_timing.Case("slow-start", step)
    bench_timing.time_blocks([case], reps=1, pause=0.0, min_block=0.05)
    # sized from a warm call (~1 ms): tens of calls per 50 ms block, not one
    assert case.calls_per_block["step"] >= 10
    assert len(calls) == bench_timing.WARMUP_CALLS + 1 + 1 + case.calls_per_block["step"]


# ---- JAX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_jax_contender_waits_for_its_result_and_leaves_x64_alone(dtype: str) -> None:
    """JAX dispatches asynchronously: a timed call that returned before its result was
    computed would time the dispatch alone. x64 is on inside the calls only."""
    jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    before = jax.config.jax_enable_x64
    _, size = bench_cases.parse_size(TINY)
    case = bench_cases.jax_case(size, dtype)
    loss, _ = result = case.step()
    leaves = jax.tree_util.tree_leaves(result)
    assert leaves and all(leaf.is_ready() for leaf in leaves)
    assert loss.dtype == np.dtype(dtype) and case.first_call_s > 0
    assert jax.config.jax_enable_x64 == before


def test_cases_on_the_jax_backend_wait_for_their_results() -> None:
    """``--backend jax``: bptt's eager step, its update and the floor's matmul return
    only once computed. ``synchronize`` is a no-op on JAX, so an unwaited call timed
    its dispatch: the 2048-square matmul "ran" at 3e6 GFLOP/s, a 0.3 s block held
    millions of calls, and the benchmark printed its header and no row for 15 minutes."""
    jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    _, size = bench_cases.parse_size(TINY)
    bptt_jax = bench_cases.bptt_case(size, "float32", "jax", None)
    gemm = bench_cases.gemm_case("jax", None, "float32", 512)
    for name, call in [("step", bptt_jax.step), ("update", bptt_jax.update), ("gemm", gemm.step)]:
        leaves = jax.tree_util.tree_leaves(call())
        assert leaves and all(leaf.is_ready() for leaf in leaves), name
    rate = bench_cases.gemm_rate("jax", None, "float32", n=512, reps=2)
    assert rate < 1e14, f"{rate / 1e9:.0f} GFLOP/s: the product was not waited for"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bptt_under_jax_jit_matches_numpy(dtype: str) -> None:
    """The bptt[jax.jit] column: bptt's own code, traced and compiled by jax.jit."""
    jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    before = jax.config.jax_enable_x64
    _, size = bench_cases.parse_size(TINY)
    try:
        case = bench_cases.jax_bptt_case(size, dtype)
    finally:
        assert jax.config.jax_enable_x64 == before
    loss, grads, _ = case.step()
    assert case.first_call_s > 0 and case.schedule == "scan"
    params = bptt.init_params(size.M, size.D, size.C, dtype=dtype, seed=0, backend="numpy")
    x, y = bench_cases.data(size, seed=0)
    ref_loss, ref_grads, _ = bptt.loss_and_grad(params, x, y)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    assert loss.dtype == np.dtype(dtype)
    np.testing.assert_allclose(np.asarray(loss), ref_loss, rtol=rtol)
    for k in params:
        np.testing.assert_allclose(np.asarray(grads[k]), ref_grads[k], rtol=rtol, atol=rtol)


def test_the_unrolled_jax_column_is_the_same_step_unrolled() -> None:
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    _, size = bench_cases.parse_size(TINY)
    scanned = bench_cases.jax_bptt_case(size, "float32")
    unrolled = bench_cases.jax_bptt_case(size, "float32", schedule="unrolled")
    assert (unrolled.name, unrolled.schedule) == ("bptt[jax.jit,unrolled]", "unrolled")
    np.testing.assert_allclose(np.asarray(unrolled.step()[0]), np.asarray(scanned.step()[0]),
                               rtol=1e-6)  # fmt: skip


# ---- torch on a GPU run without CUDA -----------------------------------------------------


def test_torch_device_falls_back_to_the_cpu_without_cuda(monkeypatch) -> None:
    """``--backend cupy`` with a torch that has no CUDA: the torch column runs on the CPU."""
    torch = pytest.importorskip("torch")
    resolve = bench_cases.resolve_torch_device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for choice in ("auto", "cuda", "cuda:1"):
        device, note = resolve(choice, True)
        assert device == "cpu" and "runs on the CPU" in note, (choice, note)
    assert resolve("auto", False) == ("cpu", None)
    assert resolve("none", True) == (None, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve("auto", True) == ("cuda", None)
    assert resolve("cpu", True) == ("cpu", None)
    monkeypatch.setitem(sys.modules, "torch", None)  # None makes the import fail
    device, note = resolve("auto", True)
    assert device is None and "not installed" in note


def test_gpu_run_without_cuda_torch_says_so(monkeypatch, capsys) -> None:
    """End to end, as if bptt ran on CuPy: no crash, a torch row, and a note."""
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(bench_step, "_on_gpu", lambda be: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_step.main(["--sizes", TINY, "--dtypes", "float32", "--no-jax", *FAST]) == 0
    out = capsys.readouterr().out
    assert "# note: torch" in out and "cannot use 'cuda'" in out
    assert any(line.split()[2] == "torch" for line in out.splitlines() if line.startswith(TINY))


# ---- bench_step.py's command line --------------------------------------------------------


def test_script_writes_json_and_markdown(tmp_path, capsys) -> None:
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    args = ["--sizes", TINY, "--dtypes", "float64", "--no-jax", *FAST]
    args += ["--json", str(out_json), "--markdown", str(out_md)]
    assert bench_step.main(args) == 0
    record = json.loads(out_json.read_text())
    assert [r["impl"] for r in record["rows"]] == ["bptt", "numpy-only", "torch"]
    meta = record["meta"]
    assert meta["bptt_schedule"] in bptt.execution.schedules.SCHEDULES
    assert meta["bptt_threads"] == threads.max_threads()
    out = capsys.readouterr().out
    assert f"bptt NumPy schedule: {meta['bptt_schedule']}" in out and "ms/step" in out
    markdown = out_md.read_text()
    assert "| float64 |" in markdown and "bptt's NumPy schedule" in markdown
    from bptt.host.malloc import tune_malloc

    assert meta["malloc_tuned"] is tune_malloc()  # raised unless --default-malloc
    assert bench_step.main([*args, "--default-malloc"]) == 0
    assert json.loads(out_json.read_text())["meta"]["malloc_tuned"] is False
    assert "malloc: defaults" in out_md.read_text()


def test_malloc_is_set_as_training_sets_it_for_the_contenders(monkeypatch) -> None:
    """auto: JAX's one block of temporaries per call kept (as ``bptt train --tune-malloc``
    runs JAX) when a JAX contender runs, the thresholds raised otherwise; set before
    JAX starts its threads, and named in the header."""
    called = []
    for name in ("keep_large_blocks", "tune_malloc"):
        monkeypatch.setattr(bench_cases.malloc, name, lambda name=name: called.append(name) or True)
    cases = {
        ("--no-jax",): "tune",
        ("--no-jax", "--backend", "numpy,jax"): "keep",
        ("--no-jax", "--malloc", "keep"): "keep",
        ("--malloc", "tune"): "tune",
        ("--no-jax", "--default-malloc"): "default",
    }
    for extra, mode in cases.items():
        called.clear()
        args = bench_step._parser().parse_args(["--sizes", TINY, *extra])
        assert bench_step._set_malloc(args) == (mode, mode != "default"), extra
        want = {"keep": ["keep_large_blocks"], "tune": ["tune_malloc"], "default": []}[mode]
        assert called == want, extra
    if importlib.util.find_spec("jax") is not None:
        args = bench_step._parser().parse_args(["--sizes", TINY])
        assert bench_step._set_malloc(args)[0] == "keep"
    meta = {"malloc": "keep", "malloc_tuned": True}
    assert "keep_large_blocks" in bench_report._malloc(meta)


def test_script_on_a_foreign_device(capsys) -> None:
    """bptt on the GPU stand-in (array_api_strict device1): nothing leaks to NumPy."""
    argv = ["--sizes", TINY, "--dtypes", "float32", "--backend", "array_api_strict"]
    argv += ["--device", "device1", "--torch-device", "none", "--no-jax", *FAST]
    assert bench_step.main(argv) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith(TINY)]
    assert [row.split()[2] for row in rows] == ["bptt[array_api_strict:device1]"]


@pytest.mark.parametrize("argv", [["--sizes", "S9"], ["--backend", "nope"], ["--schedule", "fast"]])
def test_script_usage_errors_exit_2(argv, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        bench_step.main(argv)
    assert info.value.code == 2 and "Traceback" not in capsys.readouterr().err


# ---- the `bptt bench` entry point ---------------------------------------------------------


def test_bench_modules_left_the_package() -> None:
    for name in ("bptt.bench", "bptt._numpy_variant", "bptt._parallel"):
        assert importlib.util.find_spec(name) is None, name


def test_bptt_bench_finds_the_script_of_this_checkout(tmp_path) -> None:
    assert bench_command.find_script() == BENCH / "bench_step.py"
    (tmp_path / "bptt").mkdir()  # a package without a checkout around it
    assert bench_command.find_script(tmp_path / "bptt") is None


def test_bptt_bench_runs_the_script_with_its_arguments(capfd) -> None:
    argv = ["bench", "--sizes", TINY, "--dtypes", "float32", "--torch-device", "none"]
    assert cli.main([*argv, "--no-jax", *FAST]) == 0
    out = capfd.readouterr().out
    assert bench_report.HEADER in out and "bptt NumPy schedule:" in out
    assert [line.split()[2] for line in out.splitlines() if line.startswith(TINY)] == [
        "bptt",
        "numpy-only",
    ]
    assert cli.main(["bench", "--help"]) == 0  # the script's own options
    assert "--schedule" in capfd.readouterr().out
    assert cli.main(["bench", "--sizes", "S9"]) == 2  # the script's usage error
    assert "BxTxDxMxC" in capfd.readouterr().err


def test_bptt_bench_without_a_checkout_exits_2(monkeypatch, capsys) -> None:
    monkeypatch.setattr(bench_command, "find_script", lambda: None)
    assert cli.main(["bench", "--sizes", "S1"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "ships in the source repository" in captured.err


# ---- the other benchmark scripts ---------------------------------------------------------


def test_schedule_comparison_script() -> None:
    """benchmarks/parallel.py prints one row per size and schedule with its layout (parts x
    blocks) and its ratio to the first schedule; --size adds a shape of one's own."""
    out, rows = _script_rows(
        "parallel.py", "--sizes", "", "--size", "4,25,8,5", "--size", "4,6,8,5",
        "--dtypes", "float64", "--reps", "1",
    )  # fmt: skip
    modes = ("single", "overlap", "split", "auto")
    assert [(r[0], r[2]) for r in rows] == [
        (size, mode) for size in ("4,25,8,5", "4,6,8,5") for mode in modes
    ], out
    parts = min(max(2, threads.max_threads()), 4)
    assert [r[3] for r in rows[:4]] == ["1x1", "1x10", f"{parts}x1", "1x1"], out
    assert [r[3] for r in rows[4:]] == ["1x1", "1x6", f"{parts}x1", "1x1"], out
    assert all(float(r[5]) == 1.0 for r in rows if r[2] == "single"), out
    assert all(float(r[4]) > 0 for r in rows), out


def test_variant_comparison_script() -> None:
    """benchmarks/variant.py prints one row per size and dtype: both times and a ratio."""
    out, rows = _script_rows("variant.py", "--sizes", TINY, "--rounds", "2", "--calls", "2")
    assert [r[:2] for r in rows] == [[TINY, "float32"], [TINY, "float64"]], out
    for _, _, ours, theirs, ratio in rows:
        assert float(ours) > 0 and float(theirs) > 0 and float(ratio) > 0, out


def test_two_process_comparison_script() -> None:
    """benchmarks/two_process.py checks that the two halves add up to the whole batch's
    step (it fails otherwise), then prints one row per mode with its ratio to threads."""
    out, rows = _script_rows("two_process.py", "--size", "5,4,8,6", "--steps", "2", "--rounds", "2")
    assert [r[0] for r in rows] == ["threads", "processes"], out
    assert float(rows[0][3]) == 1.0 and all(float(r[1]) > 0 for r in rows), out


def test_jax_compile_and_jax_step_scripts_print_their_tables() -> None:
    """benchmarks/jax_compile.py (train, grads and the hand-written scan per T and cell)
    and benchmarks/jax_step.py (the JAX contenders, interleaved) at a tiny size: the rows
    they promise, with numbers (the compile script once broke when make_train_step's
    arguments changed)."""
    pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    out, rows = _script_rows("jax_compile.py", "--size", TINY, "--T", "3,6", "--reps", "1",
                             "--cells", "tanh,gru", "--unrolled-max", "3")  # fmt: skip
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()
             if line.startswith("| ") and line.split("|")[1].strip().isdigit()]  # fmt: skip
    want = [(T, cell, what) for T in ("3", "6") for cell in ("tanh", "gru")
            for what in ("train scan", "train unrolled", "grads scan", "hand-written")
            if (what != "train unrolled" or T == "3") and (what != "hand-written" or
                                                          cell == "tanh")]  # fmt: skip
    assert [tuple(c[:3]) for c in cells] == want, out
    assert all(float(c[6]) > 0 and int(c[7]) > 0 for c in cells), out  # CPU s, equations
    out, rows = _script_rows("jax_step.py", "--sizes", TINY, "--unrolled", TINY, "--reps", "1",
                             "--min-block", "0.01")  # fmt: skip
    names = [r[3] for r in rows if r and r[0] == "|" and r[1] == TINY]
    assert names == ["jax", "bptt[jax.jit]", "bptt[jax.jit,unrolled]"], out
