"""Issue 17's bad-input matrix for the UI: every named endpoint of the real app gets, in each of its
inputs in turn, values a browser or an API client can send that are wrong (blank, not a number, out of
range on either side, huge, unknown names, path traversal, malformed or missing recipe files). Each must
end as a result or a toast (``gr.Error``/``gr.Warning``) that says what is wrong, never as the
"Unexpected error" the wiring shows for an exception nobody anticipated, and the session's original
model must come out unchanged.

The other inputs keep the app's own defaults, shrunk where they size a job (samples, windows, tokens)
so that an accepted value runs a tiny job on a tiny model, except that the bad value's control is made
one that is read (``_reading``: its method or schedule selected, recovery on for a recovery setting).
Run compresses for real only where the value can change what is computed (``REAL_COMPRESSION``; elsewhere
the recipe is checked as the engine checks it), and speed is measured once per call at batch 1.

Run it alone with ``python -m pytest -q -s tests/test_ui_bad_input.py`` (it prints, per endpoint, how many
bad values were tried and how many were refused with a toast)."""
from __future__ import annotations

import copy
import inspect
import json
import math
import time
import traceback
from pathlib import Path

import gradio as gr
import pytest
import torch

from engine import available_methods, available_schedules, get_method
from engine import compress as engine_compress
from engine.evaluate import measure_speed
from engine.methods import check_architecture
from tiny import save_model_dir
from ui import build_app
from ui.handlers import compress as hc
from ui.handlers.compress import TABLE_SCHEDULE
from ui.handlers import model as hm
from ui.state import ModelCache, Session

pytestmark = pytest.mark.slow

HUGE_TEXT = "word " * 40_000
BAD = {  # component type -> values a browser or an API client can send for it
    "Number": [None, math.nan, -1, 1e30],
    "Slider": [None, math.nan, -1, 1e30],
    "Textbox": ["", HUGE_TEXT, "../../etc/passwd", "-1"],
    "Dropdown": [None, "", "no-such-choice"],
    "Radio": [None, "no-such-choice"],
    "CheckboxGroup": [[], ["no-such-choice"]],
    "Checkbox": [None],
    "Dataframe": [[], [["0", "abc", ""]], [["0", "1e9", ""], ["1", "-3", ""]]],
}
BAD_MODEL = ["no-such-choice", "../../etc/passwd", "/no/such/model.gguf"]  # empty means the demo: not bad
BAD_FILES = {  # an uploaded recipe: name -> content (None: no file is written, the path is the value)
    "../../etc/passwd": None, "/no/such/recipe.json": None, "not-json.json": "{ratio: ", "a-list.json": "[1, 2]",
    "binary.json": b"\xff\xfe\x00\x81", "bad.yaml": "method: [unclosed", "wrong-fields.json": '{"ratio": "x", "z": 1}',
}
SMALL = {  # label -> a default that keeps an accepted call to a tiny job
    "Samples": 4, "Tokens per sample": 32, "seqlen": 32, "windows": 1, "Items per task (limit)": 2,
    "Prefill tokens": 8, "Decode tokens": 4, "Max new tokens": 4, "Steps": "1", "generations": 1, "tokens": 64,
    "first_tokens": 32, "offspring": 2, "Overwrite": True, None: "hello",  # None: the chat box has no label
}
REAL_COMPRESSION = ("ratio", "fasp_", "searched_database")  # the method's controls, the plan's size, a folder
DEFAULTS_REFUSED = {"edit_plan": "an empty table before any preview", "push": "the Hub is unreachable here"}


def _default(component, recipe: str):
    label = getattr(component, "label", None)
    if label in SMALL:
        return SMALL[label]
    if type(component).__name__ == "UploadButton":
        return recipe
    value = component.value
    if type(component).__name__ == "Dataframe":
        return (value or {}).get("data", []) if isinstance(value, dict) else value
    return value() if callable(value) else value


def _endpoints(app) -> dict:
    """SlimLab's endpoints (not gradio's own helpers), one per distinct handler and inputs (the
    planned-size trigger repeats per control)."""
    seen, out = set(), {}
    for fn in app.fns.values():
        if not fn.api_name or not fn.inputs or not getattr(fn.fn, "__module__", "").startswith("ui."):
            continue
        key = (getattr(fn.fn, "__name__", ""), tuple(id(c) for c in fn.inputs))
        if key not in seen:
            seen.add(key)
            out[fn.api_name] = fn
    return out


def _call(fn, args):
    extra = list(inspect.signature(fn.fn).parameters)[len(args):]  # what gradio adds: progress, request
    out = fn.fn(*args, *[(lambda *a, **k: None) if name == "progress" else None for name in extra])
    if inspect.isgenerator(out):
        for _ in out:
            pass


def _owners() -> dict[str, tuple[str, str]]:
    """A control's parameter-name prefix -> (the input that selects its owner, the owner): a method's or a
    schedule's controls are read only while it is the selected one."""
    owners = {f"{name.replace('-', '_')}_": ("method", name) for name in available_methods()}
    owners |= {f"{name.replace('-', '_')}_": ("schedule", name) for name in available_schedules()}
    return owners | {"plan": ("schedule", TABLE_SCHEDULE), "recovery_": ("recovery_kind", "lora"),
                     "compensation_halves": ("compensation_share", 0.1), "vocabulary_source": ("vocabulary_keep", 300)}


def _reading(param: str, names: list[str], args: list) -> list:
    """``args`` with the bad value's control made one that is read: its method or schedule selected,
    recovery on for a recovery setting, a compensation budget for its halves, tokens to keep for the counted
    text, the manual schedule for the plan table."""
    args = list(args)
    for prefix, (selector, value) in sorted(_owners().items(), key=lambda item: -len(item[0])):
        if param.startswith(prefix) and param != selector and selector in names:
            args[names.index(selector)] = value
            break
    return args


def _origin(exc: BaseException) -> str:
    """Where the exception behind an "Unexpected error" toast was raised (file:line), to find the bug."""
    cause = exc.__cause__ or exc
    frames = traceback.extract_tb(cause.__traceback__)
    return f" [{Path(frames[-1].filename).name}:{frames[-1].lineno}]" if frames else ""


def _bad_files(folder: Path) -> list[str]:
    paths = []
    for name, content in BAD_FILES.items():
        if content is None:
            paths.append(name)
            continue
        path = folder / name
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
        paths.append(str(path))
    return [None, ""] + paths


@pytest.fixture(scope="module")
def session_with_run(tmp_path_factory, data_dir):
    path = str(save_model_dir(tmp_path_factory.mktemp("ui-bad") / "llama", "llama", max_position_embeddings=2048))
    session = Session()
    hm.load(session, path, cache=ModelCache(capacity=1))
    hc.run(session, "fasp", {}, 0.25, "uniform", None, "wikitext2:validation", 4, 32, 42, [])
    return session, path


class _Switch:
    value = True


def _compress_for(result, real_compression: _Switch):
    """The engine's compress where a value can change what it computes (``REAL_COMPRESSION``); elsewhere
    (another method's or schedule's controls, recovery settings with recovery off) its checks on the
    recipe, then a copy of a result: a real tiny compression per bad value would take half an hour."""
    def compress(lm, recipe, **kwargs):
        if real_compression.value:
            return engine_compress(lm, recipe, **kwargs)
        recipe = recipe.validate()
        check_architecture(get_method(recipe.method), lm.adapter)
        recipe.check_layers(len(lm.adapter.layers(lm.model)))
        return copy.deepcopy(result)

    return compress


def _speed_once(subject, prefill_len, decode_tokens, **kwargs):
    """The engine's speed measurement at batch 1, once: the handler's checks are what is under test."""
    return measure_speed(subject.model, subject.tokenizer, prefill_len, decode_tokens, batch_sizes=(1,), repeats=1,
                         warmup=0, **kwargs)


def test_every_ui_endpoint_answers_bad_values_with_a_message(session_with_run, monkeypatch, tmp_path):
    session, path = session_with_run
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(session.run.recipe))
    bad_files = _bad_files(tmp_path)
    real_compression = _Switch()
    monkeypatch.setattr("ui.handlers.compress.compress", _compress_for(session.result, real_compression))
    monkeypatch.setattr("ui.handlers.evaluate.evaluate_speed", _speed_once)
    monkeypatch.setitem(hm.load.__kwdefaults__, "cache", ModelCache(capacity=1))  # not the app's shared cache
    # saving as on a Space: only under the outputs folder (tmp_path), so ../../etc/passwd is refused; relative
    # paths resolve in tmp_path either way
    monkeypatch.setenv("SLIMLAB_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setenv("SLIMLAB_RESTRICT_PATHS", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SLIMLAB_CACHE", str(tmp_path / "cache"))  # a searched plan's level database goes there
    first = session.lm.model
    original = {k: v.clone() for k, v in first.state_dict().items()}
    app = build_app(preload_demo=False)
    endpoints = _endpoints(app)
    unexpected, refused_defaults, figures = [], [], {}
    for name, fn in endpoints.items():
        start, tried, toasts = time.perf_counter(), 0, 0
        defaults = [session if isinstance(c, gr.State) else _default(c, str(recipe)) for c in fn.inputs]
        param_names = list(inspect.signature(fn.fn).parameters)
        for i, component in enumerate(fn.inputs):  # the tiny model, never the demo; saves into tmp_path
            label = getattr(component, "label", None)
            if label in ("Model", "Folder"):
                defaults[i] = path if label == "Model" else str(tmp_path / "saved")
        real_compression.value = True
        try:  # the defaults themselves work, so each bad value is the only thing wrong
            _call(fn, defaults)
        except gr.Error as exc:
            if name not in DEFAULTS_REFUSED:
                refused_defaults.append(f"{name} (its defaults): {exc.message[:200]}{_origin(exc)}")
        for i, component in enumerate(fn.inputs):
            kind, label = type(component).__name__, getattr(component, "label", None)
            bad_values = BAD_MODEL if label == "Model" else bad_files if kind == "UploadButton" else BAD.get(kind, [])
            for bad in bad_values:
                args = _reading(param_names[i], param_names, defaults)
                args[i] = bad
                tried += 1
                real_compression.value = name == "compress" and param_names[i].startswith(REAL_COMPRESSION)
                where = f"{name}[{label or i}]={str(bad)[:30]!r}"
                try:
                    _call(fn, args)
                except gr.Error as exc:
                    toasts += 1
                    if "Unexpected error" in str(exc.message):
                        unexpected.append(f"{where}: {exc.message[:200]}{_origin(exc)}")
                except Exception as exc:  # noqa: BLE001 - the point: nothing else may escape
                    unexpected.append(f"{where}: {type(exc).__name__}: {str(exc)[:200]}{_origin(exc)}")
        figures[name] = (tried, toasts)
        print(f"{name}: {tried} bad values, {toasts} refused with a toast, {time.perf_counter() - start:.1f} s",
              flush=True)

    total = sum(tried for tried, _ in figures.values())
    print(f"{total} bad values over {len(endpoints)} endpoints, "
          f"{sum(toasts for _, toasts in figures.values())} refused with a toast")
    problems = refused_defaults + unexpected
    assert not problems, "\n".join(problems)
    takes_input = [name for name, fn in endpoints.items() if not all(isinstance(c, gr.State) for c in fn.inputs)]
    assert total > 500 and all(figures[name][0] for name in takes_input)
    for model in (first, session.lm.model):  # the model loaded first, and the one the session holds now
        for key, value in model.state_dict().items():
            assert torch.equal(value, original[key]), key
