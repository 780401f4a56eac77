"""The Compare tab's "Inside the LLM" view: PruneSID before the language model, FastV inside it, and
both together (PruneSID + FastV, PruneSID + PyramidDrop), on the visitor's picture and question.

Core step :func:`combination_view` (raises with a message for a person), handler
:func:`on_combination` (never raises), and :func:`build_inllm_tab` (components and events, called
by :func:`studio.compare_tab.build_compare_tab` inside its sub-tabs).
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from prunesid_vlm.combination import DEFAULT_BUDGETS, STAGE_KEEP, combination_study, kinds_for, schedules_for
from prunesid_vlm.pipeline import Cost, check_question
from viz.combination import plot_combination

from .study_inputs import ANY_PATCHES, failure_text, parse_budgets, reporter, study_media

TABLE_HEADERS = ["variant", "image tokens per layer", "total compression", "prefill FLOPs vs none",
                 "prefill time vs none (spread)", "first-token KL (nats)", "first token"]
"""Whole words only: on a phone the table scrolls sideways (``studio.compare_tab.CSS``) rather than break them."""
TABLE_COLUMN_WIDTHS = ["16%", "16%", "12%", "10%", "22%", "12%", "12%"]
REPEATS = 3
MAX_BUDGETS = 6
"""Budgets per run: each costs (up to) four variants × REPEATS prefills."""

EXPLAINER = f"""How far can pruning go when it happens **before** the language model (PruneSID), **inside** it
(FastV: after decoder layer K = 2 keep the image tokens the last prompt token attends to most; PyramidDrop: the same
ranking, by the next layer's attention, after ¼, ½ and ¾ of the depth), or **both**? Each stage after PruneSID halves
what is left ({STAGE_KEEP:.0%}); FastV alone keeps as many as PruneSID's budget, so both meet there. *Total compression*: the
image tokens summed over all decoder layers without pruning, over the variant's. FLOPs are estimated from each
layer's sequence length. Times: per pass, each variant's prefill over the unpruned one's in the same pass (at least
{REPEATS} passes, more when they take milliseconds, every variant in one rotating order); the median, and in brackets
the middle half of the passes — times whose ranges overlap are not told apart, and rows with the same token
schedule do the same work, so any gap between them is noise."""


def _schedule_text(counts: list[int]) -> str:
    """``576 → 288 (after layer 2)``: the image tokens and where they change."""
    parts = [str(counts[0])]
    for layer in range(1, len(counts)):
        if counts[layer] != counts[layer - 1]:
            parts.append(f"{counts[layer]} (after layer {layer})")
    return " → ".join(parts) + ("" if len(parts) > 1 else " (every layer)")


def depth_note(num_layers: int, without_pyramiddrop: str = "") -> str:
    """Where the stages fall on this model, and what that means on a shallow demo model;
    ``without_pyramiddrop``: why PyramidDrop does not run on it, when it does not."""
    stages = schedules_for(num_layers)
    fastv, pyramid = stages["prunesid+fastv"].after, stages["prunesid+pyramiddrop"].after
    text = f"This language model has **{num_layers} decoder layers**: FastV's stage after layer {fastv[0]}"
    if without_pyramiddrop:
        text += f". PyramidDrop does not run on it: {without_pyramiddrop}"
    else:
        text += f", PyramidDrop's after {', '.join(map(str, pyramid))}."
    if num_layers < 8:
        text += (" On so shallow a model the stages save little"
                 + ("" if without_pyramiddrop else ", and FastV and PyramidDrop collapse to the same single stage")
                 + "; the published settings (K = 2; 8/16/24) are for 32-layer models.")
    return text


def combination_view(image: Any, question: Any, budgets: Any, get_pipeline, *, mark: Any = None,
                     media: Any = None, progress=None, repeats: int = REPEATS) -> dict:
    """The study on the visitor's media: ``{"figure", "table", "markdown", "json"}``."""

    question = check_question(question)
    images, _, label = study_media(image, media)
    pipe = get_pipeline()
    num_layers = pipe.in_llm_layers()  # says why before any work on a model it does not cover
    points = parse_budgets(budgets, ANY_PATCHES)  # checked against the media's N inside the study
    kinds = kinds_for(pipe)
    if len(points) > MAX_BUDGETS:
        raise ValueError(f"At most {MAX_BUDGETS} budgets per run (each costs {len(kinds) * repeats} prefills), "
                         f"got {len(points)}.")
    cost = pipe.encode_cost(images) + Cost(prefills=(1 + len(points) * len(kinds)) * 2 * repeats)
    study = pipe.run(combination_study, images, question, points, kinds=kinds, repeats=repeats,
                     progress=reporter(progress), cost=cost)
    rows = study.rows()
    shown = None
    try:
        shown = int(float(mark)) if mark is not None else None
    except (TypeError, ValueError):
        shown = None
    figure = plot_combination(rows, schedule_budget=shown)
    table = [[r["variant"], _schedule_text(r["image_tokens_per_layer"]), f"{r['compression']:.1f}×",
              f"{r['flops_vs_full']:.2f}", time_text(r), f"{r['first_token_kl']:.4f}",
              "same" if r["first_token_agrees"] else "changed"] for r in rows]
    meaning = f"  \nℹ {pipe.model_id}: {pipe.meaning}." if pipe.meaning else ""
    low, high = rows[0]["prefill_ms_spread"]
    markdown = (f"**Measured on** {label} · question: “{question}” · model `{pipe.model_id}` on {pipe.device} · "
                f"no pruning: {rows[0]['prefill_ms']:.1f} ms prefill ({low:.1f}–{high:.1f} ms over the middle half "
                f"of {study.repeats} passes), {rows[0]['prefill_gflops']:.2f} GFLOPs.  \n"
                f"{timing_note(rows)}  \n"
                f"{depth_note(num_layers, '' if 'pyramiddrop' in pipe.in_llm_styles else pipe.in_llm_limits)}"
                f"{meaning}")
    return {"figure": figure, "table": table, "markdown": markdown,
            "json": {"model_id": pipe.model_id, "question": question, "media": label, "num_layers": num_layers,
                     "repeats": study.repeats, "device": pipe.device, "rows": rows}}


def time_text(row: dict) -> str:
    """The time cell: ``"0.29 (0.25–0.41)"``, marked where it says nothing the spread does not."""
    if not row.get("time_resolved", True):
        return "below the clock's resolution"
    if row["kind"] == "full":
        return "1 (reference)"
    text = f"{row['time_vs_full']:.2f}"
    if row.get("time_vs_full_spread"):
        low, high = row["time_vs_full_spread"]
        text += f" ({low:.2f}–{high:.2f})"
    if row.get("time_within_noise"):
        text += " ≈ none (within noise)"
    if row.get("same_schedule_as"):
        text += f"; same work as {row['same_schedule_as']}"
    return text


def timing_note(rows: list[dict]) -> str:
    """One sentence on what the times can tell apart here."""
    if not all(r.get("time_resolved", True) for r in rows):
        return "Some prefills are shorter than the clock resolves: their times are not shown."
    twins = [r for r in rows if r.get("same_schedule_as")]
    spreads = [high - low for r in rows[1:] for low, high in [r.get("time_vs_full_spread") or (0, 0)]]
    text = (f"Run-to-run spread of the time ratios: up to {max(spreads, default=0):.2f} (middle half of the passes); "
            "differences smaller than that are noise.")
    if twins:
        text += (" Same token schedule, same work: " + "; ".join(f"{r['variant']} = {r['same_schedule_as']}"
                                                                 for r in twins) + ".")
    return text


def on_combination(get_pipeline):
    def handler(image, question, budgets, budget, media=None, progress=gr.Progress()):
        try:
            out = combination_view(image, question, budgets, get_pipeline, mark=budget, media=media,
                                   progress=progress)
        except Exception as err:  # noqa: BLE001 — shown to the visitor, logged if unexpected
            return gr.skip(), gr.skip(), failure_text(err, "the in-LLM study"), gr.skip()
        return out["figure"], out["table"], out["markdown"], out["json"]
    handler.__name__ = "on_combination"
    return handler


def build_inllm_tab(image_input, question_input, budget_input, get_pipeline, media: list):
    """The sub-tab's components (call inside ``with gr.Tab(...):``); returns ``wire(raw)``, which
    connects its button once the Compare tab's raw-JSON component exists."""
    gr.Markdown(EXPLAINER)
    with gr.Row():
        budgets = gr.Textbox(", ".join(map(str, DEFAULT_BUDGETS)), label="PruneSID budgets (per view)", scale=4,
                             elem_id="inllm-budgets")
        run = gr.Button("Run the combinations", scale=1, elem_id="inllm-run")
    text = gr.Markdown(elem_id="inllm-text")
    plot = gr.Plot(show_label=False, elem_id="inllm-plot")
    table = gr.Dataframe(headers=TABLE_HEADERS, datatype=["str"] * len(TABLE_HEADERS), wrap=True, interactive=False,
                         column_widths=TABLE_COLUMN_WIDTHS, max_height=2000, pinned_columns=1, elem_id="inllm-table")

    def wire(raw) -> None:
        run.click(on_combination(get_pipeline), [image_input, question_input, budgets, budget_input] + media,
                  [plot, table, text, raw], api_visibility="private", concurrency_id="model", concurrency_limit=1)
    return wire
