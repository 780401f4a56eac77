"""lmms-eval's own task configs, run as lmms-eval's users run them (issue 25): ``python -m lmms_eval
--model prunesid`` from a folder outside the checkout, the model found through the installed
``lmms_eval.models`` entry point, in one process and in two.

The tasks are the installed lmms-eval's ``mme``, ``pope``, ``scienceqa_full`` (ScienceQA-FULL, whose
rows without a picture are answered by the language model alone, and ScienceQA-IMG) and
``seedbench_ppl`` (multiple choice). Each is a small yaml that ``include``s lmms-eval's own file
unchanged (its prompts, ``utils.py`` functions, generation settings and metrics) and names a tiny
local copy of the dataset, written here with ``datasets.DatasetDict.save_to_disk`` and read with
``dataset_kwargs: {load_from_disk: true}``; the tasks are renamed ``prunesid_<name>`` because
lmms-eval keeps its built-in task when an ``--include_path`` task has the same name.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

lmms_eval = pytest.importorskip("lmms_eval",
                                reason="lmms-eval is not installed (pip install --no-deps lmms-eval==0.7.3)")
pytest.importorskip("accelerate", reason="accelerate is not installed (requirements-eval.txt)")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (requirements-eval.txt)")

ROOT = Path(__file__).resolve().parents[1]
LMMS_TASKS = Path(lmms_eval.__file__).resolve().parent / "tasks"
K = 16
MODEL_ARGS = f"pretrained=demo/tiny-llava-1.5,method=prunesid,num_tokens={K}"
TASKS = {  # task of this test: the lmms-eval config it includes
    "prunesid_mme": "mme/mme.yaml",
    "prunesid_pope": "pope/pope.yaml",
    "prunesid_scienceqa": "scienceqa/scienceqa.yaml",
    "prunesid_scienceqa_img": "scienceqa/scienceqa_img.yaml",
    "prunesid_seedbench_ppl": "seedbench/seedbench_ppl.yaml",
}
RUN = "prunesid_mme,prunesid_pope,prunesid_scienceqa_full,prunesid_seedbench_ppl"
CHOICES = ("choice_a", "choice_b", "choice_c", "choice_d")
SEED = {  # seedbench_ppl's questions (pictures 0 and 1), four choices each
    "question_id": ["101", "102"], "data_type": ["image", "image"],
    "question": ["What is in the picture?", "How many pictures are there?"],
    "choice_a": ["a cat", "one"], "choice_b": ["coloured blocks", "two"], "choice_c": ["a city", "three"],
    "choice_d": ["the sea", "four"], "answer": ["A", "A"]}


def installed() -> bool:
    return any(ep.name == "prunesid" for ep in metadata.entry_points(group="lmms_eval.models"))


pytestmark = pytest.mark.skipif(not installed(), reason="the project is not installed, so lmms-eval cannot find its "
                                                        "model (pip install -e . — the README's test command does)")


def picture(seed: int):
    from tests.conftest import make_image

    return make_image(seed, 120, 160)


def datasets_for_tasks(folder: Path) -> dict[str, Path]:
    """Tiny copies of each task's test split, with the columns lmms-eval's ``utils.py`` reads."""
    from datasets import Dataset, DatasetDict, Features, Image, List, Value

    def save(name: str, rows: dict, features: dict) -> Path:
        path = folder / name
        DatasetDict({"test": Dataset.from_dict(rows, features=Features(features))}).save_to_disk(str(path))
        return path

    cat, blocks = picture(0), picture(1)
    mme = save("mme", {  # MME scores each picture's yes and no question as a pair (one question_id)
        "question_id": ["cat.jpg", "cat.jpg"], "category": ["existence", "existence"],
        "question": ["Is there a cat in this image? Please answer yes or no.",
                     "Is there a dog in this image? Please answer yes or no."],
        "answer": ["Yes", "No"], "image": [cat, cat]},
        {"question_id": Value("string"), "category": Value("string"), "question": Value("string"),
         "answer": Value("string"), "image": Image()})
    pope = save("pope", {
        "question_id": ["1", "2"], "category": ["adversarial", "adversarial"],
        "question": ["Is there a red block in the image?", "Is there a person in the image?"],
        "answer": ["yes", "no"], "image": [blocks, cat]},
        {"question_id": Value("string"), "category": Value("string"), "question": Value("string"),
         "answer": Value("string"), "image": Image()})
    science = {"question": Value("string"), "choices": List(Value("string")), "answer": Value("int64"),
               "hint": Value("string"), "image": Image()}
    scienceqa = save("scienceqa", {  # ScienceQA-FULL: the first row has no picture
        "question": ["Which is a mammal?", "Which colour covers most of the picture?"],
        "choices": [["frog", "whale", "trout"], ["red", "blue"]], "answer": [1, 0],
        "hint": ["", "Look at the picture."], "image": [None, blocks]}, science)
    scienceqa_img = save("scienceqa_img", {
        "question": ["Which animal is shown?"], "choices": [["cat", "dog"]], "answer": [0], "hint": [""],
        "image": [cat]}, science)
    seedbench = save("seedbench", dict(SEED, image=[[cat], [blocks]]),
        {"question_id": Value("string"), "data_type": Value("string"), "question": Value("string"),
         "choice_a": Value("string"), "choice_b": Value("string"), "choice_c": Value("string"),
         "choice_d": Value("string"), "answer": Value("string"), "image": List(Image())})
    return {"prunesid_mme": mme, "prunesid_pope": pope, "prunesid_scienceqa": scienceqa,
            "prunesid_scienceqa_img": scienceqa_img, "prunesid_seedbench_ppl": seedbench}


@pytest.fixture(scope="module")
def task_folder(tmp_path_factory) -> Path:
    """An ``--include_path`` folder: lmms-eval's configs, each on its tiny local dataset."""
    root = tmp_path_factory.mktemp("lmms-tasks")
    data = datasets_for_tasks(root / "data")
    tasks = root / "tasks"
    tasks.mkdir()
    for task, config in TASKS.items():
        (tasks / f"{task}.yaml").write_text(
            f"include: {LMMS_TASKS / config}\ntask: {task}\ndataset_path: {data[task]}\n"
            "dataset_kwargs:\n  load_from_disk: true\n")
    (tasks / "prunesid_scienceqa_full.yaml").write_text(  # as lmms-eval's scienceqa_full.yaml groups them
        "group: prunesid_scienceqa_full\ntask:\n  - prunesid_scienceqa\n  - prunesid_scienceqa_img\n")
    return tasks


def evaluate(launch: list[str], task_folder: Path, out: Path, demo_cache: str, *extra: str) -> tuple[dict, dict]:
    """``python -m lmms_eval`` (under ``launch``) from a folder outside the checkout; the results and,
    per task, the logged samples by doc id."""
    cwd = out / "cwd"
    cwd.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PRUNESID_CACHE=demo_cache, GRADIO_ANALYTICS_ENABLED="False")
    done = subprocess.run([*launch, "-m", "lmms_eval", "--model", "prunesid", "--model_args", MODEL_ARGS,
                           "--tasks", RUN, "--include_path", str(task_folder), "--output_path", str(out / "results"),
                           "--log_samples", *extra], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Error during evaluation" not in log, log[-4000:]  # lmms-eval logs a failed run and exits 0
    results = json.loads(next((out / "results").rglob("*_results.json")).read_text())
    samples = {}
    for task in TASKS:
        lines = next((out / "results").rglob(f"*_samples_{task}.jsonl")).read_text().splitlines()
        docs = [json.loads(line) for line in lines]
        samples[task] = {d["doc_id"]: d for d in docs}
        assert len(samples[task]) == len(docs)  # each sample once
    return results, samples, log


@pytest.fixture(scope="module")
def one_process(task_folder, tmp_path_factory, demo_cache):
    out = tmp_path_factory.mktemp("lmms-one")
    return evaluate([sys.executable], task_folder, out, demo_cache, "--batch_size", "4")


def test_lmms_evals_own_tasks_through_its_own_command_line(one_process, llava_pipeline):
    results, samples, log = one_process
    scores = results["results"]
    assert {"mme_perception_score,none", "mme_cognition_score,none"} & set(scores["prunesid_mme"])
    assert "pope_accuracy,none" in scores["prunesid_pope"]
    assert "exact_match,none" in scores["prunesid_scienceqa"] and "exact_match,none" in scores["prunesid_scienceqa_img"]
    assert "acc,none" in scores["prunesid_seedbench_ppl"]
    assert [len(samples[t]) for t in TASKS] == [2, 2, 2, 1, 2]
    assert "answered one at a time" in log  # --batch_size 4 is said, once, not refused

    # Generation: every answer a string, with the tokens handed over per sample.
    for task in ("prunesid_mme", "prunesid_pope", "prunesid_scienceqa_img"):
        for doc in samples[task].values():
            assert isinstance(answer(doc), str)
            counts = doc["token_counts"][0]
            assert counts["visual_tokens"] == K and counts["visual_tokens_full"] == 576
            assert counts["input_tokens"] > K and counts["output_tokens"] >= 1
    # ScienceQA-FULL's row without a picture: the language model alone, in the same run as the rest.
    text_only, pictured = samples["prunesid_scienceqa"][0], samples["prunesid_scienceqa"][1]
    assert text_only["token_counts"][0]["visual_tokens"] == 0 and pictured["token_counts"][0]["visual_tokens"] == K
    assert isinstance(answer(text_only), str)


def answer(doc: dict) -> str:
    """A generation sample's answer as lmms-eval logs it (the text, or a list holding it)."""
    logged = doc["filtered_resps"]
    return logged if isinstance(logged, str) else logged[0]


def scored(doc: dict) -> list[tuple[float, bool]]:
    """A multiple-choice sample's ``[value, is_greedy]`` pairs as lmms-eval logs them (as text)."""
    pairs = [(float(value), {"True": True, "False": False}[greedy]) for value, greedy in doc["filtered_resps"]]
    return pairs


def test_multiple_choice_values_are_losses(one_process, llava_pipeline):
    """seedbench_ppl through lmms-eval's evaluator: four [loss, greedy] pairs per question, each the
    mean cross-entropy of the choice's tokens on the pruned prompt, and ``acc`` from their argmin."""
    import numpy as np

    _, samples, _ = one_process
    pipe = llava_pipeline
    for doc_id, doc in samples["prunesid_seedbench_ppl"].items():
        pairs = scored(doc)
        choices = [SEED[c][doc_id] for c in CHOICES]
        assert len(pairs) == 4 and doc["target"] == choices[0]  # the answer is A
        losses = [loss for loss, _ in pairs]
        assert all(loss > 0 for loss in losses)  # a loss, not a log-probability
        assert doc["acc"] == float(int(np.argmin(losses)) == 0)
        assert all(c == {"visual_tokens": K, "visual_tokens_full": 576} for c in doc["token_counts"])
    # The first question's choices scored here, on the same pruned prompt: the same losses.
    image, question = picture(0), f"{SEED['question'][0]} Answer :"
    selection = pipe.select(pipe.encode([image]), K, question=question)
    for (loss, _), choice in zip(scored(samples["prunesid_seedbench_ppl"][0]), CHOICES):
        ids = pipe.processor.tokenizer(" " + SEED[choice][0], add_special_tokens=False)["input_ids"]
        total, _ = pipe.loglikelihood([image], question, ids, selection)
        assert loss == pytest.approx(-total / len(ids), rel=1e-4)


def test_two_processes_answer_each_sample_once_with_the_same_results(one_process, task_folder, tmp_path, demo_cache):
    """``accelerate launch --multi_gpu --num_processes 2 -m lmms_eval`` (on a CPU: two processes over
    gloo): every sample answered once, the same answers, losses and scores as one process."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port())]
    results, samples, log = evaluate(launch, task_folder, tmp_path, demo_cache)
    one_results, one_samples, _ = one_process
    assert "rank 1 of 2" in log and "rank 0 of 2" in log
    for task in TASKS:
        assert samples[task].keys() == one_samples[task].keys()
        for doc_id, doc in samples[task].items():
            alone = one_samples[task][doc_id]
            assert doc["token_counts"] == alone["token_counts"]
            if task == "prunesid_seedbench_ppl":
                assert [g for _, g in scored(doc)] == [g for _, g in scored(alone)]
                assert [x for x, _ in scored(doc)] == pytest.approx([x for x, _ in scored(alone)], rel=1e-4)
            else:
                assert answer(doc) == answer(alone)
        numbers = {k: v for k, v in one_results["results"][task].items() if isinstance(v, float)}
        assert {k: results["results"][task][k] for k in numbers} == pytest.approx(numbers, rel=1e-6, nan_ok=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
