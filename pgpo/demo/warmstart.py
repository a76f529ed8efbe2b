"""Warm start of the demo VLM: a short supervised stage so that RL starts above chance but with room to improve.

The model learns to answer :mod:`pgpo.tasks`' visual questions in the paper's format, from the prompt RL and the
evaluation use (system "You are a helpful assistant.", the question plus the paper's think-then-box instruction) and
a taught completion written from the sample's known scene (:func:`pgpo.tasks.reasoning.taught_completion`)::

    <think>The red shapes are a circle and a triangle, so there are 2.</think> \\boxed{2}

The loss is next-token cross-entropy on the completion tokens (and the closing ``<|im_end|>``) only; the LM head is
applied at those positions only. What trains is set by ``train``: the projector alone, the projector plus LoRA
adapters on the LM (merged into the weights before saving, so the result is a plain demo VLM), or the projector plus
the whole LM. The result is saved with ``save_pretrained`` in a cache folder keyed by every setting
(:func:`pgpo.paths.warmstart_dir`), so ``pgpo demo`` trains it once. The cache is probe-written before training; a
save that fails there anyway (a full disk) keeps the trained model in a temp folder, and says where.

``pgpo warm-start`` trains (or reuses) a warm start and measures it: greedy accuracy per family and the
headroom indicators RL needs (accuracy of samples at temperature 1, pass@k, the fraction of prompts whose k samples
are neither all right nor all wrong).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch

from pgpo.paths import atomic_folder, check_cache_writable, warmstart_dir
from pgpo.tasks import check, make_split
from pgpo.tasks.draw import COLOUR_NAMES, SHAPES
from pgpo.tasks.families import family_names
from pgpo.tasks.hf import DEFAULT_PROMPT_TEMPLATE, DEFAULT_SYSTEM_PROMPT, to_messages
from pgpo.tasks.reasoning import COMPLETION_FORMAT, describe, reasoning

DEMO_FAMILIES = ("count", "compare", "largest", "shape", "exists")
TRAIN_MODES = ("projector", "lora", "lm")
# Generation budget for a taught-format completion: the longest taught completion of any family is 37 SmolLM2 tokens
# plus <|im_end|> (tests/test_tasks.py checks every family stays below this).
MAX_NEW_TOKENS = 48
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Seeds of the sample streams: warm-start training uses seed + TRAIN_SEED_OFFSET ("train" images); settings are
# chosen on VALIDATION_SEED ("test" images, another seed stream than the demo's held-out test split, TEST_SEED).
TRAIN_SEED_OFFSET = 1000
VALIDATION_SEED = 7
TEST_SEED = 0


@dataclass(frozen=True)
class WarmStartConfig:
    """Every setting of the warm start; all of them are used, and all of them are in the cache key."""

    n_samples: int = 1024
    steps: int = 60
    batch_size: int = 8
    learning_rate: float = 1e-3  # the projector's
    lm_learning_rate: float = 2e-4  # LoRA adapters ("lora") or LM weights ("lm"); unused with "projector"
    seed: int = 0
    image_size: int = 96
    vision_grid: int = 3
    # MobileNetV2 blocks that run (19: all, 1280 channels, stride 32; 14: the last stride-16 stage, 96 channels,
    # which keeps colour per cell: docs/vlm.md). 14 blocks, 96 px, 3x3 tokens, LoRA: docs/demo-report.md
    vision_blocks: int = 14
    families: tuple[str, ...] = DEMO_FAMILIES
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    # The taught completion: a str.format template with {reasoning} (the scene-grounded chain) and {answer}.
    answer_format: str = COMPLETION_FORMAT
    train: str = "lora"  # "projector", "lora" (projector + LoRA on the LM) or "lm" (projector + whole LM)
    # The language model: "smollm2" (SmolLM2-135M-Instruct, pretrained) or "words" (a small Llama over the tasks'
    # word-level vocabulary, random: the warm start trains it from scratch, so train must be "lm").
    language: str = "smollm2"
    lm_hidden_size: int = 256  # the word LM's shape (unused with smollm2)
    lm_layers: int = 4
    lora_rank: int = 16  # unused unless train == "lora"
    # Lexical alignment before the supervised stage (0 = off): the projector alone learns, on this many scenes of the
    # object families, to map each image cell to the LM's input embeddings of the words for what is in it (no LM
    # forward, so it costs seconds).
    align_samples: int = 256
    align_epochs: int = 8
    # Captioning steps before the task steps (0 = none): short sequences (user: image + caption_prompt, no system
    # prompt) whose target describes the whole scene (pgpo.tasks.reasoning.describe): about 2.5x cheaper per sample
    # than a task sample, and every content word needs the image.
    caption_steps: int = 0
    caption_prompt: str = "Describe the image."

    def __post_init__(self):
        if self.train not in TRAIN_MODES:
            raise ValueError(f"train must be one of {TRAIN_MODES}, got {self.train!r}")
        if "{answer}" not in self.answer_format:
            raise ValueError("answer_format must contain {answer}")
        if self.language == "words" and self.train != "lm":
            raise ValueError("the word LM starts from random weights: train must be 'lm' (projector + whole LM)")

    def lm_shape(self) -> dict | None:
        """The word LM's shape for :func:`pgpo.vlm.build_pgpo_vlm` (None for SmolLM2)."""
        if self.language != "words":
            return None
        heads = max(1, self.lm_hidden_size // 64)
        return {
            "hidden_size": self.lm_hidden_size,
            "num_hidden_layers": self.lm_layers,
            "num_attention_heads": heads,
            "intermediate_size": 4 * self.lm_hidden_size,
        }

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


# The demo's language models (``pgpo demo --model``) and the warm start each gets (docs/demo-report.md has the
# measurements behind them). "words": a ~4 M-parameter Llama over the tasks' own words, trained from scratch here
# (the default: one RL step costs ~1/20 of SmolLM2's); "smollm2": SmolLM2-135M-Instruct + LoRA (pretrained).
DEMO_WARM_STARTS = {
    "words": WarmStartConfig(
        language="words",
        train="lm",
        steps=300,
        batch_size=32,
        n_samples=9600,
        learning_rate=1e-3,
        lm_learning_rate=1e-3,
        align_samples=1024,
    ),
    "smollm2": WarmStartConfig(),
}


def taught(sample, answer_format: str = COMPLETION_FORMAT) -> str:
    """The completion the warm start teaches for ``sample``, in ``answer_format``."""
    chain = reasoning(sample) if "{reasoning}" in answer_format else ""
    return answer_format.format(reasoning=chain, answer=sample["answer"])


class SFTCollator:
    """(image, question, answer, scene) samples -> ``input_ids``/``attention_mask``/``pixel_values``/``labels``.

    Prompt and completion are tokenized separately and concatenated, as at generation time; labels are ``-100`` on
    the prompt and the (right) padding.
    """

    def __init__(
        self,
        processor,
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        answer_format: str = COMPLETION_FORMAT,
        caption_prompt: str | None = None,
    ):
        """With ``caption_prompt`` the batches are captions: user = image + ``caption_prompt`` (no system prompt),
        target = :func:`pgpo.tasks.reasoning.describe`; otherwise the task prompt and the taught completion."""
        self.processor, self.template, self.system = processor, prompt_template, system_prompt
        self.answer_format, self.caption_prompt = answer_format, caption_prompt

    def messages(self, sample) -> list[dict]:
        if self.caption_prompt is not None:
            return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.caption_prompt}]}]
        return to_messages(sample, self.template, self.system)

    def target(self, sample) -> str:
        return describe(sample) if self.caption_prompt is not None else taught(sample, self.answer_format)

    def prompt(self, sample) -> str:
        return self.processor.apply_chat_template(self.messages(sample), add_generation_prompt=True)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        rows = []
        for s in samples:
            prompt = tok(self.processor.expand_image_tokens(self.prompt(s)), add_special_tokens=False)["input_ids"]
            answer = tok(self.target(s) + tok.eos_token, add_special_tokens=False)["input_ids"]
            rows.append((prompt, answer))
        width = max(len(p) + len(a) for p, a in rows)
        pad = tok.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (p, a) in enumerate(rows):
            n = len(p) + len(a)
            input_ids[i, :n] = torch.tensor(p + a)
            labels[i, len(p) : n] = torch.tensor(a)
            attention_mask[i, :n] = 1
        pixel_values = self.processor.image_processor([s["image"] for s in samples])["pixel_values"]
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
            "labels": labels,
        }


def completion_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled positions; the LM head runs on those positions only."""
    hidden = model.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=batch["pixel_values"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def _trainable(model, cfg: WarmStartConfig):
    """Set what trains; returns (model to train, optimizer param groups)."""
    lm = model.model.language_model
    model.requires_grad_(False)
    projector = list(model.model.projector.parameters())
    for p in projector:
        p.requires_grad_(True)
    groups = [{"params": projector, "lr": cfg.learning_rate}]
    if cfg.train == "lm":
        lm.requires_grad_(True)
        groups.append({"params": list(lm.parameters()), "lr": cfg.lm_learning_rate})
    elif cfg.train == "lora":
        from peft import LoraConfig, inject_adapter_in_model

        lora = LoraConfig(r=cfg.lora_rank, lora_alpha=2 * cfg.lora_rank, lora_dropout=0.0, target_modules=LORA_TARGETS)
        inject_adapter_in_model(lora, lm)
        adapters = [p for n, p in lm.named_parameters() if "lora_" in n]
        for p in adapters:
            p.requires_grad_(True)
        groups.append({"params": adapters, "lr": cfg.lm_learning_rate})
    return groups


def _merge_lora(model) -> None:
    """Fold LoRA adapters into the LM's weights and remove them (the saved model is a plain demo VLM)."""
    from peft.tuners.lora import LoraLayer

    lm = model.model.language_model
    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = lm.get_submodule(parent_name) if parent_name else lm
            setattr(parent, child, module.get_base_layer())


OBJECT_FAMILIES = ("count", "compare", "largest", "shape", "exists", "spatial")  # scenes of coloured shapes
ALIGN_SEED_OFFSET = 3000
EMPTY_WORD = "empty"


def align_projector(model, processor, cfg: WarmStartConfig, log=print) -> dict:
    """Lexical alignment of the projector: image token of cell (r, c) -> mean input embedding of the colour and shape
    words of the objects whose centre lies in that cell (" empty" for none), mean-squared error, projector only.

    The scenes are "train" images of the object families in ``cfg.families`` (another seed stream than the
    supervised stage's). Returns ``{"align_loss": ..., "align_samples": ...}``.
    """
    families = tuple(f for f in cfg.families if f in OBJECT_FAMILIES)
    if cfg.align_samples <= 0 or not families:
        return {}
    tok, g = processor.tokenizer, cfg.vision_grid
    table = model.get_input_embeddings().weight.detach()

    def embed(word: str) -> torch.Tensor:
        return table[tok(" " + word, add_special_tokens=False)["input_ids"]].mean(0)

    samples = make_split(
        "train", cfg.align_samples, seed=cfg.seed + ALIGN_SEED_OFFSET, families=families, size=cfg.image_size
    )
    words = {w: embed(w) for w in (EMPTY_WORD, *COLOUR_NAMES, *SHAPES)}
    targets = torch.empty(len(samples), g * g, table.shape[1])
    for n, s in enumerate(samples):
        cells: list[list[torch.Tensor]] = [[] for _ in range(g * g)]
        for o in s["scene"]["objects"]:
            cells[min(g - 1, int(o["y"] * g)) * g + min(g - 1, int(o["x"] * g))] += [
                words[o["colour"]],
                words[o["shape"]],
            ]
        for i, vectors in enumerate(cells):
            targets[n, i] = torch.stack(vectors).mean(0) if vectors else words[EMPTY_WORD]
    tower, projector = model.model.vision_tower, model.model.projector
    with torch.no_grad():
        feats = torch.cat(
            [
                tower(processor.image_processor([s["image"] for s in samples[i : i + 64]])["pixel_values"])
                for i in range(0, len(samples), 64)
            ]
        )
    optimizer = torch.optim.AdamW(projector.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    order = torch.Generator().manual_seed(cfg.seed)
    loss = torch.tensor(0.0)
    for _ in range(cfg.align_epochs):
        for idx in torch.randperm(len(samples), generator=order).split(64):
            loss = torch.nn.functional.mse_loss(projector(feats[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    log(
        f"warm start: aligned the projector on {len(samples)} scenes, {cfg.align_epochs} epochs (mse {loss.item():.4f})"
    )
    return {"align_loss": loss.item()}


def _lr_factor(step: int, total: int) -> float:
    warmup = max(1, total // 10)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def train_warm_start(cfg: WarmStartConfig, log=print, progress: bool = True):
    """Build the VLM from the shipped parts and run the supervised stage; returns (model, processor, stats)."""
    from tqdm.auto import tqdm

    from pgpo.vlm import load_pgpo_vlm

    t0, c0 = time.time(), time.process_time()
    torch.manual_seed(cfg.seed)
    model, processor = load_pgpo_vlm(
        image_size=cfg.image_size,
        vision_grid=cfg.vision_grid,
        seed=cfg.seed,
        vision_blocks=cfg.vision_blocks,
        language=cfg.language,
        lm_shape=cfg.lm_shape(),
    )
    samples = make_split(
        "train", cfg.n_samples, seed=cfg.seed + TRAIN_SEED_OFFSET, families=cfg.families, size=cfg.image_size
    )
    collate = SFTCollator(processor, cfg.prompt_template, cfg.system_prompt, cfg.answer_format)
    caption = SFTCollator(processor, caption_prompt=cfg.caption_prompt)
    align = align_projector(model, processor, cfg, log)
    groups = _trainable(model, cfg)
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    order = torch.Generator().manual_seed(cfg.seed)
    queue: list[int] = []
    losses = []
    model.train()
    total = cfg.caption_steps + cfg.steps
    bar = tqdm(range(total), desc="warm start", disable=not progress, leave=False)
    for step in bar:
        while len(queue) < cfg.batch_size:
            queue += torch.randperm(len(samples), generator=order).tolist()
        batch = (caption if step < cfg.caption_steps else collate)([samples[i] for i in queue[: cfg.batch_size]])
        del queue[: cfg.batch_size]
        # Each stage has its own warmup + cosine schedule (the task stage must not start at the captions' tail).
        stage_step, stage_len = (
            (step, cfg.caption_steps) if step < cfg.caption_steps else (step - cfg.caption_steps, cfg.steps)
        )
        for g, lr in zip(optimizer.param_groups, base_lrs):
            g["lr"] = lr * _lr_factor(stage_step, stage_len)
        loss = completion_loss(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % 10 == 0 or step + 1 == total:
            log(f"warm start: step {step + 1}/{total}, loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
    if cfg.train == "lora":
        _merge_lora(model)
    model.requires_grad_(True)
    model.model.vision_tower.apply_freeze()
    model.eval()
    stats = {
        **align,
        "train_loss": sum(losses) / max(1, len(losses)),
        "final_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
        "wall_seconds": time.time() - t0,
        "cpu_seconds": time.process_time() - c0,
        "threads": torch.get_num_threads(),
    }
    return model, processor, stats


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "warmstart.json").is_file()


def warm_start(cfg: WarmStartConfig = WarmStartConfig(), out_dir: str | os.PathLike | None = None, log=print) -> Path:
    """Train (or reuse the cached) warm-started demo VLM; returns its folder."""
    out = Path(out_dir) if out_dir else warmstart_dir(cfg.key())
    if _is_complete(out):
        log(f"warm start: cached at {out}")
        return out
    if not out_dir:
        check_cache_writable()  # before the minutes of training, not after
    model, processor, stats = train_warm_start(cfg, log=log)

    def save(folder: Path) -> None:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        (folder / "warmstart.json").write_text(json.dumps({**asdict(cfg), **stats}, indent=2))

    try:
        with atomic_folder(out, is_complete=_is_complete) as tmp:  # a crash never leaves a cache that looks complete
            save(tmp)
    except OSError as err:  # a full disk, a cache made read-only meanwhile: keep the trained model elsewhere
        kept = Path(tempfile.mkdtemp(prefix=f"pgpo-{out.name}-"))
        save(kept)
        log(
            f"warm start: could not write {out} ({type(err).__name__}: {err}); kept the trained warm start in {kept} "
            "instead (not cached: the next run trains it again unless it can write there)"
        )
        out = kept
    log(
        f"warm start: trained {cfg.steps} steps in {stats['wall_seconds']:.0f} s (loss {stats['final_loss']:.3f}), {out}"
    )
    return out


# ---------------------------------------------------------------------------------------------- measuring it
def evaluate_warm_start(
    model,
    processor,
    samples,
    cfg: WarmStartConfig = WarmStartConfig(),
    k: int = 8,
    temperature: float = 1.0,
    n_sampled: int | None = None,
    batch_size: int = 32,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = 0,
    captions: bool = False,
) -> dict:
    """Greedy accuracy per family and the headroom indicators of ``k`` samples at ``temperature``.

    Returns ``accuracy`` / ``per_family`` (greedy), ``completion_tokens`` (mean length of the greedy completions),
    ``format_ok`` (greedy completions in the think-then-box format), and over the first ``n_sampled`` samples (all by
    default): ``sampled_accuracy`` (mean over all samples), ``pass_at_k`` (any of the k right), ``spread`` (some
    right and some wrong: a group with reward spread) and their per-family values. With ``captions``, also
    ``caption_exact``: greedy captions (``cfg.caption_prompt``) equal to the true scene description, per family.
    """
    from pgpo.eval.generation import GenerationRequest, HFGenerator
    from pgpo.rewards import has_think_then_box

    tok = processor.tokenizer
    model.eval()

    def run(gen, chunk_samples, repeat):
        outs = []
        per_call = max(1, batch_size // repeat)
        for start in range(0, len(chunk_samples), per_call):
            chunk = chunk_samples[start : start + per_call]
            requests = [
                GenerationRequest(to_messages(s, cfg.prompt_template, cfg.system_prompt), [s["image"]])
                for s in chunk
                for _ in range(repeat)
            ]
            outs += gen.generate(requests)
        return outs

    greedy = run(HFGenerator(model, processor, temperature=0.0, max_new_tokens=max_new_tokens), samples, 1)
    correct = [check(s, o) for s, o in zip(samples, greedy)]
    lengths = [len(tok(o, add_special_tokens=False)["input_ids"]) for o in greedy]
    result = {
        "n": len(samples),
        "accuracy": sum(correct) / len(correct),
        "per_family": _per_family(samples, correct),
        "chance": sum(1 / len(s["choices"]) for s in samples) / len(samples),
        "completion_tokens": sum(lengths) / len(lengths),
        "format_ok": sum(map(has_think_then_box, greedy)) / len(greedy),
        "examples": [{"question": s["question"], "answer": s["answer"], "greedy": o} for s, o in zip(samples, greedy)][
            :8
        ],
    }
    if captions:
        collate = SFTCollator(processor, caption_prompt=cfg.caption_prompt)
        gen = HFGenerator(model, processor, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
        said = []
        for start in range(0, len(samples), batch_size):
            chunk = samples[start : start + batch_size]
            said += gen.generate([GenerationRequest(collate.messages(s), [s["image"]]) for s in chunk])
        exact = [o.strip() == describe(s) for s, o in zip(samples, said)]
        result["caption_exact"] = sum(exact) / len(exact)
        result["caption_exact_per_family"] = _per_family(samples, exact)
        result["caption_examples"] = [{"true": describe(s), "said": o} for s, o in zip(samples, said)][:8]
    if k > 0:
        sub = samples[: n_sampled or len(samples)]
        torch.manual_seed(seed)
        sampled = run(HFGenerator(model, processor, temperature=temperature, max_new_tokens=max_new_tokens), sub, k)
        hits = [sum(check(s, o) for o in sampled[i * k : (i + 1) * k]) for i, s in enumerate(sub)]
        result.update(
            k=k,
            temperature=temperature,
            n_sampled=len(sub),
            sampled_accuracy=sum(hits) / (k * len(sub)),
            pass_at_k=sum(h > 0 for h in hits) / len(sub),
            spread=sum(0 < h < k for h in hits) / len(sub),
            sampled_per_family=_per_family(sub, [h / k for h in hits]),
            pass_at_k_per_family=_per_family(sub, [h > 0 for h in hits]),
            spread_per_family=_per_family(sub, [0 < h < k for h in hits]),
        )
    return result


def _per_family(samples, values) -> dict[str, float]:
    by: dict[str, list[float]] = {}
    for s, v in zip(samples, values):
        by.setdefault(s["family"], []).append(float(v))
    return {f: sum(v) / len(v) for f, v in sorted(by.items())}


def validation_split(n: int, cfg: WarmStartConfig, seed: int = VALIDATION_SEED):
    """Samples to choose settings on: "test" images (never trained on), another seed than the held-out test split."""
    return make_split("test", n, seed=seed, families=cfg.families, size=cfg.image_size)


def held_out_split(n: int, cfg: WarmStartConfig):
    """The demo's held-out test questions: "test" images, seed :data:`TEST_SEED` whatever the run's seed (reported
    once per final setting, never used to choose one)."""
    return make_split("test", n, seed=TEST_SEED, families=cfg.families, size=cfg.image_size)


PRESET = "(default: the --model preset's)"


@dataclass
class WarmStartEvalConfig:
    """Options of ``pgpo warm-start``: train (or reuse) a warm start, then measure it.

    ``--model`` picks the demo's warm start (:data:`DEMO_WARM_STARTS`); the next fields are
    :class:`WarmStartConfig`'s (its prompts and answer format aside), each left unset to keep the preset's value."""

    model: Literal["words", "smollm2"] = field(
        default="words", metadata={"help": "the warm start of pgpo demo --model (DEMO_WARM_STARTS)"}
    )
    n_samples: int | None = field(default=None, metadata={"help": f"training questions {PRESET}"})
    steps: int | None = field(default=None, metadata={"help": f"supervised steps on the task questions {PRESET}"})
    batch_size: int | None = field(default=None, metadata={"help": f"questions per step {PRESET}"})
    learning_rate: float | None = field(default=None, metadata={"help": f"the projector's {PRESET}"})
    lm_learning_rate: float | None = field(
        default=None,
        metadata={"help": f"LoRA adapters (--train lora) or LM weights (--train lm); unused with projector {PRESET}"},
    )
    seed: int | None = field(default=None, metadata={"help": f"seed of the model, data and sampling {PRESET}"})
    image_size: int | None = field(default=None, metadata={"help": f"image side in pixels {PRESET}"})
    vision_grid: int | None = field(default=None, metadata={"help": f"image tokens per side {PRESET}"})
    vision_blocks: int | None = field(
        default=None, metadata={"help": f"MobileNetV2 blocks that run (19: all, 1280 channels, stride 32) {PRESET}"}
    )
    families: list[str] | None = field(
        default=None,
        metadata={"help": f"task families, comma- or space-separated; 'all' for every family {PRESET}"},
    )
    train: str | None = field(
        default=None,
        metadata={
            "help": "what trains: 'projector', 'lora' (+ LoRA on the LM, merged before saving) or 'lm' (+ the "
            f"whole LM) {PRESET}"
        },
    )
    language: str | None = field(
        default=None, metadata={"help": f"'smollm2' (pretrained) or 'words' (the small word LM, random) {PRESET}"}
    )
    lm_hidden_size: int | None = field(default=None, metadata={"help": f"the word LM's width {PRESET}"})
    lm_layers: int | None = field(default=None, metadata={"help": f"the word LM's layers {PRESET}"})
    lora_rank: int | None = field(default=None, metadata={"help": f"unused unless --train lora {PRESET}"})
    align_samples: int | None = field(
        default=None,
        metadata={"help": f"lexical alignment of the projector on this many scenes first (0: off) {PRESET}"},
    )
    align_epochs: int | None = field(default=None, metadata={"help": f"epochs of that alignment {PRESET}"})
    caption_steps: int | None = field(
        default=None, metadata={"help": f"captioning steps before the task steps (0: none) {PRESET}"}
    )
    caption_prompt: str | None = field(
        default=None, metadata={"help": f"the user text of the captioning steps {PRESET}"}
    )
    eval_split: Literal["val", "test"] = field(
        default="val",
        metadata={"help": "val: the validation stream, to choose settings on; test: the demo's held-out split"},
    )
    n_eval: int = field(default=192, metadata={"help": "questions answered greedily"})
    n_sampled: int = field(default=64, metadata={"help": "questions sampled k times at --temperature"})
    k: int = field(default=8, metadata={"help": "samples per question (0: greedy only)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    json: str | None = field(default=None, metadata={"help": "write the measurements to this JSON file"})
    captions: bool = field(default=False, metadata={"help": "also score greedy captions of the scenes"})

    def __post_init__(self):
        if self.families is not None:
            self.families = list(family_names(self.families))
        self.warm_start_config()  # WarmStartConfig's own checks

    def warm_start_config(self) -> WarmStartConfig:
        """The warm start these options train (or reuse): the ``--model`` preset with the options that are set."""
        shared = {f.name for f in fields(WarmStartConfig)}
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name in shared}
        values = {k: v for k, v in values.items() if v is not None}
        if "families" in values:
            values["families"] = tuple(values["families"])
        return replace(DEMO_WARM_STARTS[self.model], **values)


def measure_warm_start(args: WarmStartEvalConfig) -> dict:
    """Train (or reuse) the warm start ``args`` describes and measure it; ``args.json`` also gets the measurements."""
    cfg = args.warm_start_config()
    path = warm_start(cfg)
    from pgpo.vlm import load_pgpo_vlm

    model, processor = load_pgpo_vlm(path)
    samples = (validation_split if args.eval_split == "val" else held_out_split)(args.n_eval, cfg)
    t0 = time.time()
    res = evaluate_warm_start(
        model,
        processor,
        samples,
        cfg,
        k=args.k,
        temperature=args.temperature,
        n_sampled=args.n_sampled,
        captions=args.captions,
    )
    res["eval_seconds"] = time.time() - t0
    res["split"] = args.eval_split
    res["warm_start"] = json.loads((path / "warmstart.json").read_text())
    res["path"] = str(path)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res
