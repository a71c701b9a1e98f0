//! Attachments: every program on an interface is a tcx link pinned in
//! bpffs, so it keeps forwarding while the agent is down. A restarted agent
//! takes a pinned link over by swapping its own program in (BPF_LINK_UPDATE);
//! when that is impossible it attaches anew beside it before removing the
//! old pin (make before break). Detaching is removing the pin. The
//! [`Attachments`] trait is the seam unit tests replace.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        TcAttachType,
        links::{CgroupAttachMode, FdLink, PinnedLink},
        tc::{SchedClassifierLink, SchedClassifierLinkId},
    },
};
use dataplane_common::names;
use tracing::{debug, warn};

use super::DataplaneError;
use crate::{
    interfaces::Interface,
    loader::{PROGRAMS, SOCKET_PROGRAMS, classifier, socket_hook},
};

/// Where the programs are attached: the kernel's pinned links ([`Links`]),
/// or a record of them in unit tests.
pub trait Attachments: Send + Sync {
    /// Attaches `program` to `interface` unless it already is; `Ok(true)`
    /// if it was not.
    fn attach(
        &mut self,
        program: &'static str,
        interface: &Interface,
        egress: bool,
    ) -> Result<bool, DataplaneError>;
    fn detach(&mut self, attachment: &Attachment);
    fn attached(&self) -> &HashSet<Attachment>;
    fn attach_host_sockets(&mut self, cgroup: &Path) -> Result<(), DataplaneError>;
    fn host_sockets(&self) -> Option<&Path>;
    fn take_over_links(&mut self, previous: Option<&Path>) -> usize;
    fn remove_stale_links(&mut self) -> Vec<PathBuf>;
}

/// The programs of a loaded object and their pinned links.
pub struct Links {
    ebpf: Ebpf,
    /// Where the pinned links live.
    links_dir: PathBuf,
    attached: HashSet<Attachment>,
    /// The cgroup the host socket hooks are attached to.
    host_sockets: Option<PathBuf>,
}

/// A program attached to an interface in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub program: &'static str,
    pub ifindex: u32,
    pub egress: bool,
}

impl Links {
    /// The programs of `ebpf`, their links pinned under `pin_dir/links`.
    pub fn new(ebpf: Ebpf, pin_dir: &Path) -> Result<Self, DataplaneError> {
        let links_dir = pin_dir.join("links");
        std::fs::create_dir_all(&links_dir).map_err(|error| DataplaneError::Pin {
            program: "(all)",
            interface: String::new(),
            path: links_dir.clone(),
            detail: error.to_string(),
        })?;
        Ok(Self {
            ebpf,
            links_dir,
            attached: HashSet::new(),
            host_sockets: None,
        })
    }

    /// Attaches the socket hooks to the root of the cgroup2 hierarchy at
    /// `cgroup`: every socket of the machine passes them, and they translate
    /// for the node's network namespace only. Beside other programs there
    /// (links never exclude each other), and beside a hook an earlier agent pinned until the
    /// new one is pinned in its place (make before break: both look at the
    /// same maps, and a translated address is no frontend).
    fn sockets_attached(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        let target = format!("cgroup {}", cgroup.display());
        let directory = std::fs::File::open(cgroup).map_err(|error| DataplaneError::Pin {
            program: "(socket hooks)",
            interface: target.clone(),
            path: cgroup.to_owned(),
            detail: error.to_string(),
        })?;
        for program in SOCKET_PROGRAMS {
            let pin = self.socket_pin_path(program);
            let pin_error = |detail: String| DataplaneError::Pin {
                program,
                interface: target.clone(),
                path: pin.clone(),
                detail,
            };
            let hook = socket_hook(&mut self.ebpf, program);
            // A link (BPF_LINK_CREATE, which takes no flags) is always one
            // of many on its cgroup: "Single" only means "no flags" here.
            let link = hook
                .attach(&directory, CgroupAttachMode::Single)
                .map_err(|source| DataplaneError::Attach {
                    program,
                    interface: target.clone(),
                    source,
                })?;
            let link: FdLink = hook
                .take_link(link)
                .map_err(|error| pin_error(error.to_string()))?
                .try_into()
                .map_err(|error: aya::programs::links::LinkError| pin_error(error.to_string()))?;
            if pin.exists() {
                std::fs::remove_file(&pin).map_err(|error| pin_error(error.to_string()))?;
            }
            link.pin(&pin)
                .map_err(|error| pin_error(error.to_string()))?;
        }
        self.host_sockets = Some(cgroup.to_owned());
        Ok(())
    }

    fn socket_pin_path(&self, program: &str) -> PathBuf {
        self.links_dir.join(format!("{program}-cgroup"))
    }

    fn pin_path(&self, attachment: &Attachment) -> PathBuf {
        let direction = if attachment.egress {
            "egress"
        } else {
            "ingress"
        };
        self.links_dir.join(format!(
            "{}-{}-{direction}",
            attachment.program, attachment.ifindex
        ))
    }

    /// Attaches `program` to `interface` unless it already is; `Ok(true)` if it
    /// was not. A link pinned by an earlier agent is adopted: this build's
    /// program replaces the old one on it atomically.
    fn attached_now(
        &mut self,
        program: &'static str,
        interface: &Interface,
        egress: bool,
    ) -> Result<bool, DataplaneError> {
        let attachment = Attachment {
            program,
            ifindex: interface.index,
            egress,
        };
        if self.attached.contains(&attachment) {
            return Ok(false);
        }
        let pin = self.pin_path(&attachment);
        let pin_error = |detail: String| DataplaneError::Pin {
            program,
            interface: interface.name.clone(),
            path: pin.clone(),
            detail,
        };
        let adopted = if pin.exists() {
            match self.adopt(program, &pin) {
                Ok(link) => Some(link),
                Err(cause) => {
                    // A link whose interface was deleted (its index now
                    // someone else's) cannot be updated. The new program is
                    // attached next to it before its pin goes: make before
                    // break, no moment without a program.
                    warn!(program, interface = %interface.name, pin = %pin.display(),
                          "cannot take over the pinned link ({cause}); attaching anew beside it");
                    None
                }
            }
        } else {
            None
        };
        let classifier = classifier(&mut self.ebpf, program);
        let replaces_pin = adopted.is_none() && pin.exists();
        let link = match adopted {
            Some(link) => link,
            None => {
                let direction = if egress {
                    TcAttachType::Egress
                } else {
                    TcAttachType::Ingress
                };
                classifier
                    .attach(&interface.name, direction)
                    .map_err(|source| DataplaneError::Attach {
                        program,
                        interface: interface.name.clone(),
                        source,
                    })?
            }
        };
        let link: FdLink = classifier
            .take_link(link)
            .map_err(|error| pin_error(error.to_string()))?
            .try_into()
            .map_err(|error: aya::programs::links::LinkError| pin_error(error.to_string()))?;
        if replaces_pin {
            std::fs::remove_file(&pin).map_err(|error| pin_error(error.to_string()))?;
        }
        if !pin.exists() {
            link.pin(&pin)
                .map_err(|error| pin_error(error.to_string()))?;
        }
        // The pin holds the link from here on, whatever happens to this process.
        self.attached.insert(attachment);
        Ok(true)
    }

    /// This build's `program` swapped into the link pinned at `pin`
    /// (BPF_LINK_UPDATE: atomic, the interface never without a program).
    fn adopt(&mut self, program: &str, pin: &Path) -> Result<SchedClassifierLinkId, String> {
        let link = PinnedLink::from_pin(pin)
            .map_err(|error| error.to_string())
            .and_then(|pinned| {
                SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|error| error.to_string())
            })?;
        classifier(&mut self.ebpf, program)
            .attach_to_link(link)
            .map_err(|error| error.to_string())
    }

    /// Takes over every interface link pinned in the links directory,
    /// having first moved there those `previous` (the previous map layout's
    /// links directory) holds: one program swap per link, back to back, so
    /// the interfaces change programs within moments of each other instead
    /// of as the agent's start reaches each. Which links stay is still
    /// `attach`'s to say (it adopts the swapped link again, at no cost to
    /// traffic) and `remove_stale_links`'s: a link no endpoint claims any
    /// more goes then, as before. Returns how many were swapped.
    fn links_taken_over(&mut self, previous: Option<&Path>) -> usize {
        let pins_in = |directory: &Path| -> Vec<(Attachment, PathBuf)> {
            let Ok(entries) = std::fs::read_dir(directory) else {
                return Vec::new();
            };
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let attachment = pinned_attachment(entry.file_name().to_str()?)?;
                    Some((attachment, entry.path()))
                })
                .collect()
        };
        for (attachment, from) in previous.map(pins_in).unwrap_or_default() {
            let to = self.pin_path(&attachment);
            // One of this layout's own (an earlier attempt's) wins; the
            // other goes with the previous layout's pins.
            if !to.exists()
                && let Err(error) = std::fs::rename(&from, &to)
            {
                warn!(from = %from.display(), %error, "cannot move the previous layout's link");
            }
        }
        let mut taken = 0;
        for (attachment, pin) in pins_in(&self.links_dir.clone()) {
            let held = self.adopt(attachment.program, &pin).and_then(|link| {
                let link: FdLink = classifier(&mut self.ebpf, attachment.program)
                    .take_link(link)
                    .map_err(|error| error.to_string())?
                    .try_into()
                    .map_err(|error: aya::programs::links::LinkError| error.to_string())?;
                // The pin keeps holding it.
                drop(link);
                Ok(())
            });
            match held {
                Ok(()) => taken += 1,
                Err(cause) => debug!(pin = %pin.display(), cause, "not taken over now"),
            }
        }
        taken
    }

    fn detached(&mut self, attachment: &Attachment) {
        if self.attached.remove(attachment)
            && let Err(error) = std::fs::remove_file(self.pin_path(attachment))
        {
            debug!(?attachment, %error, "unpinning link");
        }
    }

    /// Removes pinned links this agent did not attach or adopt: left behind for
    /// interfaces that are gone, or for endpoints removed while it was down.
    fn stale_links_removed(&mut self) -> Vec<PathBuf> {
        let sockets = self
            .host_sockets
            .iter()
            .flat_map(|_| SOCKET_PROGRAMS.map(|program| self.socket_pin_path(program)));
        let current: HashSet<PathBuf> = self
            .attached
            .iter()
            .map(|attachment| self.pin_path(attachment))
            .chain(sockets)
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.links_dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| !current.contains(path))
            .filter(|path| std::fs::remove_file(path).is_ok())
            .collect()
    }
}

/// The attachment a link pin's name (`<program>-<ifindex>-<direction>`)
/// stands for, if it is an interface link of one of this build's programs.
fn pinned_attachment(name: &str) -> Option<Attachment> {
    let mut parts = name.rsplitn(3, '-');
    let egress = match parts.next()? {
        "egress" => true,
        "ingress" => false,
        _ => return None,
    };
    let ifindex = parts.next()?.parse().ok()?;
    let program = parts.next()?;
    let program = PROGRAMS.into_iter().find(|known| *known == program)?;
    Some(Attachment {
        program,
        ifindex,
        egress,
    })
}

impl Attachments for Links {
    fn attach(
        &mut self,
        program: &'static str,
        interface: &Interface,
        egress: bool,
    ) -> Result<bool, DataplaneError> {
        self.attached_now(program, interface, egress)
    }

    fn detach(&mut self, attachment: &Attachment) {
        self.detached(attachment);
    }

    fn attached(&self) -> &HashSet<Attachment> {
        &self.attached
    }

    fn attach_host_sockets(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
        self.sockets_attached(cgroup)
    }

    fn host_sockets(&self) -> Option<&Path> {
        self.host_sockets.as_deref()
    }

    fn take_over_links(&mut self, previous: Option<&Path>) -> usize {
        self.links_taken_over(previous)
    }

    fn remove_stale_links(&mut self) -> Vec<PathBuf> {
        self.stale_links_removed()
    }
}

pub(super) fn from_pod_on(ifindex: u32) -> Attachment {
    Attachment {
        program: names::FROM_POD_PROGRAM,
        ifindex,
        egress: false,
    }
}

pub(super) fn to_pod_on(ifindex: u32) -> Attachment {
    Attachment {
        program: names::TO_POD_PROGRAM,
        ifindex,
        egress: true,
    }
}

#[cfg(test)]
mod tests;
