from __future__ import annotations

import json

from typer.testing import CliRunner

from rodimus.cli import app


def test_eval_ppl_command(tmp_path, tiny_rodimus_dir):
    doc = tmp_path / "t.txt"
    doc.write_text("a short text for the command line test", encoding="utf-8")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "eval",
            "ppl",
            str(tiny_rodimus_dir),
            "--data",
            str(doc),
            "--context",
            "16",
            "--device",
            "cpu",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert json.loads((out / "ppl.json").read_text())["result"]["tokens"] == len(
        "a short text for the command line test"
    )
    assert "bits_per_byte" in r.output


def test_bad_input_gives_a_clean_error(tmp_path, tiny_rodimus_dir):
    r = CliRunner().invoke(
        app,
        ["eval", "ppl", str(tiny_rodimus_dir), "--data", str(tmp_path / "missing.txt"), "--device", "cpu"],
    )
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(app, ["bench", str(tiny_rodimus_dir), "--contexts", "a,b"])
    assert r.exit_code != 0 and "contexts" in r.output


def test_commands_are_registered():
    r = CliRunner().invoke(app, ["eval", "--help"])
    assert r.exit_code == 0
    for cmd in ("ppl", "mqar", "harness", "needle"):
        assert cmd in r.output
    assert CliRunner().invoke(app, ["bench", "--help"]).exit_code == 0
