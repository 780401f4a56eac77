"""The page: inputs on the left, PruneSID's views and the two answers on the right.

``build_demo()`` wires components to :mod:`studio.handlers`; it loads no model.
``LAUNCH_KWARGS`` holds what Gradio 6 takes at launch (theme, CSS, upload limit).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import gradio as gr

from . import handlers as H
from . import guard, limits
from .components import GroupImage, RawNumber, SafeImage, SafeVideo
from prunesid_vlm import SHAPES_DEMO_ID
from prunesid_vlm.serving import MANAGER
from .plot_output import ChartPlot
from .references import example_scenes
from . import views as V
from .views import KEPT_CAPTION, budget_label

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
PRESETS = (64, 128, 192)
# Examples are not cached: they fill the inputs and the upload handler draws the views at once
# (answers on Run). Gradio 6.31's lazy example cache fails on outputs that are component updates
# (the group legend's colours, the video gallery's visibility), see the report of issue 5.

HEADER = """# ✂️ PruneSID Studio
Which visual tokens **PruneSID** ([ICLR 2026](https://arxiv.org/abs/2603.09480)) hands the language model — one
per **semantic group**, **near-duplicates** dropped, more for **busier pictures** — and what keeping only *K* does
to the answer."""

ABOUT = """
**Kept tokens.** The model sees your picture on its own grid: LLaVA-1.5 as 24 × 24 patches of 336 × 336 px, other
models their own views and token sizes (the status line says how the model in use sees it). Bright, outlined cells
are the tokens handed to the language model; dimmed cells are dropped. *K* counts the CLS token, as the paper does;
for a tower without one (Qwen, LLaVA-OneVision, InternVL3, Gemma 3) *K* is per 576 tokens, scaled to each view's
tokens (*K′*), as the reference's Qwen code does.

**Semantic groups (PSCA).** PruneSID splits the patches into ⌊K/4⌋ groups with a principal-component analysis of
the patch features: each patch joins the component it loads on most. Colours are groups; hover a legend entry to
see only that group; white dots are kept tokens. Groups are *feature* groups, so one group can be spread over the image.

**NMS.** Inside a group, PruneSID takes the most important patch, drops the patches too similar to it
(cosine similarity above τ = (K/32)·ρ; without a CLS, τ = max(18·K′/N, 1)·ρ′), and repeats. Each line joins a dropped near-duplicate to the pick that
replaced it. Filled discs are picks that were kept, rings are picks the group's budget had no room for.

**Importance.** How much the CLS token attends to each patch in the layer LLaVA uses (brighter = more important);
without a CLS token, each token's loading on its own PSCA component. A few very bright "artifact" patches are
common in CLIP; the colour scale is clipped at the 99th percentile.

**Per-group budget.** For each group: its size, how many distinct patches survive NMS, and how many tokens it keeps.
Groups with more distinct content get more of the budget.

**Dynamic ratio.** φ = 1 − ρ, where ρ is the mean similarity between patches: a plain image has low φ, a busy one
high φ. With the toggle on, an image gets K × φ / φ_ref tokens (φ_ref = the mean φ of a small calibration set for this
model); video frames share the total in proportion to φ.

**Answers.** Both runs decode greedily from the same vision features. *Prefill* is the first language-model pass over
the prompt, the part pruning shortens; *total* adds the vision tower, the token selection and decoding.
*Fidelity* is KL(p_full ‖ p_pruned) of the first answer token, in nats: 0 means pruning did not change what the model
was about to say.

**Video.** Up to 6 frames are sampled evenly (6 × 576 tokens still fit LLaVA-1.5's 4096-token context for the full
answer) and asked about together as a multi-image prompt.

**Honest numbers.** Timings are measured on this machine; on a CPU they say little about a GPU. The paper's published
accuracy figures (e.g. 95.9% of full accuracy at 64 tokens on LLaVA-1.5-7B) are the paper's, not measured here.
Scripted use: `gradio_client` → `Client(url).predict(handle_file("img.png"), "question", 64, api_name="/analyze")`.
"""

CSS = """
#header h1 { font-size: 1.6rem; margin: 0 0 0.2rem 0; }
#header p { margin: 0; }
#examples .gallery { gap: 6px; }
#examples .gallery-item .container, #examples .gallery-item img { width: 60px !important; height: 60px !important;
  object-fit: cover; }
#diff { min-height: 0; }
#banner p { margin: 0; }
#banner:has(p) { background: #fff4d6; border: 1px solid #e8b34a; border-radius: 8px; padding: 8px 12px; }
#status p, #stale p { margin: 0; font-size: 0.92em; }
#budget-label p { margin: -4px 0 0 0; font-size: 0.92em; }
.answer textarea { font-size: 1.02em !important; }
#summary p { margin: 0; }
"""

LAUNCH_KWARGS = dict(theme=gr.themes.Default(primary_hue="indigo"), css=CSS, max_file_size=limits.MAX_UPLOAD_BYTES,
                     footer_links=["api", "gradio", "settings"], state_session_capacity=limits.SESSION_CAPACITY,
                     app_kwargs=guard.app_kwargs())
"""Keyword arguments for ``demo.launch`` (Gradio 6 takes theme and CSS there; ``app_kwargs`` adds
the request guard of :mod:`studio.guard`: body caps, upload disk use, result streams)."""
QUEUE_KWARGS = dict(default_concurrency_limit=1, max_size=limits.QUEUE_SIZE, api_open=not limits.is_public())
"""``demo.queue``: at most ``limits.QUEUE_SIZE`` waiting jobs (and ``limits.QUEUE_PER_SESSION`` per
session, ``limits.QUEUE_PER_CLIENT`` per client address, see :func:`studio.limits.limit_queue`);
events without a group below run one at a time. On a public deployment the REST routes that skip
the queue (``/gradio_api/run/...``) are closed."""
SHOW_RESULTS_ON_PHONES = """() => { if (window.innerWidth < 760) {
  document.querySelector('#summary')?.scrollIntoView({behavior: 'smooth', block: 'start'}); } }"""
"""On a narrow screen the views sit below every input: bring them into view once a picture is analysed."""
REDRAW_CONCURRENCY = 4
"""Redraws (slider, presets, dynamic toggle, view tabs, frame picker) of different visitors run
side by side: they read only the visitor's own session state (no model, no lock)."""
MODEL_EVENTS = dict(concurrency_id="model", concurrency_limit=1)
"""Events that use the model (uploads, Run, model switch, the Compare tab, the API) form one queue.
The pipeline serialises model work with its own lock either way; one queue keeps visitors in
order and shows each their place in it."""
REDRAW_EVENTS = dict(concurrency_id="redraw", concurrency_limit=REDRAW_CONCURRENCY)


EXAMPLES_PER_PAGE = 6
"""One row of thumbnails in the inputs column: a second row would push Run below the first screen."""


def _examples() -> list[list[str]]:
    """``[path, question]`` per example: the photos, and the shapes-world scenes (one question of each
    kind, with the reference answer in ``assets/shapes/examples.json``). A model trained on the shapes
    world starts on its scenes, whose answers it can get right; any other on the photos."""
    questions = {
        "cat.jpg": "What animal is this and what is it doing?",
        "astronaut.jpg": "What is the person wearing?",
        "coffee.jpg": "What drink is shown?",
        "rocket.jpg": "What is happening in this picture?",
        "hubble_deep_field.jpg": "How many galaxies can you see, roughly?",
    }
    photos = [[str(ASSETS / name), q] for name, q in questions.items() if (ASSETS / name).exists()]
    scenes = [[str(path), question] for path, question, _ in example_scenes()]
    return scenes + photos if MANAGER.state.requested == SHAPES_DEMO_ID else photos + scenes


def build_demo() -> gr.Blocks:
    """The whole page (no model is loaded here)."""
    with gr.Blocks(title="PruneSID Studio", analytics_enabled=False,
                   delete_cache=(limits.CACHE_CHECK_S, limits.CACHE_MAX_AGE_S)) as demo:
        gr.Markdown(HEADER, elem_id="header")
        banner = gr.Markdown(H.banner_text(), elem_id="banner")
        with gr.Tabs():
            with gr.Tab("Explore PruneSID", id="explore"):
                inputs, model = _explore_tab(demo, banner)
            if importlib.util.find_spec("studio.compare_tab") is not None:
                with gr.Tab("Compare methods", id="compare") as compare:
                    _compare_tab(*inputs)(compare)
        with gr.Accordion("About / how to read these views", open=False):
            gr.Markdown(ABOUT)
        _api(demo)
        demo.load(H.on_load, None, [banner, model], api_visibility="private", queue=False)

        def forget_session(request: gr.Request) -> None:
            """The tab was closed: free this visitor's analysis now. Gradio would keep a closed
            session's state an hour in case the tab is reopened; here the picture is simply
            uploaded again."""
            demo.state_holder.delete_state(request.session_hash)
            limits.return_freed_memory()

        demo.unload(forget_session)
    return demo


def _explore_tab(demo: gr.Blocks, banner: gr.Markdown):
    kind = gr.State("image")
    state = gr.State(None, time_to_live=limits.SESSION_TTL_S)  # freed sooner when the tab closes
    active = gr.State("kept")  # the visible view tab (the slider redraws only that one)
    examples = _examples()
    question = gr.Textbox(examples[0][1] if examples else H.DEFAULT_QUESTION, label="Question", lines=2, max_lines=6,
                          max_length=H.MAX_QUESTION_CHARS, elem_id="question", render=False,
                          info=f"Asked with all tokens and with PruneSID's (at most {H.MAX_QUESTION_CHARS:,} "
                               "characters).")
    with gr.Row(equal_height=False):
        # ---- inputs: the picture, its examples, the question, K and Run, where the eye starts --------
        with gr.Column(scale=4, min_width=330):
            with gr.Tabs():
                with gr.Tab("Image", id="image") as image_tab:
                    image = SafeImage(examples[0][0] if examples else None, type="filepath", label="Image",
                                      sources=["upload", "clipboard"], height=150, elem_id="image")
                    if examples:
                        pick = gr.Examples([[path] for path, _ in examples], inputs=[image], label="Or pick one",
                                           examples_per_page=EXAMPLES_PER_PAGE, elem_id="examples")
                        pick.dataset.select(H.example_question([q for _, q in examples]), None, question,
                                            queue=False, api_visibility="private")
                with gr.Tab("Video", id="video") as video_tab:
                    video = SafeVideo(label="Video (up to 6 frames are sampled)", sources=["upload"],
                                      include_audio=True, height=220, elem_id="video")
                    if (ASSETS / "pan_zoom.mp4").exists():
                        gr.Examples([[str(ASSETS / "pan_zoom.mp4"), "What does the camera do?"]],
                                    inputs=[video, question], label="Or pick one")
            question.render()
            budget = gr.Slider(2, 577, value=H.DEFAULT_BUDGET, step=1, label="Visual tokens kept (K)",
                               elem_id="budget")
            budget_md = gr.Markdown(budget_label(H.DEFAULT_BUDGET), elem_id="budget-label")
            with gr.Row():
                presets = [gr.Button(str(k), size="sm", min_width=48, elem_id=f"preset-{k}") for k in PRESETS]
                preset_all = gr.Button("all 577", size="sm", min_width=64, elem_id="preset-all")
            dynamic = gr.Checkbox(False, label="Dynamic ratio: more tokens for busier pictures", elem_id="dynamic")
            run = gr.Button("Run: compare the answers", variant="primary", elem_id="run")
            status = gr.Markdown(elem_id="status")
            model = gr.Dropdown(MANAGER.policy.choices(MANAGER.state.requested), value=MANAGER.state.requested,
                                allow_custom_value=MANAGER.policy.allow_custom,
                                interactive=not MANAGER.policy.public,  # a public Space's owner chooses it
                                label=MANAGER.policy.picker_label, info=MANAGER.policy.picker_info, elem_id="model")
            with gr.Accordion("More settings", open=False):
                shared = gr.Checkbox(False, label="Share K × views over all views (LLaVA-NeXT crops, video frames; "
                                                  "the paper's NeXT totals: K = 128 / 64 / 32 → 640 / 320 / 160)",
                                     elem_id="shared")
                max_new = gr.Slider(8, 256, value=64, step=8, label="Max answer tokens", elem_id="max-new")
                original_positions = gr.Checkbox(
                    False, label="Kept tokens keep their places in the prompt (original positions; LLaVA's pruned "
                                 "prompt, as published, packs them together)", elem_id="original-positions")
        # ---- views and answers ----------------------------------------------------------------------
        with gr.Column(scale=7, min_width=480):
            summary = gr.Markdown("*Upload an image or pick an example to see what PruneSID keeps.*",
                                  elem_id="summary")
            with gr.Tabs():
                with gr.Tab("Kept tokens", id="tab-kept") as tab_kept:
                    kept = gr.Image(format="png", show_label=False, elem_id="kept", height=520, interactive=False)
                    patch_info = gr.Markdown(elem_id="patch-info")
                    with gr.Accordion("Before / after: drag the handle", open=False):
                        kept_slider = gr.ImageSlider(label="original ↔ kept tokens", type="numpy", format="png",
                                                     max_height=520, elem_id="kept-slider", show_label=False)
                    gr.Markdown(KEPT_CAPTION)
                with gr.Tab("On the original", id="tab-original") as tab_original:
                    original = gr.Image(format="png", show_label=False, elem_id="original", height=600,
                                        interactive=False)
                    gr.Markdown(V.ORIGINAL_CAPTION)
                with gr.Tab("Semantic groups", id="tab-groups") as tab_groups:
                    groups = GroupImage(format="png", show_legend=True, height=640, elem_id="groups",
                                        show_label=False)
                    groups_note = gr.Markdown()
                    gr.Markdown(V.GROUPS_CAPTION)
                with gr.Tab("NMS", id="tab-nms") as tab_nms:
                    nms_note = gr.Markdown(elem_id="nms-note")
                    nms_group = gr.Dropdown([], label="Group shown in full (the others faint)", elem_id="nms-group",
                                            interactive=True)
                    nms = gr.Image(format="png", show_label=False, elem_id="nms", height=600, interactive=False)
                    gr.Markdown(V.NMS_CAPTION)
                with gr.Tab("Importance", id="tab-importance") as tab_importance:
                    importance = gr.Image(format="png", show_label=False, elem_id="importance", height=600,
                                          interactive=False)
                    gr.Markdown(V.IMPORTANCE_CAPTION)
                with gr.Tab("Per-group budget", id="tab-chart") as tab_group_chart:
                    group_chart = ChartPlot(format="png", show_label=False, elem_id="group-chart")
                    gr.Markdown(V.GROUP_CHART_CAPTION)
                with gr.Tab("Dynamic ratio", id="tab-dynamic") as tab_dynamic:
                    dynamic_text = gr.Markdown(elem_id="dynamic-text")
                    dynamic_chart = ChartPlot(format="png", show_label=False, elem_id="dynamic-chart")
                    frame_chart = ChartPlot(format="png", show_label=False, visible=False, elem_id="frame-chart")
                    gr.Markdown(V.DYNAMIC_CAPTION)
            frame = gr.Slider(1, 6, value=1, step=1, label="Frame", visible=False, elem_id="frame")
            gallery = gr.Gallery(label="Kept tokens per frame", columns=3, height="auto", format="png",
                                 visible=False, elem_id="gallery", object_fit="contain")
            gr.Markdown("### Answers: all tokens vs PruneSID")
            stale = gr.Markdown(H.stale_note(None), elem_id="stale")
            with gr.Row(equal_height=True):
                with gr.Column():
                    full_head = gr.Markdown("#### Full · 576 visual tokens", elem_id="full-head")
                    full_answer = gr.Textbox(show_label=False, lines=3, interactive=False, elem_id="full-answer",
                                             elem_classes="answer", placeholder="(press Run)")
                    full_stats = gr.Markdown(elem_id="full-stats")
                with gr.Column():
                    pruned_head = gr.Markdown(f"#### PruneSID · {H.DEFAULT_BUDGET} visual tokens",
                                              elem_id="pruned-head")
                    pruned_answer = gr.Textbox(show_label=False, lines=3, interactive=False,
                                               elem_id="pruned-answer", elem_classes="answer",
                                               placeholder="(press Run)")
                    pruned_stats = gr.Markdown(elem_id="pruned-stats")
            diff = gr.HighlightedText(label="Where the answers differ", combine_adjacent=True, show_legend=True,
                                      color_map=H.DIFF_COLORS, elem_id="diff", interactive=False, visible=False)
            fidelity = gr.Markdown(elem_id="fidelity")

    comp = dict(state=state, status=status, kept=kept, kept_slider=kept_slider, original=original, groups=groups, groups_note=groups_note, nms=nms,
                importance=importance, group_chart=group_chart, dynamic_chart=dynamic_chart,
                dynamic_text=dynamic_text, summary=summary, gallery=gallery, frame_chart=frame_chart, frame=frame,
                stale=stale, full_head=full_head, full_answer=full_answer, full_stats=full_stats,
                pruned_head=pruned_head, pruned_answer=pruned_answer, pruned_stats=pruned_stats, fidelity=fidelity,
                budget_label=budget_md, nms_group=nms_group, nms_note=nms_note, budget=budget, preset_all=preset_all,
                patch_info=patch_info, diff=diff)
    view_out = [comp[k] for k in H.VIEW_KEYS]
    answer_out = [comp[k] for k in H.ANSWER_KEYS]
    private = dict(api_visibility="private")

    image_tab.select(lambda: "image", None, kind, queue=False, **private)
    video_tab.select(lambda: "video", None, kind, queue=False, **private)
    for source, name in ((image, "image"), (video, "video")):
        source.change(H.on_media(name), [source, budget, dynamic, state, shared], [kind] + view_out + [video],
                      show_progress="minimal", **MODEL_EVENTS, **private
                      ).then(H.on_load, None, [banner, model], **private
                             ).then(None, js=SHOW_RESULTS_ON_PHONES, **private)
    # A new visitor lands on an analysed example: the page shows what it is for at once.
    demo.load(H.on_first_visit, [image, budget, dynamic, state], view_out, show_progress="minimal",
              **MODEL_EVENTS, **private)

    run.click(H.on_prepare, [kind, image, video, budget, dynamic, frame, state, shared], view_out,
              show_progress="minimal", **MODEL_EVENTS, **private
              ).then(H.on_answer, [state, question, budget, dynamic, max_new, original_positions], answer_out,
                     **MODEL_EVENTS, **private
                     ).then(H.on_load, None, [banner, model], **private
                            ).then(H.positions_choice, None, original_positions, queue=False, **private)

    view_tabs = dict(kept=tab_kept, original=tab_original, groups=tab_groups, nms=tab_nms, importance=tab_importance,
                     group_chart=tab_group_chart, dynamic=tab_dynamic)
    for part, tab in view_tabs.items():
        tab.select(H.on_tab(part), [state, frame], [active] + view_out, show_progress="minimal", **REDRAW_EVENTS,
                   **private)

    reselect_in = [state, budget, dynamic, frame, kind, image, video, active, shared]
    budget.input(budget_label, budget, budget_md, queue=False, show_progress="hidden", **private)
    budget.release(H.on_reselect, reselect_in, view_out, show_progress="minimal", trigger_mode="always_last",
                   **REDRAW_EVENTS, **private)
    for button, k in zip(presets, PRESETS):
        button.click(lambda k=k: (k, budget_label(k)), None, [budget, budget_md], queue=False, **private
                     ).then(H.on_reselect, reselect_in, view_out, show_progress="minimal", **REDRAW_EVENTS,
                            **private)
    preset_all.click(H.all_tokens, state, [budget, budget_md], queue=False, **private
                     ).then(H.on_reselect, reselect_in, view_out, show_progress="minimal", **REDRAW_EVENTS, **private)
    for toggle in (dynamic, shared):
        toggle.input(H.on_reselect, reselect_in, view_out, show_progress="minimal", **REDRAW_EVENTS, **private)
    nms_group.input(H.on_nms_group, [state, nms_group, frame], view_out, show_progress="minimal", **REDRAW_EVENTS,
                    **private)
    frame.release(H.on_view, [state, frame, active], view_out, show_progress="minimal", **REDRAW_EVENTS, **private)
    kept.select(H.on_patch, [state, frame], patch_info, queue=False, show_progress="hidden", **private)
    answer_panel = [comp[k] for k in H.ANSWER_PANEL]
    question.change(H.on_question, [state, question], answer_panel + [stale], queue=False, show_progress="hidden",
                    **private)
    model.input(H.on_model_change, [model, state], [banner, model] + view_out, show_progress="full",
                **MODEL_EVENTS, **private
                ).then(H.positions_choice, None, original_positions, queue=False, **private)
    demo.load(H.positions_choice, None, original_positions, queue=False, **private)
    original_positions.input(H.on_positions, [state, original_positions], [state, stale], queue=False,
                             show_progress="hidden", **private)
    return (image, question, budget, state), model


def _compare_tab(image, question, budget, state):
    """The methods engineer's tab (``studio/compare_tab.py``); returns its ``on_open(tab)``."""
    from studio.compare_tab import build_compare_tab

    return build_compare_tab(image, question, budget, lambda: MANAGER.current(), media_state=state)


def _api(demo: gr.Blocks) -> None:
    """``/analyze`` and ``/kept_tokens`` for ``gradio_client`` (hidden on the page)."""
    from prunesid_eval.methods import list_methods

    with gr.Row(visible=False):
        api_image = SafeImage(type="filepath", label="image: the picture (handle_file(path))")
        api_question = gr.Textbox(label="question: asked with all visual tokens and with the kept ones")
        api_budget = RawNumber(label="budget: K, visual tokens kept per view, CLS included (2 … 1+N)", precision=0,
                               value=H.DEFAULT_BUDGET)
        api_method = gr.Dropdown([s.name for s in list_methods()], value="prunesid",
                                 label="method: the selection method (a registry name)")
        api_dynamic = gr.Checkbox(False, label="dynamic: PruneSID's information-aware dynamic ratio")
        api_max_new = RawNumber(label=f"max_new_tokens: the longest answer, in tokens (1 … {H.MAX_API_NEW_TOKENS})",
                                precision=0, value=64)
        api_model = gr.Textbox("", label="model: the model to use; empty = the one in use (a public Space's only)")
        api_positions = gr.Textbox("", label="positions: where kept tokens sit in the pruned prompt: compact "
                                             "(LLaVA's, as published) or original; empty = the model's own way")
        api_out = gr.JSON(label="result: JSON, see docs/result-schema.md")
        api_picture = gr.Image(format="png", label="kept tokens drawn on the picture", type="filepath")
        api_button = gr.Button("analyze")
        picture_button = gr.Button("kept_tokens")
    api_button.click(H.analyze_endpoint, [api_image, api_question, api_budget, api_method, api_dynamic, api_max_new,
                                          api_model, api_positions], api_out, api_name="analyze",
                     api_description="A method's selection and both answers (all visual tokens vs the kept ones) for "
                                     "one image, as JSON (schema: docs/result-schema.md).",
                     **MODEL_EVENTS)
    picture_button.click(H.kept_tokens_endpoint, [api_image, api_budget, api_method, api_dynamic], api_picture,
                         api_name="kept_tokens",
                         api_description="The kept tokens drawn on the picture where the model sees them (the part "
                                         "cut off before the tower hatched), as a PNG.",
                         **MODEL_EVENTS)
