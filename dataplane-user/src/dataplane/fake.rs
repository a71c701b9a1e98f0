//! Attachments recorded in memory, for unit tests: attaching to an
//! interface a test marks as failing fails as a vanished veth does.

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{Attachment, Attachments, DataplaneError};
use crate::interfaces::Interface;

/// Interfaces and directions attaching to fails on, shared with the test.
#[derive(Clone, Default)]
pub struct FailingInterfaces(Arc<Mutex<HashSet<(u32, bool)>>>);

impl FailingInterfaces {
    /// Attaching to `ifindex` in the `egress` direction fails from now on.
    pub fn fail(&self, ifindex: u32, egress: bool) {
        self.0
            .lock()
            .expect("no panics while held")
            .insert((ifindex, egress));
    }
}

#[derive(Default)]
pub struct FakeLinks {
    attached: HashSet<Attachment>,
    failing: FailingInterfaces,
}

impl FakeLinks {
    pub fn new(failing: &FailingInterfaces) -> Self {
        Self {
            attached: HashSet::new(),
            failing: failing.clone(),
        }
    }
}

impl Attachments for FakeLinks {
    fn attach(
        &mut self,
        program: &'static str,
        interface: &Interface,
        egress: bool,
    ) -> Result<bool, DataplaneError> {
        if self
            .failing
            .0
            .lock()
            .expect("no panics while held")
            .contains(&(interface.index, egress))
        {
            return Err(DataplaneError::Pin {
                program,
                interface: interface.name.clone(),
                path: PathBuf::new(),
                detail: "the interface is gone".into(),
            });
        }
        Ok(self.attached.insert(Attachment {
            program,
            ifindex: interface.index,
            egress,
        }))
    }

    fn detach(&mut self, attachment: &Attachment) {
        self.attached.remove(attachment);
    }

    fn attached(&self) -> &HashSet<Attachment> {
        &self.attached
    }

    fn attach_host_sockets(&mut self, _: &Path) -> Result<(), DataplaneError> {
        Ok(())
    }

    fn host_sockets(&self) -> Option<&Path> {
        None
    }

    fn take_over_links(&mut self, _: Option<&Path>) -> usize {
        0
    }

    fn remove_stale_links(&mut self) -> Vec<PathBuf> {
        Vec::new()
    }
}
