"""The trainer's scoring passes, behind TRL's kernel: :class:`Scorer`.

* :meth:`Scorer.dependency` -- visual dependency ``S`` ``[B, T]`` of a generation batch (TRL's output dict) or of one
  training micro-batch: :func:`pgpo.dependency.score_batch` with the run's :class:`pgpo.dependency.BlindPass`.
* :meth:`Scorer.sampled_logps` -- no-grad log-probs of the sampled tokens through TRL's own model call
  (``GRPOTrainer._get_per_token_logps_and_entropies``: its fused LM head, the rollout temperature, its micro-batch
  slicing of the image tensors), so the image and blind passes use one kernel; the loss terms' rollout inputs (PAPO's
  masked image) read it too.

Every pass runs dropout-free (:func:`pgpo.dependency.dropout_free`: eval mode, each module's mode restored after it),
one micro-batch at a time at the size of the mode the model was in (train or eval).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing

from pgpo.dependency import BlindPass, dropout_free, score_batch
from pgpo.text_only import IMAGE_KEYS, PER_TOKEN_KEYS

# The keyword arguments TRL's _get_per_token_logps_and_entropies takes for the image tensors.
TRL_FORWARD_KEYS = tuple(
    p
    for p in inspect.signature(GRPOTrainer._get_per_token_logps_and_entropies).parameters
    if p in IMAGE_KEYS + PER_TOKEN_KEYS
)


class Scorer:
    """The scoring passes of one ``GRPOTrainer`` (its model, arguments, state and accelerator) with one blind pass."""

    def __init__(self, trainer: GRPOTrainer, blind: BlindPass):
        self.trainer, self.blind = trainer, blind
        self._batch_size: int | None = None  # set while a scoring pass runs (scoring)

    def generator(self, *salt: int) -> torch.Generator:
        """A generator seeded by the run's seed, the step, the process and ``salt``: reproducible masks."""
        t = self.trainer
        key = (t.args.seed, t.state.global_step, t.accelerator.process_index, *salt)
        return torch.Generator().manual_seed(hash(key) % (2**63))

    @contextmanager
    def scoring(self):
        """A scoring pass: dropout-free (:func:`pgpo.dependency.dropout_free`, every module's mode restored after it);
        yields the micro-batch size of the mode the model was in before (train or eval). Nests."""
        if self._batch_size is not None:
            yield self._batch_size
            return
        model, args = self.trainer.model, self.trainer.args
        self._batch_size = args.per_device_train_batch_size if model.training else args.per_device_eval_batch_size
        try:
            with dropout_free(model):
                yield self._batch_size
        finally:
            self._batch_size = None

    def sampled_logps(self, batch: dict, logits_to_keep: int) -> torch.Tensor:
        """No-grad, dropout-free log-probs of the sampled tokens through TRL's own model call (fused LM head, rollout
        temperature), one micro-batch at a time. Batches with ``position_ids`` (the blind pass) are called directly;
        the others go through TRL's ``_get_per_token_logps_and_entropies``, which slices their image tensors."""
        t = self.trainer
        with (
            self.scoring() as size,
            torch.no_grad(),
            disable_gradient_checkpointing(t.model, t.args.gradient_checkpointing_kwargs),
        ):
            if "position_ids" not in batch:
                extra = {k: batch[k] for k in TRL_FORWARD_KEYS if k in batch}
                logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                    t, t.model, batch["input_ids"], batch["attention_mask"], logits_to_keep, size, **extra
                )
                return logps
            parts = []
            for start in range(0, batch["input_ids"].shape[0], size):
                rows = slice(start, start + size)
                sub = {k: (v[..., rows, :] if k == "position_ids" else v[rows]) for k, v in batch.items()}
                labels = sub["input_ids"].masked_fill(sub["attention_mask"] == 0, -100)
                labels[:, :-logits_to_keep] = -100
                with t.accelerator.autocast():
                    out = t.model(**sub, labels=labels, fused_lm_head=True)
                parts.append(out.log_probs[:, -logits_to_keep:].float())
            return torch.cat(parts)

    def dependency(self, inputs: dict, image_logps: torch.Tensor | None = None) -> torch.Tensor:
        """Visual dependency ``[B, T]`` of a generation batch (TRL's output dict) or of one training micro-batch;
        ``image_logps``: the image pass's log-probs when a TRL pass has them already (k3 only)."""
        batch = {k: inputs[k] for k in TRL_FORWARD_KEYS if k in inputs}
        batch["input_ids"] = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        batch["attention_mask"] = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        T = inputs["completion_ids"].shape[1]
        with self.scoring() as size:
            if self.blind.estimator != "kl":
                return self.score(batch, T, image_logps=image_logps)
            scorer = _MicroBatchScorer(self, T)
            extra = {k: batch[k] for k in TRL_FORWARD_KEYS if k in batch}
            with torch.no_grad():
                GRPOTrainer._get_per_token_logps_and_entropies(
                    self.trainer, scorer, batch["input_ids"], batch["attention_mask"], T, size, **extra
                )
            return torch.cat(scorer.scores)

    def score(self, batch: dict, logits_to_keep: int, image_logps=None) -> torch.Tensor:
        """:func:`pgpo.dependency.score_batch` with this run's blind pass and TRL's log-prob kernel."""
        logps = lambda b: self.sampled_logps(b, logits_to_keep)  # noqa: E731
        return score_batch(
            self.trainer.model, batch, logits_to_keep, self.blind, image_logps, logps, generator=self.generator(0)
        )


class _MicroBatchScorer:
    """Stands in for the model in TRL's ``_get_per_token_logps_and_entropies``, so that TRL slices the batch and its
    image tensors per micro-batch; each sliced micro-batch is scored with the exact KL (``dependency_estimator="kl"``).
    """

    def __init__(self, scorer: Scorer, logits_to_keep: int):
        self.scorer, self.logits_to_keep = scorer, logits_to_keep
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids, attention_mask, labels=None, fused_lm_head=None, **kwargs):
        kwargs.pop("output_router_logits", None)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        self.scores.append(self.scorer.score(batch, self.logits_to_keep))
        return SimpleNamespace(log_probs=input_ids.new_zeros(input_ids.shape, dtype=torch.float32), entropy=None)
