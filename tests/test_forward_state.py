"""The per-forward state (mmcompile/runtime/forward_state.py): its staleness rule, its lifetime in a
ContextVar, and isolation between threads."""

import threading

import torch

from mmcompile import annotate
from mmcompile.patterns import VIDEO, from_hf_inputs
from mmcompile.runtime import ForwardState, begin_forward, current_forward, forward_scope


def test_a_publication_serves_each_layer_once_then_is_stale_until_the_next_publication():
    state = ForwardState()
    assert all(state.serves(layer) for layer in range(3))  # one forward: every layer once
    assert not state.serves(0)  # layer 0 again: a new forward that published nothing
    assert not state.serves(1)  # stays stale for the rest of it
    state.publish(input_ids=torch.ones(1, 4, dtype=torch.long), tokens={1: VIDEO})
    assert state.serves(0) and state.serves(1)  # a new publication: fresh again
    assert state.serves(None) and state.serves(-1)  # calls without a layer index never count


def test_begin_forward_replaces_the_state_and_keeps_the_annotation():
    ids = torch.zeros(1, 8, dtype=torch.int32)
    with annotate.modality(mm_token_type_ids=ids):
        inside = current_forward()
        inside.publish(type_ids=ids)
        fresh = begin_forward()
        assert fresh is current_forward() and fresh is not inside
        assert fresh.annotation is inside.annotation and fresh.published.empty()
    assert current_forward().annotation is None  # the block's state is gone with the block


def test_each_thread_has_its_own_forward_state():
    layout = from_hf_inputs(mm_token_type_ids=torch.full((1, 8), VIDEO, dtype=torch.int32))
    seen = {}

    def worker():
        seen["annotation"] = current_forward().annotation

    with forward_scope(ForwardState(annotation=(layout, "none"))):
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert current_forward().annotation[0] is layout
    assert seen["annotation"] is None  # a new thread starts without this context's state
