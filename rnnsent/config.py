"""Every setting, defined once: the cells, the model, the data, the optimisation and the run's machinery.

The model (rnnsent.models), the trainer, checkpoints, resume checks, Keras import and
LoadedModel.prepare_data all read these classes, so adding a model option is one field in
ModelConfig. Plain Python, no torch: the command line can read it without loading PyTorch.

TrainConfig is flat (its fields are those of the four groups below, in this order), so config.json,
the checkpoints' "config" and `TrainConfig(cell="lstm", epochs=2)` keep the shape they always had.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import InitVar, dataclass


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
_CELL_ALIASES = {**{c.name: c.name for c in CELL_TABLE.values()}, **{c.keras_name.lower(): c.name for c in CELL_TABLE.values()}}

INITS = ("keras", "torch")
# keras: pre-padded to max_len as pad_sequences does; bucketed: true lengths, right-padded, length-bucketed batches.
ENCODINGS = ("keras", "bucketed")
LEGACY_ENCODINGS = {"fast": "bucketed"}  # the old name, still read from checkpoints, caches and flags
AMPS = ("none", "bf16", "fp16")
SCHEDULES = ("constant", "cosine")
# auto: rnnsent's fused CPU kernel where it builds, else PyTorch's layers; fused: insist; torch: PyTorch's.
# RNNSENT_FUSED=0 in the environment is the documented alias of "never the kernel" (read in rnnsent.fused only).
IMPLS = ("auto", "fused", "torch")
# The validation metric that picks best.pt; None: accuracy for two classes, macro_f1 for more.
MONITORS = ("accuracy", "macro_f1", "loss")


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
    if name in LEGACY_ENCODINGS:
        if warn:
            warnings.warn(f'encoding "{name}" is now called "{LEGACY_ENCODINGS[name]}"; the old name will go away',
                          FutureWarning, stacklevel=3)
        return LEGACY_ENCODINGS[name]
    if name not in ENCODINGS:
        raise ValueError(f"encoding must be one of {', '.join(ENCODINGS)}, got {name!r}")
    return name


def warn_expected_per_block(value) -> None:
    """The old expected_per_block setting: accepted and ignored, with a deprecation message. The data reader now
    checks 12,500 reviews per split and label, or what a smaller copy declares in imdb_subset.json beside it."""
    if value is not None:
        warnings.warn("expected_per_block is no longer needed and is ignored: the reader checks 12,500 reviews per "
                      "split and label, or what a smaller copy declares in imdb_subset.json beside it",
                      FutureWarning, stacklevel=3)


def check_val_fraction(value: float) -> float:
    """The share of train held out for validation: [0, 1). 0 holds none out (the trainer needs some)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {value}")
    return value


def _require(checks: list[tuple[bool, str]]) -> None:
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    """SentimentRNN's arguments: the Keras exercise's architecture by default."""

    cell: str = "gru"  # lstm | gru | rnn (Keras names LSTM, GRU, SimpleRNN accepted)
    vocab_size: int = 5000  # ids 0..vocab_size-1, counting pad, start and out-of-vocabulary
    embed_dim: int = 32
    hidden_size: int = 100
    embed_dropout: float = 0.0  # dropout on embeddings (no parameters, counts unchanged)
    output_dropout: float = 0.0  # dropout on the last hidden state
    init: str = "keras"  # keras: Keras' initializers; torch: PyTorch's defaults
    word_dropout: float = 0.0  # training only: a word becomes out-of-vocabulary with this probability
    # 2: Dense(1) + sigmoid, as Keras' exercise; K > 2: Dense(K) + softmax. Your own data's classes set it.
    num_classes: int = 2
    num_layers: int = 1  # stacked recurrent layers, each feeding its full sequence to the next
    bidirectional: bool = False  # a second direction per layer; the head sees [forward, backward] final states
    layer_dropout: float = 0.0  # training only: dropout between stacked layers (nn.LSTM's dropout); none with one layer

    def __post_init__(self):
        object.__setattr__(self, "cell", canonical_cell(self.cell))
        if not isinstance(self.num_layers, int) or isinstance(self.num_layers, bool) or self.num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        if not isinstance(self.bidirectional, bool):
            raise ValueError(f"bidirectional must be True or False, got {self.bidirectional!r}")
        if not isinstance(self.num_classes, int) or isinstance(self.num_classes, bool) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {self.num_classes!r}")
        for name in ("vocab_size", "embed_dim", "hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("embed_dropout", "output_dropout", "word_dropout", "layer_dropout"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}: choose one of {', '.join(INITS)}")

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    def model_args(self) -> dict:
        """The ModelConfig part of this config (of a TrainConfig too): SentimentRNN(**config.model_args())."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(ModelConfig)}


@dataclass(frozen=True)
class DataConfig:
    """How the IMDB splits are prepared (besides vocab_size, which is the model's)."""

    max_len: int = 500  # reviews keep their last max_len ids, as Keras' pad_sequences does
    encoding: str = "bucketed"  # see ENCODINGS ("fast" is the old name of "bucketed")
    limit: int | None = None  # use only this many reviews per split (smoke runs)
    val_fraction: float = 0.1  # carved from train; test is never used for model selection
    split_seed: int = 0  # fixed, so every training seed sees the same validation split
    data_root: str | None = None  # a path holding the data (see rnnsent.data.fetch)
    # Deprecated, ignored, not stored: the reader checks a copy's size itself (rnnsent.data.fetch.block_size).
    expected_per_block: InitVar[int | None] = None
    cache_dir: str | None = None
    # Your own data (data_root a .csv, .tsv, .jsonl file or a class folder; see rnnsent.data.tabular):
    test_data: str | None = None  # a file of test rows; else the split column, the folder's test/, or a carve
    text_column: str = "text"
    label_column: str = "label"
    split_column: str | None = None  # a column of train / test / val values
    test_fraction: float = 0.1  # carved (stratified, seed split_seed) when no test set is given

    def __post_init__(self, expected_per_block=None):
        warn_expected_per_block(expected_per_block)
        object.__setattr__(self, "encoding", canonical_encoding(self.encoding))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        _require([
            (self.max_len >= 1, f"max_len must be at least 1, got {self.max_len}"),
            (self.limit is None or self.limit >= 2, f"limit must be at least 2 (one review per label), got {self.limit}"),
        ])
        check_val_fraction(self.val_fraction)

    def data_args(self, vocab_size: int) -> dict:
        """prepare_imdb's arguments for these settings (vocab_size is a model setting)."""
        return dict(vocab_size=vocab_size, max_len=self.max_len, encoding=self.encoding,
                    val_fraction=self.val_fraction, seed=self.split_seed, limit=self.limit)

    def labelled_args(self, vocab_size: int) -> dict:
        """prepare_labelled's arguments for these settings (the user's own data)."""
        from rnnsent.data.tabular import Columns  # no torch there either

        return dict(path=self.data_root, test_path=self.test_data, vocab_size=vocab_size, max_len=self.max_len,
                    encoding=self.encoding, val_fraction=self.val_fraction, test_fraction=self.test_fraction,
                    seed=self.split_seed, limit=self.limit, cache_dir=self.cache_dir,
                    columns=Columns(self.text_column, self.label_column, self.split_column))


@dataclass(frozen=True)
class OptimConfig:
    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0  # decoupled (AdamW) when > 0
    schedule: str = "constant"  # constant | cosine (per step, with warmup_steps of linear warm-up)
    warmup_steps: int = 0
    clip: float | None = None  # max gradient norm; RNN gradients can explode on long reviews
    patience: int | None = None  # stop after this many epochs without a better validation score (see monitor)
    seed: int = 0
    monitor: str | None = None  # see MONITORS; None: accuracy for two classes, macro_f1 for more
    # Regularisers that change training only; the model that predicts is the same (rnnsent/regularise.py):
    label_smoothing: float = 0.0  # train toward (1 - s) * label + s / classes instead of the bare label
    adversarial: float = 0.0  # > 0: also train on embeddings pushed up the loss by this share of their norm (Miyato et al.)
    ema: float = 0.0  # > 0: validate, keep and test an exponential moving average of the weights with this decay per step
    # A language model from scripts/pretrain.py (its run folder or a checkpoint) whose embedding and recurrent
    # layer start this run, instead of random weights (Dai & Le 2015). Needs the same data and vocabulary.
    pretrained: str | None = None

    def lr_at(self, step: int, total_steps: int) -> float:
        """The learning rate at a global step: a pure function of the step (warm-up, then the schedule)."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "cosine":
            progress = (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return self.lr


@dataclass(frozen=True)
class RunConfig:
    """The machinery: where and how a run executes. None of it changes what is learned."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; fp16 uses a grad scaler)
    deterministic: bool = False
    flush_denormal: bool = True  # CPU: vanishing gradients produce denormals that are 10-100x slower
    threads: int | None = None  # CPU threads; default: all cores
    rnn_impl: str = "auto"  # see IMPLS
    retain_memory: bool = True  # CPU: glibc keeps freed blocks for reuse instead of unmapping them (page faults)
    eval_batch_size: int = 512
    ckpt_every: int | None = None  # also save last.pt every N steps inside an epoch
    log_every: int = 20  # steps between progress updates (and NaN checks on CUDA)
    tensorboard: str | None = None  # also write TensorBoard event files (losses, accuracy, lr, grad norm) into this folder
    out: str = "runs/gru"
    resume: str | None = None  # a checkpoint file or run folder to continue from
    quiet: bool = False


@dataclass(frozen=True)
class TrainConfig(RunConfig, OptimConfig, DataConfig, ModelConfig):
    """Everything a training run needs: the fields of ModelConfig, DataConfig, OptimConfig and RunConfig."""

    def __post_init__(self, expected_per_block=None):
        ModelConfig.__post_init__(self)
        DataConfig.__post_init__(self, expected_per_block)
        _require([
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive number, got {self.lr}"),
            (self.vocab_size >= 4, f"vocab_size must be at least 4 (pad, start, unknown and one word), got {self.vocab_size}"),
            (self.amp in AMPS, f"amp must be one of {', '.join(AMPS)}, got {self.amp!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.val_fraction > 0, "val_fraction must be above 0 for training: best.pt is chosen on validation"),
            (self.clip is None or self.clip > 0, f"clip must be positive, got {self.clip}"),
            (self.patience is None or self.patience >= 1, f"patience must be at least 1, got {self.patience}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.ckpt_every is None or self.ckpt_every >= 1, f"ckpt_every must be at least 1, got {self.ckpt_every}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}"),
            (self.log_every >= 1, f"log_every must be at least 1, got {self.log_every}"),
            (self.rnn_impl in IMPLS, f"rnn_impl must be one of {', '.join(IMPLS)}, got {self.rnn_impl!r}"),
            (self.monitor is None or self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}"),
            (0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.adversarial >= 0 and math.isfinite(self.adversarial), f"adversarial must be >= 0, got {self.adversarial}"),
            (0.0 <= self.ema < 1.0, f"ema must be in [0, 1) (a decay per step, such as 0.999; 0 is off), got {self.ema}"),
        ])

    def monitored(self) -> str:
        """The validation metric that picks best.pt."""
        return self.monitor or ("accuracy" if self.num_classes == 2 else "macro_f1")

    def data_args(self) -> dict:
        return DataConfig.data_args(self, self.vocab_size)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_names(group) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(group))


# What only fine-tuning uses, at its off values: a recipe's pretraining run starts from these. Pretraining refuses
# all but word dropout, which the language model simply has none of (it is the classifier's input noise).
FINE_TUNING_ONLY = {"label_smoothing": 0.0, "adversarial": 0.0, "ema": 0.0, "pretrained": None, "word_dropout": 0.0}


# Settings that must agree between a checkpoint and the run that resumes it: changing any of them would
# silently train a different model or on different data. Where the data lies, epochs, patience and the
# machinery may change, and so may where the pretrained start came from (a resumed run has its weights).
MAY_CHANGE_ON_RESUME = ("data_root", "cache_dir", "epochs", "patience", "pretrained")
RESUME_MUST_MATCH = tuple(name for group in (ModelConfig, DataConfig, OptimConfig) for name in field_names(group)
                          if name not in MAY_CHANGE_ON_RESUME)


def resume_differences(saved: dict, config: TrainConfig) -> list[str]:
    """'name: checkpoint X, now Y' for each RESUME_MUST_MATCH setting a checkpoint's config holds otherwise."""
    saved = dict(saved)
    if isinstance(saved.get("encoding"), str) and saved["encoding"] in LEGACY_ENCODINGS:
        saved["encoding"] = LEGACY_ENCODINGS[saved["encoding"]]  # a checkpoint from before the rename
    return [f"{k}: checkpoint {saved.get(k)!r}, now {getattr(config, k)!r}"
            for k in RESUME_MUST_MATCH if k in saved and saved[k] != getattr(config, k)]


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
    "best": {
        "doc": "the same model trained better: length-bucketed input of up to 1000 tokens, dropout 0.5 on embeddings "
               "and on the last state, word dropout 0.2, cosine learning-rate decay from 1e-3, gradient clipping at 1, "
               "10 epochs, the best validation epoch kept",
        "encoding": "bucketed", "init": "keras", "epochs": 10, "batch_size": 64, "lr": 1e-3, "schedule": "cosine",
        "warmup_steps": 0, "clip": 1.0, "embed_dropout": 0.5, "output_dropout": 0.5, "word_dropout": 0.2,
        "weight_decay": 0.0, "max_len": 1000,
    },
}
# best's settings plus adversarial embeddings: the lever that paid in scripts/ablation.py (README: Results).
RECIPES["adversarial"] = {
    **RECIPES["best"],
    "doc": "best's settings, also trained on embeddings pushed up the loss by 0.05 of each review's embedding norm "
           "(adversarial training, Miyato et al. 2016); each step costs two forward and backward passes",
    "adversarial": 0.05,
}
# best's settings, started from a language model pretrained on the training reviews (scripts/pretrain.py
# --recipe pretrained, whose settings are "pretrain"), with an average of the weights and adversarial embeddings.
RECIPES["pretrained"] = {
    **RECIPES["best"],
    "doc": "best's settings fine-tuning a language model pretrained on the training reviews (scripts/pretrain.py "
           "--recipe pretrained, then --pretrained RUN), with an exponential average of the weights (0.999) and "
           "adversarial embeddings (0.05 of each review's embedding norm)",
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


def recipe_settings(name: str | None, cell: str | None = None, pretraining: bool = False) -> dict:
    """The TrainConfig values recipe `name` (None: no recipe) gives `cell` (None: TrainConfig's): its shared
    settings, then its by_cell ones. For a pretraining run, the fine-tuning-only settings go off and its
    "pretrain" settings win (the data settings stay, so the language model and the classifier build the same
    vocabulary)."""
    recipe = RECIPES[name] if name else {}
    values = {k: v for k, v in recipe.items() if k not in RECIPE_KEYS}
    values.update(recipe.get("by_cell", {}).get(canonical_cell(cell or values.get("cell", TrainConfig.cell)), {}))
    if pretraining:
        values.update(FINE_TUNING_ONLY)
        values.update(recipe.get("pretrain", {}))
    return values
