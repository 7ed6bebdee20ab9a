"""The paper's Tables I-III, defined once: every row, its figure as printed, and for Table III the
model switches ``vpnext flops`` counts it with.

``vpnext report`` lays out its tables from these rows and prints the figures beside ours;
``vpnext flops --table3`` counts each Table III row with its switches. A row's ``key`` is
``(order, method, column)``: ``order`` sorts the rows as the paper does, ``method`` and ``column``
are its first two cells. All figures are Pascal Context 59, ViT-L/16, 480x480, single scale.

Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PaperRow", "TABLE1", "TABLE2", "TABLE3", "paper_figures"]

RowKey = tuple[tuple[int, int], str, str]


@dataclass(frozen=True)
class PaperRow:
    """One row of a table of the paper.

    Attributes:
        order: Sort key within the table.
        method: The first cell (``"Our VCR"``).
        column: The second cell (number of layers, HiCLR layers, or the pyramid mark).
        figure: The paper's figure as printed (mIoU for Tables I-II, GFLOPs for Table III).
        name: Table III only: the row's name in ``vpnext flops`` output.
        title: Table III only: the row's title in ``vpnext flops --table3``.
        switches: Table III only: the ``--model.*`` switches of the row.
    """

    order: tuple[int, int]
    method: str
    column: str
    figure: str
    name: str = ""
    title: str = ""
    switches: tuple[str, ...] = ()

    @property
    def key(self) -> RowKey:
        return self.order, self.method, self.column

    @property
    def gmacs(self) -> float | None:
        """The figure as a number (``None`` for ``"> 2000"``)."""
        try:
            return float(self.figure)
        except ValueError:
            return None


#: Table I: auxiliary supervision of intermediate layers (no pyramid upsampler); mIoU.
TABLE1 = (
    PaperRow((0, 2), "Deep supervision", "2", "66.50"),
    PaperRow((1, 0), "Mask decoder w/o pyramid", "2 (implicit)", "67.88"),  # Segmenter's 2 blocks
    PaperRow((2, 1), "Our VCR", "1", "68.43"),
    PaperRow((2, 2), "Our VCR", "2", "68.83"),
    PaperRow((2, 3), "Our VCR", "3", "68.56"),
)
#: Table II: the upsampler after VCR with 2 layers; mIoU.
TABLE2 = (
    PaperRow((0, 0), "Bilinear", "0", "68.83"),
    PaperRow((1, 2), "Mock pyramid", "2", "69.01"),
    *(
        PaperRow((2, t), "Our real pyramid", str(t), v)
        for t, v in zip(range(1, 6), ("69.50", "69.87", "70.00", "69.81", "69.43"), strict=True)
    ),
)
#: Table III: inference cost; GFLOPs as printed (which count multiply-accumulates: docs/model.md).
TABLE3 = (
    PaperRow(
        order=(0, 0),
        method="Deep supervision",
        column="-",
        figure="356.69",
        name="deep_supervision",
        title="Deep supervision",
        switches=("--model.aux=deep_supervision", "--model.head=context", "--model.upsampler=bilinear"),
    ),
    PaperRow(
        order=(1, 0),
        method="Mask decoder",
        column="-",
        figure="359.99",
        name="mask_decoder",
        title="Mask decoder w/o pyramid (Segmenter)",
        switches=("--model.aux=none", "--model.head=mask_transformer", "--model.upsampler=bilinear"),
    ),
    PaperRow(  # Mask2Former-based (ViT-Adapter, PlainSeg); ours: Mask2Former on ViTDet's pyramid
        order=(1, 1),
        method="Mask decoder",
        column="√",
        figure="> 2000",
        name="mask_decoder_pyramid",
        title="Mask decoder with pyramid (Mask2Former)",
        switches=("--model.aux=none", "--model.head=mask2former", "--model.upsampler=bilinear"),
    ),
    PaperRow(
        order=(2, 0),
        method="Our VPNeXt",
        column="-",
        figure="356.69",
        name="vcr",
        title="VCR",
        switches=("--model.aux=vcr", "--model.head=context", "--model.upsampler=bilinear"),
    ),
    PaperRow(
        order=(2, 1),
        method="Our VPNeXt",
        column="√",
        figure="1007.62",
        name="vpnext",
        title="VPNeXt (VCR + ViTUp, HiCLR 3)",
        switches=(
            "--model.aux=vcr",
            "--model.head=context",
            "--model.upsampler=hiclr",
            "--model.hiclr_depth=3",
        ),
    ),
)


def paper_figures(*tables: tuple[PaperRow, ...]) -> dict[tuple[str, str], str]:
    """``{(method, column): figure}`` of the rows of ``tables``."""
    return {(row.method, row.column): row.figure for table in tables for row in table}
