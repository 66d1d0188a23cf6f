"""Word attributions (rnnsent.explain, `rnnsent explain`): completeness for every cell and path, the same numbers as
Captum's own LayerIntegratedGradients through the model's stock forward, a cue word found on a task it decides,
integrated gradients and occlusion agreeing on real reviews with the released GRU, and the outputs (terminal, JSON,
HTML that escapes what it shows)."""
import html.parser
import io
import json
import random
import sys
from pathlib import Path

import pytest
import torch

import rnnsent
from rnnsent.model import fused
from rnnsent.inference.loading import LoadedModel
from rnnsent.cli import explain_main
from rnnsent.data import Vocab, encode_bucketed, encode_keras, tokenize
from rnnsent.inference.explain import _log_odds, align_words, explain, format_text, to_html, use_colour
from rnnsent.model.sentiment import SentimentRNN

captum = pytest.importorskip("captum.attr")
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDS = ("good", "bad", "film", "plot", "the", "a", "was", "is", "acting", "story", "and", "not", "very", "it", "!",
         ".")
IMPLS = ["torch", pytest.param("fused", marks=pytest.mark.skipif(not fused.available(), reason="no fused kernel"))]


def loaded_model(cell="gru", impl="auto", num_classes=2, encoding="keras", max_len=40, scale=8.0, seed=0):
    """A random model whose embeddings are scaled up, so that the recurrence runs well inside its non-linear range."""
    torch.manual_seed(seed)
    model = SentimentRNN(
        cell, vocab_size=len(WORDS) + 3, embed_dim=8, hidden_size=12, num_classes=num_classes, impl=impl
    )
    with torch.no_grad():
        model.embedding.weight.mul_(scale)
        model.fc.weight.mul_(4.0)
    classes = None if num_classes == 2 else [f"c{k}" for k in range(num_classes)]
    return LoadedModel(model.eval(), Vocab(WORDS), max_len, encoding, state={}, classes=classes)


def sample_texts(n=6, seed=1):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 25))) for _ in range(n)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("encoding", ["keras", "bucketed"])
@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_completeness_and_captums_own_layer_attributions(cell, num_classes, encoding, impl):
    loaded = loaded_model(cell, impl, num_classes, encoding)
    texts = sample_texts()
    out = explain(loaded, texts, steps=50, batch_size=4)
    model = loaded.model
    lig = captum.LayerIntegratedGradients(lambda t, n=None: _log_odds(model(t, n)), model.embedding)
    assert max(abs(e.score - e.baseline_score) for e in out) > 0.2, "nothing to attribute: a test that cannot fail"
    for text, e in zip(texts, out):
        # The score is the target's log-odds of the model's own forward pass (predict's probability).
        p = e.probabilities[e.target]
        assert e.score == pytest.approx(torch.logit(torch.tensor(p, dtype=torch.float64)).item(), abs=1e-4)
        assert abs(e.delta) < 0.01 * max(1.0, abs(e.score - e.baseline_score)), (cell, e.delta)
        assert sum(e.token_attributions) == pytest.approx(e.score - e.baseline_score + e.delta, abs=1e-4)
        assert sum(e.attributions) == pytest.approx(sum(e.token_attributions), abs=1e-4)  # the start token gets 0
        # Reference: Captum's layer attributions on the embedding, through forward(tokens) on PyTorch's layers.
        split = (encode_keras if encoding == "keras" else encode_bucketed)(
            [loaded.vocab.encode(tokenize(text))], [0], 40
        )
        ids, n = split.tokens, split.lengths
        base = ids.masked_fill(ids > 1, 2)  # every word unknown; padding and start token kept
        target = loaded.classes.index(e.target) if loaded.classes else 1
        lengths = n if encoding == "bucketed" else None
        ref = lig.attribute(ids, base, target=target, additional_forward_args=(lengths,), n_steps=50).sum(-1)[0]
        ref = ref[: int(n)] if encoding == "bucketed" else ref[ids.size(1) - int(n):]
        assert e.token_attributions == pytest.approx(ref.tolist(), abs=2e-4)


def test_fused_and_stock_layers_give_the_same_attributions():
    if not fused.available():
        pytest.skip(fused.status())
    texts = sample_texts(4, seed=3)
    for cell in ("lstm", "gru", "rnn"):
        a = explain(loaded_model(cell, "fused", encoding="bucketed"), texts)
        b = explain(loaded_model(cell, "torch", encoding="bucketed"), texts)
        for x, y in zip(a, b):
            assert x.token_attributions == pytest.approx(y.token_attributions, abs=1e-5)


def test_the_cue_word_that_decides_the_label_gets_the_largest_attribution_of_its_sign():
    # Filler words and one cue anywhere, "good" (label 1) or "bad" (label 0), or none (0.5, so that both cues
    # must count: else "no good" would be enough for negative and "bad" would rightly get nothing).
    torch.manual_seed(0)
    rng = random.Random(0)
    filler = [w for w in WORDS if w not in ("good", "bad")]
    vocab = Vocab(WORDS)

    def review(cue=True):
        label = 0.5 if not cue else float(rng.random() < 0.5)
        words = [rng.choice(filler) for _ in range(rng.randint(4, 14))]
        if cue:
            words.insert(rng.randrange(len(words) + 1), "good" if label else "bad")
        return " ".join(words), label

    model = SentimentRNN("gru", vocab_size=len(WORDS) + 3, embed_dim=8, hidden_size=16, impl="torch")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        batch = [review(cue=k % 3 > 0) for k in range(32)]
        ids = [[1] + vocab.encode(t.split()) for t, _ in batch]
        x = torch.zeros(32, 16, dtype=torch.long)  # pre-padded
        for r, row in enumerate(ids):
            x[r, 16 - len(row):] = torch.tensor(row)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), torch.tensor([y for _, y in batch]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    loaded = LoadedModel(model.eval(), vocab, 16, "keras", state={})
    tests = [review() for _ in range(12)]
    for e, (text, label) in zip(explain(loaded, [t for t, _ in tests]), tests):
        assert e.label == ("positive" if label else "negative"), "the model did not learn the task"
        cue = e.words.index("good" if label else "bad")
        sign = 1 if label else -1
        assert max(range(len(e.words)), key=lambda i: sign * e.attributions[i]) == cue, (text, e.attributions)


def shortest_reviews(n):
    reviews = sorted((r["t"] for r in json.loads((FIXTURES / "imdb" / "reviews.json").read_text())), key=len)
    return reviews[:n]


def test_integrated_gradients_and_occlusion_agree_on_the_strongest_words_of_real_reviews():
    loaded = rnnsent.load_checkpoint("gru")
    texts = shortest_reviews(6)
    agree = total = 0
    for ig, occ in zip(explain(loaded, texts), explain(loaded, texts, method="occlusion")):
        assert ig.words == occ.words and abs(ig.delta) < 0.01
        strongest = sorted(range(len(ig.words)), key=lambda i: -abs(ig.attributions[i]))[:5]
        agree += sum((ig.attributions[i] > 0) == (occ.attributions[i] > 0) for i in strongest)
        total += len(strongest)
    assert agree / total >= 0.9


def test_words_as_typed_with_their_tokens():
    words, tokens, owner = align_words("Great film! <br /> Don\u2019t miss it.", tokenize)
    assert words == ["Great", "film!", "<br", "/>", "Don\u2019t", "miss", "it."]
    assert tokens == ["great", "film", "!", "don't", "miss", "it", "."]
    assert owner == [0, 1, 1, 4, 5, 6, 6]


def test_empty_text_and_unknown_words_get_predicts_notes_and_zero_attributions():
    loaded = loaded_model()
    empty, unknown, mixed = explain(loaded, ["", "zzz qqq", "good zzz film"])
    assert (empty.note, empty.words, empty.attributions, empty.tokens) == ("empty", [], [], ["<start>"])
    assert unknown.note == "no known words" and unknown.unknown == [True, True] and unknown.attributions == [0.0, 0.0]
    assert unknown.delta == 0.0 and unknown.score == unknown.baseline_score
    assert mixed.note is None and mixed.unknown == [False, True, False] and mixed.attributions[1] == 0.0
    assert "zzz(unknown)" in format_text(mixed)


def test_words_beyond_max_len_are_counted_not_read():
    loaded = loaded_model(max_len=5)
    (e,) = explain(loaded, ["the plot was bad. the acting was good!"])  # 10 tokens, the last 5 read
    assert e.tokens == ["the", "acting", "was", "good", "!"] and e.cut == 4
    assert e.words == ["the", "acting", "was", "good!"] and len(e.attributions) == 4
    assert "4 words in front not read" in format_text(e)
    # the start token and "the plot" cut; "bad." partly read
    (partly,) = explain(loaded, ["the plot was bad. the acting"])
    assert partly.tokens == ["was", "bad", ".", "the", "acting"] and partly.words == ["was", "bad.", "the", "acting"]


def test_target_for_many_classes_and_errors():
    loaded = loaded_model(num_classes=3)
    (default,) = explain(loaded, ["good film"])
    assert default.target == default.label
    (toward,) = explain(loaded, ["good film"], target="c2")
    assert toward.target == "c2"
    with pytest.raises(ValueError, match="unknown target 'x': the model's classes are c0, c1, c2"):
        explain(loaded, ["good film"], target="x")
    with pytest.raises(ValueError, match="unknown method"):
        explain(loaded, ["good"], method="shap")
    with pytest.raises(TypeError, match="explain takes review texts"):
        explain(loaded, [3])
    assert [e.text for e in explain(loaded, (t for t in ["a", "b"]))] == ["a", "b"]  # any iterable


def test_json_keeps_predicts_keys():
    loaded = loaded_model()
    (e,) = explain(loaded, ["good film"])
    (p,) = loaded.predict(["good film"])
    j = e.to_json()
    assert json.loads(json.dumps(j)) == j
    assert {k: j[k] for k in ("probability", "label", "text", "oov_share", "note", "probabilities")} == {
        "probability": p.probability, "label": p.label, "text": "good film", "oov_share": 0.0, "note": None,
        "probabilities": p.probabilities}
    assert j["words"] == ["good", "film"] and len(j["attributions"]) == 2 and j["method"] == "ig" and j["steps"] == 50


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def test_html_page_escapes_the_text_and_is_self_contained():
    loaded = loaded_model()
    (e,) = explain(loaded, ['good <script>alert("x")</script> <img src=x onerror=alert(1)> film'])
    page = to_html([e])
    parsed = _Page()
    parsed.feed(page)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert '<script>alert("x")</script>' in " ".join("".join(parsed.text).split()).replace("> ", ">")
    assert "http" not in page and "src=" not in page.replace("src=x", "")  # nothing fetched from anywhere


def test_terminal_colours_only_on_a_tty_and_never_with_no_color(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    (e,) = explain(loaded_model(), ["good bad film"])
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_colour(Tty()) and not use_colour(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_colour(Tty())
    assert "\033[" in format_text(e, colour=True) and "\033[" not in format_text(e)
    plain = format_text(e).splitlines()[1]
    assert plain == " ".join(f"{w}({a:+.2f})" for w, a in zip(e.words, e.attributions))


def test_command_line(tmp_path, capsys):
    reviews = tmp_path / "reviews.txt"
    reviews.write_text("A wonderful, moving film.\nDull <b>and</b> wooden.\n")
    page = tmp_path / "why.html"
    assert explain_main(["--checkpoint", "gru", "--file", str(reviews), "--html", str(page), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [j["label"] for j in lines] == ["positive", "negative"] and lines[1]["words"][1] == "<b>and</b>"
    assert "&lt;b&gt;and&lt;/b&gt;" in page.read_text()
    assert explain_main(["--checkpoint", "gru", "The acting was wooden but the score is wonderful."]) == 0
    header, words = capsys.readouterr().out.splitlines()
    assert header.startswith("0.") and "attributions toward positive" in header and "wooden(-" in words
    assert explain_main(["--checkpoint", "gru", "--target", "neutral", "x"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: unknown target 'neutral': the model's classes are negative, positive")


def test_missing_captum_is_one_line(monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "captum" or m.startswith("captum.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captum", None)  # import captum now raises ImportError
    with pytest.raises(ImportError, match=r"^explanations need Captum: pip install 'rnnsent\[explain\]'$"):
        explain(loaded_model(), ["good"])
    assert explain_main(["--checkpoint", "gru", "good"]) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "error: explanations need Captum: pip install 'rnnsent[explain]'"
    )


def test_the_package_exports_explain():
    assert callable(rnnsent.explain)  # the function, or (once rnnsent.explain was imported as a module) the module
    (e,) = rnnsent.explain(loaded_model(), ["good"])
    assert isinstance(e, rnnsent.Explanation)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cuda_gives_the_cpu_attributions(cell):
    loaded = loaded_model(cell, encoding="bucketed")
    texts = sample_texts(5, seed=7)
    cpu = explain(loaded, texts)
    gpu = explain(loaded, texts, device="cuda")
    assert next(loaded.model.parameters()).device.type == "cpu", "the caller's model stays where it was"
    for a, b in zip(cpu, gpu):
        assert b.token_attributions == pytest.approx(a.token_attributions, abs=1e-4)
        assert b.probability == pytest.approx(a.probability, abs=1e-5)


def test_a_large_completeness_gap_warns(caplog):
    loaded = loaded_model("rnn", scale=20.0)
    texts = sample_texts()
    with caplog.at_level("WARNING", logger="rnnsent.inference.explain"):
        coarse = explain(loaded, texts, steps=2)
    assert any(e.gap_is_large for e in coarse)
    assert "integrated gradients miss completeness by more than 5%" in caplog.text and "more --steps" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rnnsent.inference.explain"):
        fine = explain(loaded, texts, steps=300)
    assert not any(e.gap_is_large for e in fine) and not caplog.text
