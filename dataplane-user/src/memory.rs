//! Memory a burst freed, given back to the kernel. glibc keeps what is
//! freed for reuse, so after a burst (a Kubernetes relisting holds a second
//! copy of every fact and every Service at once; a collection walks a full
//! connection table) the agent's resident memory, which the node's memory
//! limits count, would stay at the peak.

/// Large blocks (a walk's entries, a listing's specs) get their own
/// mappings, unmapped when freed. glibc raises this threshold to the
/// largest block freed so far, after which such blocks come from a thread's
/// arena, whose free top `malloc_trim` never returns: measured, 23-47 MB
/// kept after collections of a full Service connection table.
const OWN_MAPPING_FROM: i32 = 256 * 1024;

/// Arenas glibc may create (one per thread up to eight per CPU otherwise):
/// each keeps its own free memory, and the agent's threads rarely allocate
/// at once.
const ARENAS: i32 = 2;

/// Sets the allocator up for a long-lived process with bursts. Call once,
/// before the threads start.
pub fn configure_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets glibc's tunables; called before other threads.
    unsafe {
        nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, OWN_MAPPING_FROM);
        nix::libc::mallopt(nix::libc::M_ARENA_MAX, ARENAS);
    }
}

/// Returns the allocator's free pages to the kernel.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks glibc's own free lists, from any thread.
    unsafe {
        nix::libc::malloc_trim(0);
    }
}
