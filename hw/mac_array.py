"""The MAC array: K x T int8 multipliers into T wrapping int32 accumulators."""

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, flipped

from .component import ArrayComponent
from .multiplier import Multiplier
from .queue import Queue

__all__ = ["MACArray", "SUMS_QUEUE_DEPTH", "TOKENS_PER_WEIGHT_COPY", "WEIGHT_COPY_PREFIX"]

#: Rows of sums a registered array (``ArrayConfig.registered``) holds for a slow ``sums`` sink.
SUMS_QUEUE_DEPTH = 16
#: Token lanes that share a copy of a weight in a registered array.
TOKENS_PER_WEIGHT_COPY = 4
#: The name of each weight copy begins with this (bitstreams/build.py keeps them apart).
WEIGHT_COPY_PREFIX = "weight_copy"


class MACArray(ArrayComponent):
    """Multiplies K weights by their T activations each and accumulates one row per token.

    Three pipeline stages: the K x T products (registered, so block RAM output, multiplier and
    adders are not one long path), the T K-input adder trees, then the T accumulators; with
    ``ArrayConfig.registered`` three more: a fanout stage (the operands registered, each weight
    copied near its multipliers), the operand registers of a
    :class:`~sparsemac.hw.multiplier.Multiplier` per product (in an ECP5 DSP block), and a
    register of each product in the logic, between the DSP block and its adder tree. On the
    last beat of a row the accumulator's total goes straight to ``sums`` and the accumulator
    restarts from the next beat, so consecutive rows cost no bubble.
    The accumulators are 32 bits and wrap on overflow, exactly as
    :func:`sparsemac.sw.golden.golden_matmul` does.

    Contract
    --------
    Every ``operands`` beat contributes ``sum_k weights[k] * activations[k][t]`` to token ``t``
    of the current row; the beat with ``row_last`` set closes the row, whose sums are valid on
    ``sums`` three cycles after the beat was accepted (six with ``registered``). The whole
    pipeline holds while ``sums`` is full and not ready, so back-pressure loses nothing.

    With ``registered`` the pipeline never holds, so no enable fans out from ``sums.ready`` to
    every register and multiplier: the sums enter a queue of :data:`SUMS_QUEUE_DEPTH` rows
    (first word through, so they leave as early as without it), and ``operands.ready`` is a
    register, low while the queue lacks room for every row that may still be in flight. With
    ``sums`` always ready it never goes low, so back-pressure loses nothing and costs no cycle
    that a stall would not.

    With ``span_rows`` each token's reduction is segmented at the beat's ``split``: two masked
    adder trees sum the lanes below it (the "low" partial) and from it on (the "high" one). A
    ``row_last`` beat sends ``accumulator + low`` and restarts the accumulator at ``high``, the
    start of the next row; any other beat adds all its lanes, as without ``span_rows``.

    In a dual-sparse array every multiplier has a weight of its own: token ``t`` of lane ``k``
    multiplies ``weights[k][t]`` (``formats.array_operands``) instead of the lane's one weight.

    Attributes
    ----------
    operands : In(stream.Signature(formats.array_operands))
    sums : Out(stream.Signature(formats.sums))
    """

    def members(self, formats):
        return {
            "operands": In(stream.Signature(formats.array_operands)),
            "sums": Out(stream.Signature(formats.sums)),
        }

    def elaborate(self, platform):
        m = Module()
        lanes, token_lanes = self._config.lanes, self._config.token_lanes
        operands = self.operands.payload
        sum_width = self._config.SUM_WIDTH

        if self._config.registered:
            advance = Const(1)
            sums_queue = self._sums_queue(m)
        else:
            advance = ~self.sums.valid | self.sums.ready
            m.d.comb += self.operands.ready.eq(advance)

        # Stage 1: products. Stage 2: adder trees; a K-term sum of int8 x int8 products fits in
        # 16 + ceil(log2 K) bits. Stage 3: accumulators.
        product_shape = signed(2 * self._config.VALUE_WIDTH)
        products = [[Signal(product_shape, name=f"product{lane}_{token}")
                     for token in range(token_lanes)] for lane in range(lanes)]
        product_valid = Signal()
        product_last = Signal()
        partial_shape = signed(2 * self._config.VALUE_WIDTH + max(lanes - 1, 1).bit_length())
        # A registered array's data registers have no reset (the valid bits say what they hold):
        # a reset reaching every one of them is a long wire in a large array.
        data_reset_less = bool(self._config.registered)
        partials = [Signal(partial_shape, name=f"partial{token}", reset_less=data_reset_less)
                    for token in range(token_lanes)]
        partial_valid = Signal()
        partial_last = Signal()
        accumulators = [Signal(signed(sum_width), name=f"accumulator{token}")
                        for token in range(token_lanes)]
        span = self._config.span_rows
        if span:
            # The lanes of a row_last beat from split on begin the next row: their sum (the
            # "high" partial) restarts the accumulator instead of 0. Beats that close no row
            # count as split K, so every lane is then low.
            product_split = Signal(range(lanes + 1))
            highs = [Signal(partial_shape, name=f"high{token}", reset_less=data_reset_less)
                     for token in range(token_lanes)]

        if self._config.registered:
            operand_valid, operand_last, operand_split = self._registered_front(m, products)
        else:
            operand_valid, operand_last = self.operands.valid, operands.row_last
            if span:
                operand_split = Mux(operands.row_last, operands.split, lanes)

        with m.If(advance):
            m.d.sync += [
                product_valid.eq(operand_valid),
                product_last.eq(operand_last),
                partial_valid.eq(product_valid),
                partial_last.eq(product_last),
            ]
            if not self._config.registered:
                m.d.sync += self.sums.valid.eq(partial_valid & partial_last)
            if span:
                m.d.sync += product_split.eq(operand_split)
            for token in range(token_lanes):
                for lane in range(lanes):
                    if not self._config.registered:
                        m.d.sync += products[lane][token].eq(
                            self._weight(lane, token) * operands.activations[lane][token])
                terms = [products[lane][token] for lane in range(lanes)]
                restart = 0
                tree_sums = []
                if span:
                    low = [Mux(lane < product_split, term, 0) for lane, term in enumerate(terms)]
                    high = [Mux(lane < product_split, 0, term) for lane, term in enumerate(terms)]
                    terms, restart = low, highs[token]
                    tree_sums.append(restart.eq(_adder_tree(high)))
                tree_sums.append(partials[token].eq(_adder_tree(terms)))
                if self._config.registered:
                    # The adder trees' registers load valid products only. (Without an enable
                    # there, Yosys' ABC9 fails on some registered arrays, T = 3 among them.)
                    with m.If(product_valid):
                        m.d.sync += tree_sums
                else:
                    m.d.sync += tree_sums
                total = (accumulators[token] + partials[token])[:sum_width].as_signed()
                if self._config.registered:
                    m.d.comb += sums_queue.i_stream.payload[token].eq(total)
                with m.If(partial_valid & partial_last):
                    if not self._config.registered:
                        m.d.sync += self.sums.payload[token].eq(total)
                    m.d.sync += accumulators[token].eq(restart)
                with m.Elif(partial_valid):
                    m.d.sync += accumulators[token].eq(total)

        if self._config.registered:
            m.d.comb += sums_queue.i_stream.valid.eq(partial_valid & partial_last)
        return m

    def _sums_queue(self, m):
        """The queue of a registered array's sums, joined to ``sums``, and ``operands.ready``
        as a register from its level."""
        m.submodules.sums_queue = sums_queue = Queue(self._formats.sums, SUMS_QUEUE_DEPTH)
        wiring.connect(m, sums_queue.o_stream, flipped(self.sums))
        # ready is set from the level of the cycle before; a beat accepted now is counted in the
        # level six cycles later (fanout, operand, product, landed product and partial stages,
        # then the write), so the beats accepted in the six cycles before this one and in this
        # one (seven rows at most) are not yet counted: ready needs room for seven.
        ready = Signal(init=1)
        m.d.sync += ready.eq(sums_queue.level <= SUMS_QUEUE_DEPTH - 7)
        m.d.comb += self.operands.ready.eq(ready)
        return sums_queue

    def _weight(self, lane, token):
        """The weight lane ``lane`` of an ``operands`` beat gives the multiplier of ``token``."""
        weight = self.operands.payload.weights[lane]
        return weight[token] if self._config.dual_sparse else weight

    def _registered_front(self, m, products):
        """With ``registered``: a fanout stage, then a
        :class:`~sparsemac.hw.multiplier.Multiplier` per product, which registers its operands
        and the product, then a register of each product in the logic. Returns the valid,
        ``row_last`` and ``split`` of the beat in the multipliers' product registers.

        The fanout stage registers every activation, and each weight once per
        :data:`TOKENS_PER_WEIGHT_COPY` token lanes, so that a copy sits near its multipliers:
        one weight register driving all T multipliers of its lane across the device is the
        longest wire of a large array. The copies are named ``weight_copy…``, which the board
        build keeps apart (Yosys would merge identical registers otherwise). The products'
        registers in the logic cut the wire from each DSP block to its token's adder tree,
        whose K multipliers may sit far apart in the DSP rows.
        """
        lanes, token_lanes = self._config.lanes, self._config.token_lanes
        beat = self.operands.payload
        weights, activations = {}, {}
        for lane in range(lanes):
            for token in range(token_lanes):
                copy = token if self._config.dual_sparse else token // TOKENS_PER_WEIGHT_COPY
                if (lane, copy) not in weights:
                    weights[lane, copy] = Signal.like(self._weight(lane, token),
                                                      name=f"{WEIGHT_COPY_PREFIX}{lane}_{copy}",
                                                      reset_less=True)
                    m.d.sync += weights[lane, copy].eq(self._weight(lane, token))
                activations[lane, token] = Signal.like(beat.activations[lane][token],
                                                       name=f"activation{lane}_{token}",
                                                       reset_less=True)
                m.d.sync += activations[lane, token].eq(beat.activations[lane][token])
                m.submodules[f"multiplier{lane}_{token}"] = multiplier = Multiplier(
                    self._config.VALUE_WIDTH)
                landed = Signal.like(multiplier.product, name=f"landed{lane}_{token}",
                                     reset_less=True)
                m.d.comb += [multiplier.a.eq(weights[lane, copy]),
                             multiplier.b.eq(activations[lane, token]),
                             multiplier.enable.eq(1),
                             products[lane][token].eq(landed)]
                m.d.sync += landed.eq(multiplier.product)
        # The beat's valid, row_last and split wait in the stages before the landed products.
        valid, last, split = self.operands.valid & self.operands.ready, beat.row_last, None
        if self._config.span_rows:
            split = Mux(beat.row_last, beat.split, lanes)
        for stage in ("fanout", "operand", "multiplier"):
            valid, last = _register(m, valid, f"{stage}_valid"), _register(m, last, f"{stage}_last")
            if split is not None:
                split = _register(m, split, f"{stage}_split")
        return valid, last, split


def _register(m, value, name):
    """``value`` a cycle later."""
    register = Signal.like(value, name=name)
    m.d.sync += register.eq(value)
    return register


def _adder_tree(terms):
    """Sum ``terms`` pairwise, so the depth is ceil(log2 n) adders rather than n - 1."""
    while len(terms) > 1:
        pairs = [terms[i] + terms[i + 1] for i in range(0, len(terms) - 1, 2)]
        terms = pairs + terms[len(terms) - len(terms) % 2:]
    return terms[0]
