"""``evaluate.py`` with lmms-eval (issue 16): the offline smoke task on the demo model, in one
process and in two (``accelerate launch``, CPU/gloo): every sample evaluated exactly once, by one
rank, and both runs give the same metrics. And the model itself (issue 25): what it returns as
lmms-eval's evaluator reads it (losses for multiple choice, token counts), text-only samples, and the
arguments of lmms-eval's own ``llava_hf`` / ``qwen2_5_vl``. lmms-eval's own task configs through
``python -m lmms_eval`` are in ``test_lmms_tasks.py``."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install --no-deps lmms-eval==0.7.3)")
pytest.importorskip("accelerate", reason="accelerate is not installed (requirements-eval.txt)")

ROOT = Path(__file__).resolve().parents[1]
MODEL_ARGS = "pretrained=demo/tiny-llava-1.5,method=prunesid,num_tokens=64"
SMOKE_SAMPLES = 6


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(command: list[str], out: Path, demo_cache: str, model_args: str = MODEL_ARGS
        ) -> tuple[dict, list[dict], dict[str, list[int]]]:
    trace = out / "trace"
    trace.mkdir(parents=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PRUNESID_CACHE=demo_cache, GRADIO_ANALYTICS_ENABLED="False",
               PRUNESID_LMMS_TRACE=str(trace))
    done = subprocess.run(command + ["--model", "prunesid", "--model_args", model_args, "--tasks", "prunesid_smoke",
                                     "--batch_size", "1", "--output_path", str(out), "--log_samples"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    results = json.loads(next(out.rglob("*_results.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob("*_samples_prunesid_smoke.jsonl")).read_text().splitlines()]
    answered = {path.stem: [int(line.split()[1]) for line in path.read_text().splitlines()]
                for path in trace.glob("rank*.txt")}
    return results, samples, answered


def test_the_smoke_task_in_one_process_and_in_two(tmp_path, demo_cache):
    one, one_samples, alone = run([sys.executable, "evaluate.py"], tmp_path / "one", demo_cache)
    assert sorted(alone["rank0"]) == list(range(SMOKE_SAMPLES))
    metrics = one["results"]["prunesid_smoke"]
    assert {"answer_agreement,none", "first_token_kl,none"} <= set(metrics)
    assert 0 <= metrics["answer_agreement,none"] <= 1 and metrics["first_token_kl,none"] >= 0
    assert sorted(s["doc_id"] for s in one_samples) == list(range(SMOKE_SAMPLES))

    # On a CPU-only machine accelerate starts several processes with --multi_gpu (torchrun, gloo backend).
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "evaluate.py"]
    two, two_samples, by_rank = run(launch, tmp_path / "two", demo_cache)
    assert sorted(s["doc_id"] for s in two_samples) == list(range(SMOKE_SAMPLES))  # gathered: each sample once
    assert set(by_rank) == {"rank0", "rank1"} and all(by_rank.values())  # both processes answered
    assert sorted(by_rank["rank0"] + by_rank["rank1"]) == list(range(SMOKE_SAMPLES))  # each sample by one rank
    for key in ("answer_agreement,none", "first_token_kl,none"):
        assert two["results"]["prunesid_smoke"][key] == pytest.approx(metrics[key], abs=1e-9)


def test_the_model_takes_any_registry_method_and_refuses_unknown_arguments(demo_cache):
    sys.path.insert(0, str(ROOT))
    from prunesid_lmms.model import PruneSIDLmms

    model = PruneSIDLmms(pretrained="demo/tiny-llava-1.5", method="visionzip", num_tokens="32", device="cpu")
    assert model.method == "visionzip" and model.num_tokens == 32 and model.world_size == 1
    with pytest.raises(ValueError, match="unknown model arguments"):
        PruneSIDLmms(pretrained="demo/tiny-llava-1.5", num_token=64)
    with pytest.raises(ValueError, match="unknown selection method"):
        PruneSIDLmms(pretrained="demo/tiny-llava-1.5", method="nope")


def test_a_failed_evaluation_is_a_failed_command(tmp_path, demo_cache):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PRUNESID_CACHE=demo_cache)
    done = subprocess.run([sys.executable, "evaluate.py", "--model", "prunesid", "--model_args",
                           "pretrained=demo/tiny-llava-1.5,method=topk,num_tokens=1", "--tasks", "prunesid_smoke",
                           "--output_path", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode != 0 and "num_tokens must be at least 2" in (done.stdout + done.stderr)


def test_pruning_inside_the_language_model_through_lmms_eval(tmp_path, demo_cache):
    sys.path.insert(0, str(ROOT))
    from prunesid_lmms.model import PruneSIDLmms

    model = PruneSIDLmms(pretrained="demo/tiny-llava-1.5", in_llm="PyramidDrop", device="cpu")
    assert model.in_llm.after == (1,) and model.in_llm.style == "pyramiddrop"  # two layers: one stage
    assert model.loglikelihood([]) == []  # multiple-choice scoring runs through the stages too
    with pytest.raises(ValueError, match="in_llm must be"):
        PruneSIDLmms(pretrained="demo/tiny-llava-1.5", in_llm="sparsevlm")
    assert PruneSIDLmms(pretrained="demo/tiny-qwen2-vl", in_llm="fastv", device="cpu").in_llm.style == "fastv"
    with pytest.raises(ValueError, match="M-RoPE"):  # said when the model is made, not on the first sample
        PruneSIDLmms(pretrained="demo/tiny-qwen2-vl", in_llm="pyramiddrop", device="cpu")
    results, samples, _ = run([sys.executable, "evaluate.py"], tmp_path / "staged", demo_cache,
                              MODEL_ARGS + ",in_llm=fastv")
    metrics = results["results"]["prunesid_smoke"]
    assert metrics["first_token_kl,none"] >= 0 and len(samples) == SMOKE_SAMPLES


# ---- the model as lmms-eval's evaluator reads it (issue 25) ------------------------------------------
def requests(kind: str, docs: list[dict], second, task: str = "t") -> list:
    """lmms-eval ``Instance`` objects of ``kind`` over ``docs`` (``second``: generation kwargs, or the
    continuation), with a ``doc_to_visual`` that gives no picture for a doc whose image is None."""
    from lmms_eval.api.instance import Instance

    def doc_to_visual(doc):
        return [] if doc["image"] is None else [doc["image"]]

    return [Instance(kind, (doc["question"], second, doc_to_visual, i, task, "test"), idx=0,
                     metadata={"task": task, "doc_id": i, "repeats": 1}) for i, doc in enumerate(docs)]


@pytest.fixture(scope="module")
def lmms_model(demo_cache):
    sys.path.insert(0, str(ROOT))
    from prunesid_lmms.model import PruneSIDLmms

    return PruneSIDLmms(pretrained="demo/tiny-llava-1.5", method="prunesid", num_tokens=16, device="cpu")


def test_multiple_choice_values_are_losses_that_pass_the_evaluator(lmms_model, llava_pipeline, images):
    """What ``llava_hf`` returns: the mean cross-entropy of the continuation's tokens (lmms-eval takes
    the argmin), and the greedy flag, in a ``GenerationResult`` that lmms-eval's evaluator unwraps into
    the pair (a bare tuple becomes the text "(-1.5, True)" there)."""
    from lmms_eval.api.instance import GenerationResult, unwrap_generation_output

    docs = [{"image": images[0], "question": "What is shown? Answer :"}]
    lmms_model.task_dict = {"t": {"test": docs}}
    answers = [" a cat", " red blocks", " nothing at all"]
    results = [lmms_model.loglikelihood(requests("loglikelihood", docs, a))[0] for a in answers]
    assert all(isinstance(r, GenerationResult) for r in results)
    pairs = [unwrap_generation_output(r)[0] for r in results]
    assert all(isinstance(p, tuple) and isinstance(p[0], float) and isinstance(p[1], bool) for p in pairs)

    # The same pruned prompt scored by the pipeline: the loss is −Σ log p / tokens, never the sum.
    pipe = lmms_model.pipe
    selection = pipe.select(pipe.encode(images[:1]), 16, question=docs[0]["question"])
    for answer, (loss, greedy) in zip(answers, pairs):
        ids = pipe.processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        total, is_greedy = pipe.loglikelihood(images[:1], docs[0]["question"], ids, selection)
        assert len(ids) > 1 and loss == pytest.approx(-total / len(ids), rel=1e-5) and loss > 0
        assert greedy == is_greedy
    counts = results[0].token_counts.to_dict()
    assert counts == {"visual_tokens": 16, "visual_tokens_full": 576}

    # One request per choice, as lmms-eval sends a question: a question's tokens are selected once
    # for all its choices, and the next question gets its own selection.
    docs.append({"image": images[1], "question": "What colour is it? Answer :"})
    per_choice = [r for pair in zip(requests("loglikelihood", docs, " red"), requests("loglikelihood", docs, " blue"))
                  for r in pair]  # doc 0's two choices, then doc 1's
    calls = []
    select = pipe.select

    def counted(*args, **kwargs):
        calls.append(kwargs.get("question"))
        return select(*args, **kwargs)

    try:
        pipe.select = counted
        lmms_model.loglikelihood(per_choice)
        again = lmms_model.loglikelihood(requests("loglikelihood", docs[:1], answers[0]))[0]
    finally:
        del pipe.select
    # doc 0's selection is still the one made above; doc 1's is made once; doc 0's again after it
    assert calls == [docs[1]["question"], docs[0]["question"]]
    assert again.text == pytest.approx(pairs[0])  # doc 0 selected again: the same loss


def test_a_sample_without_a_picture_is_answered_by_the_language_model(lmms_model, images):
    """ScienceQA-FULL's text-only rows: no visual token, no failed run."""
    from prunesid_vlm.text_only import answer_text, loglikelihood_text

    docs = [{"image": None, "question": "Which is a mammal?\nA. frog\nB. whale\nAnswer with the letter."},
            {"image": images[1], "question": "What is shown?"}]
    lmms_model.task_dict = {"t": {"test": docs}}
    alone, pictured = lmms_model.generate_until(requests("generate_until", docs, {"max_new_tokens": 5, "until": []}))
    expected = answer_text(lmms_model.pipe, docs[0]["question"], 5)
    assert alone.text == expected.text
    assert alone.token_counts.to_dict() == {"input_tokens": expected.prompt_tokens,
                                            "output_tokens": len(expected.tokens),
                                            "visual_tokens": 0, "visual_tokens_full": 0}
    assert pictured.token_counts.visual_tokens == 16 and pictured.token_counts.visual_tokens_full == 576
    assert pictured.token_counts.input_tokens < alone.token_counts.input_tokens + 16 + 40

    scored = lmms_model.loglikelihood(requests("loglikelihood", docs[:1], " B"))[0]
    total, greedy, n = loglikelihood_text(lmms_model.pipe, docs[0]["question"], " B")
    assert scored.text == (pytest.approx(-total / n), greedy) and scored.token_counts.visual_tokens == 0
    # acc_mutual_info's unconditional requests carry (context, continuation) only
    from lmms_eval.api.instance import Instance

    bare = Instance("loglikelihood", ("", " B"), idx=0, metadata={"task": "t", "doc_id": 0, "repeats": 1})
    loss, _ = lmms_model.loglikelihood([bare])[0].text
    assert loss == pytest.approx(-loglikelihood_text(lmms_model.pipe, "", " B")[0] / n)


def test_the_text_only_path_is_the_language_models_own(llava_pipeline, dinov2_pipeline):
    """The greedy answer scores as greedy under the same prompt, token by token (one path for both)."""
    from prunesid_vlm.text_only import answer_text, loglikelihood_text, text_prompt_ids

    for pipe in (llava_pipeline, dinov2_pipeline):
        answer = answer_text(pipe, "Name a colour.", max_new_tokens=4)
        assert len(answer.tokens) >= 1 and answer.prompt_tokens == text_prompt_ids(pipe, "Name a colour.").shape[1]
        total, greedy, n = loglikelihood_text(pipe, "Name a colour.", list(answer.tokens))
        assert greedy and n == len(answer.tokens) and total <= 0
        prompt = pipe.processor.tokenizer.decode(text_prompt_ids(pipe, "Name a colour.")[0])
        assert "Name a colour." in prompt and "<image>" not in prompt


def test_the_arguments_of_lmms_evals_own_models(demo_cache, tmp_path, monkeypatch, caplog):
    """llava_hf's and qwen2_5_vl's arguments keep their meaning, or are refused saying why."""
    sys.path.insert(0, str(ROOT))
    from prunesid_lmms.model import PruneSIDLmms

    tiny = "demo/tiny-llava-1.5"
    model = PruneSIDLmms(pretrained=tiny, device_map="auto", attn_implementation="eager", revision="main",
                         max_frames_num=4, dtype="auto", trust_remote_code=False, use_cache=True, batch_size="4",
                         chat_template="None")
    assert model.max_frames == 4 and model.pipe.loaded.dtype == torch_float32() and model.batch_size == 1
    assert model.pipe.model.config._attn_implementation == "eager" and str(model.device) == "cpu"
    assert PruneSIDLmms(pretrained=tiny, device_map="cpu", max_num_frames=3).max_frames == 3
    refusals = {
        "device_map": ({"device_map": "balanced"}, "whole model on one device"),
        "two devices": ({"device": "cpu", "device_map": "cuda:1"}, "name different devices"),
        "pixels": ({"min_pixels": 3136}, "Qwen2-VL's dynamic resolution"),
        "template": ({"chat_template": "{{ messages }}"}, "own chat format"),
        "remote code": ({"trust_remote_code": True}, "no checkpoint code is run"),
        "fps": ({"fps": 2}, "set max_frames_num"),
        "frames": ({"max_frames_num": 4, "max_num_frames": 8}, "disagree"),
        "kernel": ({"attn_implementation": "fast"}, "attn_implementation must be one of"),
        "revision of a demo": ({"revision": "v1"}, "applies to a checkpoint on the hub"),
        "batch": ({"batch_size": 0}, "at least 1"),
        "too many frames": ({"max_frames_num": 64}, "max_frames_num must be 1 to 32"),
    }
    for name, (kwargs, reason) in refusals.items():
        with pytest.raises(ValueError, match=reason):
            PruneSIDLmms(pretrained=tiny, **kwargs)
    qwen = PruneSIDLmms(pretrained="demo/tiny-qwen2-vl", min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    assert qwen.pipe.processor.image_processor.size == {"shortest_edge": 3136, "longest_edge": 50176}


def test_a_hub_revision_loads_that_revision(demo_cache, tmp_path, monkeypatch, llava_pipeline):
    """``revision=<branch, tag or commit>`` of a hub id: that snapshot, here from a hub cache laid out
    offline (refs/<name> → snapshots/<commit>)."""
    import shutil

    import huggingface_hub.constants as hub

    from prunesid_vlm.load_options import checkpoint_at_revision
    from prunesid_vlm.loading import ModelLoadError

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-llava"
    shutil.copytree(llava_pipeline.loaded.path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "v1").write_text(commit)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert checkpoint_at_revision("someone/tiny-llava", "main") == "someone/tiny-llava"
    folder = checkpoint_at_revision("someone/tiny-llava", "v1")
    assert folder == str(repo / "snapshots" / commit)
    with pytest.raises(ModelLoadError, match="at revision 'v2'"):
        checkpoint_at_revision("someone/tiny-llava", "v2")
    from prunesid_lmms.model import PruneSIDLmms

    model = PruneSIDLmms(pretrained="someone/tiny-llava", revision="v1", num_tokens=16)
    assert model.pipe.loaded.path == folder


def torch_float32():
    import torch

    return torch.float32
