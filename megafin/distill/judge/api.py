"""What the judge takes and gives back, for `megafin distill` and for judged evaluation tasks (FinanceBench).

An item is one solution to judge against a question's reference answer. A judgment is kept (the judge's answer
parsed, schema-valid, quotes verbatim) or discarded with exactly one reason from DISCARD_REASONS: nothing is
dropped uncounted, so judged = kept + discarded by reason."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Why a judgment is not used. unparsable: no JSON object in the answer; schema: JSON of the wrong shape or types;
# quote_not_found: a quoted step is not a verbatim substring of the solution; no_final_answer: the judge found no
# final answer in the solution; refusal: the judge declined (content filter / refusal text); timeout: no answer
# within the timeout after the retries; server_error: HTTP errors (5xx, connection) after the retries;
# not_checkable: judged by rules only (no LLM judge) and the reference is text the rule verifier cannot decide.
DISCARD_REASONS = ("unparsable", "schema", "quote_not_found", "no_final_answer", "refusal", "timeout",
                   "server_error", "not_checkable")


@dataclass(frozen=True)
class JudgeItem:
    key: str         # the sample's id (provenance; also what the caller matches judgments back to)
    question: str
    reference: str   # the reference answer the judge compares against
    solution: str    # the text being judged


@dataclass(frozen=True)
class Judgment:
    key: str
    kept: bool
    discard_reason: Optional[str] = None   # one of DISCARD_REASONS when not kept, else None
    final_answer: Optional[str] = None     # the final answer the judge extracted from the solution
    correct: Optional[bool] = None         # outcome: the final answer matches the reference
    reward: Optional[float] = None         # the judge's score for the solution where its template asks for one
    # Process judgment, for wrong solutions judged with the outcome+process template (None otherwise):
    first_wrong_step: Optional[str] = None  # verbatim substring of the solution
    correct_prefix: Optional[str] = None    # verbatim substring of the solution: the correct reasoning before it
    correction: Optional[str] = None        # the judge's one-step correction
    cached: bool = False                    # served from the on-disk cache (no request made)
