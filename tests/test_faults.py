"""Faults while saving, loading and compressing: nothing half-written, nothing lost, one clear message.

A save or an export (GGUF file, transformers folder) is killed (SIGKILL) midway, the disk fills up, a
saved folder is damaged, memory runs out (in the engine, or under a UI session's Compress and Evaluate):
each leaves the previous result (or nothing) in place and says what happened, naming the file."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from engine import CalibrationSpec, compress, load_compressed, load_model, save_compressed
from engine.cli import main
from engine.errors import ConfigError, CorruptWeightsError, SlimLabError

TESTS = Path(__file__).resolve().parent


def _calibration(vocab: int) -> CalibrationSpec:
    g = torch.Generator().manual_seed(0)
    return CalibrationSpec("random", 8, 32, 0, 4, tokens=torch.randint(3, vocab, (8, 32), generator=g))


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.arange(3, 19)[None], use_cache=False).logits


@pytest.fixture
def saved(tiny_dirs, tmp_path):
    """A tiny llama compressed by FASP and saved: (result, folder)."""
    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    result = compress(lm, "fasp", 0.3, calibration=_calibration(lm.model.config.vocab_size))
    return result, save_compressed(result, tmp_path / "out")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


STALLED = textwrap.dedent("""
    import importlib, sys, time
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    module, _, attr = {stall!r}.partition(":")
    *path, name = attr.split(".")
    owner = importlib.import_module(module)
    for part in path:
        owner = getattr(owner, part)
    def stalled(*args, **kwargs):  # the write gets this far, then waits for the kill
        for arg in args:
            if isinstance(arg, (str, Path)) and not Path(arg).is_dir():
                Path(arg).write_bytes(b"partial")  # half a file
            elif hasattr(arg, "flush"):
                arg.flush()  # what a writer wrote so far (a GGUF header) reaches the disk
        open({marker!r}, "w").write("writing")
        time.sleep(120)
    setattr(owner, name, stalled)
""")


def _killed_midway(stall: str, run: str, tmp_path: Path) -> None:
    """Run ``run`` (Python) in a child process whose ``stall`` ("module:attr", a writer) writes part of
    its file and waits; SIGKILL the child there, as a power cut or the OOM killer would."""
    marker = tmp_path / "marker"
    marker.unlink(missing_ok=True)
    script = STALLED.format(tests=str(TESTS), stall=stall, marker=str(marker)) + textwrap.dedent(run)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=TESTS.parent)
    deadline = time.time() + 600  # the child imports torch and may compress first; a loaded machine is slow
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    if not marker.exists():
        proc.kill()
        pytest.fail("the child never reached the write")
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_save_killed_midway_leaves_the_previous_result(saved, tiny_dirs, tmp_path):
    result, out = saved
    before = _logits(load_compressed(out, device="cpu").model)
    _killed_midway("safetensors.torch:save_model", f"""
        from engine import compress, load_model, save_compressed
        from test_faults import _calibration
        lm = load_model({str(tiny_dirs["llama"])!r}, device="cpu")
        result = compress(lm, "fasp", 0.5, calibration=_calibration(lm.model.config.vocab_size))
        save_compressed(result, {str(out)!r}, force=True)
    """, tmp_path)
    torch.testing.assert_close(_logits(load_compressed(out, device="cpu").model), before, rtol=0, atol=0)
    assert _leftovers(out)  # the killed save's temp folder is still there ...
    save_compressed(result, out, force=True)  # ... until the next save of the same folder clears it
    assert _leftovers(out) == []
    torch.testing.assert_close(_logits(load_compressed(out, device="cpu").model), before, rtol=0, atol=0)


def _contents(path: Path) -> dict[str, bytes]:
    """Every file of a file or folder output, by name, with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


EXPORTS = {  # how the child exports: the CLI, or the engine's public call
    "cli": "from engine.cli import main\nmain(['export', {source!r}, '--format', {fmt!r}, '--out', {out!r}, '--force'])",
    "api": "from engine import export_result\nexport_result({source!r}, {fmt!r}, out={out!r}, force=True)",
}
WRITERS = {"gguf": "gguf:GGUFWriter.write_tensors_to_file", "hf": "safetensors.torch:save_file"}


@pytest.mark.parametrize("how, fmt, previous", [("cli", "gguf", True), ("cli", "hf", True), ("api", "gguf", False)])
def test_an_export_killed_midway_leaves_the_previous_output_or_none(saved, tmp_path, how, fmt, previous):
    from engine import export_result

    _, source = saved
    target = tmp_path / ("model.gguf" if fmt == "gguf" else "model-hf")
    if previous:
        export_result(source, fmt, out=target)
    before = _contents(target) if previous else None
    _killed_midway(WRITERS[fmt], EXPORTS[how].format(source=str(source), fmt=fmt, out=str(target)), tmp_path)
    assert (_contents(target) if target.exists() else None) == before  # the previous output whole, or none
    assert _leftovers(target)  # the killed export's temp is beside it, never at the target ...
    export_result(source, fmt, out=target, force=True)  # ... until the next export of the same target clears it
    assert _leftovers(target) == []
    fresh = tmp_path / "fresh" / target.name
    export_result(source, fmt, out=fresh)
    assert _contents(target) == _contents(fresh)  # whole: the bytes of an export never interrupted


def test_a_full_disk_leaves_nothing_and_says_so(saved, monkeypatch):
    import safetensors.torch as st

    result, out = saved
    before = sorted(p.name for p in out.iterdir())

    def full(model, filename, *a, **k):
        Path(filename).write_bytes(b"x" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_model", full)
    with pytest.raises(SlimLabError, match="No space left on device") as info:
        save_compressed(result, out, force=True)
    assert str(out) in str(info.value)
    assert sorted(p.name for p in out.iterdir()) == before and _leftovers(out) == []
    fresh = out.with_name("fresh")
    with pytest.raises(SlimLabError):
        save_compressed(result, fresh)
    assert not fresh.exists() and _leftovers(fresh) == []


def test_a_save_interrupted_between_the_renames_is_restored(saved):
    """The one moment the folder is absent: the old copy is renamed aside, the new one not yet in place."""
    result, out = saved
    before = _logits(load_compressed(out, device="cpu").model)
    aside = out.with_name(f".{out.name}.old-123")
    out.rename(aside)
    save_compressed(result, out.with_name("other"))  # unrelated saves leave it alone
    assert aside.exists()
    with pytest.raises(ConfigError):  # the restored folder is there again, so overwriting needs force
        save_compressed(result, out)
    torch.testing.assert_close(_logits(load_compressed(out, device="cpu").model), before, rtol=0, atol=0)
    assert _leftovers(out) == []


def _stop_in_save_model(monkeypatch, stop) -> None:
    """The user presses Stop while the weights are being written (``stop`` presses it)."""
    import safetensors.torch as st

    real = st.save_model

    def pressed(*args, **kwargs):
        stop()
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "save_model", pressed)


@pytest.mark.parametrize("when", ["weights", "tokenizer and slimlab.json", "putting the folder in place",
                                  "while writing the weights"])
def test_a_stop_while_saving_writes_nothing_and_keeps_the_previous_folder(saved, when, monkeypatch):
    from engine import CancelToken, Reporter
    from engine.errors import Cancelled

    result, out = saved
    before, inode, token = _contents(out), out.stat().st_ino, CancelToken()
    if when == "while writing the weights":
        _stop_in_save_model(monkeypatch, token.cancel)
    reporter = Reporter(callback=lambda e: e.message == when and token.cancel(), cancel=token)
    with pytest.raises(Cancelled, match=f"Saving cancelled: nothing was written; '{out}' is as it was"):
        save_compressed(result, out, force=True, progress=reporter)
    assert _contents(out) == before and out.stat().st_ino == inode and _leftovers(out) == []
    fresh = out.with_name("fresh")
    with pytest.raises(Cancelled):  # a folder that was not there is still not there
        save_compressed(result, fresh, progress=reporter)
    assert not fresh.exists() and _leftovers(fresh) == []
    monkeypatch.undo()
    events = []
    save_compressed(result, out, force=True, progress=Reporter(callback=events.append, cancel=CancelToken()))
    assert out.stat().st_ino != inode and events[-1].message == "saved"
    torch.testing.assert_close(_logits(load_compressed(out, device="cpu").model), _logits(result.model))


def _damage(out: Path, how: str) -> str:
    """Damage the saved folder one way; returns the file the error must name."""
    if how == "truncated weights":
        weights = out / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        return "model.safetensors"
    if how == "future format":
        meta = json.loads((out / "slimlab.json").read_text())
        meta["format_version"] = 99
        (out / "slimlab.json").write_text(json.dumps(meta))
        return "slimlab.json"
    if how == "malformed meta":
        (out / "slimlab.json").write_text("{not json")
        return "slimlab.json"
    if how == "missing tokenizer":
        for f in out.glob("tokenizer*"):
            f.unlink()
        return "tokenizer"
    if how == "config disagrees":
        config = json.loads((out / "config.json").read_text())
        config["hidden_size"] *= 2
        (out / "config.json").write_text(json.dumps(config))
        return "config.json"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated weights", "future format", "malformed meta", "missing tokenizer",
                                 "config disagrees"])
def test_a_damaged_folder_gets_a_message_naming_the_file(saved, how, capsys):
    _, out = saved
    named = _damage(out, how)
    with pytest.raises(SlimLabError) as info:
        load_compressed(out, device="cpu")
    assert named in str(info.value)
    assert main(["info", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and named in err[0] and "Traceback" not in err[0]


def test_out_of_memory_while_compressing_keeps_the_original(tiny_dirs, monkeypatch):
    from engine.methods import get_method

    lm = load_model(str(tiny_dirs["llama"]), device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    impl = type(get_method("fasp"))

    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(impl, "compress", oom)
    with pytest.raises(SlimLabError, match="Out of memory.*original model is unchanged"):
        compress(lm, "fasp", 0.3, calibration=_calibration(lm.model.config.vocab_size))
    after = lm.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_out_of_memory_while_evaluating_is_a_clear_error(tiny_dirs, monkeypatch, data_dir):
    from engine import api

    lm = load_model(str(tiny_dirs["llama"]), device="cpu")

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(lm.model, "forward", oom)
    with pytest.raises(SlimLabError, match="[Oo]ut of memory"):
        api.evaluate_perplexity(lm, seqlen=64, max_windows=2)


# --- out of memory under a UI session: a toast, the session as it was, the next run works -----------------

UI_CALIB = ("wikitext2:validation", 8, 64, 42)  # source, samples, tokens per sample, seed


@pytest.fixture
def ui_session(tiny_dirs, data_dir):
    """A UI session on the tiny llama holding one run and the original's and that run's perplexity."""
    from ui.handlers import compress as hc
    from ui.handlers import evaluate as he
    from ui.handlers import model as hm
    from ui.state import ModelCache, Session

    session = Session()
    hm.load(session, str(tiny_dirs["llama"]), cache=ModelCache(capacity=1))
    hc.run(session, "slicegpt", {}, 0.25, "uniform", None, *UI_CALIB, [])
    he.run_perplexity(session, ["original", "compressed"], "wikitext2", 64, 2)
    return session


@contextlib.contextmanager
def _out_of_memory(model):
    """Every forward pass through the attention of ``model``'s second layer runs out of memory (as a GPU would):
    the whole model's, and the layer-by-layer passes of plan scores and compression."""
    from engine.models.adapters import adapter_for

    def oom(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    adapter = adapter_for(model)
    handle = adapter.attention(adapter.layers(model)[1]).register_forward_pre_hook(oom)
    try:
        yield
    finally:
        handle.remove()


def _toast(handler, *args) -> str:
    """Call ``handler`` as the app does (wrapped by ``guarded``); the error toast's message."""
    import gradio as gr

    from ui.wiring import guarded

    with pytest.raises(gr.Error) as info:
        guarded(handler)(*args, lambda *a, **k: None)
    return info.value.message


def _session_view(session) -> tuple:
    return (session.result, session.run, [r.run_id for r in session.history], json.dumps(session.original_evals),
            [json.dumps(r.evals) for r in session.history])


@pytest.mark.parametrize("schedule", ["uniform", "block-influence"])  # OOM in the method's pass, in the plan's scores
def test_out_of_memory_in_the_compress_tab_is_a_toast_and_keeps_the_session(ui_session, schedule):
    from ui.handlers import compress as hc

    session, before = ui_session, _session_view(ui_session)
    original = {k: v.clone() for k, v in session.lm.model.state_dict().items()}
    args = (session, "slicegpt", {}, 0.25, schedule, None, *UI_CALIB, [])
    with _out_of_memory(session.lm.model):
        message = _toast(hc.run, *args)
    assert message.startswith("Out of memory while") and "Tried to allocate 2.00 GiB" in message, message
    assert "original model is unchanged" in message
    assert _session_view(session) == before  # the previous run, its evaluations and the original's, as they were
    assert all(torch.equal(original[k], v) for k, v in session.lm.model.state_dict().items())
    hc.run(*args)  # memory back: the same run goes through
    assert [r.run_id for r in session.history] == [1, 2] and session.run.run_id == 2


@pytest.mark.parametrize("which", ["original", "compressed"])
def test_out_of_memory_in_the_evaluate_tab_is_a_toast_and_keeps_the_measurements(ui_session, which):
    from ui.handlers import evaluate as he

    session, before = ui_session, _session_view(ui_session)
    model = session.lm.model if which == "original" else session.result.model
    args = (session, ["original", "compressed"], "wikitext2", 32, 3, None)  # other settings than the ones kept
    with _out_of_memory(model):
        message = _toast(he.run_perplexity, *args)
    assert message.startswith("Out of memory while computing perplexity") and "2.00 GiB" in message, message
    assert _session_view(session) == before  # neither model's earlier figures replaced by half of a new pair
    he.run_perplexity(*args)
    assert session.original_evals["perplexity"] != json.loads(before[3])["perplexity"]


@pytest.mark.parametrize("source", ["wikitext2:validation", "generated"])  # OOM in the pass, in drawing the text
def test_out_of_memory_in_the_analyze_tab_is_a_toast_that_says_what_to_do(ui_session, source):
    from ui.handlers import analyze as ha

    session = ui_session
    ha.analyze(session, *UI_CALIB, 0.25)
    kept = session.analysis
    with _out_of_memory(session.lm.model):
        message = _toast(ha.analyze, session, source, 16, 32, 7, 0.25)
    assert message.startswith("Out of memory while") and "2.00 GiB" in message, message
    assert "fewer or shorter calibration samples" in message and "model is unchanged" in message
    assert session.analysis is kept  # the charts it drew stay (a failed event updates no output)


def test_out_of_memory_in_a_plan_preview_is_a_toast_and_keeps_the_plan(ui_session):
    from ui.handlers import compress as hc

    session = ui_session
    hc.preview_plan(session, "uniform", 0.3, None, *UI_CALIB)
    kept = (session.plan, session.plan_key)
    with _out_of_memory(session.lm.model):  # block influence on calibration not scored yet
        message = _toast(hc.preview_plan, session, "block-influence", 0.3, None, "wikitext2:validation", 16, 32, 7)
    assert message.startswith("Out of memory while scoring the layers (block influence)"), message
    assert "Tokens per sample" in message and (session.plan, session.plan_key) == kept
    assert hc.preview_plan(session, "block-influence", 0.3, None, "wikitext2:validation", 16, 32, 7).rows


def test_a_stop_while_saving_in_the_export_tab_warns_and_keeps_the_previous_folder(ui_session, tmp_path,
                                                                                   monkeypatch):
    import gradio as gr

    from ui.handlers import export as hx
    from ui.wiring import guarded

    session, folder = ui_session, tmp_path / "saved"
    hx.save(session, str(folder), False)
    before, inode = _contents(folder), folder.stat().st_ino
    warned = []
    monkeypatch.setattr(gr, "Warning", lambda message, *a, **k: warned.append(message))
    _stop_in_save_model(monkeypatch, session.stop)  # the Stop button, pressed mid-write
    assert guarded(hx.save)(session, str(folder), True, lambda *a, **k: None) == gr.skip()  # outputs keep theirs
    assert warned == [f"Saving cancelled: nothing was written; '{folder}' is as it was."]
    assert _contents(folder) == before and folder.stat().st_ino == inode and _leftovers(folder) == []
    assert session.saved == folder
    monkeypatch.undo()
    assert hx.save(session, str(folder), True).startswith("Saved run 1")
    assert folder.stat().st_ino != inode and _leftovers(folder) == []


def test_a_stop_while_an_export_saves_the_run_writes_nothing(ui_session, tmp_path, monkeypatch):
    """Export of a run not saved yet saves it to a temporary folder first; a Stop there ends the export."""
    from engine.errors import Cancelled
    from ui.handlers import export as hx

    session, target = ui_session, tmp_path / "model-hf"
    _stop_in_save_model(monkeypatch, session.stop)
    with pytest.raises(Cancelled, match="Saving cancelled: nothing was written"):
        hx.export(session, str(target), False, "hf", "auto")
    assert not target.exists() and _leftovers(target) == [] and session.saved is None
    monkeypatch.undo()
    assert "model-hf" in hx.export(session, str(target), False, "hf", "auto") and target.is_dir()
