"""The index of megatron-core internals megafin depends on (megafin/runtime/mcore_internals.py) holds against the
installed megatron-core, and stays in step with the code that uses them."""
from __future__ import annotations

import pytest

from megafin.runtime.mcore_internals import INTERNALS, Internal, problem
from tests.helpers import REPO


@pytest.mark.parametrize("internal", INTERNALS, ids=[i.target.split(":")[1] for i in INTERNALS])
def test_each_internal_is_still_there(internal):
    """Fails on a megatron-core upgrade that moves, renames or re-signs one of them: the message names the megafin
    file to revisit."""
    from megafin.runtime import cpu_compat

    cpu_compat.apply()  # the CPU shim's own patches must not hide a missing name: it patches only what exists
    assert problem(internal) is None


@pytest.mark.parametrize("internal", INTERNALS, ids=[i.target.split(":")[1] for i in INTERNALS])
def test_each_internal_is_used_where_the_index_says(internal):
    """The index names the file that uses each internal, and that file names it: an entry whose use was removed or
    moved is updated with it."""
    path = REPO / internal.used_by
    assert path.is_file(), f"{internal.target}: used_by {internal.used_by} does not exist"
    assert internal.target.rsplit(".", 1)[-1].split(":")[-1] in path.read_text(), \
        f"{internal.used_by} no longer mentions {internal.target}"


def test_a_moved_internal_is_reported():
    gone = problem(Internal("megatron.core.models.gpt.gpt_model:GPTModel.no_such_method", "megafin/x.py", "test"))
    assert gone is not None and "megafin/x.py" in gone
    resigned = problem(Internal("megatron.core.models.common.embeddings.rotary_pos_embedding:"
                                "RotaryEmbedding._apply_scaling", "megafin/x.py", "test", ("no_such_param",)))
    assert resigned is not None and "no longer takes no_such_param" in resigned
    assert problem(Internal("megatron.core.no_such_module:x", "megafin/x.py", "test")) is not None
