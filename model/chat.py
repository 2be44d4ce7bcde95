"""The chat template: the ONE place that turns messages into token ids.

SFT data (model/sft.py), evaluation prompts and the HTTP server all call `render` /
`render_prompt`, so training and inference can never disagree about the format.

A conversation is rendered as

    <|endoftext|> [<|system|> s <|end|>] <|user|> u <|end|> <|assistant|> a <|end|> <|user|> ...

where every role marker and <|end|> is a single special token (model/tokenizer.py), and each
message's text is encoded after one space, as every word inside running text is. Without it the
first word of an answer is a different token from the same word in the question (byte-level BPE:
"ipcs" -> ip|cs but " ipcs" -> Ġip|cs), so answering "Using ipcs, ..." with "ipcs ..." would take
a learned mapping instead of a copy; `answer_text` drops that space again when decoding. The leading
<|endoftext|> is the same separator that precedes every document in the pretraining stream, so a
conversation starts where a document would. Message text is encoded with special-token matching
switched off: a user typing "<|end|>" gets the characters, not the control token.

`render` returns the ids and a mask that is True exactly on the tokens the model should learn to
produce: the content of assistant turns and the <|end|> that closes them (so it learns to stop).
The <|assistant|> marker itself is prompt (the caller always supplies it).
"""

from __future__ import annotations

from typing import Sequence

from model.tokenizer import ASSISTANT, END, EOT, SYSTEM, USER

ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def encode_text(tok, text: str) -> list[int]:
    """Ids of plain text; special-token strings inside it are encoded as ordinary characters."""
    prev = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = prev


def _check(messages: Sequence[dict]) -> None:
    if not messages:
        raise ValueError("a conversation needs at least one message")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message {i}: expected {{'role': ..., 'content': ...}}, got {m!r:.80}")
        if m["role"] not in ROLE_TOKENS:
            raise ValueError(f"message {i}: role must be system, user or assistant, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: content must be a string")
        if m["role"] == "system" and i != 0:
            raise ValueError(f"message {i}: a system message may only come first")


def render(messages: Sequence[dict], tok) -> tuple[list[int], list[bool]]:
    """messages -> (ids, assistant_mask), both of the same length."""
    _check(messages)
    ids, mask = [tok.token_to_id(EOT)], [False]
    end = tok.token_to_id(END)
    for m in messages:
        body = encode_text(tok, " " + m["content"])
        learn = m["role"] == "assistant"
        ids.append(tok.token_to_id(ROLE_TOKENS[m["role"]]))
        mask.append(False)
        ids.extend(body)
        mask.extend([learn] * len(body))
        ids.append(end)
        mask.append(learn)
    return ids, mask


def render_prompt(messages: Sequence[dict], tok) -> list[int]:
    """Ids of a conversation that ends with a user turn, followed by <|assistant|>: the model's
    continuation is the answer; stop at `stop_ids(tok)`."""
    _check(messages)
    if messages[-1]["role"] == "assistant":
        raise ValueError("the last message of a prompt must not be the assistant's")
    ids, _ = render(messages, tok)
    return ids + [tok.token_to_id(ASSISTANT)]


def answer_text(tok, ids: Sequence[int]) -> str:
    """The text of generated answer ids (the continuation of `render_prompt`), without the one
    space every message is encoded after."""
    text = tok.decode(list(ids))
    return text[1:] if text.startswith(" ") else text


def stop_ids(tok) -> list[int]:
    """Tokens that end an assistant answer."""
    return [tok.token_to_id(END), tok.token_to_id(EOT)]


def pair_to_messages(pair: dict, system: str | None = None) -> list[dict]:
    """An instruction pair made by synth -> messages.

    Accepts {"instruction"|"task"|"prompt"|"question": ..., "response"|"command"|"answer": ...}
    (plus optional "system"); other keys are metadata and ignored.
    """
    user = next((pair[k] for k in ("instruction", "task", "prompt", "question") if isinstance(pair.get(k), str)), None)
    reply = next((pair[k] for k in ("response", "command", "answer") if isinstance(pair.get(k), str)), None)
    if not user or not user.strip():
        raise ValueError("no instruction/task text")
    if not reply or not reply.strip():
        raise ValueError("no response/command text")
    sys_text = pair.get("system") if isinstance(pair.get("system"), str) else system
    msgs = [{"role": "system", "content": sys_text}] if sys_text else []
    return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
