"""The payload of this project's ``lmms_eval.models`` entry point (``pyproject.toml``): lmms-eval
0.7.3 loads it when its model registry starts, so ``python -m lmms_eval --model prunesid`` works from
any folder once the project is installed. Light on purpose: lmms-eval imports it for every run,
whichever model is asked for; the model itself (torch, transformers) loads only when chosen."""
from lmms_eval.models.registry_v2 import ModelManifest

MODEL_ID = "prunesid"
MANIFEST = ModelManifest(model_id=MODEL_ID, simple_class_path="prunesid_lmms.model.PruneSIDLmms")
