"""Smoke runs of the benchmark at a tiny size, so that ``bptt bench`` cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bptt import _parallel, bench, cli

TINY = "4x3x8x5x5"


def _script_rows(name: str, *args: str) -> tuple[str, list[list[str]]]:
    """Run benchmarks/NAME with ARGS; its output and the words of each line after the header."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / name
    out = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return out, [line.split() for line in out.splitlines()[1:]]


def test_run_benchmark_rows() -> None:
    rows = bench.run_benchmark(
        [TINY],
        ["float32"],
        [("numpy", None), ("array_api_strict", None)],
        reps=2,
        pause=0.0,
        min_block=0.0,
        gemm_n=64,
    )
    impls = [r["impl"] for r in rows]
    assert impls[:3] == ["bptt", "bptt[array_api_strict]", "numpy-only"]
    assert "torch" in impls
    jax = [r for r in rows if r["impl"] == "jax"]
    assert not jax or "status" in jax[0] or jax[0]["ms_per_step"] > 0
    for r in rows:
        if "status" in r:
            continue
        assert r["ms_per_step"] > 0 and len(r["samples_ms"]) == 2
        assert r["chars_per_s"] == pytest.approx(3 * 4 / (r["ms_per_step"] / 1e3))
        assert r["vs_torch"] > 0
        # the square matmul timed among the blocks: its rate gives the same-time floor
        assert r["gemm_gflops_same_time"] > 0
        flops = 6 * 3 * 4 * 8 * (8 + 5)
        rate = r["gemm_gflops_same_time"] * 1e9
        assert r["floor_fraction_same_time"] == pytest.approx(
            flops / (r["ms_per_step"] / 1e3) / rate
        )
    assert "gemm" not in impls  # a reference, not a contender
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["bptt"]["peak_mib"] > 0 and by_impl["bptt"]["update_ms"] > 0
    table = bench.format_table(rows)
    assert table.splitlines()[0] == bench.HEADER and len(table.splitlines()) == len(rows) + 1
    assert (
        bench.format_markdown(
            rows,
            {"date": "d", "machine": "m", "blas": "b", "threads": "t", "command": "c", "reps": 2},
        ).count("\n| ")
        == len(rows) + 1
    )


def test_cli_writes_json_and_markdown(tmp_path, capsys) -> None:
    out_json, out_md = tmp_path / "b.json", tmp_path / "b.md"
    args = [
        "bench",
        "--sizes",
        TINY,
        "--dtypes",
        "float64",
        "--reps",
        "1",
        "--pause",
        "0",
        "--min-block",
        "0",
        "--no-jax",
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    assert cli.main(args) == 0
    record = json.loads(out_json.read_text())
    assert {r["impl"] for r in record["rows"]} == {"bptt", "numpy-only", "torch"}
    assert "| float64 |" in out_md.read_text()
    assert "ms/step" in capsys.readouterr().out
    from bptt.malloc import tune_malloc

    assert record["meta"]["malloc_tuned"] is tune_malloc()  # raised unless --default-malloc
    assert cli.main([*args, "--default-malloc"]) == 0
    assert json.loads(out_json.read_text())["meta"]["malloc_tuned"] is False
    assert "malloc: defaults" in out_md.read_text()


def test_sizes() -> None:
    assert bench.SIZES["S3"].flops == 6 * 200 * 128 * 512 * (512 + 128)
    assert bench.parse_size("2x3x4x5x6") == ("2x3x4x5x6", bench.Size(2, 3, 4, 5, 6))
    with pytest.raises(ValueError, match="BxTxDxMxC"):
        bench.parse_size("S9")


@pytest.mark.parametrize(
    "backend, device", [("array_api_strict", "device1"), ("torch", "cpu")], ids=["device1", "torch"]
)
def test_bench_command_on_a_foreign_device(capsys, backend: str, device: str) -> None:
    """`bptt bench` end to end on the GPU stand-in and on torch: nothing leaks to NumPy."""
    argv = ["bench", "--sizes", TINY, "--dtypes", "float32", "--backend", backend]
    argv += ["--device", device, "--reps", "7", "--pause", "0", "--min-block", "0"]
    argv += ["--guard", "0", "--torch-device", "none", "--no-jax"]
    assert cli.main(argv) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(TINY)]
    assert len(row) == 1 and f"bptt[{backend}" in row[0]


def test_parallel_comparison_script() -> None:
    """benchmarks/parallel.py prints one row per size and mode with its layout (parts x
    blocks) and its ratio to the first mode; --size adds a shape of one's own."""
    out, rows = _script_rows(
        "parallel.py", "--sizes", "S1", "--size", "4,6,8,5", "--dtypes", "float64", "--reps", "1"
    )
    assert [(r[0], r[2]) for r in rows] == [
        (size, mode) for size in ("S1", "4,6,8,5") for mode in ("off", "overlap", "split", "auto")
    ], out
    parts = max(2, _parallel.max_threads())
    assert [r[3] for r in rows[:4]] == ["1x1", "1x10", f"{parts}x1", "1x1"], out  # S1: one block
    assert [r[3] for r in rows[4:]] == ["1x1", "1x6", f"{min(parts, 4)}x1", "1x1"], out
    assert all(float(r[5]) == 1.0 for r in rows if r[2] == "off"), out
    assert all(float(r[4]) > 0 for r in rows), out


def test_variant_comparison_script() -> None:
    """benchmarks/variant.py prints one row per size and dtype: both times and a ratio."""
    out, rows = _script_rows("variant.py", "--sizes", "S1", "--rounds", "2", "--calls", "2")
    assert [r[:2] for r in rows] == [["S1", "float32"], ["S1", "float64"]], out
    for _, _, ours, theirs, ratio in rows:
        assert float(ours) > 0 and float(theirs) > 0 and float(ratio) > 0, out


def test_two_process_comparison_script() -> None:
    """benchmarks/two_process.py checks that the two halves add up to the whole batch's
    step (it fails otherwise), then prints one row per mode with its ratio to threads."""
    out, rows = _script_rows("two_process.py", "--size", "5,4,8,6", "--steps", "2", "--rounds", "2")
    assert [r[0] for r in rows] == ["threads", "processes"], out
    assert float(rows[0][3]) == 1.0 and all(float(r[1]) > 0 for r in rows), out


def test_jax_contender_waits_for_its_result() -> None:
    """JAX dispatches asynchronously: a timed call that returned before its result
    was computed would time the dispatch alone."""
    jax = pytest.importorskip("jax", reason="JAX is not installed (it is optional)")
    _, size = bench.parse_size(TINY)
    case = bench.jax_case(size, "float32")
    result = case.step()
    leaves = jax.tree_util.tree_leaves(result)
    assert leaves and all(leaf.is_ready() for leaf in leaves)
