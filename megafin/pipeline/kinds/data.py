"""`kind: data_prep`: the tokenizer, instruction records and labelled pairs from task files (with a held-out part of
each TRAINING split, in the layout `megafin eval run --data-dir` reads), and the packed datasets the training stages
read (data_prep's python API: sft | mix | preference | pretrain).

    data:
      kind: data_prep
      tokenizer: {train: {vocab_size: 4096, inputs: [../shared/data/cpt/reuters21578_news.jsonl, fpb]}}
                 # or {path: DIR}: an existing HF tokenizer (Llama-3's), or "@stage/tokenizer"
      holdout_seed: 20260123
      sets:                                   # labelled files -> OUT/data/sets/<name>.jsonl (prompt/response)
        fpb: {path: ../shared/data/fpb/train.jsonl, holdout: 0.1}   # 10% -> OUT/data/heldout/fpb/test.jsonl
        fiqa_sa: {path: ../shared/data/fiqa_sa/train.jsonl, balance: true}  # every label repeated to the largest
        xbrl: {path: ../shared/data/instruct/xbrl_terms_train.jsonl, limit: 2000}
      outputs:                                # packed datasets OUT/data/<name>_*
        instruct: {sft: [xbrl, fpb], seq_length: 512}
        cpt_it: {mix: {cpt: [../shared/data/cpt/earnings_calls.jsonl], it: [xbrl, fpb]}, cpt_ratio: 0.5}
        pairs: {preference: [fpb, "@distill/pairs.jsonl"]}    # a set's labelled pairs, or pair files

A set's `task` is its record format (megafin/eval/tasks/sft_records.py: fpb, fiqa_sa, tfns, headline, xbrl,
headline_sentiment); by default its name. `balance: true` repeats every label's records up to the most frequent
label's count (records.balance_labels)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from megafin.pipeline.registry import (Problem, StageKind, is_mapping, is_pos_int, is_str, optional, register_kind,
                                       require, unknown_keys)
from megafin.pipeline.spec import Reference

PACKERS = ("sft", "mix", "preference", "pretrain")
OUTPUT_KEYS = (*PACKERS, "seq_length", "cpt_ratio", "seed")
SET_KEYS = ("path", "task", "holdout", "limit", "balance")


def _set_formats() -> list[str]:
    from megafin.eval.tasks.sft_records import SETS

    return list(SETS)


@register_kind("data_prep")
class DataPrep(StageKind):
    resumes_in_place = False  # cheap next to training: an interrupted one starts over

    def check(self, s: dict) -> Iterator[Problem]:
        yield from unknown_keys(s, ("tokenizer", "sets", "outputs", "holdout_seed"))
        tok = s.get("tokenizer")
        if not is_mapping(tok) or len(tok) != 1 or next(iter(tok)) not in ("train", "path"):
            yield ("tokenizer",), "{train: {vocab_size: N, inputs: [...]}} or {path: DIR}", tok
        elif "train" in tok:
            train = tok["train"]
            if not is_mapping(train):
                yield ("tokenizer", "train"), "a mapping with vocab_size and inputs", train
            else:
                yield from (((("tokenizer", "train", *p)), e, g) for p, e, g in
                            [*unknown_keys(train, ("vocab_size", "inputs", "max_chars")),
                             *require(train, "vocab_size", lambda v: is_pos_int(v) and v >= 300,
                                      "an integer >= 300"),
                             *require(train, "inputs", lambda v: isinstance(v, list) and v and all(map(is_str, v)),
                                      "a list of corpus files or set names"),
                             *optional(train, "max_chars", is_pos_int, "a positive integer")])
        elif not is_str(tok["path"]):
            yield ("tokenizer", "path"), "a tokenizer directory", tok["path"]
        yield from optional(s, "holdout_seed", lambda v: isinstance(v, int), "an integer")
        sets = s.get("sets", {})
        formats = _set_formats()
        if not is_mapping(sets):
            yield ("sets",), "a mapping of set name -> {path, task, holdout, limit}", sets
            sets = {}
        heldout_tasks: dict[str, str] = {}
        for name, body in sets.items():
            where = ("sets", name)
            if not is_mapping(body):
                yield where, "{path: FILE, holdout: FRACTION, ...}", body
                continue
            yield from (((*where, *p), e, g) for p, e, g in unknown_keys(body, SET_KEYS))
            yield from (((*where, *p), e, g) for p, e, g in require(body, "path", is_str, "a labelled JSONL file"))
            task = body.get("task", name)
            if task not in formats:
                yield (*where, "task"), f"one of {', '.join(formats)} (the set's format; default: its name)", task
            yield from (((*where, *p), e, g) for p, e, g in
                        optional(body, "holdout", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                                 and 0 <= v < 1, "a fraction in [0, 1)"))
            yield from (((*where, *p), e, g) for p, e, g in optional(body, "limit", is_pos_int, "a positive integer"))
            yield from (((*where, *p), e, g) for p, e, g in optional(body, "balance", lambda v: isinstance(v, bool),
                                                                       "true or false"))
            if body.get("holdout"):
                if task in heldout_tasks:
                    yield (*where, "holdout"), f"one held-out set per task ({task} is already held out of set " \
                                               f"{heldout_tasks[task]})", body["holdout"]
                heldout_tasks[task] = name
        outputs = s.get("outputs", {})
        if not is_mapping(outputs):
            yield ("outputs",), "a mapping of dataset name -> {sft|mix|preference|pretrain: inputs}", outputs
            outputs = {}
        for name, body in outputs.items():
            where = ("outputs", name)
            packers = [k for k in PACKERS if is_mapping(body) and k in body]
            if not is_mapping(body) or len(packers) != 1:
                yield where, f"a mapping with exactly one of {', '.join(PACKERS)}", body
                continue
            yield from (((*where, *p), e, g) for p, e, g in unknown_keys(body, OUTPUT_KEYS))
            yield from (((*where, *p), e, g) for p, e, g in optional(body, "seq_length", is_pos_int,
                                                                       "a positive integer"))
            packer = packers[0]
            value = body[packer]
            lists = ([("cpt",), ("it",)] if packer == "mix" else [()])
            if packer == "mix" and not (is_mapping(value) and set(value) == {"cpt", "it"}):
                yield (*where, "mix"), "{cpt: [corpus files], it: [sets or instruction files]}", value
                continue
            if packer == "mix":
                yield from (((*where, *p), e, g) for p, e, g in
                            optional(body, "cpt_ratio", lambda v: isinstance(v, (int, float)) and 0 < v < 1,
                                     "a fraction in (0, 1)"))
            for sub in lists:
                items = value[sub[0]] if sub else value
                if not isinstance(items, list) or not items:
                    yield (*where, packer, *sub), "a non-empty list of set names or files", items
                    continue
                for i, item in enumerate(items):
                    if not is_str(item):
                        yield (*where, packer, *sub, i), "a set name or a file", item
                    elif packer != "pretrain" and "/" not in item and Reference.parse(item) is None \
                            and "." not in item and item not in sets:
                        yield (*where, packer, *sub, i), f"a set of this stage ({', '.join(sets) or 'none'}) " \
                                                        f"or a file", item

    def run(self, stage: Any) -> None:
        from data_prep.chat import NoChatTemplate
        from data_prep.outputs import OutputError
        from data_prep.stats import BadInputError

        try:
            self._run(stage)
        except (BadInputError, OutputError, NoChatTemplate, OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise stage.fail(f"{type(err).__name__}: {first}") from None

    def _run(self, stage: Any) -> None:
        from data_prep.packed_writer import mix, preference, sft
        from data_prep.pretrain import pretrain
        from megafin.eval.tasks import sft_records
        from megafin.pipeline import records

        s, out = stage.settings, stage.directory
        seed = int(s.get("holdout_seed", 20260123))
        sets: dict[str, dict] = {}
        for name, body in (s.get("sets") or {}).items():
            task = body.get("task", name)
            path = Path(body["path"])
            if not path.is_file():
                raise stage.fail(f"sets.{name}.path: {path} does not exist")
            rows = records.read_rows(path)[: body.get("limit")]
            train, held = records.split_rows(rows, float(body.get("holdout", 0)), seed)
            recs, skipped = sft_records.records(task, train)
            distinct = len(recs)
            if body.get("balance"):
                recs = records.balance_labels(recs, seed)
            n = records.write_jsonl(recs, out / "sets" / f"{name}.jsonl")
            pairs = records.write_jsonl(records.labelled_pairs(recs, seed), out / "pairs" / f"{name}.jsonl")
            if held:
                records.write_jsonl(held, out / "heldout" / task / "test.jsonl")
            sets[name] = {"task": task, "records": n, "distinct_records": distinct, "pairs": pairs,
                          "held_out": len(held), "skipped_rows": skipped}
            stage.log(f"set {name}: {n} records ({distinct} distinct{', labels balanced' if body.get('balance') else ''}"
                      f"), {pairs} labelled pairs, {len(held)} rows held out, {skipped} rows without a {task} record")
        tokenizer = self._tokenizer(stage, out, sets)

        def inputs(items: list, pairs: bool = False) -> list[str]:
            return [str(out / ("pairs" if pairs else "sets") / f"{i}.jsonl") if i in sets else i for i in items]

        packed = {}
        for name, body in (s.get("outputs") or {}).items():
            prefix = str(out / name)
            seq = int(body.get("seq_length", 512))
            common = dict(quiet=True, seed=int(body.get("seed", 1234)))
            if "sft" in body:
                result = sft(inputs(body["sft"]), str(tokenizer), prefix, seq_length=seq, **common)
            elif "mix" in body:
                result = mix(inputs(body["mix"]["cpt"]), inputs(body["mix"]["it"]), str(tokenizer), prefix,
                             seq_length=seq, cpt_ratio=float(body.get("cpt_ratio", 0.5)), **common)
            elif "preference" in body:
                result = preference(inputs(body["preference"], pairs=True), str(tokenizer), prefix, seq_length=seq,
                                    **common)
            else:
                result = pretrain(inputs(body["pretrain"]), str(tokenizer), prefix, quiet=True)
            packed[name] = {k: result.stats.get(k) for k in ("docs_written", "tokens")}
            stage.log(f"{name}: {next(k for k in PACKERS if k in body)} -> {prefix}_* {packed[name]}")
        (out / "summary.json").write_text(json.dumps({"sets": sets, "outputs": packed,
                                                      "tokenizer": str(tokenizer)}, indent=2) + "\n")

    @staticmethod
    def _tokenizer(stage: Any, out: Path, sets: dict) -> Path:
        tok = stage.settings["tokenizer"]
        if "path" in tok:
            path = Path(tok["path"])
            if not path.is_dir():
                raise stage.fail(f"tokenizer.path: {path} is not a tokenizer directory")
            return path
        from data_prep.tokenizer import iter_training_texts, train_tokenizer

        spec = tok["train"]
        texts: list[str] = []
        for item in spec["inputs"]:
            if item in sets:
                for line in (out / "sets" / f"{item}.jsonl").read_text(encoding="utf-8").splitlines():
                    rec = json.loads(line)
                    texts.append(f"{rec['prompt']} {rec['response']}")
            else:
                if not Path(item).exists():
                    raise stage.fail(f"tokenizer.train.inputs: {item} does not exist")
                texts.extend(iter_training_texts(item, max_chars=spec.get("max_chars")))
        path = train_tokenizer(texts, int(spec["vocab_size"]), out / "tokenizer")
        stage.log(f"tokenizer: vocab {spec['vocab_size']} trained on {len(texts)} texts -> {path}")
        return path
