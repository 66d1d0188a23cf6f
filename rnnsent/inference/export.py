"""ONNX export: a model as one .onnx file plus its tokenizer as JSON, verified in onnxruntime before it is written.

The graph takes token ids (batch, time) int64 and lengths (batch,) int64, both with dynamic axes, and returns
logits ((batch,) for two classes, (batch, K) for more) and probabilities (batch, K). It is exported from
PyTorch's stock layers (impl="torch"): the fused kernel is a CPU speed-up of the same function, not part of
the model. The path is torch.onnx.export(dynamo=False), the TorchScript-based exporter: in torch 2.13 it turns
nn.LSTM / nn.GRU / nn.RNN into ONNX's LSTM / GRU / RNN operators with a dynamic time axis, where the dynamo
exporter unrolls nn.RNN (SimpleRNN) into one step per time step of the sample input, freezing its length.

Nothing is written that onnxruntime has not been seen to compute as PyTorch does: export() runs both on random
inputs (batch 1, 7 and 64, lengths 1 to max_len, padded as the model reads them) and refuses with ExportError
where they differ or the graph does not accept an input, e.g. a model an exporter cannot express.

The tokenizer JSON (tokenizer_spec) says everything needed to encode text in another language; OnnxPredictor
scores texts with onnxruntime through the same steps as rnnsent.predict.
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rnnsent.config import canonical_encoding, check_setting
from rnnsent.model import objective
# The tokenizer's own patterns, written into the tokenizer file: one definition of the token rules.
from rnnsent.data.text import _LINE_BREAK, _TOKEN, _TOKEN_V2, OOV_ID, PAD_ID, SCRIPT_TOKENIZER_NAME, START_ID, Vocab
from rnnsent.storage.envelope import first_line
from rnnsent.inference.evaluate import class_names, predict_with
from rnnsent.storage.files import atomic_write, read_bounded

FORMAT = "rnnsent-tokenizer"
VERSION = 1
OPSET = 17  # ONNX's LSTM/GRU/RNN have been stable since opset 14; 17 is what onnxruntime >= 1.12 runs fully
TOLERANCE = 1e-4  # largest |onnxruntime - PyTorch| accepted on logits and probabilities (float rounding is ~1e-6)
MAX_TOKENIZER_BYTES = 1 << 28  # a tokenizer file is read whole: bounded, it is input from elsewhere
INPUTS, OUTPUTS = ("tokens", "lengths"), ("logits", "probabilities")


class ExportError(ValueError):
    """A model that cannot be exported correctly, a missing onnx/onnxruntime, or an unusable tokenizer file."""


def require_onnxruntime():
    """onnxruntime (and onnx, which the exporter needs), or an ExportError saying how to install them."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as e:
        raise ExportError(f"ONNX export needs onnx and onnxruntime ({e.name} is not installed): "
                          "pip install 'rnnsent[onnx]'") from None
    return onnxruntime


def tokenizer_path_for(onnx_path: str | os.PathLike) -> Path:
    """Where the tokenizer goes beside an ONNX file: gru.onnx -> gru.tokenizer.json."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}.tokenizer.json")


class Graph(nn.Module):
    """What the ONNX file computes: the model's own forward on PyTorch's stock layers, plus probabilities.

    `padding` is the encoding's: "post" rows are read up to their length; "pre" rows (Keras' pad_sequences)
    end with their last token, so their state is the last column's and the values of lengths are not read."""

    def __init__(self, model: nn.Module, padding: str):
        super().__init__()
        self.model = copy.deepcopy(model).cpu().float().eval()
        self.model.impl = "torch"  # PyTorch's layers: the exporter maps them onto ONNX's recurrent operators
        self.right_padded = padding == "post"
        self.eval()  # the exporter puts the whole module back in the mode it found it in: never training

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor):
        if not self.right_padded:
            # Every pre-padded row is read to the last column, the same function as model(tokens, None); said
            # through lengths, so that lengths stays an input (an unread one leaves the graph) and one calling
            # code serves both paddings.
            lengths = torch.full_like(lengths, tokens.shape[1])  # (B,)
        logits = self.model(tokens, lengths)  # (B,) or (B, K)
        return logits, objective.probabilities(logits)  # (B, K)


def tokenizer_spec(loaded) -> dict:
    """The encoding of a LoadedModel as plain JSON, precise enough to re-implement in any language."""
    vocab, right_padded = loaded.vocab, loaded.encoding != "keras"
    pattern = _TOKEN_V2 if vocab.tokenizer == SCRIPT_TOKENIZER_NAME else _TOKEN
    return {
        "format": FORMAT,
        "version": VERSION,
        "tokenizer": vocab.tokenizer,
        "steps": [
            "decode bytes as UTF-8, replacing undecodable bytes with U+FFFD",
            "lower-case (Unicode full case mapping, as Python's str.lower)",
            "replace every match of line_break_pattern with one space",
            "replace U+2019 (typographic apostrophe) with U+0027 (')",
            "tokens: every non-overlapping match of token_pattern, left to right",
            "ids: a token's id is its index in vocabulary; a token not in it gets unknown_id",
            "prepend start_id, then keep the last max_len ids (truncation 'pre': a long text loses its start)",
            (
                "pad with pad_id on the right to the longest row of the batch; lengths = ids kept per row"
                if right_padded
                else "pad with pad_id on the left to exactly max_len (Keras' pad_sequences); lengths is not read"
            ),
        ],
        "lowercase": True,
        "line_break_pattern": _LINE_BREAK.pattern,
        "token_pattern": pattern.pattern,
        "regex": "Python re on str (Unicode): \\w is a character c with c.isalnum() or c == '_', \\s Unicode white "
                 "space",
        # id -> token; ids 0-2 and the placeholder '<unused>' contain '<', which no token does
        "vocabulary": vocab.itos,
        "pad_id": PAD_ID,
        "start_id": START_ID,
        "unknown_id": OOV_ID,
        "max_len": loaded.max_len,
        "padding": "post" if right_padded else "pre",
        "pad_to": "longest" if right_padded else "max_len",
        "truncation": "pre",
        "encoding": loaded.encoding,
        "labels": class_names(loaded.model.num_classes, loaded.classes),
        # two labels: the positive one is predicted where its probability is at least the threshold; more: argmax
        **({"positive_label": loaded.positive_label, "threshold": loaded.threshold}
           if loaded.model.num_classes == 2 else {}),
        "inputs": {"tokens": "int64 (batch, time)", "lengths": "int64 (batch,)"},
        "outputs": {
            "logits": "float32 (batch,) for two labels (sigmoid), (batch, K) for more (softmax)",
            "probabilities": "float32 (batch, K): one column per label, in the order of labels",
        },
    }


def read_tokenizer(path: str | os.PathLike) -> dict:
    """A tokenizer file of export(), checked: format, version and the fields OnnxPredictor reads."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            spec = json.loads(read_bounded(f, MAX_TOKENIZER_BYTES, str(path), ExportError))
    except OSError as e:
        raise ExportError(f"tokenizer {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ExportError(f"tokenizer {path} is not JSON: {first_line(e)}") from None
    if not isinstance(spec, dict) or spec.get("format") != FORMAT or spec.get("version") != VERSION:
        raise ExportError(f"{path} is not an rnnsent tokenizer file of version {VERSION}")
    words, labels, max_len = spec.get("vocabulary"), spec.get("labels"), spec.get("max_len")
    if (
        not isinstance(words, list)
        or not all(isinstance(w, str) for w in words)
        or not isinstance(labels, list)
        or len(labels) < 2
        or type(max_len) is not int
        or max_len < 1
        or spec.get("padding") not in ("pre", "post")
    ):
        raise ExportError(f"{path} lacks a usable vocabulary, labels, max_len or padding")
    threshold, positive = spec.get("threshold", 0.5), spec.get("positive_label", labels[-1])
    if len(labels) == 2 and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
                             or not 0 < threshold < 1 or positive not in labels):
        raise ExportError(f"{path} has no usable threshold in (0, 1) and positive_label among its labels")
    return spec


def export(model, onnx_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
           tolerance: float = TOLERANCE, seed: int = 0, *, vocab=None, max_len: int = 500, encoding: str = "keras",
           classes=None) -> dict:
    """Write `model` as an ONNX file and its tokenizer JSON beside it (tokenizer_path_for).

    `model` is a LoadedModel (load_checkpoint: it has its vocabulary and encoding), or a SentimentRNN (from_keras,
    your own) with the arguments rnnsent.predict takes for one: `vocab` (a Vocab, or Keras' IMDB word index, word
    -> rank from 1, as a dict or a JSON file: imdb_word_index.json), max_len, encoding and classes.
    Returns what was checked: {"onnx", "tokenizer", "worst_difference", "inputs", "max_time"}. Raises
    ExportError, with nothing written and the files already at both paths as they were, when a path cannot take
    the file, the model cannot be exported or onnxruntime disagrees with PyTorch."""
    ort = require_onnxruntime()
    onnx_path = Path(onnx_path)
    tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else tokenizer_path_for(onnx_path)
    check_targets(onnx_path, tokenizer_path)  # before any work: a path that cannot take its file costs nothing
    loaded = with_vocabulary(model, vocab, max_len, encoding, classes)
    spec = tokenizer_spec(loaded)
    graph = Graph(loaded.model, spec["padding"])
    sample = (torch.randint(3, graph.model.vocab_size, (3, 17)), torch.tensor([17, 9, 1]))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and h0 notes; verify() decides
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, sample, buffer, dynamo=False, opset_version=OPSET, input_names=list(INPUTS),
                              output_names=list(OUTPUTS), dynamic_axes={
                                  "tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"},
                                  "logits": {0: "batch"}, "probabilities": {0: "batch"}})
    except Exception as e:  # noqa: BLE001 (the exporter raises many types for an operator it cannot express)
        raise ExportError(f"this model cannot be exported to ONNX: {first_line(e)}") from None
    checked = verify(graph, buffer.getvalue(), ort, spec["max_len"], spec["padding"], tolerance, seed)
    write_together([(onnx_path, buffer.getvalue()), (tokenizer_path, json.dumps(spec, ensure_ascii=False).encode())])
    return {"onnx": str(onnx_path), "tokenizer": str(tokenizer_path), **checked}


def with_vocabulary(model, vocab, max_len: int, encoding: str, classes):
    """A LoadedModel as it is; a bare model (from_keras has no vocabulary) with `vocab`, or an ExportError saying
    what to pass."""
    from rnnsent.inference.loading import LoadedModel

    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, nn.Module) or not hasattr(model, "vocab_size"):
        raise ExportError(f"export() takes a loaded checkpoint or a SentimentRNN, got {type(model).__name__}")
    if vocab is None:
        raise ExportError("this model has no vocabulary (a model from from_keras or your own): pass "
                          "export(model, path, vocab=...) a Vocab or Keras' IMDB word index (imdb_word_index.json), "
                          "with max_len=; the command takes --vocab imdb_word_index.json --max-len N")
    if not isinstance(vocab, Vocab):
        vocab = keras_vocabulary(vocab, model.vocab_size)
    if len(vocab) > model.vocab_size:
        raise ExportError(f"the vocabulary has {len(vocab)} ids but the model's embedding {model.vocab_size} rows")
    try:
        max_len, encoding = check_setting("max_len", max_len), canonical_encoding(encoding)
    except ValueError as e:
        raise ExportError(str(e)) from None
    return LoadedModel(model, vocab, max_len, encoding, {}, classes=classes)


def keras_vocabulary(word_index, vocab_size: int) -> Vocab:
    """Keras' IMDB word index (word -> rank from 1; a dict, or the path of its JSON file) as the Vocab of a model
    with `vocab_size` ids, cut as keras.datasets.imdb.load_data(num_words=vocab_size) cuts it."""
    where = "the word index"
    if isinstance(word_index, (str, os.PathLike)):
        where = str(word_index)
        try:
            with open(word_index, "rb") as f:
                word_index = json.loads(read_bounded(f, MAX_TOKENIZER_BYTES, where, ExportError))
        except OSError as e:
            raise ExportError(f"vocabulary {where}: {e.strerror or e}") from None
        except ValueError as e:
            raise ExportError(f"vocabulary {where} is not JSON: {first_line(e)}") from None
    if not isinstance(word_index, dict) or not all(isinstance(w, str) for w in word_index):
        raise ExportError(f"{where} is not a word index (a JSON object of word -> rank, as imdb_word_index.json)")
    try:
        return Vocab.from_keras_word_index(word_index, vocab_size)
    except ValueError as e:
        raise ExportError(f"{where}: {first_line(e)}") from None


def check_targets(*paths: Path) -> None:
    """Refuse (ExportError, one line) before anything is done: two paths that are one file, a path that is a
    folder, a folder on the way that is a file, a folder that cannot be written."""
    resolved = [p.resolve() for p in paths]
    for k, p in enumerate(paths):
        if resolved[k] in resolved[:k] or any(q.exists() and p.exists() and os.path.samefile(p, q) for q in paths[:k]):
            raise ExportError(f"the ONNX file and the tokenizer file are both {p}: give the tokenizer another name "
                              f"(by default {tokenizer_path_for(paths[0]).name} beside the ONNX file)")
        if p.is_dir():
            raise ExportError(f"could not write {p}: it is a folder; name the file to write")
        folder = p.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise ExportError(f"could not write {p}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ExportError(f"could not write {p}: {folder} is not writable")


def write_together(files: list[tuple[Path, bytes]]) -> None:
    """Write every (path, data) or none: each whole (atomic_write) to a staging file beside it, then each renamed
    into place; when a rename fails, the files already replaced get their old content back (kept by a hard link)
    and the staging files go. A model without its tokenizer is no use to anyone."""
    staged = [(path.with_name(f".{path.name}.{os.getpid()}.staged"), path, data) for path, data in files]
    kept: list[tuple[Path, Path | None]] = []  # (path, its old content's link) of the files replaced so far
    try:
        for stage, path, data in staged:
            try:
                with atomic_write(stage) as f:
                    f.write(data)
            except OSError as e:
                raise ExportError(f"could not write {path}: {e.strerror or e}; nothing was written") from None
        for stage, path, _ in staged:
            old = _link_aside(path)
            try:
                os.replace(stage, path)
            except OSError as e:
                _discard(old)
                raise ExportError(f"could not write {path}: {e.strerror or e}; nothing was written") from None
            kept.append((path, old))
    except BaseException:
        for path, old in reversed(kept):  # put back what was there (or nothing, where nothing was)
            os.replace(old, path) if old is not None else path.unlink(missing_ok=True)
        kept = []
        raise
    finally:
        for stage, _, _ in staged:
            stage.unlink(missing_ok=True)
        for _, old in kept:
            _discard(old)


def _link_aside(path: Path) -> Path | None:
    """A second name for the file at `path` (None where there is none), so that replacing it can be undone."""
    if not path.is_file():
        return None
    aside = path.with_name(f".{path.name}.{os.getpid()}.old")
    aside.unlink(missing_ok=True)
    try:
        try:
            os.link(path, aside)
        except OSError:  # a file system without hard links: a copy
            aside.write_bytes(path.read_bytes())
    except OSError as e:
        aside.unlink(missing_ok=True)
        raise ExportError(f"could not write {path}: its old content cannot be kept aside until the new file is in "
                          f"place ({e.strerror or e}); nothing was written") from None
    return aside


def _discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)


def verification_inputs(max_len: int, vocab_size: int, padding: str, seed: int = 0):
    """(tokens, lengths) pairs: batch 1, 7 and 64, lengths from 1 to min(max_len, 1000), padded as `padding`."""
    gen = torch.Generator().manual_seed(seed)
    top = min(max_len, 1000)  # wider rows check nothing new and cost time (time is one dynamic axis)
    for batch, width in ((1, 1), (1, top), (7, max(1, top // 3)), (64, top)):
        lengths = torch.randint(1, width + 1, (batch,), generator=gen)
        lengths[0] = width  # the full width and, where there is room, a single token
        lengths[-1] = 1 if batch > 1 else width
        ids = (
            torch.randint(3, vocab_size, (batch, width), generator=gen)
            if vocab_size > 3
            else torch.full((batch, width), 2)
        )
        cols = torch.arange(width)[None, :]
        real = cols < lengths[:, None] if padding == "post" else cols >= width - lengths[:, None]
        yield ids.masked_fill(~real, PAD_ID), lengths


def verify(graph: Graph, onnx_bytes: bytes, ort, max_len: int, padding: str, tolerance: float = TOLERANCE,
           seed: int = 0) -> dict:
    """Run the ONNX graph in onnxruntime and `graph` in PyTorch on verification_inputs; raise ExportError
    unless every output agrees within `tolerance`. Returns the worst difference and what was run."""
    try:
        session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 (onnxruntime's own error types)
        raise ExportError(f"onnxruntime cannot load the exported graph: {first_line(e)}") from None
    worst, n = 0.0, 0
    graph.eval()
    for tokens, lengths in verification_inputs(max_len, graph.model.vocab_size, padding, seed):
        with torch.no_grad():  # the model's own forward (pre-padded: lengths=None), not the Graph's
            logits = graph.model(tokens, lengths if graph.right_padded else None)
            expected = [logits.numpy(), objective.probabilities(logits).numpy()]
        try:
            got = session.run(list(OUTPUTS), {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own types; e.g. a time axis frozen to the sample)
            raise ExportError(f"the exported graph fails on tokens of shape {tuple(tokens.shape)} in onnxruntime "
                              f"(a frozen axis?): {first_line(e)}; nothing was written") from None
        for name, a, b in zip(OUTPUTS, expected, got):
            diff = float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
            if not diff <= tolerance:  # NaN fails too
                raise ExportError(f"onnxruntime's {name} differ from PyTorch's by {diff:.3g} (over {tolerance:g}) on "
                                  f"tokens of shape {tuple(tokens.shape)}: this model does not export correctly; "
                                  "nothing was written")
            worst = max(worst, diff)
        n += len(tokens)
    return {"worst_difference": worst, "inputs": n, "max_time": min(max_len, 1000)}


class OnnxPredictor:
    """Score raw texts with an exported model in onnxruntime: the Predictions rnnsent.predict gives, with the
    same tokenizer, batching by length and class names; only the forward pass is onnxruntime's."""

    def __init__(self, onnx_path: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None,
                 threads: int | None = None):
        ort = require_onnxruntime()
        spec = read_tokenizer(tokenizer_path if tokenizer_path is not None else tokenizer_path_for(onnx_path))
        words = spec["vocabulary"][3:]
        self.vocab = Vocab(tuple(words), tokenizer=str(spec.get("tokenizer", "rnnsent-v1")))  # '<unused>' slots stay
        self.max_len, self.labels = spec["max_len"], [str(c) for c in spec["labels"]]
        # two labels: the decision rule the model was exported with (files without one: 0.5, the second label)
        self.threshold = float(spec.get("threshold", 0.5))
        self.positive = self.labels.index(str(spec.get("positive_label", self.labels[-1])))
        self.encoding = "keras" if spec["padding"] == "pre" else "bucketed"
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        try:
            self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 (onnxruntime's own error types)
            raise ExportError(f"onnxruntime cannot load {onnx_path}: {first_line(e)}") from None

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """(B, T) token ids and (B,) lengths (None: pre-padded, full rows) -> (B, K) probabilities."""
        if lengths is None:
            lengths = torch.full((tokens.shape[0],), tokens.shape[1])
        (probs,) = self.session.run(["probabilities"], {"tokens": tokens.numpy(), "lengths": lengths.numpy()})
        return torch.from_numpy(probs)

    def predict(self, texts, batch_size: int = 256, sort_by_length: bool = True):
        return predict_with(self.forward, len(self.labels), texts, self.vocab, self.max_len, self.encoding,
                            batch_size, self.labels, sort_by_length, threshold=self.threshold, positive=self.positive)
