"""The evaluation report's page (rnnsent.inference.report): its figures, drawn by matplotlib's Agg renderer into
inline PNGs, and one self-contained HTML page with no scripts and no links out. Every text on it is escaped."""
from __future__ import annotations

import base64
import html
import io

import numpy as np

from rnnsent.inference.explain import HTML_STYLE, html_section

CURVE_CLASSES = 10  # more classes than this: the curves of the first ten classes that have one


def escape(value) -> str:
    return html.escape(str(value))


def _figure(width: float, height: float, **grid):
    try:
        from matplotlib.figure import Figure  # a Figure of its own: no pyplot, no global backend
    except ImportError:
        raise ImportError("the evaluation report needs scikit-learn and matplotlib: pip install 'rnnsent[report]'"
                          ) from None
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(**grid)


def png(fig, alt: str) -> str:
    """A matplotlib Figure as an inline <img> (base64 PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96)
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}">'


def confusion_figure(confusion: list[list[int]], labels: list[str]) -> str:
    """The confusion matrix as a heat map: each cell's share of its true class, the count written in it."""
    cm = np.asarray(confusion, dtype=np.float64)
    k = len(labels)
    share = np.divide(cm, cm.sum(axis=1, keepdims=True), out=np.zeros_like(cm), where=cm.sum(axis=1, keepdims=True) > 0)
    fig, ax = _figure(max(4.4, min(2.5 + 0.55 * k, 10)), max(3.4, min(2 + 0.5 * k, 9)))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    turn = dict(rotation=45, ha="right") if k > 4 else {}
    ax.set_xticks(range(k), [str(c)[:20] for c in labels], **turn)
    ax.set_yticks(range(k), [str(c)[:20] for c in labels])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 15:
        for t in range(k):
            for p in range(k):
                ax.text(p, t, f"{int(cm[t, p]):,}", ha="center", va="center", fontsize=9,
                        color="white" if share[t, p] > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="share of the true class's rows")
    ax.set_title("Confusion matrix")
    return png(fig, "confusion matrix")


def _curve_classes(s) -> list[int]:
    """The classes a curve is drawn for: the positive class of two, else each class that some rows hold and some
    rows do not (the first CURVE_CLASSES)."""
    if s.positive is not None:
        return [s.positive] if 0 < (s.y == s.positive).sum() < len(s.y) else []
    return [k for k in range(len(s.labels)) if 0 < (s.y == k).sum() < len(s.y)][:CURVE_CLASSES]


def curve_figures(s, m: dict) -> list[str]:
    """The ROC curve and the precision-recall curve: of the positive class (two classes), else one-vs-rest per
    class."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    (roc_fig, roc), (pr_fig, pr) = _figure(4.4, 3.4), _figure(4.4, 3.4)
    drawn = _curve_classes(s)
    for k in drawn:
        hit, score = s.y == k, s.probs[:, k]
        fpr, tpr, _ = roc_curve(hit, score)
        precision, recall, _ = precision_recall_curve(hit, score)
        roc.plot(fpr, tpr, lw=1.5, label=str(s.labels[k])[:24])
        pr.plot(recall, precision, lw=1.5, drawstyle="steps-post",
                label=f"{str(s.labels[k])[:24]} (base rate {hit.mean():.2f})")
    roc.plot([0, 1], [0, 1], color="#999", lw=1, ls="--")
    about = f"{s.labels[s.positive]}" if s.positive is not None else "one-vs-rest"
    auc, ap = m.get("roc_auc"), m.get("average_precision")
    roc.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01),
            title=f"ROC ({about}): AUC {auc:.4f}" if auc is not None else f"ROC ({about}): undefined, one class")
    pr.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Precision-recall ({about}): AP {ap:.4f}" if ap is not None
           else f"Precision-recall ({about}): undefined")
    if drawn:
        roc.legend(fontsize=8, loc="lower right")
        pr.legend(fontsize=8, loc="lower left")
    return [png(roc_fig, "ROC curve"), png(pr_fig, "precision-recall curve")]


def reliability_figure(rel: dict) -> str:
    """The reliability diagram: accuracy against the mean probability of the predicted class in each bin, the
    rows per bin beneath."""
    fig, (top, bottom) = _figure(4.4, 3.4, nrows=2, height_ratios=(3, 1), sharex=True)
    edges = np.asarray(rel["edges"])
    width = np.diff(edges)
    filled = [i for i, c in enumerate(rel["counts"]) if c]
    top.bar(edges[:-1][filled], [rel["accuracy"][i] for i in filled], width=width[filled], align="edge",
            color="#60a5fa", edgecolor="#1e3a8a", label="accuracy in the bin")
    top.plot([rel["confidence"][i] for i in filled], [rel["accuracy"][i] for i in filled], "o", color="#1e3a8a",
             ms=3, label="(mean probability, accuracy)")
    top.plot([0, 1], [0, 1], color="#999", ls="--", lw=1, label="perfectly calibrated")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.01),
            title=f"Reliability: ECE {rel['ece']:.4f} ({len(width)} equal-width bins)")
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(edges[:-1], rel["counts"], width=width, align="edge", color="#cbd5e1", edgecolor="#64748b")
    bottom.set(xlabel="probability of the predicted class", ylabel="rows")
    return png(fig, "reliability diagram")


def distribution_figure(s) -> str:
    """The predicted probabilities per true class: P(positive) for two classes, else P(the true class), each true
    class's rows as shares of that class so that a small class shows."""
    fig, ax = _figure(4.4, 3.4)
    bins = np.linspace(0, 1, 26)
    for k in range(len(s.labels))[:CURVE_CLASSES]:
        rows = s.y == k
        if not rows.any():
            continue
        values = s.probs[rows, s.positive if s.positive is not None else k]
        ax.hist(values, bins=bins, weights=np.full(len(values), 1 / len(values)), histtype="step", lw=1.8,
                label=f"true {str(s.labels[k])[:24]} ({int(rows.sum()):,})")
    if s.positive is not None:
        ax.axvline(s.threshold, color="#111", ls=":", lw=1, label=f"threshold {s.threshold:g}")
        ax.set_xlabel(f"P({s.labels[s.positive]})")
    else:
        ax.set_xlabel("P(the true class)")
    ax.set(ylabel="share of the true class's rows", xlim=(0, 1), title="Predicted probabilities by true class")
    ax.legend(fontsize=8)
    return png(fig, "predicted probabilities by true class")


STYLE = ("body{font:15px/1.5 system-ui,sans-serif;max-width:84em;margin:1.2em auto;padding:0 1em;color:#111}"
         "h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.1em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}"
         ".sub{color:#555;font-size:13px}"
         ".cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(8.5em,1fr));gap:.5em;margin:.8em 0}"
         ".card{border:1px solid #ddd;border-radius:6px;padding:.35em .8em}"
         ".card b{display:block;font-size:1.35em}.card span{color:#555;font-size:12px}"
         "table{border-collapse:collapse;font-size:14px}td,th{padding:.15em .7em;border-bottom:1px solid #eee;"
         "text-align:right}td:first-child,th:first-child{text-align:left}"
         ".figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(26em,1fr));gap:1em;align-items:start}"
         ".figs img{max-width:100%;height:auto}"
         "section{border-bottom:1px solid #ddd;padding:.4em 0}.h{font-size:13px;color:#555;margin:.2em 0}"
         ".t{max-height:12em;overflow:auto;margin:.2em 0}.note{color:#8a4b00}")


def _number(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _headline(m: dict, s) -> str:
    """The numbers that say how good the model is, as cards, and what the binary ones are about."""
    about = f" ({escape(s.labels[s.positive])})" if s.positive is not None else " (one-vs-rest)"
    cards = [("accuracy", m["accuracy"]), ("macro-F1", m["macro_f1"]), ("weighted F1", m["weighted_f1"]),
             ("ROC AUC" + about, m["roc_auc"]), ("average precision" + about, m["average_precision"]),
             ("log loss", m["log_loss"]), ("Brier score", m["brier"]), ("ECE (15 bins)", m["ece"])]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{_number(v)}</b><span>{k}</span></div>'
                                           for k, v in cards) + "</div>"


def _per_class(m: dict, s) -> str:
    predicted = np.bincount(s.pred, minlength=len(s.labels))
    rows = "".join(f"<tr><td>{escape(c)}</td><td>{v['precision']:.4f}</td><td>{v['recall']:.4f}</td>"
                   f"<td>{v['f1']:.4f}</td><td>{v['support']:,}</td><td>{int(predicted[i]):,}</td></tr>"
                   for i, (c, v) in enumerate(m["per_class"].items()))
    return ("<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>rows</th><th>predicted</th>"
            f"</tr>{rows}</table>")


def _confused(confused: list[dict]) -> str:
    if not confused:
        return "<p>No row of one class was predicted as another.</p>"
    rows = "".join(f"<tr><td>{escape(c['true'])}</td><td>{escape(c['predicted'])}</td><td>{c['count']:,}</td>"
                   f"<td>{c['share']:.1%}</td></tr>" for c in confused)
    return ("<table><tr><th>true class</th><th>predicted as</th><th>rows</th><th>share of the true class</th></tr>"
            f"{rows}</table>")


def _worst(s, worst: list, why_not: str | None) -> str:
    """The worst-classified texts: each row's classes, probabilities and loss, then its words (with their
    attributions toward the predicted class where there are some)."""
    parts = [f'<p class="note">{escape(why_not)}</p>'] if why_not else []
    for row, text, explanation in worst:
        true, pred = s.labels[s.y[row]], s.labels[s.pred[row]]
        line = (f"#{row}: true {escape(true)}, predicted {escape(pred)}; P({escape(true)}) "
                f"{s.probs[row, s.y[row]]:.4f}, loss {s.losses[row]:.3f}")
        body = (html_section(explanation) if explanation is not None
                else f'<section><p class="t">{escape(text)}</p></section>')
        parts.append(f'<p class="h"><b>{line}</b></p>{body}')
    return "\n".join(parts)


def page(s, m: dict, rel: dict, confused: list[dict], worst: list, why_not: str | None, name: str, what: str) -> str:
    """The report's HTML: `s` the Scored rows, `m` metrics.json's contents, `rel` the reliability bins, `confused`
    the most confused pairs, `worst` [(row, text, Explanation or None)]."""
    source = m["data"]
    where = {"imdb": f"IMDB's {source.get('split')} split, the run's own (its vocabulary checked)",
             "own": f"the {source.get('split')} split of {source.get('path')} made again as the run made it"
                    + (", checked against the run's record" if source.get("verified") else
                       ", unverified: the checkpoint keeps no record of its split"),
             "file": f"every row of {source.get('path')}"}.get(source.get("kind"), "")
    if source.get("sample"):
        where += f"; a {source['sample']} sample of it"
    binary = (f"Two classes: ROC AUC, average precision and the curves are about the positive class "
              f"<b>{escape(s.labels[s.positive])}</b>; a row is predicted {escape(s.labels[s.positive])} when "
              f"P({escape(s.labels[s.positive])}) &ge; {s.threshold:g}." if s.positive is not None else
              f"{len(s.labels)} classes: the most probable class is predicted; ROC AUC and average precision are "
              "one-vs-rest, averaged over the classes the rows hold.")
    figures = [confusion_figure(m["confusion_matrix"], s.labels), distribution_figure(s), *curve_figures(s, m),
               reliability_figure(rel)]
    title = f"{name} on {what}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
            f"<title>{escape(title)}</title><style>{STYLE}{HTML_STYLE}</style></head><body>\n"
            f"<h1>{escape(title)}</h1>\n"
            f'<p class="sub">{m["n"]:,} rows: {escape(where)}. Classes {escape(", ".join(s.labels))}. {binary}</p>\n'
            + _headline(m, s) + "\n<h2>Per class</h2>\n" + _per_class(m, s)
            + '\n<h2>Where it fails</h2>\n<div class="figs">' + "".join(figures) + "</div>\n"
            + ("<h2>Most confused pairs</h2>\n" + _confused(confused) if len(s.labels) > 2 else "")
            + (f"\n<h2>The {len(worst)} worst-classified texts (highest loss)</h2>\n" + _worst(s, worst, why_not)
               if worst else "")
            + '\n<p class="sub">rnnsent evaluate --report: metrics.json holds these numbers (scikit-learn), '
              "predictions.csv every row.</p>\n</body></html>\n")
