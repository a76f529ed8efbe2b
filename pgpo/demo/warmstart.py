"""Warm start of the demo VLM: a short supervised stage so that RL starts from non-zero but imperfect accuracy.

The projector learns to map MobileNetV2 features into SmolLM2's embedding space and the LM learns the answer format,
from (image, question, short answer) triples of :mod:`pgpo.tasks`. transformers' ``Trainer`` runs the loop; the
loss is the usual next-token cross-entropy on the answer tokens only (prompt and padding are ``-100``). The result is
saved with ``save_pretrained`` in a cache folder keyed by every setting, so ``pgpo demo`` runs it once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pgpo.paths import atomic_folder, warmstart_dir
from pgpo.tasks import make_split
from pgpo.tasks.hf import DEFAULT_PROMPT_TEMPLATE, to_messages

DEMO_FAMILIES = ("count", "compare", "largest", "shape", "exists")


@dataclass(frozen=True)
class WarmStartConfig:
    n_samples: int = 1024
    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    seed: int = 0
    image_size: int = 64
    vision_grid: int = 2
    # The families a 2x2 grid of pooled MobileNetV2 features can answer (colour, amount, shape); spatial / bars /
    # clock need finer spatial detail than 4 image tokens carry.
    families: tuple[str, ...] = DEMO_FAMILIES
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    # The supervised answer phrase: a few words around the answer, so that a completion has tokens that need the
    # image (the answer) and tokens that do not ("The answer is"): what PGPO's gate separates.
    answer_format: str = "The answer is {answer}."
    # Like LLaVA's first stage: only the projector learns (the LM stays as shipped), which is ~2x cheaper per step.
    train_lm: bool = False

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


class SFTCollator:
    """(image, question, answer) samples -> ``input_ids``/``attention_mask``/``pixel_values``/``labels``."""

    def __init__(self, processor, prompt_template: str, answer_format: str = "{answer}"):
        self.processor, self.template, self.answer_format = processor, prompt_template, answer_format
        self.end = processor.tokenizer.eos_token

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        tok = self.processor.tokenizer
        prompts = [
            self.processor.apply_chat_template(to_messages(s, self.template), add_generation_prompt=True)
            for s in samples
        ]
        full = [p + self.answer_format.format(answer=s["answer"]) + self.end for p, s in zip(prompts, samples)]
        batch = self.processor(
            images=[[s["image"]] for s in samples], text=full, padding=True, return_tensors="pt", padding_side="right"
        )
        n_prompt = [
            len(tok(self.processor.expand_image_tokens(p), add_special_tokens=False)["input_ids"]) for p in prompts
        ]
        labels = batch["input_ids"].clone()
        labels[batch["attention_mask"] == 0] = -100
        for i, n in enumerate(n_prompt):
            labels[i, :n] = -100
        batch["labels"] = labels
        return dict(batch)


def warm_start(cfg: WarmStartConfig = WarmStartConfig(), out_dir: str | os.PathLike | None = None, log=print) -> Path:
    """Train (or reuse the cached) warm-started demo VLM; returns its folder."""
    from transformers import Trainer, TrainingArguments

    from pgpo.vlm import load_pgpo_vlm

    out = Path(out_dir) if out_dir else warmstart_dir(cfg.key())
    if _is_complete(out):
        log(f"warm start: cached at {out}")
        return out
    torch.manual_seed(cfg.seed)
    model, processor = load_pgpo_vlm(image_size=cfg.image_size, vision_grid=cfg.vision_grid, seed=cfg.seed)
    samples = make_split("train", cfg.n_samples, seed=cfg.seed + 1000, families=cfg.families, size=cfg.image_size)
    args = TrainingArguments(
        output_dir=str(out.with_name(out.name + ".trainer")),
        use_cpu=True,
        per_device_train_batch_size=cfg.batch_size,
        max_steps=cfg.steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, cfg.steps // 10),
        weight_decay=0.0,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        seed=cfg.seed,
        dataloader_num_workers=0,
    )
    if not cfg.train_lm:
        for p in model.model.language_model.parameters():
            p.requires_grad_(False)
    model.train()
    trainer = Trainer(
        model=model, args=args, train_dataset=samples, data_collator=SFTCollator(processor, cfg.prompt_template)
    )
    result = trainer.train()
    model.eval()
    for p in model.model.language_model.parameters():
        p.requires_grad_(True)
    with atomic_folder(out, is_complete=_is_complete) as tmp:  # a crash never leaves a cache that looks complete
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "warmstart.json").write_text(json.dumps({**asdict(cfg), "train_loss": result.training_loss}, indent=2))
    log(f"warm start: trained {cfg.steps} steps (loss {result.training_loss:.3f}), saved to {out}")
    return out


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "warmstart.json").is_file()
