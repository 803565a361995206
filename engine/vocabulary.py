"""The recipe's vocabulary stage: which tokens a run keeps, and a compression result trimmed to them.

The transform itself (``transforms.vocabulary``) works on any model and tokenizer; this module
gives it the recipe's counted text (calibration windows, as every run draws them) and applies it
to a ``CompressionResult`` after the method and recovery. The kept ids are cached per tokenizer
and counted text, so sizing a recipe (``planned_size``, a frontier's ratio search) counts once.
"""
from __future__ import annotations

import collections
import time
import weakref
from typing import Optional

from .calibration_tokens import make_calibration
from .errors import ConfigError
from .progress import Reporter
from .recipes import CalibrationSpec, VocabularySpec
from .transforms.vocabulary import kept_token_ids, trim_model, trim_tokenizer

_KEPT: "weakref.WeakKeyDictionary[object, dict[tuple, list[int]]]" = weakref.WeakKeyDictionary()


def check_keep(spec: VocabularySpec, tokenizer, what: str = "vocabulary keep") -> None:
    """Keeping more tokens than ``tokenizer`` has is a typo, not "keep them all" (that is 0): refused, naming
    the count ``what`` (the UI names its control)."""
    vocab = len(tokenizer)
    if spec.keep > vocab:
        raise ConfigError(f"{what} must be a whole number from 0 to {vocab:,} (got {spec.keep}); "
                          f"the tokenizer has {vocab:,} tokens; 0 keeps them all.")


def kept_tokens(lm, spec: VocabularySpec, calibration: CalibrationSpec, data_dir: Optional[str] = None) -> list[int]:
    """The old token ids ``spec`` keeps for ``lm``, ascending: counted in ``spec``'s text (drawn as calibration
    windows from ``data_dir``; None source: ``calibration``'s), filled in merge order up to ``keep``."""
    check_keep(spec, lm.tokenizer)
    text = spec.text(calibration)
    key = (tuple(sorted(text.to_dict().items())), spec.keep, data_dir)
    cache = _KEPT.setdefault(lm.tokenizer, {})
    if key not in cache:
        counts = collections.Counter(make_calibration(lm, text, data_dir).tokens.flatten().tolist())
        cache[key] = kept_token_ids(lm.tokenizer, counts, spec.keep, fill=True)
    return cache[key]


def trim_result(lm, result, kept: list[int], reporter: Reporter) -> None:
    """Trim a ``CompressionResult`` in place to the ``kept`` tokens: its model (new embedding and head
    parameters; the original, which shares the old ones, is untouched), its tokenizer, its accounting,
    timings and the ``vocabulary`` plot (how many rows went)."""
    from .analysis import account

    t0 = time.perf_counter()
    reporter("vocabulary", 0, 1, f"keeping {len(kept):,} tokens")
    original = lm.adapter.token_embedding(lm.model).num_embeddings
    result.model = trim_model(result.model, lm.adapter, kept, in_place=True)
    result.tokenizer = trim_tokenizer(lm.tokenizer, kept)
    result.reference_tokenizer = result.reference_tokenizer or lm.tokenizer  # trimmed again: the first original
    result.accounting = account(result.model, lm.adapter, added=result.accounting.added_detail)
    seconds = time.perf_counter() - t0
    result.stage_seconds["vocabulary"] = seconds
    result.seconds += seconds
    result.plots["vocabulary"] = {"kept": len(kept), "original": original}
    reporter.finished("vocabulary", 1, f"{len(kept):,} of {original:,} tokens kept")
