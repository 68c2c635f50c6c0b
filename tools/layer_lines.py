"""Lines of the library per layer at one or more git revisions: all lines, and code lines
(no blank lines, comments or docstrings).

    python tools/layer_lines.py c8f2060 HEAD

A file's layer is its subpackage (``bptt/math/...`` -> math); files of revisions before the
layout by layer (a flat ``bptt/``) are placed by ``FLAT``, their modules' later homes.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tokenize

FLAT = {  # module of the flat layout -> its layer
    **dict.fromkeys("model cells gru lstm gates layers heads step flat scan remat".split(), "math"),
    **dict.fromkeys("random finite_diff".split(), "numerics"),
    **dict.fromkeys("schedules numpy_exec jax_exec".split(), "execution"),
    **dict.fromkeys("api rnn functional pullback interop checks params".split(), "api"),
    **dict.fromkeys("limits malloc plot".split(), "host"),
    **dict.fromkeys("data sample validation".split(), "text"),
    **dict.fromkeys(
        "rundir distributed allreduce checkpoint checkpoint_read checkpoint_schema train".split(),
        "train",
    ),
    **dict.fromkeys("evaluation dynamic_eval diagnostics".split(), "evaluation"),
    **dict.fromkeys("cli commands".split(), "cli"),
    "optim": "optim",
}


def layer(path: str) -> str:
    parts = path.split("/")
    if parts[0] == "backends":
        return "backends"
    if len(parts) == 2:  # bptt/x.py
        name = parts[1].removesuffix(".py")
        return FLAT.get(name, "package top")
    if parts[1:3] == ["train", "compiled.py"]:
        return "execution"
    return FLAT.get(parts[1], parts[1])


def code_lines(text: str) -> int:
    lines, previous = set(), None
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER)  # fmt: skip
    starts = (tokenize.INDENT, tokenize.DEDENT, tokenize.NEWLINE, tokenize.NL)
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in skip:
            continue
        docstring = token.type == tokenize.STRING and (previous is None or previous.type in starts)
        if not docstring:
            lines.update(range(token.start[0], token.end[0] + 1))
        previous = token
    return len(lines)


def count(rev: str) -> dict[str, list[int]]:
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev], capture_output=True,
                           text=True, check=True).stdout.split()  # fmt: skip
    out: dict[str, list[int]] = {}
    for path in names:
        if path.endswith(".py") and path.startswith(("bptt/", "backends/")):
            text = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True,
                                  text=True, check=True).stdout  # fmt: skip
            total = out.setdefault(layer(path), [0, 0])
            total[0] += len(text.splitlines())
            total[1] += code_lines(text)
    return out


def main(revs: list[str]) -> None:
    counts = [count(rev) for rev in revs]
    layers = sorted({k for c in counts for k in c})
    print("| layer | " + " | ".join(f"{r}: lines (code)" for r in revs) + " |")
    print("| --- |" + " ---: |" * len(revs))
    for name in [*layers, "total"]:
        cells = []
        for c in counts:
            a, b = (map(sum, zip(*c.values(), strict=True)) if name == "total"
                    else c.get(name, [0, 0]))  # fmt: skip
            cells.append(f"{a} ({b})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["HEAD"])
