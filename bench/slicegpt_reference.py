"""SliceGPT per-layer against the reference implementation (microsoft/TransformerCompression)
on the same calibration windows and the same perplexity windows.

The reference pins transformers 4.41, so it runs in its own virtualenv; SlimLab in its own.
One file, three steps, rows appended to ``--log`` (JSON lines) as they are measured:

    python bench/slicegpt_reference.py windows demo --out /tmp/sg/demo.pt          # SlimLab env
    REF=/tmp/slicegpt-venv/bin/python     # venv: torch, transformers==4.41.0, the reference package
    $REF bench/slicegpt_reference.py reference /tmp/sg/demo.pt --ratios 0.15,0.2,0.25
    python bench/slicegpt_reference.py ours /tmp/sg/demo.pt --ratios 0.15,0.2,0.25

``windows`` draws SlimLab's calibration windows (64x512 wikitext2:validation, seed 42 by
default) and the first N x 2048 windows of the WikiText-2 test split, and saves both with the
model folder. ``reference`` slices with the reference's own code (its layer replacement,
norm fusion, ``rotate_and_slice`` and ``ConstSlicingScheduler``, PCA orientation, fp32, the
head kept full width as its default) fed those windows; ``ours`` runs ``compress(...,
"slicegpt")``. Both score the windows with ``_nll`` below: mean NLL over every predicted token.

Switches that isolate one difference at a time:
- ``reference --no-centre``: the reference subtracts each embedding row's mean in
  ``fuse_modules`` for every architecture; on an RMSNorm model that changes the function.
  This flag puts the uncentred rows back after fusion.
- ``ours --centre``: SlimLab on the same model with the embedding rows centred (head untied
  first, as the reference does), i.e. the function the reference slices.
- ratio 0 scores the fused, unrotated model: the reference's starting point.
- ``random OUT``: a random model of the demo's shapes (fewer layers, outlier channels) to compare
  the two where no demo weights, and so no demo lock, are needed.
- ``--spectra FILE``: every PCA's eigenvalues, in order (embedding, then two per layer).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the reference's venv has no SlimLab installed: its width rule comes from here


def _nll(model, windows: torch.Tensor) -> float:
    """Mean NLL over every predicted token of the windows (paper protocol), one window at a time."""
    total, count = 0.0, 0
    with torch.inference_mode():
        for w in windows:
            logits = model(input_ids=w[None], use_cache=False).logits[0, :-1].float()
            total += F.cross_entropy(logits, w[1:], reduction="sum").item()
            count += w.numel() - 1
    return total / count


def _log(path: str, saved: dict, **row) -> None:
    """One measured row, printed and appended to ``path`` as it comes."""
    row = {"model": Path(saved["folder"]).name, **row, "windows": list(saved["eval"].shape)}
    print(json.dumps(row), flush=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def make_windows(args) -> None:
    """The windows ``make_calibration`` draws for a plain text source, from the tokenizer alone
    (no weights loaded: this step needs no demo lock)."""
    from transformers import AutoTokenizer

    from engine import CalibrationSpec
    from engine.data import calibration_windows, eval_windows, load_text
    from engine.models.demo import ensure_demo

    folder = str(ensure_demo()) if args.model == "demo" else str(Path(args.model).resolve())
    tokenizer = AutoTokenizer.from_pretrained(folder)
    spec = CalibrationSpec(args.calib, args.nsamples, args.seqlen, args.seed)
    calib = calibration_windows(tokenizer, load_text(args.calib), args.nsamples, args.seqlen, args.seed)
    evals = eval_windows(tokenizer, load_text("wikitext2"), args.eval_seqlen, args.max_windows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"folder": folder, "calib": calib, "eval": evals, "calibration": spec.to_dict()}, args.out)
    print(f"{args.out}: calibration {tuple(calib.shape)}, eval {tuple(evals.shape)}, model {folder}")


def make_random(args) -> None:
    """A random model of the demo's shapes (its config with fewer layers, random weights, the
    tied head kept), with random norm scales and a few large residual channels as real models
    have: the two implementations compared where no demo-lock time is needed."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from engine.models.demo import ensure_demo

    folder = ensure_demo()
    config = AutoConfig.from_pretrained(folder)
    config.num_hidden_layers = args.layers
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
        model.get_input_embeddings().weight[:, : args.outlier_channels] *= args.outlier_scale
    model.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(args.out)
    print(f"{args.out}: {args.layers} random layers of the demo's shapes, tied head")


def _reference_model(folder: str, calib: torch.Tensor, ratio: float, centre: bool, spectra: list):
    """The reference's slicing path, fp32 on the CPU, fed our calibration windows."""
    from slicegpt import layernorm_fusion, rotate
    from slicegpt.adapters.llama_adapter import LlamaModelAdapter
    from slicegpt.slicing_scheduler import ConstSlicingScheduler
    from transformers import LlamaConfig, LlamaForCausalLM

    from engine.transforms.widths import sliced_width  # the reference's --round-interval 8 rule too

    # a folder written by transformers 5: 4.41 reads rope_theta only and fails on a null quantization_config
    raw = json.loads((Path(folder) / "config.json").read_text())
    if raw.get("quantization_config", 0) is None:
        del raw["quantization_config"]
    rope = raw.pop("rope_parameters", None)
    if rope:
        raw["rope_theta"] = rope["rope_theta"]
    config = LlamaConfig(**raw)
    config.torch_dtype, config.use_cache = torch.float32, False
    model = LlamaForCausalLM.from_pretrained(folder, config=config, torch_dtype=torch.float32).eval()
    adapter = LlamaModelAdapter(model)
    layernorm_fusion.replace_layers(adapter, verbose=False)
    rows = model.model.embed_tokens.weight.detach().clone()
    layernorm_fusion.fuse_modules(adapter)
    if not centre:
        model.model.embed_tokens.weight.data.copy_(rows)
    if ratio > 0:
        pca = rotate.pca_calc

        def recorded(x, masks=None):
            values, vectors = pca(x, masks)
            spectra.append(values.tolist())
            return values, vectors

        rotate.pca_calc = recorded
        try:
            batches = [{"input_ids": t, "attention_mask": torch.ones_like(t)} for t in calib.split(8)]
            rotate.rotate_and_slice(adapter, batches, ConstSlicingScheduler(sliced_width(config.hidden_size, ratio, 8)),
                                    final_orientation="pca")
        finally:
            rotate.pca_calc = pca
    return model


def run_reference(args, saved: dict) -> None:
    for ratio in args.ratios:
        spectra: list = []
        t = time.perf_counter()
        model = _reference_model(saved["folder"], saved["calib"], ratio, not args.no_centre, spectra)
        seconds = time.perf_counter() - t
        nll = _nll(model, saved["eval"])
        _log(args.log, saved, impl="reference", ratio=ratio, centre=not args.no_centre, ppl=math.exp(nll),
             params=sum(p.numel() for p in model.parameters()), seconds=round(seconds, 1))
        _save_spectra(args.spectra, ratio, spectra)


def run_ours(args, saved: dict) -> None:
    from engine import CalibrationSpec, compress, load_model

    lm = load_model(saved["folder"], device="cpu")
    if args.centre:
        _centre_embedding_rows(lm.model)
    spec = CalibrationSpec.from_dict(saved["calibration"])
    spec.tokens = saved["calib"]
    for ratio in args.ratios:
        if ratio == 0:
            model, params, seconds, spectra = lm.model, sum(p.numel() for p in lm.model.parameters()), 0.0, []
        else:
            t = time.perf_counter()
            result = compress(lm, "slicegpt", ratio, schedule="uniform", calibration=spec,
                              method_params={"variant": "per-layer", **dict(args.param)})
            seconds = time.perf_counter() - t
            model, params, spectra = result.model, result.accounting.params_total, result.plots["spectra"]
        nll = _nll(model, saved["eval"])
        _log(args.log, saved, impl="ours", ratio=ratio, centre=args.centre, ppl=math.exp(nll), params=params,
             seconds=round(seconds, 1), params_extra=dict(args.param))
        _save_spectra(args.spectra, ratio, spectra)


@torch.no_grad()
def _centre_embedding_rows(model) -> None:
    """What the reference's ``fuse_modules`` does to every model: untie the head, then subtract
    each embedding row's mean."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    model.config.tie_word_embeddings = False
    w = emb.weight.detach().double()
    emb.weight.data.copy_(w - w.mean(dim=-1, keepdim=True))


def _save_spectra(path: "str | None", ratio: float, spectra: list) -> None:
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"ratio": ratio, "spectra": spectra}) + "\n")


def _pair(text: str) -> tuple[str, object]:
    name, value = text.split("=", 1)
    return name, json.loads(value) if value[:1] in "0123456789-[{tf" else value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="step", required=True)
    w = sub.add_parser("windows", help="draw and save the calibration and evaluation windows (SlimLab env)")
    w.add_argument("model", help="demo or a safetensors llama folder")
    w.add_argument("--out", required=True)
    w.add_argument("--calib", default="wikitext2:validation")
    w.add_argument("--nsamples", type=int, default=64)
    w.add_argument("--seqlen", type=int, default=512)
    w.add_argument("--seed", type=int, default=42)
    w.add_argument("--eval-seqlen", type=int, default=2048)
    w.add_argument("--max-windows", type=int, default=40)
    r = sub.add_parser("random", help="a random model of the demo's shapes (no demo weights loaded)")
    r.add_argument("out")
    r.add_argument("--layers", type=int, default=4)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--outlier-channels", type=int, default=4)
    r.add_argument("--outlier-scale", type=float, default=20.0)
    for name, text in (("reference", "the reference's slicing (its venv)"), ("ours", "SlimLab's SliceGPT")):
        p = sub.add_parser(name, help=text)
        p.add_argument("windows", help="the file `windows` wrote")
        p.add_argument("--ratios", type=lambda s: [float(r) for r in s.split(",")], default=[0.15, 0.2, 0.25])
        p.add_argument("--log", default="bench/results/slicegpt_reference.log")
        p.add_argument("--spectra", default=None, help="append every PCA's eigenvalues here (JSON lines)")
    sub.choices["reference"].add_argument("--no-centre", action="store_true",
                                          help="keep the embedding rows uncentred (the original function)")
    sub.choices["ours"].add_argument("--centre", action="store_true",
                                     help="centre the embedding rows first, as the reference's fusion does")
    sub.choices["ours"].add_argument("--param", type=_pair, action="append", default=[],
                                     help="extra SliceGPT parameter NAME=VALUE")
    args = ap.parse_args()
    if args.step in ("windows", "random"):
        return (make_windows if args.step == "windows" else make_random)(args)
    torch.manual_seed(0)
    saved = torch.load(args.windows)
    Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    (run_reference if args.step == "reference" else run_ours)(args, saved)


if __name__ == "__main__":
    main()
