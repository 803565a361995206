"""The frontier bench's results file and the table made from it.

``OUT.jsonl`` holds one measured row a line (the dense reference among them); every row carries
the protocol it was measured on, so rows of an older protocol can stay in the file without
mixing into the table. The file is rewritten atomically after each row: a stopped bench leaves
every row it finished and never a half-written line. ``OUT.md`` is generated from it alone.
"""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Iterable

from engine.atomic import atomic_file

# the parts of a protocol two perplexities must share to sit in one table (LAMBADA and zero-shot
# limits are shown in the header instead: a row measures them only when it is the best of its size)
PPL_PROTOCOL = ("model", "windows", "seqlen", "chat_questions")


def read_rows(path: Path) -> list[dict]:
    """Every row in ``path`` (none when it does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_rows(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")


def row_files(out: str) -> tuple[Path, Path, list[dict]]:
    """A bench's ``OUT.jsonl`` (its rows) and ``OUT.md`` (their table), and the rows already there."""
    jsonl = Path(out + ".jsonl")
    return jsonl, Path(out + ".md"), read_rows(jsonl)


def write_table(md: Path, table: str) -> None:
    """Write a bench's markdown table atomically."""
    with atomic_file(md) as tmp:
        tmp.write_text(table, encoding="utf-8")


def publish_table(md: Path, table: str) -> None:
    """Write the table and print it."""
    write_table(md, table)
    print(table)


def same_protocol(row: dict, proto: dict) -> bool:
    return all(row.get("protocol", {}).get(k) == proto[k] for k in PPL_PROTOCOL)


def best_per_size(rows: list[dict], sizes: Iterable[float]) -> dict[float, dict]:
    """Lowest ppl among the rows at or under each size."""
    best = {}
    for size in sizes:
        fits = [r for r in rows if r.get("size") == size and r["fraction"] <= size + 1e-3 and "ppl" in r
                and not r.get("error")]
        if fits:
            best[size] = min(fits, key=lambda r: r["ppl"])
    return best


def markdown(rows: list[dict], proto: dict) -> str:
    """The README table of the rows measured on ``proto``: the dense reference, then each size's rows
    from the lowest ppl up, the best one marked."""
    rows = [r for r in rows if same_protocol(r, proto) and ("ppl" in r or "proxy_kl" in r) and not r.get("error")]
    dense = next((r for r in rows if r["key"] == "dense"), None)
    if dense is None:
        return "No dense row on this protocol yet.\n"
    sized = sorted((r for r in rows if r is not dense),
                   key=lambda r: (-r["size"], r.get("ppl", math.inf), r.get("proxy_kl", math.inf)))
    best = {id(r) for r in best_per_size(sized, {r["size"] for r in sized}).values()}
    limits = dense["protocol"]
    holdout = any("chat_holdout_hits" in r for r in rows)  # a column only once some row was checked on it
    kl = any("proxy_kl" in r for r in rows)  # and only once some row was ranked by its proxy KL
    header = (f"Model `{proto['model']}`; ppl on the first {proto['windows']}x{proto['seqlen']} wikitext-2 test "
              f"windows; chat check: hits out of its questions; LAMBADA on {limits['lambada_limit']} items and the "
              f"zero-shot mean ({', '.join(limits['zeroshot_tasks'])}) on {limits['zeroshot_limit']} items per task "
              "where measured (-: not measured); * marks the best row (lowest ppl) of each size. Seconds: "
              "compression on a shared 2-core machine, so contended (load: the 5-minute load average when the "
              "row finished)." + (" Held-out chat: hits on assets/chat_check_holdout.json, questions no recipe "
                                  "was chosen on." if holdout else "")
              + (f" Proxy KL: to the dense model's next-token distribution on {_proxy_text(rows)}; only the lowest "
                 "rows of a size got the full protocol (-: not measured)." if kl else ""))
    lines = [textwrap.fill(header, 112), "",
             "| size | params | recipe |" + (" proxy KL |" if kl else "") + " ppl (vs dense) | chat check |"
             + (" held-out chat |" if holdout else "")
             + " LAMBADA | 0-shot | seconds | load |",
             "|---|---|---|---|---|" + ("---|" if holdout else "") + ("---|" if kl else "") + "---|---|---|---|"]
    for r in [dense] + sized:
        mark = " *" if id(r) in best else ""
        mark += f" ({r['partial']})" if r.get("partial") else " (earlier run: see below)" if r.get("source") else ""
        chat = hits(r, "chat") + (f" | {hits(r, 'chat_holdout')}" if holdout else "")
        ppl = "-" if "ppl" not in r else f"{r['ppl']:.2f}" + (
            "" if r is dense else f" ({r['ppl'] / dense['ppl']:.2f}x)")
        size = "dense" if r is dense else f"{r['size']:.2f}x"
        lines.append(f"| {size} | {r['fraction']:.3f}x | {r['label']}{mark} |" + (f" {proxy_kl(r)} |" if kl else "")
                     + f" {ppl} | {chat} "
                     f"| {pct(r.get('lambada'))} | {pct(r.get('zeroshot'))} | {r.get('seconds', 0):.0f} "
                     f"| {_load(r)} |")
    lines += ["\n" + textwrap.fill(f"{r['label']}: {r['source']}.", 112) for r in [dense] + sized if r.get("source")]
    return "\n".join(lines) + "\n"


def write_markdown(path: Path, rows: list[dict], proto: dict) -> str:
    text = markdown(rows, proto)
    write_table(path, text)
    return text


def proxy_kl(row: dict) -> str:
    return f"{row['proxy_kl']:.4g}" if "proxy_kl" in row else "-"


def _proxy_text(rows: list[dict]) -> str:
    """The held-out tokens of the rows' proxy KL, from the first row that has one."""
    cfg = next(r["proxy"] for r in rows if "proxy" in r)
    return (f"{cfg['tokens']} held-out tokens of {cfg['source']} (windows of {cfg['seqlen']} sharing no "
            f"{cfg['overlap']}-token run with a calibration, recovery or search text; top-{cfg['topk']} and one "
            "bucket)")


def hits(row: dict, prefix: str) -> str:
    """``hits/total`` of a chat-check set (its row fields ``PREFIX_hits``, ``PREFIX_total``), ``-`` if not measured."""
    return f"{row[f'{prefix}_hits']}/{row[f'{prefix}_total']}" if f"{prefix}_hits" in row else "-"


def pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _load(row: dict) -> str:
    load = row.get("machine", {}).get("load_avg")
    return "-" if not load else f"{load[1]:.1f}"
