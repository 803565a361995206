"""Chat prompts fit the model's context: the oldest turns go first, a system message and the newest
user message stay, and a message that cannot fit is refused with its length (found by the UI's
bad-input matrix: a 200K-character message ran attention over 40K positions on a 256-position model)."""
import pytest

from engine.errors import ConfigError
from engine.generate import SamplingSettings, chat_input_ids, fitted_input_ids, stream_chat


def _conversation(turns: int) -> list[dict]:
    msgs = [{"role": "system", "content": "be brief"}]
    for i in range(turns):
        msgs += [{"role": "user", "content": f"question {i} " + "fox " * 20},
                 {"role": "assistant", "content": f"answer {i} " + "dog " * 20}]
    return msgs + [{"role": "user", "content": "the newest question"}]


def test_the_oldest_turns_are_left_out_until_the_prompt_fits(tiny):
    _, tok = tiny("llama")
    msgs = _conversation(6)
    full = chat_input_ids(tok, msgs).shape[1]
    ids = fitted_input_ids(tok, msgs, context=full // 2 + 16, max_new_tokens=16)
    assert ids.shape[1] <= full // 2
    text = tok.decode(ids[0])
    assert "be brief" in text and "the newest question" in text and "answer 5" in text
    assert "question 0" not in text
    assert fitted_input_ids(tok, msgs, context=full + 16, max_new_tokens=16).shape[1] == full  # fits: unchanged
    assert fitted_input_ids(tok, msgs, context=None, max_new_tokens=16).shape[1] == full


def test_a_message_that_cannot_fit_is_refused_with_its_length(tiny):
    _, tok = tiny("llama")
    huge = [{"role": "user", "content": "word " * 2000}]
    with pytest.raises(ConfigError, match=r"The message is [\d,]+ tokens; this model reads at most 256"):
        fitted_input_ids(tok, huge, context=256, max_new_tokens=16)
    with pytest.raises(ConfigError, match="must be below this model's context of 256"):
        fitted_input_ids(tok, [{"role": "user", "content": "hi"}], context=256, max_new_tokens=256)


def test_chat_uses_the_model_context(tiny):
    model, tok = tiny("llama")
    context = model.config.max_position_embeddings
    long_history = _conversation(60)
    assert chat_input_ids(tok, long_history).shape[1] > context
    rounds = list(stream_chat([(model, tok)], [long_history], SamplingSettings(max_new_tokens=4, temperature=0)))
    assert rounds[-1][0].tokens == 4
    with pytest.raises(ConfigError, match="Shorten the message"):
        list(stream_chat([(model, tok)], [[{"role": "user", "content": "word " * 5 * context}]], SamplingSettings()))
