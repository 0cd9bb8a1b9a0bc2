"""Environment models: what a valid host sends to the core's CSR streams, as assumptions."""

from amaranth.hdl import Array, Assume, Signal

from ...hw.formats import Mode
from .harness import transfer

__all__ = ["JobBounds", "CSRSource"]


class JobBounds:
    """The job sizes a proof covers, and the assumption that a job is within them and valid.

    Parameters
    ----------
    rows, token_blocks, nnz : int
        The most rows, token blocks and weights per pass of a job.
    cols : int
        The most input features.
    """

    def __init__(self, *, rows, cols, token_blocks, nnz):
        self.rows, self.cols, self.token_blocks, self.nnz = rows, cols, token_blocks, nnz

    def holds(self, job):
        """High when ``job`` (a ``formats.job`` view) is a valid job within the bounds."""
        dense = job.mode == Mode.DENSE
        rows = job.rows[:self.rows.bit_length()]
        cols = job.cols[:self.cols.bit_length()]
        return ((job.rows >= 1) & (job.rows <= self.rows)
                & (job.cols >= 1) & (job.cols <= self.cols)
                & (job.token_blocks >= 1) & (job.token_blocks <= self.token_blocks)
                & (job.nnz <= self.nnz)
                & (~dense | (job.nnz == rows * cols)))


class CSRSource:
    """Assumes the row pointer, column and value streams carry exactly the job in ``job``.

    Per token block: (sparse only) ``rows`` row end pointers, monotone, at most ``nnz``, the
    last equal to ``nnz``; ``ceil(nnz / K)`` value words and (sparse only) as many column words.
    Nothing is offered outside a job. With ``tagged``, pair ``p`` of a pass has value ``p + 1``
    and column ``p`` (the blocks only move weights, so tags lose no generality and let the
    checker name each pair); otherwise values and columns are 0, which takes the multipliers
    out of control proofs.

    Attributes
    ----------
    ends : Array of Array of Signal
        ``ends[pass % 2][row]``: the row end pointers received, by pass parity.
    pending : dict of str to Value
        Per stream, high while the job still has beats to send on it.
    """

    def __init__(self, m, harness, job, active, accepted, bounds, *, tagged):
        lanes = harness.config.lanes
        sparse = job.mode == Mode.SPARSE
        rows_pointers, columns, values = harness.row_pointers, harness.columns, harness.values

        pointer_row = Signal(range(bounds.rows))
        pointer_pass = Signal(range(bounds.token_blocks + 1))
        previous_end = Signal.like(job.nnz)
        self.ends = Array(Array(Signal.like(job.nnz, name=f"end{parity}_{row}")
                                for row in range(bounds.rows)) for parity in range(2))
        pointer = rows_pointers.payload
        pointers_pending = active & sparse & (pointer_pass < job.token_blocks)
        m.d.comb += Assume(~rows_pointers.valid | (
            pointers_pending & (pointer >= previous_end) & (pointer <= job.nnz)
            & ((pointer_row != job.rows - 1) | (pointer == job.nnz))))
        with m.If(transfer(rows_pointers)):
            m.d.sync += self.ends[pointer_pass[0]][pointer_row].eq(pointer)
            with m.If(pointer_row == job.rows - 1):
                m.d.sync += [pointer_row.eq(0), previous_end.eq(0),
                             pointer_pass.eq(pointer_pass + 1)]
            with m.Else():
                m.d.sync += [pointer_row.eq(pointer_row + 1), previous_end.eq(pointer)]

        word_pair = Signal(range(bounds.nnz + lanes + 1))
        word_pass = Signal(range(bounds.token_blocks + 1))
        words_pending = active & (word_pass < job.token_blocks) & (job.nnz != 0)
        for lane in range(lanes):
            pair = word_pair + lane
            value = pair + 1 if tagged else 0
            column = pair if tagged else 0
            m.d.comb += [
                Assume(~values.valid | words_pending & (
                    (pair >= job.nnz) | (values.payload[lane] == value))),
                Assume(~columns.valid | words_pending & sparse & (
                    (pair >= job.nnz) | (columns.payload[lane] == column))),
            ]
        with m.If(transfer(values)):
            with m.If(word_pair + lanes >= job.nnz):
                m.d.sync += [word_pair.eq(0), word_pass.eq(word_pass + 1)]
            with m.Else():
                m.d.sync += word_pair.eq(word_pair + lanes)

        with m.If(accepted):
            m.d.sync += [pointer_row.eq(0), pointer_pass.eq(0), previous_end.eq(0),
                         word_pair.eq(0), word_pass.eq(0)]
        self.pending = {"row_pointers": pointers_pending, "values": words_pending,
                        "columns": words_pending & sparse}
