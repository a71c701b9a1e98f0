//! Memory a burst freed, given back to the kernel. glibc keeps what is
//! freed for reuse, so after a burst (a Kubernetes relisting holds a second
//! copy of every fact and every Service at once; a collection walks a full
//! connection table) the agent's resident memory, which the node's memory
//! limits count, would stay at the peak.

/// Returns the allocator's free pages to the kernel.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists, from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
