"""pgpo.small_preset: one algorithm's preset at a small run's size, written once for the demo, pgpo gradvar, pgpo bench
and the tests."""

import re
from pathlib import Path

import pytest

from pgpo.config import ALGORITHM_PRESETS, ALGORITHMS, PGPOConfig
from pgpo.small_preset import SMALL_RUN, small_preset

ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(use_cpu=True, per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=2)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_recipe_is_the_presets_and_the_sizes_go_over_it(algorithm, tmp_path):
    args = small_preset(algorithm, output_dir=str(tmp_path), **SIZES)
    full = PGPOConfig(**ALGORITHM_PRESETS[algorithm], output_dir=str(tmp_path), use_cpu=True)
    recipe = set(ALGORITHM_PRESETS[algorithm]) - set(SMALL_RUN) - set(SIZES)
    assert recipe and all(getattr(args, k) == getattr(full, k) for k in recipe), algorithm
    assert all(getattr(args, k) == v for k, v in SIZES.items())
    assert args.reward_weights is None and not args.mask_truncated_completions  # one reward function, short answers
    assert (args.save_strategy, args.logging_steps, args.disable_tqdm) == ("no", 1, True)


def test_options_override_the_small_run_and_a_preset_can_be_a_mapping(tmp_path):
    cpu = dict(output_dir=str(tmp_path), use_cpu=True)
    args = small_preset("pgpo", **cpu, save_strategy="steps", save_steps=1, disable_tqdm=False)
    assert (args.save_strategy, args.disable_tqdm, args.reward_weights) == ("steps", False, None)
    changed = small_preset({**ALGORITHM_PRESETS["pgpo"], "advantage_shaping": "none"}, **cpu)
    assert changed.advantage_shaping == "none" and changed.pgpo_tau == ALGORITHM_PRESETS["pgpo"]["pgpo_tau"]
    with pytest.raises(KeyError):
        small_preset("no_such_algorithm")


def test_a_preset_at_small_size_is_written_once():
    """Only pgpo/small_preset.py remembers what a small run of a preset needs (its one reward function)."""
    spelled = re.compile(r"reward_weights\s*=\s*None|[\"']reward_weights[\"']\s*:\s*None")
    files = [*(ROOT / "pgpo").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    here = {ROOT / "pgpo" / "small_preset.py", Path(__file__).resolve()}
    offences = [str(f.relative_to(ROOT)) for f in files if f not in here and spelled.search(f.read_text())]
    assert not offences, offences
