"""``PGPOTrainer``: TRL's ``GRPOTrainer`` with per-token advantages shaped by visual dependency.

What changes relative to TRL (everything else — generation, vLLM, rewards, group advantages, the clipped loss and its
aggregations, accelerate / DeepSpeed / FSDP, PEFT, checkpoints — is TRL's own code path):

1. After the rollouts are scored, the visual dependency of every completion token is computed without gradient by the
   rollout policy (:func:`pgpo.dependency.compute_visual_dependency`). When TRL runs its no-grad old-log-prob pass
   (``gradient_accumulation_steps`` not a multiple of ``steps_per_generation * num_iterations``, or vLLM importance
   sampling), PGPO piggybacks on it: the same image-conditioned forward gives TRL its old log-probs and PGPO its
   ``p_image``, so that forward is not run twice. When TRL runs no such pass and the generation batch is trained on
   once, in one micro-batch (``steps_per_generation == num_iterations == 1``), ``p_image`` comes from the training
   forward itself (a hook keeps the backbone's hidden states), and the text-only forward, the KL and the shaping run
   inside ``_compute_loss`` before TRL reads the advantages (``dependency_from_training_forward``). Otherwise PGPO runs
   its own no-grad image-conditioned forward.
2. TRL's per-sequence advantages ``[B]`` are replaced by per-token advantages ``[B, T]`` (:mod:`pgpo.shaping`); TRL's
   ``_compute_loss`` accepts ``[B, T]`` advantages as they are.
3. Metrics: dependency mean / quantiles, gated fraction, mean weight on gated / ungated tokens, and a running variance
   of the gradient norm across optimizer steps (Welford; ``grad_norm/running_var``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from types import SimpleNamespace

import torch
from transformers.utils import is_sagemaker_mp_enabled
from trl import GRPOTrainer

from pgpo import checkpoint as ckpt
from pgpo.config import PGPOConfig
from pgpo.dependency import (
    compute_visual_dependency,
    dependency_given_image_states,
    image_states_hook,
    splits_into_backbone_and_head,
)
from pgpo.inputs import build_text_only_batch, image_token_spec
from pgpo.shaping import pgpo_shape, vppo_shape
from pgpo.validation import named_reward, validate_dataset


class _DependencyScorer:
    """Stands in for the model inside TRL's ``_get_per_token_logps_and_entropies``.

    TRL slices the batch (and the image tensors) per micro-batch and calls ``model(**inputs, labels=..,
    fused_lm_head=True)``; this object receives exactly those sliced inputs, computes the visual dependency and the
    image-conditioned log-probs from one forward with the image and one text-only forward, keeps the dependency, and
    returns the log-probs in the shape TRL's fused head would.
    """

    def __init__(self, trainer: PGPOTrainer, model, logits_to_keep: int):
        self.trainer, self.model, self.logits_to_keep = trainer, model, logits_to_keep
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids, attention_mask, **kwargs):
        K = self.logits_to_keep
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        out = self.trainer._score_micro_batch(self.model, batch, K, return_logps=True)
        self.scores.append(out.scores)
        log_probs = out.logps.new_zeros(input_ids.shape[0], input_ids.shape[1] - 1)
        log_probs[:, -K:] = out.logps
        return SimpleNamespace(log_probs=log_probs, entropy=None, aux_loss=None)


class _TrainingForwardScorer:
    """Stands in for the model in TRL's training-forward call of ``_get_per_token_logps_and_entropies``.

    Runs the real forward (with gradient) unchanged, keeps the backbone's hidden states at the completion positions
    through a forward hook (detached), and then, without gradient, runs the text-only forward and the KL.
    """

    def __init__(self, trainer: PGPOTrainer, model, logits_to_keep: int):
        self.trainer, self.model, self.logits_to_keep = trainer, model, logits_to_keep
        self.scores: list[torch.Tensor] = []

    def __call__(self, input_ids, attention_mask, **kwargs):
        K, states = self.logits_to_keep, []
        handle = image_states_hook(self.model, K, states)
        try:
            outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            handle.remove()  # before backward: gradient checkpointing may run the backbone again
        if len(states) != 1:
            raise RuntimeError(f"expected one backbone forward in the training step, saw {len(states)}")
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        self.scores.append(self.trainer._score_micro_batch(self.model, batch, K, image_states=states[0]).scores)
        return outputs


class PGPOTrainer(GRPOTrainer):
    """GRPO/DAPO/Dr.GRPO (``advantage_shaping='none'``), PGPO (``'pgpo'``) or VPPO (``'vppo'``) on TRL.

    Takes exactly ``GRPOTrainer``'s arguments; ``args`` is a :class:`pgpo.config.PGPOConfig`.
    """

    def __init__(self, *args, train_dataset=None, **kwargs):
        if train_dataset is not None:
            train_dataset = validate_dataset(train_dataset)
        super().__init__(*args, train_dataset=train_dataset, **kwargs)
        if not isinstance(self.args, PGPOConfig):
            raise TypeError(f"PGPOTrainer needs a PGPOConfig, got {type(self.args).__name__}")
        self.reward_funcs = [
            f if isinstance(f, torch.nn.Module) or inspect.iscoroutinefunction(f) else named_reward(f, name)
            for f, name in zip(self.reward_funcs, self.reward_func_names)
        ]
        self._pgpo_scores: torch.Tensor | None = None
        self._pgpo_capture = False
        self._pgpo_deferred = False  # this generation batch is scored in its training forward
        self._pgpo_train_inputs: dict | None = None
        self._grad_norm_stats = {"n": 0, "mean": 0.0, "m2": 0.0}
        self._image_spec = None

    # ----------------------------------------------------------------------------------------------- dependency
    @property
    def _scores_dependency(self) -> bool:
        return self.args.advantage_shaping != "none" or self.args.log_visual_dependency

    def _text_only(self, batch: dict, logits_to_keep: int) -> dict:
        if self._image_spec is None:
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "get_base_model"):
                model = model.get_base_model()
            self._image_spec = image_token_spec(model.config)
        return build_text_only_batch(
            batch,
            logits_to_keep,
            self._image_spec,
            self._tokenizer.pad_token_id,
            mode=self.args.text_only_mode,
            noise_seed=self.state.global_step,
        )

    def _score_micro_batch(self, model, batch: dict, logits_to_keep: int, image_states=None, return_logps=False):
        """Visual dependency of one micro-batch as TRL hands it to the model (its own keywords dropped): the
        image-conditioned forward runs here unless ``image_states`` (the backbone's, from another forward) are given.
        """
        batch = {k: v for k, v in batch.items() if k not in ("labels", "fused_lm_head", "output_router_logits")}
        K = logits_to_keep
        text, mask = self._text_only(batch, K), batch["attention_mask"][:, -K:]
        options = dict(
            chunk_size=self.args.dependency_chunk_size, temperature=self.temperature, return_logps=return_logps
        )
        if image_states is None:
            return compute_visual_dependency(model, batch, text, K, mask, **options)
        return dependency_given_image_states(model, image_states, text, K, mask, **options)

    def _trl_runs_old_logps_pass(self) -> bool:
        """Mirror of the condition under which TRL computes old log-probs in ``_generate_and_score_completions``."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _can_score_in_training_forward(self) -> bool:
        """Whether ``p_image`` can come from the training forward (see ``dependency_from_training_forward``)."""
        return (
            self.args.dependency_from_training_forward
            and self.args.steps_per_generation == 1
            and self.num_iterations == 1
            and not self._trl_runs_old_logps_pass()
            and splits_into_backbone_and_head(self.model)
        )

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        inputs, self._pgpo_train_inputs = self._pgpo_train_inputs, None
        if inputs is not None:  # the training forward of a deferred batch: score it, shape, then TRL reads advantages
            scorer = _TrainingForwardScorer(self, model, logits_to_keep)
            out = super()._get_per_token_logps_and_entropies(
                scorer, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            self._shape_advantages(inputs, torch.cat(scorer.scores, dim=0), "train")
            return out
        if self._pgpo_capture and model is self.model and not kwargs.get("compute_entropy", False):
            self._pgpo_capture = False  # only the first (old-policy) pass; the reference pass comes after it
            scorer = _DependencyScorer(self, model, logits_to_keep)
            out = super()._get_per_token_logps_and_entropies(
                scorer, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
            self._pgpo_scores = torch.cat(scorer.scores, dim=0)
            return out
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )

    def _score_output(self, output: dict) -> torch.Tensor:
        """Dependency for a generation batch when TRL did not run a no-grad pass we could share."""
        prompt_completion_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        keys = (
            "pixel_values",
            "image_grid_thw",
            "num_images",
            "pixel_attention_mask",
            "spatial_shapes",
            "num_tiles",
            "image_sizes",
            "token_type_ids",
            "mm_token_type_ids",
            "image_position_ids",
        )
        extra = {k: output[k] for k in keys if k in output}
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        self._pgpo_capture = True
        with torch.no_grad():
            self._get_per_token_logps_and_entropies(
                self.model,
                prompt_completion_ids,
                attention_mask,
                output["completion_ids"].size(1),
                batch_size=batch_size,
                **extra,
            )
        return self._pgpo_scores

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        mode = "train" if self.model.training else "eval"
        unscorable = torch.isnan(rewards_per_func).all(dim=1).float().mean().item()
        self._metrics[mode]["rewards/unscorable_frac"].append(unscorable)
        return rewards_per_func

    # ----------------------------------------------------------------------------------------------- advantages
    def _generate_and_score_completions(self, inputs):
        self._pgpo_scores, self._pgpo_deferred = None, False
        self._pgpo_capture = self._scores_dependency and self._trl_runs_old_logps_pass()
        output = super()._generate_and_score_completions(inputs)
        self._pgpo_capture = False
        mode = "train" if self.model.training else "eval"

        if self.args.filter_zero_advantage:
            keep = (output["advantages"] != 0).to(output["completion_mask"].dtype)
            self._metrics[mode]["dapo/frac_filtered"].append(1.0 - keep.float().mean().item())
            output["completion_mask"] = output["completion_mask"] * keep[:, None]

        if not self._scores_dependency:
            return output
        if self._pgpo_scores is None and mode == "train" and self._can_score_in_training_forward():
            self._pgpo_deferred = True  # scored and shaped in _compute_loss
            return output
        scores = self._pgpo_scores if self._pgpo_scores is not None else self._score_output(output)
        self._pgpo_scores = None
        self._shape_advantages(output, scores, mode)
        return output

    def _compute_loss(self, model, inputs):
        if self._pgpo_deferred:
            self._pgpo_deferred = False
            self._pgpo_train_inputs = inputs  # picked up by the training forward's _get_per_token_logps_and_entropies
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._pgpo_train_inputs = None

    def _shape_advantages(self, output: dict, scores: torch.Tensor, mode: str) -> None:
        """Log the dependency and replace ``output['advantages']`` ``[B]`` by shaped per-token advantages ``[B, T]``."""
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        self._log_dependency(scores, mask, mode)
        shaping = self.args.advantage_shaping
        if shaping == "none":
            return
        if shaping == "pgpo":
            result = pgpo_shape(output["advantages"], scores, mask, self.args.pgpo_shaping_config())
        else:
            result = vppo_shape(output["advantages"], scores, mask, self.args.vppo_shaping_config())
        output["advantages"] = result.advantages.to(output["advantages"].dtype)
        self._log_shaping(result, mask, mode)

    # ----------------------------------------------------------------------------------------------- metrics
    def _gathered(self, values: torch.Tensor) -> torch.Tensor:
        """Valid values of every process (variable length), for exact global quantiles."""
        return torch.cat(self.accelerator.gather_for_metrics([values.float()], use_gather_object=True))

    def _log_dependency(self, scores: torch.Tensor, mask: torch.Tensor, mode: str) -> None:
        valid = self._gathered(scores[mask.bool()].detach().cpu())
        if valid.numel() == 0:
            return
        m = self._metrics[mode]
        m["dependency/mean"].append(valid.mean().item())
        for q in (0.5, 0.9, 0.99):
            m[f"dependency/p{int(q * 100)}"].append(torch.quantile(valid, q).item())
        m["dependency/max"].append(valid.max().item())
        # sparsity: share of the total dependency carried by the top 10% of tokens
        k = max(1, math.ceil(0.1 * valid.numel()))
        total = valid.sum().item()
        m["dependency/top10_share"].append(valid.topk(k).values.sum().item() / total if total > 0 else 0.0)

    def _log_shaping(self, result, mask: torch.Tensor, mode: str) -> None:
        valid = mask.bool()
        gate = result.gate & valid
        w = result.weights.detach().float()
        stats = torch.tensor(
            [gate.sum(), valid.sum(), (w * gate).sum(), (w * (valid & ~gate)).sum()], dtype=torch.float64
        )
        stats = self.accelerator.reduce(stats.to(self.accelerator.device), reduction="sum").cpu()
        n_gated, n_valid, w_gated, w_ungated = stats.tolist()
        m = self._metrics[mode]
        m["shaping/gated_frac"].append(n_gated / max(n_valid, 1.0))
        m["shaping/weight_gated"].append(w_gated / n_gated if n_gated else float("nan"))
        m["shaping/weight_ungated"].append(w_ungated / (n_valid - n_gated) if n_valid > n_gated else float("nan"))
        if not math.isnan(result.threshold):
            m["shaping/threshold"].append(result.threshold)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None and self.model.training and math.isfinite(float(grad_norm)):
            s = self._grad_norm_stats  # Welford's running mean / variance of the grad norm over optimizer steps
            s["n"] += 1
            delta = float(grad_norm) - s["mean"]
            s["mean"] += delta / s["n"]
            s["m2"] += delta * (float(grad_norm) - s["mean"])
            logs["grad_norm/running_mean"] = s["mean"]
            logs["grad_norm/running_var"] = s["m2"] / (s["n"] - 1) if s["n"] > 1 else 0.0
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------- checkpoints
    # Exact restore or a clear error (pgpo.checkpoint): transformers' plain resume loads the raw checkpoint keys with
    # strict=False and, for models with a key conversion (Qwen2.5-VL), restores almost none of them.
    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:  # before trainer_state.json, which Trainer writes last: a complete folder has both
            with open(os.path.join(output_dir, ckpt.PGPO_STATE_FILE), "w") as f:
                json.dump({"grad_norm_stats": self._grad_norm_stats}, f)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if model is not None or self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their own checkpoint formats
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        args, folder = self.args, resume_from_checkpoint
        ckpt.check_checkpoint_files(folder, ckpt.is_peft_model(self.model), args.process_index, args.world_size)
        step = ckpt.read_json(os.path.join(folder, ckpt.TRAINER_STATE_FILE))["global_step"]
        ckpt.check_resume_step(
            folder, step, args.gradient_accumulation_steps, args.steps_per_generation, self.num_iterations
        )
        ckpt.load_checkpoint(self.model, folder)

    def _load_best_model(self):
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or is_sagemaker_mp_enabled():
            return super()._load_best_model()
        ckpt.load_checkpoint(self.model, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        try:
            super()._load_optimizer_and_scheduler(checkpoint)
        except Exception as e:
            files = f"{os.path.join(checkpoint, 'optimizer.pt')} / {os.path.join(checkpoint, 'scheduler.pt')}"
            raise ckpt.CheckpointError(
                f"checkpoint {checkpoint}: cannot restore the optimizer and schedule from {files}: {e}"
            ) from e
        if checkpoint is None:
            return
        state = ckpt.read_pgpo_state(checkpoint)
        if state is None:  # warned: the statistics restart
            self._grad_norm_stats = {"n": 0, "mean": 0.0, "m2": 0.0}
        else:
            if not isinstance(state.get("grad_norm_stats"), dict):
                raise ckpt.unreadable(os.path.join(checkpoint, ckpt.PGPO_STATE_FILE), "has no grad_norm_stats")
            self._grad_norm_stats = state["grad_norm_stats"]

    def _load_rng_state(self, checkpoint):
        try:
            super()._load_rng_state(checkpoint)
        except Exception as e:
            name = "rng_state.pth" if self.args.world_size <= 1 else f"rng_state_{self.args.process_index}.pth"
            raise ckpt.unreadable(
                os.path.join(checkpoint, name), f"cannot be restored ({type(e).__name__}: {e})"
            ) from e
