"""A test Document with everything a report holds: nested sections, a sortable table of numbers, missing
values, text and flags, a wide table, two matplotlib figures (PNG and SVG), notes and details."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fairfm.report.document import (  # noqa: E402
    Cell, DetailsBlock, Document, FigureBlock, NoteBlock, Section, TableBlock, TextBlock, data_uri,
)  # fmt: skip

HOSTILE_TITLE = 'Fairness <script>window.__pwned = 1</script> & "quotes"'
# The leaderboard's AUC column (index 3): numbers (0.85 before 0.9, which a text sort gets wrong), missing
# values (None, NaN, a Cell "–"), ties.
AUC_VALUES = [0.85, None, 0.774, 0.9, float("nan"), 0.774, 0.655, 1.0]
MODELS = ["biomedclip", "dinov2", "rad-dino", "medsam", "clip", "ours", "resnet50", "oracle"]


def _figure_uri(kind: str, fmt: str) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    if kind == "line":
        ax.plot([0, 0.2, 0.5, 1], [0, 0.6, 0.85, 1], label="female")
        ax.plot([0, 0.3, 0.6, 1], [0, 0.5, 0.8, 1], label="male")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend()
    else:
        colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a"]
        ax.bar(["F", "M", "young", "old"], [0.02, -0.03, 0.01, -0.015], color=colours)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_ylabel("group AUC − population AUC")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, bbox_inches="tight")
    plt.close(fig)
    return data_uri(buffer.getvalue(), "image/png" if fmt == "png" else "image/svg+xml")


def leaderboard() -> TableBlock:
    rows = []
    for model, auc in zip(MODELS, AUC_VALUES):
        aware = model in ("ours", "oracle")
        method = "erm"
        if aware:
            method = Cell("fairlora", flag="attribute-aware", title="needs the attribute at test time")
        known = auc is not None and auc == auc
        worst = Cell(f"{auc - 0.05:.3f} ± 0.010", sort_value=auc - 0.05) if known else None
        rows.append([model, "linear_probe", method, auc, worst, len(model)])
    rows[3][3] = Cell("–")  # a missing value given as text
    return TableBlock(["model", "usage", "method", "AUC", "worst-group AUC", "seeds"], rows,
                      caption="Leaderboard: AUC on the test split (mean over seeds)", id="leaderboard",
                      notes=["attribute-aware methods see the sensitive attribute at test time"])  # fmt: skip


def expected_auc_order(descending: bool) -> list[str]:
    """The AUC column's texts sorted by value, missing values last (the oracle for the browser sort)."""
    table = leaderboard()
    cells = [row[3] for row in table.cells()]
    present = [c for c in cells if c.sort_key is not None]
    missing = [c for c in cells if c.sort_key is None]
    ordered = sorted(present, key=lambda c: c.sort_key, reverse=descending)
    return [c.text for c in ordered] + [c.text for c in missing]


def wide_table() -> TableBlock:
    columns = ["run"] + [f"metric number {i}" for i in range(14)]
    rows = [[f"run-{r}-" + "x" * 12] + [0.1 * i + r for i in range(14)] for r in range(3)]
    return TableBlock(columns, rows, caption="A wide table (scrolls inside its frame on a phone)", id="wide")


def make_document() -> Document:
    overview = Section("overview", "Overview", [
        TextBlock("This report compares eight models.\n\n"
                  "A second paragraph with a URL as text: https://example.org/x"),
        NoteBlock("Thresholds of run ours were chosen on test labels: its thresholded metrics are "
                  "optimistic.", kind="warning"),
        leaderboard(),
    ], intro="What a reader sees first.", subsections=[
        Section("tradeoff", "Utility–fairness trade-off", [
            FigureBlock(_figure_uri("line", "png"), alt="ROC curves of female and male patients",
                        caption="Per-group ROC curves", id="roc"),
        ]),
        Section("groups", "Per-group relative performance", [
            FigureBlock(_figure_uri("bars", "svg"), alt="Bars of group AUC minus population AUC", id="bars"),
            NoteBlock("Groups with fewer than 30 samples are left out."),
        ], subsections=[Section("groups-detail", "Detail by attribute", [wide_table()])]),
    ])
    provenance = Section("provenance", "Provenance", [
        DetailsBlock("Specs and checksums", [
            TextBlock("sha256 of the split file: " + "ab12" * 16),
            TableBlock(["run", "spec hash"], [["ours-0", "f00d" * 8], ["clip-1", "beef" * 8]],
                       sortable=False),
        ]),
    ])
    return Document(HOSTILE_TITLE, [overview, provenance], subtitle="Test report <b>not bold</b>",
                    generated="generated 2026-12-08 by fairfm 0.0 (test)",
                    provenance=["code: fairfm 0.0+g30609aa", "data: synthetic"])  # fmt: skip


SECTION_IDS = ["overview", "tradeoff", "groups", "groups-detail", "provenance"]
