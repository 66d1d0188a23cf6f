"""Keras <-> rnnsent weights: live Keras models, Keras 3 `.keras` files and `.h5` files.

Files are read with h5py, zipfile and json alone, so importing a model needs neither Keras nor
TensorFlow. Three layouts exist in the wild and all are read:

- HDF5 `model.save("x.h5")` by Keras 2 (tf.keras) or Keras 3: the root attribute `model_config`
  (JSON) and `model_weights/<layer name>/...` with each layer's `weight_names` attribute.
- Keras 3 (and Keras 2.13+) `.keras`: a zip of `config.json` and `model.weights.h5`, whose groups
  are `layers/<snake_case class name>[_n]/vars/<i>` (`.../cell/vars/<i>` for recurrent layers).
- A live Keras model: `layer.get_config()` and `layer.get_weights()`, whatever the backend.

The accepted architecture is rnnsent's: Embedding -> LSTM | GRU | SimpleRNN -> Dense(1, sigmoid), or
Dense(K, softmax) with K > 2 for K classes (Dense(2, softmax) is refused: rnnsent's two-class head is one logit),
with an optional Dropout after the Embedding and after the recurrent layer (they become
`embed_dropout` and `output_dropout`). The recurrent layer may be stacked (each but the last with
return_sequences=True, Dropout between them becoming `layer_dropout`) and wrapped in Bidirectional
(merge_mode="concat"; its weights are the forward layer's, then the backward layer's). Anything else is refused
with a KerasFormatError that names the difference. The recurrent layer's own `dropout` / `recurrent_dropout`
only act in training and rnnsent has no per-gate dropout, so they are not carried over; predictions are unaffected.

Gate layout: Keras stores a kernel as (input, gates * units) with its blocks in Keras' order;
PyTorch stores weight_ih as (gates * units, input) in its own order, hence a transpose and
`permute_gates`. Keras' GRU bias (reset_after=True) is (2, 3 * units): input bias, recurrent bias.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rnnsent.model import recurrent
from rnnsent.config import CELL_TABLE, KERAS_CELL_NAMES, KERAS_GATE_ORDER, ModelConfig, canonical_cell, field_names
from rnnsent.storage.files import MAX_MEMBER_BYTES, read_bounded
from rnnsent.model.sentiment import SentimentRNN, permute_gates

__all__ = ["KerasFormatError", "from_keras", "to_keras", "save_keras", "keras_weights"]

ARCHITECTURE = ("Embedding -> LSTM | GRU | SimpleRNN, one or more of the same kind and size, each optionally in "
                "Bidirectional(merge_mode='concat'), all but the last with return_sequences=True -> "
                "Dense(1, sigmoid) or Dense(K > 2, softmax), with optional Dropout layers between them")
_RECURRENT = {keras_name: cell for cell, keras_name in KERAS_CELL_NAMES.items()}
_WRAPPERS = ("TimeDistributed", "RNN")  # an RNN(cell) wrapper is not a fused layer either
_MODEL_ARGS = field_names(ModelConfig)
_SHAPE = ("vocab_size", "embed_dim", "hidden_size", "num_classes", "num_layers", "bidirectional")  # fixed by the file
log = logging.getLogger(__name__)


class KerasFormatError(ValueError):
    """A Keras model or file that rnnsent cannot represent exactly; the message says what differs."""


@dataclass
class _Layer:
    """One Keras layer as read from a file or a live model."""

    kind: str  # Keras class name, e.g. "GRU"
    name: str
    config: dict
    # arrays, or h5py datasets not read until _parse checks their shapes
    weights: list | None = field(default=None, repr=False)


# ----------------------------------------------------------------------------- Keras -> rnnsent


def from_keras(source, **overrides) -> SentimentRNN:
    """Build a SentimentRNN holding the weights of a Keras model.

    source: a live Keras model, or the path of a `.keras` or `.h5` file (Keras 2 or 3).
    overrides: SentimentRNN arguments (ModelConfig's fields). The shape settings (cell, vocab_size,
    embed_dim, hidden_size, num_classes) must agree with the Keras model if given; the others may be set freely.
    Raises KerasFormatError (a ValueError) for a model rnnsent cannot represent exactly and
    FileNotFoundError for a missing file.
    """
    unknown = sorted(set(overrides) - set(_MODEL_ARGS))
    if unknown:
        raise TypeError(f"from_keras() got unknown arguments {', '.join(unknown)}; valid: {', '.join(_MODEL_ARGS)}")
    with ExitStack() as stack:  # a file stays open until _parse has checked the weights' shapes and read them
        if hasattr(source, "layers") and hasattr(source, "get_weights"):
            where = f"Keras model {getattr(source, 'name', '')!r}"
            layers = _layers_from_live(source, where)
        else:
            where = str(source)
            try:
                layers = stack.enter_context(_layers_from_file(source))
            except (AttributeError, KeyError, TypeError, IndexError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise KerasFormatError(f"{where}: malformed Keras model config ({type(e).__name__}: {e})") from None
        try:
            args, weights = _parse(layers, where)
        except (AttributeError, KeyError, TypeError, IndexError) as e:  # a config missing fields or holding other types
            raise KerasFormatError(f"{where}: malformed Keras layer config ({type(e).__name__}: {e})") from None
    for key, value in overrides.items():
        if key in _SHAPE and value != args[key]:
            raise KerasFormatError(f"{where}: {key}={value!r} was asked for but the model has {key}={args[key]}")
        if key == "cell" and canonical_cell(value) != args["cell"]:
            raise KerasFormatError(f"{where}: cell={value!r} was asked for but the model's recurrent layer is "
                                   f"{KERAS_CELL_NAMES[args['cell']]}")
    args.update({k: v for k, v in overrides.items() if k not in ("cell",)})
    model = SentimentRNN(**args)
    _load_keras_weights(model, *weights)
    return model


def _parse(layers: list[_Layer], where: str) -> tuple[dict, tuple]:
    """Check the layer chain against rnnsent's architecture; return model arguments and weights."""

    def refuse(what: str):
        raise KerasFormatError(f"{where}: {what}; rnnsent reads only {ARCHITECTURE}")

    layers = [layer for layer in layers if layer.kind != "InputLayer"]
    _check_layer_kinds(layers, refuse)
    chain = _split_chain(layers, refuse)
    cell, bidirectional = _check_stack(chain.rnns, refuse)
    _check_embedding(chain.embedding, refuse)
    units = _check_head(chain.dense, refuse)
    args = _model_args(chain, cell, bidirectional, units, refuse)
    return args, _read_weights(_expected_weights(chain, args), args, where)


@dataclass
class _Chain:
    """The layers of an accepted chain by role; a Dropout that is absent is None."""

    embedding: _Layer
    drop_in: _Layer | None
    rnns: list[_Layer]
    between: list[_Layer | None]  # the Dropout before each recurrent layer but the first
    drop_out: _Layer | None
    dense: _Layer


def _check_layer_kinds(layers: list[_Layer], refuse) -> None:
    """Refuse wrappers, a Bidirectional that does not concatenate, recurrent options rnnsent lacks, foreign layers."""
    for layer in layers:
        if layer.kind in _WRAPPERS:
            refuse(f"layer {layer.name!r} is a {layer.kind} wrapper")
        if layer.kind == "Bidirectional" and layer.config.get("merge_mode", "concat") != "concat":
            refuse(f"Bidirectional {layer.name!r} has merge_mode={layer.config.get('merge_mode')!r} "
                   "(rnnsent concatenates the two directions: merge_mode='concat' only)")
    blocks = [layer for layer in layers if _is_recurrent(layer)]
    # The recurrent layers' options first: they explain most foreign models best.
    for k, block in enumerate(blocks):
        _check_recurrent_options(block, k < len(blocks) - 1, refuse)
    for layer in layers:
        if layer.kind not in ("Embedding", "Dropout", "Dense") and not _is_recurrent(layer):
            refuse(f"extra layer {layer.name!r} ({layer.kind})")


def _check_recurrent_options(block: _Layer, return_sequences: bool, refuse) -> None:
    """Refuse a recurrent layer (each direction of a Bidirectional) whose options rnnsent cannot reproduce."""
    for kind, name, config, backwards in _directions(block, refuse):
        checks = [
            ("return_sequences", return_sequences), ("return_state", False), ("go_backwards", backwards),
            ("time_major", False), ("use_bias", True), ("activation", "tanh"), ("stateful", False),
        ]
        if kind != "SimpleRNN":
            checks.append(("recurrent_activation", "sigmoid"))
        if kind == "GRU":
            checks.append(("reset_after", True))
        for key, want in checks:
            got = config.get(key, want)
            if key.endswith("activation"):
                got = _activation_name(got)
            if got != want:
                why = (" (every recurrent layer but the last must return sequences)" if key == "return_sequences"
                       and want else "")
                refuse(f"{kind} {name!r} has {key}={got!r} (rnnsent needs {key}={want!r}{why})")


def _split_chain(layers: list[_Layer], refuse) -> _Chain:
    """Match the expected chain, dropouts optional: Embedding [Dropout] RNN ([Dropout] RNN)* [Dropout] Dense."""
    chain_text = " -> ".join(layer.kind for layer in layers) or "no layers"
    i = 0

    def take(want: str, optional: bool):
        nonlocal i
        kind = layers[i].kind if i < len(layers) else None
        if kind is not None and (_is_recurrent(layers[i]) if want == "RNN" else kind == want):
            i += 1
            return layers[i - 1]
        if not optional:
            found = f"layer {layers[i].name!r} ({kind})" if kind else "the end of the model"
            refuse(f"expected {want if want != 'RNN' else 'LSTM|GRU|SimpleRNN'} at position {i + 1} but found {found} "
                   f"(layers: {chain_text})")
        return None

    emb = take("Embedding", False)
    drop_in = take("Dropout", True)
    rnns, between = [take("RNN", False)], []
    while True:
        dropout = take("Dropout", True)
        rnn = take("RNN", True)
        if rnn is None:
            drop_out = dropout
            break
        between.append(dropout)
        rnns.append(rnn)
    dense = take("Dense", False)
    if i != len(layers):
        refuse(f"extra layer {layers[i].name!r} ({layers[i].kind}) after the Dense output (layers: {chain_text})")
    return _Chain(emb, drop_in, rnns, between, drop_out, dense)


def _check_stack(rnns: list[_Layer], refuse) -> tuple[str, bool]:
    """The stack's cell and whether it is bidirectional; refused unless every layer is of one kind and size."""
    first = _directions(rnns[0], refuse)[0]
    kind = first[0]
    bidirectional = rnns[0].kind == "Bidirectional"
    for block in rnns:
        for other_kind, name, config, _ in _directions(block, refuse):
            same = (other_kind == kind and (block.kind == "Bidirectional") == bidirectional
                    and config.get("units") == first[2].get("units"))
            if not same:
                refuse(f"recurrent layers of different kinds or sizes ({rnns[0].name!r}: {_describe(rnns[0], refuse)}; "
                       f"{block.name!r}: {_describe(block, refuse)}); rnnsent stacks identical layers")
    return _RECURRENT[kind], bidirectional


def _check_embedding(emb: _Layer, refuse) -> None:
    """Refuse a masking Embedding: rnnsent has no mask."""
    if emb.config.get("mask_zero"):
        refuse(
            f"Embedding {emb.name!r} has mask_zero=True (rnnsent runs every padded step, as Keras does without a mask)"
        )


def _check_head(dense: _Layer, refuse) -> int:
    """The Dense head's units, refused unless Dense(1, sigmoid) or Dense(K > 2, softmax) with a bias."""
    dc = dense.config
    units = dc.get("units")
    if not isinstance(units, int) or units < 1 or units == 2:
        refuse(
            f"Dense {dense.name!r} has units={units!r} (rnnsent needs units=1 with sigmoid, or more than 2 with "
            "softmax)"
        )
    want_act = "sigmoid" if units == 1 else "softmax"
    if _activation_name(dc.get("activation")) != want_act:
        refuse(f"Dense {dense.name!r} has units={units} and activation={_activation_name(dc.get('activation'))!r} "
               f"(rnnsent needs {want_act})")
    if not dc.get("use_bias", True):
        refuse(f"Dense {dense.name!r} has use_bias=False")
    return units


def _dropout_rate(layer: _Layer | None, refuse) -> float:
    """A Dropout layer's rate (0 for no layer); refused if it drops whole slices (noise_shape)."""
    if layer is None:
        return 0.0
    if layer.config.get("noise_shape") is not None:
        refuse(f"Dropout {layer.name!r} has a noise_shape")
    return float(layer.config.get("rate", 0.0))


def _model_args(chain: _Chain, cell: str, bidirectional: bool, units: int, refuse) -> dict:
    """SentimentRNN's arguments: sizes from the layer configs, rates from the Dropout layers."""
    rates = {_dropout_rate(layer, refuse) for layer in chain.between}
    if len(rates) > 1:
        refuse(f"Dropout layers of different rates between the recurrent layers ({sorted(rates)}); rnnsent has one "
               "layer_dropout")
    ec, rnns = chain.embedding.config, chain.rnns
    return dict(
        cell=cell, vocab_size=int(ec["input_dim"]), embed_dim=int(ec["output_dim"]),
        hidden_size=int(_directions(rnns[0], refuse)[0][2].get("units")),
        embed_dropout=_dropout_rate(chain.drop_in, refuse), output_dropout=_dropout_rate(chain.drop_out, refuse),
        num_classes=2 if units == 1 else units, num_layers=len(rnns), bidirectional=bidirectional,
        layer_dropout=rates.pop() if rates else 0.0,
    )


def _expected_weights(chain: _Chain, args: dict) -> list[tuple[_Layer, list[tuple[str, tuple]]]]:
    """Each layer with its weights' names and the shapes its config implies, in Keras' order."""
    v, e, h = args["vocab_size"], args["embed_dim"], args["hidden_size"]
    cell, units = args["cell"], 1 if args["num_classes"] == 2 else args["num_classes"]  # Dense(1) for two classes
    g, dirs = CELL_TABLE[cell].gates, 2 if args["bidirectional"] else 1
    expected = [(chain.embedding, [("embeddings", (v, e))])]
    for k, block in enumerate(chain.rnns):
        n_in = e if k == 0 else h * dirs
        expected.append(
            (
                block,
                [
                    (f"{prefix}{name}", shape)
                    for prefix in (("forward ", "backward ") if dirs == 2 else ("",))
                    for name, shape in (("kernel", (n_in, g * h)), ("recurrent_kernel", (h, g * h)),
                                        ("bias", (2, g * h) if cell == "gru" else (g * h,)))
                ],
            )
        )
    expected.append((chain.dense, [("kernel", (h * dirs, units)), ("bias", (units,))]))
    return expected


def _read_weights(expected: list[tuple[_Layer, list[tuple[str, tuple]]]], args: dict, where: str) -> tuple:
    """Every layer's arrays as float32, read only once its count and shapes match `expected`."""
    v, e, h = args["vocab_size"], args["embed_dim"], args["hidden_size"]
    arrays = []
    for layer, specs in expected:
        got = layer.weights or []
        if len(got) != len(specs):
            raise KerasFormatError(f"{where}: layer {layer.name!r} has {len(got)} weight arrays, expected "
                                   f"{len(specs)} ({', '.join(n for n, _ in specs)})")
        for (wname, want), arr in zip(specs, got):
            if tuple(arr.shape) != want:
                raise KerasFormatError(
                    f"{where}: {layer.name}/{wname} has shape {tuple(arr.shape)} but the config "
                    f"(vocab {v}, embed {e}, units {h}) says {want}: the weights have other sizes than the file says")
            arrays.append(np.asarray(arr[()], dtype=np.float32))  # an h5py dataset is read here, its shape known good
    return tuple(arrays)


def _is_recurrent(layer: _Layer) -> bool:
    return layer.kind in _RECURRENT or layer.kind == "Bidirectional"


def _directions(block: _Layer, refuse) -> list[tuple[str, str, dict, bool]]:
    """(Keras class, name, config, runs backwards) for each direction of a recurrent layer or Bidirectional."""
    if block.kind != "Bidirectional":
        return [(block.kind, block.name, block.config, False)]
    forward = block.config.get("layer") or {}
    backward = block.config.get("backward_layer")
    for entry in (forward, backward or {}):
        if entry and entry.get("class_name") not in _RECURRENT:
            refuse(
                f"Bidirectional {block.name!r} wraps a {entry.get('class_name')} (rnnsent reads LSTM, GRU, SimpleRNN)"
            )
    fc = forward.get("config", {})
    bc = backward.get("config", {}) if backward else {**fc, "go_backwards": not fc.get("go_backwards", False)}
    return [(forward.get("class_name"), fc.get("name", block.name), fc, False),
            ((backward or forward).get("class_name"), bc.get("name", block.name), bc, True)]


def _describe(block: _Layer, refuse) -> str:
    kind, _, config, _ = _directions(block, refuse)[0]
    return f"{'Bidirectional ' if block.kind == 'Bidirectional' else ''}{kind}({config.get('units')})"


def _activation_name(act) -> str | None:
    if isinstance(act, dict):  # a serialized activation object
        cfg = act.get("config")
        return cfg.get("name", act.get("class_name")) if isinstance(cfg, dict) else act.get("class_name")
    return act


@torch.no_grad()
def _load_keras_weights(model: SentimentRNN, emb, *arrays) -> None:
    """Keras' arrays in its order (embedding; kernel, recurrent kernel, bias per layer and direction, forward
    first; Dense kernel and bias) into the model's state_dict."""
    order = KERAS_GATE_ORDER[model.cell]
    t = torch.from_numpy
    suffixes = recurrent.weight_suffixes(model.rnn)
    *cells, dense_kernel, dense_bias = arrays
    state = {
        "embedding.weight": t(emb),  # (V, E)
        "fc.weight": t(dense_kernel).t(),  # (1, H * dirs) or (K, H * dirs)
        "fc.bias": t(dense_bias),  # (1,) or (K,)
    }
    for k, sfx in enumerate(suffixes):
        kernel, recurrent_kernel, bias = cells[3 * k: 3 * k + 3]
        state[f"rnn.weight_ih{sfx}"] = permute_gates(t(kernel).t(), order)  # (G*H, in)
        state[f"rnn.weight_hh{sfx}"] = permute_gates(t(recurrent_kernel).t(), order)  # (G*H, H)
        if model.cell == "gru":
            state[f"rnn.bias_ih{sfx}"] = permute_gates(t(bias[0]), order)
            state[f"rnn.bias_hh{sfx}"] = permute_gates(t(bias[1]), order)
        else:
            state[f"rnn.bias_ih{sfx}"] = permute_gates(t(bias), order)
            getattr(model.rnn, f"bias_hh{sfx}").zero_()  # Keras' single bias lives in bias_ih
    model.load_state_dict({k: v.contiguous() for k, v in state.items()}, strict=True)


# ----------------------------------------------------------------------------- reading sources


def _layers_from_live(model, where: str) -> list[_Layer]:
    layers = []
    for layer in model.layers:
        kind = type(layer).__name__
        try:
            config = layer.get_config()
        except NotImplementedError:
            config = {}
        if kind in ("Sequential", "Functional", "Model"):
            raise KerasFormatError(f"{where}: nested model {layer.name!r}; rnnsent reads only {ARCHITECTURE}")
        layers.append(_Layer(kind, layer.name, config, [np.asarray(w) for w in layer.get_weights()]))
    return layers


@contextmanager
def _layers_from_file(path) -> Iterator[list[_Layer]]:
    """The file's layers, their weights h5py datasets of the open file, checked but not yet read."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"no Keras model file at {path}")
    if path.is_dir():
        raise KerasFormatError(f"{path} is a directory (a TensorFlow SavedModel?); rnnsent reads .keras and .h5 files")
    h5py = _h5py()
    if zipfile.is_zipfile(path):
        config, blob = _read_keras_zip(path)
        with h5py.File(io.BytesIO(blob), "r") as f:
            yield _keras_zip_layers(config, f, str(path))
        return
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            yield _read_legacy_h5(f, str(path))
        return
    raise KerasFormatError(f"{path} is neither an HDF5 (.h5) nor a Keras zip (.keras) file")


def _h5py():
    try:
        import h5py
    except ImportError as e:  # h5py is an optional dependency
        raise ImportError("reading Keras files needs h5py: pip install 'rnnsent[keras]'") from e
    return h5py


def _config_layers(config: dict, where: str) -> list[_Layer]:
    """The layer list of a Sequential or Functional model config (Keras 2 or 3)."""
    kind = config.get("class_name")
    inner = config.get("config")
    if kind not in ("Sequential", "Functional", "Model"):
        raise KerasFormatError(f"{where}: the saved model is a {kind!r}, not a Sequential model; "
                               f"rnnsent reads only {ARCHITECTURE}")
    entries = inner if isinstance(inner, list) else (inner or {}).get("layers", [])  # Keras <= 2.2: a bare list
    layers = []
    for entry in entries:
        cfg = entry.get("config", {})
        name = cfg.get("name", entry.get("name", "?"))
        if entry.get("class_name") in ("Sequential", "Functional", "Model"):
            raise KerasFormatError(f"{where}: nested model {name!r}; rnnsent reads only {ARCHITECTURE}")
        # A custom class (registered under another name, or from a module outside Keras) only borrows a stock
        # name: its code is not in the file, so what it computes is unknown, as with a Lambda layer.
        registered, module = entry.get("registered_name"), entry.get("module")
        if registered not in (None, entry.get("class_name")) or (
            module is not None and not str(module).startswith("keras")
        ):
            raise KerasFormatError(
                f"{where}: layer {name!r} is a custom class ({registered or module}), not Keras' own "
                f"{entry.get('class_name')}; rnnsent reads only {ARCHITECTURE}"
            )
        layers.append(_Layer(entry.get("class_name", "?"), name, cfg))
    return layers


def _read_legacy_h5(f, where: str) -> list[_Layer]:
    """`model.save("x.h5")` by Keras 2 or Keras 3: JSON config in attrs, weights under model_weights/."""
    raw = f.attrs.get("model_config")
    if raw is None:
        what = (
            "a weights-only file"
            if ("layer_names" in f.attrs or "layers" in f)
            else "an HDF5 file without a Keras model"
        )
        raise KerasFormatError(f"{where} is {what} (no model_config); save the whole model with model.save()")
    layers = _config_layers(json.loads(_text(raw)), where)
    root = f["model_weights"] if "model_weights" in f else f
    for layer in layers:
        if layer.kind == "InputLayer":
            continue
        if layer.name not in root:
            layer.weights = []
            continue
        group = root[layer.name]
        names = [_text(n) for n in group.attrs.get("weight_names", [])]
        layer.weights = [_checked_dataset(group[n], where) for n in names]
    return layers


# A .keras config.json is a few kB; the weights member is bounded by files.MAX_MEMBER_BYTES.
MAX_CONFIG_BYTES = 16 << 20


def _read_keras_zip(path: Path) -> tuple[dict, bytes]:
    """config.json, parsed, and the bytes of model.weights.h5: each member bounded before it is read."""
    where = str(path)
    with zipfile.ZipFile(path) as z:
        members = set(z.namelist())
        if "config.json" not in members or "model.weights.h5" not in members:
            raise KerasFormatError(
                f"{where} is a zip file but not a Keras .keras file (no config.json / model.weights.h5)"
            )
        read = {}
        for name, bound in (("config.json", MAX_CONFIG_BYTES), ("model.weights.h5", MAX_MEMBER_BYTES)):
            info = z.getinfo(name)
            with z.open(info) as f:
                read[name] = read_bounded(f, bound, f"{where}:{name}", KerasFormatError, info.file_size)
    return json.loads(read["config.json"]), read["model.weights.h5"]


def _keras_zip_layers(config: dict, f, where: str) -> list[_Layer]:
    """The layers of a .keras config, their weights found in the open model.weights.h5 `f`."""
    layers = _config_layers(config, where)
    root = f["layers"] if "layers" in f else f.get("_layer_checkpoint_dependencies", {})
    # Keras 3 records each layer's name on its vars group; Keras 2.13-2.15 does not, and both name
    # the groups after the class (snake_case, _1, _2 ... for repeats), in layer order.
    by_name = {}
    for key in root:
        vars_ = root[key].get("vars")
        if vars_ is not None and "name" in vars_.attrs:
            by_name[_text(vars_.attrs["name"])] = root[key]
    used: dict[str, int] = {}
    for layer in layers:
        if layer.kind == "InputLayer":
            continue
        base = _snake_case(layer.kind)
        key = base if base not in used else f"{base}_{used[base] + 1}"
        used[base] = used.get(base, -1) + 1
        group = by_name.get(layer.name, root.get(key) if key in root else None)
        layer.weights = [] if group is None else _group_vars(group)
    return layers


def _group_vars(group) -> list:
    """A layer's arrays in Keras order: its own vars/0.., then its cell's (recurrent layers)."""
    arrays = []
    # the last two: Bidirectional
    for sub in ("vars", "cell/vars", "forward_layer/cell/vars", "backward_layer/cell/vars"):
        if sub in group:
            vars_ = group[sub]
            arrays += [_checked_dataset(vars_[k], group.file.filename) for k in sorted(vars_, key=int)]
    return arrays


# The most a weight array may hold, from its declared shape, before anything is read: a compressed
# dataset would otherwise inflate without bound. rnnsent's largest sensible model is far below it.
MAX_WEIGHT_BYTES = 1 << 30


def _checked_dataset(ds, where: str):
    """One weight array, unread: refused if its bytes live elsewhere or it says it is too large.
    _parse reads it once its shape matches the config."""
    name = getattr(ds, "name", "?")
    if not hasattr(ds, "shape") or not hasattr(ds, "dtype"):
        raise KerasFormatError(f"{where}: {name} is not a weight array")
    if ds.external or ds.is_virtual:  # its bytes would come from other files of this machine
        raise KerasFormatError(f"{where}: {name} keeps its data in external files; refusing to read it")
    if ds.size * ds.dtype.itemsize > MAX_WEIGHT_BYTES:
        raise KerasFormatError(f"{where}: {name} declares shape {ds.shape}, over {MAX_WEIGHT_BYTES >> 30} GiB; "
                               "no model rnnsent reads is that large")
    return ds


def _snake_case(name: str) -> str:
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ----------------------------------------------------------------------------- rnnsent -> Keras


@torch.no_grad()
def keras_weights(model: SentimentRNN) -> dict[str, list[np.ndarray]]:
    """The model's weights in Keras' layout: {"embedding": [...], "rnn": [...], "dense": [...]}, each list in
    the order Keras' layer.get_weights() returns it; "rnn" holds kernel, recurrent kernel and bias of every
    layer and direction in turn (forward before backward, as Bidirectional.get_weights())."""
    order = KERAS_GATE_ORDER[model.cell]
    inverse = tuple(order.index(k) for k in range(len(order)))  # Keras block k <- PyTorch block inverse[k]
    rnn = model.rnn

    def keras_gates(w: torch.Tensor) -> torch.Tensor:
        return permute_gates(w.detach().float().cpu(), inverse)

    as_np = lambda t: t.detach().float().cpu().contiguous().numpy()  # noqa: E731
    cells = []
    for sfx in recurrent.weight_suffixes(rnn):
        kernel = keras_gates(getattr(rnn, f"weight_ih{sfx}")).t()  # (in, G*H)
        recurrent_kernel = keras_gates(getattr(rnn, f"weight_hh{sfx}")).t()  # (H, G*H)
        b_ih, b_hh = getattr(rnn, f"bias_ih{sfx}"), getattr(rnn, f"bias_hh{sfx}")
        if model.cell == "gru":
            bias = torch.stack([keras_gates(b_ih), keras_gates(b_hh)])  # (2, 3H)
        else:
            # The zero bias_hh buffer is added in case someone filled it: the sum is what the kernel uses.
            bias = keras_gates(b_ih + b_hh)  # (G*H,)
        cells += [as_np(kernel), as_np(recurrent_kernel), as_np(bias)]
    return {
        "embedding": [as_np(model.embedding.weight)],
        "rnn": cells,
        "dense": [as_np(model.fc.weight.t()), as_np(model.fc.bias)],
    }


def to_keras(model: SentimentRNN):
    """A live Keras 3 Sequential model with the same architecture and weights, for any input length.

    Keras is imported here, not at module import. If no backend was chosen (no KERAS_BACKEND,
    no keras.json) and TensorFlow is absent, the torch backend is selected.
    """
    _default_backend()
    import keras

    w = keras_weights(model)
    rnn_cls = getattr(keras.layers, KERAS_CELL_NAMES[model.cell])
    rnn_kwargs = {"reset_after": True} if model.cell == "gru" else {}
    embedding = keras.layers.Embedding(model.vocab_size, model.embed_dim)
    dense = keras.layers.Dense(model.outputs, activation="sigmoid" if model.outputs == 1 else "softmax")
    layers = [keras.Input(shape=(None,), dtype="int32"), embedding]
    if model.embed_dropout:
        layers.append(keras.layers.Dropout(model.embed_dropout))
    rnns = []
    for k in range(model.num_layers):
        if k and model.layer_dropout:
            layers.append(keras.layers.Dropout(model.layer_dropout))
        rnn = rnn_cls(model.hidden_size, return_sequences=k < model.num_layers - 1, **rnn_kwargs)
        rnns.append(keras.layers.Bidirectional(rnn, merge_mode="concat") if model.bidirectional else rnn)
        layers.append(rnns[-1])
    if model.output_dropout:
        layers.append(keras.layers.Dropout(model.output_dropout))
    layers.append(dense)
    k = keras.Sequential(layers, name=f"sentiment_{model.cell}")
    embedding.set_weights(w["embedding"])
    per_layer = 3 * model.directions
    for i, rnn in enumerate(rnns):
        rnn.set_weights(w["rnn"][i * per_layer: (i + 1) * per_layer])
    dense.set_weights(w["dense"])
    return k


def save_keras(model: SentimentRNN, path) -> None:
    """Save the model as a Keras file; the suffix picks the format (.keras, or legacy .h5)."""
    if Path(path).suffix not in (".keras", ".h5"):
        raise ValueError(f"save_keras writes .keras or .h5 files, got {path}")
    to_keras(model).save(os.fspath(path))


def _default_backend() -> None:
    """Keras picks its backend once, at its first import: KERAS_BACKEND, else the one keras.json in Keras' home
    names, else TensorFlow. Keras writes a keras.json naming TensorFlow the first time it runs, whatever backend it
    was given, so a machine without TensorFlow soon has one that names it. Where the backend Keras would pick is not
    installed, the torch backend is chosen instead (a keras.json's choice overruled with one line saying so)."""
    import importlib.util
    import sys

    if "keras" in sys.modules or "KERAS_BACKEND" in os.environ:
        return
    home = os.environ.get("KERAS_HOME") or os.path.join(  # where Keras looks, as keras/src/backend/config.py does
        os.path.expanduser("~") if os.access(os.path.expanduser("~"), os.W_OK) else "/tmp", ".keras")
    path = Path(home, "keras.json")
    try:
        named = json.loads(path.read_text()).get("backend", "tensorflow")
    except (OSError, ValueError, AttributeError):  # no file, or one Keras would not read either
        named, path = "tensorflow", None
    if isinstance(named, str) and named.isidentifier() and importlib.util.find_spec(named) is not None:
        return
    os.environ["KERAS_BACKEND"] = "torch"
    if path is not None:
        log.warning(f"rnnsent: {path} names Keras' {named!r} backend, which is not installed here: using Keras' "
                    "torch backend (set KERAS_BACKEND to choose another)")
