"""``model.bitsback``: every tensor of a result, bit-exact, smaller than safetensors at the same dtype.

Why not true bits-back coding (He et al., 2024): that scheme picks the rotation Q from the bit stream,
so the decoder gets an *equivalent* model ``W·Q``, not the bits that were stored; SlimLab promises the
exact tensors back, and the exact representative carries the information of its Q, so none of the
d(d-1)/2 rotational degrees of freedom per residual point can be dropped without changing the weights.
What is reclaimed instead, losslessly: the exponent field, which in a float carries far fewer bits of
information than its width. In a rotated (SliceGPT, DOTResize) result each residual direction has its
own scale (PCA sorts them by variance), so each tensor's exponents are first recentred on the mode of
their row or column (whichever makes them cheaper), then coded with an asymmetric numeral system
(``constriction``) against the tensor's own static table, jointly with the top two mantissa bits where
that pays. The sign and the other mantissa bits are stored as they are (bit-packed): they are close to
uniform, coding them gains nothing.

Layout: ``MAGIC``, the tensors' streams, a JSON header (names, shapes, dtypes, tables, stream places,
a CRC32 of each tensor's bytes; the symbol tables are binary streams), the header's length (u64 LE) and ``END``; a file cut short loses its
``END`` and is refused, a flipped bit fails its tensor's CRC.
"""
from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, CorruptWeightsError

WEIGHTS_FILE = "model.bitsback"
MAGIC, END = b"SLIMBB\x00\x01", b"SLIMBBend"
VERSION = 1
CHUNK = 1 << 22  # elements per bit-packing step: bounds the temporaries on big tensors


@dataclass(frozen=True)
class FloatLayout:
    """An IEEE-style float's fields: sign, ``exponent`` bits, ``mantissa`` bits."""

    exponent: int
    mantissa: int
    signed: torch.dtype  # the same-width integer dtype the bits are viewed as


LAYOUTS = {torch.float16: FloatLayout(5, 10, torch.int16), torch.bfloat16: FloatLayout(8, 7, torch.int16),
           torch.float32: FloatLayout(8, 23, torch.int32)}
UNSIGNED = {torch.int16: np.uint16, torch.int32: np.uint32}


def _coder():
    try:
        import constriction
    except ImportError:
        raise ConfigError("The bits-back format needs the 'constriction' package (entropy coder): "
                          "pip install 'slimlab[compact]' (or pip install constriction).") from None
    return constriction


def require_coder() -> None:
    """Refuse before any work when the entropy coder is missing."""
    _coder()


# --- fields ---------------------------------------------------------------------------------------
def _bits(t: torch.Tensor, layout: FloatLayout) -> np.ndarray:
    return t.detach().cpu().contiguous().view(layout.signed).numpy().view(UNSIGNED[layout.signed]).reshape(-1)


def _modes(e: np.ndarray, symbols: int) -> np.ndarray:
    """The most frequent exponent of each row of ``e`` (2-D), row blocks at a time."""
    rows, cols = e.shape
    out = np.empty(rows, dtype=np.uint8)
    step = max(1, CHUNK // max(cols, 1))
    for i in range(0, rows, step):
        block = e[i:i + step].astype(np.int64) + (np.arange(min(step, rows - i))[:, None] * symbols)
        out[i:i + step] = np.bincount(block.reshape(-1), minlength=block.shape[0] * symbols).reshape(-1, symbols).argmax(1)
    return out


def _entropy_bits(r: np.ndarray) -> float:
    counts = np.bincount(r.reshape(-1)).astype(np.float64)
    p = counts[counts > 0] / r.size
    return float(-(p * np.log2(p)).sum() * r.size)


class Recentred(NamedTuple):
    axis: int  # 0: per row, 1: per column, -1: one offset for the tensor
    offsets: np.ndarray  # uint8, one per row/column (or one)
    residues: np.ndarray  # uint8, flat, row-major
    saved_bits: float  # estimated, against one offset for the whole tensor: what the directions gave


def recentre(e: np.ndarray, exponent_bits: int) -> Recentred:
    """The exponents minus the mode of their row, column or whole tensor, modulo the field's range (so it
    is a bijection), whichever is cheapest by the residues' entropy plus a byte per offset."""
    symbols = 1 << exponent_bits
    mask = np.uint8(symbols - 1)
    flat = e.reshape(-1)
    whole = np.array([np.bincount(flat, minlength=symbols).argmax()], dtype=np.uint8)
    best = Recentred(-1, whole, (flat - whole[0]) & mask, 0.0)
    plain = cost = _entropy_bits(best.residues) + 8
    if e.ndim == 2 and min(e.shape) > 1:
        for axis in (0, 1):
            offsets = _modes(e if axis == 0 else e.T, symbols)
            r = (e - (offsets[:, None] if axis == 0 else offsets[None, :])) & mask
            c = _entropy_bits(r) + 8 * offsets.size
            if c < cost:
                best, cost = Recentred(axis, offsets, r.reshape(-1), plain - c), c
    return best


def undo_recentre(r: np.ndarray, axis: int, offsets: np.ndarray, shape: tuple[int, ...], exponent_bits: int) -> np.ndarray:
    mask = np.uint8((1 << exponent_bits) - 1)
    if axis == -1:
        return (r + offsets[0]) & mask
    r = r.reshape(shape)
    return ((r + (offsets[:, None] if axis == 0 else offsets[None, :])) & mask).reshape(-1)


def pack_rest(rest: np.ndarray, bits: int) -> bytes:
    """The low ``bits`` bits of every value: whole bytes as byte planes, the leftover bits packed."""
    whole, left = divmod(bits, 8)
    planes = [((rest >> (8 * k)) & 0xFF).astype(np.uint8).tobytes() for k in range(whole)]
    if left:
        top = (rest >> (8 * whole)).astype(np.uint8)
        planes += [np.packbits(np.unpackbits(top[i:i + CHUNK, None], axis=1)[:, 8 - left:]).tobytes()
                   for i in range(0, top.size, CHUNK)]  # CHUNK·left is a multiple of 8: chunks pack seamlessly
    return b"".join(planes)


def unpack_rest(data: bytes, n: int, bits: int, dtype) -> np.ndarray:
    whole, left = divmod(bits, 8)
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size != n * whole + (n * left + 7) // 8:
        raise ValueError("sign/mantissa stream has the wrong length")
    rest = np.zeros(n, dtype=dtype)
    for k in range(whole):
        rest |= buf[k * n:(k + 1) * n].astype(dtype) << (8 * k)
    if left:
        packed = buf[whole * n:]
        for i in range(0, n, CHUNK):
            m = min(CHUNK, n - i)
            bits_i = np.unpackbits(packed[i * left // 8:], count=m * left).reshape(m, left)
            rest[i:i + m] |= (np.packbits(bits_i, axis=1)[:, 0] >> (8 - left)).astype(dtype) << (8 * whole)
    return rest


# --- entropy coding -------------------------------------------------------------------------------
TOP_BITS = 2  # mantissa bits coded with the exponent when that pays for its bigger table
TABLE_ENTRY = 6  # bytes per table entry: symbol (u16), count (u32)


def _model(counts: np.ndarray):
    c = counts.astype(np.float64)
    return _coder().stream.model.Categorical(c / c.sum(), perfect=False)


def encode_symbols(symbols: np.ndarray) -> tuple[bytes, bytes]:
    """(table, ANS stream) of non-negative integer ``symbols``: the table lists only those present."""
    counts = np.bincount(symbols)
    alphabet = np.flatnonzero(counts)
    counts = counts[alphabet]
    table = alphabet.astype("<u2").tobytes() + counts.astype("<u4").tobytes()
    if alphabet.size == 1:  # one symbol: nothing to code
        return table, b""
    index = np.zeros(int(alphabet[-1]) + 1, dtype=np.int32)
    index[alphabet] = np.arange(alphabet.size, dtype=np.int32)
    coder = _coder().stream.stack.AnsCoder()
    coder.encode_reverse(index[symbols], _model(counts))
    return table, coder.get_compressed().astype("<u4").tobytes()


def decode_symbols(table: bytes, data: bytes, n: int) -> np.ndarray:
    size = len(table) // TABLE_ENTRY
    if size < 1 or len(table) % TABLE_ENTRY:
        raise ValueError("its symbol table is damaged")
    alphabet = np.frombuffer(table[:2 * size], dtype="<u2").astype(np.uint16)
    counts = np.frombuffer(table[2 * size:], dtype="<u4")
    if size == 1:
        return np.full(n, alphabet[0], dtype=np.uint16)
    return alphabet[_coder().stream.stack.AnsCoder(np.frombuffer(data, dtype="<u4").astype(np.uint32)).decode(
        _model(counts), n)]


# --- the file -------------------------------------------------------------------------------------
@dataclass
class Summary:
    """What a write reclaimed: bytes of the tensors as stored (safetensors' payload) vs written."""

    tensor_bytes: int = 0
    file_bytes: int = 0
    exponent_bits: int = 0  # exponent field bits as stored in safetensors
    exponent_coded_bits: int = 0  # what they cost here (tables and offsets included, top mantissa bits not)
    direction_bits: float = 0.0  # of the saving, what recentring per row/column gave (estimated)
    by_direction: int = 0  # tensors recentred per row or column
    coded: int = 0  # float tensors coded


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def joint_symbols(r: np.ndarray, u: np.ndarray, mantissa: int) -> tuple[int, np.ndarray]:
    """(k, symbols): each recentred exponent with its value's top k mantissa bits (k = 0 or ``TOP_BITS``),
    whichever codes smaller with its table. Within an octave a bell-shaped weight density is not flat,
    so the leading mantissa bits depend on the exponent (about 0.07 bit per weight for a Gaussian)."""
    best = None
    for k in (0, TOP_BITS):
        symbols = (r.astype(np.uint16) << k) | ((u >> (mantissa - k)) & ((1 << k) - 1)).astype(np.uint16)
        # the k bits leave the raw stream: compare against the same bits stored as they are
        cost = _entropy_bits(symbols) - k * symbols.size + 8 * TABLE_ENTRY * np.count_nonzero(np.bincount(symbols))
        if best is None or cost < best[0]:
            best = (cost, k, symbols)
    return best[1], best[2]


def _write_float(t: torch.Tensor, out: BinaryIO, entry: dict, summary: Summary) -> None:
    layout = LAYOUTS[t.dtype]
    u = _bits(t, layout)
    exponents = ((u >> layout.mantissa) & ((1 << layout.exponent) - 1)).astype(np.uint8)
    shape2d = (t.shape[0], -1) if t.dim() >= 2 else (-1,)
    axis, offsets, r, saved = recentre(exponents.reshape(shape2d), layout.exponent)
    k, symbols = joint_symbols(r, u, layout.mantissa)
    table, coded = encode_symbols(symbols)
    low = layout.mantissa - k  # mantissa bits stored as they are
    rest = ((u >> (layout.exponent + layout.mantissa)) << low) | (u & ((1 << low) - 1))
    entry.update(axis=axis, top=k, streams=[_put(out, offsets.tobytes()), _put(out, table), _put(out, coded),
                                            _put(out, pack_rest(rest, low + 1))])
    summary.exponent_bits += u.size * layout.exponent
    summary.exponent_coded_bits += 8 * (len(coded) + len(table) + offsets.size) - u.size * k
    summary.direction_bits += saved
    summary.by_direction += axis >= 0


def _read_float(entry: dict, streams: list[bytes], dtype: torch.dtype) -> torch.Tensor:
    layout = LAYOUTS[dtype]
    shape = tuple(entry["shape"])
    n = int(np.prod(shape, dtype=np.int64))
    k = int(entry["top"])
    offsets = np.frombuffer(streams[0], dtype=np.uint8)
    symbols = decode_symbols(streams[1], streams[2], n)
    shape2d = (shape[0], n // shape[0]) if len(shape) >= 2 and n else (n,)
    e = undo_recentre((symbols >> k).astype(np.uint8), entry["axis"], offsets, shape2d, layout.exponent)
    unsigned = UNSIGNED[layout.signed]
    low = layout.mantissa - k
    rest = unpack_rest(streams[3], n, low + 1, unsigned)
    mantissa = ((symbols & ((1 << k) - 1)).astype(unsigned) << low) | (rest & unsigned((1 << low) - 1))
    u = ((rest >> low) << (layout.exponent + layout.mantissa)) | (e.astype(unsigned) << layout.mantissa) | mantissa
    return torch.from_numpy(u.view(np.dtype(str(layout.signed).replace("torch.", "")))).view(dtype).reshape(shape)


def _put(out: BinaryIO, data: bytes) -> list[int]:
    start = out.tell()
    out.write(data)
    return [start, len(data)]


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def write_bitsback(state: dict[str, torch.Tensor], path: "str | Path") -> Summary:
    """Every tensor of ``state`` into ``path`` (floats of ``LAYOUTS`` coded, others raw)."""
    _coder()
    summary = Summary()
    entries = []
    with open(path, "wb") as out:
        out.write(MAGIC)
        for name, t in state.items():
            entry = {"name": name, "dtype": _dtype_name(t.dtype), "shape": list(t.shape), "crc32": _crc(t)}
            summary.tensor_bytes += t.numel() * t.element_size()
            if t.dtype in LAYOUTS and t.numel():
                _write_float(t, out, entry, summary)
                summary.coded += 1
            else:
                entry["streams"] = [_put(out, t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())]
            entries.append(entry)
        header = json.dumps({"version": VERSION, "coder": "constriction-ans", "tensors": entries}).encode()
        out.write(header)
        out.write(struct.pack("<Q", len(header)) + END)
        summary.file_bytes = out.tell()
    return summary


def _corrupt(path: Path, why: str) -> CorruptWeightsError:
    return CorruptWeightsError(f"'{path}' is not a readable bits-back file ({why}). Export it again.")


def read_bitsback(path: "str | Path") -> dict[str, torch.Tensor]:
    """The exact tensors ``write_bitsback`` was given; a truncated or damaged file is refused by name."""
    path = Path(path)
    data = path.read_bytes()
    tail = 8 + len(END)
    if len(data) < len(MAGIC) + tail or not data.startswith(MAGIC):
        raise _corrupt(path, "no bits-back signature: not such a file, or cut short")
    if not data.endswith(END):
        raise _corrupt(path, "truncated: its end marker is missing")
    (size,) = struct.unpack("<Q", data[-tail:-len(END)])
    try:
        header = json.loads(data[-tail - size:-tail]) if size <= len(data) - tail - len(MAGIC) else None
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("version") != VERSION:
        raise _corrupt(path, "its header is damaged or from another version")
    _coder()
    body = len(data) - tail - size
    data = memoryview(data)  # streams are slices of it, not copies
    state = {}
    for entry in header["tensors"]:
        name = entry["name"]
        try:
            streams = []
            for start, length in entry["streams"]:
                if start + length > body:
                    raise ValueError("a stream runs past the data")
                streams.append(data[start:start + length])
            dtype = getattr(torch, entry["dtype"])
            if "axis" in entry:
                t = _read_float(entry, streams, dtype)
            else:
                t = torch.frombuffer(bytearray(streams[0]), dtype=torch.uint8).view(dtype).reshape(entry["shape"]).clone() \
                    if streams[0] else torch.empty(entry["shape"], dtype=dtype)
        except Exception as exc:  # noqa: BLE001 - any failure to decode is damage to this tensor
            raise _corrupt(path, f"tensor '{name}' cannot be decoded: {exc}") from None
        if _crc(t) != entry["crc32"]:
            raise _corrupt(path, f"tensor '{name}' fails its checksum")
        state[name] = t
    return state
