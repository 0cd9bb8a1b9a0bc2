// Runs the Verilated board design with its UART pins bridged to a pseudo-terminal.
//
// Usage: board_sim MASTER_FD DIVISOR
//
// Bytes read from MASTER_FD are sent into the design's `rx` pin as 8N1 frames of DIVISOR
// cycles per bit; 8N1 frames the design sends on `tx` are decoded and written to MASTER_FD.
// The simulation keeps running while the host is quiet (at a reduced pace), so the design's
// inter-byte time-out fires as it would on a board. It exits when its parent process dies.

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <vector>

#include <poll.h>
#include <unistd.h>

#include "verilated.h"
#include VERILATED_TOP_HEADER

namespace {

struct Serializer {
    int divisor;
    std::deque<uint8_t> queue;
    uint16_t frame = 0;  // bits still to send, least significant first
    int bits = 0;
    int timer = 0;

    bool busy() const { return bits != 0 || !queue.empty(); }

    // The level of the line for the next cycle.
    int level() {
        if (bits == 0) {
            if (queue.empty()) return 1;
            frame = static_cast<uint16_t>((queue.front() << 1) | (1u << 9));  // start, data, stop
            queue.pop_front();
            bits = 10;
            timer = divisor;
        }
        int bit = frame & 1;
        if (--timer == 0) {
            frame >>= 1;
            --bits;
            timer = divisor;
        }
        return bit;
    }
};

struct Deserializer {
    int divisor;
    int state = -1;  // -1: idle; 0..7: data bits; 8: stop bit
    int timer = 0;
    uint8_t shift = 0;

    bool busy() const { return state != -1; }

    // Feeds one cycle of the line; returns a byte (0..255) when a frame completes, else -1.
    int sample(int level) {
        if (state == -1) {
            if (!level) {
                state = 0;
                timer = divisor + divisor / 2;  // to the middle of data bit 0
            }
            return -1;
        }
        if (--timer != 0) return -1;
        timer = divisor;
        if (state < 8) {
            shift = static_cast<uint8_t>((shift >> 1) | (level ? 0x80 : 0));
            ++state;
            return -1;
        }
        state = -1;
        return level ? shift : -1;  // a low stop bit is a framing error: drop the byte
    }
};

}  // namespace

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s MASTER_FD DIVISOR\n", argv[0]);
        return 2;
    }
    const int fd = std::atoi(argv[1]);
    const int divisor = std::atoi(argv[2]);
    const pid_t parent = getppid();

    auto context = new VerilatedContext;
    context->commandArgs(1, argv);
    auto top = new VERILATED_TOP_CLASS{context};

    Serializer serializer{divisor};
    Deserializer deserializer{divisor};

    top->rx = 1;
    top->clk = 0;
    top->rst = 1;
    for (int cycle = 0; cycle < 4; ++cycle) {
        top->clk = 1; top->eval();
        top->clk = 0; top->eval();
    }
    top->rst = 0;

    const int chunk = 64;
    uint64_t quiet = 0;  // cycles without traffic either way
    std::vector<uint8_t> out;
    uint8_t buffer[4096];
    while (true) {
        for (int cycle = 0; cycle < chunk; ++cycle) {
            top->rx = serializer.level();
            top->clk = 1; top->eval();
            top->clk = 0; top->eval();
            int byte = deserializer.sample(top->tx);
            if (byte >= 0) out.push_back(static_cast<uint8_t>(byte));
        }
        if (!out.empty()) {
            size_t done = 0;
            while (done < out.size()) {
                ssize_t written = write(fd, out.data() + done, out.size() - done);
                if (written < 0 && errno != EINTR && errno != EAGAIN) return 0;
                if (written > 0) done += static_cast<size_t>(written);
            }
            out.clear();
        }
        bool traffic = serializer.busy() || deserializer.busy();
        quiet = traffic ? 0 : quiet + chunk;
        // While the host is quiet, wait for it a little between chunks, so an idle board
        // costs little CPU yet its time-outs still run.
        struct pollfd poller = {fd, POLLIN, 0};
        int ready = poll(&poller, 1, quiet > 100000 ? 1 : 0);
        if (ready > 0 && (poller.revents & POLLIN)) {
            ssize_t count = read(fd, buffer, sizeof buffer);
            if (count > 0) {
                serializer.queue.insert(serializer.queue.end(), buffer, buffer + count);
                quiet = 0;
            }
        }
        if (quiet > 100000 && getppid() != parent) break;
    }
    top->final();
    delete top;
    delete context;
    return 0;
}
