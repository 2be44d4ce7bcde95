"""CMDGen-mini: the command-generation evaluation set, split off the mined pairs before training.

The split is deterministic: a pair is held out when sha256(seed + key) falls below `heldout_fraction`
of the hash range. It depends on nothing but the key, so every stage, shard and rerun agrees on it
without coordination. Two levels (recipe `split.level`):

- ``item`` (the default): the key is the tool and the normalised command, so every copy of an item
  lands on the same side. The tool itself stays known: its other pairs train the model, and CMDGen-mini
  asks for commands the instruction data never showed. This is the paper's setting (CMDGen asks for
  nvidia-smi, NCCL ... commands, tools a system model has met), and the one a few-million-parameter
  model can be measured on: naming a tool it was never taught to answer with would need in-context
  copying (induction heads), which our CPU-budget models have not formed (measured: no loss drop on a
  repeated random sequence after 1.6M tokens).
- ``family``: the key is the tool family ("git-log" and "git-commit" are both "git"), so whole
  families are unseen in instruction tuning: a zero-shot-tool benchmark for larger models.

From the held-out pairs the set keeps, per tool, examples first (real tasks written by the
documentation's authors), then option tasks, up to `max_per_tool` per tool and `max_per_family` per
family; each item must be answerable (`eval_problem`: a task that stands on its own and a command
whose every literal value is stated in the task), parse, use only documented options, and share no
command and no word n-gram with the training-side pairs (decontamination in this direction too).
Output lines: {"id","task","command","tool"}.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path

from synth.commands import _WRAPPERS, command_words, family

EVAL_KEYS = ("id", "task", "command", "tool")


def is_heldout(key: str, fraction: float, seed: str) -> bool:
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(f"{seed}\0{key}".encode()).digest()[:8], "big")
    return h / 2 ** 64 < fraction


class Split:
    """Which mined pairs are held out for CMDGen-mini (module docstring); `reason` is the drop reason
    the training side counts them under."""

    def __init__(self, level: str, fraction: float, seed: str):
        if level not in ("item", "family"):
            raise ValueError(f"split level must be item or family, got {level!r}")
        self.level, self.fraction, self.seed = level, fraction, seed
        self.reason = "heldout_item" if level == "item" else "heldout_tool"

    @classmethod
    def of(cls, recipe) -> "Split":
        return cls(recipe.split.level, recipe.split.heldout_fraction, recipe.split.seed)

    def key(self, pair: dict) -> str:
        from synth.screen import normalize_command

        if self.level == "family":
            return family(pair["tool"])
        return f"{pair['tool']}\0{normalize_command(pair['command'])}"

    def heldout(self, pair: dict) -> bool:
        return is_heldout(self.key(pair), self.fraction, self.seed)


# --------------------------------------------------------------------------- answerability
# Prose that points outside the task ("like so", "this option", "In that case ..."): the sentence was
# written to sit next to other text, and without it the command cannot be inferred.
_CONTEXT = re.compile(r"\b(this|these|that|the following)( \w+){0,2} (options?|commands?|examples?|cases?|flags?|"
                      r"modes?|ways?|one)\b|^the following\b|\blike so\b|\bas follows\b|"
                      r"\b(as|shown|described|listed|see) (above|below)\b|\bnamely\b|\bis the default\b|"
                      r"^(in that case|for something|the next step|you can|it is|this is|then|once)\b", re.I)
_DANGLING = re.compile(r"\b(issue|use|like|with|to|by|using|as|of|for|and|or|the|a|an|is|are|via|from|into)\.?$", re.I)
_PLACEHOLDER = re.compile(r"^(\[.*\]|<.*>|[A-Z][A-Z0-9_-]*(\.\.\.)?|\.\.\.|\u2026)$")
_VALUE = re.compile(r"[0-9/.:@~*'\"$%,]")


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=False, posix=True)
    except ValueError:
        return command.split()


def eval_problem(pair: dict) -> str | None:
    """Why a held-out pair would not make a fair evaluation item, or None.

    - ``context_dependent_task``: the task refers to text around it or stops mid-sentence;
    - ``placeholder_argument``: the command holds a metavar ("FILE", "N", "<dev>"), which no task
      sentence determines, so no answer could match it;
    - ``ungrounded_argument``: a literal value of the command (a number, path, address, file name,
      quoted string: a word with a digit or punctuation) does not appear in the task. Options and
      plain-word subcommands ("qdisc add dev") are what the model must know; values it cannot guess.
    """
    task, command = pair.get("task") or "", pair.get("command") or ""
    if _CONTEXT.search(task) or _DANGLING.search(task.rstrip()):
        return "context_dependent_task"
    low = task.lower()
    skip = set(command_words(command)) | _WRAPPERS
    for w in _words(command):
        value = w.split("=", 1)[1] if w.startswith("-") and "=" in w else (None if w.startswith("-") else w)
        if value is None or value in skip or value in ("|", "||", "&&", ";", "&"):
            continue
        if _PLACEHOLDER.match(value):
            return "placeholder_argument"
        if _VALUE.search(value) and value.lower().strip("'\"") not in low:
            return "ungrounded_argument"
    return None


def order_key(pair: dict) -> tuple:
    rule = (pair.get("metadata") or {}).get("rule", "")
    return (0 if rule.startswith("example") else 1, hashlib.sha256(pair["id"].encode()).hexdigest())


def eval_item(pair: dict) -> dict:
    return {"id": f"cmdgen-{pair['id']}", "task": pair["task"], "command": pair["command"], "tool": pair["tool"]}


def write_jsonl(items: list[dict], path: str | Path) -> None:
    from minisigma.core.shards import atomic_write_bytes

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


__all__ = ["Split", "is_heldout", "eval_problem", "family", "order_key", "eval_item", "write_jsonl", "read_jsonl",
           "EVAL_KEYS"]
