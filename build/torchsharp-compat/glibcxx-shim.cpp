// Provides std::ios_base_library_init() — the one GLIBCXX_3.4.32 (GCC 13) symbol that
// TorchSharp's libLibTorchSharp.so needs — for hosts whose libstdc++ stops at GLIBCXX_3.4.30.
// GCC 13 calls it from code that includes <iostream> to make sure the standard streams are
// initialised; constructing an ios_base::Init does exactly that on the older runtime.
// Loaded with RTLD_GLOBAL before the first torch call. See docs/torchsharp-on-debian.md.
#include <ios>

namespace std {
void ios_base_library_init() { static ios_base::Init streams_initialised; }
}
