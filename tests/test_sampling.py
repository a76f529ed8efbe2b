"""DAPO's dynamic sampling with refill (pgpo.sampling): the group filter, the merge of rounds, the refill stream, the
round loop on one and on two (simulated) processes, and the fallbacks."""

import threading

import pytest
import torch

from pgpo.sampling import DynamicSampler, RefillStream, check_layout, concat_outputs, keep_groups, select_rows

G = 4


def test_keep_groups_by_hand():
    nan = float("nan")
    rewards = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, nan, nan, nan, nan, 0.1, 0.1, 0.1, 0.1, nan, 1, 0, 1.0])
    assert keep_groups(rewards, G, 0.01, 0.99).tolist() == [False, False, True, False, True, True]
    with pytest.raises(ValueError, match="multiple of 4"):
        keep_groups(torch.zeros(6), G, 0.01, 0.99)


def _round(n: int, prompt_width: int, completion_width: int, tag: float) -> dict:
    """A TRL-like split generation output of n rows (every value tagged so rows can be traced)."""
    rows = torch.arange(n, dtype=torch.float32) + tag
    return {
        "prompt_ids": torch.full((n, prompt_width), 7).long(),
        "prompt_mask": torch.ones(n, prompt_width).long(),
        "completion_ids": torch.full((n, completion_width), 9).long(),
        "completion_mask": torch.ones(n, completion_width).long(),
        "old_per_token_logps": rows[:, None].expand(n, completion_width).clone(),
        "mm_token_type_ids": torch.cat([torch.ones(n, prompt_width), torch.zeros(n, completion_width)], 1).long(),
        "advantages": rows,
        "pixel_values": [torch.full((2, 3), t.item()) for t in rows],
        "num_images": [1] * n,
        "num_items_in_batch": torch.tensor(123.0),
    }


def test_concat_outputs_repads_each_kind_on_its_side():
    a, b = _round(2, 3, 2, 0.0), _round(2, 5, 4, 10.0)
    out = concat_outputs([a, b], pad_token_id=0)
    assert out["prompt_ids"].shape == (4, 5) and out["completion_ids"].shape == (4, 4)
    assert out["prompt_ids"][0].tolist() == [0, 0, 7, 7, 7] and out["prompt_mask"][0].tolist() == [0, 0, 1, 1, 1]
    assert out["completion_ids"][0].tolist() == [9, 9, 0, 0] and out["completion_mask"][0].tolist() == [1, 1, 0, 0]
    assert out["old_per_token_logps"][1].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert out["mm_token_type_ids"][0].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0]  # prompt left, completion right
    assert out["advantages"].tolist() == [0.0, 1.0, 10.0, 11.0]
    assert [p[0, 0].item() for p in out["pixel_values"]] == [0.0, 1.0, 10.0, 11.0] and out["num_images"] == [1] * 4
    assert "num_items_in_batch" not in out  # recomputed by the caller on the kept batch
    picked = select_rows(out, [3, 0])
    assert picked["advantages"].tolist() == [11.0, 0.0] and picked["pixel_values"][0][0, 0] == 11.0


def test_refill_stream_is_seeded_shards_processes_and_resumes():
    data = [{"i": i} for i in range(10)]
    s0 = RefillStream(data, G, prompts_per_round=4, num_processes=2, rank=0, seed=3)
    s1 = RefillStream(data, G, prompts_per_round=4, num_processes=2, rank=1, seed=3)
    rounds0 = [[r["i"] for r in s0.next_rows()] for _ in range(4)]
    rounds1 = [[r["i"] for r in s1.next_rows()] for _ in range(4)]
    for r0, r1 in zip(rounds0, rounds1):  # each process: its 2 prompts, G times each; together a round of 4
        assert len(r0) == len(r1) == 2 * G and r0[:G] == [r0[0]] * G
    for r0, r1 in zip(rounds0[:2], rounds1[:2]):  # within a pass, the processes never draw the same prompt
        assert not set(r0) & set(r1)
    first_pass = [i for r0, r1 in zip(rounds0[:2], rounds1[:2]) for i in dict.fromkeys(r0 + r1)]
    assert sorted(first_pass[:8]) == sorted(set(first_pass[:8]))  # no prompt twice before the pass ends
    assert s0.epoch == 1  # 16 prompts drawn from 10: the second pass has started
    state = s0.state_dict()
    again = RefillStream(data, G, 4, 2, 0, seed=3)
    again.load_state_dict(state)
    assert [r["i"] for r in again.next_rows()] == [r["i"] for r in s0.next_rows()]
    with pytest.raises(ValueError, match="do not split"):
        RefillStream(data, G, 3, 2, 0, seed=0)


class FakeTRL:
    """One process of a generation loop: rows carry a kind; the reward of a row is decided by its kind
    (zero/one: constant groups, mixed: 1 for the first rollout of the group); rewards are 'gathered' by ``exchange``."""

    def __init__(self, rank=0, exchange=None):
        self.rank, self.exchange, self.calls = rank, exchange or (lambda t: t), []

    def generate(self, rows):
        self.calls.append([r["i"] for r in rows])
        n = len(rows)
        out = _round(n, 2 + len(self.calls), 3, 100.0 * len(self.calls))
        out["kind"] = [r["kind"] for r in rows]
        local = torch.tensor(
            [1.0 if r["kind"] == "one" else float(r["kind"] == "mixed" and j % G == 0) for j, r in enumerate(rows)]
        )
        self.rewards = self.exchange(local)
        return out


def make_sampler(trl, refill, rank=0, gather=None, max_rounds=20, fallback="raise"):
    return DynamicSampler(
        generate=trl.generate,
        rewards_of_last_round=lambda: trl.rewards,
        gather=gather or (lambda t: t),
        split=lambda o: o,
        unsplit=lambda o: o,
        refill=refill,
        rank=rank,
        num_generations=G,
        low=0.01,
        high=0.99,
        max_rounds=max_rounds,
        fallback=fallback,
        pad_token_id=0,
    )


def dataset(kinds):
    return [{"i": i, "kind": k} for i, k in enumerate(kinds)]


def group_rows(data, indices):
    return [data[i] for i in indices for _ in range(G)]


def test_batch_is_full_of_mixed_groups_and_the_expected_prompts_are_consumed():
    data = dataset(["zero", "mixed", "one", "zero", "mixed", "one", "mixed", "zero"] * 2)
    refill = RefillStream(data, G, prompts_per_round=3, num_processes=1, rank=0, seed=7)
    expected_refill = RefillStream(data, G, prompts_per_round=3, num_processes=1, rank=0, seed=7)
    trl = FakeTRL()
    first = group_rows(data, [0, 2, 1])  # one kept group in the first round
    output, stats, rows = make_sampler(trl, refill).sample(first)
    assert len(rows) == len(output["advantages"]) == 3 * G
    assert {r["kind"] for r in rows} == {"mixed"} and set(output["kind"]) == {"mixed"}
    # the first round came from TRL, then the refill stream, in its own order, until 3 mixed groups were kept
    prompts = [c[::G] for c in trl.calls]
    assert prompts[0] == [0, 2, 1]
    mixed_seen = 1
    for call in prompts[1:]:
        assert call == expected_refill.next_indices()
        mixed_seen += sum(data[i]["kind"] == "mixed" for i in call)
    assert mixed_seen >= 3 and mixed_seen - sum(data[i]["kind"] == "mixed" for i in prompts[-1]) < 3
    assert stats.rounds == len(prompts) and stats.generated_groups == 3 * stats.rounds
    kept_in_order = [i for call in prompts for i in call if data[i]["kind"] == "mixed"][:3]
    assert [r["i"] for r in rows[::G]] == kept_in_order  # truncation keeps the first kept groups, whole
    assert output["prompt_ids"].shape[1] == 2 + stats.rounds  # rounds of different widths were merged


def test_round_limit_raises_or_fills_never_a_smaller_batch():
    data = dataset(["zero", "one"] * 6)
    first = group_rows(data, [0, 1])
    with pytest.raises(RuntimeError, match=r"after 3 rounds only 0 of 6 groups .*dynamic_sampling_fallback='fill'"):
        make_sampler(FakeTRL(), RefillStream(data, G, 2, 1, 0, seed=0), max_rounds=3).sample(first)
    output, stats, rows = make_sampler(
        FakeTRL(), RefillStream(data, G, 2, 1, 0, seed=0), max_rounds=2, fallback="fill"
    ).sample(first)
    assert len(rows) == 2 * G and stats.filled_groups == 2 and stats.rounds == 2
    assert output["advantages"].shape == (2 * G,)
    # one group kept in the only round, one filled from the dropped ones: a merged and a split output are joined
    data = dataset(["mixed"] + ["zero"] * 5)
    output, stats, rows = make_sampler(
        FakeTRL(), RefillStream(data, G, 2, 1, 0, seed=0), max_rounds=1, fallback="fill"
    ).sample(group_rows(data, [0, 1]))
    assert [r["kind"] for r in rows[::G]] == ["mixed", "zero"] and stats.filled_groups == 1
    assert output["advantages"].shape == (2 * G,) and "num_items_in_batch" not in output


def test_two_processes_keep_their_own_groups_and_run_the_same_rounds():
    """Simulated 2-process run: rewards and the shortfall are exchanged through a barrier, as accelerate.gather does;
    rank 1 fills up later than rank 0, so both keep generating until both are full."""
    barrier, slots = threading.Barrier(2), [None, None]

    def exchange_for(rank):
        def gather(t):
            slots[rank] = t
            barrier.wait()
            out = torch.cat([slots[0], slots[1]])
            barrier.wait()
            return out

        return gather

    data = dataset(["mixed", "zero", "one", "zero", "mixed", "one", "zero", "mixed"] * 3)
    results, errors = {}, []

    def run(rank):
        try:
            trl = FakeTRL(rank, exchange_for(rank))
            refill = RefillStream(data, G, prompts_per_round=4, num_processes=2, rank=rank, seed=11)
            sampler = make_sampler(trl, refill, rank=rank, gather=exchange_for(rank))
            first = group_rows(data, [0, 1] if rank == 0 else [2, 3])  # rank 0 has one kept group, rank 1 none
            results[rank] = (sampler.sample(first), trl.calls)
        except Exception as err:  # surfaced below
            errors.append(err)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    (out0, stats0, rows0), calls0 = results[0]
    (out1, stats1, rows1), calls1 = results[1]
    assert stats0.rounds == stats1.rounds > 1 and len(calls0) == len(calls1)
    assert stats0.generated_groups == stats1.generated_groups == 4 * stats0.rounds  # the same global counts
    for rows in (rows0, rows1):
        assert len(rows) == 2 * G and {r["kind"] for r in rows} == {"mixed"}
    assert not {r["i"] for r in rows0[::G]} & {r["i"] for r in rows1[::G]}  # disjoint prompts per process


def test_layout_check_names_the_options():
    check_layout(4, 2, 4)
    with pytest.raises(ValueError, match=r"per_device_train_batch_size \* steps_per_generation \(2 x 1 = 2\).*\(4\)"):
        check_layout(2, 1, 4)
