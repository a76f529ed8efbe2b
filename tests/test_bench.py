"""``pgpo bench`` smoke tests at tiny sizes: the sections run and return finite, JSON-ready results with the expected
``dependency_source`` per configuration; the k3 path's memory does not grow like the naive KL's; the 3B path builds;
the bench package touches no private name of another package. No timing assertions (the bench prints the ratios)."""

import ast
import copy
import json
import math
import re
from pathlib import Path

import pytest

from pgpo import cli
from pgpo.bench import BenchConfig, run_bench
from pgpo.bench.models import ModelSource, qwen25vl_3b_source
from pgpo.bench.report import headline, to_markdown
from pgpo.commands.bench import equals_form

BENCH_DIR = Path(__file__).resolve().parents[1] / "pgpo" / "bench"
TINY = dict(batch=2, num_generations=2, completion_length=2, steps=1, warmup=0, image_size=56, chunk_size=4)


@pytest.fixture(scope="module")
def result(tiny_qwen):
    model, processor = tiny_qwen
    source = ModelSource("tiny-qwen", lambda: (copy.deepcopy(model), processor), "the session's tiny model", 56)
    cfg = BenchConfig(**TINY, dep_batch=1, dep_lengths="8,32", repeats=1)
    return run_bench(cfg, log=lambda msg: None, source=source)


def test_every_configuration_reports_its_dependency_source_and_finite_ratios(result):
    step = result["step"]
    expected = {
        "default": {"grpo": "none", "dapo": "none", "pgpo": "training_forward"},
        "trl_old_logps": {"dapo": "none", "pgpo": "trl_old_logps"},
        "own_pass": {"dapo": "none", "pgpo_own_pass": "own_pass"},
    }
    for group, sources in expected.items():
        g = step[group]
        assert {name: c["dependency_source"] for name, c in g["candidates"].items()} == sources
        assert g["source_ok"]
        for name, c in g["candidates"].items():
            assert c["shaping_metrics_logged"] == name.startswith("pgpo")  # PGPO shaped, the baselines did not
            assert (
                c["step_s"] > 0 and c["trl_step_time_s"] > 0 and c["resident_bytes"] > 0 and c["peak_extra_bytes"] > 0
            )
        for ratio in g["ratios"].values():
            for value in (ratio["time"]["paired_median"], ratio["trl_step_time"]["paired_median"]):
                assert math.isfinite(value) and value > 0
            assert math.isfinite(ratio["memory_total"]) and ratio["memory_total"] > 0
    assert set(step["default"]["ratios"]) == {"grpo", "dapo"}
    json.dumps(result)  # JSON-ready


def test_k3_peak_memory_does_not_grow_like_the_naive_kl(result):
    short, long = result["dependency"]["rows"]  # 8 and 32 tokens, chunk 4: both past one chunk
    assert (short["tokens"], long["tokens"]) == (8, 32)
    for name in ("k3", "kl"):
        assert long[name]["peak_extra_bytes"] <= 1.3 * short[name]["peak_extra_bytes"], name
    assert long["kl_naive"]["peak_extra_bytes"] >= 2.5 * short["kl_naive"]["peak_extra_bytes"]
    assert max(short["kl_vs_naive_max_abs_diff"], long["kl_vs_naive_max_abs_diff"]) < 1e-4


def test_parts_and_the_report(result, tmp_path, capsys):
    parts = result["parts"]
    assert parts["blind_sequence"] < parts["image_sequence"]  # the visual tokens are dropped
    assert all(math.isfinite(p["s"]) and p["s"] >= 0 for p in parts["parts"].values())
    assert math.isfinite(parts["predicted_time_ratio"]) and parts["predicted_time_ratio"] > 1
    lines = headline(result)
    assert [line.split(":")[0] for line in lines] == [
        "PGPO/GRPO step time ratio",
        "PGPO/DAPO step time ratio",
        "PGPO/GRPO step CPU-time ratio",
        "PGPO/DAPO step CPU-time ratio",
    ]
    assert all(re.fullmatch(r"PGPO/(GRPO|DAPO) step (CPU-)?time ratio: \d+\.\d{3}", line) for line in lines)
    assert "| default | PGPO/DAPO |" in to_markdown(result)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(result))
    assert cli.main(["bench", "--report", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    for line in lines:
        assert out.count(line) == 1


def test_the_command_line():
    assert equals_form(["--model", "demo-vlm", "--dep-lengths", "8", "16", "--quiet", "--seed=3"]) == [
        "--model=demo-vlm",
        "--dep-lengths=8,16",
        "--quiet=true",
        "--seed=3",
    ]
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "--groups", "default,nope"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        cli.main(["bench", "--batch", "6", "--num_generations", "4"])
    assert err.value.code == 2


def test_the_qwen25vl_3b_path_builds():
    from pgpo.bench.parts import dependency_parts

    full, _ = qwen25vl_3b_source("meta").load()  # the real configuration, no memory
    assert 3.7e9 < sum(p.numel() for p in full.parameters()) < 3.8e9
    tiny = qwen25vl_3b_source(
        "cpu",
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                    fullatt_block_indexes=[0]),
    )  # fmt: skip
    cfg = BenchConfig(batch=1, num_generations=1, completion_length=4, repeats=1, chunk_size=4)
    parts = dependency_parts(tiny, cfg)
    assert parts["image_tokens_per_row"] == 1024  # 896 px: a 32 x 32 grid of merged patches
    assert parts["blind_sequence"] <= parts["image_sequence"] - 1024


def _private_uses(path: Path) -> list[str]:
    """``from x import _name``, ``import x._y``, ``obj._name`` (obj not ``self``), ``getattr(obj, "_name")``."""

    def private(name: str) -> bool:
        return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom):
            names = (node.module or "").split(".") + [a.name for a in node.names]
            found += [f"{where} import {n}" for n in names if private(n)]
        elif isinstance(node, ast.Import):
            found += [f"{where} import {a.name}" for a in node.names if any(map(private, a.name.split(".")))]
        elif isinstance(node, ast.Attribute) and private(node.attr):
            if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{where} .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr"):
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and private(str(node.args[1].value)):
                found.append(f"{where} {node.func.id}(..., {node.args[1].value!r})")
    return found


def test_the_bench_uses_no_private_name_of_another_package(tmp_path):
    files = sorted(BENCH_DIR.glob("*.py"))
    assert len(files) >= 6
    assert [use for f in files for use in _private_uses(f)] == []
    probe = tmp_path / "t.py"  # the checker itself finds each form
    probe.write_text("from trl.trainer.utils import _x\nimport torch._C\nt._secret\nself._mine\nx.__dict__\n")
    assert _private_uses(probe) == ["t.py:1 import _x", "t.py:2 import torch._C", "t.py:3 ._secret"]
