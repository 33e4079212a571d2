"""Gold news headlines: rows {text, labels: {price_up: 0|1, ...}}, each asked as one yes/no question."""
from __future__ import annotations

from dataclasses import dataclass

QUESTIONS = {
    "price_up": "Does the news headline talk about price going up?",
    "price_constant": "Does the news headline talk about price staying constant?",
    "price_down": "Does the news headline talk about price going down?",
    "past_information": "Does the news headline talk about a past price or event?",
    "future_information": "Does the news headline talk about a future price or event?",
    "asset_comparison": "Does the news headline compare gold with any other asset?",
}


@dataclass(frozen=True)
class HeadlineTask:
    name: str = "headline"
    title: str = "headlines"
    family: str = "classification"

    def record(self, row: dict, k: int) -> dict:
        """The question is chosen by the row's position k (deterministic), rotating over the six labels."""
        keys = list(QUESTIONS)
        key = keys[k % len(keys)]
        answer = "Yes" if row["labels"][key] == 1 else "No"
        return {"prompt": f"{QUESTIONS[key]} Answer Yes or No.\nInput: {row['text']}\nAnswer:", "response": answer}


TASK = HeadlineTask()
