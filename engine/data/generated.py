"""The ``generated`` source: text sampled from the model itself, so calibration needs no dataset."""
from __future__ import annotations

import torch


@torch.inference_mode()
def sample_text(lm, nsamples: int, seqlen: int, seed: int, batch_size: int = 8) -> str:
    """Seeded top-k sampling from the model's start token; documents joined by blank lines."""
    tok = lm.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    texts = []
    try:
        for b in range(0, nsamples, batch_size):
            n = min(batch_size, nsamples - b)
            prompt = torch.full((n, 1), start, dtype=torch.long, device=lm.device)
            out = lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_k=50,
                                    max_new_tokens=seqlen + 8, min_new_tokens=seqlen + 8,
                                    pad_token_id=tok.pad_token_id)
            texts.extend(tok.batch_decode(out[:, 1:], skip_special_tokens=True))
    finally:
        torch.random.set_rng_state(generator_state)
    return "\n\n".join(texts)
