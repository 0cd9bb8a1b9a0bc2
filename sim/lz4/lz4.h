/* The two functions of liblz4 that Verilator's FST writer calls, declared as in liblz4's own
 * lz4.h (stable ABI since liblz4 r129). sparsemac uses this header only when liblz4's
 * development package is not installed, and links the runtime library (liblz4.so.1) that
 * Debian installs anyway, so FST waveforms need no extra system package. */
#ifndef SPARSEMAC_LZ4_H
#define SPARSEMAC_LZ4_H
#ifdef __cplusplus
extern "C" {
#endif
int LZ4_compressBound(int inputSize);
int LZ4_compress_default(const char *src, char *dst, int srcSize, int dstCapacity);
#ifdef __cplusplus
}
#endif
#endif
