"""``pgpo inspect``: per-token S, I and w~ on the tiny Qwen2.5-VL, the summary, the HTML / PNG renderers, the CLI."""

import html
import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from reference.browser import CHROMIUM, screenshot

from pgpo.commands import inspect as cli
from pgpo.dependency import k3_dependency, token_kl
from pgpo.inspection import decode_tokens, render_html, render_png, score_tokens, sparsity_summary
from pgpo.shaping import PGPOShapingConfig, pgpo_weights

END = "<|im_end|>"


def _image(colour="red", size=56):
    im = Image.new("RGB", (size, size), "white")
    ImageDraw.Draw(im).ellipse((8, 8, size - 8, size - 8), fill=colour)
    return im


@pytest.fixture(scope="module")
def scored(tiny_qwen):
    model, processor = tiny_qwen
    completion = "There are three red circles.\nAnswer: 3"
    return score_tokens(model, processor, [_image()], "How many red circles are there?", completion), completion


def test_tokens_align_with_the_completion(tiny_qwen, scored):
    _, processor = tiny_qwen
    result, completion = scored
    tok = processor.tokenizer
    assert "".join(result.tokens) == completion + END
    assert result.token_ids == tok(completion, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(END)]
    n = len(result.tokens)
    assert n == len(result.token_ids) == len(result.scores) == len(result.importance) == len(result.weights)
    assert all(math.isfinite(s) and s >= 0 for s in result.scores)
    assert all(lp <= 0 for lp in result.logprobs)
    assert min(result.importance) == 0 and max(result.importance) == pytest.approx(1.0, abs=1e-3)  # 1 - eps / range
    assert sum(result.weights) == pytest.approx(n)  # Eq. 7
    assert (result.estimator, result.text_only_mode, result.tau) == ("k3", "mask", 0.4)
    assert result.n_images == 1 and not result.generated and "<|vision_start|>" in result.prompt_text


def _prompt_logits(model, processor, prompt, comp, images, n_images, masked=False):
    """Full-logits reference: the chat with or without image parts; ``masked`` hides the image tokens with the
    attention mask and passes the image pass's own position ids (captured from the rotary embedding)."""
    T = comp.shape[1]
    msgs = [{"role": "user", "content": [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    enc = dict(processor(images=images, text=[text], return_tensors="pt"))
    enc["input_ids"] = torch.cat([enc["input_ids"], comp], 1)
    enc["attention_mask"] = torch.ones_like(enc["input_ids"])
    if "mm_token_type_ids" in enc:
        enc["mm_token_type_ids"] = torch.cat([enc["mm_token_type_ids"], torch.zeros_like(comp)], 1)
    if masked:
        captured = {}
        rot = model.model.language_model.rotary_emb
        hook = rot.register_forward_pre_hook(
            lambda m, a, kw: captured.update(pos=kw.get("position_ids", a[-1] if len(a) > 1 else None)),
            with_kwargs=True,
        )
        with torch.no_grad():
            model(**enc)
        hook.remove()
        enc["attention_mask"] = (enc["input_ids"] != model.config.image_token_id).long()
        enc["position_ids"] = captured["pos"]
    with torch.no_grad():
        return model(**enc).logits[:, -T - 1 : -1].float()


def test_scores_are_the_papers_k3_against_the_masked_blind_pass(tiny_qwen, scored):
    """S = k3 on the sampled tokens between the image pass and the literal masked forward; I and w~ are Eqs. 4-7."""
    model, processor = tiny_qwen
    result, _ = scored
    comp = torch.tensor([result.token_ids])
    img = _prompt_logits(model, processor, result.prompt, comp, [[_image()]], 1)
    blind = _prompt_logits(model, processor, result.prompt, comp, [[_image()]], 1, masked=True)
    lp = lambda x: torch.log_softmax(x, -1).gather(-1, comp[..., None]).squeeze(-1)  # noqa: E731
    ref = k3_dependency(lp(img), lp(blind))[0]
    torch.testing.assert_close(torch.tensor(result.scores), ref, atol=1e-4, rtol=1e-3)
    w, i = pgpo_weights(ref[None].double(), torch.ones(1, ref.numel()))
    torch.testing.assert_close(torch.tensor(result.weights, dtype=torch.float64), w[0], atol=1e-3, rtol=1e-3)


def test_kl_estimator_is_the_exact_kl_against_the_masked_blind_pass(tiny_qwen, scored):
    model, processor = tiny_qwen
    _, completion = scored
    result = score_tokens(model, processor, [_image()], "How many red circles are there?", completion, estimator="kl")
    comp = torch.tensor([result.token_ids])
    img = _prompt_logits(model, processor, result.prompt, comp, [[_image()]], 1)
    blind = _prompt_logits(model, processor, result.prompt, comp, [[_image()]], 1, masked=True)
    torch.testing.assert_close(torch.tensor(result.scores), token_kl(img, blind)[0], atol=1e-4, rtol=1e-4)


def test_no_image_control_gives_zero(tiny_qwen):
    model, processor = tiny_qwen
    result = score_tokens(model, processor, [], "What is 2+2?", "4")
    assert result.n_images == 0 and len(result.scores) == 2
    assert max(result.scores) < 1e-6
    assert result.weights == [1.0, 1.0]  # degenerate response: all scores equal -> w~ = 1


@pytest.mark.parametrize("mode", ["remove_reindex", "blank"])
def test_other_text_only_modes_and_two_images(tiny_qwen, mode):
    model, processor = tiny_qwen
    result = score_tokens(
        model, processor, [_image("red"), _image("blue")], "Compare them.", "Left red", text_only_mode=mode
    )
    assert result.n_images == 2 and result.text_only_mode == mode
    assert all(math.isfinite(s) and s >= 0 for s in result.scores)


def test_generated_completion(tiny_qwen):
    model, processor = tiny_qwen
    result = score_tokens(model, processor, _image(), "Describe the image.", max_new_tokens=5)
    assert result.generated and 1 <= len(result.tokens) <= 5
    assert "".join(result.tokens) == processor.tokenizer.decode(result.token_ids, skip_special_tokens=False)


def test_bad_arguments_raise(tiny_qwen):
    model, processor = tiny_qwen
    with pytest.raises(ValueError, match="prompt is empty"):
        score_tokens(model, processor, [_image()], "  ", "x")
    with pytest.raises(ValueError, match="text_only_mode"):
        score_tokens(model, processor, [_image()], "q", "x", text_only_mode="erase")
    with pytest.raises(ValueError, match="estimator"):
        score_tokens(model, processor, [_image()], "q", "x", estimator="k1")


def test_decode_tokens_keeps_multibyte_characters_whole(tiny_qwen):
    tok = tiny_qwen[1].tokenizer
    text = "猫 🐱 says naïve café 𝔘𝔫𝔦"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = decode_tokens(tok, ids)
    assert len(pieces) == len(ids) and "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces and " 🐱" in pieces  # byte pieces of one character: the last one carries it


def test_sparsity_summary_by_hand():
    # log(1 + S) = [0, 0, 0, 0, 1, 4] -> I = [0, 0, 0, 0, .25, 1]; tau = .4: one token gated
    scores = [0.0] * 4 + [math.e - 1, math.e**4 - 1]
    s = sparsity_summary(scores)
    assert s.tau == 0.4 and s.n_gated == 1 and s.gated_frac == pytest.approx(1 / 6)
    # w = [0, 0, 0, 0, .625, 3] -> w~ = w * 6 / 3.625
    assert s.weight_gated == pytest.approx(3 * 6 / 3.625) and s.weight_ungated == pytest.approx(0.625 * 6 / 3.625 / 5)
    assert s.top10_share == pytest.approx((math.e**4 - 1) / sum(scores)) and s.max == pytest.approx(math.e**4 - 1)
    low = sparsity_summary(scores, PGPOShapingConfig(tau=0.2))
    assert low.n_gated == 2
    assert sparsity_summary([0.0, 0.0]).top10_share == 0.0 and math.isnan(sparsity_summary([0.0, 0.0]).weight_gated)
    with pytest.raises(ValueError, match="no scores"):
        sparsity_summary([])
    with pytest.raises(ValueError, match="finite"):
        sparsity_summary([1.0, float("nan")])


class _Spans(HTMLParser):
    """Collects the text of every token span (data-i) of a rendered page."""

    def __init__(self):
        super().__init__()
        self.tokens, self.titles, self.gated, self._depth, self._cur = [], [], [], 0, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if self._cur is not None:
            self._depth += 1
            if tag == "br":
                self._depth -= 1
            return
        if tag == "span" and "data-i" in a:
            self._cur, self._depth = [], 0
            self.titles.append(a["title"])
            self.gated.append("gated" in a["class"].split())

    def handle_endtag(self, tag):
        if self._cur is None:
            return
        if self._depth == 0:
            self.tokens.append("".join(self._cur))
            self._cur = None
        else:
            self._depth -= 1

    def handle_data(self, data):
        if self._cur is not None:
            self._cur.append(data)


def test_render_html_contains_every_token_and_the_threshold():
    tokens = ["The", " <b>red</b>", " circle", ".\n", "Answer", ":", " 3", END]
    values = [0.01, 0.5, 0.2, 0.0, 0.03, 0.0, 0.9, 0.25]
    extra = {"S": [v * 3 for v in values], "w~": [v * 2 for v in values]}
    page = render_html(
        tokens, values, 0.25, title="t & t", prompt="How many?", images=[_image()], token_ids=range(8), extra=extra
    )
    parser = _Spans()
    parser.feed(page)
    shown = [t.replace("\u21b5", "\n") for t in parser.tokens]
    assert shown == tokens  # every token, in order, escaped correctly
    assert parser.gated == [v >= 0.25 for v in values]
    assert "I=0.9" in parser.titles[6] and "S=2.7" in parser.titles[6] and "w~=1.8" in parser.titles[6]
    assert "at or above the gate" in parser.titles[6] and "id=6" in parser.titles[6]
    assert "0.25" in page and "\u03c4" in page and "t &amp; t" in page and "How many?" in page
    assert "<b>red</b>" not in page and html.escape(" <b>red</b>") in page
    assert "data:image/png;base64," in page
    assert "http://" not in page and "https://" not in page  # self-contained: no external assets
    with pytest.raises(ValueError, match="tokens but"):
        render_html(tokens, values[:-1], 0.1)


def test_render_png(tmp_path):
    out = render_png(
        ["a", " b", "\n", "c"],
        [0.0, 0.3, 0.1, 1.0],
        0.2,
        tmp_path / "x" / "dep.png",
        title="demo",
        weights=[0, 1, 1, 2],
    )
    assert out.stat().st_size > 1000
    with Image.open(out) as im:
        assert im.width > 200 and im.height > 200
    long = render_png([f" t{i}" for i in range(500)], [i % 7 / 7 for i in range(500)], 0.5, tmp_path / "long.png")
    assert long.stat().st_size > 1000


def test_cli_writes_its_three_files(tmp_path, capsys):
    img = tmp_path / "img.png"
    _image().save(img)
    out = tmp_path / "out"
    argv = ["--model", "tiny-qwen", "--image", str(img), "--prompt", "How many?", "--completion", "Two circles."]
    assert cli.main([*argv, "--pgpo_tau", "0.2", "--out", str(out)]) == 0
    page = (out / "inspect.html").read_text()
    data = json.loads((out / "tokens.json").read_text())
    assert (out / "inspect.png").stat().st_size > 1000
    assert "".join(t["token"] for t in data["tokens"]) == "Two circles." + END
    assert all(set(t) >= {"token", "id", "S", "I", "w", "gated"} for t in data["tokens"])
    assert all(t["gated"] == (t["I"] >= 0.2) for t in data["tokens"])
    assert data["summary"]["tau"] == 0.2 and data["tau"] == 0.2
    assert sum(t["w"] for t in data["tokens"]) == pytest.approx(len(data["tokens"]))
    assert all(html.escape(t["token"]) in page for t in data["tokens"])
    assert "tokens at or above the gate" in capsys.readouterr().out


def test_cli_loads_a_saved_model_folder(tmp_path, tiny_qwen):
    model, processor = tiny_qwen
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    img = tmp_path / "img.png"
    _image().save(img)
    argv = ["--model", str(tmp_path / "m"), "--image", str(img), "--prompt", "Colour?", "--completion", "Red"]
    assert cli.main([*argv, "--out", str(tmp_path / "out")]) == 0
    assert len(json.loads((tmp_path / "out" / "tokens.json").read_text())["tokens"]) == 2


def test_cli_bad_inputs_exit_2_with_a_clear_message(tmp_path, capsys):
    good = tmp_path / "img.png"
    _image().save(good)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    base = ["--model", "tiny-qwen", "--out", str(tmp_path / "o")]
    cases = [
        (["--image", str(tmp_path / "missing.png"), "--prompt", "q"], "image file not found"),
        (["--image", str(bad), "--prompt", "q"], "cannot read image"),
        (["--image", str(good), "--prompt", "   "], "prompt is empty"),
        (["--image", str(good), "--prompt", "q", "--completion", ""], "completion is empty"),
        (["--image", str(good), "--prompt", "q", "--pgpo_tau", "1.5"], "pgpo_tau"),
        (["--image", str(good), "--prompt", "q", "--tau", "0.3"], "--tau is now --pgpo_tau"),
        (["--image", str(good), "--prompt", "q", "--estimator", "kl"], "--estimator is now --dependency_estimator"),
    ]
    for args, msg in cases:
        try:
            code = cli.main(base + args)
        except SystemExit as exit_:  # errors in the options themselves: the parser's exit
            code = exit_.code
        assert code == 2
        err = capsys.readouterr().err
        assert msg in err and err.startswith("pgpo inspect: error:"), err
        if "image" in msg:
            assert Path(args[1]).name in err  # names the file
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install -y chromium)")
def test_headless_browser_renders_the_page(tmp_path):

    tokens = ["The", " circle", " is", " red", ".", END]
    page = render_html(tokens, [0.02, 0.4, 0.01, 0.9, 0.0, 0.05], 0.4, prompt="What colour?", images=[_image()])
    (tmp_path / "inspect.html").write_text(page, encoding="utf-8")
    pixels = screenshot(tmp_path / "inspect.html", 1200, 800)
    assert pixels.shape[:2] == (800, 1200)
    assert pixels.var() > 0  # not blank
    # the token colours made it to the screen: some strongly coloured (dark red) pixels exist
    assert ((pixels[..., 0] > 100) & (pixels[..., 2] < 80) & (pixels[..., 1] < 80)).any()
