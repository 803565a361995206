"""The compact (bits-back) export: rotated results only, every tensor back bit for bit (and so the same
logits), a file smaller than safetensors at the same dtype, damaged files refused by name, atomic writes."""
import json

import numpy as np
import pytest
import torch

from engine import compress, load_compressed, load_model, save_compressed
from engine.analysis.accounting import bytes_on_disk
from engine.cli import main
from engine.compressed.bitsback import TOP_BITS, WEIGHTS_FILE, joint_symbols, read_bitsback, recentre, write_bitsback
from engine.compressed.format import read_state
from engine.errors import CorruptWeightsError, SlimLabError
from engine.export import NotExpressible, export
from engine.export._folder import TORCH_DTYPES, save_weights
from engine.methods import Plan
from tiny import random_calibration

from export_fixtures import lm_of

ROTATED = {  # name: (method, ratio or plan, params)
    "slicegpt-per-layer": ("slicegpt", Plan("manual", 0.3, [0.1, 0.5, 0.3]), {}),  # shortcuts, untied head
    "slicegpt-shared": ("slicegpt", 0.25, {"variant": "shared"}),  # tied head behind a mix
    "dotresize-per-layer": ("dotresize", Plan("manual", 0.3, [0.1, 0.5, 0.3]), {}),
}


def _save(root, name, method, ratio, params):
    from tiny import make_model

    lm = lm_of(make_model)
    plan = ratio if isinstance(ratio, Plan) else None
    result = compress(lm, method, None if plan else ratio, plan=plan, calibration=random_calibration(len(lm.tokenizer)), method_params=params)
    return save_compressed(result, root / name)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bitsback")
    out = {name: _save(root, name, *spec) for name, spec in ROTATED.items()}
    out["fasp"] = _save(root, "fasp", "fasp", 0.3, {})
    return out


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("name", list(ROTATED))
@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
def test_round_trip_is_bit_exact_and_smaller_than_safetensors(results, name, dtype, tmp_path):
    report = export(results[name], "bits-back", dtype, tmp_path / "out")
    original = {k: v.to(TORCH_DTYPES[dtype]) if v.is_floating_point() else v for k, v in read_state(results[name]).items()}
    back = read_state(tmp_path / "out")
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(_bits(back[key]), _bits(tensor)), key
    save_weights(read_state(results[name]), tmp_path, dtype)  # what --format hf writes at this dtype
    plain = (tmp_path / "model.safetensors").stat().st_size
    ours = (tmp_path / "out" / WEIGHTS_FILE).stat().st_size
    print(f"{name} {dtype}: bits-back {ours} B, safetensors {plain} B: {100 * (1 - ours / plain):.1f}% smaller")
    assert ours < plain
    assert report.details["file_bytes"] == ours and report.details["saved_percent"] > 0


@pytest.mark.parametrize("name", list(ROTATED))
def test_the_export_loads_with_the_same_weights_and_logits(results, name, tmp_path):
    export(results[name], "bits-back", "bf16", tmp_path / "out")
    ids = torch.randint(3, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    for dtype in (torch.float32, torch.bfloat16):
        ref = load_compressed(results[name], device="cpu", dtype=dtype)
        ref.model.load_state_dict({k: v.to(torch.bfloat16).to(dtype) for k, v in ref.model.state_dict().items()})
        ours = load_model(str(tmp_path / "out"), device="cpu", dtype=dtype)
        for (k, a), b in zip(ref.model.state_dict().items(), ours.model.state_dict().values()):
            assert torch.equal(_bits(a), _bits(b)), k
        with torch.no_grad():
            assert torch.equal(ref.model(ids).logits, ours.model(ids).logits)


def test_a_result_that_is_not_rotated_is_refused_in_one_line(results, tmp_path, capsys):
    with pytest.raises(NotExpressible, match="'fasp' does not rotate the residual stream"):
        export(results["fasp"], "bits-back", out=tmp_path / "out")
    assert main(["export", str(results["fasp"]), "--format", "bits-back", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "bits-back stores rotated results only" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_cli_reports_the_saving(results, tmp_path, capsys):
    out = tmp_path / "compact"
    assert main(["export", str(results["slicegpt-per-layer"]), "--format", "bits-back", "--dtype", "f16",
                 "--out", str(out), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["format"] == "bits-back" and report["dtype"] == "f16" and report["details"]["saved_percent"] > 0
    assert any("smaller" in note for note in report["notes"])
    assert (out / WEIGHTS_FILE).is_file() and not (out / "model.safetensors").exists()
    assert "auto_map" not in json.loads((out / "config.json").read_text())
    assert bytes_on_disk(out) == (out / WEIGHTS_FILE).stat().st_size  # what `slimlab info` shows


def test_damaged_files_are_refused_by_name(results, tmp_path):
    out = tmp_path / "out"
    export(results["slicegpt-per-layer"], "bits-back", "f16", out)
    path = out / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptWeightsError, match="truncated"):
        load_model(str(out), device="cpu")
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x10  # inside some tensor's streams
    path.write_bytes(bytes(flipped))
    with pytest.raises(CorruptWeightsError, match="tensor '.*' (fails its checksum|cannot be decoded)"):
        read_bitsback(path)
    path.write_bytes(b"not a bits-back file at all")
    with pytest.raises(CorruptWeightsError, match="no bits-back signature"):
        read_bitsback(path)


def test_a_failed_write_leaves_nothing(results, tmp_path, monkeypatch):
    def fail(state, path):
        path.write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr("engine.export.bits_back.write_bitsback", fail)
    with pytest.raises(SlimLabError, match="disk full. Nothing was written"):
        export(results["slicegpt-shared"], "bits-back", out=tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_every_float_pattern_and_other_dtypes_round_trip(tmp_path):
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, 6e-8, -3e38, 65504.0])
    state = {}
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        state[f"{dtype}.special"] = special.to(dtype)
        state[f"{dtype}.matrix"] = (torch.randn(40, 30, generator=g) * torch.logspace(0, -4, 30)).to(dtype)
        state[f"{dtype}.cube"] = torch.randn(3, 4, 5, generator=g).to(dtype)
        state[f"{dtype}.constant"] = torch.ones(7, dtype=dtype)
    state |= {"index": torch.arange(9), "mask": torch.tensor([True, False]), "empty": torch.empty(0, 4)}
    write_bitsback(state, tmp_path / "w")
    back = read_bitsback(tmp_path / "w")
    for key, tensor in state.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert torch.equal(_bits(back[key]), _bits(tensor)), key


def test_exponents_are_recentred_along_the_rotated_directions():
    """Columns of very different scales (a rotated reader in PCA order): per-column offsets win."""
    w = torch.randn(256, 64, generator=torch.Generator().manual_seed(0)) * torch.logspace(0, -6, 64)
    e = ((w.half().view(torch.int16).numpy().view(np.uint16) >> 10) & 31).astype(np.uint8)
    axis, offsets, r, saved = recentre(e, 5)
    assert axis == 1 and offsets.size == 64 and saved > 0
    _, _, plain, _ = recentre(e.reshape(-1), 5)
    assert len(np.unique(r)) < len(np.unique(plain))


def test_residual_directions_of_unequal_scale_are_what_recentring_exploits(results, tmp_path):
    """An embedding whose residual directions span three decades (as real models' do): after SliceGPT's
    rotation the per-direction offsets pay; on the isotropic random model they do not."""
    from tiny import make_model

    lm = lm_of(make_model)
    with torch.no_grad():
        lm.model.get_input_embeddings().weight.mul_(torch.logspace(0, -3, 64))
    method, plan, params = ROTATED["slicegpt-per-layer"]
    result = compress(lm, method, plan=plan, calibration=random_calibration(len(lm.tokenizer)), method_params=params)
    scaled = export(save_compressed(result, tmp_path / "scaled"), "bits-back", "bf16", tmp_path / "a")
    plain = export(results["slicegpt-per-layer"], "bits-back", "bf16", tmp_path / "b")
    assert scaled.details["direction_saved_bytes"] > 0 == plain.details["direction_saved_bytes"]
    assert any("per residual direction" in note for note in scaled.notes)


def test_top_mantissa_bits_join_the_exponent_where_that_pays():
    """A large bell-shaped tensor: the leading mantissa bits depend on the exponent, worth the bigger table;
    a small one: the table would cost more than it saves."""
    for n, expected in ((200_000, TOP_BITS), (50, 0)):
        u = torch.randn(n, generator=torch.Generator().manual_seed(0)).half().view(torch.int16).numpy().view(np.uint16)
        r = recentre(((u >> 10) & 31).astype(np.uint8), 5).residues
        k, symbols = joint_symbols(r, u, 10)
        assert k == expected and symbols.max() < (32 << k)


def test_the_export_tab_offers_and_writes_it(results, tmp_path):
    from engine.errors import ConfigError
    from ui.handlers import export as hx
    from ui.state import Session

    assert ("compact (bits-back)", "bits-back") in hx.format_choices()
    message = hx.export(Session(), str(tmp_path / "out"), False, "bits-back", "bf16", str(results["slicegpt-shared"]))
    assert "as **compact (bits-back)**" in message and "% smaller" in message
    assert (tmp_path / "out" / WEIGHTS_FILE).is_file()
    with pytest.raises(ConfigError, match="does not rotate the residual stream"):
        hx.export(Session(), str(tmp_path / "no"), False, "bits-back", "bf16", str(results["fasp"]))
    assert not (tmp_path / "no").exists()


def test_without_the_entropy_coder_the_format_says_what_to_install(results, tmp_path, monkeypatch):
    from engine.errors import ConfigError

    export(results["slicegpt-shared"], "bits-back", "f16", tmp_path / "out")
    monkeypatch.setitem(__import__("sys").modules, "constriction", None)  # import fails as if not installed
    for call in (lambda: export(results["slicegpt-shared"], "bits-back", out=tmp_path / "again"),
                 lambda: load_model(str(tmp_path / "out"), device="cpu")):
        with pytest.raises(ConfigError, match=r"needs the 'constriction' package.*slimlab\[compact\]"):
            call()
    assert not (tmp_path / "again").exists()
