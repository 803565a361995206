"""Export tab: save the compressed model (SlimLab's folder, or a format other engines run), download
its recipe, push it to the Hub with a card."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine import (ConfigError, Reporter, check_export, check_repo_id, export_formats, export_result, model_card, push_folder,
                    read_meta, save_compressed)

from .. import text
from ..state import Session
from .common import Progress, job, need_result

SLIMLAB = "slimlab"  # SlimLab's own folder (``save_compressed``); every other format is the engine's export registry


def output_root() -> Path:
    """Where saved models go by default ($SLIMLAB_OUTPUT_DIR, else ./outputs), read when needed."""
    return Path(os.environ.get("SLIMLAB_OUTPUT_DIR", "outputs"))


def on_space() -> bool:
    """Running as a Hugging Face Space (the Space sets ``SPACE_ID``)."""
    return bool(os.environ.get("SPACE_ID"))


def _restricted() -> bool:
    """On a public Space, only the outputs folder may be written."""
    return on_space() or os.environ.get("SLIMLAB_RESTRICT_PATHS") == "1"


OAUTH_PACKAGES = ("authlib", "itsdangerous")  # what gradio's OAuth routes import (the ``oauth`` extra)
OAUTH_ENV = ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "OAUTH_SCOPES", "OPENID_PROVIDER_URL")  # ``hf_oauth: true``
PUSH_ABOUT = ("**Push to the Hugging Face Hub** with a generated model card: accounting, recipe, and the "
              "perplexity, zero-shot and speed this session measured in Evaluate")
TOKEN_NOTE = " (the token is used for this push only and never stored)."


@dataclass
class HubSignIn:
    """How the Export tab gets a Hub token: gradio's "Sign in with Hugging Face" on a Space where its OAuth
    works (``oauth``), the token field otherwise; ``note`` is the panel's text and says which, and why."""

    oauth: bool
    note: str


def _sign_in_off() -> Optional[str]:
    """Why gradio's OAuth cannot run here (None: it can). gradio adds its login routes when the page is built
    and needs what it checks there: a real Space (SYSTEM=spaces; elsewhere it mocks the login with the
    machine's own Hub login), its packages, and the OAuth app a Space gets from ``hf_oauth: true``."""
    missing = [name for name in OAUTH_PACKAGES if importlib.util.find_spec(name) is None]
    unset = [name for name in OAUTH_ENV if not os.environ.get(name)]
    if os.environ.get("SYSTEM") != "spaces":
        return "SPACE_ID is set but this is not a Hugging Face Space (SYSTEM is not `spaces`)"
    if missing:
        return f"this Space lacks {' and '.join(missing)} (`pip install 'slimlab[oauth]'`)"
    if unset:
        return f"this Space has no OAuth app ({', '.join(unset)} unset: add `hf_oauth: true` to its README metadata)"
    return None


def hub_sign_in() -> HubSignIn:
    """Sign-in on a Space whose OAuth works (``_sign_in_off``); else the token field, with a note on a Space
    saying why sign-in is off."""
    if not on_space():
        return HubSignIn(False, PUSH_ABOUT + TOKEN_NOTE)
    off = _sign_in_off()
    if off:
        return HubSignIn(False, f"{PUSH_ABOUT}{TOKEN_NOTE} Sign-in with Hugging Face is off: {off}; paste a token.")
    return HubSignIn(True, f"{PUSH_ABOUT}. **Sign in with Hugging Face** to push to your account: the sign-in's "
                           "token is used for each push only and never stored.")


def default_folder(session: Session) -> str:
    if session.run is None:
        return str(output_root() / "compressed")
    s = session.run.summary
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(session.lm.spec).name if session.lm else "model").strip("-")
    return str(output_root() / f"{name}-{s['method']}-{round(100 * s['ratio'])}-run{session.run.run_id}")


def _target(folder: str, overwrite: bool) -> Path:
    folder = (folder or "").strip()
    if not folder:
        raise ConfigError("Give a folder to save into.")
    path = Path(folder).expanduser()
    if not overwrite and path.exists() and (path.is_file() or any(path.iterdir())):
        raise ConfigError(f"'{path}' already exists and is not empty; tick Overwrite or choose another folder.")
    _confine(path, "saved")
    return path


def _confine(path: Path, verb: str) -> None:
    """On a public server, only the outputs folder may be written or read back."""
    if _restricted():
        root = output_root().resolve()
        resolved = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if root != resolved and root not in resolved.parents:
            raise ConfigError(f"On this server models can only be {verb} under '{output_root()}/'.")


def save(session: Session, folder: str, overwrite: bool, progress: Progress = None) -> str:
    result = need_result(session)
    try:  # a name the file system refuses (too long, a file in the way, no permission) is the user's to fix
        path = _target(folder, bool(overwrite))
        out = save_compressed(result, path, force=bool(overwrite), progress=job(session, progress))
    except OSError as exc:
        raise ConfigError(f"Could not save into '{str(folder)[:80]}': {exc.strerror or exc}.") from None
    session.saved = out
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    return (f"Saved run {session.run.run_id} ({session.run.label}) to `{out}` ({size / 2**20:,.1f} MB). "
            f"Reload it with `slimlab info {out}` or `engine.load_compressed('{out}')`, or pick it in the Model tab.")


@dataclass
class FormatView:
    """What the controls show for one format: its dtypes (none for SlimLab's folder, which keeps the
    result's own), the default output path, and which results it can express."""

    dtypes: list[str]
    dtype: Optional[str]
    path: str
    about: str


def format_choices() -> list[tuple[str, str]]:
    """(label, name): SlimLab's folder first, then every export format the engine has installed."""
    return [("SlimLab folder", SLIMLAB)] + [(f.label, name) for name, f in export_formats().items()]


def pick_format(session: Session, name: str) -> FormatView:
    if name == SLIMLAB:
        return FormatView([], None, default_folder(session), "Reloads in SlimLab (Model tab, `slimlab info`) and "
                          "in transformers alone (a plain checkpoint, or `trust_remote_code=True` where the shapes "
                          "need it); weights as computed.")
    fmt = _format(name)
    base = Path(default_folder(session))
    path = base.with_name(base.name + (fmt.suffix if fmt.writes == "file" else f"-{fmt.name}"))
    return FormatView(list(fmt.dtypes), fmt.default_dtype, str(path), f"Writes one {fmt.writes}; exports {fmt.expresses}.")


def default_output(session: Session, name: str) -> str:
    """The output box after a new model or run: the default path for the format picked."""
    return pick_format(session, name).path


def _format(name: str):
    formats = export_formats()
    if name not in formats:
        raise ConfigError(f"Export format '{name}' is not available here; pick one of "
                          f"{', '.join(label for label, _ in format_choices())}.")
    return formats[name]


def export(session: Session, folder: str, overwrite: bool, fmt: str = SLIMLAB, dtype: Optional[str] = None,
           source: str = "", progress: Progress = None) -> str:
    """Write a result to ``folder`` (a file for single-file formats) in format ``fmt``: SlimLab's folder, or
    through the engine's exporter. The result is ``source`` (a folder SlimLab saved) or, when blank, the
    current run (saved to a temporary place first if it was not saved yet); the output appears only when
    complete. The arguments after ``overwrite`` have defaults so the ``/save`` API keeps its old call."""
    source = (source or "").strip()
    if fmt == SLIMLAB:
        if source:
            raise ConfigError(f"'{source}' is already a SlimLab folder; pick another format to export it.")
        return save(session, folder, overwrite, progress)
    form = _format(fmt)
    if source:
        _confine(Path(source).expanduser(), "read")
    else:  # a result the format cannot express is refused now, not after saving it to a temporary folder
        check_export(need_result(session), form.name, dtype or None)
    path = _target(folder, bool(overwrite))
    reporter = job(session, progress)
    reporter("export", 0, 2, "saving the result")
    result = Path(source).expanduser() if source else _saved_folder(session, reporter)
    what = f"`{result}`" if source else f"run {session.run.run_id} ({session.run.label})"
    report = export_result(result, form.name, dtype or None, path, force=bool(overwrite),
                           log=lambda msg: reporter("export", 1, 2, msg))
    reporter.finished("export", 2, "written")
    return text.export_report(report, what, form.label)


def recipe(session: Session) -> tuple[str, str]:
    """(path of a JSON file to download, the JSON text)."""
    result = need_result(session)
    body = json.dumps(result.recipe.to_dict(), indent=2, default=str)
    folder = Path(tempfile.mkdtemp(prefix="slimlab-recipe-"))
    path = folder / f"recipe-run{session.run.run_id}.json"
    path.write_text(body)
    return str(path), body


def _saved_folder(session: Session, reporter: Optional[Reporter] = None) -> Path:
    """The folder of the current result, saving it to a temporary place when it was not saved yet (a Stop
    during that save, through ``reporter``, ends the export or push there)."""
    need_result(session)
    if session.saved is not None and session.saved.exists():
        return session.saved
    out = save_compressed(session.result, Path(tempfile.mkdtemp(prefix="slimlab-push-")) / "model", progress=reporter)
    session.saved = out
    return out


def measured(session: Session) -> dict:
    """What this session measured on the original and on the current run, for the model card."""
    return {"original": session.original_evals, "compressed": session.run.evals if session.run is not None else {}}


def card(session: Session, repo_id: str) -> str:
    """The model card as it would be pushed (from the saved slimlab.json and the session's measurements)."""
    repo_id = check_repo_id(repo_id or "your-name/model-name")
    return model_card(read_meta(_saved_folder(session)), repo_id, measured(session))


def push(session: Session, repo_id: str, token: str, private: bool, progress: Progress = None, *, api=None) -> str:
    repo_id = check_repo_id(repo_id)
    if not (token or "").strip():
        raise ConfigError("Paste a Hugging Face access token with write permission to push.")
    reporter = job(session, progress)
    reporter("push", 0, 2, "saving")
    folder = _saved_folder(session, reporter)
    reporter("push", 1, 2, f"uploading to {repo_id}")
    url = push_folder(folder, repo_id, token, private=bool(private), api=api, measured=measured(session))
    reporter.finished("push", 2, "done")
    return f"Pushed to [{url}]({url}) with a generated model card."
