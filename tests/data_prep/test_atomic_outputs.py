"""Multi-file outputs appear as one set: a run killed between renames leaves a set `check_complete` refuses."""
from __future__ import annotations

import os

import numpy as np
import pytest

from dp_helpers import write_jsonl


class Crash(BaseException):
    """Stands for the process dying at that instant (nothing after it runs, no handler can tidy up)."""


def _crash_at(m: pytest.MonkeyPatch, suffix: str) -> None:
    """os.replace dies when it would create a file whose name ends with `suffix` (earlier renames happen)."""
    real = os.replace

    def replace(src, dst, *a, **k):
        if str(dst).endswith(suffix):
            raise Crash(dst)
        return real(src, dst, *a, **k)

    m.setattr(os, "replace", replace)


def _files(tmp_path, glob: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(tmp_path.glob(glob)) if ".tmp" not in p.name}


# Where the commit dies -> whether the old set must still be complete (True) or be refused (False).
PRETRAIN_CRASH_POINTS = {
    "o_text_document.incomplete": True,   # before any output file was replaced
    "o_text_document.bin": False,         # the marker is written, nothing replaced yet: refused all the same
    "o_text_document.idx": False,         # new .bin beside the old .idx
    "o_stats.json": False,                # both new, the manifest still the old run's
}


@pytest.mark.parametrize("point", list(PRETRAIN_CRASH_POINTS))
def test_pretrain_killed_between_renames_is_refused_or_intact(sample_tok, tmp_path, monkeypatch, point):
    from data_prep.outputs import check_complete
    from data_prep.pretrain import pretrain

    dataset = str(tmp_path / "o_text_document")
    old_src = write_jsonl(tmp_path / "old.jsonl", [{"text": f"Old filing {i}."} for i in range(3)])
    new_src = write_jsonl(tmp_path / "new.jsonl", [{"text": f"New quarterly report number {i}."} for i in range(7)])
    pretrain(str(old_src), sample_tok, str(tmp_path / "o"), quiet=True)
    assert check_complete(dataset) is None
    old = _files(tmp_path, "o_*")

    with monkeypatch.context() as m:
        _crash_at(m, point)
        with pytest.raises(Crash):
            pretrain(str(new_src), sample_tok, str(tmp_path / "o"), quiet=True)
    now = _files(tmp_path, "o_*")
    if PRETRAIN_CRASH_POINTS[point]:
        assert now == old and check_complete(dataset) is None  # the previous output, untouched
    else:
        if point == "o_text_document.idx":  # the failure the marker exists for: a new .bin with an old .idx
            assert now["o_text_document.bin"] != old["o_text_document.bin"]
            assert now["o_text_document.idx"] == old["o_text_document.idx"]
        problem = check_complete(dataset)
        assert problem is not None and problem.startswith(f"{dataset}: incomplete data_prep output ({dataset}.incomplete "
                                                          "exists: the run by pid ")
        assert problem.endswith("rerun data_prep for this output")

    # A rerun that completes clears the marker.
    pretrain(str(new_src), sample_tok, str(tmp_path / "o"), quiet=True)
    assert check_complete(dataset) is None and not os.path.exists(dataset + ".incomplete")


def test_mixed_set_without_marker_fails_the_size_check(sample_tok, tmp_path, monkeypatch):
    """A lost marker (files copied without it) still cannot pass: the manifest's sizes are the old run's."""
    from data_prep.outputs import check_complete
    from data_prep.pretrain import pretrain

    dataset = str(tmp_path / "o_text_document")
    pretrain(str(write_jsonl(tmp_path / "a.jsonl", [{"text": "Old."}])), sample_tok, str(tmp_path / "o"), quiet=True)
    with monkeypatch.context() as m:
        _crash_at(m, ".idx")
        with pytest.raises(Crash):
            pretrain(str(write_jsonl(tmp_path / "b.jsonl", [{"text": "New text, longer."}] * 5)), sample_tok,
                     str(tmp_path / "o"), quiet=True)
    os.remove(dataset + ".incomplete")
    problem = check_complete(dataset)
    assert problem is not None and problem.startswith(f"{dataset}.bin: ")
    assert f"bytes but {tmp_path / 'o_stats.json'} records " in problem


PACKED_CRASH_POINTS = {"o.incomplete": True, "o_loss_mask.bin": False, "o_doc_lens.idx": False, "o_meta.json": False}


@pytest.mark.parametrize("point", list(PACKED_CRASH_POINTS))
def test_packed_killed_between_renames_is_refused_or_intact(sample_tok, tmp_path, monkeypatch, point):
    from data_prep.outputs import check_complete
    from data_prep.packed_writer import sft

    rows = [{"prompt": f"Define EPS {i}.", "response": "Earnings per share."} for i in range(6)]
    sft(str(write_jsonl(tmp_path / "a.jsonl", rows[:2])), sample_tok, str(tmp_path / "o"), seq_length=64, quiet=True)
    old = _files(tmp_path, "o_*")
    with monkeypatch.context() as m:
        _crash_at(m, point)
        with pytest.raises(Crash):
            sft(str(write_jsonl(tmp_path / "b.jsonl", rows)), sample_tok, str(tmp_path / "o"), seq_length=64,
                quiet=True)
    assert not list(tmp_path.glob("o.stage_*"))  # the packer's temporary stores are gone either way
    if PACKED_CRASH_POINTS[point]:
        assert _files(tmp_path, "o_*") == old and check_complete(str(tmp_path / "o")) is None
    else:
        assert "incomplete data_prep output" in (check_complete(str(tmp_path / "o")) or "")


def test_outputs_of_megatron_lm_and_older_data_prep_are_accepted(tmp_path):
    """No manifest, nothing to check against: Megatron-LM's preprocess_data.py output passes as it is."""
    import json

    from data_prep.outputs import check_complete
    from data_prep.writers import import_builder

    b = import_builder()(str(tmp_path / "m_text_document.bin"), dtype=np.uint16)
    b.add_document(np.arange(5, dtype=np.uint16), [5])
    b.finalize(str(tmp_path / "m_text_document.idx"))
    assert check_complete(str(tmp_path / "m_text_document")) is None
    # A stats file of an older data_prep (no file_bytes) beside it changes nothing.
    (tmp_path / "m_stats.json").write_text(json.dumps({"docs_read": 1, "docs_written": 1}))
    assert check_complete(str(tmp_path / "m_text_document")) is None
    # Nor does a packed meta.json of an older data_prep.
    (tmp_path / "p_meta.json").write_text(json.dumps({"format": "megafin-packed", "num_packs": 0}))
    assert check_complete(str(tmp_path / "p")) is None


def test_check_complete_reports_a_missing_file_and_an_unreadable_manifest(sample_tok, tmp_path):
    from data_prep.outputs import check_complete
    from data_prep.packed_writer import sft

    rows = [{"prompt": "Define EPS.", "response": "Earnings per share."}]
    sft(str(write_jsonl(tmp_path / "a.jsonl", rows)), sample_tok, str(tmp_path / "o"), seq_length=64, quiet=True)
    os.remove(tmp_path / "o_doc_lens.idx")
    assert check_complete(str(tmp_path / "o")) == (f"{tmp_path / 'o_doc_lens.idx'}: missing (listed in "
                                                   f"{tmp_path / 'o_meta.json'}); rerun data_prep for this output")
    (tmp_path / "o_meta.json").write_text("{truncated")
    assert check_complete(str(tmp_path / "o")).startswith(f"{tmp_path / 'o_meta.json'}: unreadable data_prep manifest")
