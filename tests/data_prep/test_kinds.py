"""The data-kind seam: a kind defined outside data_prep/packed_writer.py packs and reads back like the built-in ones."""
from __future__ import annotations

import json

import numpy as np

from dp_helpers import SAMPLES


def test_registry_names_the_built_in_kinds():
    from data_prep.kinds import KINDS

    assert {name: k.name for name, k in KINDS.items()} == {"sft": "sft", "preference": "preference", "mix": "mix"}


def test_a_new_kind_is_one_class(sample_tok, tmp_path):
    """CPT text alone, packed (no writer change): every document is ids(text) + EOD, all targets but the first."""
    from data_prep.kinds import DataKind, PackOptions, Part
    from data_prep.processors import CptDocuments
    from data_prep.packed_writer import write_packed
    from data_prep.tokenizer import load_tokenizer
    from megafin.data.packed_dataset import PackedSequences

    class CptOnly(DataKind):
        name = "cpt_only"

        def parts(self, inputs, opts, template):
            (paths,) = inputs
            return [Part(CptDocuments(opts.tokenizer, opts.seq_length, opts.max_doc_bytes, encoder="hf"), paths,
                         "CPT documents")]

    src = SAMPLES / "finance_corpus.jsonl"
    r = write_packed(CptOnly(), [[str(src)]], PackOptions(sample_tok, str(tmp_path / "c"), seq_length=4096, quiet=True))
    texts = [json.loads(line)["text"] for line in open(src)]
    ds = PackedSequences(str(tmp_path / "c"))
    assert ds.meta["kind"] == "cpt_only" and r.stats["docs_written"] == len(texts)
    tok = load_tokenizer(sample_tok)
    eod = tok.convert_tokens_to_ids("<|end_of_text|>")
    want = sorted(tok(t, add_special_tokens=False)["input_ids"] + [eod] for t in texts)
    got = []
    for i in range(len(ds)):
        for t, m in ds.documents(i):
            assert m[0] == 0 and m[1:].all()
            got.append(t.tolist())
    assert sorted(got) == want and all(isinstance(x, np.ndarray) for x in ds[0])
