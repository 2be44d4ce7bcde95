"""Screening of generated data; every drop has a reason the stage counts in its manifest.

Command pairs (`PairScreen.check` returns None to keep, or the drop reason):
- `heldout_tool`      the tool belongs to the evaluation split (CMDGen-mini is built from those);
- `unparseable`       the command is not valid shell: bashlex parses it in-process, and whatever
                      bashlex rejects (it lacks [[ ]], arithmetic ...) goes to `bash -n`, which decides;
- `tool_not_documented` no man page for the pair's tool in the option index (nothing to check against);
- `unknown_option`    an option the tool's own man page does not list (clusters such as -cvf,
                      attached values such as -n5, --opt=value and unique long-option prefixes allowed);
- `duplicate_exact`   same normalised (task, command) or same normalised command for the same tool;
- `near_duplicate`    MinHash (datasketch LSH) Jaccard over word 3-shingles of task + command above
                      the threshold;
- `eval_overlap`      decontamination: the command equals an evaluation command, or the pair shares a
                      word n-gram (n from the recipe) with an evaluation task/command.

Rewrites (`RewriteScreen.check`): degeneration (`empty`, `truncated`, `repetition_loop`, `prompt_echo`,
`too_short`), faithfulness (`invented_option`, `invented_url`, `invented_number`, `lost_key_terms`) and
`low_quality` (a fastText quality classifier, when the recipe names one); see the class.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

from curation.refine.classifiers import load_info, predict
from synth.commands import _CONNECTORS, _WRAPPERS, family, shell_tokens

_WS = re.compile(r"\s+")
_NESTED_COMMAND = {"-exec", "-execdir", "-ok", "-okdir"}


def normalize_command(cmd: str) -> str:
    """Whitespace collapsed, quotes unified: equal commands compare equal."""
    return _WS.sub(" ", cmd.replace('"', "'")).strip()


def normalize_text(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+(?:[-_./][a-z0-9]+)*", text.lower()))


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    w = normalize_text(text).split()
    return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}


# --------------------------------------------------------------------------- shell syntax
def shell_parses(cmd: str) -> bool:
    try:
        import bashlex

        bashlex.parse(cmd)
        return True
    except Exception:  # bashlex raises several types, incl. NotImplementedError for valid syntax
        pass
    r = subprocess.run(["bash", "-n"], input=cmd, text=True, capture_output=True, timeout=10)
    return r.returncode == 0


# --------------------------------------------------------------------------- options
def segments(cmd: str) -> list[list[str]]:
    """Simple commands of a line as token lists (wrappers such as sudo skipped)."""
    segs, cur = [], []
    for t in shell_tokens(cmd):
        if t in _CONNECTORS or (t and set(t) <= set("|&;()<>")):
            if cur:
                segs.append(cur)
            cur = []
            if t and set(t) <= set("<>"):
                cur = ["__redirect__"]  # the next word is a file name, not a command
            continue
        cur.append(t)
    if cur:
        segs.append(cur)
    out = []
    for s in segs:
        if s[0] == "__redirect__":
            s = s[2:]
        while s and (re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", s[0]) or s[0].rsplit("/", 1)[-1] in _WRAPPERS):
            w = s.pop(0)
            if w.rsplit("/", 1)[-1] == "sudo":
                while s and s[0].startswith("-"):
                    s.pop(0)
        if s:
            out.append([s[0].rsplit("/", 1)[-1]] + s[1:])
    return out


def option_ok(tok: str, known: set[str]) -> bool:
    if tok in ("-", "--") or re.fullmatch(r"-\d+[a-zA-Z]?|-[0-9.]+", tok):
        return True  # stdin/end of options, numeric arguments (head -5, find -perm -000)
    base = tok.split("=", 1)[0]
    if base in known or base.split(":", 1)[0] in known:  # ffmpeg stream specifiers: -c:a:0
        return True
    if tok.startswith("--"):
        if len(base) >= 5:  # GNU getopt accepts unambiguous prefixes of long options (3+ letters here)
            return len([k for k in known if k.startswith(base)]) == 1
        return False
    if base[:2] + "=" in known:  # -ofile, -n5: a short option that takes a value, value attached
        return True
    return len(base) > 2 and all(f"-{c}" in known for c in base[1:])  # cluster -cvf


def unknown_options(cmd: str, tool: str, index: dict[str, set[str]]) -> list[str] | None:
    """Options of `cmd` not documented by the relevant man pages; None when `tool` has no page."""
    own = index.get(tool)
    if own is None:
        return None
    bad = []
    for seg in segments(cmd):
        word = seg[0]
        if word == tool or word == family(tool):
            known = own | index.get(word, set())
            args = seg[1:]
            if "-" in tool and word == family(tool):  # "git log ...": skip the subcommand words
                pieces = tool.split("-")[1:]
                while args and pieces and args[0] == pieces[0]:
                    args, pieces = args[1:], pieces[1:]
        elif word in index:
            known, args = index[word], seg[1:]
        else:
            continue
        nested = False
        for a in args:
            if a == "--":
                break
            if nested:  # find -exec CMD ... {} + : the nested command's words are not find's options
                nested = a not in ("+", ";")
                continue
            if a in _NESTED_COMMAND:
                nested = True
                continue
            if a.startswith("-") and not option_ok(a, known):
                bad.append(a)
    return bad


# --------------------------------------------------------------------------- pairs
class PairScreen:
    def __init__(self, option_index: dict[str, set[str]], heldout_families: set[str] = frozenset(),
                 eval_items: list[dict] = (), ngram: int = 8, minhash_threshold: float = 0.8,
                 num_perm: int = 64, parse_check: bool = True, option_check: bool = True,
                 require_documented_tool: bool = True):
        from datasketch import MinHashLSH

        self.index = option_index
        self.heldout = set(heldout_families)
        self.n = ngram
        self.parse_check = parse_check
        self.option_check = option_check
        self.require_documented_tool = require_documented_tool
        self.eval_commands = {normalize_command(e["command"]) for e in eval_items}
        self.eval_ngrams: set = set()
        for e in eval_items:
            self.eval_ngrams |= ngrams(f"{e.get('task', '')} {e['command']}", ngram)
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=minhash_threshold, num_perm=num_perm)
        self.seen: set = set()
        self.counts: Counter = Counter()

    @classmethod
    def from_section(cls, option_index: dict[str, set[str]], section, eval_items: list[dict] = ()) -> "PairScreen":
        """The screen a recipe's `screen:` section describes (synth.recipe.ScreenSection)."""
        return cls(option_index, eval_items=eval_items, ngram=section.ngram,
                   minhash_threshold=section.minhash_threshold, num_perm=section.num_perm,
                   parse_check=section.parse_check, option_check=section.option_check,
                   require_documented_tool=section.require_documented_tool)

    def _minhash(self, text: str):
        from datasketch import MinHash

        w = normalize_text(text).split()
        sh = {" ".join(w[i:i + 3]) for i in range(max(1, len(w) - 2))}
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([s.encode() for s in sorted(sh)])
        return m

    def check(self, pair: dict) -> str | None:
        task, cmd, tool = pair.get("task") or "", pair.get("command") or "", pair.get("tool") or ""
        if family(tool) in self.heldout:
            return "heldout_tool"
        if self.parse_check and not shell_parses(cmd):
            return "unparseable"
        if self.option_check:
            bad = unknown_options(cmd, tool, self.index)
            if bad is None and self.require_documented_tool:
                return "tool_not_documented"
            if bad:
                return "unknown_option"
        ncmd = normalize_command(cmd)
        if ncmd in self.eval_commands or (self.eval_ngrams and ngrams(f"{task} {cmd}", self.n) & self.eval_ngrams):
            return "eval_overlap"
        keys = (("tc", normalize_text(task), ncmd), ("c", tool, ncmd))
        if any(k in self.seen for k in keys):
            return "duplicate_exact"
        m = self._minhash(f"{task} {cmd}")
        if self.lsh.query(m):
            return "near_duplicate"
        self.seen.update(keys)
        self.lsh.insert(pair["id"], m)
        return None


# --------------------------------------------------------------------------- rewrites
_TERM = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]+|[A-Za-z_][\w]*[_./][\w./-]*\w|[A-Z]{2,}[A-Z0-9]*|\w*\d\w*)(?![\w-])")
_STOP = set("the a an and or of to in on for with is are be by as it this that from at not can use using".split())


def key_terms(text: str, k: int = 12) -> list[str]:
    """The source's technical terms: options, identifiers, paths, acronyms, numbers, then the most
    frequent long words; a faithful rewrite keeps most of them."""
    special = Counter(m.group(1) for m in _TERM.finditer(text))
    words = Counter(w for w in re.findall(r"[a-z][a-z]{5,}", text.lower()) if w not in _STOP)
    terms = [t for t, _ in special.most_common(k)]
    for w, _ in words.most_common(k * 2):
        if len(terms) >= k:
            break
        if w not in (t.lower() for t in terms):
            terms.append(w)
    return terms


_URL = re.compile(r"(?:https?|ftp)://[^\s<>()\"'`]+|\bwww\.[^\s<>()\"'`]+", re.I)
_REWRITE_OPT = re.compile(r"(?<![\w/.=:+-])(--[A-Za-z][\w-]*|-[A-Za-z][A-Za-z0-9]{0,3})(?![\w-])")
_NUMBER = re.compile(r"(?<![\w.])(0[xX][0-9a-fA-F]+|\d+\.\d+(?:\.\d+)*|\d{3,})(?![\w.]*\d)")
_UNIT = re.compile(r"(\S.{1,40}?)\1{3,}", re.S)


def urls(text: str) -> set[str]:
    return {u.rstrip(".,;:!?'\")]}").lower() for u in _URL.findall(text)}


def host(url: str) -> str:
    return re.sub(r"^(?:https?|ftp)://", "", url).split("/", 1)[0].removeprefix("www.")


def repeated_share(words: list[str], n: int = 4) -> float:
    """Share of the word n-grams that repeat an earlier one (0 for varied text, near 1 for a loop)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def looping_unit(text: str) -> str | None:
    """A short unit repeated 4+ times back to back ("bash:bash:bash:bash:"), with a letter in it."""
    for m in _UNIT.finditer(text):
        if re.search(r"[A-Za-z]", m.group(1)):
            return m.group(1)
    return None


class RewriteScreen:
    """Screens a model's rewrite of a passage; `check` returns (drop reason or None, info).

    In order (the first that applies is the reason counted; info["flags"] has all that apply):
    - degeneration: `empty` (no words), `repetition_loop` (a short unit repeated 4+ times back to
      back, or more than `max_repeated_ngram_share` of the word 4-grams repeat), `prompt_echo` (more
      than `max_echo_share` of the word 6-grams copied from the instruction and passage: the model
      gave the input back), `truncated` (the model hit max_tokens: finish_reason "length"),
      `too_short` (under min_words);
    - faithfulness: `invented_option` (an option neither the tool's man page nor the passage
      documents; clusters and attached values as for command pairs), `invented_url` (a URL whose
      host the source does not name), `invented_number` (a number of 3+ digits, with a dot, or in hex
      (0x128) absent from the source), `lost_key_terms` (too few of the passage's key terms kept);
    - `low_quality`: a fastText quality classifier's score under min_quality (when there is one).
    """

    def __init__(self, min_key_term_recall: float = 0.5, quality_model: str | None = None,
                 quality_label: str = "__label__high", min_quality: float = 0.5, min_words: int = 20,
                 max_repeated_ngram_share: float = 0.3, max_echo_share: float = 0.6, check_options: bool = True,
                 check_urls: bool = True, check_numbers: bool = True):
        self.min_recall = min_key_term_recall
        self.min_words = min_words
        self.quality_label = quality_label
        self.min_quality = min_quality
        self.max_repeat = max_repeated_ngram_share
        self.max_echo = max_echo_share
        self.check_options, self.check_urls, self.check_numbers = check_options, check_urls, check_numbers
        self.model = None
        self.max_words = None
        if quality_model:
            import fasttext  # a native library, loaded only when a classifier is named

            qm = Path(quality_model)
            if qm.is_dir():  # a curated run's classifier folder (curation.refine.classifiers layout)
                # scored as curation scored the corpus: the same text preparation (ft_text: one line,
                # lower case, the classifier's max_words)
                self.max_words = load_info(qm)["config"]["fasttext"]["max_words"]
                qm = qm / "model.bin"
            self.model = fasttext.load_model(str(qm))

    def quality(self, text: str) -> float:
        """The classifier's probability of `quality_label` ("hq" and "__label__hq" are the same label)."""
        want = self.quality_label.removeprefix("__label__")
        if self.max_words:
            labels, probs = predict(self.model, text, self.max_words, k=-1)
        else:
            labels, probs = self.model.predict(" ".join(text.split()), k=-1)
        return float(dict(zip((lab.removeprefix("__label__") for lab in labels), probs)).get(want, 0.0))

    def check(self, source_text: str, rewrite: str, *, finish_reason: str | None = None, prompt: str = "",
              documented_options: set[str] | None = None, min_key_term_recall: float | None = None,
              min_words: int | None = None) -> tuple[str | None, dict]:
        """(the first reason that applies, or None; info). info["flags"] lists every check that
        failed, so a truncated loop that also invents an option says both."""
        words = rewrite.split()
        if not words:
            return "empty", {"flags": ["empty"]}
        flags: list[str] = []
        info: dict = {}
        unit = looping_unit(rewrite)
        share = repeated_share([w.lower() for w in words])
        info["repeated_4gram_share"] = round(share, 3)
        if unit is not None or share > self.max_repeat:
            flags.append("repetition_loop")
            if unit:
                info["unit"] = unit
        if prompt:
            mine = ngrams(rewrite, 6)
            echo = len(mine & ngrams(prompt, 6)) / len(mine) if mine else 0.0
            info["echo_share"] = round(echo, 3)
            if echo > self.max_echo:
                flags.append("prompt_echo")
        if finish_reason == "length":
            flags.append("truncated")
        if len(words) < (self.min_words if min_words is None else min_words):
            flags.append("too_short")
        if self.check_options:
            known = set(documented_options or ()) | {m.group(1) for m in _REWRITE_OPT.finditer(source_text)}
            bad = sorted({o for o in (m.group(1) for m in _REWRITE_OPT.finditer(rewrite)) if not option_ok(o, known)})
            if bad:
                flags.append("invented_option")
                info["options"] = bad[:10]
        if self.check_urls:
            src_hosts = {host(u) for u in urls(source_text)}
            bad = sorted(u for u in urls(rewrite) if host(u) not in src_hosts)
            if bad:
                flags.append("invented_url")
                info["urls"] = bad[:5]
        if self.check_numbers:
            bad = sorted(set(_NUMBER.findall(rewrite)) - set(_NUMBER.findall(source_text)))
            if bad:
                flags.append("invented_number")
                info["numbers"] = bad[:10]
        terms = key_terms(source_text)
        low = rewrite.lower()
        kept = [t for t in terms if t.lower() in low]
        recall = len(kept) / len(terms) if terms else 1.0
        info.update(key_terms=terms, key_term_recall=round(recall, 3))
        floor = self.min_recall if min_key_term_recall is None else min_key_term_recall
        if recall < floor:
            flags.append("lost_key_terms")
        if self.model is not None and not flags:  # the classifier judges only what passed the rest
            q = self.quality(rewrite)
            info["quality"] = round(q, 4)
            if q < self.min_quality:
                flags.append("low_quality")
        info["flags"] = flags
        return (flags[0] if flags else None), info
