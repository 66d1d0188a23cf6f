"""Command lines for train / evaluate / predict / explain / export. scripts/*.py and the `rnnsent` command call
these; all work happens in the library. Nothing here imports torch before the flags are parsed, so --help is instant."""
from __future__ import annotations

import argparse
import codecs
import dataclasses
import json
import logging
import os
import re
import sys
from pathlib import Path

from rnnsent.config import (LEGACY_RECIPES, QUOTINGS, RECIPES, SETTINGS, ExplainConfig, TrainConfig, canonical_cell,
                            check_setting, fine_tuning_out, recipe_settings, setting_kind)

EXIT_USAGE, EXIT_INTERRUPTED = 2, 130


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _expect_per_block(text: str) -> int:
    print("note: --expect-per-block is no longer needed and is ignored: the data's own size is checked (12,500 reviews "
          "per split and label, or what imdb_subset.json beside a smaller copy declares)", file=sys.stderr)
    return _positive_int(text)


# The order train.py --help lists the settings' flags in (expect_per_block: the hidden deprecated flag). A field
# made with config.setting() and missing here is listed right after the field before it in its class, so a new
# option of a group is listed with its group: a new option is one field.
FLAG_ORDER = ("cell", "epochs", "batch_size", "lr", "vocab_size", "max_len", "embed_dim", "hidden_size", "num_layers",
              "bidirectional", "layer_dropout", "num_classes", "encoding", "init", "embed_dropout", "output_dropout",
              "word_dropout", "weight_decay", "schedule", "warmup_steps", "clip", "patience", "seed", "device", "amp",
              "deterministic", "flush_denormal", "threads", "rnn_impl", "retain_memory", "limit", "val_fraction",
              "data_root", "test_data", "text_column", "label_column", "split_column", "test_fraction", "quoting",
              "on_missing_label", "label_smoothing", "adversarial", "ema", "pretrained", "monitor", "cache_dir",
              "expect_per_block", "ckpt_every", "eval_batch_size", "log_every", "tensorboard", "out", "resume", "quiet",
              "overwrite")


def setting_flag_type(field: dataclasses.Field):
    """The flag's parser of a setting's text: a number where the field holds one (text that is none stays text,
    for the check to name), then config.check_setting, whose one line argparse prints after the flag's name."""
    kind, renamed = setting_kind(field)[0], field.metadata.get("renamed") or {}

    def parse(text: str):
        value = text
        if kind in ("int", "float"):
            try:
                value = int(text) if kind == "int" else float(text)
            except ValueError:
                pass
        elif text in renamed:
            _note_renamed((field.metadata["flags"] or (f"--{field.name.replace('_', '-')}",))[0], text, renamed[text])
            value = renamed[text]
        try:
            return check_setting(field, value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def add_setting_flag(p: argparse.ArgumentParser, field: dataclasses.Field) -> None:
    """The flag of a TrainConfig field made with config.setting(): its names, help (the default in brackets),
    choices and range. A boolean is a switch: --name turns it on, or --no-name off where it is on by default."""
    meta = field.metadata
    flags = meta["flags"] or (f"--{field.name.replace('_', '-')}",)
    kwargs = dict(dest=field.name, default=None, help=meta["help"].replace("{default}", str(field.default)))
    if setting_kind(field)[0] == "bool":
        kwargs["action"] = "store_false" if field.default else "store_true"
    else:
        kwargs.update(type=setting_flag_type(field), **meta["argparse"])
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        if meta["metavar"] is not None:
            kwargs["metavar"] = meta["metavar"]
    p.add_argument(*flags, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line (what was wrong and where to look), not a usage dump."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _note_renamed(flag: str, old: str, new: str) -> None:
    """The one-line note for a flag value that has a new name (the old one still works)."""
    print(f"note: {flag} {old} is now called {new}; the old name will go away", file=sys.stderr)


def recipe_flag(text: str) -> str:
    """--recipe's value: an old recipe name becomes its new one, with a note (argparse then checks the choices,
    choices=sorted(RECIPES))."""
    if text in LEGACY_RECIPES:
        _note_renamed("--recipe", text, LEGACY_RECIPES[text])
    return LEGACY_RECIPES.get(text, text)


def train_parser(prog: str = "train.py", config=TrainConfig,
                 leave_out: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Train a Keras-exact recurrent sentiment classifier on IMDB. Defaults follow the Keras exercise "
                    "(Embedding(5000, 32) -> GRU(100) -> Dense(1), Adam 1e-3, batch 64, 500 tokens); "
                    "--recipe picks a documented set of training settings, explicit flags override it.",
    )  # each help ends with its default in [brackets], taken from TrainConfig: shown once, never "None"
    p.add_argument("--recipe", choices=sorted(RECIPES), default=None, type=recipe_flag,
                   help="named settings: " + "; ".join(f"{k}: {v['doc']}" for k, v in RECIPES.items())
                   + "".join(f"; {old}: {new}'s old name" for old, new in LEGACY_RECIPES.items()) + " [none]")
    for name in flag_order(config):
        if name in leave_out:
            continue
        if name == "expect_per_block":
            # deprecated
            p.add_argument("--expect-per-block", type=_expect_per_block, default=None, help=argparse.SUPPRESS)
        elif "help" in config.__dataclass_fields__[name].metadata:
            add_setting_flag(p, config.__dataclass_fields__[name])
    return p


def flag_order(config=TrainConfig) -> list[str]:
    """FLAG_ORDER, each field of `config` it lacks inserted right after the field before it in `config`."""
    order = list(FLAG_ORDER)
    for before, f in zip([None, *dataclasses.fields(config)], dataclasses.fields(config)):
        if f.name not in order:
            order.insert(order.index(before.name) + 1 if before else 0, f.name)
    return order


def config_from_args(args: argparse.Namespace, pretraining: bool = False, config=TrainConfig) -> TrainConfig:
    """Defaults <- recipe <- explicit flags, in that order, as a `config` (train_parser's). For pretraining, a
    recipe's "pretrain" settings replace its fine-tuning ones (the data settings stay, so both runs build the
    same vocabulary)."""
    values = recipe_settings(args.recipe, args.cell, pretraining)
    fields = {f.name for f in dataclasses.fields(config)}
    values.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    cell = canonical_cell(values.get("cell", TrainConfig.cell))
    fine_tunes_lm = bool(args.recipe) and "pretrain" in RECIPES[args.recipe]
    if fine_tunes_lm and not pretraining and not any(values.get(k) for k in ("pretrained", "init_from", "resume")):
        raise ValueError(f"recipe {args.recipe} fine-tunes a pretrained language model: first run scripts/pretrain.py "
                         f"--recipe {args.recipe} --cell {cell} --out runs/lm-{cell} (same --data, --seed), then add "
                         f"--pretrained runs/lm-{cell}")
    if "out" not in values and values.get("init_from"):
        values["out"] = fine_tuning_out(values["init_from"])
    if "out" not in values:
        values["out"] = str(Path("runs") / (("lm-" if pretraining else "") + cell))
    return config(**values)


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
    from rnnsent.storage.checkpoint import CheckpointError

    return (ValueError, OSError, CheckpointError, getattr(rnnsent.data, "DataError", ValueError))


def train_main(argv: list[str] | None = None, prog: str = "train.py") -> int:
    return _run(train_parser(prog).parse_args(argv), pretraining=False)


def _run(args: argparse.Namespace, pretraining: bool) -> int:
    """A training or pretraining run from parsed flags; failures become one-line errors with their exit codes."""
    from rnnsent.storage.checkpoint import CheckpointWriteError
    from rnnsent.training.stopping import NonFiniteLoss, TrainingInterrupted

    try:
        config = config_from_args(args, pretraining=pretraining)
        if pretraining:
            from rnnsent.training.pretrain import pretrain as run
        else:
            from rnnsent.training.trainer import train as run
        report = run(config)
    except TrainingInterrupted as e:
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:  # before training began (the data, the model): there is nothing to save
        return _fail(
            "interrupted by Ctrl-C before training began (while preparing the data or the model); no checkpoint "
            "was written. Run the same command again to start",
            EXIT_INTERRUPTED,
        )
    except (NonFiniteLoss, CheckpointWriteError) as e:
        return _fail(str(e), 1)
    except (ImportError, *_user_errors()) as e:  # ImportError: an optional extra (--tensorboard) is missing
        return _fail(str(e))
    if config.quiet and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(json.dumps(report))
    return 0


def pretrain_main(argv: list[str] | None = None, prog: str = "pretrain.py") -> int:
    """Language-model pretraining (rnnsent.training.pretrain): the flags of train.py, a run folder like training's."""
    p = train_parser(prog)
    p.description = ("Pretrain the embedding and recurrent layer as a language model on the training split's text "
                     "(Dai & Le 2015), for scripts/train.py --pretrained. The flags are train.py's; --recipe takes "
                     "the recipe's pretraining settings. The best epoch by validation loss per word is kept.")
    return _run(p.parse_args(argv), pretraining=True)


def evaluate_main(argv: list[str] | None = None, prog: str = "evaluate.py") -> int:
    p = _Parser(prog=prog, description="Test accuracy, loss and confusion counts of a checkpoint (macro-F1 and the "
                                       "confusion matrix for more than two classes); --report DIR writes a report of "
                                       "where it fails.")
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), or a released model: gru, lstm, rnn")
    p.add_argument("--split", choices=("test", "val", "train"), default="test", help="which split to score [test]")
    p.add_argument(
        "--data",
        dest="data_root",
        default=None,
        help="where the data is (see train.py --help). A model trained on your own data: that file, whose held-out "
        "split is made again exactly as the run made it (--split) [the path the run recorded]; an IMDB model: a file "
        "of your own (.csv, .tsv, .jsonl or a class folder) is scored whole, every row",
    )
    p.add_argument("--test-data", default=None,
                   help="score every row of this file of labelled rows (.csv, .tsv, .jsonl or a class folder); "
                        "never the file the model was trained on [the run's own test rows]")
    p.add_argument("--text-column", default=None, help="your own data: the text column [the run's, else text]")
    p.add_argument("--label-column", default=None, help="your own data: the label column [the run's, else label]")
    p.add_argument("--quoting", choices=QUOTINGS, default=None, type=setting_flag_type(SETTINGS["quoting"]),
                   help="your own .csv or .tsv: see train.py --help [the run's, else csv]")
    p.add_argument("--cache-dir", default=None, help="rnnsent's cache folder")
    p.add_argument("--limit", type=setting_flag_type(SETTINGS["limit"]), default=None,
                   help="only N reviews per split [the limit the run was trained with]")
    p.add_argument("--expect-per-block", type=_expect_per_block, default=None, help=argparse.SUPPRESS)  # deprecated
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [auto]")
    p.add_argument("--batch-size", type=_positive_int, default=512, help="reviews per batch [512]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="also write DIR/report.html (one page: metrics, curves, calibration, the worst texts), "
                        "DIR/metrics.json and DIR/predictions.csv; needs pip install 'rnnsent[report]' "
                        "(docs/evaluation.md)")
    p.add_argument("--worst", type=_non_negative, default=20, help="the report's worst-classified texts shown [20]")
    p.add_argument("--no-attributions", action="store_true",
                   help="the report's worst texts without word attributions (which take Captum and time)")
    args = p.parse_args(argv)
    _show_log()
    try:
        loaded, result, what = _evaluate(args)
    except (ImportError, *_user_errors()) as e:  # ImportError: the report extra is missing
        return _fail(str(e))
    if loaded.classes is not None:
        result["classes"] = loaded.classes
    if loaded.provenance is not None:  # a model fine-tuned from another (--init-from)
        result["init_from"] = loaded.provenance
    if args.report:
        result["report"] = str(Path(args.report) / "report.html")
        print(f"wrote {result['report']}, metrics.json and predictions.csv beside it", file=sys.stderr)
    _print_evaluation(result, what, loaded.classes, args.json)
    return 0


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _evaluate(args: argparse.Namespace) -> tuple:
    """(the loaded checkpoint, evaluate()'s result, what was scored): the rows rnnsent.inference.heldout picks (the
    run's own held-out split, or every row of another file), and with --report the report written."""
    from rnnsent.inference.loading import load_checkpoint
    from rnnsent.inference.evaluate import evaluate, scores
    from rnnsent.inference.heldout import held_out
    from rnnsent.runtime import resolve_device

    from rnnsent.data.tabular import Columns

    if args.report:
        from rnnsent.inference.report import check_report_dir, make_report
        from rnnsent.inference.metrics import sklearn_metrics

        check_report_dir(args.report)  # before any work: a file or an unwritable folder is one line
        sklearn_metrics()
    device = resolve_device(args.device)
    loaded = load_checkpoint(args.checkpoint, device=device)
    columns = None
    if (args.text_column, args.label_column, args.quoting) != (None, None, None):
        c = loaded.config
        columns = Columns(args.text_column or c.get("text_column") or "text",
                          args.label_column or c.get("label_column") or "label",
                          quoting=args.quoting or c.get("quoting") or "csv")
    held = held_out(loaded, args.checkpoint, args.split, args.data_root, args.test_data, columns, args.cache_dir,
                    args.limit, texts=bool(args.report))
    if not args.report:
        return loaded, evaluate(loaded.model, held.split, batch_size=args.batch_size, device=device,
                                **loaded.decision()), held.what
    scored, metrics = make_report(loaded, held, args.checkpoint, args.report, args.worst, not args.no_attributions,
                                  args.batch_size, device)
    return loaded, scores(float(scored.losses.sum(dtype="float64")), metrics["confusion_matrix"]), held.what


def _print_evaluation(result: dict, what: str, classes, as_json: bool) -> None:
    """evaluate.py's answer: one JSON object, or accuracy and loss with the confusion counts (two classes) or
    macro-F1 and the confusion matrix (more)."""
    if as_json:
        print(json.dumps(result))
    elif "tp" in result:
        print(f"{what}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  on {result['n']} reviews\n"
              f"confusion: tp {result['tp']}  fp {result['fp']}  tn {result['tn']}  fn {result['fn']}")
    else:
        from rnnsent.training.report import confusion_lines

        print(
            f"{what}: accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  loss {result['loss']:.4f}  "
            f"on {result['n']} texts"
        )
        print("\n".join(confusion_lines(result["confusion_matrix"], classes)))
    if "init_from" in result and not as_json:
        print(f"started from: {result['init_from']['init_from']} (sha256 {result['init_from']['sha256']})")


def _text_arguments(p: argparse.ArgumentParser) -> None:
    """predict's and explain's: a checkpoint, texts (arguments or --file) and the device."""
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), or a released model: gru, lstm, rnn")
    p.add_argument("texts", nargs="*", help="review texts")
    p.add_argument("--file", help="a text file with one review per line ('-' for standard input)")
    p.add_argument("--device", default="cpu", help="cpu, auto, cuda or cuda:N [cpu]")


def _texts_and_model(args: argparse.Namespace):
    """The texts (arguments, then --file's lines) and the loaded checkpoint of _text_arguments' flags."""
    from rnnsent.inference.loading import load_checkpoint
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
            shown = terminal_safe(shown[:70] + "..." if len(shown) > 73 else shown)
            label = terminal_safe(pr.label)
            print(f"{pr.probability:.4f}  {label:<8}  {shown}" + (f"  [{pr.note}]" if pr.note else ""))
    return 0


# What a text may not send to a terminal as it is: the C0 controls but tab and newline (ESC starts the sequences
# that clear the screen or set the title, BEL ends one, CR rewrites the line), DEL, the C1 controls (CSI among
# them) and the bidirectional overrides and isolates, which reorder what is shown.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_safe(text: str) -> str:
    """`text` to print on a terminal: each control character as its Python escape (ESC as \\x1b), everything
    else as it is. predict's and explain's terminal output; their --json is escaped by JSON itself."""
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)


def explain_main(argv: list[str] | None = None, prog: str = "explain.py") -> int:
    p = _Parser(
        prog=prog,
        description="Which words made the model decide: word attributions (integrated gradients over "
        "the embedded words, through Captum: pip install 'rnnsent[explain]'), in the "
        "terminal, as JSON lines or as one HTML page. See docs/explain.md.",
    )
    _text_arguments(p)
    p.add_argument("--target", default=None,
                   help="the class to attribute toward, by name [the positive class for two (positive for IMDB), "
                        "else the predicted one]")
    p.add_argument(
        "--method",
        choices=("ig", "occlusion"),
        default="ig",
        help="ig: integrated gradients; occlusion: each word replaced by the baseline in turn, to check [ig]",
    )
    add_setting_flag(p, ExplainConfig.__dataclass_fields__["steps"])  # its one rule, checked before anything loads
    p.add_argument("--batch-size", type=_positive_int, default=8, help="texts per batched forward/backward pass [8]")
    p.add_argument("--json", action="store_true", help="print JSON lines: predict --json's keys and the attributions")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML page with every text highlighted")
    args = p.parse_args(argv)
    _show_log()
    try:
        from rnnsent.inference.explain import explain, format_text, to_html, use_colour

        texts, loaded = _texts_and_model(args)
        steps = ExplainConfig.steps if args.steps is None else args.steps
        explanations = explain(loaded, texts, target=args.target, method=args.method, steps=steps,
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
            safe = dataclasses.replace(e, words=[terminal_safe(w) for w in e.words], label=terminal_safe(e.label),
                                       target=terminal_safe(e.target))
            print(format_text(safe, colour))
    return 0


def export_main(argv: list[str] | None = None, prog: str = "export.py") -> int:
    p = _Parser(
        prog=prog,
        description="Write a model as one ONNX file (token ids and lengths in, logits and probabilities "
        "out) and its tokenizer as JSON beside it, after checking in onnxruntime that the "
        "graph computes what PyTorch does (docs/export.md). Needs pip install 'rnnsent[onnx]'.",
    )
    p.add_argument("--checkpoint", required=True,
                   help="a .pt checkpoint, a run folder (its best.pt), a released model (gru, lstm, rnn), or a Keras "
                        "model (.keras or .h5) with --vocab")
    p.add_argument("--onnx", required=True, help="the ONNX file to write, e.g. gru.onnx")
    p.add_argument("--tokenizer", default=None, help="the tokenizer JSON to write [beside --onnx: NAME.tokenizer.json]")
    p.add_argument("--json", action="store_true", help="print what was written and checked as one JSON object")
    p.add_argument("--vocab", metavar="FILE", default=None,
                   help="with a Keras model (.keras or .h5) as --checkpoint: its vocabulary, Keras' IMDB word index "
                        "(imdb_word_index.json) [a checkpoint's own]")
    p.add_argument("--max-len", type=_positive_int, default=500,
                   help="with a Keras model: the tokens it reads, pre-padded as pad_sequences [500]")
    args = p.parse_args(argv)
    _show_log()
    try:
        from rnnsent.inference.export import check_targets, export, require_onnxruntime, tokenizer_path_for

        require_onnxruntime()  # before loading anything: the one-line install hint and the paths come first
        check_targets(Path(args.onnx), Path(args.tokenizer or tokenizer_path_for(args.onnx)))
        result = export(_export_model(args), args.onnx, args.tokenizer, vocab=args.vocab, max_len=args.max_len)
    except (ImportError, *_user_errors()) as e:
        return _fail(str(e))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['onnx']} and {result['tokenizer']}: onnxruntime matches PyTorch within "
              f"{result['worst_difference']:.1e} on {result['inputs']} random inputs (batch 1, 7 and 64, "
              f"lengths 1 to {result['max_time']})")
    return 0


def _export_model(args: argparse.Namespace):
    """export's model: a Keras file through from_keras (its vocabulary is --vocab), else a checkpoint."""
    if Path(args.checkpoint).suffix.lower() in (".keras", ".h5"):
        from rnnsent.inference.keras_io import from_keras

        return from_keras(args.checkpoint)
    if args.vocab is not None:
        raise ValueError(f"--vocab is for a Keras model (.keras or .h5); {args.checkpoint} is an rnnsent checkpoint, "
                         "which holds its own vocabulary")
    from rnnsent.inference.loading import load_checkpoint

    return load_checkpoint(args.checkpoint)


def _read_lines(path: str) -> list[str]:
    """One review per line, every line (a blank one too), so output row i is input line i. Lines end at
    \n or \r\n only: str.splitlines() would also split at U+2028, form feeds and other characters that
    can sit inside a review. UTF-8 (a BOM is dropped) or UTF-16 with its BOM; bytes that do not decode
    are replaced, never fatal, and a NUL byte is kept as any other character. A file of which a quarter or
    more is NUL bytes is UTF-16 or UTF-32 without its BOM: refused, as read it would be nonsense. Named pipes
    and process substitution work."""
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
    if encoding != "utf-16" and 4 * data.count(b"\0") >= len(data) > 0:
        raise ValueError(f"--file {path}: a quarter or more of it is NUL bytes, so it is not UTF-8 text: UTF-16 or "
                         "UTF-32 without a byte-order mark? Convert it to UTF-8, e.g. iconv -f utf-16le -t utf-8")
    text = data.decode(encoding, errors="replace")
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
            shown = "" if f.metadata["help"].endswith("]") else f" [{default}]"  # (a help may say its default)
            p.add_argument(flag, type=_number_type(kind, flag), default=default, help=f.metadata["help"] + shown)
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
        from rnnsent.serve.app import create_app
        from rnnsent.serve.server import run
    except ModuleNotFoundError as e:
        return _fail(f"rnnsent serve needs FastAPI and uvicorn ({e.name} is missing): pip install 'rnnsent[serve]'")
    try:
        import torch

        from rnnsent.inference.loading import load_checkpoint
        from rnnsent.runtime import resolve_device

        torch.set_num_threads(settings.threads)
        loaded = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    except _user_errors() as e:
        return _fail(str(e))
    if run(create_app(loaded, settings), settings):
        return 0
    return _fail(f"could not listen on {settings.host}:{settings.port} (the port is taken, or the address is not "
                 "this machine's: see the line above)", 1)


TUNE_LEAVES_OUT = ("out", "resume", "overwrite")  # train's flags that a search sets per trial


def tune_parser(prog: str = "rnnsent tune") -> argparse.ArgumentParser:
    """`rnnsent tune`'s flags: train's (the settings every trial shares), then the search's own."""
    p = train_parser(prog, leave_out=TUNE_LEAVES_OUT)
    p.description = ("Search hyperparameters with Optuna (pip install 'rnnsent[tune]'; docs/tuning.md): every trial is "
                     "a training run of its own folder in --out, pruned between epochs on the validation metric "
                     "(--monitor); the test split is never read by the search. Train's flags set what every trial "
                     "shares; --space what they vary. The same command again continues the study to --trials.")
    p.add_argument("--out", default=None, help="the search's folder: study.db, trials.csv, the pictures, a run folder "
                                               "per trial and best (the best trial's) [runs/tune-<cell>]")
    p.add_argument("--trials", type=_positive_int, default=20, help="trials in the study in total, over every "
                   "invocation and machine (a trial stopped by Ctrl-C or a lost worker runs again) [20]")
    p.add_argument("--space", default=None, metavar="SPACE",
                   help="what to search: 'lr=1e-4:1e-2:log hidden_size=64,128 dropout=0:0.5 layers=1,2 bidirectional' "
                        "(ranges, log ranges, choices, fixed values, booleans), or a .json/.yaml file of the same "
                        "[the cell's default: docs/tuning.md]")
    p.add_argument("--jobs", type=_positive_int, default=1,
                   help="worker processes on this machine sharing the study, each with cores/jobs threads [1]")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                   help="stop unpromising trials between epochs: median (below the median of earlier trials at the "
                        "same epoch, after 5 trials), halving (successive halving) or none [median]")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="where the study lives: an SQLAlchemy URL (sqlite:///FILE, postgresql://USER@HOST/DB) or "
                        "journal:FILE, shared by searches on several machines [sqlite: --out/study.db]")
    p.add_argument("--study", default=None, metavar="NAME", help="the study's name in --storage [the --out folder's]")
    p.add_argument("--search-seed", type=int, default=0, help="the sampler's seed (TPE) [0]")
    p.add_argument("--heartbeat", type=_positive_int, default=60, metavar="SECONDS",
                   help="seconds between a running trial's heartbeats in an SQL storage; a trial whose worker died is "
                        "marked failed after two missed ones and its settings run again [60]")
    return p


def tune_main(argv: list[str] | None = None, prog: str = "rnnsent tune") -> int:
    """Hyperparameter search (rnnsent.training.tune): one-line errors; exit 130/143 when stopped by a signal."""
    args = tune_parser(prog).parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if args.jobs > cores:
        print(f"warning: --jobs {args.jobs} is more than the {cores} core(s) here: the workers share them, one "
              "thread each, and each trial runs slower", file=sys.stderr)
    try:
        from rnnsent.training.tune.search import tune
        from rnnsent.training.tune.space import parse_space
        from rnnsent.training.tune.study import Tune

        args.out = args.out or str(Path("runs") / f"tune-{canonical_cell(args.cell or TrainConfig.cell)}")
        base = config_from_args(args)
        space = parse_space(args.space, base.cell)
        t = Tune(base, space, args.trials, args.jobs, args.storage, args.study, args.pruner, args.search_seed,
                 args.heartbeat, base.threads or max(1, cores // args.jobs))
        code, _ = tune(t)
    except KeyboardInterrupt:
        return _fail("interrupted by Ctrl-C; the finished trials are kept: run the same command to go on",
                     EXIT_INTERRUPTED)
    except (ImportError, *_user_errors()) as e:
        return _fail(str(e))
    if code >= 128:
        print(f"stopped by {'SIGTERM' if code == 143 else 'Ctrl-C'}: the finished trials are kept in the study, a "
              "stopped trial's settings run again first; run the same command to go on", file=sys.stderr)
    return code
