// The C++ side of the `verilator` back end: runs whole jobs on the Verilated sparse MAC core.
//
// Python (devices/verilator.py) compiles this file together with the Verilated core into one
// shared library and calls the extern "C" functions below through ctypes, once per job: every
// clock cycle is simulated here, none in Python. Every output is always ready; an input is valid
// whenever data remains and, for a stream given a credit rate, its byte bucket holds a whole beat
// (the credit scheme of sparsemac.sw.memory), so the core's cycle counter must equal the host's
// cycle model (sparsemac.sw.throttled_cycle_model).
//
// Beats cross the boundary as the little-endian bytes of the payload bit vector, as packed by
// sparsemac.sw.packing; they are copied into Verilator's port words (32-bit little-endian words
// for ports wider than 64 bits, plain integers otherwise) only when a beat changes.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "Vsparsemac_core.h"
#include "verilated.h"
#ifdef SPARSEMAC_TRACE
#include "verilated_fst_c.h"
#endif

// Verilator escapes "__" in port names (job__valid becomes job___05Fvalid).
#define SM_PORT(stream, signal) stream##___05F##signal

#define SM_API extern "C" __attribute__((visibility("default")))

// Error codes returned by sm_run_job instead of a cycle count; mirrored in devices/verilator.py.
enum : int64_t {
    SM_ERR_STALLED = -1,      // no handshake on any stream for max_idle_cycles cycles
    SM_ERR_OVERFLOW = -2,     // the core sent more sums beats than the caller's buffer holds
    SM_ERR_BEAT_SIZE = -3,    // a stream's bytes per beat do not match its port
    SM_ERR_ARGUMENT = -4,     // a null handle or buffer
};

// The input streams, in the order of the `inputs` array of sm_run_job: CoreStreams.data_inputs of
// a dual-sparse core. A core without the pairs stream (built without SPARSEMAC_PAIRS) has the
// first four; its caller still passes SM_INPUTS streams, the pairs one empty.
enum { SM_ACTIVATIONS, SM_ROW_POINTERS, SM_COLUMNS, SM_VALUES, SM_PAIRS, SM_INPUTS };

struct sm_stream {
    const uint8_t* data;  // beats * bytes, beat after beat
    uint64_t beats;
    uint64_t bytes;       // per beat
    uint64_t rate;        // credits per cycle in 1/65536 byte (sparsemac.sw.memory); 0: unthrottled
};

struct sm_job_stats {
    uint64_t sums_beats;             // sums beats received
    uint64_t clock_cycles;           // clock cycles simulated for the job (reset excluded)
    uint64_t inputs_left[SM_INPUTS]; // beats of each input stream the core did not take
};

namespace {

// Verilator stores a port of up to 64 bits in the smallest of CData/SData/IData/QData and a
// wider one in VlWide<words>: a beat of `bytes` bytes fits exactly when it needs that type.
template <typename T>
bool fits(const T&, uint64_t bytes) {
    return bytes <= sizeof(T) && (sizeof(T) == 1 || bytes > sizeof(T) / 2);
}

template <std::size_t N>
bool fits(const VlWide<N>&, uint64_t bytes) {
    return bytes <= 4 * N && bytes > 4 * (N - 1);
}

// An input beat may also be narrower than its port (a delta job's row lengths and codes sit in
// the low bits of the row pointer and column ports); the rest of the port is zero.
template <typename T>
bool holds(const T&, uint64_t bytes) {
    return bytes <= sizeof(T);
}

template <std::size_t N>
bool holds(const VlWide<N>&, uint64_t bytes) {
    return bytes <= 4 * N;
}

template <typename T>
void load(T& port, const uint8_t* src, uint64_t bytes) {
    uint64_t value = 0;
    for (uint64_t i = 0; i < bytes; ++i) value |= uint64_t(src[i]) << (8 * i);
    port = static_cast<T>(value);
}

template <std::size_t N>
void load(VlWide<N>& port, const uint8_t* src, uint64_t bytes) {
    for (std::size_t word = 0; word < N; ++word) {
        uint32_t value = 0;
        for (uint64_t i = 4 * word; i < bytes && i < 4 * word + 4; ++i)
            value |= uint32_t(src[i]) << (8 * (i - 4 * word));
        port[word] = value;
    }
}

template <typename T>
void store(const T& port, uint8_t* dst, uint64_t bytes) {
    const uint64_t value = port;
    for (uint64_t i = 0; i < bytes; ++i) dst[i] = uint8_t(value >> (8 * i));
}

template <std::size_t N>
void store(const VlWide<N>& port, uint8_t* dst, uint64_t bytes) {
    for (uint64_t i = 0; i < bytes; ++i) dst[i] = uint8_t(port[i / 4] >> (8 * (i % 4)));
}

// Fixed-point credits per byte: sparsemac.sw.memory.RATE_ONE.
constexpr unsigned SM_RATE_FRACTION_BITS = 16;

// One input stream: its remaining beats, its credit bucket and the ports it drives.
template <typename Payload>
struct Feed {
    Payload& payload;
    CData& valid;
    const CData& ready;
    const uint8_t* next = nullptr;
    uint64_t left = 0;
    uint64_t bytes = 0;
    uint64_t level = 0;  // credits held
    uint64_t beat = 0;   // credits of one beat
    uint64_t rate = 0;   // credits gained per cycle, 0 for an unthrottled stream

    Feed(Payload& payload_, CData& valid_, const CData& ready_)
        : payload(payload_), valid(valid_), ready(ready_) {}

    bool accepts(const sm_stream& stream) const {
        return !stream.beats || holds(payload, stream.bytes);
    }

    // Whether the coming clock edge takes the beat on the port.
    bool taken() const { return valid && ready; }

    // Called in the cycle in which the job is accepted: the bucket starts empty.
    void start(const sm_stream& stream) {
        next = stream.data;
        left = stream.beats;
        bytes = stream.bytes;
        beat = bytes << SM_RATE_FRACTION_BITS;
        rate = stream.rate;
        level = rate ? 0 : beat;
        if (left) load(payload, next, bytes);
        valid = left && level >= beat;
    }

    // Called after every clock edge: pays for the beat if it was taken, gains the rate (at most
    // one beat is held) and offers the next beat once it is paid for.
    void edge(bool was_taken) {
        if (was_taken) {
            next += bytes;
            --left;
            level -= beat;
            if (left) load(payload, next, bytes);
        }
        level = rate ? std::min(level + rate, beat) : beat;
        valid = left && level >= beat;
    }
};

}  // namespace

struct sm_sim {
    std::unique_ptr<VerilatedContext> context;
    std::unique_ptr<Vsparsemac_core> top;
#ifdef SPARSEMAC_TRACE
    std::unique_ptr<VerilatedFstC> trace;
#endif
    bool needs_reset = true;

    void eval() {
        top->eval();
#ifdef SPARSEMAC_TRACE
        if (trace) trace->dump(context->time());
#endif
        context->timeInc(5);  // half of a 10-unit clock period
    }

    void tick() {
        top->clk = 0;
        eval();
        top->clk = 1;
        eval();
    }

    void reset() {
        top->SM_PORT(job, valid) = 0;
        top->SM_PORT(activations, valid) = 0;
        top->SM_PORT(row_pointers, valid) = 0;
        top->SM_PORT(columns, valid) = 0;
        top->SM_PORT(values, valid) = 0;
#ifdef SPARSEMAC_PAIRS
        top->SM_PORT(pairs, valid) = 0;
#endif
        top->SM_PORT(sums, ready) = 0;
        top->SM_PORT(done, ready) = 0;
        top->rst = 1;
        tick();
        tick();
        top->rst = 0;
        needs_reset = false;
    }
};

// Creates a model in reset. `fst_path` (or null) names a waveform file; it is honoured only by a
// library built with tracing (sm_has_trace() true). Returns null on failure.
SM_API sm_sim* sm_create(const char* fst_path) {
    auto* sim = new sm_sim;
    sim->context = std::make_unique<VerilatedContext>();
    sim->context->debug(0);
    sim->context->randReset(0);
#ifdef SPARSEMAC_TRACE
    sim->context->traceEverOn(true);
#endif
    sim->top = std::make_unique<Vsparsemac_core>(sim->context.get(), "sparsemac_core");
#ifdef SPARSEMAC_TRACE
    if (fst_path && *fst_path) {
        sim->trace = std::make_unique<VerilatedFstC>();
        sim->top->trace(sim->trace.get(), 99);
        sim->trace->open(fst_path);
    }
#else
    (void)fst_path;
#endif
    sim->reset();
    return sim;
}

SM_API int sm_has_trace() {
#ifdef SPARSEMAC_TRACE
    return 1;
#else
    return 0;
#endif
}

// Runs one job to its `done` beat and returns the core's cycle count, or a negative SM_ERR_*.
//
// `job` holds the job payload (job_bytes little-endian bytes); `inputs` the SM_INPUTS input
// streams; sums beats go to `sums`, which holds `sums_capacity` beats of `sums_bytes` bytes.
// `stats` (may be null) receives what the harness saw, also on error. After an error the model
// is reset before the next job.
SM_API int64_t sm_run_job(sm_sim* sim, const uint8_t* job, uint64_t job_bytes,
                          const sm_stream* inputs, uint8_t* sums, uint64_t sums_capacity,
                          uint64_t sums_bytes, uint64_t max_idle_cycles, sm_job_stats* stats) {
    sm_job_stats local{};
    if (!stats) stats = &local;
    *stats = sm_job_stats{};
    if (!sim || !job || !inputs || (!sums && sums_capacity)) return SM_ERR_ARGUMENT;
    Vsparsemac_core& top = *sim->top;

#define SM_FEED(stream)                                             \
    Feed<decltype(top.SM_PORT(stream, payload))> stream(              \
        top.SM_PORT(stream, payload), top.SM_PORT(stream, valid), top.SM_PORT(stream, ready))
    SM_FEED(activations);
    SM_FEED(row_pointers);
    SM_FEED(columns);
    SM_FEED(values);
#ifdef SPARSEMAC_PAIRS
    SM_FEED(pairs);
    const bool pairs_fit = pairs.accepts(inputs[SM_PAIRS]);
#else
    const bool pairs_fit = !inputs[SM_PAIRS].beats;
#endif
#undef SM_FEED
    if (!fits(top.SM_PORT(job, payload), job_bytes) || !fits(top.SM_PORT(sums, payload), sums_bytes)
        || !activations.accepts(inputs[SM_ACTIVATIONS])
        || !row_pointers.accepts(inputs[SM_ROW_POINTERS])
        || !columns.accepts(inputs[SM_COLUMNS]) || !values.accepts(inputs[SM_VALUES])
        || !pairs_fit)
        return SM_ERR_BEAT_SIZE;

    if (sim->needs_reset) sim->reset();
    sim->needs_reset = true;  // until the job ends cleanly
    load(top.SM_PORT(job, payload), job, job_bytes);
    top.SM_PORT(job, valid) = 1;
    activations.start(inputs[SM_ACTIVATIONS]);
    row_pointers.start(inputs[SM_ROW_POINTERS]);
    columns.start(inputs[SM_COLUMNS]);
    values.start(inputs[SM_VALUES]);
#ifdef SPARSEMAC_PAIRS
    pairs.start(inputs[SM_PAIRS]);
#endif
    top.SM_PORT(sums, ready) = 1;
    top.SM_PORT(done, ready) = 1;

    int64_t result = SM_ERR_STALLED;
    uint64_t idle = 0, cycles = 0, received = 0;
    for (;;) {
        // Settle the inputs set after the last edge, then see which handshakes the edge takes.
        top.clk = 0;
        sim->eval();
        const bool job_taken = top.SM_PORT(job, valid) && top.SM_PORT(job, ready);
        const bool activation_taken = activations.taken();
        const bool row_pointer_taken = row_pointers.taken();
        const bool column_taken = columns.taken();
        const bool value_taken = values.taken();
#ifdef SPARSEMAC_PAIRS
        const bool pair_taken = pairs.taken();
#else
        const bool pair_taken = false;
#endif
        const bool sum_taken = top.SM_PORT(sums, valid);
        const bool done = top.SM_PORT(done, valid);
        if (sum_taken) {
            if (received == sums_capacity) {
                result = SM_ERR_OVERFLOW;
                break;
            }
            store(top.SM_PORT(sums, payload), sums + received * sums_bytes, sums_bytes);
            ++received;
        }
        const uint64_t done_cycles = top.SM_PORT(done, payload);
        top.clk = 1;
        sim->eval();
        ++cycles;
        if (done) {
            result = int64_t(done_cycles);
            sim->needs_reset = false;
            top.SM_PORT(done, ready) = 0;
            top.SM_PORT(sums, ready) = 0;
            break;
        }
        if (job_taken) top.SM_PORT(job, valid) = 0;
        activations.edge(activation_taken);
        row_pointers.edge(row_pointer_taken);
        columns.edge(column_taken);
        values.edge(value_taken);
#ifdef SPARSEMAC_PAIRS
        pairs.edge(pair_taken);
#endif
        if (job_taken || activation_taken || row_pointer_taken || column_taken || value_taken
            || pair_taken || sum_taken)
            idle = 0;
        else if (++idle >= max_idle_cycles)
            break;
    }
    stats->sums_beats = received;
    stats->clock_cycles = cycles;
    stats->inputs_left[SM_ACTIVATIONS] = activations.left;
    stats->inputs_left[SM_ROW_POINTERS] = row_pointers.left;
    stats->inputs_left[SM_COLUMNS] = columns.left;
    stats->inputs_left[SM_VALUES] = values.left;
#ifdef SPARSEMAC_PAIRS
    stats->inputs_left[SM_PAIRS] = pairs.left;
#endif
#ifdef SPARSEMAC_TRACE
    if (sim->trace) sim->trace->flush();
#endif
    return result;
}

// Finishes the waveform, if any, and frees the model.
SM_API void sm_destroy(sm_sim* sim) {
    if (!sim) return;
    sim->top->final();
#ifdef SPARSEMAC_TRACE
    if (sim->trace) sim->trace->close();
#endif
    delete sim;
}
