//! The owner's Services: checking and programming them, the frontends an
//! earlier agent left, and the listings.

use std::collections::BTreeMap;

use dataplane_common::service_flags;
use ipnetwork::{Ipv4Network, Ipv6Network};
use tracing::{info, warn};

use super::Owner;
use crate::{
    api::{FrontendEntry, ServiceEntry},
    dataplane::Dataplane,
    interfaces::HostLinks,
    maps::{backend_address, frontend_of},
    model::{
        Frontend, Refusal, Scope, ServicePort, ServiceSpec, Services, ServingNode, Source,
        Violation,
    },
};

impl<L: HostLinks> Owner<L> {
    /// Writes the frontends whose backends changed, and tells the programs
    /// whether to look at Services at all.
    pub(super) fn program_services(&mut self, changed: &[Frontend]) -> anyhow::Result<()> {
        let written = self
            .reconciler
            .write_services(&mut self.dataplane, &self.services, changed);
        let checks = self.services.health_checks();
        self.health_checks.send_if_modified(|current| {
            let changed = *current != checks;
            *current = checks;
            changed
        });
        self.write_node_config()?;
        written
    }

    /// A Service's own rules: its address stays out of the pod addresses.
    pub(super) fn checked_service(&self, service: &ServiceSpec) -> anyhow::Result<()> {
        let settings = &self.facts.settings;
        let pod_cidrs: Vec<Ipv4Network> = settings
            .cluster_cidr
            .into_iter()
            .chain(settings.pod_cidr)
            .collect();
        let node_ports = settings.node_port_range.min..=settings.node_port_range.max;
        service
            .validate(&pod_cidrs)
            .and_then(|()| service.validate_address(settings.node_ip, settings.service_cidr))
            .and_then(|()| service.validate_node_ports(node_ports))
            .map_err(|(field, problem)| {
                Refusal(format!(
                    "service {}: field `{field}`: {problem}",
                    service.name
                ))
                .into()
            })
    }

    /// `source` lists `service` (too). From Kubernetes, a Service that
    /// breaks a rule is refused on its own (warned, counted, listed with
    /// the reason; what it had is withdrawn); from the others, the change is.
    pub(super) fn upsert_service(
        &mut self,
        source: Source,
        service: ServiceSpec,
    ) -> anyhow::Result<()> {
        if let Err(error) = self.checked_service(&service) {
            if source == Source::Kubernetes {
                warn!(service = service.name, "service refused: {error:#}");
                let changed = self.services.refuse(source, service, format!("{error:#}"));
                self.program_services(&changed)?;
            }
            return Err(error);
        }
        let name = service.name.clone();
        let changed = self
            .services
            .upsert(source, service)
            .map_err(refused_service)?;
        self.warn_shadowed(source, &name);
        self.program_services(&changed)
    }

    /// Warns about the frontends of `source`'s Service `name` an older
    /// Service is served at.
    pub(super) fn warn_shadowed(&self, source: Source, name: &str) {
        let Some(service) = self.services.service(source, name) else {
            return;
        };
        for (frontend, served) in self.services.shadowed(source, service) {
            warn!(
                service = name,
                %frontend,
                served,
                "two Services claim one frontend: the older is served there"
            );
        }
    }

    /// `source` lists exactly `services`. A Service that breaks a rule
    /// refuses the whole list, except from Kubernetes, where it is refused
    /// on its own (one bad object must not hold up the others).
    pub(super) fn replace_services(
        &mut self,
        source: Source,
        services: Vec<ServiceSpec>,
    ) -> anyhow::Result<()> {
        let mut valid = Vec::with_capacity(services.len());
        let mut refused = Vec::new();
        for service in services {
            match self.checked_service(&service) {
                Ok(()) => valid.push(service),
                Err(error) if source == Source::Kubernetes => {
                    warn!(service = service.name, "service refused: {error:#}");
                    refused.push((service, format!("{error:#}")));
                }
                Err(error) => return Err(error),
            }
        }
        let names: Vec<String> = valid.iter().map(|service| service.name.clone()).collect();
        let mut changed = self
            .services
            .replace(source, valid)
            .map_err(refused_service)?;
        for (service, reason) in refused {
            changed.extend(self.services.refuse(source, service, reason));
        }
        for name in &names {
            self.warn_shadowed(source, name);
        }
        self.program_services(&changed)
    }

    pub(super) fn service_entries(&self) -> Vec<ServiceEntry> {
        let listed = self
            .services
            .list()
            .into_iter()
            .map(|(source, service)| ServiceEntry {
                source,
                service: service.clone(),
                shadowed: self
                    .services
                    .shadowed(source, service)
                    .into_iter()
                    .map(|(frontend, served)| format!("{frontend}: Service {served}'s (older)"))
                    .collect(),
                refused: None,
            });
        let refused = self
            .services
            .refused()
            .map(|(source, service, reason)| ServiceEntry {
                source,
                service: service.clone(),
                shadowed: Vec::new(),
                refused: Some(reason.to_string()),
            });
        listed.chain(refused).collect()
    }

    pub(super) fn frontend_entries(&self) -> (Vec<FrontendEntry>, usize) {
        let frontends = self
            .dataplane
            .programmed_services()
            .iter()
            .filter_map(|(key, programmed)| {
                Some(FrontendEntry {
                    frontend: frontend_of(key)?,
                    id: programmed.id,
                    backends: programmed.backends.iter().map(backend_address).collect(),
                })
            })
            .collect();
        (frontends, self.service_tables.last().connection_halves)
    }

    pub(super) fn set_local_node(
        &mut self,
        pod_cidr: Ipv4Network,
        pod_cidr_ipv6: Option<Ipv6Network>,
        zone: Option<String>,
    ) -> anyhow::Result<()> {
        let settings = &mut self.facts.settings;
        // A Node's pod CIDRs never change once given; an IPv6 one the
        // config gave stays when the Node has none.
        let pod_cidr_ipv6 = pod_cidr_ipv6.or(settings.pod_cidr_ipv6);
        if settings.pod_cidr != Some(pod_cidr) || settings.pod_cidr_ipv6 != pod_cidr_ipv6 {
            settings.pod_cidr = Some(pod_cidr);
            settings.pod_cidr_ipv6 = pod_cidr_ipv6;
            self.write_node_config()?;
            info!(%pod_cidr, pod_cidr_ipv6 = ?pod_cidr_ipv6, "this node's pod CIDRs");
        }
        // Which backends are this node's (the Local traffic policies), and
        // which are close (topology-aware routing).
        let changed = self.services.serve_on(ServingNode {
            ip: self.facts.settings.node_ip,
            pod_cidr: Some(pod_cidr),
            zone,
        });
        self.program_services(&changed)
    }
}

/// A Service change the rules refused.
fn refused_service((field, problem): Violation) -> anyhow::Error {
    Refusal(format!("field `{field}`: {problem}")).into()
}

/// The frontends an earlier agent programmed, kept (as [`Source::Pinned`],
/// one Service per frontend) until a source names them: connections to
/// Services keep working across a restart.
pub(super) fn pinned_services(dataplane: &Dataplane, node: ServingNode) -> Services {
    let mut services = Services::on_node(node);
    for (key, programmed) in dataplane.programmed_services() {
        let Some(frontend) = frontend_of(key) else {
            warn!(
                ?key,
                "pinned service map: a protocol no agent writes; dropped"
            );
            continue;
        };
        // An outside-local entry comes back with its frontend's.
        if frontend.scope != Scope::Everyone {
            continue;
        }
        let outside_local = programmed.flags & service_flags::OUTSIDE_LOCAL != 0;
        let ranged = programmed.flags & service_flags::SOURCE_RANGES != 0;
        let service = ServiceSpec {
            name: frontend.to_string(),
            ip: frontend.ip,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            source_ranges: programmed.source_ranges.clone(),
            external_traffic_local: outside_local,
            internal_traffic_local: false,
            health_check_node_port: None,
            address_is_external: outside_local || ranged,
            ports: vec![ServicePort {
                node_port: None,
                port: frontend.port,
                protocol: frontend.protocol,
                backends: programmed.backends.iter().map(backend_address).collect(),
                terminating_backends: Vec::new(),
                zone_hints: BTreeMap::new(),
            }],
            session_affinity_seconds: (programmed.affinity_seconds != 0)
                .then_some(programmed.affinity_seconds),
            created: None,
        };
        // One frontend per Service, each named by it: they cannot collide.
        let _ = services.upsert(Source::Pinned, service);
    }
    services
}
