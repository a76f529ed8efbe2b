"""RLVR data loaders: ViRL39K parquet + images, save_to_disk folders, JSONL + image folder, and their errors."""

from __future__ import annotations

import io
import json

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pgpo.data import (
    EASYR1_PROMPT_TEMPLATE,
    PAPER_PROMPT_TEMPLATE,
    PAPER_SYSTEM_PROMPT,
    build_messages,
    format_prompt,
    image_values,
    load_rlvr_dataset,
    records_to_dataset,
    resolve_prompt_template,
    strip_image_placeholders,
)

INSTRUCTION = PAPER_PROMPT_TEMPLATE.format(question="").strip()
# The paper's prompt (PGPO Sec. 5.1 / App. A), typed from the paper, not from pgpo's constant.
PAPER_WORDING = (
    "You first think through the reasoning process as an internal monologue, enclosed within <think> </think> tags. "
    "Then, provide your final answer enclosed within \\boxed{}."
)


def _png(path, color="red"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)
    return path


def _png_bytes(color="red"):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return buf.getvalue()


def _virl_row(qid, question, answer, images, source="MM-Eureka"):
    # TIGER-Lab/ViRL39K's 39Krelease.parquet columns
    return {
        "question": question,
        "answer": answer,
        "PassRate_32BTrained": 0.5,
        "PassRate_7BBase": 0.25,
        "category": "Spatial Reasoning",
        "source": source,
        "qid": qid,
        "image": images,
    }


@pytest.fixture
def virl_dir(tmp_path):
    _png(tmp_path / "images" / "a.png", "red")
    _png(tmp_path / "images" / "b.png", "blue")
    rows = [
        _virl_row("q1", "<image>What colour is the square?", r"\boxed{red}", ["images/a.png"]),
        _virl_row("q2", "<image><image> Which is bigger?", r"\boxed{17^\circ}", ["images/a.png", "images/b.png"]),
        _virl_row("q3", "What is 2+2?", r"\boxed{4}", [], source="DeepScaleR"),  # text-only row
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "39Krelease.parquet")
    return tmp_path


def test_default_prompt_is_the_papers():
    # question (placeholders removed, trimmed as PAPO's {{ content | trim }}), a blank line, the paper's instruction
    assert format_prompt("<image>What is x? ") == "What is x?\n\n" + PAPER_WORDING
    assert INSTRUCTION == PAPER_WORDING
    assert PAPER_SYSTEM_PROMPT == "You are a helpful assistant."
    assert strip_image_placeholders("<image1> a <image 2>b<image_3> <IMAGE>") == "a b"
    assert format_prompt("Q", EASYR1_PROMPT_TEMPLATE).startswith("Q\nYou FIRST think about the reasoning process")


def test_named_prompt_templates():
    assert resolve_prompt_template(None) == resolve_prompt_template("paper") == PAPER_PROMPT_TEMPLATE
    assert (
        resolve_prompt_template("plain") == "{question}" and resolve_prompt_template("Q: {question}") == "Q: {question}"
    )
    with pytest.raises(ValueError, match="neither a name"):
        resolve_prompt_template("papr")


def test_build_messages_one_image_entry_per_image():
    messages = build_messages("Q?", 2)
    content = messages[0]["content"]
    assert messages[0]["role"] == "user" and len(messages) == 1
    assert [c["type"] for c in content] == ["image", "image", "text"]
    assert content[-1]["text"].startswith("Q?\n\n")
    with_system = build_messages("Q?", 1, system_prompt=PAPER_SYSTEM_PROMPT)
    assert with_system[0] == {"role": "system", "content": [{"type": "text", "text": PAPER_SYSTEM_PROMPT}]}
    assert with_system[1]["role"] == "user"


def test_paper_system_message_renders_like_qwens_default(tiny_qwen):
    """Qwen's chat template adds "You are a helpful assistant." itself: the explicit message changes nothing there."""
    _, processor = tiny_qwen
    render = lambda m: processor.apply_chat_template(m, tokenize=False, add_generation_prompt=True)  # noqa: E731
    assert render(build_messages("Q?", 1, system_prompt=PAPER_SYSTEM_PROMPT)) == render(build_messages("Q?", 1))


def test_tasks_messages_come_from_the_one_builder():
    from pgpo.tasks.hf import DEFAULT_PROMPT_TEMPLATE, prompt_text, to_messages

    sample = {"question": "How many dots?", "choices": None, "family": "count"}
    text = prompt_text(sample, DEFAULT_PROMPT_TEMPLATE)
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}
    assert to_messages(sample, system_prompt=None) == [user]
    system = {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]}
    assert to_messages(sample) == [system, user]  # the paper's system message by default


def test_virl39k_parquet_with_image_folder(virl_dir):
    ds = load_rlvr_dataset(virl_dir / "39Krelease.parquet")
    assert len(ds) == 2  # the text-only DeepScaleR row is dropped by default
    assert set(ds.column_names) == {"prompt", "images", "answer", "id"}  # one row has two images -> "images"
    assert ds["answer"] == ["red", r"17^\circ"]  # outer \boxed{} removed
    assert ds["id"] == ["q1", "q2"]
    row = ds[1]
    assert len(row["images"]) == 2 and all(isinstance(im, Image.Image) for im in row["images"])
    types = [c["type"] for c in row["prompt"][0]["content"]]
    assert types == ["image", "image", "text"]
    text = row["prompt"][0]["content"][-1]["text"]
    assert "<image>" not in text and text.startswith("Which is bigger?\n") and INSTRUCTION in text


def test_virl39k_folder_and_text_only_modes(virl_dir):
    assert len(load_rlvr_dataset(virl_dir, text_only="keep")) == 3
    with pytest.raises(ValueError, match="row 2: no image"):
        load_rlvr_dataset(virl_dir, text_only="error")


def test_single_image_rows_give_an_image_column(virl_dir):
    ds = load_rlvr_dataset(virl_dir, limit=1)
    assert ds.column_names == ["prompt", "image", "answer", "id"]
    assert isinstance(ds[0]["image"], Image.Image) and ds[0]["image"].size == (32, 32)


def test_prompt_renders_one_image_pad_per_image(virl_dir, tiny_qwen):
    _, processor = tiny_qwen
    ds = load_rlvr_dataset(virl_dir)
    for row in ds:
        text = processor.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
        assert text.count("<|image_pad|>") == len(row["images"])


def test_save_to_disk_dataset_with_images_list(tmp_path):
    # Kun-Xiang/ViRL39K mirror schema: problem / answer / images (list of Image) / qid / category / id
    features = datasets.Features(
        {
            "answer": datasets.Value("string"),
            "category": datasets.Value("string"),
            "qid": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "problem": datasets.Value("string"),
            "id": datasets.Value("int64"),
        }
    )
    rows = {
        "answer": [r"\boxed{A}", "3"],
        "category": ["x", "y"],
        "qid": ["k1", "k2"],
        "images": [[{"bytes": _png_bytes("red"), "path": None}], [{"bytes": _png_bytes("blue"), "path": None}]],
        "problem": ["<image>Pick one.", "<image>Count."],
        "id": [0, 1],
    }
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "test": ds.select([0])}).save_to_disk(str(tmp_path / "saved"))
    out = load_rlvr_dataset(tmp_path / "saved")
    assert len(out) == 2 and out["answer"] == ["A", "3"] and out["id"] == ["k1", "k2"]
    assert "image" in out.column_names
    assert len(load_rlvr_dataset(tmp_path / "saved", split="test")) == 1


def test_jsonl_with_image_folder(tmp_path):
    _png(tmp_path / "imgs" / "0.png")
    _png(tmp_path / "imgs" / "1.png", "green")
    records = [
        {"question": "<image>Q0", "answer": "1", "image": "imgs/0.png"},
        {"question": "<image>Q1", "answer": 2, "images": ["imgs/1.png"]},
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    ds = load_rlvr_dataset(path)
    assert ds["answer"] == ["1", "2"] and "id" not in ds.column_names
    assert ds[1]["image"].getpixel((0, 0)) == (0, 128, 0)
    # images somewhere else
    other = tmp_path / "elsewhere.jsonl"
    other.write_text(json.dumps({"question": "Q", "answer": "1", "image": "0.png"}) + "\n")
    assert len(load_rlvr_dataset(other, image_root=tmp_path / "imgs")) == 1


def test_records_accept_pil_and_bytes():
    ds = records_to_dataset(
        [
            {"question": "a", "answer": "1", "image": Image.new("RGB", (8, 8))},
            {"question": "b", "answer": "2", "image": _png_bytes()},
        ]
    )
    assert len(ds) == 2


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"answer": "1", "image": "imgs/0.png"}, r"row 1: missing column 'question'"),
        ({"question": "q", "image": "imgs/0.png"}, r"row 1: missing column 'answer'"),
        ({"question": "q", "answer": "1"}, r"row 1: missing column 'image'"),
        ({"question": "q", "answer": "1", "image": "imgs/nope.png"}, r"row 1: image 0: image file not found"),
        ({"question": "q", "answer": "1", "image": "imgs/broken.png"}, r"row 1: image 0: cannot decode image"),
        ({"question": "q", "answer": "1", "images": ["imgs/0.png", 42]}, r"row 1: image 1: unsupported image value"),
    ],
)
def test_bad_rows_raise_value_error_naming_the_row(tmp_path, bad, match):
    _png(tmp_path / "imgs" / "0.png")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    good = {"question": "ok", "answer": "1", "image": "imgs/0.png"}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=match):
        load_rlvr_dataset(path)


def test_truncated_image_is_caught(tmp_path):
    data = _png_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="row 0: image 0: cannot decode"):
        records_to_dataset([{"question": "q", "answer": "1", "image": str(tmp_path / "t.png")}])


def test_several_splits_need_a_choice(tmp_path):
    ds = datasets.Dataset.from_dict({"question": ["q"], "answer": ["1"], "image": [_png_bytes()]})
    datasets.DatasetDict({"a": ds, "b": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match="several splits"):
        load_rlvr_dataset(tmp_path / "dd")
    assert len(load_rlvr_dataset(tmp_path / "dd", split="a,b")) == 2


def test_missing_path_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_rlvr_dataset(tmp_path / "nope.parquet")


def test_image_values_reads_images_before_image_as_trl_does():
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    assert image_values({"images": [red, None], "image": blue}) == [red]
    assert image_values({"images": None, "image": blue}) == []  # the column is there: TRL reads it, empty
    assert image_values({"image": blue}) == [blue] and image_values({"image": None}) == []
    assert image_values({"prompt": "q"}) is None
