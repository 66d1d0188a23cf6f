"""Word attributions: which words of a text pushed the model toward a class (integrated gradients, or occlusion).

    for e in rnnsent.explain(rnnsent.load_checkpoint("gru"), ["Great film!", "Dull."]):
        print(e.label, e.probability, e.words, e.attributions, e.delta)

What is attributed is the target class's log-odds, log p / (1 - p) (for two classes the model's logit, or its
negative), as a function of the embedded tokens. The baseline is the same text with every word replaced by the
unknown word (id 2), the start token and the padding kept: the model's "a review of this length whose words I do
not know". So an unknown word gets exactly zero, and the attributions of a text's tokens add up to its score
minus the baseline's (completeness); Explanation.delta is what is left over, reported for every text.

Integrated gradients run through Captum (an optional extra: pip install 'rnnsent[explain]') over
SentimentRNN.forward_embedded, which takes embedded vectors on every path the model runs on: the fused CPU
kernel (exact gradients through its own backward), PyTorch's layers, and CUDA (cuDNN's RNN backward refuses
eval mode, so cuDNN is switched off inside the attribution: PyTorch's own CUDA kernels compute the same
function). Token attributions are summed into the words the user typed (whitespace-separated, punctuation
attached); the words cut off in front of max_len are counted in Explanation.cut.
"""
from __future__ import annotations

import contextlib
import copy
import html
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from rnnsent.config import ExplainConfig
from rnnsent.data import encode_bucketed, encode_keras
from rnnsent.data.text import OOV_ID, PAD_ID, START_ID, tokenizer_for
from rnnsent.inference.evaluate import as_texts, class_names, predict

METHODS = ("ig", "occlusion")
DEFAULT_STEPS = ExplainConfig.steps  # and its bounds: ExplainConfig, one rule for every door
# Integration steps per forward/backward pass (Captum's internal batch): memory stays that of 50 steps per text
# however many steps are asked for.
STEPS_PER_PASS = 50
# Warn when the gap exceeds this share of |score - baseline score| (and 0.01 in log-odds, so that a text the
# model scores like its baseline does not warn over rounding).
GAP_WARNING = 0.05
log = logging.getLogger(__name__)


def _captum_attr():
    try:
        from captum import attr
    except ImportError:
        raise ImportError("explanations need Captum: pip install 'rnnsent[explain]'") from None
    return attr


@dataclass(frozen=True)
class Explanation:
    """One text's prediction (predict's fields) and its word attributions toward `target`."""

    text: str
    label: str  # the predicted class
    probability: float  # as Prediction.probability: two classes P(the positive class), more P(the predicted one)
    note: str | None  # as Prediction.note: "empty", "no known words", or None
    words: list[str]  # the words as typed (split at whitespace) that the model read, in order
    unknown: list[bool]  # per word: one of its tokens is outside the vocabulary (its attribution is then ~0)
    attributions: list[float]  # per word: its push toward `target`, in log-odds (positive: toward it)
    tokens: list[str]  # the tokens the model read ("<start>" first unless cut), lower-cased as the model sees them
    token_attributions: list[float]  # per token; the words' values are their sums
    delta: float  # completeness gap: sum of token attributions - (score - baseline_score)
    target: str  # the class attributed toward
    method: str  # "ig" (integrated gradients) or "occlusion" (each word replaced by the baseline, one at a time)
    cut: int  # words at the front that the model did not read (beyond max_len)
    score: float  # the target's log-odds for the text (through forward_embedded)
    baseline_score: float  # ... for the baseline
    steps: int  # integration steps (ig)
    oov_share: float = 0.0  # as Prediction.oov_share
    probabilities: dict | None = None  # as Prediction.probabilities

    @property
    def gap_is_large(self) -> bool:
        return self.method == "ig" and abs(self.delta) > max(GAP_WARNING * abs(self.score - self.baseline_score), 0.01)

    def to_json(self) -> dict:
        """predict --json's keys (probability, label, text, oov_share, note, probabilities), with `words` the list of
        words read, and the attribution fields."""
        return {"probability": self.probability, "label": self.label, "text": self.text, "oov_share": self.oov_share,
                "note": self.note, "probabilities": self.probabilities, "words": self.words, "unknown": self.unknown,
                "attributions": self.attributions, "tokens": self.tokens, "token_attributions": self.token_attributions,
                "delta": self.delta, "target": self.target, "method": self.method, "cut": self.cut,
                "score": self.score, "baseline_score": self.baseline_score, "steps": self.steps}


def align_words(text: str, tokenize) -> tuple[list[str], list[str], list[int]]:
    """(words as typed, tokenize(text), for each token the index of the word it came from).

    Each whitespace-separated word is tokenized on its own and its tokens are matched, in order, against the
    whole text's: a tag split by spaces (<br />), which the whole text drops, matches nothing and gets no
    tokens. Should the two ever disagree otherwise, each token is shown as a word of its own."""
    tokens = tokenize(text)
    words = text.split()
    owner, pos = [], 0
    for w, chunk in enumerate(words):
        for t in tokenize(chunk):
            if pos < len(tokens) and tokens[pos] == t:
                owner.append(w)
                pos += 1
    if pos != len(tokens):
        return list(tokens), tokens, list(range(len(tokens)))
    return words, tokens, owner


def _log_odds(logits: torch.Tensor) -> torch.Tensor:
    """(B,) one logit or (B, K) logits -> (B, K) log-odds of each class, log p_k - log(1 - p_k)."""
    if logits.dim() == 1:
        return torch.stack([-logits, logits], dim=1)  # (B, 2)
    k = logits.size(1)
    others = logits.unsqueeze(1).masked_fill(torch.eye(k, dtype=torch.bool, device=logits.device), float("-inf"))
    return logits - torch.logsumexp(others, dim=2)  # (B, K): z_k - logsumexp_{j != k} z_j


def _gradients_allowed(device: torch.device):
    """cuDNN's RNN backward runs in training mode only; PyTorch's own CUDA RNN has no such rule, same outputs."""
    return torch.backends.cudnn.flags(enabled=False) if device.type == "cuda" else contextlib.nullcontext()


def explain(loaded, texts, *, target: str | None = None, method: str = "ig", steps: int = DEFAULT_STEPS,
            batch_size: int = 8, device=None) -> list[Explanation]:
    """Word attributions for each text (str, or an iterable of str) with a loaded checkpoint (load_checkpoint).

    target: the class to attribute toward, by name; default the positive class for two (the second unless the
    run named another, so that + means "positive" for IMDB), the predicted class for more. method: "ig"
    (integrated gradients, `steps` points, batch_size texts per batched forward/backward pass) or "occlusion"
    (each word replaced by the baseline)."""
    texts = as_texts(texts, "explain")
    _check_options(method, steps, batch_size)
    attr = _captum_attr()
    model, device = _model_on(loaded.model, device)
    names = class_names(model.num_classes, loaded.classes)
    if target is not None and str(target) not in names:
        raise ValueError(f"unknown target {target!r}: the model's classes are {', '.join(names)}")
    predictions = predict(model, texts, loaded.vocab, loaded.max_len, loaded.encoding, device, classes=loaded.classes,
                          **loaded.decision())
    tokenize = tokenizer_for(loaded.vocab.tokenizer)
    aligned = [align_words(t, tokenize) for t in texts]
    ids = [loaded.vocab.encode(tokens) for _, tokens, _ in aligned]
    split = (encode_keras if loaded.encoding == "keras" else encode_bucketed)(ids, [0] * len(ids), loaded.max_len)
    positive = loaded.decision()["positive"]
    targets = [names.index(str(target)) if target is not None else positive if len(names) == 2 else names.index(p.label)
               for p in predictions]

    # What each text's model read: its tokens' words (1, 2, ... over the words kept; 0 for the start token).
    reads = [_read_part(owner, len(ids[i]), int(split.lengths[i])) for i, (_, _, owner) in enumerate(aligned)]
    rows = _attribute_all(attr, model, split, [groups for _, groups in reads], targets, method, steps, batch_size,
                          device)
    out = [_explanation(text, pr, aligned[i], reads[i], ids[i], rows[i], names[targets[i]], method, steps)
           for i, (text, pr) in enumerate(zip(texts, predictions))]
    _warn_large_gaps(out)
    return out


def _check_options(method: str, steps: int, batch_size: int) -> None:
    """Refuse an unknown method, steps outside ExplainConfig's rule, or an empty batch."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    ExplainConfig(steps=steps)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")


def _model_on(model, device) -> tuple:
    """(the model on `device`, the device): a copy when it lives elsewhere; its own device when none is given."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if next(model.parameters()).device != device:
        model = copy.deepcopy(model).to(device)
    return model, device


def _attribute_all(attr, model, split, groups, targets, method, steps, batch_size, device) -> list:
    """_attribute over every text of `split`, batch_size texts at a time, with the model in eval mode meanwhile;
    per text (token attributions, score, baseline score, delta), in the texts' order."""
    was_training = model.training
    model.eval()
    rows = [None] * len(groups)
    try:
        # Texts of similar length together: right-padded batches are as wide as their longest text.
        order = sorted(range(len(groups)), key=lambda i: int(split.lengths[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start: start + batch_size]
            batch_groups = [groups[i] for i in idx]
            for i, row in zip(idx, _attribute(attr, model, split, idx, batch_groups, targets, method, steps, device)):
                rows[i] = row
    finally:
        model.train(was_training)
    return rows


def _explanation(text: str, pr, aligned: tuple, read: tuple, ids: list[int], row: tuple, target: str, method: str,
                 steps: int) -> Explanation:
    """One text's Explanation: its prediction `pr`, and its read tokens' attributions `row` summed into its words."""
    words, tokens, _ = aligned
    cut, groups = read
    token_attr, score, base, delta = row
    kept = words[cut:]
    word_attr, unknown = [0.0] * len(kept), [False] * len(kept)
    read_ids = ([START_ID] + ids)[-len(groups):]
    for a, g, tid in zip(token_attr, groups, read_ids):
        if g:
            word_attr[g - 1] += a
            unknown[g - 1] |= tid == OOV_ID
    return Explanation(
        text=text, label=pr.label, probability=pr.probability, note=pr.note, words=kept, unknown=unknown,
        attributions=word_attr, tokens=(["<start>"] + tokens)[-len(groups):],
        token_attributions=token_attr, delta=delta, target=target, method=method, cut=cut, score=score,
        baseline_score=base, steps=steps, oov_share=pr.oov_share, probabilities=pr.probabilities)


def _warn_large_gaps(out: list[Explanation]) -> None:
    """One warning when integrated gradients miss completeness by much for any text."""
    large = [e for e in out if e.gap_is_large]
    if large:
        worst = max(large, key=lambda e: abs(e.delta))
        log.warning(
            f"rnnsent: integrated gradients miss completeness by more than {GAP_WARNING:.0%} for {len(large)} of "
            f"{len(out)} text(s) (worst gap {worst.delta:+.3f} of {worst.score - worst.baseline_score:+.3f}); "
            "more --steps narrow it"
        )


def _read_part(owner: list[int], n_tokens: int, n_read: int) -> tuple[int, list[int]]:
    """(words cut off in front, the word number 1, 2, ... among the words kept of each token read, 0 for the start
    token). The model reads the last n_read ids of [start] + tokens (Keras' truncating="pre")."""
    first = n_tokens + 1 - n_read  # index into [start] + tokens of the first id read
    if first <= 0:
        return 0, [0] + [w + 1 for w in owner]
    cut = owner[first - 1]  # a word partly read is kept (its read tokens count)
    return cut, [w - cut + 1 for w in owner[first - 1:]]


def _attribute(
    attr, model, split, idx, groups, targets, method, steps, device
) -> list[tuple[list[float], float, float, float]]:
    """Token attributions of the texts `idx` of the encoded `split`: per text (its read tokens' attributions in
    order, score, baseline score, completeness gap). groups: per text, the word number of each read token
    (0: the start token), which occlusion takes away together."""
    tokens = split.tokens[idx]  # (B, L)
    lengths = split.lengths[idx]  # (B,)
    post = split.padding == "post"
    if post:
        tokens = tokens[:, : int(lengths.max())]
    width = tokens.size(1)
    tokens = tokens.to(device)
    lengths_arg = lengths.to(device) if post else None
    baseline_ids = tokens.masked_fill((tokens != PAD_ID) & (tokens != START_ID), OOV_ID)
    target = torch.tensor([targets[i] for i in idx], device=device)

    def forward(x, lengths=None):
        return _log_odds(model.forward_embedded(x, lengths))  # (B, K)

    def columns(n: int) -> slice:  # where a row's n real tokens are
        return slice(0, n) if post else slice(width - n, width)

    with _gradients_allowed(device):
        with torch.no_grad():
            x, baseline = model.embedding(tokens), model.embedding(baseline_ids)  # (B, T, E) each
            both = forward(torch.cat([x, baseline]), None if lengths_arg is None else torch.cat([lengths_arg] * 2))
            score, base = both.gather(1, torch.cat([target, target]).view(-1, 1)).view(2, -1)  # (B,), (B,)
        if method == "ig":
            a, delta = attr.IntegratedGradients(forward).attribute(
                x, baselines=baseline, target=target, additional_forward_args=(lengths_arg,), n_steps=steps,
                internal_batch_size=len(idx) * min(steps, STEPS_PER_PASS), return_convergence_delta=True)
            per_token = a.sum(-1).cpu()  # (B, T)
        else:
            mask = torch.zeros(len(idx), width, dtype=torch.long)  # (B, T): a word's tokens share its number
            for r, g in enumerate(groups):
                mask[r, columns(len(g))] = torch.tensor(g)
            a = attr.FeatureAblation(forward).attribute(
                x, baselines=baseline, target=target, additional_forward_args=(lengths_arg,),
                feature_mask=mask.to(device).unsqueeze(-1), perturbations_per_eval=max(1, 256 // len(idx)))
            # Each element of a word's group carries the word's whole value: keep it on the word's first token.
            first = torch.ones_like(mask, dtype=torch.bool)
            first[:, 1:] = mask[:, 1:] != mask[:, :-1]
            per_token = torch.where((mask > 0) & first, a[..., 0].cpu(), 0.0)  # (B, T)
            delta = per_token.sum(1) - (score - base).cpu()
    out = []
    for r, n in enumerate(lengths.tolist()):
        out.append((per_token[r, columns(n)].tolist(), float(score[r]), float(base[r]), float(delta[r])))
    return out


# -- showing explanations ------------------------------------------------------------------------------------
def _header(e: Explanation) -> str:
    gap = f"{e.delta:+.4f}".replace("-0.0000", "+0.0000")  # a gap of -1e-7 reads as none
    line = f"{e.probability:.4f}  {e.label}  (attributions toward {e.target}, {e.method}; completeness gap {gap})"
    notes = ([e.note] if e.note else []) + ([f"{e.cut} words in front not read: beyond max_len"] if e.cut else [])
    return line + "".join(f"  [{n}]" for n in notes)


def use_colour(stream) -> bool:
    """Colours only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


def format_text(e: Explanation, colour: bool = False) -> str:
    """Two lines: the prediction, then the words. Plain: word(+0.31) for each word, word(unknown) for one the model
    does not know. Coloured (ANSI): green pulls toward the target, red away, bold the strongest; numbers left out."""
    if not colour:
        shown = [f"{w}(unknown)" if u else f"{w}({a:+.2f})" for w, a, u in zip(e.words, e.attributions, e.unknown)]
        return _header(e) + "\n" + " ".join(shown)
    top = max((abs(a) for a in e.attributions), default=0.0) or 1.0
    shown = []
    for w, a, u in zip(e.words, e.attributions, e.unknown):
        strength = abs(a) / top
        if u:
            code = "2;4"  # dim, underlined: unknown
        elif strength < 0.1:
            code = ""
        else:
            code = ("1;" if strength >= 0.5 else "") + ("32" if a > 0 else "31")
        shown.append(f"\033[{code}m{w}\033[0m" if code else w)
    return _header(e) + "\n" + " ".join(shown)


# The look of an explanation's words on a page (to_html's, and the evaluation report's worst texts).
HTML_STYLE = (".t span{border-radius:3px;padding:0 2px}.u{color:#888;text-decoration:underline dotted}"
              ".cut{color:#888;font-style:italic}")


def html_section(e: Explanation) -> str:
    """One explanation as a <section>: its header line, then its words shaded green (toward the target) or red
    (away), the value on hover. Every text shown is escaped."""
    esc = html.escape
    top = max((abs(a) for a in e.attributions), default=0.0) or 1.0
    words = []
    for w, a, u in zip(e.words, e.attributions, e.unknown):
        if u:
            words.append(f'<span class="u" title="unknown word">{esc(w)}</span>')
            continue
        rgb = "22,163,74" if a > 0 else "220,38,38"
        words.append(f'<span style="background:rgba({rgb},{abs(a) / top * 0.85:.2f})" title="{a:+.3f}">{esc(w)}</span>')
    cut = f'<span class="cut">[{e.cut} words not read] </span>' if e.cut else ""
    return f'<section><p class="h">{esc(_header(e))}</p><p class="t">{cut}{" ".join(words)}</p></section>'


def to_html(explanations: Iterable[Explanation], title: str = "rnnsent explain") -> str:
    """One self-contained page (no scripts, fonts or links): each text with its words shaded green (toward the
    target) or red (away), the value on hover. Every text shown is escaped."""
    esc = html.escape
    parts = [html_section(e) for e in explanations]
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title><style>'
            "body{font:16px/1.6 system-ui,sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em;color:#111}"
            "section{border-bottom:1px solid #ddd;padding:.4em 0}.h{font-size:13px;color:#555;margin:.2em 0}"
            + HTML_STYLE + ".k{font-size:13px;color:#555}"
            "</style></head><body>\n"
            f'<p class="k">{esc(title)}: <span style="background:rgba(22,163,74,.6)">toward the target</span> '
            '<span style="background:rgba(220,38,38,.6)">away from it</span> '
            '<span class="u">unknown word</span>; hover a word for its value (log-odds).</p>\n'
            + "\n".join(parts) + "\n</body></html>\n")
