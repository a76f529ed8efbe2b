"""``pgpo eval``: adapters on fixtures in each benchmark's real schema (the protocol's rows), the paper protocol, avg@k
and the Table-1 row on a generator with known correctness, bootstrap intervals, resume, shards, the CLI on the tiny
model."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pgpo.cli import main as cli_main
from pgpo.eval.benchmarks import (
    BENCHMARKS,
    MMMU_PRO_VISION_QUESTION,
    TABLE1_BENCHMARKS,
    expand_benchmarks,
    load_benchmark,
    parse_inline_choices,
    parse_option_string,
    parse_options,
)
from pgpo.eval.config import TABLE1, EvalConfig
from pgpo.eval.evaluate import evaluate, read_benchmark_samples, read_samples, resolve_data
from pgpo.eval.generation import Completion, HFGenerator, cap_pixels
from pgpo.eval.report import bootstrap_means, summarize

_spec = importlib.util.spec_from_file_location("make_fixtures", Path(__file__).parent / "fixtures" / "make_fixtures.py")
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MAX_NEW_TOKENS = 4
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory):
    """Every fixture under one folder; returns (root, {name: data path})."""
    root = tmp_path_factory.mktemp("benchmarks")
    return root, fixtures.write_all(root)


@pytest.fixture(scope="module")
def greedy(tiny_qwen):
    """Greedy generator on the tiny model (cheaper than sampling over the 151k-token vocabulary)."""
    model, processor = tiny_qwen
    return HFGenerator(model, processor, temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)


def config(out, pairs, **kw) -> EvalConfig:
    """An EvalConfig over ``(name, path)`` pairs (one --data per benchmark), quiet."""
    kw.setdefault("model", "fake")
    kw.setdefault("no_progress", True)
    return EvalConfig(benchmark=[n for n, _ in pairs], data=[str(p) for _, p in pairs], out=str(out), **kw)


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


class KnownGenerator:
    """Question q (in the order the run asks them) gets ``n_correct[q]`` correct samples out of k, then wrong ones.

    Requests of one question arrive together (k consecutive requests, a fresh output folder), so the request counter
    says which question and sample it is. Wrong samples are marked truncated."""

    def __init__(self, golds, n_correct, k):
        self.golds, self.n_correct, self.k, self.r = golds, n_correct, k, 0

    def generate(self, requests):
        out = []
        for _ in requests:
            q, s = divmod(self.r, self.k)
            self.r += 1
            if s < self.n_correct[q]:
                out.append(Completion(f"<think>ok</think> \\boxed{{{self.golds[q]}}}", truncated=False))
            else:
                out.append(Completion("<think>hmm</think> \\boxed{Z9}", truncated=True))
        return out


# ----------------------------------------------------------------------------------------------------------------------
# Adapters: the protocol's rows, in the real schemas
# ----------------------------------------------------------------------------------------------------------------------


def test_table1_has_the_eight_columns_in_the_papers_order():
    assert TABLE1_BENCHMARKS == (
        "geo3k",
        "mmk12",
        "mathverse",
        "dynamath",
        "mathvision",
        "logicvista",
        "mmmu_pro",
        "mathverse_v",
    )
    assert [BENCHMARKS[n].title for n in TABLE1_BENCHMARKS] == [
        "Geo3k",
        "MMK12",
        "MathVerse",
        "DynaMath",
        "MathVision",
        "LogicVista",
        "MMMU-Pro",
        "MathVerse_V",
    ]
    assert expand_benchmarks(["all"]) == list(TABLE1_BENCHMARKS)
    assert expand_benchmarks(["geometry3k,MMMU-Pro", "geo3k"]) == ["geo3k", "mmmu_pro"]
    for values in (v for rows in TABLE1.values() for v in rows.values()):
        assert len(values) == 9 and values[-1] == pytest.approx(sum(values[:-1]) / 8, abs=0.011)


def test_expected_row_counts_of_the_public_data():
    expected = {"mathverse": 2180, "mathverse_v": 1308, "mmmu_pro": 1730, "dynamath": 501, "geo3k": 601}
    expected |= {"mathvision": 3040, "mmk12": 2000, "logicvista": 448}
    assert {n: BENCHMARKS[n].expected_rows for n in expected} == expected


@pytest.mark.parametrize("name", sorted(fixtures.EXPECTED))
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


def test_mathverse_selects_multi_choice_and_mathverse_v_the_vision_versions(bench_root):
    _, paths = bench_root
    verse = load_benchmark("mathverse", paths["mathverse"])
    assert [r.id for r in verse] == ["1", "2", "3", "4", "5"]  # the free-form problem 2 (rows 6, 7) is out
    assert verse[0].choices == ["30°", "40°", "50°", "60°"] and verse[0].answer_type == "multiple_choice"
    assert verse[4].question == "According to the question shown in the image, answer it."  # Vision Only: query_wo
    vision = load_benchmark("mathverse_v", paths["mathverse"])
    assert [r.id for r in vision] == ["3", "4", "5"]
    assert [r.extra["problem_version"] for r in vision] == ["Vision Intensive", "Vision Dominant", "Vision Only"]


def test_mmmu_pro_reads_the_vision_config(bench_root):
    _, paths = bench_root
    records = load_benchmark("mmmu_pro", paths["mmmu_pro"])  # the repo folder: vision/ is used, not standard/
    assert [r.id for r in records] == ["test_Accounting_1", "test_Art_2"]
    assert all(r.question == MMMU_PRO_VISION_QUESTION for r in records)  # question and options are in the image
    assert records[0].choices == [str(i) for i in range(1, 11)] and records[0].answer == "J"
    assert records[1].choices == ["oil", "fresco", "tempera"]
    assert len(load_benchmark("mmmu_pro", paths["mmmu_pro"] / "vision")) == 2
    assert parse_options("['a', 'b']") == ["a", "b"] and parse_options(["x"]) == ["x"] and parse_options("x") is None


def test_dynamath_variant1_by_default_with_both_split_spellings(bench_root, tmp_path):
    _, paths = bench_root
    default = load_benchmark("dynamath", paths["dynamath"])  # Hub layout: data/sample1-*.parquet, sample2-*, ...
    assert [(r.id, r.answer) for r in default] == [("1", "A"), ("2", "0.1")]
    assert default[1].answer_type == "float"
    for split in ("sample_variant2", "sample2"):
        assert [r.answer for r in load_benchmark("dynamath", paths["dynamath"], split=split)] == ["A", "0.2"]
    both = load_benchmark("dynamath", paths["dynamath"], split="sample_variant1,sample3")
    assert [r.id for r in both] == ["sample_variant1/1", "sample_variant1/2", "sample_variant3/1", "sample_variant3/2"]
    saved = fixtures.write_dynamath_saved(tmp_path)  # save_to_disk with the split names sample_variant1/2
    assert [r.answer for r in load_benchmark("dynamath", saved)] == ["A", "0.1"]
    assert [r.answer for r in load_benchmark("dynamath", saved, split="sample2")] == ["A", "0.2"]


def test_other_adapters(bench_root):
    _, paths = bench_root
    vision = {r.id: r for r in load_benchmark("mathvision", paths["mathvision"])}
    assert "(C) triangle" in vision["1"].question and vision["2"].choices is None
    assert len(load_benchmark("mathvision", paths["mathvision"], split="testmini")) == 1
    vista = {r.id: r for r in load_benchmark("mathvista", paths["mathvista"])}  # testmini shard, not test
    assert vista["1"].choices == ["red", "green", "blue"] and vista["3"].precision == 2.0
    assert load_benchmark("wemath", paths["wemath"])[0].choices == [
        "200.96",
        "3215.36",
        "6280",
        "32",
        "No correct answer",
    ]
    geo = load_benchmark("geometry3k", paths["geo3k"])[1]
    assert geo.answer == r"2\sqrt{3}" and geo.choices is None
    assert load_benchmark("mmk12", paths["mmk12"], limit=1)[0].choices == ["$$10.5$$", "2.3", "4", "8"]
    assert parse_inline_choices("Q\nA: 1\nB: 2") == ["1", "2"] and parse_inline_choices("Q\nA. 1\nC. 3") is None
    assert parse_option_string("A. 1;B. 2; C. 3") == ["1", "2", "3"] and parse_option_string("none") is None


def test_row_count_is_checked_on_load(bench_root, caplog):
    _, paths = bench_root
    with caplog.at_level(logging.WARNING, logger="pgpo.eval.benchmarks"):
        load_benchmark("mathverse", paths["mathverse"])
    assert "mathverse: expected 2,180 rows" in caplog.text and "found 5" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pgpo.eval.benchmarks"):
        load_benchmark("dynamath", paths["dynamath"], split="sample1,sample2")
    assert "expected 1,002 rows (splits sample_variant1, sample_variant2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pgpo.eval.benchmarks"):
        load_benchmark("mathverse", paths["mathverse"], limit=2)  # a deliberate subset: no warning
    assert caplog.text == ""


def _write_parquet(rows, features, path):
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=datasets.Features(features)).to_parquet(str(path))


def test_wrong_schema_names_the_column(tmp_path):
    import datasets

    image = datasets.Image()
    rows = {"id": ["a", "b"], "options": ["['1', '2']"] * 2, "image": [fixtures.image_value(0)] * 2}
    _write_parquet(
        rows,
        {"id": datasets.Value("string"), "options": datasets.Value("string"), "image": image},
        tmp_path / "v" / "test.parquet",
    )
    with pytest.raises(
        ValueError, match=r"mmmu_pro row 0: missing column\(s\) \['answer'\] \(expected the MMMU/MMMU_Pro"
    ):
        load_benchmark("mmmu_pro", tmp_path / "v" / "test.parquet")
    rows = {"sample_index": ["1"], "question": ["q"], "answer": ["A"], "question_type": ["multi-choice"]}
    rows["image"] = [fixtures.image_value(0)]
    feats = {k: datasets.Value("string") for k in rows if k != "image"} | {"image": image}
    _write_parquet(rows, feats, tmp_path / "mv" / "testmini.parquet")
    assert len(load_benchmark("mathverse", tmp_path / "mv")) == 1
    with pytest.raises(ValueError, match=r"mathverse_v row 0: missing column\(s\) \['problem_version'\]"):
        load_benchmark("mathverse_v", tmp_path / "mv")


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


def test_resolve_data(bench_root):
    root, paths = bench_root
    assert resolve_data(["all"], [str(root)]) == [
        ("geo3k", root / "geo3k"),
        ("mmk12", root / "mmk12"),
        ("mathverse", root / "mathverse"),
        ("dynamath", root / "dynamath"),
        ("mathvision", root / "mathvision"),
        ("logicvista", root / "logicvista"),
        ("mmmu_pro", root / "MMMU_Pro"),  # the Hub repository's name
        ("mathverse_v", root / "mathverse"),  # reads the MathVerse entry
    ]
    assert resolve_data(["geo3k"], [str(paths["geo3k"])]) == [("geo3k", paths["geo3k"])]
    with pytest.raises(ValueError, match="2 benchmarks and 3 --data"):
        resolve_data(["geo3k", "mmk12"], ["a", "b", "c"])
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        resolve_data(["nope"], [str(root)])


# ----------------------------------------------------------------------------------------------------------------------
# The protocol
# ----------------------------------------------------------------------------------------------------------------------

# Typed from spec.md Sec. 5 / the issue / PAPO-Eval's run_infer.py, not from pgpo's constants.
PAPER_SETTINGS = {
    "protocol": "paper",
    "k": 8,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "max_new_tokens": 2048,
    "max_pixels": 589824,
    "min_pixels": 1024,
    "prompt_template": "{question}\n\nYou first think through the reasoning process as an internal monologue, "
    "enclosed within <think> </think> tags. Then, provide your final answer enclosed within \\boxed{{}}.",
    "system_prompt": "You are a helpful assistant.",
    "grader": "paper",
}


def test_paper_protocol_resolves_to_exactly_the_listed_settings():
    assert EvalConfig(protocol="paper").resolve().to_dict() == PAPER_SETTINGS
    assert EvalConfig().resolve().to_dict() == PAPER_SETTINGS  # the default protocol is the paper's
    over = EvalConfig(k=2, top_k=0, system_prompt="none", grader="lenient", max_pixels=0).resolve().to_dict()
    assert over == PAPER_SETTINGS | {"k": 2, "top_k": 0, "system_prompt": None, "grader": "lenient", "max_pixels": None}
    quick = EvalConfig(protocol="quick").resolve()
    assert (quick.k, quick.temperature, quick.max_new_tokens) == (1, 0.0, 1024)
    for bad, match in [({"protocol": "papr"}, "--protocol"), ({"k": 0}, "--k"), ({"grader": "x"}, "--grader")]:
        with pytest.raises(ValueError, match=match):
            EvalConfig(**bad).resolve()


def test_paper_yaml_and_cli_parse_to_the_same_settings():
    from pgpo.commands.eval import parse

    from_yaml = parse(["--config", str(REPO / "configs" / "eval_paper.yaml")])
    from_cli = parse(["--protocol", "paper"])
    assert from_yaml.resolve().to_dict() == from_cli.resolve().to_dict() == PAPER_SETTINGS
    assert from_yaml.benchmark == ["all"] and from_yaml.k == 8  # the YAML writes every setting out
    args = parse(["--benchmark", "geo3k", "--benchmark", "mmk12", "--top-p", "0.9", "--max_pixels", "100"])
    assert args.benchmark == ["geo3k", "mmk12"] and args.top_p == 0.9 and args.max_pixels == 100
    assert parse(["--config", str(REPO / "configs" / "eval_paper.yaml"), "--k", "2"]).resolve().k == 2


def test_settings_are_printed_at_start_and_written_to_summary(bench_root, tmp_path, capsys):
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"])]
    summary = evaluate(config(tmp_path, pairs, k=1), generator=ScriptedGenerator([r"\boxed{3}"]))
    printed = capsys.readouterr().out
    assert "pgpo eval settings" in printed and "top_k" in printed and "589824" in printed
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["settings"] == summary["settings"] == PAPER_SETTINGS | {"k": 1}


def test_cap_pixels_follows_papo_eval():
    assert cap_pixels(Image.new("RGB", (1000, 1000)), 768 * 768, 32 * 32).size == (768, 768)
    assert cap_pixels(Image.new("RGB", (2000, 500)), 768 * 768).size == (1536, 384)
    assert cap_pixels(Image.new("RGB", (10, 10)), 768 * 768, 32 * 32).size == (32, 32)
    assert cap_pixels(Image.new("RGB", (100, 20)), 768 * 768, 32 * 32).size == (100, 28)  # Qwen2-VL: sides >= 28
    assert cap_pixels(Image.new("L", (60, 60))).mode == "RGB" and cap_pixels(Image.new("RGB", (5, 5))).size == (5, 5)


# ----------------------------------------------------------------------------------------------------------------------
# avg@k, the Table-1 row, intervals
# ----------------------------------------------------------------------------------------------------------------------

PATTERN = [8, 4, 2, 6, 0]  # correct samples out of 8 for the 1st, 2nd, ... question of every benchmark


def test_avg_at_8_and_the_table1_row_on_known_correctness(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [(name, paths[name]) for name in TABLE1_BENCHMARKS]
    records = [r for name, path in pairs for r in load_benchmark(name, path)]
    sizes = [len(load_benchmark(name, path)) for name, path in pairs]
    n_correct = [PATTERN[i] for size in sizes for i in range(size)]
    gen = KnownGenerator([r.answer for r in records], n_correct, 8)
    summary = evaluate(config(tmp_path, pairs, batch_size=5, compare_paper="3b"), generator=gen, print_table=False)
    paper = summary["graders"]["paper"]
    # by hand: 2 questions -> (8 + 4) / 16; MathVerse's 5 -> (8+4+2+6+0) / 40; MathVerse_V's 3 -> (8+4+2) / 24
    hand = {name: 0.75 for name in TABLE1_BENCHMARKS} | {"mathverse": 0.5, "mathverse_v": 14 / 24}
    assert {n: r["accuracy"] for n, r in paper["benchmarks"].items()} == pytest.approx(hand)
    assert paper["table1"]["avg"] == pytest.approx((6 * 0.75 + 0.5 + 14 / 24) / 8)
    assert paper["benchmarks"]["geo3k"]["truncated"] == 4 and paper["benchmarks"]["mathverse"]["truncated"] == 20
    assert paper["benchmarks"]["mathverse"]["samples"] == 40 and paper["benchmarks"]["mathverse"]["n"] == 5
    assert paper["benchmarks"]["geo3k"]["pass_at_k"] == 1.0 and paper["benchmarks"]["mathverse"]["pass_at_k"] == 0.8
    lo, hi = paper["benchmarks"]["mathverse"]["ci95"]
    assert 0 <= lo <= 0.5 <= hi <= 1 and paper["table1"]["avg_ci95"][0] <= paper["table1"]["avg"]
    md = (tmp_path / "summary.md").read_text()
    header = "|  | Geo3k | MMK12 | MathVerse | DynaMath | MathVision | LogicVista | MMMU-Pro | MathVerse_V | Avg. |"
    assert header in md
    assert (
        "| this run, avg@8 (paper grader) | 75.00 | 75.00 | 50.00 | 75.00 | 75.00 | 75.00 | 75.00 | 58.33 | 69.79 |"
        in md
    )
    assert "| paper: 3B PGPO | 36.11 | 64.74 | 62.06 | 48.45 | 26.90 | 43.20 | 29.33 | 57.24 | 46.00 |" in md
    assert "| questions | 2 | 2 | 5 | 2 | 2 | 2 | 2 | 3 |" in md and "| truncated completions | 4 |" in md
    assert "Second grader, `lenient` (not comparable with the paper's numbers)" in md
    lines = read_samples(tmp_path / "geo3k.jsonl")
    assert len(lines) == 16 and {"paper_correct", "lenient_correct", "truncated", "completion"} <= set(lines[0])


def test_avg_needs_all_eight_columns(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"]), ("mmk12", paths["mmk12"])]
    gen = ScriptedGenerator([r"\boxed{3}", r"\boxed{0}", r"\boxed{2\sqrt{3}}", r"\boxed{0}", r"\boxed{A}"])
    summary = evaluate(config(tmp_path, pairs, k=2), generator=gen, print_table=False)
    t1 = summary["graders"]["paper"]["table1"]
    assert t1["avg"] is None and t1["columns_run"] == ["geo3k", "mmk12"]
    assert "Avg. needs all eight columns; the mean of the 2 run (geo3k, mmk12)" in (tmp_path / "summary.md").read_text()


def test_graders_are_reported_apart(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [("mmk12", paths["mmk12"])]  # m1 gold A, m2 gold D; samples (m1,0) (m1,1) (m2,0) (m2,1)
    gen = ScriptedGenerator([r"<think>.</think>\boxed{A}", "The answer is A", r"\boxed{(D) 4}", r"\boxed{D"])
    summary = evaluate(config(tmp_path, pairs, k=2), generator=gen, print_table=False)
    assert summary["graders"]["paper"]["benchmarks"]["mmk12"]["correct"] == 1  # only the boxed A
    assert summary["graders"]["lenient"]["benchmarks"]["mmk12"]["correct"] == 3  # also unboxed A and "(D) 4"
    lines = read_samples(tmp_path / "mmk12.jsonl")
    assert [x["paper_correct"] for x in lines] == [True, False, False, False]
    assert [x["lenient_correct"] for x in lines] == [True, True, True, False]
    lenient = evaluate(config(tmp_path, pairs, k=2, grader="lenient"), generator=gen, print_table=False)
    assert list(lenient["graders"]) == ["lenient", "paper"]
    assert "this run, avg@2 (lenient grader)" in (tmp_path / "summary.md").read_text()


def test_bootstrap_interval_is_deterministic_given_a_seed():
    pattern = np.random.default_rng(123).random((37, 8)) < 0.4
    scores = {"geo3k": {str(i): [bool(x) for x in row] for i, row in enumerate(pattern)}}
    args = ({"geo3k": []}, {"geo3k": 37}, 8)
    a = summarize(scores, *args, bootstrap=500, seed=7)["benchmarks"]["geo3k"]["ci95"]
    b = summarize(scores, *args, bootstrap=500, seed=7)["benchmarks"]["geo3k"]["ci95"]
    c = summarize(scores, *args, bootstrap=500, seed=8)["benchmarks"]["geo3k"]["ci95"]
    assert a == b and a != c and a[0] < np.mean([np.mean(v) for v in scores["geo3k"].values()]) < a[1]
    # the resampling itself, against numpy by hand
    values = [0.0, 0.5, 1.0, 1.0]
    got = bootstrap_means(values, 3, np.random.default_rng(0))
    idx = np.random.default_rng(0).integers(0, 4, size=(3, 4))
    assert got.tolist() == [float(np.mean([values[j] for j in row])) for row in idx]


# ----------------------------------------------------------------------------------------------------------------------
# Resume, shards, the tiny model, the CLI
# ----------------------------------------------------------------------------------------------------------------------


def test_resume_skips_done_samples(bench_root, greedy, tmp_path):
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"]), ("mathvista", paths["mathvista"])]  # 2 + 3 questions
    first = CountingGenerator(greedy)
    evaluate(config(tmp_path, pairs, k=2, batch_size=4), generator=first, print_table=False)
    assert first.prompts == 10 and first.calls == 1 + 2  # 4 geo3k samples in one batch, 6 mathvista in two

    again = CountingGenerator(greedy)
    evaluate(config(tmp_path, pairs, k=2, batch_size=4), generator=again, print_table=False)
    assert again.calls == 0

    # a crash: the last sample is lost and the one before it is half-written
    path = tmp_path / "mathvista.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][: len(lines[-2]) // 2])
    third = CountingGenerator(greedy)
    summary = evaluate(config(tmp_path, pairs, k=2), generator=third, print_table=False)
    assert third.prompts == 2
    keys = [(x["id"], x["sample_index"]) for x in read_samples(path)]
    assert len(keys) == len(set(keys)) == 6
    assert all(json.loads(x) for x in path.read_text().splitlines())  # no torn line left behind
    assert summary["graders"]["paper"]["benchmarks"]["mathvista"]["samples"] == 6

    # raising k only generates the new sample indices
    fourth = CountingGenerator(greedy)
    evaluate(config(tmp_path, pairs, k=3), generator=fourth, print_table=False)
    assert fourth.prompts == 5


def test_shards_split_the_questions_and_the_summary_reads_them_all(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [("mathverse", paths["mathverse"])]  # 5 questions
    gens = [CountingGenerator(ScriptedGenerator([r"\boxed{B}"])) for _ in range(2)]
    for i in (0, 1):
        evaluate(config(tmp_path, pairs, k=2, num_shards=2, shard_index=i), generator=gens[i], print_table=False)
    assert [g.prompts for g in gens] == [6, 4]  # questions 0, 2, 4 and 1, 3
    assert sorted(p.name for p in tmp_path.glob("mathverse*.jsonl")) == [
        "mathverse.shard0-of-2.jsonl",
        "mathverse.shard1-of-2.jsonl",
    ]
    last = CountingGenerator(ScriptedGenerator([r"\boxed{A}"]))
    summary = evaluate(config(tmp_path, pairs, k=2), generator=last, print_table=False)  # one process: nothing left
    assert last.prompts == 0 and len(read_benchmark_samples(tmp_path, "mathverse")) == 10
    assert summary["graders"]["paper"]["benchmarks"]["mathverse"]["accuracy"] == 1.0
    with pytest.raises(ValueError, match="not a valid shard"):
        EvalConfig(num_shards=2, shard_index=2).shard()


def test_tiny_model_generates_for_every_benchmark(bench_root, greedy, tmp_path):
    _, paths = bench_root
    pairs = [(name, paths[name]) for name in (*TABLE1_BENCHMARKS, "mathvista", "wemath")]
    summary = evaluate(config(tmp_path, pairs, k=1, batch_size=8), generator=greedy, print_table=False)
    for name, path in pairs:
        lines = read_samples(tmp_path / f"{name}.jsonl")
        assert len(lines) == len(load_benchmark(name, path))
        for line in lines:
            assert isinstance(line["truncated"], bool) and 1 <= line["num_tokens"] <= MAX_NEW_TOKENS
            assert line["truncated"] == (line["num_tokens"] == MAX_NEW_TOKENS)  # no end-of-sequence within budget
    assert summary["backend"] == "hf"


def test_cli_eval_end_to_end_on_saved_tiny_model(bench_root, tmp_path):
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    root, _ = bench_root
    model_dir = save_tiny_qwen25vl(tmp_path / "tiny")
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--benchmark", "geo3k", "--benchmark", "mmmu_pro", "--data", str(root)]
    args += ["--protocol", "quick", "--k", "2", "--temperature", "1.0", "--max-new-tokens", str(MAX_NEW_TOKENS)]
    args += [
        "--out",
        str(out),
        "--limit",
        "1",
        "--batch_size",
        "2",
        "--backend",
        "hf",
        "--no_progress",
        "--compare_paper",
        "7b",
    ]
    assert cli_main(args) == 0
    assert len((out / "geo3k.jsonl").read_text().splitlines()) == 2
    assert len((out / "mmmu_pro.jsonl").read_text().splitlines()) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "hf" and summary["settings"]["k"] == 2 and summary["settings"]["protocol"] == "quick"
    assert "paper: 7B PGPO" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_accelerate_two_processes(bench_root, tmp_path):
    """``accelerate launch`` with two CPU processes (gloo): one shard file each, shard 0 writes the full summary."""
    import os
    import subprocess
    import sys

    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    root, _ = bench_root
    model_dir = save_tiny_qwen25vl(tmp_path / "tiny")
    out = tmp_path / "out"
    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--main_process_port", "29547"]
    cmd += ["-m", "pgpo.cli", "eval", "--model", str(model_dir), "--benchmark", "mathverse", "--data", str(root)]
    cmd += ["--out", str(out), "--protocol", "quick", "--max_new_tokens", "2", "--backend", "hf", "--no_progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.jsonl")) == ["mathverse.shard0-of-2.jsonl", "mathverse.shard1-of-2.jsonl"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graders"]["paper"]["benchmarks"]["mathverse"]["n"] == 5  # 3 + 2 questions, both shards read
    assert proc.stdout.count("results in") == 1


def test_cli_bad_input_exits_with_message(tmp_path, capsys):
    rc = cli_main(["eval", "--model", "x", "--benchmark", "nope", "--data", str(tmp_path), "--out", str(tmp_path)])
    assert rc == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err
    rc = cli_main(["eval", "--model", "./no/such/model", "--benchmark", "geo3k", "--data", str(tmp_path)])
    assert rc == 2 and "--out is required" in capsys.readouterr().err


def test_load_model(tmp_path):
    from pgpo.models import load_model

    model, processor = load_model("tiny-qwen", device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and not model.training
    with pytest.raises(ValueError, match="model folder not found: .*no_model"):
        load_model(str(tmp_path / "no_model"))
    with pytest.raises(ValueError, match="model folder not found"):
        load_model("./runs/missing")


# ----------------------------------------------------------------------------------------------------------------------
# Output folders and inputs: nothing mixed, nothing overwritten
# ----------------------------------------------------------------------------------------------------------------------


def test_out_of_another_model_or_other_settings_is_refused_naming_the_difference(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"])]
    evaluate(config(tmp_path, pairs, k=1, model="model-A"), generator=ScriptedGenerator([r"\boxed{3}"]))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for change, old, new in [({"model": "model-B"}, "'model-A'", "'model-B'"), ({"temperature": 0.5}, "1.0", "0.5")]:
        gen = CountingGenerator(ScriptedGenerator([r"\boxed{0}"]))
        with pytest.raises(ValueError) as err:
            evaluate(config(tmp_path, pairs, **{"k": 1, "model": "model-A", **change}), generator=gen)
        key = next(iter(change))
        assert f"{key}: {old} there, {new} now" in str(err.value)
        assert "a new --out" in str(err.value) and "--overwrite_out" in str(err.value)
        assert gen.calls == 0 and {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # the same command still resumes; k and the grader are not settings of the samples
    gen = CountingGenerator(ScriptedGenerator([r"\boxed{3}"]))
    evaluate(config(tmp_path, pairs, k=2, model="model-A", grader="lenient"), generator=gen, print_table=False)
    assert gen.prompts == 2
    # under a launcher (or by hand) a shard with other settings is refused as well
    with pytest.raises(ValueError, match="temperature: 1.0 there, 0.0 now"):
        evaluate(config(tmp_path, pairs, k=1, model="model-A", temperature=0.0, num_shards=2, shard_index=1))


def test_cli_eval_of_another_model_exits_2_and_overwrite_out_removes_only_its_own_files(bench_root, tmp_path, capsys):
    from pgpo.models.tiny_qwen import save_tiny_qwen25vl

    root, _ = bench_root
    out = tmp_path / "out"
    args = ["eval", "--benchmark", "geo3k", "--data", str(root), "--out", str(out), "--protocol", "quick"]
    args += ["--max_new_tokens", str(MAX_NEW_TOKENS), "--limit", "1", "--no_progress"]
    other_model = str(save_tiny_qwen25vl(tmp_path / "other_model", seed=1))
    assert cli_main([*args, "--model", "tiny-qwen"]) == 0
    (out / "notes.txt").write_text("mine")
    assert cli_main([*args, "--model", other_model]) == 2
    err = capsys.readouterr().err
    assert f"model: 'tiny-qwen' there, '{other_model}' now" in err and "--overwrite_out" in err
    assert json.loads((out / "summary.json").read_text())["model"] == "tiny-qwen"
    assert cli_main([*args, "--model", other_model, "--k", "2", "--overwrite_out"]) == 0
    assert (out / "notes.txt").read_text() == "mine"
    assert len(read_samples(out / "geo3k.jsonl")) == 2  # generated afresh with the new model
    assert json.loads((out / "summary.json").read_text())["model"] == other_model
    assert json.loads((out / "config.json").read_text())["model"] == other_model


def test_non_empty_out_not_written_by_pgpo_eval_is_refused_and_kept(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"])]
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    (mine / "report.pdf").write_text("mine")
    gen = CountingGenerator(ScriptedGenerator([r"\boxed{3}"]))
    with pytest.raises(ValueError, match=r"is not empty \(report.pdf\) and was not written by pgpo eval"):
        evaluate(config(mine, pairs, k=1), generator=gen)
    assert gen.calls == 0 and [p.name for p in mine.iterdir()] == ["report.pdf"]
    evaluate(config(mine, pairs, k=1, overwrite_out=True), generator=gen, print_table=False)  # told: beside it
    assert (mine / "report.pdf").read_text() == "mine" and len(read_samples(mine / "geo3k.jsonl")) == 2
    # files named like pgpo eval's own, in a folder it did not write: never read as samples, never overwritten
    other.mkdir()
    (other / "geo3k.jsonl").write_text('{"id": "g1", "sample_index": 0, "completion": "x"}\n')
    (other / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    before = {p.name: p.read_text() for p in other.iterdir()}
    with pytest.raises(ValueError, match=r"holds config.json, geo3k.jsonl, named like pgpo eval's files"):
        evaluate(config(other, pairs, k=1, overwrite_out=True), generator=gen)
    assert {p.name: p.read_text() for p in other.iterdir()} == before and gen.calls == 1


def test_out_of_an_older_pgpo_resumes_and_refuses_other_settings(bench_root, tmp_path):
    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"])]
    evaluate(config(tmp_path, pairs, k=1), generator=ScriptedGenerator([r"\boxed{3}"]), print_table=False)
    legacy = json.loads((tmp_path / "config.json").read_text())
    legacy.pop("written_by")
    (tmp_path / "config.json").write_text(json.dumps(legacy | {"protocol": "paper", "k": 1, "grader": "paper"}))
    gen = CountingGenerator(ScriptedGenerator([r"\boxed{3}"]))
    evaluate(config(tmp_path, pairs, k=1), generator=gen, print_table=False)
    assert gen.calls == 0
    with pytest.raises(ValueError, match="top_p: 1.0 there, 0.9 now"):
        evaluate(config(tmp_path, pairs, k=1, top_p=0.9), generator=gen)


def test_overwrite_out_with_shards(bench_root, tmp_path, monkeypatch):
    """By hand a shard could remove another's samples: refused. Under a launcher shard 0 removes, the others wait."""
    import pgpo.eval.evaluate as ev

    _, paths = bench_root
    pairs = [("geo3k", paths["geo3k"])]
    with pytest.raises(ValueError, match="--overwrite_out with shards started by hand"):
        evaluate(config(tmp_path, pairs, k=1, overwrite_out=True, num_shards=2, shard_index=1), generator=None)
    evaluate(config(tmp_path, pairs, k=1), generator=ScriptedGenerator([r"\boxed{3}"]), print_table=False)
    waits = []
    monkeypatch.setattr(ev, "_barrier", waits.append)
    monkeypatch.setenv("WORLD_SIZE", "2")
    held = ev.sample_settings("fake", "custom", EvalConfig(k=1, temperature=0.5).resolve())
    ev.prepare_out(tmp_path, held, overwrite=True, shard=(0, 2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"] and waits == [2]
    assert json.loads((tmp_path / "config.json").read_text())["temperature"] == 0.5
    (tmp_path / "geo3k.shard0-of-2.jsonl").write_text("")  # shard 0 at work
    ev.prepare_out(tmp_path, held, overwrite=True, shard=(1, 2))  # shard 1 removes nothing
    assert (tmp_path / "geo3k.shard0-of-2.jsonl").exists() and waits == [2, 2]


def test_cli_eval_of_an_empty_benchmark_file_exits_2_naming_it(tmp_path, capsys):
    data = tmp_path / "geo3k.jsonl"
    data.write_text("")
    out = tmp_path / "out"
    rc = cli_main(["eval", "--model", "tiny-qwen", "--benchmark", "geo3k", "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and f"geo3k: no questions in {data}" in err and "holds no rows" in err
    assert not (out / "summary.json").exists()


def test_model_with_nan_weights_is_refused_before_generation(bench_root, tmp_path, capsys):
    import torch

    from pgpo.models import load_model
    from pgpo.models.tiny_qwen import build_tiny_qwen25vl

    model, processor = build_tiny_qwen25vl(seed=0)
    names = [name for name, _ in model.named_parameters()]
    with torch.no_grad():
        for name in names[:5]:
            model.get_parameter(name).view(-1)[0] = float("nan")
    model_dir = tmp_path / "nan_model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    with pytest.raises(ValueError) as err:
        load_model(str(model_dir), device="cpu")
    msg = str(err.value)
    assert str(model_dir) in msg and "5 tensor(s)" in msg and "NaN or inf" in msg
    root, _ = bench_root
    out = tmp_path / "out"
    args = ["eval", "--model", str(model_dir), "--benchmark", "geo3k", "--data", str(root), "--out", str(out)]
    assert cli_main([*args, "--protocol", "quick", "--backend", "hf", "--no_progress"]) == 2
    assert "non-finite" in capsys.readouterr().err and not (out / "geo3k.jsonl").exists()


@pytest.mark.parametrize("command", ["eval", "inspect"])
def test_unknown_key_in_a_config_yaml_is_named(command, tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("temprature: 0.5\n" if command == "eval" else "promt: hi\n")
    with pytest.raises(SystemExit) as exit_:
        cli_main([command, "--config", str(path)])
    key, close = ("temprature", "temperature") if command == "eval" else ("promt", "prompt")
    assert exit_.value.code == 2
    assert (
        f"pgpo {command}: error: unknown option '{key}' in {path} (did you mean '{close}'?)" in capsys.readouterr().err
    )


def test_config_equals_form_and_a_missing_config_value(tmp_path, capsys):
    from pgpo.commands.eval import parse

    path = tmp_path / "c.yaml"
    path.write_text("temperature: 0.5\nk: 3\n")
    assert (parse([f"--config={path}", "--k", "2"]).temperature, parse([f"--config={path}"]).k) == (0.5, 3)
    with pytest.raises(SystemExit) as exit_:
        parse(["--k", "2", "--config"])
    assert (
        exit_.value.code == 2
        and "pgpo eval: error: argument --config: expected one argument" in capsys.readouterr().err
    )
