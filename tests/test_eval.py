"""Benchmark adapters on fixtures in each benchmark's real schema, ``pgpo eval`` end to end on the tiny model, resume."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pgpo.benchmarks import BENCHMARKS, load_benchmark, parse_inline_choices, parse_option_string
from pgpo.cli import main as cli_main
from pgpo.commands.eval import resolve_data
from pgpo.evaluate import HFGenerator, evaluate, read_samples

_spec = importlib.util.spec_from_file_location("make_fixtures", Path(__file__).parent / "fixtures" / "make_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

MAX_NEW_TOKENS = 4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The tiny model is 3-10x faster on one thread when the 2 CPU cores are shared (restored afterwards)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    """All eight fixtures under one folder; returns (root, {name: data path})."""
    root = tmp_path_factory.mktemp("benchmarks")
    return root, fixtures.write_all(root)


@pytest.fixture(scope="module")
def generator(tiny_qwen):
    """Sampling generator on the tiny model."""
    model, processor = tiny_qwen
    return HFGenerator(model, processor, temperature=1.0, max_new_tokens=MAX_NEW_TOKENS)


@pytest.fixture(scope="module")
def greedy(tiny_qwen):
    """Greedy generator on the tiny model (cheaper than sampling over the 151k-token vocabulary)."""
    model, processor = tiny_qwen
    return HFGenerator(model, processor, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)


class CountingGenerator:
    """Wraps a generator; counts calls and prompts."""

    def __init__(self, inner):
        self.inner, self.calls, self.prompts = inner, 0, 0

    def generate(self, requests):
        self.calls += 1
        self.prompts += len(requests)
        return self.inner.generate(requests)


class ScriptedGenerator:
    """Returns fixed completions: sample by sample, from a list (cycled)."""

    def __init__(self, outputs):
        self.outputs, self.i = outputs, 0

    def generate(self, requests):
        out = []
        for _ in requests:
            out.append(self.outputs[self.i % len(self.outputs)])
            self.i += 1
        return out


def test_all_eight_benchmarks_have_adapters():
    assert set(BENCHMARKS) == {"mathverse", "mathvision", "mathvista", "wemath", "logicvista", "dynamath"} | {
        "geo3k",
        "mmk12",
    }


@pytest.mark.parametrize("name", sorted(fixtures.WRITERS))
def test_adapter_reads_real_schema(bench_root, name):
    _, paths = bench_root
    n, (some_id, gold) = fixtures.EXPECTED[name]
    records = load_benchmark(name, paths[name])
    assert len(records) == n
    by_id = {r.id: r for r in records}
    assert by_id[some_id].answer == gold
    for r in records:
        assert r.question and r.images and r.answer
        assert [im.size for im in r.load_images()] == [(56, 56)] * len(r.images)
        assert r.answer_type in ("multiple_choice", "free_form", "float")


def test_adapter_details(bench_root):
    _, paths = bench_root
    verse = {r.id: r for r in load_benchmark("mathverse", paths["mathverse"])}
    assert verse["1"].choices == ["30°", "40°", "50°", "60°"] and verse["1"].answer_type == "multiple_choice"
    assert verse["3"].question == "According to the image, answer it."  # Vision Only: query_wo
    vision = {r.id: r for r in load_benchmark("mathvision", paths["mathvision"])}
    assert "(C) triangle" in vision["1"].question and vision["2"].choices is None
    assert len(load_benchmark("mathvision", paths["mathvision"], split="testmini")) == 1
    vista = {r.id: r for r in load_benchmark("mathvista", paths["mathvista"])}  # testmini shard, not test
    assert vista["1"].choices == ["red", "green", "blue"] and vista["3"].answer_type == "float"
    assert vista["3"].precision == 2.0
    wemath = load_benchmark("wemath", paths["wemath"])[0]
    assert wemath.choices == ["200.96", "3215.36", "6280", "32", "No correct answer"]
    dyn = {r.id: r for r in load_benchmark("dynamath", paths["dynamath"], split="sample_variant1")}
    assert set(dyn) == {"1", "2"} and dyn["2"].answer_type == "float"
    geo = load_benchmark("geometry3k", paths["geo3k"])[1]
    assert geo.answer == r"2\sqrt{3}" and geo.choices is None
    assert load_benchmark("mmk12", paths["mmk12"], limit=1)[0].choices == ["$$10.5$$", "2.3", "4", "8"]


def test_choice_parsers():
    assert parse_inline_choices("Q\nA: 1\nB: 2") == ["1", "2"]
    assert parse_inline_choices("Q\nA. 1\nC. 3") is None  # gap
    assert parse_option_string("A. 1;B. 2; C. 3") == ["1", "2", "3"]
    assert parse_option_string("no options") is None


def test_eval_all_benchmarks_end_to_end(bench_root, generator, tmp_path):
    _, paths = bench_root
    pairs = [(name, paths[name]) for name in sorted(paths)]
    summary = evaluate("tiny", pairs, tmp_path, k=2, max_new_tokens=MAX_NEW_TOKENS, generator=generator, progress=False)
    for name, path in pairs:
        n = fixtures.EXPECTED[name][0]
        lines = [json.loads(x) for x in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        assert len(lines) == 2 * n
        assert {(x["id"], x["sample_index"]) for x in lines} == {
            (r.id, s) for r in load_benchmark(name, path) for s in (0, 1)
        }
        assert set(lines[0]) == {"id", "sample_index", "completion", "extracted_answer", "gold", "correct"}
        assert summary["benchmarks"][name]["n"] == n and summary["benchmarks"][name]["samples"] == 2 * n
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved["benchmarks"]) == set(paths) and saved["k"] == 2
    md = (tmp_path / "summary.md").read_text()
    assert "accuracy@2" in md and all(f"| {name} |" in md for name in paths)


def test_accuracy_and_pass_at_k_are_computed_from_scored_samples(bench_root, tmp_path):
    _, paths = bench_root
    # mmk12 fixture: m1 gold A, m2 gold D. Samples in order: (m1,0) (m1,1) (m2,0) (m2,1).
    scripted = ScriptedGenerator([r"<think>.</think>\boxed{A}", r"\boxed{B}", r"\boxed{(C) 3}", r"\boxed{D}"])
    summary = evaluate("fake", [("mmk12", paths["mmk12"])], tmp_path, k=2, generator=scripted, print_table=False)
    result = summary["benchmarks"]["mmk12"]
    assert result["accuracy"] == 0.5 and result["pass_at_k"] == 1.0 and result["correct"] == 2
    lines = read_samples(tmp_path / "mmk12.jsonl")
    assert [x["correct"] for x in lines] == [True, False, False, True]
    assert lines[2]["extracted_answer"] == "(C) 3"
    assert summary["overall"]["accuracy"] == 0.5


def test_resume_skips_done_samples(bench_root, greedy, tmp_path):
    generator = greedy
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"]), ("mathvista", paths["mathvista"])]  # 2 + 3 questions
    first = CountingGenerator(generator)
    evaluate("tiny", pairs, tmp_path, k=2, batch_size=4, generator=first, progress=False, print_table=False)
    assert first.prompts == 10 and first.calls == 1 + 2  # 4 geo3k samples in one batch, 6 mathvista in two

    again = CountingGenerator(generator)
    evaluate("tiny", pairs, tmp_path, k=2, batch_size=4, generator=again, progress=False, print_table=False)
    assert again.calls == 0

    # a crash: the last sample is lost and the one before it is half-written
    path = tmp_path / "mathvista.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][: len(lines[-2]) // 2])
    third = CountingGenerator(generator)
    summary = evaluate("tiny", pairs, tmp_path, k=2, generator=third, progress=False, print_table=False)
    assert third.prompts == 2
    keys = [(x["id"], x["sample_index"]) for x in read_samples(path)]
    assert len(keys) == len(set(keys)) == 6
    assert all(json.loads(x) for x in path.read_text().splitlines())  # no torn line left behind
    assert summary["benchmarks"]["mathvista"]["samples"] == 6

    # raising k only generates the new sample indices
    fourth = CountingGenerator(generator)
    evaluate("tiny", pairs, tmp_path, k=3, generator=fourth, progress=False, print_table=False)
    assert fourth.prompts == 5


def test_missing_column_raises_naming_the_row(tmp_path):
    import datasets

    rows = {"pid": ["1", "2"], "question": ["q", "q"], "choices": [None, None], "question_type": ["free_form"] * 2}
    rows["decoded_image"] = [fixtures.image_value(0)] * 2
    features = datasets.Features(
        {
            "pid": datasets.Value("string"),
            "question": datasets.Value("string"),
            "choices": datasets.List(datasets.Value("string")),
            "question_type": datasets.Value("string"),
            "decoded_image": datasets.Image(),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "testmini.parquet"))
    with pytest.raises(ValueError, match=r"mathvista row 0: missing column\(s\) \['answer'\]"):
        load_benchmark("mathvista", tmp_path / "testmini.parquet")


def test_broken_or_missing_image_raises_naming_the_row(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "0.png").write_bytes(fixtures.png_bytes())
    (tmp_path / "images" / "1.png").write_bytes(b"garbage")
    rows = [{"question": "q", "answer": "A", "image": f"images/{i}.png", "id": str(i)} for i in range(3)]
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"logicvista row 1: image 0: cannot decode image"):
        load_benchmark("logicvista", path)
    (tmp_path / "images" / "1.png").write_bytes(fixtures.png_bytes())
    with pytest.raises(ValueError, match=r"logicvista row 2: image 0: image file not found"):
        load_benchmark("logicvista", path)


def test_cli_bad_input_exits_with_message(tmp_path, capsys):
    rc = cli_main(["eval", "--model", "x", "--benchmark", "nope", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert rc == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err


def test_resolve_data(bench_root):
    root, paths = bench_root
    assert resolve_data(["mathverse", "mmk12"], [str(root)]) == [
        ("mathverse", root / "mathverse"),
        ("mmk12", root / "mmk12"),
    ]
    assert resolve_data(["mmk12"], [str(root)]) == [("mmk12", root / "mmk12")]
    assert resolve_data(["geo3k"], [str(paths["geo3k"])]) == [("geo3k", paths["geo3k"])]
    with pytest.raises(ValueError, match="2 --benchmark and 3 --data"):
        resolve_data(["geo3k", "mmk12"], ["a", "b", "c"])


def test_cli_eval_end_to_end_on_saved_tiny_model(bench_root, tmp_path):
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    root, _ = bench_root
    model_dir = save_tiny_qwen25vl(tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--benchmark", "geo3k", "--benchmark", "wemath", "--data", str(root)]
    args += ["--k", "2", "--temperature", "1.0", "--max-new-tokens", str(MAX_NEW_TOKENS), "--out", str(out)]
    args += ["--limit", "1", "--batch-size", "2", "--backend", "hf", "--no-progress"]
    assert cli_main(args) == 0
    assert len((out / "geo3k.jsonl").read_text().splitlines()) == 2
    assert len((out / "wemath.jsonl").read_text().splitlines()) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "hf" and summary["overall"]["samples"] == 4
    assert (out / "summary.md").exists()
