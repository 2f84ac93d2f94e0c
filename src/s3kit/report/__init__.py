"""Model cards and the comparison report (HTML + Markdown) built from a run directory.

A run directory holds one card per model, ``RUN/models/<name>/card.json``::

    {"name": str, "description": str, "source": str,           # how the model was made
     "efficiency": {"params", "macs_per_second", "latency_ms", "rtf", ...},
     "probe": {task: {"metric": "accuracy"|"per", "score": float, "updates_to_best": int,
                      "layer_weights": [float, ...]}},
     "bias": {category: {"d", "p", "ci_low", "ci_high", "magnitude", "per_layer": [d, ...]}},
     "isotropy": float, "tsne": "relative/path.png"}

Every key but ``name`` is optional: the report shows what the run measured. ``build_report``
writes ``RUN/report/index.html``, ``RUN/report/index.md`` and ``RUN/report/plots/*.png``.
"""

from s3kit.report.build import build_report, load_cards

__all__ = ["build_report", "load_cards"]
