"""Every visitor's analyses share one byte budget (studio/memory.py): the least recently used
sessions' state is freed first, and a visitor whose analysis went gets it analysed again."""
from __future__ import annotations

import numpy as np
import gradio as gr

from studio.memory import BudgetedStateHolder, budget_sessions


def _holder(budget: int):
    from gradio.state_holder import StateHolder

    with gr.Blocks() as demo:
        state = gr.State(None)
    holder = StateHolder()
    holder.set_blocks(demo)
    return budget_sessions(holder, budget), state._id


def test_the_least_recently_used_sessions_go_first_and_the_total_stays_in_budget():
    mb = 2**20
    holder, key = _holder(10 * mb)
    for i in range(6):  # six visitors with 3 MB each: 18 MB asked of a 10 MB budget
        holder[f"s{i}"][key] = np.zeros(3 * mb, np.uint8)
        assert holder.total_bytes <= 10 * mb
    kept = [s for s in holder.session_data if holder.session_data[s].state_data.get(key) is not None]
    assert kept == ["s3", "s4", "s5"] and holder.evictions == 3
    holder["s3"]  # s3 comes back: now s4 is the least recently used
    holder["s6"][key] = np.zeros(3 * mb, np.uint8)
    kept = [s for s in holder.session_data if holder.session_data[s].state_data.get(key) is not None]
    assert sorted(kept) == ["s3", "s5", "s6"]


def test_replacing_a_value_counts_it_once_and_a_large_visitor_is_not_freed_by_itself():
    mb = 2**20
    holder, key = _holder(4 * mb)
    for _ in range(5):
        holder["one"][key] = np.zeros(3 * mb, np.uint8)
    assert holder.total_bytes == 3 * mb and holder.evictions == 0
    holder["big"][key] = np.zeros(6 * mb, np.uint8)  # over the budget alone: the others make room
    assert holder.session_data["one"].state_data[key] is None
    assert holder.session_data["big"].state_data[key] is not None


def test_an_analysis_is_counted_with_its_pictures_features_and_pixels(llava_pipeline):
    from PIL import Image

    from studio import handlers as H
    from prunesid_vlm.pipeline import nbytes

    image = Image.new("RGB", (1000, 800), (10, 20, 30))
    analysis = H.encode(llava_pipeline, "image", "x.png", [image], [], None)
    counted = nbytes(analysis)
    floor = 1000 * 800 * 3 + analysis.feats.hidden_states.nbytes + sum(p.nbytes for p in analysis.view_pixels)
    assert floor <= counted < floor + 2**20


def test_the_running_app_budgets_its_sessions(app_url):
    import app

    assert isinstance(app.demo.state_holder, BudgetedStateHolder)
