/*
 * libmkl-cpu-dispatch.so: lets the oneMKL inside libtorch choose its kernels by what the CPU
 * supports (AVX2, AVX-512) instead of by vendor. oneMKL asks mkl_serv_intel_cpu_true() before it
 * looks at the CPU's feature flags; on AMD processors the answer is 0 and every feature-specific
 * path is skipped (cpu_detect reports the generic code path), which halves float32 GEMM speed on
 * an AVX-512 capable EPYC. libtorch exports the function, so a definition loaded globally before
 * libtorch (InterpMesh.Runtime does that at start-up) takes its place. On Intel CPUs the answer is
 * 1 anyway. Turn it off with INTERPMESH_MKL_CPU_DISPATCH=vendor. See docs/torchsharp-on-debian.md.
 */
int mkl_serv_intel_cpu_true(void) { return 1; }
