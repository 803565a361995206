"""`slimlab bench MODEL --compare OTHER --engine llamacpp`: the same two models as GGUF files,
timed in llama.cpp in one run (prefill and batch-1 decode, repeats taking turns, median and
range). A SlimLab result is exported with the GGUF exporter, a dense model is written the same
way, and a ``.gguf`` file is timed as it is."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..compressed import is_compressed
from ..errors import ConfigError
from ..evaluate.llamacpp import llama_cpp_module, time_ggufs
from ..export import export
from ..export.gguf_file import write_gguf
from .common import check_specs, emit, load, require_at_least


def gguf_of(args, spec: str, folder: Path, index: int) -> Path:
    """The GGUF file to time for ``spec``, written into ``folder`` unless it is one already."""
    if spec.endswith(".gguf") and Path(spec).is_file():
        return Path(spec)
    out = folder / f"model-{index}.gguf"
    if is_compressed(spec):
        return Path(export(spec, "gguf", args.gguf_dtype, out).path)
    lm = load(args, spec)
    if lm.path is None or not (Path(lm.path) / "tokenizer.json").is_file():
        raise ConfigError(f"'{spec}' has no local folder with a tokenizer.json to write a GGUF from; "
                          "give a .gguf file or a local checkpoint folder.")
    write_gguf(out, lm, Path(lm.path), args.gguf_dtype, name=spec)
    return out


def _fmt(rate: dict) -> str:
    return f"{rate['median']:8.1f} tok/s  [{rate['min']:.1f}-{rate['max']:.1f}]"


def run_llamacpp(args) -> int:
    require_at_least(args, 1, "prefill_len", "decode_tokens", "decode_context", "repeats", "threads")
    require_at_least(args, 0, "warmup")
    llama_cpp_module()  # a clear message before anything is loaded or written
    specs = check_specs(args.model, args.compare)
    with tempfile.TemporaryDirectory(prefix="slimlab-bench-") as tmp:
        paths = [gguf_of(args, spec, Path(tmp), i) for i, spec in enumerate(specs)]
        sizes = [p.stat().st_size for p in paths]
        speeds = time_ggufs(paths, args.prefill_len, args.decode_tokens, args.decode_context, args.repeats,
                            args.warmup, args.threads)
    models = [{"spec": spec, "gguf_mb": size / 1e6, **s.summary(args.prefill_len, args.decode_tokens)}
              for spec, size, s in zip(specs, sizes, speeds)]
    lines = [f"llama.cpp ({args.gguf_dtype}, {args.threads or 'all'} threads, median of {args.repeats} "
             f"after {args.warmup} warm-up, range in brackets; files take turns run by run)"]
    for m in models:
        lines += [f"{m['spec']}  ({m['gguf_mb']:.1f} MB)",
                  f"  prefill {args.prefill_len:>4}   {_fmt(m['prefill_tokens_per_s'])}",
                  f"  decode  b1     {_fmt(m['decode_tokens_per_s_b1'])}"]
    payload = {"engine": "llamacpp", "dtype": args.gguf_dtype, "threads": args.threads, "models": models}
    if len(models) == 2:
        ratios = {key: models[1][key]["median"] / models[0][key]["median"]
                  for key in ("prefill_tokens_per_s", "decode_tokens_per_s_b1")}
        payload["ratios"] = ratios
        lines.append("speedup (compare / base): " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    return emit(args, lines, payload)
