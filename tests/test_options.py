"""Options declared once: ``bptt train``'s flags are made from TrainConfig's fields, the
values are checked by one table of kinds (``KINDS``) whichever way they come, and the
library's messages name its arguments, which the command line turns into its flags."""

from __future__ import annotations

import argparse
import dataclasses
import re

import pytest

from bptt import cli
from bptt.cli._args import as_flags
from bptt.train import TrainConfig
from bptt.train.config import KINDS

FIELDS = dataclasses.fields(TrainConfig)
BAD = {"positive int": "0", "int >= 0": "-1", "positive": "0", ">= 0": "-1",
       "probability": "1", "factor": "1.5"}  # fmt: skip


def _train_parser() -> argparse.ArgumentParser:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["train"]


def test_every_option_has_one_flag_made_from_its_field() -> None:
    actions = {a.dest: a for a in _train_parser()._actions}
    for f in FIELDS:
        action = actions[f.name]
        assert action.option_strings[0] == "--" + f.name.replace("_", "-")
        assert action.default is None  # unset stays unset: a resume keeps the stored value
        assert f.metadata["help"] in action.help and "(default " in action.help
        kind = f.metadata["kind"]
        assert action.choices == (kind if isinstance(kind, tuple) else None), f.name
    assert "--nonlinearity" in actions["cell"].option_strings  # the older name, an alias


@pytest.mark.parametrize("f", [f for f in FIELDS if isinstance(f.metadata["kind"], str)],
                         ids=lambda f: f.name)  # fmt: skip
def test_a_bad_value_is_refused_alike_by_the_library_and_the_command_line(f, capsys) -> None:
    kind, text = KINDS[f.metadata["kind"]], BAD[f.metadata["kind"]]
    with pytest.raises(ValueError, match=rf"^{f.name}: expected {re.escape(kind.expected)}"):
        TrainConfig(**{f.name: kind.cast(text)})
    flag = "--" + f.name.replace("_", "-")
    with pytest.raises(SystemExit) as info:
        cli.main(["train", flag, text, "--steps", "1"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"argument {flag}: expected {kind.expected}" in err, err


def test_kinds_refuse_what_is_not_of_the_kind() -> None:
    assert not KINDS["positive int"].valid(2.0) and not KINDS["positive int"].valid(True)
    assert not KINDS["positive"].valid(float("inf")) and KINDS["positive"].valid(3)
    with pytest.raises(ValueError, match="expected a positive integer; got 'x'"):
        KINDS["positive int"].parse("x")


def test_library_messages_become_flags_on_the_command_line() -> None:
    parser = _train_parser()
    said = ("checkpoint_dir=RUN: it already holds a run; lower lr=... or set "
            "overwrite=True; hidden_size stays")  # fmt: skip
    assert as_flags(said, parser) == (
        "--checkpoint-dir RUN: it already holds a run; lower --lr or set --overwrite; "
        "hidden_size stays"
    )
    assert as_flags("seq_len: expected a positive integer", parser).startswith("--seq-len:")
    assert as_flags("config.train: missing key(s) ['seq_len']", parser).endswith("['seq_len']")
