"""Evaluation tasks, one file per task family (sentiment.py, headline.py), all listed in registry.py; base.py says
what a task is, sft_records.py writes a task's file as prompt/response training records."""
