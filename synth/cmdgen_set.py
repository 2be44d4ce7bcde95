"""CMDGen-mini: the command-generation evaluation set, built from tools HELD OUT of training.

The split is at tool-family level ("git-log" and "git-commit" are both family "git", so a held-out
family leaks nothing through its sibling pages) and deterministic: a family is held out when
sha256(seed + family) falls below `heldout_fraction` of the hash range. It depends on nothing but
the family name, so every stage, shard and rerun agrees on it without coordination.

From the held-out families' mined pairs the set keeps, per tool, examples first (real tasks written
by the documentation's authors), then option tasks, up to `max_per_tool`; each item must parse, use
only documented options, and share no command and no word n-gram with the training-side pairs
(decontamination in this direction too). Output lines: {"id","task","command","tool"}.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from synth.commands import family

EVAL_KEYS = ("id", "task", "command", "tool")


def is_heldout(fam: str, fraction: float, seed: str) -> bool:
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{fam}".encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


def order_key(pair: dict) -> tuple:
    rule = (pair.get("metadata") or {}).get("rule", "")
    return (0 if rule.startswith("example") else 1, hashlib.sha256(pair["id"].encode()).hexdigest())


def eval_item(pair: dict) -> dict:
    return {"id": f"cmdgen-{pair['id']}", "task": pair["task"], "command": pair["command"], "tool": pair["tool"]}


def write_jsonl(items: list[dict], path: str | Path) -> None:
    from minisigma.shards import atomic_write_bytes

    data = "".join(json.dumps({k: it[k] for k in EVAL_KEYS if k in it} | ({"setup": it["setup"]} if "setup" in it else {}),
                              sort_keys=True, ensure_ascii=False) + "\n" for it in items)
    atomic_write_bytes(path, data.encode("utf-8"))


def read_jsonl(path: str | Path) -> list[dict]:
    out = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            out.append(json.loads(line))
    return out


__all__ = ["is_heldout", "family", "order_key", "eval_item", "write_jsonl", "read_jsonl", "EVAL_KEYS"]
