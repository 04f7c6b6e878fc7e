"""``decodelab neuro`` carries the MEG, fMRI and cross-subject subcommands under one command."""

from __future__ import annotations

import pytest

from decodelab.cli import main


def test_every_neuro_subcommand_is_registered(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["neuro", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("simulate", "fit-meg", "eval-meg", "reconstruct", "simulate-fmri", "fit-fmri", "reconstruct-fmri",
                "eval-fmri", "run-fmri", "crosssubject", "caption"):  # fmt: skip
        assert f"    {cmd} " in out or f"    {cmd}\n" in out, cmd


@pytest.mark.parametrize("cmd", ["simulate-fmri", "crosssubject", "caption"])
def test_neuro_subcommands_parse_their_own_options(cmd: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["neuro", cmd, "--help"])
    assert exc.value.code == 0
    assert f"decodelab neuro {cmd}" in capsys.readouterr().out
