"""From a sample to model input ids, as the official `pred.py` does it.

pred.py fills the task's template, truncates the prompt in the middle to `max_length`
tokens when it is longer (the start holds the instruction and the end the question, so the
middle is the part to lose), decodes the two halves back to text, wraps the text in the
model's chat format except for the few-shot and code tasks, and tokenizes it again.

LongBench v2 (task `longbench_v2`) fills its template as its pred.py does, with a chain of
`str.replace` of $DOC$, $Q$, $C_A$..$C_D$ by the stripped fields, in that order, and is
truncated and wrapped in the chat format like the v1 chat tasks.

Departures, all because the official code is model-specific where this is not:
- the length is measured without special tokens (pred.py counts the BOS too, so it keeps
  one token fewer of the prompt for most models);
- v2's pred.py keeps `ids[:max//2] + ids[-max//2:]`, one token more than max for an odd
  max; the same middle truncation as v1 is used here;
- the chat format is the tokenizer's own chat template (pred.py hand-writes one per model
  family); a tokenizer without one gets the plain prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workers.data import LongBenchSample
from workers.tasks import TaskSpec


def _fill_v2(template: str, sample: LongBenchSample) -> str:
    if sample.choices is None or len(sample.choices) != 4:
        raise ValueError(f"sample {sample.id!r} has no four choices; LongBench v2 prompts need choice_A..choice_D")
    fields = (("$DOC$", sample.context), ("$Q$", sample.input))
    fields += tuple((f"$C_{letter}$", choice) for letter, choice in zip("ABCD", sample.choices))
    # One replace after the other, as pred.py does: a "$Q$" inside the document is replaced
    # too, and the official prompts were built that way.
    for placeholder, value in fields:
        template = template.replace(placeholder, value.strip())
    return template


def build_prompt(task_spec: TaskSpec, sample: LongBenchSample) -> str:
    """The task template filled with the sample's fields (see TaskSpec.template_style)."""
    if task_spec.template_style == "v2_replace":
        return _fill_v2(task_spec.prompt_template, sample)
    # str.format does not re-read the substituted text, so braces in code contexts are safe.
    return task_spec.prompt_template.format(context=sample.context, input=sample.input)


def middle_halves(token_ids: Sequence[int], max_tokens: int) -> tuple[list[int], list[int]]:
    """(head, tail) kept by middle truncation: pred.py's `ids[:half]` and `ids[-half:]`.

    A sequence within the budget is returned whole as the head. Otherwise half =
    max_tokens // 2 from each end, so an odd budget keeps max_tokens - 1 tokens. (A budget
    of 1 keeps nothing, where pred.py's `ids[-0:]` would keep everything.)
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    ids = list(token_ids)
    if len(ids) <= max_tokens:
        return ids, []
    half = max_tokens // 2
    return ids[:half], ids[len(ids) - half :]


def truncate_middle(token_ids: Sequence[int], max_tokens: int) -> list[int]:
    """The ids with the middle cut out so that at most `max_tokens` remain (see middle_halves)."""
    head, tail = middle_halves(token_ids, max_tokens)
    return head + tail


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def prepare_input(task_spec: TaskSpec, sample: LongBenchSample, tokenizer: Any, max_length: int) -> list[int]:
    """Model input ids for one sample: prompt, middle truncation to `max_length`, chat format.

    `tokenizer` is a Hugging Face tokenizer. `max_length` bounds the prompt text before the
    chat wrapper and special tokens are added, as in pred.py (whose `max_length` is the
    model's context size from model2maxlen.json, leaving room for the generated tokens).
    """
    prompt = build_prompt(task_spec, sample)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if len(ids) > max_length:
        # Decoded half by half, as pred.py does: the pieces join as text, so the seam is
        # re-tokenized rather than kept as two token runs.
        head, tail = middle_halves(ids, max_length)
        prompt = tokenizer.decode(head, skip_special_tokens=True) + tokenizer.decode(tail, skip_special_tokens=True)
    if task_spec.use_chat_template and has_chat_template(tokenizer):
        # Rendered to text, then tokenized without special tokens: the template writes its
        # own BOS. (transformers 5 returns a BatchEncoding from tokenize=True; text is stable.)
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])
