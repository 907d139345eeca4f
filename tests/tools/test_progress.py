"""Progress lines of the tools: plain lines on stderr when it is not a terminal (CI, logs)."""

from __future__ import annotations

from lmini_tools.progress import steps


def test_plain_lines_on_stderr_and_every_item(capsys):
    got = list(steps(["a", "bb", "c"], "unit: case", label=str.upper))
    assert got == ["a", "bb", "c"]
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    want = ["unit: case [1/3] A", "unit: case [2/3] BB", "unit: case [3/3] C"]
    assert [line.split(" (")[0] for line in lines] == want
