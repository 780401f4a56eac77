"""``/analyze`` through ``gradio_client`` against the app launched in-process (offline)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

gradio_client = pytest.importorskip("gradio_client")

ASSETS = Path(__file__).resolve().parents[1] / "assets"


@pytest.fixture(scope="module")
def client(app_url):
    c = gradio_client.Client(app_url, verbose=False)
    yield c
    c.close()


def test_analyze_is_public_and_the_ui_events_are_not(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    # "/compare" belongs to the "Compare methods" tab (studio/compare_tab.py) when it is present.
    assert {"/analyze", "/kept_tokens", "/compare"} <= set(endpoints)
    assert not any(name.startswith("/on_") for name in endpoints)  # the page's own events stay private
    params = [p["parameter_name"] for p in endpoints["/analyze"]["parameters"]]
    assert params == ["image", "question", "budget", "method", "dynamic", "max_new_tokens", "model", "positions"]
    for p in endpoints["/analyze"]["parameters"]:  # every parameter says what it is
        assert p["label"].startswith(p["parameter_name"] + ": ") and len(p["label"]) > 30, p["label"]


def test_analyze_returns_selection_and_both_answers(client):
    from gradio_client import handle_file

    result = client.predict(handle_file(str(ASSETS / "cat.jpg")), "What animal is this?", 64, api_name="/analyze")
    assert result["budget"] == 64 and result["model"]["is_demo"] is True
    sel = result["selection"][0]
    assert sel["num_tokens"] == 64 and len(sel["keep"]) == 64 and len(sel["group"]) == 576
    assert result["full"]["visual_tokens"] == 576 and result["pruned"]["visual_tokens"] == 64
    assert isinstance(result["full"]["answer"], str) and isinstance(result["pruned"]["answer"], str)
    assert result["prefill"]["speedup"] > 0 and "first_token_kl_nats" in result["fidelity"]


def test_analyze_hands_kept_tokens_over_at_their_original_positions_when_asked(client):
    from gradio_client import handle_file

    cat = handle_file(str(ASSETS / "cat.jpg"))
    placed = client.predict(cat, "What is this?", 64, "prunesid", False, 8, "", "original", api_name="/analyze")
    packed = client.predict(cat, "What is this?", 64, "prunesid", False, 8, api_name="/analyze")
    assert (placed["positions"], packed["positions"]) == ("original", "compact")
    assert placed["pruned"]["visual_tokens"] == packed["pruned"]["visual_tokens"] == 64
    with pytest.raises(Exception, match="Positions must be one of compact, original"):
        client.predict(cat, "What?", 64, "prunesid", False, 8, "", "sideways", api_name="/analyze")


@pytest.mark.parametrize("budget, message", [(999, "between 2 and 577"), (1, "between 2 and 577")])
def test_out_of_range_budget_is_a_readable_error(client, budget, message):
    from gradio_client import handle_file

    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(ASSETS / "cat.jpg")), "What?", budget, api_name="/analyze")


def test_non_image_upload_is_a_readable_error(client, tmp_path):
    from gradio_client import handle_file

    fake = tmp_path / "fake.png"
    fake.write_text("not an image at all")
    with pytest.raises(Exception, match="not an image format"):
        client.predict(handle_file(str(fake)), "What?", 64, api_name="/analyze")


def test_reported_prefill_speedups_stay_near_their_token_bound(client):
    """Honest timings: over three calls, every measured prefill speed-up is at most 1.3× the
    token-count bound (full / pruned prompt length) reported beside it."""
    for _ in range(3):
        result = client.predict(gradio_client.handle_file(str(ASSETS / "cat.jpg")), "What is this?", 64,
                                api_name="/analyze")
        assert result["prefill"]["bound"] > 1 and result["model"]["device"] in ("cpu", "cuda")
        assert 0 < result["prefill"]["speedup"] <= 1.3 * result["prefill"]["bound"], result["pruned"]["timings"]


def test_compare_parameters_are_named(client):
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    params = [p["parameter_name"] for p in endpoints["/compare"]["parameters"]]
    assert params == ["image", "question", "budget", "methods", "answers"]


def test_a_refused_input_logs_one_line_and_no_traceback(client, capfd, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="prunesid.studio")
    with pytest.raises(Exception, match="between 2 and 577"):
        client.predict(gradio_client.handle_file(str(ASSETS / "cat.jpg")), "q", 999, api_name="/analyze")
    _, err = capfd.readouterr()
    assert "Traceback" not in err
    refused = [r for r in caplog.records if r.name == "prunesid.studio" and "between 2 and 577" in r.getMessage()]
    assert len(refused) == 1 and refused[0].exc_info is None


def test_analyze_documents_its_index_spaces(client):
    result = client.predict(gradio_client.handle_file(str(ASSETS / "cat.jpg")), "What?", 32, api_name="/analyze")
    assert result["grid"] == [24, 24] and "tower indices (0 = CLS" in result["index_spaces"]
    assert result["selection"][0]["keep"][0] == 0 and max(result["selection"][0]["keep"]) <= 576


# ---- the input gaps of issue 13, item 4: each refused (or served) with a clear message -------------
def test_a_budget_sent_as_text_is_read_or_refused_clearly(client):
    from gradio_client import handle_file

    image = handle_file(str(ASSETS / "cat.jpg"))
    assert client.predict(image, "What?", "64", api_name="/analyze")["budget"] == 64
    with pytest.raises(Exception, match="must be a number, got 'abc'"):
        client.predict(image, "What?", "abc", api_name="/analyze")


def test_every_token_budget_answers_like_the_full_model(client):
    from gradio_client import handle_file

    out = client.predict(handle_file(str(ASSETS / "cat.jpg")), "What?", 577, api_name="/analyze")
    assert out["pruned"]["answer"] == out["full"]["answer"] and out["fidelity"]["first_token_kl_nats"] < 1e-6
    assert out["pruned"]["visual_tokens"] == 576


@pytest.mark.parametrize("question, message", [
    ("x" * 24_000, "keep it under 2000"),
    ("\u200b\u200c\u200d\ufeff", "no visible characters"),
    ("Describe <image> please", "picture placeholder"),
])
@pytest.mark.parametrize("endpoint", ["/analyze", "/compare"])
def test_one_question_rule_for_every_endpoint(client, endpoint, question, message):
    from gradio_client import handle_file

    image = handle_file(str(ASSETS / "cat.jpg"))
    args = (image, question, 64) if endpoint == "/analyze" else (image, question, 64, "grid", False)
    with pytest.raises(Exception, match=message):
        client.predict(*args, api_name=endpoint)


def test_one_session_cannot_fill_the_queue_for_everyone(client, app_url):
    """One scripted session submits ten jobs at once: it gets at most a few places in the queue (the
    rest are refused with a message that says to retry), and another visitor still gets in."""
    from gradio_client import handle_file

    from studio.limits import QUEUE_PER_SESSION

    image = handle_file(str(ASSETS / "cat.jpg"))
    jobs = [client.submit(image, f"Busy question {i}?", 40 + i, api_name="/analyze") for i in range(10)]
    other = gradio_client.Client(app_url, verbose=False)
    try:
        assert other.predict(image, "Am I served?", 64, api_name="/analyze")["budget"] == 64
    finally:
        other.close()
    served, refused = 0, []
    for job in jobs:
        try:
            job.result(timeout=300)
            served += 1
        except Exception as err:  # noqa: BLE001 - the refusal is what is tested
            refused.append(str(err))
    assert refused and served >= 1, (served, refused)
    assert served <= QUEUE_PER_SESSION + 1  # the waiting ones plus the one running at the time
    assert all("requests waiting" in r or "try again" in r.lower() for r in refused), refused[:2]


def test_analyze_takes_the_method_the_dynamic_ratio_and_the_answer_length(client):
    from gradio_client import handle_file

    from studio import handlers as H

    image = handle_file(str(ASSETS / "coffee.jpg"))
    dyn = client.predict(image, "What drink?", 64, "prunesid", True, 4, "", api_name="/analyze")
    handed = dyn["token_counts"]["pruned"]["total"]
    assert dyn["dynamic"] and dyn["method"] == "prunesid" and handed == dyn["selection"][0]["num_tokens"] != 64
    assert dyn["pruned"]["visual_tokens"] == handed
    other = client.predict(image, "What drink?", 64, "divprune", False, 4, api_name="/analyze")
    assert other["method"] == "divprune" and other["selection"][0]["method"] == "divprune"
    assert other["selection"][0]["num_tokens"] == 64
    # The views' geometry lets a script draw where the model looks (LLaVA-1.5: the centre square).
    (width, height), box = other["image_size"], other["views"][0]["box"]
    assert [width, height] == [512, 341] and len(other["views"]) == 1
    assert box == pytest.approx([(width - height) / 2, 0, (width + height) / 2, height], abs=1)
    for bad, message in (("nope", "nope.*(prunesid|divprune)"), ("prunesid", "(?i)max_new_tokens must be between 1 and 256")):
        with pytest.raises(Exception, match=message):
            client.predict(image, "What?", 64, bad, False, 9999 if bad == "prunesid" else 4, api_name="/analyze")
    assert H.MAX_API_NEW_TOKENS == 256


def test_kept_tokens_gives_a_picture_drawn_where_the_model_looks(client):
    from gradio_client import handle_file
    from PIL import Image

    path = client.predict(handle_file(str(ASSETS / "coffee.jpg")), 64, "prunesid", False, api_name="/kept_tokens")
    from studio.views import ORIGINAL_SIDE

    picture = Image.open(path)
    # The whole 512 × 341 picture at the page's scale (with its key below), not a stretched square.
    assert picture.size[0] == ORIGINAL_SIDE and ORIGINAL_SIDE * 341 / 512 < picture.size[1] < ORIGINAL_SIDE
