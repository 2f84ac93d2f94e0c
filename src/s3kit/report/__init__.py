"""Model cards and the comparison report (HTML + Markdown) built from a run directory.

A run directory holds one card per model, ``RUN/models/<name>/card.json``::

    {"name": str, "description": str, "source": str,           # how the model was made
     "efficiency": {"params", "macs_per_second", "latency_ms", "rtf", ...},
     "probe": {task: {"metric": "accuracy"|"per", "score": float, "n": int, "ci_low": float,
                      "ci_high": float, "updates_to_best": int, "layer_weights": [float, ...]}},
     "bias": {category: {"d", "p", "ci_low", "ci_high", "magnitude", "per_layer": [d, ...],
                         "vs_reference": {"reference", "diff", "ci_low", "ci_high", "p"}}},  # d minus the reference's
     "isotropy": float, "tsne": "relative/path.png"}

Every key but ``name`` is optional: the report shows what the run measured. Per-item test
predictions of a probe go next to the card, ``RUN/models/<name>/predictions/<task>.jsonl.gz``
(:func:`s3kit.eval.probe.write_predictions`; rows may carry a ``seed``, and of several seeds the
lowest is compared); where the reference model (``teacher`` by default)
and another model both have them, the report adds a paired comparison table (difference, its
interval, Holm-adjusted p, ``n.s.`` where not significant). ``build_report`` writes
``RUN/report/index.html``, ``RUN/report/index.md`` and ``RUN/report/plots/*.png``.
"""

from s3kit.report.build import build_report, load_cards

__all__ = ["build_report", "load_cards"]
