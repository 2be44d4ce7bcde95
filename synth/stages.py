"""The synth steps as minisigma.core.runner Stages (Ray-parallel, resumable, with manifests).

    tools      per input shard: the option index of every man page {tool, family, options}
    pairs_raw  per input shard: mined (task, command) pairs with provenance (synth.commands)
    cmdgen     one task: the CMDGen-mini evaluation items, held out of the mined pairs (item or family level)
    pairs      P tasks, partitioned by tool family: screened pairs (synth.screen.PairScreen);
               partitioning by family keeps exact and MinHash dedup exact within a family
    qa         per input shard: question-answer pairs, deduplicated and decontaminated
    rewrites   per input shard: LLM rewrites through the recipe's backend, screened (each Ray task
               has its own client, so the cluster-wide concurrency is tasks x max_concurrency;
               all share the sqlite response cache)

In a generator stage the unit counted as "in" is a candidate record (a pair, a request), so the
manifest invariant in = out + dropped + quarantined holds per record; documents read are a stat.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from minisigma.core.runner import Sink, Stage, Task
from minisigma.core.shards import list_shards, read_docs
from synth.backends import BackendError, make_backend
from synth.cmdgen_set import (
    UNRUNNABLE,
    FixtureProbe,
    Probed,
    Split,
    derive_fixtures,
    derive_setups,
    eval_item,
    eval_problem,
    order_key,
    program_info,
    read_jsonl,
    unrunnable_kind,
)
from synth.commands import family, mine_manpage, mine_snippets
from synth.manpage import parse_manpage
from synth.qa import qa_pairs
from synth.recipe import SynthRecipe
from synth.rewrite import build_messages, command_of, page_of, passage_of, rewrite_record
from synth.screen import PairScreen, RewriteScreen, ngrams, normalize_command, normalize_text, unknown_options


def _stub(doc: dict) -> dict:
    return {"id": doc.get("id"), "source": doc.get("source"), "url": doc.get("url")}


def _command_section(md: dict, sections: list[str]) -> bool:
    sec = str(md.get("section") or "")
    return not sec or sec[:1] in {x[:1] for x in sections}


class ToolIndex(Stage):
    name = "synth.tools"

    def __init__(self, recipe: SynthRecipe):
        super().__init__(recipe.commands)

    def process(self, task: Task, sink: Sink) -> None:
        for doc in read_docs(task.inputs[0]):
            sink.take(doc)
            if doc.get("source") not in self.config.manpage_sources:
                sink.drop(_stub(doc), "not_a_manpage")
                continue
            md = doc.get("metadata") or {}
            if not _command_section(md, self.config.man_sections):
                sink.drop(_stub(doc), "not_a_command_page")
                continue
            page = parse_manpage(doc.get("text", ""), md.get("tool"))
            if not page.tool:
                sink.quarantine(_stub(doc), "no_tool_name")
                continue
            info = program_info(md)
            sink.write({"id": doc["id"], "text": page.summary, "tool": page.tool, "family": family(page.tool),
                        "options": sorted(page.known_options), "url": doc.get("url"),
                        "package": md.get("package"), "version": md.get("version"),
                        "tools_package": info["package"], "suite": info["suite"]})


def load_tool_info(tools_dir: str | Path) -> dict[str, dict]:
    """tool -> {"package", "suite"} (the first man page of the tool that says)."""
    info: dict[str, dict] = {}
    for shard in list_shards(tools_dir):
        for r in read_docs(shard):
            if r["tool"] not in info or (info[r["tool"]]["package"] is None and r.get("tools_package")):
                info[r["tool"]] = {"package": r.get("tools_package"), "suite": r.get("suite") or "general"}
    return info


def load_option_index(tools_dir: str | Path) -> dict[str, set[str]]:
    index: dict[str, set[str]] = {}
    for shard in list_shards(tools_dir):
        for r in read_docs(shard):
            index.setdefault(r["tool"], set()).update(r["options"])
    return index


class MineCommands(Stage):
    name = "synth.pairs_raw"

    def __init__(self, recipe: SynthRecipe):
        super().__init__(recipe.commands)

    def process(self, task: Task, sink: Sink) -> None:
        c = self.config
        for doc in read_docs(task.inputs[0]):
            sink.stat("docs_read")
            src = doc.get("source")
            if src in c.manpage_sources:
                if not _command_section(doc.get("metadata") or {}, c.man_sections):
                    sink.stat("not_a_command_page")
                    continue
                pairs, stats = mine_manpage(doc, c.max_option_pairs_per_tool, options=c.option_pairs)
            elif src in c.snippet_sources:
                pairs, stats = mine_snippets(doc)
            else:
                continue
            for k, v in stats.items():
                sink.stat(k, v)
            if not pairs:
                sink.stat("docs_without_pairs")
            for p in pairs:
                sink.take(p)
                sink.write(p)


class CmdgenSet(Stage):
    name = "synth.cmdgen"

    def __init__(self, recipe: SynthRecipe, tools_dir: str):
        super().__init__({"split": recipe.split.model_dump(), "cmdgen": recipe.cmdgen.model_dump(),
                          "screen": recipe.screen.model_dump(), "tools_dir": str(tools_dir)})
        self.recipe = recipe

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return [Task(0, tuple(str(p) for p in inputs))]

    def process(self, task: Task, sink: Sink) -> None:
        r = self.recipe
        split = Split.of(r)
        index = load_option_index(self.config["tools_dir"])
        train_cmds, train_ngrams, train_tools, candidates = set(), set(), set(), []
        for shard in task.inputs:
            for p in read_docs(shard):
                if split.heldout(p):
                    candidates.append(p)
                else:
                    train_cmds.add(normalize_command(p["command"]))
                    train_ngrams |= ngrams(f"{p['task']} {p['command']}", r.screen.ngram)
                    if unknown_options(p["command"], p["tool"], index) == []:  # will pass the screen's main test
                        train_tools.add(p["tool"])
        checker = PairScreen.from_section(index, r.screen)
        tool_info = load_tool_info(self.config["tools_dir"])
        probe = FixtureProbe() if r.cmdgen.fixtures and r.cmdgen.probe else None
        try:
            self._select(task, sink, split, index, train_cmds, train_ngrams, train_tools, candidates, checker,
                         tool_info, probe)
        finally:
            if probe is not None:
                probe.close()

    def _select(self, task, sink, split, index, train_cmds, train_ngrams, train_tools, candidates, checker,
                tool_info, probe) -> None:
        """Keep the answerable candidates within the caps; give each its package, suite and fixtures.

        With `cmdgen.prefer_executable`, the caps take first, tool by tool, the candidates whose
        reference exits 0 in the sandbox (probed with their fixtures and setups), then the others in
        the usual order (examples first): a tool keeps its tasks, and the set runs what it scores
        where the tool's documentation allows it. Whether a second run of the reference agreed is
        counted (`reference_nondeterministic`) but does not rank: for a reference whose output varies
        by chance (`ss --all` lists netlink sockets in a varying order) that is a coin flip, and the
        set must be the same on every build of the same inputs."""
        r = self.recipe
        eligible = []
        for p in sorted(candidates, key=order_key):
            sink.take(p)
            if split.level == "item" and p["tool"] not in train_tools:
                sink.drop(p, "tool_unseen_in_training")  # item level asks about tools the model was taught
                continue
            if normalize_command(p["command"]) in train_cmds or ngrams(f"{p['task']} {p['command']}",
                                                                       r.screen.ngram) & train_ngrams:
                sink.drop(p, "train_overlap")
                continue
            reason = (eval_problem(p) if r.cmdgen.answerable_only else None) or checker.check(p)
            if reason:
                sink.drop(p, reason)
                continue
            eligible.append(p)

        def prepare(p: dict) -> tuple[dict, Probed]:
            info = tool_info.get(p["tool"]) or {"package": None, "suite": "general"}
            if info["suite"] == "gpu" or not r.cmdgen.fixtures:
                return info, Probed(None)
            derived = derive_fixtures(p)
            setups = derive_setups(p)
            if probe is None or not probe.available:
                return info, Probed(derived, setups[0] if setups else None)
            candidates = [derived, []] if derived else [[]]
            if any(f.get("type") == "dir" for f in derived):  # "rmdir docs": the directory, empty
                candidates.insert(1, [f for f in derived if f.get("type") == "dir"])
            return info, probe.choose(p, candidates, setups)

        prepared = {id(p): prepare(p) for p in eligible} if r.cmdgen.prefer_executable else {}
        for info, probed in prepared.values():
            # the probed pool, before any cap: how many of the eligible held-out references run here
            if info["suite"] == "gpu":
                sink.stat("eligible_gpu")
            elif probed.status is not None:
                sink.stat("eligible_runnable" if probed.status == "ok" else "eligible_unrunnable")
        if prepared:
            def rank(p):  # runnable first (a second run's agreement does not rank: see above)
                info, probed = prepared[id(p)]
                return (info["suite"] == "general" and probed.status != "ok", order_key(p))

            eligible.sort(key=rank)
        per_tool: dict[str, int] = {}
        per_family: dict[str, int] = {}
        kept = 0
        drop_unrunnable = r.cmdgen.fixtures and r.cmdgen.execute_only_runnable and r.cmdgen.unrunnable == "drop"
        for p in eligible:
            fam = family(p["tool"])
            if drop_unrunnable:
                info, probed = prepared.get(id(p)) or prepare(p)
                prepared[id(p)] = (info, probed)
                if info["suite"] != "gpu" and probed.status not in (None, "ok"):
                    sink.drop(p, f"unrunnable_{unrunnable_kind(probed.why)}")
                    continue
            if kept >= r.cmdgen.max_tasks:
                sink.drop(p, "over_max_tasks")
                continue
            if per_tool.get(p["tool"], 0) >= r.cmdgen.max_per_tool:
                sink.drop(p, "over_max_per_tool")
                continue
            if per_family.get(fam, 0) >= r.cmdgen.max_per_family:
                sink.drop(p, "over_max_per_family")
                continue
            per_tool[p["tool"]] = per_tool.get(p["tool"], 0) + 1
            per_family[fam] = per_family.get(fam, 0) + 1
            kept += 1
            info, probed = prepared.get(id(p)) or prepare(p)
            no_execute = None
            if info["suite"] != "gpu" and r.cmdgen.fixtures:
                if probed.status is not None:
                    sink.stat(f"reference_{probed.status}")
                    if probed.status != "ok" and r.cmdgen.execute_only_runnable:
                        no_execute = UNRUNNABLE + probed.why
                        sink.stat(f"textual_{unrunnable_kind(probed.why)}")
                    if probed.status == "ok":
                        # how it ran: as namespaced root, after a setup; and whether a second run agreed
                        for key, on in (("reference_privileged", probed.privileged),
                                        ("reference_with_setup", probed.setup is not None),
                                        ("reference_nondeterministic", not probed.deterministic)):
                            if on:
                                sink.stat(key)
                sink.stat("with_fixtures" if probed.fixtures else "without_fixtures")
            runs = probed.status in (None, "ok")  # the setup and root an unrunnable item was tried with are not kept
            item = eval_item(p, info, probed.fixtures, no_execute, probed.setup if runs else None,
                             probed.privileged and runs)
            sink.stat(f"suite_{item['suite']}")  # the size of each family: general, textual, gpu
            sink.write({**item, "text": p["text"], "metadata": p.get("metadata", {})})


class ScreenPairs(Stage):
    name = "synth.pairs"

    def __init__(self, recipe: SynthRecipe, tools_dir: str, cmdgen_jsonl: str | None):
        super().__init__({"screen": recipe.screen.model_dump(), "split": recipe.split.model_dump(),
                          "tools_dir": str(tools_dir), "cmdgen": cmdgen_jsonl})
        self.recipe = recipe

    def tasks(self, inputs: list[Path]) -> list[Task]:
        return [Task(i, tuple(str(p) for p in inputs), {"partition": i}) for i in range(self.recipe.screen.partitions)]

    @staticmethod
    def partition_of(fam: str, n: int) -> int:
        return int(hashlib.sha256(fam.encode()).hexdigest()[:8], 16) % n

    def process(self, task: Task, sink: Sink) -> None:
        r = self.recipe
        s = r.screen
        index = load_option_index(self.config["tools_dir"])
        evals = read_jsonl(self.config["cmdgen"]) if self.config["cmdgen"] else []
        split = Split.of(r)
        screen = PairScreen.from_section(index, s, eval_items=evals)
        part = task.params["partition"]
        for shard in task.inputs:
            for p in read_docs(shard):
                if self.partition_of(family(p["tool"]), s.partitions) != part:
                    continue
                sink.take(p)
                if split.heldout(p):  # an evaluation candidate (kept or not), never a training pair
                    sink.drop(p, split.reason)
                    continue
                reason = screen.check(p)
                if reason:
                    sink.drop(p, reason)
                else:
                    sink.write(p)


def _options(text: str) -> set[str]:
    """Option names in a command or an option term: "-p, --pid" -> {"-p", "--pid"}; "--max=N" -> {"--max"}."""
    return {m.group(1) for m in re.finditer(r"(?<![\w-])(--?[A-Za-z0-9][\w.-]*)", text)}


class QAPairs(Stage):
    name = "synth.qa"

    def __init__(self, recipe: SynthRecipe, cmdgen_jsonl: str | None):
        super().__init__({"qa": recipe.qa.model_dump(), "ngram": recipe.screen.ngram, "cmdgen": cmdgen_jsonl})
        self.recipe = recipe

    def process(self, task: Task, sink: Sink) -> None:
        c = self.recipe.qa
        n = self.recipe.screen.ngram
        split = Split.of(self.recipe)
        eval_ngrams, eval_options = set(), set()
        for e in read_jsonl(self.config["cmdgen"]) if self.config["cmdgen"] else []:
            eval_ngrams |= ngrams(f"{e['task']} {e['command']}", n)
            eval_options |= {(e["tool"], o) for o in _options(e["command"])}
        seen = set()
        for doc in read_docs(task.inputs[0]):
            sink.stat("docs_read")
            if doc.get("source") not in c.sources:
                continue
            for q in qa_pairs(doc, c.max_option_questions_per_page):
                sink.take(q)
                key = (normalize_text(q["question"]), normalize_text(q["answer"]))
                md = q.get("metadata") or {}
                tool = md.get("tool")
                if len(q["answer"].split()) < c.min_answer_words:
                    sink.drop(q, "short_answer")
                elif key in seen:
                    sink.drop(q, "duplicate_exact")
                elif tool and split.level == "family" and split.heldout({"tool": tool}):
                    sink.drop(q, "heldout_tool")  # nothing about a held-out family reaches instruction tuning
                elif (eval_ngrams and ngrams(q["text"], n) & eval_ngrams) or \
                        (tool and {(tool, o) for o in _options(md.get("option_term", ""))} & eval_options):
                    # the item's words, or the option an item asks for explained ("What does --pid of ipcs do?")
                    sink.drop(q, "eval_overlap")
                else:
                    seen.add(key)
                    sink.write(q)


def _order(doc: dict) -> str:
    return hashlib.sha256(str(doc.get("id")).encode()).hexdigest()


class Rewrite(Stage):
    """LLM rewrites of passages, screened (synth.screen.RewriteScreen). The unit counted is a request
    (document x template); what the backend answered and the screen dropped is in rejects/ with its
    reason. With `max_docs` the stage is one task over all shards (a bounded, fixed sample)."""

    name = "synth.rewrites"
    cpus_per_task = 1

    def __init__(self, recipe: SynthRecipe, cache_dir: str):
        super().__init__({"rewrite": recipe.rewrite.model_dump(),
                          "backend": recipe.backend.model_dump(), "cache_dir": str(cache_dir)})
        self.recipe = recipe

    def tasks(self, inputs: list[Path]) -> list[Task]:
        if self.recipe.rewrite.max_docs:
            return [Task(0, tuple(str(p) for p in inputs))]
        return super().tasks(inputs)

    def _docs(self, task: Task) -> list[dict]:
        c = self.recipe.rewrite
        docs = []
        for shard in task.inputs:
            ds = [d for d in read_docs(shard) if not c.sources or d.get("source") in c.sources]
            docs += ds[: c.max_docs_per_shard] if c.max_docs_per_shard else ds
        if c.max_docs:
            docs = sorted(docs, key=_order)
        return docs

    def process(self, task: Task, sink: Sink) -> None:
        from pathlib import Path as _P

        c = self.recipe.rewrite
        backend = make_backend(self.recipe.backend, self.config["cache_dir"])
        quality = c.quality_model
        if quality and not (_P(quality).is_file() or (_P(quality) / "model.bin").is_file()):
            sink.stat("quality_model_missing")
            quality = None
        screen = RewriteScreen(c.min_key_term_recall, quality, c.quality_label, c.min_quality, c.min_words,
                               max_repeated_ngram_share=c.max_repeated_ngram_share, max_echo_share=c.max_echo_share,
                               check_options=c.check_options, check_urls=c.check_urls, check_numbers=c.check_numbers)
        manpage_sources = tuple(self.recipe.commands.manpage_sources)
        jobs = []
        chosen = 0
        for d in self._docs(task):
            if c.max_docs and chosen >= c.max_docs:
                break
            page = page_of(d, manpage_sources)
            passage = passage_of(d, page, c.passage)
            if len(passage.split()) < c.min_passage_words:
                sink.stat("short_passage")
                continue
            chosen += 1
            sink.stat("docs_rewritten")
            command, command_help = command_of(page, d)
            documented = set(page.known_options) if page is not None else set()
            for t in c.templates:
                if ("{command}" in t.prompt or "{command_help}" in t.prompt) and not command:
                    sink.stat(f"no_command_{t.name}")
                    continue
                msgs, body, truncated = build_messages(t, d, c.max_chars, passage, command, command_help)
                # the source a rewrite is screened against: what its prompt gave the model
                given = [(body, "{text}"), (command, "{command}"), (command_help, "{command_help}")]
                source_text = "\n".join(v for v, ph in given if ph in t.prompt)
                truncated = truncated and "{text}" in t.prompt
                jobs.append((d, t, msgs, source_text, truncated, documented, command))
        openai = self.recipe.backend.kind == "openai"
        for start in range(0, len(jobs), c.batch_size):
            chunk = jobs[start:start + c.batch_size]
            groups: dict[tuple, list[int]] = {}
            for i, (_, t, *_rest) in enumerate(chunk):
                temp = t.temperature if t.temperature is not None else (0.0 if openai else None)
                groups.setdefault((t.max_tokens, temp), []).append(i)
            results: list = [None] * len(chunk)
            for (max_tokens, temperature), idxs in groups.items():
                outs = backend.chat_many([chunk[i][2] for i in idxs], return_exceptions=True,
                                         max_tokens=max_tokens, temperature=temperature)
                for i, o in zip(idxs, outs):
                    results[i] = o
            for (d, t, msgs, source_text, truncated, documented, command), res in zip(chunk, results):
                rec_stub = {"source_id": d.get("id"), "template": t.name}
                sink.take(d)
                if isinstance(res, BackendError):
                    sink.quarantine(rec_stub | {"error": str(res)[:300]}, "backend_error")
                    continue
                # the offline backend is extractive by design (its answer is copied from the passage)
                prompt = "" if self.recipe.backend.kind == "offline" else "\n".join(m["content"] for m in msgs)
                reason, info = screen.check(source_text, res.text, finish_reason=res.finish_reason, prompt=prompt,
                                            documented_options=documented, min_key_term_recall=t.min_key_term_recall,
                                            min_words=t.min_words)
                extra = {"finish_reason": res.finish_reason, "completion_tokens": res.completion_tokens, **info}
                if command:
                    extra["command"] = command
                rec = rewrite_record(t, d, res.text, res.model or backend.model, truncated, extra)
                if reason:
                    sink.drop(rec, reason)
                    sink.stat(f"dropped_{t.name}")
                else:
                    sink.write(rec)
                    sink.stat(f"kept_{t.name}")
                    sink.stat(f"kept_from_{d.get('source')}")
        for k, v in backend.stats().items():
            sink.stat(f"backend_{k}", v)
