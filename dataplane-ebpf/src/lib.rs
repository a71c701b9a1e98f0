// Lets the host toolchain see a library target (aya-build depends on it);
// the programs themselves live in the `dataplane` binary for bpfel-unknown-none.
#![no_std]
