"""Financial sentiment classification: FPB, FiQA-SA and TFNS rows {text, label}, asked as FinGPT/FinDAP ask them."""
from __future__ import annotations

from dataclasses import dataclass

QUESTION = "What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}."


@dataclass(frozen=True)
class SentimentTask:
    name: str
    title: str
    family: str = "classification"

    def record(self, row: dict, k: int) -> dict:
        return {"prompt": f"{QUESTION}\nInput: {row['text']}\nAnswer:", "response": row["label"]}


TASKS = (SentimentTask("fpb", "FPB"), SentimentTask("fiqa_sa", "FiQA-SA"), SentimentTask("tfns", "TFNS"))
