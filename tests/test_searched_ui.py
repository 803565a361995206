"""The searched schedule in the Compress tab, as plain handlers on a tiny random model: its controls from
its schema, the live best-KL chart while the search runs, the final plan beside the uniform one, and Stop
(keeps the previous run; the next Run reuses the level database)."""
from __future__ import annotations

import json

import pytest

from engine import CurvePoint, ProgressEvent, Reporter
from engine.errors import Cancelled
from ui import figures
from ui.handlers import compress as hc
from ui.handlers import model as hm
from ui.handlers.common import Curves, live
from ui.state import ModelCache, Session

CALIB = ("wikitext2:validation", 8, 32, 0)


@pytest.fixture(scope="module")
def cache():
    return ModelCache(capacity=1)


@pytest.fixture
def session(tiny_dirs, cache, data_dir):
    s = Session()
    hm.load(s, str(tiny_dirs["llama"]), cache=cache)
    return s


def controls(db, **over) -> dict:
    """The searched schedule's controls as gradio hands them over: every schema field, blanks as None/''."""
    values = {p["name"]: p["default"] for p in hc.schedule_schemas()["searched"]}
    values |= {"level_step": 0.25, "max_level": 0.5, "generations": 3, "offspring": 3, "tokens": 64,
               "first_tokens": 32, "survivors": 2, "seed": 2, "database": str(db), "minutes": None}
    return values | over


def test_the_schema_gives_every_budget_control_and_the_defaults_run():
    schema = {p["name"]: p for p in hc.schedule_schemas()["searched"]}
    assert {"generations", "minutes", "offspring", "tokens", "seed", "database"} <= set(schema)
    assert schema["generations"]["kind"] == "int" and schema["minutes"]["default"] is None
    from ui.tabs.compress import control

    assert control(schema["generations"]).value == 20
    minutes = control(schema["minutes"])  # optional: a text box, since a number box sends 0 when left blank
    assert minutes.value == "" and minutes.placeholder == "blank: unset"
    from engine import get_schedule

    assert get_schedule("searched").resolve_params({"minutes": " ", "generations": 3})["minutes"] is None
    assert get_schedule("searched").resolve_params({"minutes": "1.5"})["minutes"] == 1.5


def test_the_live_chart_gets_every_generation_while_the_search_runs(session, tmp_path):
    seen: list[list[float]] = []
    view = None
    for out in hc.run_live(session, "fasp", {}, 0.25, "searched", controls(tmp_path / "db"), *CALIB, []):
        if isinstance(out, Curves):
            assert view is None, "curves come while the run goes, before its result"
            _, xs, _ = out.points["best KL to the original"]
            seen.append(list(xs))
            fig = figures.live_curves(out.points)
            assert list(fig.data[0].x) == xs and fig.layout.xaxis.title.text == "generation"
        else:
            view = out
    assert seen and seen[0][0] == 0 and all(a == seen[-1][:len(a)] for a in seen)  # at most one redraw a second
    history = session.result.recipe.plan.options["history"]
    assert list(view.live.data[0].x) == [0, 1, 2, 3]
    assert list(view.live.data[0].y) == [h[1] for h in history]  # the finished curve is the recipe's trace
    bars = [t for t in view.plan.figure.data if t.type == "bar"]
    assert [b.name for b in bars] == ["fraction removed", "uniform at the same total (mean 0.250)"]
    assert list(bars[0].y) == session.result.recipe.plan.ratios and list(bars[1].y) == [0.25] * 3


def test_stop_during_the_search_keeps_the_previous_run_and_the_rerun_reuses_levels(session, tmp_path):
    hc.run(session, "fasp", {}, 0.25, "uniform", None, *CALIB, [])
    before, run_id = session.result, session.run.run_id
    drawn = []
    job = hc.run_live(session, "fasp", {}, 0.25, "searched", controls(tmp_path / "db", generations=100000),
                      *CALIB, [])
    with pytest.raises(Cancelled):
        for out in job:
            assert isinstance(out, Curves), "a stopped search has no result"
            drawn.append(len(out.points["best KL to the original"][1]))
            session.stop()  # the Stop button, from another thread than the search's
    assert drawn and drawn[0] >= 1
    assert session.result is before and session.run.run_id == run_id  # nothing of the stopped run is kept
    events: list[ProgressEvent] = []
    view = hc.run(session, "fasp", {}, 0.25, "searched", controls(tmp_path / "db", generations=1), *CALIB, [],
                  events.append)
    assert any(e.stage == "level database" and "2 of 2 levels reused" in e.message for e in events)
    assert f"0 levels built, 2 reused from {tmp_path / 'db'}; each layer compressed on the original's inputs" \
        in view.plan.note  # the default: a database built on the dense model's inputs
    assert session.run.run_id == run_id + 1 and session.result.recipe.plan.options["levels_reused"] == 2


def test_a_run_without_a_curve_says_so_and_flat_plans_stand_alone(session):
    outs = list(hc.run_live(session, "fasp", {}, 0.25, "uniform", None, *CALIB, []))
    assert len(outs) == 1 and "drew no live curve" in outs[0].live.layout.annotations[0].text
    assert [t.type for t in outs[0].plan.figure.data] == ["bar"]


def test_live_forwards_progress_and_raises_the_jobs_error_after_its_curves():
    forwarded, stopped = [], []

    def work(report):
        report(ProgressEvent("search", 0, 2, "", CurvePoint("loss", 0, 1.0)))
        report(ProgressEvent("search", 1, 2, "plain"))
        raise Cancelled("stopped")

    job = live(work, forwarded.append, lambda: stopped.append(True))
    first = next(job)
    assert first.points == {"loss": ("step", [0], [1.0])}
    with pytest.raises(Cancelled):
        next(job)
    assert [e.step for e in forwarded] == [0, 1] and not stopped


def test_live_redraws_at_most_once_a_second_and_the_first_point_at_once():
    def work(report):
        for step in range(2000):
            report(ProgressEvent("search", step, 2000, "", CurvePoint("loss", step, 1.0 / (step + 1))))
        return "done"

    outs = [out if isinstance(out, str) else len(out.points["loss"][1]) for out in live(work, None, lambda: None)]
    assert outs[0] == 1 and outs[-1] == "done" and len(outs) < 20  # not one redraw per point


def test_closing_the_live_generator_stops_its_job():
    stopped = []
    reporter = Reporter()

    def work(report):
        reporter.callback = report
        for step in range(10 ** 6):
            reporter("x", step, 0, "", CurvePoint("c", step, 0.0))
        return "never"

    job = live(work, None, lambda: (stopped.append(True), setattr(reporter, "cancel", _cancelled())))
    next(job)
    job.close()
    assert stopped == [True]


def _cancelled():
    from engine import CancelToken

    token = CancelToken()
    token.cancel()
    return token


def test_the_recipe_keeps_the_search_settings_and_the_cli_replays_the_search(session, tiny_dirs, tmp_path):
    """The UI's recipe (settings, seed, trace) run again by ``slimlab compress --recipe ... --schedule searched``:
    the search re-runs from the recorded settings on the same level database and finds the same plan."""
    from engine import Recipe
    from engine.cli import main

    db = tmp_path / "db"
    hc.run(session, "fasp", {}, 0.25, "searched", controls(db, seed=5), *CALIB, [])
    ui_recipe = session.result.recipe
    assert ui_recipe.schedule_params["seed"] == 5 and ui_recipe.schedule_params["generations"] == 3
    assert ui_recipe.plan.options["seed"] == 5 and len(ui_recipe.plan.options["history"]) == 4
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(ui_recipe.to_dict()))  # what the UI's recipe download holds
    out = tmp_path / "replayed"
    assert main(["compress", str(tiny_dirs["llama"]), "--recipe", str(path), "--schedule", "searched", "--out",
                 str(out), "--quiet"]) == 0
    replayed = Recipe.read(out / "slimlab.json")
    assert replayed.plan.ratios == ui_recipe.plan.ratios and replayed.schedule_params == ui_recipe.schedule_params
    assert [h[:2] for h in replayed.plan.options["history"]] == [h[:2] for h in ui_recipe.plan.options["history"]]
    assert replayed.plan.options["levels_reused"] == 2


def test_the_app_streams_the_live_chart_before_the_result(app_url, tiny_dirs, tmp_path):
    """Through the real app (gradio_client): the Run event yields live-chart updates while the search runs,
    each leaving the other outputs as they were, then the result with the finished curve."""
    gradio_client = pytest.importorskip("gradio_client")
    c = gradio_client.Client(app_url, verbose=False)
    c.predict(str(tiny_dirs["llama"]), api_name="/load_model")
    search = {f"searched_{k}": v for k, v in controls(tmp_path / "db", generations=4, minutes="").items()}
    job = c.submit(method="fasp", ratio=0.25, schedule="searched", source=CALIB[0], nsamples=CALIB[1],
                   seqlen=CALIB[2], seed=CALIB[3], **search, api_name="/compress")
    final = job.result(timeout=600)
    outputs = job.outputs()
    assert len(outputs) >= 2 and outputs[-1] == final
    live_points = [json.loads(out[-2]["plot"])["data"][0]["x"] for out in outputs[:-1]]
    assert live_points[0][0] == 0 and all(len(p) >= 1 for p in live_points)
    assert json.loads(final[-2]["plot"])["data"][0]["x"] == [0, 1, 2, 3, 4]
    assert "run 1" in final[-1] and "Searched over levels" in final[4]
