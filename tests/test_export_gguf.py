"""GGUF export of tiny llama results: the architecture chosen, the per-layer fields, the
tokenizer, the refusals, and, without llama.cpp, that the file run with llama.cpp's semantics
(``gguf_reference``) gives the logits of SlimLab's own model."""
import json

import gguf
import pytest
import torch
from export_fixtures import lm_of as _lm
from export_fixtures import results  # noqa: F401  (a fixture)
from gguf_reference import gguf_logits

from engine.cli import main
from engine.compressed import load_compressed
from engine.export import export
from engine.export.gguf_file import write_gguf
from engine.export.gguf_vocab import pre_tokenizer_name
from engine.transforms.prune import prune_pair

def _fields(path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


IDS = torch.randint(3, 300, (24,), generator=torch.Generator().manual_seed(1)).tolist()


def _slimlab_logits(folder, ids) -> torch.Tensor:
    model = load_compressed(folder, device="cpu", dtype="float32").model
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double()


def _same_logits(folder, path, atol=1e-4):
    torch.testing.assert_close(gguf_logits(path, IDS), _slimlab_logits(folder, IDS), atol=atol, rtol=0)


@pytest.mark.parametrize("name, arch", [("fasp-mixed", "deci"), ("fasp-mlp-uniform", "llama"),
                                        ("wanda-values", "llama"), ("shortgpt", "llama"),
                                        ("slicegpt-shared", "llama"), ("dotresize-shared", "llama")])
def test_each_result_runs_with_llama_cpp_semantics(results, tmp_path, name, arch):
    report = export(results[name], "gguf", "f32", tmp_path / "m.gguf")
    assert report.architecture == arch
    _same_logits(results[name], tmp_path / "m.gguf")


def test_per_layer_widths_use_deci_and_padding_is_reported(results, tmp_path):
    report = export(results["fasp-mixed"], "gguf", "f32", tmp_path / "m.gguf")
    fields = _fields(tmp_path / "m.gguf")
    widths = json.loads((results["fasp-mixed"] / "slimlab.json").read_text())["widths"]["mlp"]
    assert fields["deci.feed_forward_length"] == widths and len(set(widths)) == 3
    assert fields["deci.attention.head_count"] == 4 and fields["deci.attention.head_count_kv"] == 2
    assert fields["deci.attention.key_length"] == fields["deci.attention.value_length"] == 16
    assert report.details["padded_zeros"] > 0
    assert any("zero-padded" in n and "MB on disk" in n for n in report.notes)


def test_slicegpt_shared_folds_its_norms_exactly(results, tmp_path):
    report = export(results["slicegpt-shared"], "gguf", "f32", tmp_path / "m.gguf")
    fields = _fields(tmp_path / "m.gguf")
    assert fields["llama.embedding_length"] == 48  # 64 less 25%
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6 * 64 / 48)
    assert "output.weight" in {t.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert any("untied output matrix" in n for n in report.notes)


def test_shortgpt_writes_fewer_blocks(results, tmp_path):
    export(results["shortgpt"], "gguf", "f32", tmp_path / "m.gguf")
    fields = _fields(tmp_path / "m.gguf")
    assert fields["general.architecture"] == "llama" and fields["llama.block_count"] == 2
    assert fields["llama.feed_forward_length"] == 128


def test_tokenizer_and_chat_template_are_carried(results, tmp_path):
    from transformers import AutoTokenizer

    export(results["fasp-mixed"], "gguf", "f32", tmp_path / "m.gguf")
    fields = _fields(tmp_path / "m.gguf")
    tok = AutoTokenizer.from_pretrained(results["fasp-mixed"])
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.tokens"] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert fields["tokenizer.ggml.token_type"][:3] == [gguf.TokenType.CONTROL] * 3  # <unk> <s> </s>
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert len(fields["tokenizer.ggml.merges"]) > 0
    assert fields["tokenizer.chat_template"] == tok.chat_template


def test_pre_tokenizer_names():
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
    assert pre_tokenizer_name({"pre_tokenizer": byte_level}) == "gpt-2"
    digits = {"type": "Digits", "individual_digits": True}
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [digits, byte_level]}}) == "smollm"
    assert pre_tokenizer_name({"pre_tokenizer": {"type": "Whitespace"}}) is None


@pytest.mark.parametrize("dtype, qtype, atol", [("f16", gguf.GGMLQuantizationType.F16, 2e-2),
                                                ("bf16", gguf.GGMLQuantizationType.BF16, 1.5e-1)])
def test_half_dtypes(results, tmp_path, dtype, qtype, atol):
    f32 = export(results["fasp-mixed"], "gguf", "f32", tmp_path / "f32.gguf")
    half = export(results["fasp-mixed"], "gguf", dtype, tmp_path / "half.gguf")
    assert half.bytes < 0.6 * f32.bytes
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "half.gguf").tensors}
    assert types["blk.0.ffn_down.weight"] == qtype and types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    _same_logits(results["fasp-mixed"], tmp_path / "half.gguf", atol=atol)


@pytest.mark.parametrize("dtype, qtype, error", [("q8_0", gguf.GGMLQuantizationType.Q8_0, 0.05),
                                                 ("q4_0", gguf.GGMLQuantizationType.Q4_0, 0.4),
                                                 ("q4_1", gguf.GGMLQuantizationType.Q4_1, 0.4)])
def test_block_dtypes_quantize_whole_blocks_and_keep_the_rest_f16(results, tmp_path, dtype, qtype, error):
    f16 = export(results["fasp-mixed"], "gguf", "f16", tmp_path / "f16.gguf")
    quant = export(results["fasp-mixed"], "gguf", dtype, tmp_path / "q.gguf")
    assert quant.bytes < 0.8 * f16.bytes
    n_ff = quant.details["n_ff"]
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == qtype and types["blk.0.ffn_gate.weight"] == qtype  # rows of 64
    for i, width in enumerate(n_ff):  # ffn_down's rows are n_ff long: whole blocks or f16
        assert types[f"blk.{i}.ffn_down.weight"] == (qtype if width % 32 == 0 else gguf.GGMLQuantizationType.F16)
    assert any(width % 32 for width in n_ff) and any("stay f16" in n for n in quant.notes)
    vocab_type = gguf.GGMLQuantizationType.Q8_0 if dtype != "q8_0" else qtype
    assert types["token_embd.weight"] == vocab_type and types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert _fields(tmp_path / "q.gguf")["general.file_type"] == int(getattr(gguf.LlamaFileType, f"MOSTLY_{dtype.upper()}"))
    want = _slimlab_logits(results["fasp-mixed"], IDS)  # relative error of the file's logits, about the mean
    got = gguf_logits(tmp_path / "q.gguf", IDS)
    assert (got - want).norm() / (want - want.mean()).norm() < error


def test_a_block_dtype_is_refused_by_formats_that_cannot_write_it(results, tmp_path, capsys):
    assert main(["export", str(results["fasp-mixed"]), "--format", "hf", "--dtype", "q8_0"]) == 2
    assert "--dtype 'q8_0' is not one of" in capsys.readouterr().err


def test_a_layer_without_mlp_keeps_its_attention(tiny, tmp_path):
    """deci's n_ff = 0 skips the whole layer: an emptied MLP is written as a zero width-1 MLP."""
    lm = _lm(tiny)
    parts = lm.adapter.parts(lm.model, 1)
    none = torch.zeros(0, dtype=torch.long)
    prune_pair(parts.mlp_in, parts.down, none, none)
    lm.tokenizer.save_pretrained(tmp_path)
    arch, shapes, notes = write_gguf(tmp_path / "m.gguf", lm, tmp_path, "f32", "emptied")
    assert arch == "deci" and shapes.stand_ins == [1] and [b.n_ff for b in shapes.blocks] == [128, 1, 128]
    assert any("no MLP" in n for n in notes)
    ids = list(range(3, 23))
    with torch.no_grad():
        want = lm.model(torch.tensor([ids])).logits[0].double()
    torch.testing.assert_close(gguf_logits(tmp_path / "m.gguf", ids), want, atol=1e-4, rtol=0)


def test_results_llama_cpp_cannot_express_are_refused_before_loading(results, tmp_path, capsys):
    meta_path = results["fasp-mixed"] / "slimlab.json"
    meta = json.loads(meta_path.read_text())
    for change, message in [({"method": "slicegpt"}, "SliceGPT per-layer"),
                            ({"method": "dotresize"}, "DOTResize per-layer"),
                            ({"compensation": {"ranks": {}}}, "side branches")]:
        folder = tmp_path / message.replace(" ", "-")
        folder.mkdir()
        (folder / "slimlab.json").write_text(json.dumps(meta | change))
        (folder / "config.json").write_text((results["fasp-mixed"] / "config.json").read_text())
        assert main(["export", str(folder), "--format", "gguf"]) == 2
        err = capsys.readouterr().err
        assert message in err and "Results that export to GGUF: ShortGPT; FASP and Wanda-SP" in err
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "slimlab.json"]


def test_a_shape_with_no_llama_cpp_field_is_refused_by_name(tiny, tmp_path):
    from engine.export import NotExpressible

    lm = _lm(tiny)
    lm.adapter.layers(lm.model)[0].register_buffer("shortcut", torch.zeros(2, 2))
    lm.tokenizer.save_pretrained(tmp_path)
    with pytest.raises(NotExpressible, match="layer 0's extra weights \\(shortcut\\)"):
        write_gguf(tmp_path / "m.gguf", lm, tmp_path, "f32", "x")
