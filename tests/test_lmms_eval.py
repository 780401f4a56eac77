"""``evaluate.py`` with lmms-eval (issue 16): the offline smoke task on the demo model, in one
process and in two (``accelerate launch``, CPU/gloo): every sample evaluated exactly once, by one
rank, and both runs give the same metrics."""
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
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
              "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
              "evaluate.py"]
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
