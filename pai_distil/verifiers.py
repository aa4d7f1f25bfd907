"""Answer verification, chosen per row by its `domain`: the one place every stage asks "is it right?"."""

from __future__ import annotations

from .synthetic import world


def verify(row: dict, response: str) -> bool:
    """Whether `response` (a full answer, `<think>` block included or not) answers `row` correctly."""
    domain = row.get("domain") or world.DOMAIN
    if domain == world.DOMAIN:
        return world.verify(response, row["answer"])
    # Until dedicated verifiers exist for other domains: exact match of the final boxed answer.
    got = world.extract_answer(world.split_thought(response)[1])
    return got is not None and got == str(row["answer"]).strip()
