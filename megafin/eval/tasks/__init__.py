"""Evaluation tasks, one file per task family or data source (sentiment.py, headline.py, ner.py, cfa.py,
financemath.py, tatqa.py, convfinqa.py, fiqa_qa.py, financebench.py), all listed in registry.py; base.py says what
a task is, prompts.py holds the instructions tasks share, sft_records.py writes a trainable task's file as
prompt/response training records."""
