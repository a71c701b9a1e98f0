//! Attachments: every program on an interface is a tcx link pinned in
//! bpffs, so it keeps forwarding while the agent is down. A restarted agent
//! takes a pinned link over by swapping its own program in (BPF_LINK_UPDATE);
//! when that is impossible it attaches anew beside it before removing the
//! old pin (make before break). Detaching is removing the pin.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

use aya::programs::{
    TcAttachType,
    links::{CgroupAttachMode, FdLink, PinnedLink},
    tc::SchedClassifierLink,
};
use dataplane_common::names;
use tracing::{debug, warn};

use super::{Dataplane, DataplaneError};
use crate::{
    interfaces::Interface,
    loader::{SOCKET_PROGRAMS, classifier, socket_hook},
};

/// A program attached to an interface in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub program: &'static str,
    pub ifindex: u32,
    pub egress: bool,
}

impl Dataplane {
    /// Attaches the tunnel programs: decapsulation on the uplink's ingress,
    /// the node's own pod-bound traffic on its egress, and the guard on the
    /// VXLAN device.
    pub fn attach_tunnel(
        &mut self,
        vxlan: &Interface,
        uplink: &Interface,
    ) -> Result<(), DataplaneError> {
        self.attach(names::FROM_TUNNEL_PROGRAM, vxlan, false)?;
        self.attach(names::FROM_UPLINK_PROGRAM, uplink, false)?;
        self.attach(names::FROM_HOST_PROGRAM, uplink, true)?;
        Ok(())
    }

    /// Attaches the socket hooks to the root of the cgroup2 hierarchy at
    /// `cgroup`: every socket of the machine passes them, and they translate
    /// for the node's network namespace only. Beside other programs there
    /// (links never exclude each other), and beside a hook an earlier agent pinned until the
    /// new one is pinned in its place (make before break: both look at the
    /// same maps, and a translated address is no frontend).
    pub fn attach_host_sockets(&mut self, cgroup: &Path) -> Result<(), DataplaneError> {
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

    /// The cgroup the socket hooks are attached to, if they are.
    pub fn host_sockets(&self) -> Option<&Path> {
        self.host_sockets.as_deref()
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
    pub(super) fn attach(
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
        let classifier = classifier(&mut self.ebpf, program);
        let adopted = if pin.exists() {
            let adoption = PinnedLink::from_pin(&pin)
                .map_err(|error| error.to_string())
                .and_then(|pinned| {
                    SchedClassifierLink::try_from(FdLink::from(pinned))
                        .map_err(|error| error.to_string())
                })
                .and_then(|link| {
                    classifier
                        .attach_to_link(link)
                        .map_err(|error| error.to_string())
                });
            match adoption {
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

    pub(super) fn detach(&mut self, attachment: &Attachment) {
        if self.attached.remove(attachment)
            && let Err(error) = std::fs::remove_file(self.pin_path(attachment))
        {
            debug!(?attachment, %error, "unpinning link");
        }
    }

    /// Removes pinned links this agent did not attach or adopt: left behind for
    /// interfaces that are gone, or for endpoints removed while it was down.
    pub fn remove_stale_links(&mut self) -> Vec<PathBuf> {
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
