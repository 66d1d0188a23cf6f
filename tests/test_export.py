"""rnnsent.inference.export: the ONNX graph against PyTorch in onnxruntime (the released models on real reviews, every
cell,
two classes and many, both paddings), the tokenizer JSON re-implemented without rnnsent, the docs' runtime
example run as written, refusals, and the export command's one-line errors."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
import onnxruntime as ort

import rnnsent
from rnnsent.model import objective
from rnnsent.inference.loading import LoadedModel, load_checkpoint
from rnnsent.cli import export_main
from rnnsent.inference.export import ExportError, OnnxPredictor, export, tokenizer_path_for

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "imdb"
DOCS = ROOT / "docs" / "export.md"


def fixture_reviews() -> list[str]:
    texts = [r["t"] for r in json.loads((FIXTURES / "reviews.json").read_text())]
    return texts + [p.read_text(encoding="utf-8") for p in sorted((FIXTURES / "aclImdb").rglob("*.txt"))]


@pytest.fixture(scope="module")
def released():
    return {name: load_checkpoint(name) for name in ("gru", "lstm", "rnn")}


def real_rows(loaded, lengths, padding, seed=0):
    """(tokens, lengths) of real review ids: windows of the fixture reviews' ids laid end to end, one per length."""
    stream = [i for t in fixture_reviews() for i in [1] + loaded.vocab.encode(rnnsent.data.tokenize(t))]
    rng = np.random.default_rng(seed)
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), dtype=np.int64)
    for r, n in enumerate(lengths):
        start = int(rng.integers(0, len(stream) - n))
        row = stream[start: start + n]
        if padding == "post":
            tokens[r, :n] = row
        else:
            tokens[r, width - n:] = row
    return torch.from_numpy(tokens), torch.tensor(lengths, dtype=torch.long)


def worst_difference(loaded, session, tokens, lengths, impl="torch"):
    """max |onnxruntime - PyTorch| over logits and probabilities; impl "torch": the stock layers the graph was
    exported from, "auto": the fused kernel."""
    got = session.run(["logits", "probabilities"], {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
    loaded.model.impl = impl
    try:
        with torch.no_grad():
            logits = loaded.model(tokens, lengths if loaded.encoding != "keras" else None)
    finally:
        loaded.model.impl = "auto"
    worst = 0.0
    for a, b in zip((logits, objective.probabilities(logits)), got):
        assert a.shape == b.shape
        worst = max(worst, float(np.abs(a.numpy() - b).max()))
    return worst


def stock_against_fused(loaded, tokens, lengths) -> float:
    outputs = []
    for impl in ("torch", "auto"):
        loaded.model.impl = impl
        with torch.no_grad():
            outputs.append(loaded.model(tokens, lengths if loaded.encoding != "keras" else None))
    loaded.model.impl = "auto"
    return float((outputs[0] - outputs[1]).abs().max())


@pytest.mark.parametrize("padding", ["post", "pre"])
@pytest.mark.parametrize("name", ["gru", "lstm", "rnn"])
def test_released_models_match_pytorch_on_real_reviews(released, tmp_path, name, padding):
    loaded = released[name]
    if padding == "pre":  # the same weights read as Keras' pre-padded encoding
        loaded = LoadedModel(loaded.model, loaded.vocab, loaded.max_len, "keras", loaded.state)
    export(loaded, tmp_path / f"{name}.onnx")
    session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    top = loaded.max_len
    cases = [[1], [top], [top, 1, 17, 250, 999, 3, 640],
             np.linspace(1, top, 64).round().astype(int).tolist()]  # batch 1, 7, 64; lengths 1 .. max_len
    rows = [real_rows(loaded, c, padding, seed=k) for k, c in enumerate(cases)]
    worst = max(worst_difference(loaded, session, *r) for r in rows)
    # The fused kernel is the same function in another order of float additions: over 1,000 pre-padded SimpleRNN
    # steps it and the stock layers differ by up to 3e-5 themselves, so it gets its own, looser bound.
    fused = max(worst_difference(loaded, session, *r, impl="auto") for r in rows)
    print(f"{name} {padding}: onnxruntime against the stock layers {worst:.2g}, against the fused kernel {fused:.2g}; "
          f"the stock layers against the fused kernel {max(stock_against_fused(loaded, *r) for r in rows):.2g}")
    assert worst <= 1e-5 and fused <= 1e-4, (worst, fused)


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, True)])
@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_every_cell_and_class_count_exports_with_dynamic_axes(released, tmp_path, cell, classes, layers, bidirectional):
    torch.manual_seed(0)
    model = rnnsent.SentimentRNN(cell, vocab_size=60, embed_dim=8, hidden_size=7, num_classes=classes,
                                 num_layers=layers, bidirectional=bidirectional).eval()
    names = [f"c{k}" for k in range(classes)] if classes > 2 else None
    for encoding in ("bucketed", "keras"):
        loaded = LoadedModel(model, released["gru"].vocab, 40, encoding, {}, classes=names)
        export(loaded, tmp_path / "m.onnx")
        session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
        assert [i.shape for i in session.get_inputs()] == [["batch", "time"], ["batch"]]
        gen = torch.Generator().manual_seed(1)
        for batch, width in ((1, 1), (7, 40), (64, 23), (3, 200)):  # 200: past max_len too, nothing is frozen
            lengths = torch.randint(1, width + 1, (batch,), generator=gen)
            tokens = torch.randint(3, 60, (batch, width), generator=gen)
            assert worst_difference(loaded, session, tokens, lengths) <= 1e-5
            assert worst_difference(loaded, session, tokens, lengths, impl="auto") <= 1e-5
        spec = json.loads(tokenizer_path_for(tmp_path / "m.onnx").read_text())
        assert spec["labels"] == (names or ["negative", "positive"])
        assert spec["padding"] == ("pre" if encoding == "keras" else "post")


def test_onnx_predictor_gives_rnnsent_predictions(released, tmp_path):
    loaded = released["gru"]
    export(loaded, tmp_path / "gru.onnx")
    texts = fixture_reviews() + ["", "Dull.", "A wonderful film"]
    ours, theirs = (
        loaded.predict(texts, batch_size=7),
        OnnxPredictor(tmp_path / "gru.onnx").predict(texts, batch_size=7),
    )
    assert [p.label for p in ours] == [p.label for p in theirs]
    assert [(p.tokens, p.words, p.unknown) for p in ours] == [(p.tokens, p.words, p.unknown) for p in theirs]
    assert max(abs(a.probability - b.probability) for a, b in zip(ours, theirs)) <= 1e-5


def encode_from_json(spec: dict, text: str) -> list[int]:
    """The tokenizer file's steps, with nothing of rnnsent."""
    ids = {w: i for i, w in enumerate(spec["vocabulary"])}
    text = re.sub(spec["line_break_pattern"], " ", text.lower()).replace("\u2019", "'")
    row = [spec["start_id"]] + [ids.get(t, spec["unknown_id"]) for t in re.findall(spec["token_pattern"], text)]
    return row[-spec["max_len"]:]


@pytest.mark.parametrize("max_len", [1000, 60])
def test_the_tokenizer_json_alone_reproduces_rnnsents_ids(released, tmp_path, max_len):
    loaded = released["gru"]
    loaded = LoadedModel(loaded.model, loaded.vocab, max_len, loaded.encoding, loaded.state)  # 60: truncation too
    export(loaded, tmp_path / "gru.onnx")
    spec = json.loads((tmp_path / "gru.tokenizer.json").read_text(encoding="utf-8"))
    texts = fixture_reviews() + ["Don\u2019t<br />miss it!<BR/>__init__ o'clock 10/10", "ÉTÉ ça-va", "", "   "]
    split = rnnsent.data.encode_bucketed(
        [loaded.vocab.encode(rnnsent.data.tokenize(t)) for t in texts], [0] * len(texts), max_len
    )
    expected = [row[:n].tolist() for row, n in zip(split.tokens, split.lengths)]
    assert [encode_from_json(spec, t) for t in texts] == expected
    assert spec["pad_id"] == 0 and spec["padding"] == "post" and spec["truncation"] == "pre"


def docs_snippet() -> str:
    text = DOCS.read_text(encoding="utf-8")
    match = re.search(r"<!-- runtime example -->\s*```python\n(.*?)```", text, re.DOTALL)
    assert match, "docs/export.md has no runtime example"
    return match.group(1)


def test_the_docs_runtime_example_runs_as_written(released, tmp_path):
    export(released["gru"], tmp_path / "gru.onnx")
    snippet = docs_snippet()
    assert len(snippet.strip().splitlines()) <= 25 and "rnnsent" not in snippet
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    texts = re.findall(r'^texts = \[(.*)\]$', snippet, re.MULTILINE)[0]
    expected = released["gru"].predict(eval(f"[{texts}]"))
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == len(expected)
    for line, p in zip(lines, expected):
        label, probability, _ = line.split(maxsplit=2)
        assert label == p.label and abs(float(probability) - p.probabilities[p.label]) < 1e-3


class FrozenLength(rnnsent.SentimentRNN):
    """Reads lengths through a Python int: a tracer freezes it to the sample's value, the classic mistake."""

    def forward(self, tokens, lengths=None):
        return super().forward(tokens[:, : int(lengths.max())], lengths)


def test_a_model_that_does_not_export_correctly_is_refused_and_nothing_written(released, tmp_path):
    model = FrozenLength("gru", vocab_size=60, embed_dim=8, hidden_size=7).eval()
    loaded = LoadedModel(model, released["gru"].vocab, 40, "bucketed", {})
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(ExportError, match="nothing was written") as e:
        export(loaded, tmp_path / "m.onnx")
    assert "\n" not in str(e.value)
    assert (tmp_path / "m.onnx").read_bytes() == b"old" and not (tmp_path / "m.tokenizer.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_command_writes_both_files(tmp_path, capsys):
    assert export_main(["--checkpoint", "rnn", "--onnx", str(tmp_path / "out" / "rnn.onnx")]) == 0
    assert (tmp_path / "out" / "rnn.onnx").stat().st_size > 0 and (tmp_path / "out" / "rnn.tokenizer.json").is_file()
    assert "onnxruntime matches PyTorch within" in capsys.readouterr().out


def one_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("checkpoint 'gru'")]
    assert len(err) == 1 and err[0].startswith("error: "), err  # (beside the log line saying which file was loaded)
    return err[0]


def test_export_command_errors_are_one_line(tmp_path, capsys, monkeypatch):
    assert export_main(["--checkpoint", str(tmp_path / "none.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
    assert "does not exist" in one_line(capsys)
    (tmp_path / "file").write_text("")
    assert export_main(["--checkpoint", "gru", "--onnx", str(tmp_path / "file" / "gru.onnx")]) == 2
    assert "could not write" in one_line(capsys)
    assert not list(tmp_path.glob("**/*.onnx"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert export_main(["--checkpoint", "gru", "--onnx", str(tmp_path / "gru.onnx")]) == 2
    assert "pip install 'rnnsent[onnx]'" in one_line(capsys)


# Two files or neither: the paths are checked before any work, and a failure leaves both old files as they were --
def old_files(tmp_path) -> dict:
    (tmp_path / "g.onnx").write_bytes(b"old onnx")
    (tmp_path / "g.tokenizer.json").write_bytes(b"old tokenizer")
    return {p.name: p.read_bytes() for p in tmp_path.iterdir()}


def files(tmp_path) -> dict:
    return {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}


def test_a_folder_as_tokenizer_keeps_the_old_onnx_and_is_named(tmp_path, capsys):
    before = old_files(tmp_path)
    (tmp_path / "DIR").mkdir()
    onnx, folder = str(tmp_path / "g.onnx"), str(tmp_path / "DIR")
    assert export_main(["--checkpoint", "rnn", "--onnx", onnx, "--tokenizer", folder]) == 2
    assert one_line(capsys) == f"error: could not write {tmp_path / 'DIR'}: it is a folder; name the file to write"
    assert files(tmp_path) == before and not list((tmp_path / "DIR").iterdir())


@pytest.mark.parametrize("tokenizer", ["g.onnx", "./sub/../g.onnx"])
def test_the_tokenizer_at_the_onnx_path_is_refused(tmp_path, capsys, monkeypatch, tokenizer):
    before = old_files(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    assert export_main(["--checkpoint", "rnn", "--onnx", "g.onnx", "--tokenizer", tokenizer]) == 2
    assert "the ONNX file and the tokenizer file are both" in one_line(capsys)
    assert files(tmp_path) == before


def test_a_hard_link_of_the_onnx_file_as_tokenizer_is_refused(released, tmp_path):
    before = old_files(tmp_path)
    os.link(tmp_path / "g.onnx", tmp_path / "link.json")
    with pytest.raises(ExportError, match="are both"):
        export(released["rnn"], tmp_path / "g.onnx", tmp_path / "link.json")
    assert files(tmp_path) == {**before, "link.json": b"old onnx"}


def test_a_failed_write_or_rename_of_either_file_keeps_both_old_files(released, tmp_path, monkeypatch):
    from rnnsent.inference import export as module

    before = old_files(tmp_path)
    real_replace, real_write = os.replace, module.atomic_write

    def replace(src, dst):
        if Path(dst).name == "g.tokenizer.json":
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(module.os, "replace", replace)
    with pytest.raises(ExportError, match="could not write .*g.tokenizer.json: No space left on device"):
        export(released["rnn"], tmp_path / "g.onnx")
    assert files(tmp_path) == before, "the ONNX file renamed first is put back"
    monkeypatch.setattr(module.os, "replace", real_replace)

    def write(path, *args, **kwargs):
        if "tokenizer" in Path(path).name:
            raise OSError(13, "Permission denied")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(module, "atomic_write", write)
    with pytest.raises(ExportError, match="could not write .*g.tokenizer.json: Permission denied"):
        export(released["rnn"], tmp_path / "g.onnx")
    assert files(tmp_path) == before
    monkeypatch.setattr(module, "atomic_write", real_write)
    export(released["rnn"], tmp_path / "g.onnx")  # and with nothing in the way, both are replaced, nothing else left
    assert sorted(files(tmp_path)) == ["g.onnx", "g.tokenizer.json"]
    assert (tmp_path / "g.onnx").read_bytes()[:8] != b"old onnx"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_unwritable_folder_is_refused_before_any_work(released, tmp_path):
    (tmp_path / "ro").mkdir(mode=0o500)
    with pytest.raises(ExportError, match="ro is not writable"):
        export(released["rnn"], tmp_path / "g.onnx", tmp_path / "ro" / "t.json")
    assert not (tmp_path / "g.onnx").exists()


# A model without a vocabulary (from_keras) takes one, or says what it needs -------------------------------------
KERAS = ROOT / "tests" / "fixtures" / "keras" / "k3_gru.keras"
WORD_INDEX = FIXTURES / "imdb_word_index.json"


def test_a_keras_model_exports_with_its_word_index_and_predicts_as_rnnsent(tmp_path):
    model = rnnsent.from_keras(KERAS)
    with pytest.raises(ExportError, match=r"no vocabulary .* vocab=.*--vocab imdb_word_index.json") as e:
        export(model, tmp_path / "k.onnx")
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())
    export(model, tmp_path / "k.onnx", vocab=WORD_INDEX, max_len=30)
    vocab = rnnsent.data.Vocab.from_keras_word_index(json.loads(WORD_INDEX.read_text()), model.vocab_size)
    texts = fixture_reviews()[:12]
    want = rnnsent.predict(model, texts, vocab=vocab, max_len=30, encoding="keras")
    got = OnnxPredictor(tmp_path / "k.onnx").predict(texts)
    assert [p.label for p in got] == [p.label for p in want]
    assert max(abs(a.probability - b.probability) for a, b in zip(got, want)) < 1e-5
    assert [p.tokens for p in got] == [p.tokens for p in want]


def test_the_export_command_takes_a_keras_file_with_its_vocabulary(tmp_path, capsys):
    onnx = str(tmp_path / "k.onnx")
    assert export_main(["--checkpoint", str(KERAS), "--onnx", onnx]) == 2
    assert "--vocab imdb_word_index.json" in one_line(capsys)
    assert export_main(["--checkpoint", str(KERAS), "--onnx", onnx, "--vocab", str(tmp_path / "none.json")]) == 2
    assert "none.json: No such file" in one_line(capsys)
    assert export_main(["--checkpoint", str(KERAS), "--onnx", onnx, "--vocab", str(WORD_INDEX)]) == 0
    assert json.loads((tmp_path / "k.tokenizer.json").read_text())["padding"] == "pre"
    assert export_main(["--checkpoint", "rnn", "--onnx", onnx, "--vocab", str(WORD_INDEX)]) == 2
    assert "--vocab is for a Keras model" in one_line(capsys)
