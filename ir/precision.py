"""Weight precisions: how a weight tensor's values sit in the weights arena.

The arena counts 2-byte units (a bf16 value each). A bf16 weight takes one unit per
value. An FP8 weight (e4m3, weight-only: models/quant.py) takes, per row of K values, K
bytes of e4m3 then the row's scales as float32, one per k-block of `bk` columns (one per
row when bk >= K), padded to 16 bytes: the ring copies whole rows, so a row's scales
arrive with its values in the same stage. A block-wise grid's scale row is repeated in
each of its bn rows (4 bytes per 128 values with 128x128 blocks).
"""

from __future__ import annotations

FP8 = "fp8e4m3"  # the text form's name of the format
ROW_ALIGN_BYTES = 16  # bulk copies move multiples of 16 bytes


def scale_cols(k: int, bk: int) -> int:
    """Scales per row of K values with k-blocks of bk columns."""
    return -(-k // min(bk, k))


def kernel_block(k: int, bk: int) -> int:
    """The k-block width the kernel applies scales over: bk, or K for one scale per row."""
    return min(bk, k)


def fp8_row_bytes(k: int, bk: int) -> int:
    """Bytes of one FP8 row in the arena: K values, its scales, padding to 16 bytes."""
    raw = k + 4 * scale_cols(k, bk)
    return -(-raw // ROW_ALIGN_BYTES) * ROW_ALIGN_BYTES


def row_bytes(k: int, qbk: int = 0) -> int:
    """Bytes of one weight row of K columns: bf16 (qbk 0) or FP8 with k-blocks of qbk."""
    return 2 * k if not qbk else fp8_row_bytes(k, qbk)


def format_block(block: tuple[int, int]) -> str:
    return f"{FP8}={block[0]}x{block[1]}"
