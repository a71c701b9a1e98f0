//! Work inside another network namespace, on a thread of its own: `setns`
//! moves only the calling thread, so the rest of the process stays where it
//! is, and sockets the thread opens belong to the namespace it entered.

use std::{fs::File, path::Path};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {0}: {1}")]
    Open(String, std::io::Error),
    #[error("{0} is not a network namespace: {1}")]
    Enter(String, nix::Error),
    #[error("the thread working in network namespace {0} panicked")]
    Panicked(String),
}

/// The cookie of the calling thread's network namespace, as the programs'
/// `bpf_get_netns_cookie` sees it (`SO_NETNS_COOKIE`, Linux 5.14).
pub fn current_cookie() -> nix::Result<u64> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    use std::os::fd::AsRawFd;
    let probe = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let mut cookie: u64 = 0;
    let mut length = size_of::<u64>() as nix::libc::socklen_t;
    // SAFETY: the kernel writes at most `length` bytes into `cookie`.
    let result = unsafe {
        nix::libc::getsockopt(
            probe.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut length,
        )
    };
    if result != 0 {
        return Err(nix::Error::last());
    }
    Ok(cookie)
}

/// Moves the calling thread (only) into the network namespace at `path`.
pub fn enter(path: &Path) -> Result<(), NetnsError> {
    let label = || path.display().to_string();
    let namespace = File::open(path).map_err(|error| NetnsError::Open(label(), error))?;
    nix::sched::setns(namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|error| NetnsError::Enter(label(), error))
}

/// Runs `work` on a new thread inside the network namespace at `path` and
/// waits for it.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let path = path.to_path_buf();
    let label = path.display().to_string();
    std::thread::spawn(move || {
        enter(&path)?;
        Ok(work())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(label))?
}
