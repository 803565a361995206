"""Publishing a saved compressed model: a generated model card and a push to the Hugging Face Hub.

The card is written from the folder's own ``slimlab.json`` (what was actually saved), so it
carries the recipe, the calibration and the honest parameter accounting, including a plain
warning when the compressed model is bigger than the original, and, when the session measured
them, perplexity, zero-shot accuracy and speed of the original and the compressed model.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from .compressed.remote_code import transformers_loading
from .errors import ConfigError, SlimLabError
from .evaluate.report import measured_markdown, model_entry
from .export import NotExpressible, available_formats
from .export.base import default_output
from .models.loading import SLIMLAB_META

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_meta(folder: "str | Path") -> dict:
    """The folder's ``slimlab.json`` with what its card's "Load it" needs: ``config`` (its config.json, which
    the exporters' checks read) and ``loads`` (how transformers alone loads it, ``transformers_loading``)."""
    path = Path(folder) / SLIMLAB_META
    if not path.exists():
        raise ConfigError(f"'{folder}' has no {SLIMLAB_META}; save a compressed model there first.")
    config = Path(folder) / "config.json"
    return json.loads(path.read_text()) | {"config": json.loads(config.read_text()),
                                           "loads": transformers_loading(folder)}


def _base_model(spec: str) -> Optional[str]:
    """The Hub id of the base model when there is one (the card's ``base_model`` field)."""
    if spec == "demo":
        from .models.demo import DEMO_HUB_ID

        return DEMO_HUB_ID
    return spec if REPO_ID.match(spec or "") and not Path(spec).exists() else None


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f} M"


def _measured(measured: Optional[dict]) -> list[str]:
    """The card's measurements: ``measured`` maps a model's name ("original", "compressed") to what
    was measured on it ("perplexity" | "zeroshot" | "speed" -> the engine result's ``to_dict()``)."""
    entries = [model_entry(name, perplexity=evals.get("perplexity"), zeroshot=evals.get("zeroshot"),
                           speed=evals.get("speed")) for name, evals in (measured or {}).items()]
    tables = measured_markdown(entries)
    if not tables:
        return ["## Measured", "", "Nothing was measured before this card was written (perplexity, zero-shot "
                "accuracy and speed are measured in SlimLab's Evaluate tab or with `slimlab eval`).", ""]
    return ["## Measured", "", "In the SlimLab session that made this model, each figure under the protocol "
            "above its table.", "", *tables]


TRANSFORMERS = {
    "plain": ("Every layer keeps the stock {arch} shapes, so this is a plain checkpoint (no SlimLab, no remote code):",
              ""),
    "remote": ("The shapes differ from the stock {arch} architecture; the repository carries `modeling_slimlab.py` "
               "(torch and transformers only), which builds them, so no SlimLab is needed:", ", trust_remote_code=True"),
}


def _load_it(meta: dict, repo_id: str) -> list[str]:
    """How to run this result for real: in transformers (plain, or with the shipped remote code), in SlimLab,
    and in every engine an export format runs (llama.cpp, vLLM) after that export, or why it cannot."""
    arch = (meta.get("config") or {}).get("model_type", "base")
    loads = meta.get("loads", "slimlab")
    lines = ["## Load it", ""]
    if loads in TRANSFORMERS:
        text, flag = TRANSFORMERS[loads]
        lines += [text.format(arch=f"`{arch}`"), "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}"{flag})',
                  f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}")', "```", ""]
    else:
        lines += ["transformers alone cannot build this result's modules; load it with SlimLab (below), or "
                  "re-save it with a current SlimLab (`slimlab export FOLDER --format hf`).", ""]
    name = repo_id.split("/")[-1]
    lines += ["With SlimLab (the folder holds its `slimlab.json`):", "", "```python",
              "from engine import load_compressed", "", f'lm = load_compressed("{name}")  # hf download {repo_id} '
              f"--local-dir {name}", "```", ""]
    for fmt in available_formats().values():
        if not fmt.run:
            continue
        lines += [f"### {fmt.label}", ""]
        try:
            fmt.check(meta)
        except NotExpressible as exc:
            lines += [f"Not available for this result: {exc}", ""]
            continue
        out = default_output(Path(name), fmt, fmt.default_dtype)
        lines += ["```bash", f"hf download {repo_id} --local-dir {name}",
                  f"slimlab export {name} --format {fmt.name} --out {out}", fmt.run.format(path=out), "```", ""]
    return lines


def model_card(meta: dict, repo_id: str, measured: Optional[dict] = None) -> str:
    """README.md for the Hub: front matter, what was done, honest accounting, what was measured
    (``measured``, see ``_measured``), recipe, how to load."""
    recipe = meta["recipe"]
    acc, orig = meta["accounting"], meta["original_accounting"]
    base = _base_model(recipe.get("model", ""))
    front = ["---", "library_name: transformers", "tags:", "- slimlab", "- structured-compression",
             f"- {meta['method']}"] + ([f"base_model: {base}"] if base else []) + ["---"]
    new, old = acc["params_total"], orig["params_total"]
    sizes = f"{_millions(new)} vs {_millions(old)} parameters"
    if new > old:
        added = ", ".join(f"{k} {_millions(v)}" for k, v in acc["added_detail"].items())
        verdict = f"**Warning: this model is bigger than the original** ({sizes}): the method added {added}."
    else:
        verdict = f"**{100 * (1 - new / old):.1f}% fewer parameters** than the original ({sizes})."
    rows = [("parameters, total", "params_total"), ("non-embedding", "params_non_embedding"),
            ("embeddings", "params_embedding"), ("untied head", "params_head"), ("added by the method", "params_added"),
            ("FLOPs per token", "flops_per_token")]
    table = ["| | original | compressed |", "|---|---:|---:|"] + [
        f"| {label} | {orig[key]:,} | {acc[key]:,} |" for label, key in rows]
    calib = recipe.get("calibration") or {}
    calib_line = (f"{calib.get('source')}, {calib.get('nsamples')} samples × {calib.get('seqlen')} tokens, "
                  f"seed {calib.get('seed')}" if calib else "none")
    source = f"`{recipe.get('model')}`" + (f" ({base})" if base and base != recipe.get("model") else "")
    versions = ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items())
    body = [
        f"# {repo_id.split('/')[-1]}", "",
        f"Structured compression of {source} with **{meta['method']}** at ratio {recipe['ratio']:.3f} "
        f"({recipe['schedule']} schedule), made with SlimLab.", "",
        verdict, "", *table, "",
        f"The ratio is the mean fraction of each layer's width removed, not of the file. Calibration: {calib_line}.",
        "", *_measured(measured), *_load_it(meta, repo_id),
        "## Recipe (replay with `slimlab compress --recipe recipe.json`)", "",
        "```json", json.dumps(recipe, indent=2, default=str), "```", "",
        f"Software: {versions}." if versions else "",
    ]
    return "\n".join(front + [""] + body).rstrip() + "\n"


def check_repo_id(repo_id: str) -> str:
    repo_id = (repo_id or "").strip()
    if not REPO_ID.match(repo_id):
        raise ConfigError(f"'{repo_id}' is not a Hub repository id; use the form 'your-name/model-name'.")
    return repo_id


def push_folder(folder: "str | Path", repo_id: str, token: str, private: bool = True, api=None,
                measured: Optional[dict] = None) -> str:
    """Create (or reuse) the model repo and upload the folder plus a generated card (with ``measured``,
    see ``model_card``); returns its URL.

    ``api`` is a ``huggingface_hub.HfApi``-like object (one is made from ``token`` by default).
    """
    repo_id = check_repo_id(repo_id)
    if not (token or "").strip():
        raise ConfigError("A Hugging Face access token with write permission is needed to push.")
    card = model_card(read_meta(folder), repo_id, measured)
    if api is None:
        from huggingface_hub import HfApi

        from .models.hub import hub_reachable

        if not hub_reachable():
            raise SlimLabError("The Hugging Face Hub is unreachable from here; save the folder and push it later.")
        api = HfApi(token=token.strip())
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                          commit_message="Upload SlimLab compressed model", ignore_patterns=["README.md"])
        api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_id, repo_type="model",
                        commit_message="Add model card")
    except Exception as exc:  # noqa: BLE001 - the Hub client raises many types; none may echo the token
        text = " ".join(str(exc).split()).replace(token.strip(), "<token>")[:300]
        raise SlimLabError(f"Pushing to '{repo_id}' failed ({type(exc).__name__}: {text}).") from None
    return f"https://huggingface.co/{repo_id}"
