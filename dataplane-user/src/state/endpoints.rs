//! Endpoints: pods registered by the CNI plugin (through the API), listed
//! in the config file, or found in the pinned map at start-up. Each source
//! owns what it listed; an endpoint stays while any source lists it.

use std::net::IpAddr;

use anyhow::Context as _;
use tracing::{info, warn};

use super::Owner;
use crate::{
    dataplane::DataplaneError,
    interfaces::HostLinks,
    interfaces::Interface,
    model::{EndpointSpec, HostInterface, Source, validate_endpoint},
};

impl<L: HostLinks> Owner<L> {
    /// The host veths of `endpoints`, each checked; an error for the first
    /// that fails, before anything changed.
    pub(super) async fn checked_interfaces(
        &self,
        endpoints: &[EndpointSpec],
    ) -> anyhow::Result<Vec<Interface>> {
        let mut resolved = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            resolved.push(
                self.checked_interface(endpoint)
                    .await
                    .with_context(|| format!("endpoint {}", endpoint.ip))?,
            );
        }
        Ok(resolved)
    }

    /// The config file lists exactly `endpoints` (behind `interfaces`, as
    /// checked): they are registered, and what the file listed before and
    /// no longer does goes unless another source lists it too.
    pub(super) fn replace_file_endpoints(
        &mut self,
        endpoints: &[EndpointSpec],
        interfaces: Vec<Interface>,
    ) -> anyhow::Result<()> {
        for (endpoint, interface) in endpoints.iter().zip(interfaces) {
            self.register(endpoint, &interface)
                .with_context(|| format!("endpoint {}", endpoint.ip))?;
            self.endpoint_sources.list(endpoint.ip, Source::ConfigFile);
        }
        let listed: std::collections::BTreeSet<IpAddr> =
            endpoints.iter().map(|endpoint| endpoint.ip).collect();
        for ip in self.endpoint_sources.withdraw(Source::ConfigFile, &listed) {
            self.dataplane.remove_endpoint(ip)?;
            info!(%ip, "endpoint removed: the config file no longer lists it");
        }
        Ok(())
    }

    /// The host veth of `endpoint`, after checking the endpoint and that no
    /// other live veth has its address.
    async fn checked_interface(&self, endpoint: &EndpointSpec) -> anyhow::Result<Interface> {
        if let Err((field, problem)) = validate_endpoint(endpoint, &self.facts.settings.pod_cidrs())
        {
            crate::refuse!("endpoint field `{field}`: {problem}");
        }
        // The pods' gateway (`ptp` puts it on every host veth, `bridge` on
        // its bridge) or any other: given to a pod, the node could no longer
        // reach its pods from it, nor pods their gateway.
        if self
            .interfaces
            .host_addresses()
            .await?
            .contains(&endpoint.ip)
        {
            crate::refuse!(
                "endpoint field `ip`: {} is an address of this node (the pods' gateway, \
                 say): no pod can have it",
                endpoint.ip
            );
        }
        let interface = match &endpoint.interface {
            HostInterface::Name(name) => self.interfaces.by_name(name).await?,
            HostInterface::Index(index) => self.interfaces.by_index(*index).await?,
        };
        let Some(interface) = interface else {
            crate::refuse!(
                "interface {} does not exist in the agent's network namespace",
                endpoint.interface
            );
        };
        // An address belongs to one pod: taking it from a pod whose veth
        // still exists would silently cut that pod off.
        if let Some(registered) = self
            .dataplane
            .endpoint(endpoint.ip)
            .filter(|other| other.host_ifindex != interface.index)
            && let Some(owner) = self.interfaces.by_index(registered.host_ifindex).await?
        {
            crate::refuse!(
                "{} is already the address of the pod behind {} (ifindex {}); remove that \
                 endpoint first",
                endpoint.ip,
                owner.name,
                owner.index
            );
        }
        Ok(interface)
    }

    pub(super) async fn add_endpoint(&mut self, endpoint: &EndpointSpec) -> anyhow::Result<()> {
        let interface = self.checked_interface(endpoint).await?;
        // Its policy is in force before anything can reach it.
        self.bind_pod(endpoint.ip, endpoint.pod.as_ref());
        self.program_policies(Some(endpoint.ip))
            .context("programming the pod's NetworkPolicy")?;
        self.register(endpoint, &interface)?;
        self.endpoint_sources.list(endpoint.ip, Source::Api);
        info!(ip = %endpoint.ip, interface = %endpoint.interface, mac = %endpoint.mac, "endpoint added");
        Ok(())
    }

    /// Attaches `from_pod` to the veth and writes the endpoint.
    fn register(
        &mut self,
        endpoint: &EndpointSpec,
        interface: &Interface,
    ) -> Result<(), DataplaneError> {
        self.dataplane
            .add_endpoint(endpoint.ip, interface, endpoint.mac.into_array())
    }

    /// An operator's or the CNI plugin's removal: whichever source listed it.
    pub(super) fn remove_endpoint(
        &mut self,
        ip: IpAddr,
        host_ifindex: Option<u32>,
    ) -> anyhow::Result<bool> {
        if let Some(expected) = host_ifindex
            && self
                .dataplane
                .endpoint(ip)
                .is_some_and(|endpoint| endpoint.host_ifindex != expected)
        {
            info!(%ip, ifindex = expected, "endpoint kept: it belongs to another veth now");
            return Ok(false);
        }
        let removed = self.dataplane.remove_endpoint(ip)?;
        self.endpoint_sources.forget(ip);
        self.bind_pod(ip, None);
        self.program_policies_or_retry();
        info!(%ip, removed, "endpoint removed");
        Ok(removed)
    }

    pub(super) fn interface_removed(&mut self, ifindex: u32) -> anyhow::Result<()> {
        for ip in self.dataplane.endpoints_behind(ifindex) {
            self.dataplane.remove_endpoint(ip)?;
            self.endpoint_sources.forget(ip);
            self.bind_pod(ip, None);
            info!(%ip, ifindex, "endpoint removed: its veth is gone");
        }
        self.program_policies_or_retry();
        Ok(())
    }

    /// Re-attaches to endpoints left in the pinned map by a previous agent;
    /// drops entries whose veth is gone (pod deleted while the agent was down).
    pub async fn adopt_pinned_endpoints(&mut self) -> anyhow::Result<()> {
        for (ip, endpoint) in self.dataplane.endpoints()? {
            match self.interfaces.by_index(endpoint.host_ifindex).await? {
                Some(interface) => {
                    self.dataplane
                        .add_endpoint(ip, &interface, endpoint.pod_mac)?;
                    self.endpoint_sources.list(ip, Source::Pinned);
                    info!(%ip, interface = %interface.name, "adopted pinned endpoint");
                }
                None => {
                    self.dataplane.remove_endpoint(ip)?;
                    warn!(%ip, ifindex = endpoint.host_ifindex, "removed pinned endpoint whose veth is gone");
                }
            }
        }
        Ok(())
    }
}
