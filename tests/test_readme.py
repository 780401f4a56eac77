"""The README's Python snippets run as written (the scripted-use ones; the algorithm block is a
signature sketch over tensors the reader brings)."""
from __future__ import annotations

import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def snippets(marker: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [re.sub(r"^ {2}", "", b, flags=re.M) for b in blocks if marker in b]
    assert found, f"no README snippet with {marker!r}"
    return found


def test_the_pipeline_snippet_runs_as_written(llava_pipeline, monkeypatch):
    monkeypatch.chdir(ROOT)
    for code in snippets("load_pipeline(DEMO_MODEL_ID)"):
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
        assert scope["result"].pruned_answer is not None and scope["sel"].keep.shape[1] == 64


def test_the_client_snippet_runs_as_written(app_url, monkeypatch):
    monkeypatch.chdir(ROOT)
    for code in snippets('api_name="/analyze"'):
        code = code.replace("http://127.0.0.1:7860/", app_url)
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
        assert scope["out"]["budget"] == 64 and scope["out"]["grid"] == [24, 24]
        assert scope["dyn"]["dynamic"] and Path(scope["picture"]).suffix == ".png"


def test_readme_mentions_only_files_that_exist():
    text = (ROOT / "README.md").read_text()
    folders = "assets|benchmarks|docs|tests|studio|viz|prunesid|prunesid_eval|prunesid_vlm|prunesid_lmms|prunesid_cli"
    for path in re.findall(rf"`((?:{folders})/[\w./-]+)`", text):
        assert (ROOT / path).exists(), path
