"""docs/derivation.md is tied to the code: equation numbers, the table, the counter-examples."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
from pathlib import Path

import numpy as np
import pytest

import bptt
from bptt.evaluation.diagnostics import state_gradient_sweep

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "derivation.md").read_text(encoding="utf-8")
CODE = {p: p.read_text(encoding="utf-8") for p in sorted((ROOT / "bptt").rglob("*.py"))}

# "eq. (44)", "eq. 22", "eqs. (19)-(21)", "eqs. 67, 72", "eqs. (13)-(15) and (63)", "eq. (B12)",
# and the gated cells' "eq. (G7)", "eqs. (L6)-(L8)"
CITATION = re.compile(
    r"\beqs?\.\s*(\(?[BGL]?\d+\)?(?:\s*(?:-|\u2013|,|and)\s*\(?[BGL]?\d+\)?)*)", re.IGNORECASE
)
TAG = re.compile(r"\\tag\{([BGL]?\d+)\}")
PREFIXES = ("B", "G", "L")  # the seed's numbers have none


def expand(text: str) -> list[str]:
    """'(13)-(15) and (63)' -> ['13', '14', '15', '63']; 'B1', 'G1', 'L1' ranges likewise."""
    tokens = re.findall(r"[BGL]?\d+|-|\u2013", text.upper())
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] in ("-", "\u2013") and out and i + 1 < len(tokens):
            first, last = out[-1], tokens[i + 1]
            prefix = first[0] if first[0] in PREFIXES else ""
            assert last.startswith(prefix), text
            lo, hi = int(first.lstrip("BGL")), int(last.lstrip("BGL"))
            assert lo < hi, text
            out += [f"{prefix}{n}" for n in range(lo + 1, hi + 1)]
            i += 2
        else:
            out.append(tokens[i])
            i += 1
    return out


def test_expand_reads_every_citation_form() -> None:
    assert expand("(19)-(21)") == ["19", "20", "21"]
    assert expand("57-69")[-1] == "69" and len(expand("57-69")) == 13
    assert expand("(13)-(15) and (63)") == ["13", "14", "15", "63"]
    assert expand("67, 72") == ["67", "72"]
    assert expand("(B11)-(B13)") == ["B11", "B12", "B13"]
    assert expand("(G7)-(G9), (L9)") == ["G7", "G8", "G9", "L9"]


def defined() -> list[str]:
    return TAG.findall(DOC)


def cited() -> dict[str, set[str]]:
    """Equation number -> the files of bptt/ that cite it."""
    where: dict[str, set[str]] = {}
    for path, text in CODE.items():
        for match in CITATION.finditer(text):
            for number in expand(match.group(1)):
                where.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    return where


def test_every_equation_the_code_cites_is_defined() -> None:
    where = cited()
    assert {"19", "44", "56", "62", "63", "13"} <= set(where)  # the scan finds the citations
    missing = {n: sorted(files) for n, files in where.items() if n not in defined()}
    assert not missing, f"cited in the code but not defined in docs/derivation.md: {missing}"


def test_every_seed_equation_is_restated_once() -> None:
    tags = defined()
    duplicates = sorted({t for t in tags if tags.count(t) > 1})
    assert not duplicates, duplicates
    numbers = sorted(int(t) for t in tags if t.isdigit())
    assert numbers == list(range(1, 74))


def table_rows() -> list[tuple[str, str]]:
    """(equations cell, code cell) of the table under 'Equations and the code'."""
    section = DOC.split("## Equations and the code", 1)[1]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"\([BGL]?\d+\).*", cells[0]):
            rows.append((cells[0], cells[-1]))
    return rows


def resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted`` and get the rest as attributes."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for name in parts[n:]:
            obj = getattr(obj, name)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_table_covers_every_equation_once() -> None:
    listed = [n for eqs, _ in table_rows() for n in expand(eqs)]
    assert len(listed) == len(set(listed)), "an equation appears in two rows"
    assert sorted(listed) == sorted(defined())


def test_every_function_the_table_names_exists() -> None:
    names = {n for _, code in table_rows() for n in re.findall(r"`(bptt(?:\.\w+)+)`", code)}
    assert len(names) >= 10
    for name in sorted(names):
        assert callable(resolve(name)), name
    assert all(code == "step" or "`bptt." in code for _, code in table_rows())


def counterexample(name: str) -> tuple[dict, str]:
    """Run the doc's snippet ``name``; return its namespace and what it printed."""
    code = re.search(rf"<!-- counterexample: {name} -->\n```python\n(.*?)```", DOC, re.S)
    shown = re.search(
        rf"<!-- counterexample: {name} -->\n```python\n.*?```\s*It prints\s*```text\n(.*?)```",
        DOC,
        re.S,
    )
    assert code and shown, name
    namespace: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.group(1), f"derivation.md:{name}", "exec"), namespace)
    assert out.getvalue() == shown.group(1), "the document shows other output than the snippet"
    return namespace, out.getvalue()


def test_tanh_prime_counterexample_and_bptt_agree(be64) -> None:
    """Eqs. (13)-(15): the seed's W^(t-k) is off; bptt and the corrected form match differences."""
    ns, _ = counterexample("tanh-prime")
    assert abs(ns["seed"] - ns["numeric"]) > 0.5 * abs(ns["numeric"])
    assert abs(ns["ours"] - ns["numeric"]) < 1e-8
    f64 = "float64"
    params = {k: be64.asarray([[ns[k]]], dtype=f64) for k in ("U", "W", "V")}
    inputs = be64.asarray(np.asarray(ns["x"]).reshape(3, 1, 1), dtype=f64)  # (T, B, M)
    targets = be64.asarray(np.ones((3, 1, 1)), dtype=f64)  # y_t = 1: BCE is the seed's E_t
    loss, grads, _ = bptt.loss_and_grad(params, inputs, targets, head="sigmoid", reduction="sum")
    assert float(loss) == pytest.approx(ns["loss"](ns["W"]), rel=1e-14)
    assert float(be64.to_numpy(grads["W"])[0, 0]) == pytest.approx(ns["ours"], rel=1e-12)


def test_commute_counterexample_and_the_sweep_agree(be64) -> None:
    """Eq. (63): W^(t-k) cannot leave the product; the diagnostics sweep computes the product."""
    ns, _ = counterexample("commute")
    assert np.abs(ns["seed"] - ns["numeric"]).max() > 0.1
    assert np.abs(ns["ours"] - ns["numeric"]).max() < 1e-8
    # Rows of d s_3 / d s_1: feed unit gradients at s_3 (one per batch row) and sweep back.
    states = np.stack([np.stack([s, s]) for s in (ns["s1"], ns["s2"], ns["s3"])])  # (3, 2, 2)
    dS = np.zeros((3, 2, 2))
    dS[2] = np.eye(2)
    xp = be64.xp
    sweep = state_gradient_sweep(
        be64.asarray(states, dtype="float64"),
        be64.asarray(dS, dtype="float64"),
        be64.asarray(ns["W"], dtype="float64"),
        xp,
    )
    rows = {k: np.array(be64.to_numpy(G), copy=True) for k, G in sweep}  # G is a view
    np.testing.assert_allclose(rows[0][2], ns["ours"], rtol=1e-13)
    np.testing.assert_allclose(rows[1][1], ns["A3"] @ ns["W"], rtol=1e-13)  # one step: A_3 W


def _module_file(dotted: str) -> str:
    """'bptt.math.layers.forward' -> 'bptt/math/layers.py' (the longest prefix that is a file)."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        path = ROOT.joinpath(*parts[:n]).with_suffix(".py")
        if path.exists():
            return str(path.relative_to(ROOT))
    raise ModuleNotFoundError(dotted)


def test_the_stack_relu_mse_and_pullback_equations_are_cited_where_the_table_says() -> None:
    """(B17)-(B24): each is cited (``eq. (B20)``) in a module that its table row names."""
    where = cited()
    rows = {n: code for eqs, code in table_rows() for n in expand(eqs)}
    for n in [f"B{i}" for i in range(17, 25)]:
        named = {_module_file(m) for m in re.findall(r"`(bptt(?:\.\w+)+)`", rows[n])}
        assert where.get(n, set()) & named, (n, sorted(named), sorted(where.get(n, ())))


def test_the_gated_cell_equations_are_cited_where_the_table_says() -> None:
    """(G1)-(G11), (L1)-(L10): all defined, and each that a function computes is cited
    (``eq. (G7)``) in a module that its table row names."""
    tags = set(defined())
    assert {f"G{i}" for i in range(1, 12)} | {f"L{i}" for i in range(1, 11)} <= tags
    where = cited()
    rows = {n: code for eqs, code in table_rows() for n in expand(eqs)}
    for n in sorted(t for t in tags if t[0] in "GL" and rows[t] != "step"):
        named = {_module_file(m) for m in re.findall(r"`(bptt(?:\.\w+)+)`", rows[n])}
        assert where.get(n, set()) & named, (n, sorted(named), sorted(where.get(n, ())))
