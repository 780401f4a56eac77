"""The README's front matter is a Space card the Hugging Face Hub accepts (issue 23, item 5), and
the README's Space section stays true: its memory table is the registry's, and it names every
setting a Space's owner has."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import regex
import yaml

from prunesid_vlm.registry import KNOWN_MODELS, memory_table

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# The Hub's rules (hub-docs `spaces-config-reference.md`, `spaces-zerogpu.md`; the notes in
# ../shared/notes/gradio-spaces.md).
MAX_SHORT_DESCRIPTION = 60
COLORS = {"red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray"}
SDKS = {"gradio", "streamlit", "docker", "static"}
ZEROGPU_PYTHONS = {"3.10", "3.12", "3.10.13", "3.12.12"}
HARDWARE = {"cpu-basic", "cpu-upgrade", "t4-small", "t4-medium", "l4x1", "l4x4", "l40sx1", "l40sx4", "l40sx8",
            "a10g-small", "a10g-large", "a10g-largex2", "a10g-largex4", "a100-large", "a100x4", "a100x8"}
ONE_EMOJI = (r"\p{Extended_Pictographic}[\p{Emoji_Modifier}\uFE0F\u20E3]*"
             r"(?:\u200D\p{Extended_Pictographic}[\p{Emoji_Modifier}\uFE0F]*)*|\p{Regional_Indicator}{2}")


def front_matter(text: str = README) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", text, flags=re.S)
    assert match, "README.md does not start with a YAML front matter between --- lines"
    card = yaml.safe_load(match.group(1))
    assert isinstance(card, dict)
    return card


CARD = front_matter()


def spaces_section() -> str:
    start = README.index("### Hosting it on Hugging Face Spaces")
    end = README.find("\n### ", start + 1)
    return README[start:end if end > 0 else None]


def test_short_description_fits_the_hub():
    text = CARD["short_description"]
    assert isinstance(text, str) and 0 < len(text) <= MAX_SHORT_DESCRIPTION, (len(text), text)


def test_colors_sdk_and_title():
    assert CARD["colorFrom"] in COLORS and CARD["colorTo"] in COLORS
    assert CARD["sdk"] in SDKS
    assert isinstance(CARD["title"], str) and CARD["title"].strip()


def test_sdk_version_is_the_gradio_pinned_in_requirements():
    pins = re.findall(r"^gradio==([\w.]+)\s*(?:#.*)?$", (ROOT / "requirements.txt").read_text(), flags=re.M)
    assert len(pins) == 1, "requirements.txt pins gradio once, as gradio==X.Y.Z"
    assert CARD["sdk"] == "gradio" and str(CARD["sdk_version"]) == pins[0]


def test_app_file_exists():
    assert (ROOT / CARD["app_file"]).is_file()


def test_emoji_is_one_emoji():
    emoji = CARD["emoji"]
    assert isinstance(emoji, str) and regex.fullmatch(ONE_EMOJI, emoji), emoji


def test_python_version_is_one_zerogpu_runs():
    version = CARD["python_version"]
    assert isinstance(version, str), "quote python_version: YAML reads 3.10 as the number 3.1"
    assert version in ZEROGPU_PYTHONS


def test_suggested_hardware_is_a_hub_flavour():
    assert CARD.get("suggested_hardware", "cpu-basic") in HARDWARE


def test_listed_models_are_the_registry_s():
    known = {s.model_id for s in KNOWN_MODELS if not s.is_demo}
    for key in ("models", "preload_from_hub"):
        listed = CARD.get(key, [])
        assert isinstance(listed, list)
        for model_id in listed:
            assert model_id in known, f"{key}: {model_id} is not in prunesid_vlm/registry.py"


def test_license_is_a_plain_id():
    assert isinstance(CARD["license"], str) and re.fullmatch(r"[a-z0-9]+(?:[.-][a-z0-9]+)*", CARD["license"])


def test_startup_timeout_is_a_duration():
    assert re.fullmatch(r"\d+[mh]", str(CARD.get("startup_duration_timeout", "30m")))


@pytest.mark.parametrize("bad, rule", [
    ("short_description: " + "x" * 61, "short_description"),
    ('python_version: 3.10', "python_version"),
    ("colorFrom: orange", "colorFrom"),
    ("emoji: ab", "emoji"),
])
def test_the_checks_catch_what_the_hub_refuses(bad, rule):
    """The rules above, on cards the Hub would refuse (so a check cannot pass vacuously)."""
    key = bad.split(":")[0]
    lines = [bad if line.startswith(key + ":") else line for line in README.split("\n---\n")[0].splitlines()]
    card = front_matter("\n".join(lines) + "\n---\n")
    checks = {
        "short_description": lambda c: len(c["short_description"]) <= MAX_SHORT_DESCRIPTION,
        "python_version": lambda c: c["python_version"] in ZEROGPU_PYTHONS,
        "colorFrom": lambda c: c["colorFrom"] in COLORS,
        "emoji": lambda c: bool(regex.fullmatch(ONE_EMOJI, c["emoji"])),
    }
    assert not checks[rule](card)


def test_the_memory_table_is_the_registry_s():
    assert memory_table() in README, "regenerate the table: prunesid_vlm.registry.memory_table()"
    for spec in KNOWN_MODELS:
        if not spec.is_demo:
            assert 0 < spec.weights_gb < spec.memory_gb, spec.model_id


def test_the_space_section_names_every_owner_setting():
    from prunesid_vlm import serving as models

    settings = set(re.findall(r"\"(PRUNESID_[A-Z0-9_]+)\"", (ROOT / "studio" / "limits.py").read_text()))
    settings |= {models.ENV_MODEL, models.ENV_GPU_MEMORY, models.ENV_PUBLIC}
    section = spaces_section()
    missing = [name for name in sorted(settings) if f"`{name}`" not in section.split("#### ")[0]]
    assert not missing, f"README's Space section does not list {missing}"
    for retired in models.RETIRED_ENV:
        assert f"`{retired}`" in section and "no longer read" in section
