"""`slimlab export`: the format registry and the driver's checks and atomic writes.

A toy format stands in for the real ones so these tests say what the driver does: argument
checks before anything is read, clear refusals, and no partial output on failure."""
import json

import pytest

from engine.cli import main
from engine.errors import ConfigError, SlimLabError
from engine.export import ExportFormat, ExportReport, NotExpressible, export, register_format, unregister_format


def _check(meta: dict) -> None:
    if meta["method"] == "slicegpt":
        raise NotExpressible("toy cannot express slicegpt; ShortGPT exports.")


def _write(job) -> ExportReport:
    if job.meta.get("fail"):
        job.target.write_bytes(b"half a file")
        raise OSError("disk full")
    job.target.write_text(f"{job.meta['method']} {job.dtype}")
    return ExportReport(format="toy", architecture="toy-arch", notes=["a note"])


@pytest.fixture
def toy_format():
    fmt = register_format(ExportFormat("toy", "Toy", "every shortgpt result", "file", ".toy", _check, _write))
    yield fmt
    unregister_format("toy")


def _result(tmp_path, method="shortgpt", **extra):
    folder = tmp_path / "result"
    folder.mkdir()
    (folder / "slimlab.json").write_text(json.dumps({"method": method} | extra))
    return folder


def _only(folder):
    return sorted(p.name for p in folder.iterdir())


def test_export_writes_atomically_beside_the_result(tmp_path, toy_format, capsys):
    src = _result(tmp_path)
    assert main(["export", str(src), "--format", "toy", "--dtype", "f32", "--json"]) == 0
    out = tmp_path / "result-f32.toy"
    assert out.read_text() == "shortgpt f32"
    payload = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert payload["path"] == str(out) and payload["bytes"] == out.stat().st_size
    assert payload["architecture"] == "toy-arch" and payload["notes"] == ["a note"]
    assert _only(tmp_path) == ["result", "result-f32.toy"]  # no temp left behind


def test_existing_output_needs_force(tmp_path, toy_format):
    src = _result(tmp_path)
    out = tmp_path / "x.toy"
    out.write_text("old")
    with pytest.raises(ConfigError, match="already exists"):
        export(src, "toy", "f16", out)
    export(src, "toy", "f16", out, force=True)
    assert out.read_text() == "shortgpt f16"


def test_failed_write_leaves_no_partial_file(tmp_path, toy_format):
    src = _result(tmp_path, fail=True)
    with pytest.raises(SlimLabError, match="disk full. Nothing was written"):
        export(src, "toy", "f16", tmp_path / "out.toy")
    assert _only(tmp_path) == ["result"]


@pytest.mark.parametrize("argv, message", [
    (["--format", "toy", "--dtype", "q4"], "--dtype 'q4' is not one of f32, f16, bf16"),
    (["--format", "nope"], "Export format 'nope' is unknown"),
])
def test_bad_arguments_exit_2(tmp_path, toy_format, capsys, argv, message):
    src = _result(tmp_path)
    assert main(["export", str(src)] + argv) == 2
    assert message in capsys.readouterr().err
    assert _only(tmp_path) == ["result"]


def test_a_known_format_not_registered_says_so(tmp_path, toy_format, capsys, monkeypatch):
    from engine.export import base

    monkeypatch.setattr(base, "REGISTRY", {"toy": toy_format})
    monkeypatch.setattr("engine.export.load_all", lambda: None)
    assert main(["export", str(_result(tmp_path)), "--format", "decilm"]) == 2
    assert "Export format 'decilm' is not available in this installation. Available: toy." in capsys.readouterr().err


def test_a_folder_that_is_not_a_result(tmp_path, toy_format, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert main(["export", str(plain), "--format", "toy"]) == 2
    err = capsys.readouterr().err
    assert "is not a SlimLab result (no slimlab.json)" in err and "slimlab compress --out" in err
    assert main(["export", str(tmp_path / "missing"), "--format", "toy"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_an_unwritable_output(tmp_path, toy_format, capsys):
    src = _result(tmp_path)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(["export", str(src), "--format", "toy", "--out", str(blocker / "model.toy")]) == 2
    assert "Cannot write to" in capsys.readouterr().err
    assert _only(tmp_path) == ["a-file", "result"]


def test_a_result_the_format_cannot_express(tmp_path, toy_format, capsys):
    src = _result(tmp_path, method="slicegpt")
    assert main(["export", str(src), "--format", "toy"]) == 2
    assert "toy cannot express slicegpt; ShortGPT exports." in capsys.readouterr().err
    assert _only(tmp_path) == ["result"]


def test_a_folder_format_is_written_whole_or_not_at_all(tmp_path):
    def write(job):
        (job.target / "config.json").write_text("{}")
        if job.meta.get("fail"):
            raise OSError("disk full")
        return ExportReport(format="dir")

    register_format(ExportFormat("dir", "Dir", "anything", "folder", "", lambda meta: None, write, default_dtype="bf16"))
    try:
        report = export(_result(tmp_path), "dir")
        assert report.dtype == "bf16" and report.path == str(tmp_path / "result-dir")
        assert _only(tmp_path / "result-dir") == ["config.json"]
        bad = tmp_path / "bad"
        bad.mkdir()
        with pytest.raises(SlimLabError, match="disk full. Nothing was written"):
            export(_result(bad, fail=True), "dir")
        assert _only(bad) == ["result"]
    finally:
        unregister_format("dir")
