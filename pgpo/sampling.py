"""DAPO's dynamic sampling with refill ("online filtering"), on top of TRL's generation.

TRL has no dynamic sampling that refills the batch (its docs say so; PR #3758 was closed). DAPO, EasyR1 and verl
do: after a generation batch is scored, the groups (a prompt's ``G`` rollouts) whose mean reward is not strictly
inside ``(low, high)`` are dropped — they have (almost) no reward spread, so (almost) no advantage — and more groups are
generated from further prompts until the batch is full, up to ``max_sampling_rounds``; the result is truncated to the
batch size. EasyR1 (the paper's code base) filters on the mean of one reward key ("overall" by default, the weighted
total), bounds 0.01 / 0.99, 20 rounds, and raises when the rounds run out.

Here, on TRL (:class:`DynamicSampler`):

* Every round is one call of TRL's own ``_generate_and_score_completions`` (transformers or vLLM generation, rewards,
  group advantages), so everything TRL does still happens, once per round.
* The keep decision of every group is computed from the rewards TRL gathered over all processes, so every process
  agrees on it; a group never straddles two processes (checked at start: ``per_device_train_batch_size *
  steps_per_generation`` must be a multiple of ``num_generations``). Each process keeps its own kept groups; every
  process runs the same number of rounds (the loop ends when the process with the fewest kept groups is full), so
  TRL's collectives and vLLM calls stay in step.
* Refill prompts come from an independent, seeded shuffle of the training set (:class:`RefillStream`, seed
  ``args.seed + 1``, a new permutation per pass): TRL's own dataloader cannot be advanced from inside a step. Its
  position is saved in checkpoints.
* When the rounds run out (``dynamic_sampling_fallback``): ``"raise"`` (EasyR1's behaviour; the default), or
  ``"fill"``: the missing slots are filled with filtered groups (advantage ~0), counted in
  ``dynamic_sampling/filled_frac`` — the batch is never silently smaller.
* ``num_items_in_batch`` (the token count DAPO's loss divides by) is recomputed on the kept batch.

The pieces that do not need a model are pure functions: :func:`keep_groups`, :func:`select_rows`,
:func:`concat_outputs`, :func:`filter_key`. :func:`trainer_sampler` wires a :class:`DynamicSampler` to a TRL trainer
(the trainer's reward hook records each round's rewards in :class:`RoundRewards`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Keys of TRL's generation output, by how they are laid out along the sequence.
PROMPT_KEYS = ("prompt_ids", "prompt_mask")  # [B, P], left-padded
COMPLETION_KEYS = (  # [B, C], right-padded
    "completion_ids",
    "completion_mask",
    "old_per_token_logps",
    "ref_per_token_logps",
    "sampling_per_token_logps",
    "importance_sampling_ratio",
    "tool_mask",
)
FULL_SEQUENCE_KEYS = ("mm_token_type_ids", "token_type_ids")  # [B, P + C]


def keep_groups(rewards: torch.Tensor, num_generations: int, low: float, high: float) -> torch.Tensor:
    """Bool ``[N / G]``: groups whose mean reward is strictly inside ``(low, high)``. ``NaN`` rewards (unscorable
    completions) are left out of the mean; a group with no scorable completion is dropped."""
    if rewards.dim() != 1 or rewards.numel() % num_generations:
        raise ValueError(f"rewards must be [N] with N a multiple of {num_generations}, got {tuple(rewards.shape)}")
    mean = torch.nanmean(rewards.view(-1, num_generations).double(), dim=1)
    return (mean > low) & (mean < high)


def _pad(t: torch.Tensor, width: int, value, left: bool) -> torch.Tensor:
    missing = width - t.shape[1]
    if missing <= 0:
        return t
    pad = t.new_full((t.shape[0], missing, *t.shape[2:]), value)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def _rows(value, rows: list[int]):
    if isinstance(value, torch.Tensor):
        return value if value.dim() == 0 else value[rows]
    return [value[i] for i in rows]


def select_rows(output: dict, rows: list[int]) -> dict:
    """The given rows of a TRL generation output whose ``pixel_values`` / ``image_grid_thw`` are per-sample lists
    (``trl.trainer.utils.split_pixel_values_by_grid``). 0-dim tensors are kept as they are."""
    return {key: _rows(value, rows) if value is not None else None for key, value in output.items()}


def concat_outputs(outputs: list[dict], pad_token_id: int) -> dict:
    """Concatenate split TRL generation outputs of several rounds (widths may differ): prompts re-padded on the
    left, completions and per-token tensors on the right, per-sample lists joined. 0-dim tensors are dropped (the
    caller recomputes ``num_items_in_batch``)."""
    if len(outputs) == 1:
        return {k: v for k, v in outputs[0].items() if not (isinstance(v, torch.Tensor) and v.dim() == 0)}
    P = max(o["prompt_ids"].shape[1] for o in outputs)
    C = max(o["completion_ids"].shape[1] for o in outputs)
    merged = {}
    for key in outputs[0]:
        present = [o[key] for o in outputs if key in o]
        if present[0] is None or any(isinstance(v, torch.Tensor) and v.dim() == 0 for v in present):
            continue  # 0-dim values: absent from already-merged rounds (the "fill" fallback), recomputed anyway
        if len(present) < len(outputs):
            raise KeyError(f"concat_outputs: {key!r} is missing from some rounds' generation outputs")
        values = present
        if key in PROMPT_KEYS:
            fill = pad_token_id if key == "prompt_ids" else 0
            merged[key] = torch.cat([_pad(v, P, fill, left=True) for v in values])
        elif (
            key in COMPLETION_KEYS
            and values[0].dim() >= 2
            and values[0].shape[1] == outputs[0]["completion_ids"].shape[1]
        ):
            fill = pad_token_id if key == "completion_ids" else 0
            merged[key] = torch.cat([_pad(v, C, fill, left=False) for v in values])
        elif key in FULL_SEQUENCE_KEYS:
            parts = []
            for o, v in zip(outputs, values):
                p = o["prompt_ids"].shape[1]
                parts.append(torch.cat([_pad(v[:, :p], P, 0, left=True), _pad(v[:, p:], C, 0, left=False)], dim=1))
            merged[key] = torch.cat(parts)
        elif isinstance(values[0], torch.Tensor):
            merged[key] = torch.cat(values)
        else:
            merged[key] = [x for v in values for x in v]
    return merged


class RefillStream:
    """Further prompts for refill rounds: a seeded shuffle of the dataset (a new permutation per pass), cut into
    global chunks of ``prompts_per_round`` prompts; each process takes its own consecutive slice, each prompt
    repeated ``num_generations`` times (TRL's layout of a generation batch)."""

    def __init__(self, dataset, num_generations: int, prompts_per_round: int, num_processes: int, rank: int, seed: int):
        if prompts_per_round % num_processes:
            raise ValueError(f"{prompts_per_round} prompts per round do not split over {num_processes} processes")
        self.dataset, self.G, self.per_round = dataset, num_generations, prompts_per_round
        self.num_processes, self.rank, self.seed = num_processes, rank, seed
        self.epoch, self.position = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        gen = torch.Generator().manual_seed(self.seed + 1000003 * self.epoch)
        return torch.randperm(len(self.dataset), generator=gen).tolist()

    def next_indices(self) -> list[int]:
        """The global prompt indices of the next round (the same on every process)."""
        out = []
        while len(out) < self.per_round:
            if self.position >= len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = self._order[self.position : self.position + self.per_round - len(out)]
            out += take
            self.position += len(take)
        return out

    def next_rows(self) -> list[dict]:
        """This process's rows of the next round, each prompt repeated ``G`` times."""
        indices = self.next_indices()
        local = len(indices) // self.num_processes
        mine = indices[self.rank * local : (self.rank + 1) * local]
        return [self.dataset[i] for i in mine for _ in range(self.G)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation()


@dataclass
class SamplingStats:
    rounds: int = 0
    generated_groups: int = 0  # over all processes
    kept_groups: int = 0  # over all processes, before truncation
    filled_groups: int = 0  # this process, by the "fill" fallback
    local_groups: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def kept_frac(self) -> float:
        return self.kept_groups / max(self.generated_groups, 1)


class DynamicSampler:
    """Runs generation rounds until every process has ``local_groups`` kept groups (see the module docstring).

    Args:
        generate: ``rows -> output``: TRL's ``_generate_and_score_completions`` (one round).
        rewards_of_last_round: ``() -> [N_global]`` rewards of the round just generated (the filter key).
        gather: ``tensor -> tensor`` concatenated over processes (``accelerator.gather``).
        split / unsplit: TRL's ``split_pixel_values_by_grid`` / ``unsplit_pixel_values_by_grid``.
    """

    def __init__(
        self,
        *,
        generate,
        rewards_of_last_round,
        gather,
        split,
        unsplit,
        refill: RefillStream,
        rank: int,
        num_generations: int,
        low: float,
        high: float,
        max_rounds: int,
        fallback: str,
        pad_token_id: int,
    ):
        self.generate, self.rewards_of_last_round, self.gather = generate, rewards_of_last_round, gather
        self.split, self.unsplit, self.refill, self.rank = split, unsplit, refill, rank
        self.G, self.low, self.high, self.max_rounds = num_generations, low, high, max_rounds
        self.fallback, self.pad_token_id = fallback, pad_token_id

    def sample(self, rows: list[dict]) -> tuple[dict, SamplingStats, list[dict]]:
        """``(output, stats, rows)``: a full generation output of ``len(rows)`` completions from kept groups only
        (or filled, see ``fallback``) in TRL's merged layout, without ``num_items_in_batch`` (the caller sets it),
        and the input rows of those completions."""
        n_local = len(rows)
        need = n_local // self.G
        stats = SamplingStats(local_groups=need)
        kept: list[dict] = []  # split outputs of kept groups, in order
        dropped: list[dict] = []  # split outputs of dropped groups (for the "fill" fallback)
        n_kept = 0
        while True:
            stats.rounds += 1
            output = self.split(self.generate(rows))
            output["_rows"] = list(rows)
            rewards = self.rewards_of_last_round()
            keep = keep_groups(rewards, self.G, self.low, self.high)
            local = keep[self.rank * need : (self.rank + 1) * need]  # this process's groups of the round
            stats.generated_groups += keep.numel()
            stats.kept_groups += int(keep.sum())
            keep_rows = [g * self.G + j for g in range(need) if local[g] for j in range(self.G)]
            drop_rows = [g * self.G + j for g in range(need) if not local[g] for j in range(self.G)]
            if keep_rows:
                kept.append(select_rows(output, keep_rows))
                n_kept += len(keep_rows) // self.G
            if drop_rows:
                dropped.append(select_rows(output, drop_rows))
            fewest = int(self.gather(torch.tensor([n_kept], device=rewards.device)).min())
            if fewest >= need:
                break
            if stats.rounds >= self.max_rounds:
                if self.fallback == "raise":
                    raise RuntimeError(
                        f"dynamic sampling: after {stats.rounds} rounds only {stats.kept_groups} of "
                        f"{stats.generated_groups} groups ({stats.kept_frac:.0%}) had a mean reward strictly inside "
                        f"({self.low}, {self.high}); a process needs {need}. Raise max_sampling_rounds, widen "
                        "dynamic_sampling_low/high, check the reward function, or set dynamic_sampling_fallback='fill'"
                    )
                missing = need - n_kept
                if missing > 0:
                    fill = concat_outputs(dropped, self.pad_token_id)
                    kept.append(
                        select_rows(fill, list(range(min(missing, len(fill["advantages"]) // self.G) * self.G)))
                    )
                    stats.filled_groups = missing
                break
            rows = self.refill.next_rows()
        merged = concat_outputs(kept, self.pad_token_id)
        merged = select_rows(merged, list(range(n_local)))  # truncate to the batch size (whole surplus groups)
        if len(merged["advantages"]) != n_local:
            raise RuntimeError(f"dynamic sampling produced {len(merged['advantages'])} rows, expected {n_local}")
        kept_rows = merged.pop("_rows")
        return self.unsplit(merged), stats, kept_rows

    def sample_batch(self, rows: list[dict]) -> tuple[dict, list[dict], dict[str, float]]:
        """:meth:`sample` for a trainer: the output with ``num_items_in_batch`` (the tokens DAPO's loss divides by)
        recounted on the kept batch over all processes, its input rows, and the metrics (``dynamic_sampling/*``)."""
        output, stats, rows = self.sample(rows)
        mask = output["completion_mask"]
        mask = mask * output["tool_mask"] if "tool_mask" in output else mask
        output["num_items_in_batch"] = self.gather(mask.sum()).sum()
        filled = self.gather(torch.tensor([stats.filled_groups], device=mask.device))
        return (
            output,
            rows,
            {
                "rounds": float(stats.rounds),
                "kept_frac": stats.kept_frac,
                "prompts_consumed": float(stats.generated_groups),
                "filled_frac": filled.sum().item() / max(stats.local_groups * filled.numel(), 1),
            },
        )


def check_layout(per_device_batch: int, steps_per_generation: int, num_generations: int) -> None:
    """Groups must not straddle processes for a per-process keep decision (every process keeps whole groups)."""
    local = per_device_batch * steps_per_generation
    if local % num_generations:
        raise ValueError(
            f"dynamic_sampling needs per_device_train_batch_size * steps_per_generation ({per_device_batch} x "
            f"{steps_per_generation} = {local}) to be a multiple of num_generations ({num_generations}), so that "
            "every process holds whole groups"
        )


# ----------------------------------------------------------------------------------------------- on a TRL trainer
def filter_key(per_func: torch.Tensor, key: str, names: list[str], weights: torch.Tensor) -> torch.Tensor:
    """``[N]``: what the group mean is taken of: ``key="reward"`` is the weighted total over the reward functions
    (NaN where every function is NaN: an unscorable completion), otherwise the column of the function named ``key``."""
    if key == "reward":
        total = (per_func * weights.to(per_func.device)).nansum(dim=1)
        return torch.where(torch.isnan(per_func).all(dim=1), torch.full_like(total, float("nan")), total)
    return per_func[:, names.index(key)]


class RoundRewards:
    """The filter key of the round just scored: the trainer's reward hook records each round's ``[N, F]`` rewards
    (gathered over processes) with :meth:`record`; the sampler reads them by calling this object."""

    def __init__(self, key: str, names: list[str], weights: torch.Tensor):
        if key != "reward" and key not in names:
            raise ValueError(
                f"dynamic_sampling_key={key!r} is neither 'reward' nor a reward function of this run ({names})"
            )
        self.key, self.names, self.weights = key, list(names), weights
        self.last: torch.Tensor | None = None

    def record(self, per_func: torch.Tensor) -> None:
        self.last = per_func

    def __call__(self) -> torch.Tensor:
        return filter_key(self.last, self.key, self.names, self.weights)


def trainer_sampler(trainer, generate, pad_token_id: int) -> DynamicSampler:
    """DAPO's dynamic sampling for a TRL ``GRPOTrainer`` (``trainer``), whose one round is ``generate`` (TRL's own
    ``_generate_and_score_completions``): the layout and the key checked, the refill stream seeded, built once."""
    from trl.trainer.utils import split_pixel_values_by_grid, unsplit_pixel_values_by_grid

    args, dataset, G = trainer.args, trainer.train_dataset, trainer.num_generations
    if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        raise ValueError("dynamic_sampling needs a map-style training dataset (refill prompts are drawn by index)")
    check_layout(args.per_device_train_batch_size, args.steps_per_generation, G)
    rewards = RoundRewards(args.dynamic_sampling_key, trainer.reward_func_names, trainer.reward_weights)
    accelerator = trainer.accelerator
    refill = RefillStream(
        dataset,
        G,
        args.generation_batch_size // G,
        accelerator.num_processes,
        accelerator.process_index,
        seed=args.seed + 1,
    )
    return DynamicSampler(
        generate=generate,
        rewards_of_last_round=rewards,
        gather=accelerator.gather,
        split=split_pixel_values_by_grid,
        unsplit=unsplit_pixel_values_by_grid,
        refill=refill,
        rank=accelerator.process_index,
        num_generations=G,
        low=args.dynamic_sampling_low,
        high=args.dynamic_sampling_high,
        max_rounds=args.max_sampling_rounds,
        fallback=args.dynamic_sampling_fallback,
        pad_token_id=pad_token_id,
    )
