"""The one registry of token-selection methods: PruneSID and the baselines, one signature.

Every ``fn`` is ``fn(hidden_states [B, 1+N, D], cls_attention [B, N], num_tokens, *,
generator=None, **options) -> Selection``. ``num_tokens`` counts every token handed to the
LLM (CLS included when the method keeps it; merged tokens included), so at one budget every
method gives the LLM the same number of visual tokens — except ``prunesid-dyn``, whose
budget is a mean over images by design. Budgets above what a method can give are clamped
(1 + N with CLS, N without).

    from prunesid_eval.methods import list_methods, get_method
    for spec in list_methods():
        sel = spec.fn(hidden, attention, 64, generator=torch.Generator().manual_seed(0))
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from prunesid.result import Selection
from . import cdpruner, divprune, grid, prunesid_rules, random_select, topk, visionzip, vispruner

SelectFn = Callable[..., Selection]


@dataclass(frozen=True)
class MethodSpec:
    """One selection method: what to call and where it comes from."""

    name: str
    """Registry key (also ``Selection.method``)."""
    label: str
    """Display name."""
    fn: SelectFn
    paper: str
    """Citation (or "—" for simple baselines)."""
    code_url: str
    """The public code the rule follows ("" if none)."""
    keeps_cls: bool
    """Whether the CLS token is among the tokens handed to the LLM (by default)."""
    notes: str
    """The rule in one or two sentences."""
    deviations: tuple[str, ...] = field(default_factory=tuple)
    """Where this implementation departs from the public code, and why."""
    versus_code: str = ""
    """What running beside the authors' selection code shows (``benchmarks/baselines_faithful.py``,
    100 synthetic cases per budget): the measured effect of the deviations."""
    merges: bool = False
    """Whether some tokens are merged from dropped patches (``Selection.merged_tokens``)."""
    randomized: bool = False
    """Whether the result depends on the ``generator``."""
    needs_question: bool = False
    """Whether the method chooses by the question (CDPruner): its kept set moves when only the
    question changes; PruneSID's and the others' do not."""
    needs_cls_attention: bool = False
    """Whether the method ranks patches by the CLS token's attention (not available on towers
    without a CLS token, e.g. Qwen's merged tokens)."""
    needs_projected: bool = False
    """Whether its code measures the tokens after the multimodal projector (what the language model
    receives): a model pipeline passes them as ``options[name]["features"]``."""
    dynamic: bool = False
    """Whether the method sets each view's budget from its content (the dynamic ratio). A caller
    that knows how views relate (the model pipeline: crops of one image, frames of one clip)
    applies its own dynamic rule and runs the method's fixed-budget rule with those budgets."""

    def to_dict(self) -> dict:
        """JSON-ready description (no callable)."""
        return {"name": self.name, "label": self.label, "paper": self.paper, "code_url": self.code_url,
                "keeps_cls": self.keeps_cls, "merges": self.merges, "randomized": self.randomized,
                "dynamic": self.dynamic, "needs_cls_attention": self.needs_cls_attention,
                "needs_question": self.needs_question, "needs_projected": self.needs_projected,
                "notes": self.notes, "deviations": list(self.deviations), "versus_code": self.versus_code}


PRUNESID_PAPER = "Fang et al., Prune Redundancy, Preserve Essence (PruneSID), ICLR 2026, arXiv 2603.09480"
PRUNESID_CODE = "https://github.com/ZhengyaoFang/PruneSID"

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec(
            "prunesid", "PruneSID", prunesid_rules.prunesid_select, PRUNESID_PAPER, PRUNESID_CODE, True,
            "PSCA groups (top principal components), intra-group NMS by CLS attention, budget split over groups.",
            ("Exact PCA instead of the reference's randomised torch.pca_lowrank (same semantics, deterministic; "
             "pca='randomized' reproduces the reference's scheme with an explicit generator).",
             "At least one PSCA group for budgets below 4 (the reference crashes there)."),
        ),
        MethodSpec(
            "prunesid-dyn", "PruneSID-Dyn", prunesid_rules.prunesid_dynamic_select, PRUNESID_PAPER, PRUNESID_CODE,
            True,
            "PruneSID with the information-aware dynamic ratio: budget ∝ φ = 1 − ρ (mean budget = num_tokens).",
            ("The dynamic ratio is in the paper only (absent from the reference code); single images are scaled "
             "by φ / φ_ref with φ_ref from a calibration set (pass phi_ref=); without it a batch shares its total ∝ φ.",
             "Hands over its own budget per image, not exactly num_tokens."),
            dynamic=True,
        ),
        MethodSpec(
            "random", "Random", random_select.random_select, "—", "", True,
            "CLS plus uniformly random patches, drawn from the generator passed in (default seed 0).",
            randomized=True,
        ),
        MethodSpec(
            "grid", "Uniform grid", grid.grid_select, "—", "", False,
            "num_tokens patches on an evenly spaced lattice (64 → every 3rd cell, 8 × 8); content ignored.",
            ("No CLS by default (keep_cls=True to spend a slot on it): a purely spatial baseline.",),
        ),
        MethodSpec(
            "topk", "CLS-attention top-k", topk.topk_select,
            "importance-only baseline (cf. VisionZip's dominant tokens; FasterVLM, Zhang et al. 2024)", "", True,
            "CLS plus the patches with the largest CLS attention at layer −2 (heads summed).",
            ("Ties go to the lower patch index.",),
            needs_cls_attention=True,
        ),
        MethodSpec(
            "visionzip", "VisionZip", visionzip.visionzip_select,
            "Yang et al., VisionZip: Longer is Better but Not Necessary in VLMs, CVPR 2025",
            "https://github.com/dvlab-research/VisionZip", True,
            "CLS + dominant patches by CLS attention, the rest merged into contextual tokens "
            "(evenly spaced targets + the mean of their most similar patches).",
            ("Budget split contextual = round(K·10/64) (the paper's 54+10 / 108+20 / 162+30) for any K.",
             "Similarity on the layer −2 hidden states, not the layer −2 attention keys (not cached); "
             "metric= accepts the keys.",
             "Ties to the lower index; float32 arithmetic."),
            merges=True,
            needs_cls_attention=True,
            versus_code="Same kept tokens as its code on 100 of 100 cases at K = 16–192, in float32 and bfloat16.",
        ),
        MethodSpec(
            "divprune", "DivPrune", divprune.divprune_select,
            "Alvar et al., DivPrune: Diversity-based Visual Token Pruning for LMMs, CVPR 2025",
            "https://github.com/vbdi/divprune", False,
            "Greedy max-min diversity: repeatedly add the patch farthest (1 − cos) from the chosen set.",
            ("By default distances on the tower's layer −2 patch states; the code uses the projected tokens "
             "(features= accepts them; the app's Compare tab passes the projector's output).",
             "Budget as a count instead of SUBSET_RATIO.",
             "Diagonal and already-picked tokens masked (differs only for exact duplicates).",
             "Distances in float32; the code computes them in the model's dtype (native_dtype=True does too)."),
            versus_code=("Float32 states: the same tokens as its code on 100 of 100 cases at K = 16–192. Bfloat16 "
                         "states (a GPU model): its code, computing in bf16, keeps another set on 97–100 % of cases "
                         "(mean Jaccard 0.42–0.81 at K = 16–192), since bf16 rounds many distances to ties; with "
                         "native_dtype=True ours computes in bf16 too and keeps its exact set."),
            needs_projected=True,
        ),
        MethodSpec(
            "vispruner", "VisPruner", vispruner.vispruner_select,
            "Zhang et al., Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning "
            "in VLMs (VisPruner), ICCV 2025",
            "https://github.com/Theia-4869/VisPruner", False,
            "Half the budget by CLS attention, the other half left after iterative duplicate removal "
            "(alternate matching, 8 per round) among the rest.",
            ("Odd residual lengths handled (the code fails on them).",
             "Stable tie-breaking: exactly tied duplicate scores go to the earlier position; the code's argsort "
             "leaves their order to the sort kernel.",
             "Similarities in float32; the code computes them in the model's dtype (native_dtype=True does too)."),
            needs_cls_attention=True,
            versus_code=("Float32 states: the same tokens as its code on 58–76 % of cases at K = 16–192 (mean Jaccard "
                         "0.78–0.94; torch 2.13 CPU), all of the difference from exactly tied scores that its unstable "
                         "argsort orders otherwise (with a stable sort swapped into its code: 100 %). Bfloat16 states: "
                         "0 % identical (Jaccard 0.45–0.77) against its bf16 code; with native_dtype=True, the set "
                         "its code keeps with the stable sort, on every case."),
        ),
        MethodSpec(
            "cdpruner", "CDPruner", cdpruner.cdpruner_select,
            "Zhang et al., Beyond Attention or Similarity: Maximizing Conditional Diversity for Token Pruning in "
            "MLLMs (CDPruner), NeurIPS 2025", "https://github.com/Theia-4869/CDPruner", False,
            "Greedy MAP of a DPP whose kernel is the tokens' cosine similarity weighted by their relevance to the "
            "instruction (CLIP image vs text embeddings): diverse tokens that matter for this question.",
            ("Relevance scaled per image (the code scales by the whole batch's minimum and maximum; the same for "
             "one image).",
             "Without an instruction, the relevance is 1: a DPP on similarity alone."),
            needs_question=True,
            needs_projected=True,
            versus_code="Same tokens as its code on every synthetic case tested (tests/test_methods.py).",
        ),
    )
}


def get_method(name: str) -> MethodSpec:
    """The spec registered under ``name``; ValueError listing the known names otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown selection method {name!r}; known: {', '.join(METHODS)}") from None


def list_methods() -> list[MethodSpec]:
    """Every registered method, PruneSID first."""
    return list(METHODS.values())
