"""What README.md says is true, and its Python runs as written: every ```python block runs (hub models replaced by the
tiny random Qwen2.5-VL, the sizes made small), the preset table is ALGORITHM_PRESETS, and the claims about the paper's
baselines and DAPO's dynamic sampling match the code."""

from __future__ import annotations

import ast
import re
import warnings
from pathlib import Path

import pytest
import torch

from pgpo.config import ALGORITHM_PRESETS, PAPER_SETUP, PGPOConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHARED = "shared setup"  # the first row of the preset table: PAPER_SETUP
HUB_MODEL = re.compile(r"""(["'])Qwen/Qwen[\w.-]+\1""")
# Exactly as typed, on any machine (PGPOConfig reads an unset bf16 as fp32 where there is no bf16 GPU).
AS_TYPED: dict = {}
# A test's sizes: one step of 2 prompts x 2 completions of 4 tokens on the CPU, into a new folder. A random model earns
# no reward, so dynamic sampling fills the batch after one round instead of raising.
SMALL = dict(
    use_cpu=True,
    per_device_train_batch_size=4,
    num_generations=2,
    max_completion_length=4,
    max_steps=1,
    report_to="none",
    save_strategy="no",
    disable_tqdm=True,
    max_sampling_rounds=1,
    dynamic_sampling_fallback="fill",
)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def table_rows(text: str, header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table whose header line starts with ``header``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def options(cell: str) -> dict:
    """``key=value`` options of a table cell (each in backticks, the value a Python literal)."""
    return {key: ast.literal_eval(value) for key, value in re.findall(r"`(\w+)=([^`]+)`", cell)}


def test_every_python_block_runs(tmp_path, monkeypatch):
    """The blocks as written, with: hub ids -> a tiny Qwen2.5-VL folder; the datasets and sizes made small; the config
    first built exactly as typed (AS_TYPED), so a preset that does not construct fails."""
    import pgpo
    import pgpo.tasks
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl
    from pgpo.trainer import PGPOTrainer

    blocks = python_blocks(README)
    assert blocks, "README.md has no ```python block"
    tiny = save_tiny_qwen25vl(tmp_path / "tiny-qwen")
    built = []

    def small_config(**kwargs):
        PGPOConfig(**kwargs, **AS_TYPED)
        out = tmp_path / f"run{len(built)}"
        built.append(PGPOConfig(**{**kwargs, **SMALL, "output_dir": str(out)}))
        return built[-1]

    make_split = pgpo.tasks.make_split
    monkeypatch.setattr(pgpo, "PGPOConfig", small_config, raising=False)
    monkeypatch.setattr(pgpo.tasks, "make_split", lambda split, n, **kw: make_split(split, min(n, 8), **kw))
    trainers = []
    for i, block in enumerate(blocks):
        code = HUB_MODEL.sub(repr(str(tiny)), block)
        namespace = {"__name__": f"readme_{i}"}
        exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        trainers += [v for v in namespace.values() if isinstance(v, PGPOTrainer)]
    assert built and trainers and all(t.state.global_step == 1 for t in trainers)


def test_the_preset_table_is_algorithm_presets():
    """Each row's options, over its base (the shared setup or another preset), are exactly the preset: a preset and
    its row cannot drift apart."""
    rows = {row[0].strip("`*"): row for row in table_rows(README, "| preset |")}
    assert set(rows) == {SHARED, *ALGORITHM_PRESETS}
    assert options(rows[SHARED][2]) == PAPER_SETUP
    for name, preset in ALGORITHM_PRESETS.items():
        cell = rows[name][2]
        base = re.match(r"(shared setup|`(\w+)`) \+", cell)
        assert base, f"the {name} row must start with 'shared setup +' or '`preset` +': {cell!r}"
        resolved = {**(PAPER_SETUP if base.group(2) is None else ALGORITHM_PRESETS[base.group(2)]), **options(cell)}
        assert resolved == preset, name


def test_the_baselines_the_paper_compares_with_are_table_1s():
    """Table 1 compares PGPO with GRPO, DAPO, VPPO and PAPO (docs/method.md); Dr.GRPO is pgpo's extra preset."""
    said = re.search(r"baselines the paper compares with \(([^)]*)\)", " ".join(README.split()))
    assert said, "README.md must name the baselines the paper compares with"
    named = set(re.findall(r"\b(GRPO|DAPO|VPPO|PAPO|Dr\. ?GRPO)\b", said.group(1)))
    assert named == {"GRPO", "DAPO", "VPPO", "PAPO"}


def test_dynamic_sampling_is_described_by_its_filter():
    """The filter is on a group's mean reward strictly inside (low, high), not on its spread: with the paper's key
    (the weighted total) a group of all-0.1 rewards, every answer wrong but well formatted, is kept."""
    from pgpo.sampling import keep_groups

    args = PGPOConfig(**AS_TYPED)
    assert keep_groups(torch.full((5,), 0.1), 5, args.dynamic_sampling_low, args.dynamic_sampling_high).item()
    text = " ".join(README.split())
    assert "groups with spread" not in text
    bounds = re.findall(r"mean reward[^.]*? strictly inside \(([\d.]+), ([\d.]+)\)", text)
    assert bounds and all(
        (float(lo), float(hi)) == (args.dynamic_sampling_low, args.dynamic_sampling_high) for lo, hi in bounds
    )


def test_pgpo_config_warns_nothing():
    """No FutureWarning about TRL's gradient_checkpointing field (nor any other warning) from a bare config."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PGPOConfig(**AS_TYPED)
        for preset in ALGORITHM_PRESETS.values():
            PGPOConfig(**preset, **AS_TYPED)


@pytest.mark.parametrize("name", sorted(ALGORITHM_PRESETS))
def test_every_preset_constructs_as_the_readme_shows(name):
    """``PGPOConfig(**ALGORITHM_PRESETS[name], output_dir=...)`` is valid for every preset (the batch holds whole
    groups of G)."""
    args = PGPOConfig(**ALGORITHM_PRESETS[name], output_dir="out", **AS_TYPED)
    assert args.generation_batch_size % args.num_generations == 0
