"""Chat calibration: instruction data rendered through the model's own chat template, answers included.

A chat model compressed on Wikipedia text is calibrated on activations it never sees in use:
the template's special tokens, its system prompt, the user/assistant turn structure. These
sources give the calibration (and the recovery) the text the model really runs on:

- ``alpaca-chat``: the Alpaca records (the data dir's sample offline, ``tatsu-lab/alpaca``
  online) as one user turn (instruction, then the input) and one assistant turn (the output);
- ``chat:file:PATH``: a user's .json/.jsonl of instruction/input/output records, or of
  ``messages`` lists (``{"role", "content"}``), or ShareGPT ``conversations`` (``from``/``value``);
- ``generated-chat``: the model's own answers, sampled (seeded) to the Alpaca instructions.

No system message is added: the template's default applies, as in the Chat tab. Windows are
packed from whole chats: each window starts at the start of a chat and runs through the next
ones (the last is cut at the window's end), so no window opens mid-answer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .sources import ALPACA_LOCAL, SourceSpec, data_dir, hub_dataset, parse_source, read_records

Chat = list[dict]  # [{"role": ..., "content": ...}, ...]

_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system"}


def is_chat_source(spec: "str | SourceSpec") -> bool:
    src = parse_source(spec) if isinstance(spec, str) else spec
    return src.is_chat


def record_chat(record: dict, where: str) -> Chat:
    """One record as a conversation: ``messages``, ShareGPT ``conversations`` or an Alpaca triple."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a chat record is a JSON object (got {type(record).__name__}).")
    if isinstance(record.get("messages"), list):
        return [{"role": str(m["role"]), "content": str(m["content"])} for m in record["messages"]]
    if isinstance(record.get("conversations"), list):
        return [{"role": _SHAREGPT_ROLES.get(str(m["from"]), str(m["from"])), "content": str(m["value"])}
                for m in record["conversations"]]
    if "instruction" in record and "output" in record:
        prompt = "\n\n".join(p for p in (str(record["instruction"]), str(record.get("input") or "")) if p.strip())
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(record["output"])}]
    raise DataError(f"{where}: a chat record needs 'messages', 'conversations', or 'instruction' and 'output' "
                    f"(got the fields {', '.join(sorted(record)) or 'none'}).")


def alpaca_records(src: SourceSpec, data_dir_path=None) -> list[dict]:
    """The Alpaca records: the data dir's sample first (offline), else the Hub."""
    root = data_dir(data_dir_path)
    if root is not None and (root / ALPACA_LOCAL).is_file():
        return read_records(root / ALPACA_LOCAL)
    return list(hub_dataset(src, root, "tatsu-lab/alpaca", None))


def load_chats(spec: "str | SourceSpec", data_dir_path=None) -> list[Chat]:
    """The conversations of ``alpaca-chat`` or ``chat:file:PATH`` (``generated-chat`` needs a model)."""
    src = parse_source(spec) if isinstance(spec, str) else spec
    if src.name == "chat-file":
        records = read_records(Path(src.path))
    elif src.name == "alpaca-chat":
        records = alpaca_records(src, data_dir_path)
    else:
        raise DataError(f"'{src}' is not a chat source with records (use alpaca-chat or chat:file:PATH).")
    chats = [c for c in (record_chat(r, str(src)) for r in records) if any(m["content"].strip() for m in c)]
    if not chats:
        raise DataError(f"Chat source '{src}' has no conversations.")
    return chats


def require_template(tokenizer, label: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"The calibration source '{label}' renders chats through the model's chat template, but "
                        "this model's tokenizer has none. Use a text source instead (wikitext2, c4, alpaca, "
                        "generated).")


def render_chats(tokenizer, chats: list[Chat], label: str) -> list[torch.Tensor]:
    """Each chat as token ids through the chat template (answers included; the template's own system prompt)."""
    require_template(tokenizer, label)
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in chats]
    # the template writes its special tokens as text; adding the tokenizer's own would double a BOS
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [torch.tensor(i, dtype=torch.long) for i in ids if i]


def pack_chats(chats: list[torch.Tensor], nsamples: int, seqlen: int, seed: int, label: str) -> torch.Tensor:
    """[nsamples, seqlen] windows, each starting at a chat's start (seeded order).

    The chats are visited in a seeded random order; a window takes the next chat and the ones
    after it until it is full, then the cut chat's rest is dropped and the next window opens on
    the following chat. A source too small for ``nsamples`` windows is visited again in a new order."""
    if nsamples <= 0 or seqlen <= 0:
        raise DataError(f"nsamples and seqlen must be positive (got {nsamples}, {seqlen}).")
    total = sum(c.numel() for c in chats)
    if total < seqlen:
        raise DataError(f"The chats of '{label}' have {total} tokens, too few for one window of {seqlen}; "
                        "use a smaller --seqlen or more data.")
    rng = np.random.default_rng(seed)
    windows: list[torch.Tensor] = []
    while len(windows) < nsamples:
        parts: list[torch.Tensor] = []
        filled = 0
        for i in rng.permutation(len(chats)):
            parts.append(chats[i])
            filled += chats[i].numel()
            if filled >= seqlen:
                windows.append(torch.cat(parts)[:seqlen])
                parts, filled = [], 0
                if len(windows) == nsamples:
                    break
    return torch.stack(windows)


def chat_windows(lm, spec: "str | SourceSpec", nsamples: int, seqlen: int, seed: int,
                 data_dir_path=None) -> torch.Tensor:
    """Calibration windows of a chat source for ``lm`` (a ``LoadedModel``)."""
    src = parse_source(spec) if isinstance(spec, str) else spec
    require_template(lm.tokenizer, str(src))
    if src.name == "generated-chat":
        prompts = [c[:-1] for c in load_chats(parse_source("alpaca-chat"), data_dir_path)]
        chats = sample_chats(lm, prompts, nsamples * seqlen, min(seqlen, 256), seed)
    else:
        chats = load_chats(src, data_dir_path)
    return pack_chats(render_chats(lm.tokenizer, chats, str(src)), nsamples, seqlen, seed, str(src))



def seeded(device: torch.device):
    """A block whose global RNG draws are seeded and then forgotten (``generate`` samples from it)."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


@torch.inference_mode()
def sample_chats(lm, prompts: list[Chat], token_budget: int, max_new_tokens: int, seed: int,
                 batch_size: int = 8) -> list[Chat]:
    """The model's own answers to ``prompts`` (seeded order and sampling) until about ``token_budget`` tokens.

    Sampling settings are the Chat tab's defaults (temperature 0.7, top-p 0.9, top-k 50), so the
    calibration sees the kind of text the model writes when used."""
    tok = lm.tokenizer
    order = np.random.default_rng(seed).permutation(len(prompts))
    chats: list[Chat] = []
    used, side = 0, tok.padding_side
    tok.padding_side = "left"  # generation continues every row from its last real token
    try:
        with seeded(lm.device):
            torch.manual_seed(seed)
            for b in range(0, len(order), batch_size):
                batch = [prompts[i] for i in order[b:b + batch_size]]
                texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in batch]
                enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(lm.device)
                out = lm.model.generate(**enc, do_sample=True, temperature=0.7, top_p=0.9, top_k=50,
                                        max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                for chat, answer in zip(batch, tok.batch_decode(new, skip_special_tokens=True)):
                    if answer.strip():
                        chats.append(chat + [{"role": "assistant", "content": answer.strip()}])
                used += int(enc["attention_mask"].sum()) + int((new != tok.pad_token_id).sum())
                if used >= token_budget:
                    break
    finally:
        tok.padding_side = side
    if not chats:
        raise DataError("generated-chat: the model answered nothing (every answer was empty).")
    return chats
