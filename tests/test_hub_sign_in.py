"""Hub sign-in in the Export tab: gradio's OAuth login on a Space, the token field elsewhere. The Hub is
unreachable here, so the Space is its environment variables, the login the ``gr.OAuthToken`` gradio would
fill, and the upload a recording stand-in for ``push_folder``; the token must reach the push and nothing else."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import gradio as gr
import pytest
from gradio.helpers import special_args
from gradio.utils import oauth_token_requirement

from engine.publish import push_folder
from tiny import save_model_dir
from ui import build_app
from ui.handlers import compress as hc
from ui.handlers import export as hx
from ui.handlers import model as hm
from ui.state import ModelCache, Session

SECRET = "hf_oauthSECRETsecret0123456789"


@pytest.fixture
def space(monkeypatch):
    """The environment of a Space with ``hf_oauth: true``, as gradio's OAuth read it when it was imported."""
    pytest.importorskip("authlib", reason="gradio's OAuth needs the oauth extra")
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "someone/slimlab")
    for name in hx.OAUTH_ENV:
        value = "https://huggingface.co" if name == "OPENID_PROVIDER_URL" else f"{name.lower()}-value"
        monkeypatch.setenv(name, value)
        monkeypatch.setattr(gr.oauth, name, value)


def _export_tab(app: gr.Blocks):
    blocks = list(app.blocks.values())
    logins = [b for b in blocks if isinstance(b, gr.LoginButton)]
    token = [b for b in blocks if isinstance(b, gr.Textbox) and b.label == "Access token (write)"]
    push = next(fn for fn in app.fns.values() if fn.api_name == "push")
    return logins, token[0], push


def test_locally_the_token_field_pushes_and_there_is_no_login(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    app = build_app(preload_demo=False)
    logins, token, push = _export_tab(app)
    assert not logins and not app.expects_oauth  # gradio attaches no OAuth routes: launch() stays as it was
    assert token.visible is True and token in push.inputs and token.type == "password"
    assert oauth_token_requirement(push.fn) is None
    assert hx.hub_sign_in().note.endswith("(the token is used for this push only and never stored).")


def test_on_a_space_the_login_replaces_the_token_field(space):
    app = build_app(preload_demo=False)
    logins, token, push = _export_tab(app)
    assert len(logins) == 1 and app.expects_oauth
    assert token.visible is False and token not in push.inputs
    assert oauth_token_requirement(push.fn) == "optional"  # gradio fills it from the visitor's session
    assert "Sign in with Hugging Face" in hx.hub_sign_in().note


@pytest.mark.parametrize("off, says", [("package", "lacks authlib"), ("env", "OAUTH_CLIENT_SECRET unset"),
                                       ("system", "not a Hugging Face Space")])
def test_a_space_without_working_oauth_keeps_the_token_field_and_says_why(space, monkeypatch, off, says):
    if off == "package":
        real = hx.importlib.util.find_spec
        monkeypatch.setattr(hx.importlib.util, "find_spec", lambda name: None if name == "authlib" else real(name))
    else:
        monkeypatch.delenv({"env": "OAUTH_CLIENT_SECRET", "system": "SYSTEM"}[off])
    sign_in = hx.hub_sign_in()
    assert not sign_in.oauth and says in sign_in.note and "paste a token" in sign_in.note
    logins, token, push = _export_tab(build_app(preload_demo=False))
    assert not logins and token.visible is True and token in push.inputs


@pytest.fixture(scope="module")
def compressed(tmp_path_factory, data_dir):
    s = Session()
    hm.load(s, str(save_model_dir(tmp_path_factory.mktemp("hub") / "llama", "llama")), cache=ModelCache(1))
    hc.run(s, "slicegpt", {}, 0.25, "uniform", None, "wikitext2:validation", 4, 32, 0, [])
    return s


class FailingHub:
    """A Hub client whose error quotes the token back, as a careless server might."""

    def __getattr__(self, name):
        def call(**kwargs):
            logging.getLogger("huggingface_hub").warning("request failed")
            raise RuntimeError(f"401 Unauthorized (Authorization: Bearer {SECRET})")

        return call


def test_a_signed_in_push_uses_the_login_token_and_never_shows_logs_or_writes_it(
        space, compressed, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("SLIMLAB_OUTPUT_DIR", str(tmp_path / "outputs"))
    push = _export_tab(build_app(preload_demo=False))[2]
    pushed = []

    def recording_push(folder, repo_id, token, **kwargs):
        pushed.append((Path(folder), repo_id, token))
        return f"https://huggingface.co/{repo_id}"

    def push_via_gradio(session, token):
        """Call the wired push the way gradio does: ``special_args`` fills the OAuthToken parameter."""
        inputs, *_ = special_args(push.fn, [session, "me/tiny", True], request=None, token=token)
        inputs[-2] = lambda *args, **kwargs: None  # gradio's progress bar
        return push.fn(*inputs)

    login = gr.OAuthToken(token=SECRET, scope="openid profile manage-repos", expires_at=int(time.time()) + 3600)
    monkeypatch.setattr(hx, "push_folder", recording_push)
    with caplog.at_level(logging.DEBUG):
        status = push_via_gradio(compressed, login)
        assert [(repo, token) for _, repo, token in pushed] == [("me/tiny", SECRET)]
        assert "huggingface.co/me/tiny" in status and SECRET not in status

        with pytest.raises(gr.Error, match="Sign in with Hugging Face") as signed_out:
            push_via_gradio(compressed, None)
        assert len(pushed) == 1 and SECRET not in str(signed_out.value)

        monkeypatch.setattr(hx, "push_folder", lambda *args, **kwargs: push_folder(*args, **kwargs | {"api": FailingHub()}))
        with pytest.raises(gr.Error, match="Pushing to 'me/tiny' failed") as failed:
            push_via_gradio(compressed, login)
    assert SECRET not in str(failed.value) and "<token>" in str(failed.value)
    assert SECRET not in caplog.text
    folder = pushed[0][0]
    written = [p for root in (folder, tmp_path) for p in root.rglob("*") if p.is_file()]
    assert written and not any(SECRET.encode() in p.read_bytes() for p in written)
