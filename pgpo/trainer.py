"""``PGPOTrainer``: TRL's ``GRPOTrainer`` with per-token advantages shaped by visual dependency.

Everything else — generation (transformers or vLLM), rewards, group advantages, the clipped loss and its
aggregations, accelerate / DeepSpeed / FSDP, PEFT, checkpoints, logging — is TRL's own code path. What changes:

1. **Where ``log pi_img`` of the sampled tokens comes from** is decided once, at start-up, and logged
   (:func:`dependency_source`, :attr:`PGPOTrainer.dependency_source`):

   * ``"trl_old_logps"``: TRL runs its no-grad old-log-prob pass (``gradient_accumulation_steps`` not a multiple of
     ``steps_per_generation * num_iterations``, or vLLM importance sampling): its ``old_per_token_logps`` are the
     image-conditioned log-probs of the rollout policy, so PGPO only adds the blind pass, after generation.
   * ``"training_forward"`` (TRL's default configuration): TRL runs no such pass because the training forward's
     weights are the ones that sampled the batch; its detached log-probs are ``log pi_img``, and the blind pass,
     the k3 estimate and the shaping run for each micro-batch between that forward and TRL's loss (valid because
     PGPO's weights depend only on each response's own tokens).
   * ``"own_pass"``: otherwise (``dependency_estimator="kl"``, a method that normalises over the batch,
     ``dependency_from_training_forward=False``, or a policy that applies dropout while it trains, e.g. a PEFT LoRA
     with ``lora_dropout > 0``: TRL's passes run in train mode, so their log-probs carry dropout noise): PGPO runs its
     own no-grad, dropout-free image-conditioned pass after generation.

   Every pass that feeds the dependency (the image and blind passes, VPPO's perturbed image, PAPO's masked image)
   runs dropout-free, in eval mode (:func:`pgpo.dependency.dropout_free`; each module's mode is restored after it).

2. One step, top to bottom, in two TRL seams: :meth:`PGPOTrainer._generate_and_score_completions` (a generation
   batch: DAPO's rounds (:mod:`pgpo.sampling`), the loss terms' rollout inputs, then the dependency and the shaping
   unless the training forward does them) and :meth:`PGPOTrainer._compute_loss` (a micro-batch: TRL's loss plus the
   loss terms, scaled once). The scoring passes are :class:`pgpo.scoring.Scorer`, with the run's blind pass (one
   :class:`pgpo.dependency.BlindPass`): both passes' log-probs come from TRL's own model call (fused LM head, rollout
   temperature), so both sides use one kernel.
3. TRL's per-response advantages ``[B]`` become the registered shaping method's per-token ``[B, T]``
   (:mod:`pgpo.shaping`, :meth:`PGPOTrainer._shape_advantages`), which TRL's ``_compute_loss`` takes as they are.
4. Metrics (:mod:`pgpo.metrics`); faults (docs/reliability.md): inputs checked at start (:mod:`pgpo.validation`), a
   non-finite loss or gradient norm raises ``FloatingPointError`` naming the step before the optimizer applies it
   (:func:`pgpo.validation.check_loss`, :func:`~pgpo.validation.check_grad_norm`), batches mixing rows with and without
   an image train (a text-only row's dependency is 0); a checkpoint restores exactly or names its file
   (:mod:`pgpo.checkpoint`).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import warnings
from types import SimpleNamespace

import torch
from transformers.utils import is_sagemaker_mp_enabled
from trl import GRPOTrainer

from pgpo import checkpoint as ckpt
from pgpo import metrics
from pgpo.config import PGPOConfig
from pgpo.dependency import BlindPass, dropout_sites, unwrap
from pgpo.loss_terms import LossContext, LossTerms, Rollouts, loss_mask
from pgpo.models.load import reference_is_a_copy
from pgpo.rewards import check_group_statistics
from pgpo.run_folder import Run, claim_run_folder, mark_checkpoint, model_name, run_settings
from pgpo.sampling import trainer_sampler
from pgpo.scoring import Scorer
from pgpo.text_only import allow_text_only_micro_batches, black_pixel, image_token_spec, zero_text_only_rows
from pgpo.validation import (
    check_for_processor,
    check_free_space,
    check_grad_norm,
    check_loss,
    check_output_dir,
    named_reward,
    validate_dataset,
)

logger = logging.getLogger(__name__)
# TRL 1.16 reads transformers' deprecated `is_gradient_checkpointing` alias inside its own calls
# (trl.models.utils.disable_gradient_checkpointing): a notice about TRL's code, not the user's, so it is not shown.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)

DEPENDENCY_SOURCES = ("none", "trl_old_logps", "training_forward", "own_pass")


def dependency_source(args: PGPOConfig, *, dropout: bool, trl_old_logps_pass: bool) -> str:
    """Where ``log pi_img`` comes from (module docstring, point 1): the plan, decided once per run."""
    if not args.scores_dependency:
        return "none"
    if args.dependency_estimator == "kl" or dropout:
        return "own_pass"  # the KL needs both full distributions; TRL's train-mode passes carry dropout noise
    if trl_old_logps_pass:
        return "trl_old_logps"
    if args.dependency_from_training_forward and args.shaping.per_response:
        return "training_forward"
    return "own_pass"


def _append(store: dict, prefix: str, values: dict[str, float]) -> None:
    """Metrics under ``prefix/`` in TRL's per-mode store (averaged over the logging window)."""
    for key, value in values.items():
        store[f"{prefix}/{key}"].append(value)


class PGPOTrainer(GRPOTrainer):
    """GRPO / DAPO / Dr.GRPO (``advantage_shaping='none'``), PGPO (``'pgpo'``) or VPPO (``'vppo'``) on TRL.

    Takes exactly ``GRPOTrainer``'s arguments; ``args`` is a :class:`pgpo.config.PGPOConfig`.
    """

    def __init__(self, *args, train_dataset=None, **kwargs):
        # Start-up checks (pgpo.validation), before the model is loaded and before any step.
        config = kwargs.get("args", args[2] if len(args) > 2 else None)
        check_output_dir(getattr(config, "output_dir", None))
        processor = kwargs.get("processing_class")
        model = kwargs.get("model", args[0] if args else None)
        if train_dataset is not None:
            train_dataset = validate_dataset(
                train_dataset, processor=processor, model=model if isinstance(model, torch.nn.Module) else None
            )
        with reference_is_a_copy(model, config, kwargs.get("peft_config")):
            super().__init__(*args, train_dataset=train_dataset, **kwargs)
        if train_dataset is not None and processor is None:  # TRL loaded the processor: its checks now
            check_for_processor(train_dataset, self.processing_class, self.model)
        if not isinstance(self.args, PGPOConfig):
            raise TypeError(f"PGPOTrainer needs a PGPOConfig, got {type(self.args).__name__}")
        check_free_space(self.args.output_dir, self.model, self.args)  # the model is loaded (and PEFT-wrapped) now
        allow_text_only_micro_batches(self.accelerator.unwrap_model(self.model))
        self.reward_funcs = [
            f if isinstance(f, torch.nn.Module) or inspect.iscoroutinefunction(f) else named_reward(f, name)
            for f, name in zip(self.reward_funcs, self.reward_func_names)
        ]
        # The plan: the shaping method, the blind pass, where log pi_img comes from, the loss terms, DAPO's sampling.
        self._shaping, self._shaping_config = self.args.shaping, self.args.shaping_config()
        self._image_spec = self._read_image_spec()
        image_processor = getattr(self.processing_class, "image_processor", None)
        blind = BlindPass.from_config(
            self.args,
            spec=self._image_spec,
            pad_token_id=self._tokenizer.pad_token_id or 0,
            black=black_pixel(image_processor) if image_processor is not None else torch.zeros(3),
        )
        self._scorer = Scorer(self, blind)  # the scoring passes, through TRL's log-prob kernel (pgpo.scoring)
        self.dropout_sites = dropout_sites(self.model)  # what drops while the policy trains ([]: nothing)
        self.dependency_source = self._choose_dependency_source()
        logger.info(
            "PGPO: advantage_shaping=%s, %s, p_image from %s; every scoring pass runs dropout-free (eval mode)%s",
            self.args.advantage_shaping,
            blind.describe(),
            self.dependency_source,
            self._dropout_note(),
        )
        self._loss_terms = LossTerms.from_config(self.args)
        self._sampler = self._build_sampler() if self.args.dynamic_sampling else None
        self._grad_norm_stats = metrics.RunningMoments()
        self._forward: SimpleNamespace | None = None  # the micro-batch whose training forward is in progress

    # ----------------------------------------------------------------------------------------------- the plan
    def _read_image_spec(self):
        try:
            return image_token_spec(unwrap(self.model).config)
        except ValueError as err:
            if self.args.scores_dependency:
                raise ValueError(
                    f"advantage_shaping={self.args.advantage_shaping!r} / log_visual_dependency score visual "
                    f"dependency, which needs a vision-language model: {err}"
                ) from None
            return None

    def _trl_runs_old_logps_pass(self) -> bool:
        """Mirror of the condition under which TRL computes old log-probs in ``_generate_and_score_completions``."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or (
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    def _choose_dependency_source(self) -> str:
        return dependency_source(
            self.args, dropout=bool(self.dropout_sites), trl_old_logps_pass=self._trl_runs_old_logps_pass()
        )

    def _dropout_note(self) -> str:
        """What the start-up log says about dropout."""
        if not self.dropout_sites or self.dependency_source == "none":
            return ""
        names = ", ".join(self.dropout_sites[:2]) + (", ..." if len(self.dropout_sites) > 2 else "")
        return (
            f"; the policy applies dropout while it trains ({len(self.dropout_sites)} modules: {names}), so log "
            "p_image is taken from PGPO's own dropout-free pass, not from TRL's train-mode forward (TRL's "
            "disable_dropout=True removes nn.Dropout, LoRA's included, and restores the cheaper source)"
        )

    def _build_sampler(self):
        """DAPO's dynamic sampling (:func:`pgpo.sampling.trainer_sampler`): one round is TRL's own generation."""
        return trainer_sampler(self, super()._generate_and_score_completions, self._tokenizer.pad_token_id or 0)

    # ----------------------------------------------------------------------------------------------- one step
    def _generate_and_score_completions(self, inputs):
        """A generation batch: TRL's rollouts, rewards and advantages (DAPO's rounds until only kept groups remain,
        with dynamic sampling), the loss terms' rollout inputs, then the dependency and the shaping (unless the source
        is each micro-batch's training forward)."""
        mode = "train" if self.model.training else "eval"
        if self._sampler is not None and mode == "train":
            output, inputs = self._dynamic_sample(inputs)
        else:
            output = super()._generate_and_score_completions(inputs)
        output.update(self._loss_terms.rollout_inputs(self._rollouts(output, inputs)))
        if self.dependency_source in ("trl_old_logps", "own_pass"):
            self._shape_advantages(output, self._scorer.dependency(output, self._image_logps(output)), mode)
        return output

    def _compute_loss(self, model, inputs):
        """One micro-batch: TRL's loss (its training forward shapes the advantages first when that is the source),
        plus the loss terms, scaled once for gradient accumulation."""
        forward = self._forward = SimpleNamespace(inputs=inputs, logps=None)
        try:
            loss = super()._compute_loss(model, inputs)
        finally:
            self._forward = None
        if self._loss_terms:
            loss = loss + self._loss_terms_value(forward.logps, inputs)
        return check_loss(loss, self.state.global_step + 1)

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        out = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        forward, self._forward = self._forward, None  # the first call inside _compute_loss: the training forward
        if forward is not None:
            forward.logps = out[0]
            # Its detached log-probs are log pi_img. A micro-batch trained twice in one accumulation window
            # (num_iterations > 1 with no old-log-prob pass) is shaped already.
            if self.dependency_source == "training_forward" and forward.inputs["advantages"].dim() == 1:
                mode = "train" if self.model.training else "eval"
                self._shape_advantages(forward.inputs, self._scorer.dependency(forward.inputs, out[0].detach()), mode)
        return out

    def _loss_terms_value(self, logps: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The registered loss terms (:mod:`pgpo.loss_terms`) on one micro-batch, divided by the gradient-accumulation
        steps TRL divides its own loss by; each term is logged as it returned it."""
        mode = "train" if self.model.training else "eval"
        value, logs = self._loss_terms(LossContext(logps=logps, mask=loss_mask(inputs), inputs=inputs))
        _append(self._metrics[mode], "loss_terms", logs)
        return value / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)

    def _dynamic_sample(self, inputs: list[dict]) -> tuple[dict, list[dict]]:
        """Rounds of TRL's generation until the batch holds only kept groups (:mod:`pgpo.sampling`); returns the merged
        output and its input rows."""
        output, rows, logs = self._sampler.sample_batch(inputs)
        _append(self._metrics["train"], "dynamic_sampling", logs)
        return output, rows

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._sampler is not None:  # gathered over processes: the dynamic-sampling filter reads them
            self._sampler.rewards_of_last_round.record(rewards_per_func)
        mode = "train" if self.model.training else "eval"
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        check_group_statistics(rewards_per_func, self.reward_weights, num_generations, self.reward_func_names)
        unscorable = torch.isnan(rewards_per_func).all(dim=1).float().mean().item()
        self._metrics[mode]["rewards/unscorable_frac"].append(unscorable)
        return rewards_per_func

    def _shape_advantages(self, batch: dict, scores: torch.Tensor, mode: str) -> None:
        """PGPO's own lines: log the dependency and replace ``batch['advantages']`` ``[B]`` by the method's per-token
        ``[B, T]``."""
        scores = zero_text_only_rows(scores, batch["prompt_ids"], batch["prompt_mask"], self._image_spec)
        mask = loss_mask(batch)
        self._log_dependency(scores, mask, mode)
        if self._shaping.name == "none":
            return
        result = self._shaping.fn(batch["advantages"], scores, mask, self._shaping_config)
        batch["advantages"] = result.advantages.to(batch["advantages"].dtype)
        self._log_shaping(result, mask, mode)

    # ----------------------------------------------------------------------------------------------- scoring
    def _rollouts(self, output: dict, rows: list[dict]) -> Rollouts:
        scorer = self._scorer
        return Rollouts(
            output, rows, self.args, self.processing_class, self.num_generations, scorer.sampled_logps, scorer.generator
        )

    def _image_logps(self, output: dict) -> torch.Tensor | None:
        return output.get("old_per_token_logps") if self.dependency_source == "trl_old_logps" else None

    def generate_and_score(self, rows: list[dict]) -> dict:
        """One generation batch as training sees it: rollouts of ``rows`` (each prompt repeated ``num_generations``
        times), rewards, advantages (shaped when the source is not ``training_forward``) -- TRL's output dict."""
        return self._generate_and_score_completions(rows)

    def visual_dependency(self, inputs: dict) -> torch.Tensor:
        """``S`` ``[B, T]`` of a generation batch (the dict :meth:`generate_and_score` returns), with this run's
        estimator and blind pass, scored by the current weights, dropout-free."""
        if self._image_spec is None:
            raise ValueError("visual dependency needs a vision-language model (no image token id in its config)")
        return self._scorer.dependency(inputs, self._image_logps(inputs))

    # ----------------------------------------------------------------------------------------------- metrics
    def _gathered(self, values: torch.Tensor) -> torch.Tensor:
        """Valid values of every process (variable length), for exact global quantiles."""
        return torch.cat(self.accelerator.gather_for_metrics([values.float()], use_gather_object=True))

    def _log_dependency(self, scores: torch.Tensor, mask: torch.Tensor, mode: str) -> None:
        valid = self._gathered(scores[mask.bool()].detach().cpu())
        if valid.numel():
            _append(self._metrics[mode], "dependency", metrics.dependency_summary(valid))

    def _log_shaping(self, result, mask: torch.Tensor, mode: str) -> None:
        sums = metrics.gate_sums(result.weights, result.gate, mask)
        sums = self.accelerator.reduce(sums.to(self.accelerator.device), reduction="sum").cpu()
        _append(self._metrics[mode], "shaping", metrics.gate_summary(sums))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        grad_norm = logs.get("grad_norm")
        if grad_norm is not None and self.model.training and math.isfinite(float(grad_norm)):
            self._grad_norm_stats.update(float(grad_norm))  # over optimizer steps
            logs["grad_norm/running_mean"] = self._grad_norm_stats.mean
            logs["grad_norm/running_var"] = self._grad_norm_stats.variance
        super().log(logs, start_time)

    # ----------------------------------------------------------------------------------------------- mixed batches
    def _generate(self, prompts):
        """TRL marks a text-only row's images as None, which its processor call rejects: they become ``[]``."""
        out = super()._generate(prompts)
        # (prompt_ids, completion_ids, tool_mask, completions, logprobs, extra_fields, images, tool_images)
        images = out[6] if isinstance(out, tuple) and len(out) == 8 else None
        if images is not None and any(x is None for x in images):
            out = (*out[:6], [[] if x is None else x for x in images], *out[7:])
        return out

    # ----------------------------------------------------------------------------------------------- numerics
    def _get_grad_norm(self, model, grad_norm=None):
        """transformers' gradient norm (after clipping, if any), checked before ``optimizer.step()`` applies it."""
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        fp16_scaler = getattr(self.accelerator, "scaler", None) is not None or (
            self.is_deepspeed_enabled and self.args.fp16
        )  # fp16 loss scaling: an inf/NaN gradient is an expected overflow, and the scaler skips that step
        step, deepspeed = self.state.global_step + 1, self.is_deepspeed_enabled
        return check_grad_norm(grad_norm, step, deepspeed=deepspeed, loss_scaling=fp16_scaler)

    # ----------------------------------------------------------------------------------------------- run folder
    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """transformers' ``train``, in an ``output_dir`` that belongs to this run (:mod:`pgpo.run_folder`): a fresh
        run into a non-empty folder, or a resume under other settings, is refused before anything is written."""
        if self.is_world_process_zero():
            self.run = claim_run_folder(
                self.args.output_dir,
                Run(model_name(self.model), list(self.reward_func_names), run_settings(self.args)),
                resume=resume_from_checkpoint,
                overwrite=self.args.overwrite_output_dir,
                save_total_limit=self.args.save_total_limit,
            )
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        run = getattr(self, "run", None)
        if run is not None and self.args.should_save:  # the checkpoint is pgpo's (rotation may delete it), of this run
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            mark_checkpoint(folder, run)

    # ----------------------------------------------------------------------------------------------- checkpoints
    # Exact restore or a clear error (pgpo.checkpoint): transformers' plain resume loads the raw checkpoint keys with
    # strict=False and, for models with a key conversion (Qwen2.5-VL), restores almost none of them.
    def _save_optimizer_and_scheduler(self, output_dir):
        super()._save_optimizer_and_scheduler(output_dir)
        if self.args.should_save:  # before trainer_state.json, which Trainer writes last: a complete folder has both
            refill = self._sampler.refill.state_dict() if self._sampler is not None else None
            ckpt.write_pgpo_state(output_dir, self._grad_norm_stats.state_dict(), refill)

    def save_model(self, output_dir=None, _internal_call=False):
        """transformers' ``save_model``; an ``OSError`` (a full disk, say) also says where the last checkpoint is."""
        try:
            super().save_model(output_dir, _internal_call)
        except OSError as err:
            strategy = getattr(self.args.save_strategy, "value", self.args.save_strategy)
            raise ckpt.save_failure(err, output_dir, self.args.output_dir, self.state.global_step, strategy) from err

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if model is not None or self.is_fsdp_enabled or self.is_deepspeed_enabled:  # their own checkpoint formats
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        ckpt.resume_weights(self.model, resume_from_checkpoint, self.args, self.num_iterations)

    def _load_best_model(self):
        if self.is_fsdp_enabled or self.is_deepspeed_enabled or is_sagemaker_mp_enabled():
            return super()._load_best_model()
        ckpt.load_checkpoint(self.model, self.state.best_model_checkpoint)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with ckpt.restoring_optimizer(checkpoint):
            super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        state = ckpt.read_pgpo_state(checkpoint) or {"grad_norm_stats": {}}  # None: warned, the statistics restart
        self._grad_norm_stats = metrics.RunningMoments(**state["grad_norm_stats"])
        if self._sampler is not None and "refill" in state:
            self._sampler.refill.load_state_dict(state["refill"])

    def _load_rng_state(self, checkpoint):
        with ckpt.restoring_rng(checkpoint, self.args.world_size, self.args.process_index):
            super()._load_rng_state(checkpoint)
