//! The Services of every source together: which Service is served at each
//! frontend, what each source contributed, and what a change touches.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    sync::Arc,
};

use super::{
    Source, Violation,
    services::{Frontend, FrontendTarget, HealthCheck, Seniority, ServiceSpec, ServingNode},
};

/// The Services each source lists, and the frontends they make together.
/// Within the config file or the API, two Services cannot share a
/// frontend (the change is refused); within Kubernetes, where any tenant
/// may create such a pair, the older Service is served at the frontend and
/// the younger one everywhere else (kube-proxy programs both, and the
/// first rule wins). Between sources, each frontend is taken from the
/// highest-ranking source that has it (as remote nodes are), so Services
/// found pinned at start-up give way to any source that names the same
/// frontend. A change costs in proportion to the frontends it touches, not
/// to all of them.
#[derive(Debug, Clone, Default)]
pub struct Services {
    node: ServingNode,
    /// Boxed: B-tree nodes filled in order are half empty, and a Service
    /// is 160 bytes.
    contributed: BTreeMap<Source, BTreeMap<String, Box<ServiceSpec>>>,
    /// Each source's frontends: the Services claiming each, by seniority,
    /// and where each would lead (the first is served).
    by_source: BTreeMap<Source, BTreeMap<Frontend, Claims>>,
    /// Services a source listed that break a rule, with the reason: not
    /// programmed, shown in the list.
    refused: BTreeMap<(Source, String), (ServiceSpec, String)>,
    /// Each frontend's target, shared with the claim served there.
    effective: BTreeMap<Frontend, Arc<FrontendTarget>>,
    /// The Services with a health check port (external traffic policy
    /// Local), in ranking order: each change looks at these, not at all.
    health_checked: BTreeSet<(Source, String)>,
}

impl Services {
    /// No Services yet, served on `node`.
    pub fn on_node(node: ServingNode) -> Self {
        Self {
            node,
            ..Self::default()
        }
    }

    /// Serves the Services on `node` from now on (its pod CIDR may come
    /// late, from Kubernetes); returns the frontends that changed.
    pub fn serve_on(&mut self, node: ServingNode) -> Vec<Frontend> {
        if node == self.node {
            return Vec::new();
        }
        self.node = node;
        let node = &self.node;
        let mut touched: Vec<Frontend> = self.effective.keys().copied().collect();
        for (source, services) in &self.contributed {
            let claimed = self.by_source.entry(*source).or_default();
            claimed.clear();
            for service in services.values() {
                for (frontend, target) in service.frontends(node) {
                    claimed
                        .entry(frontend)
                        .or_default()
                        .insert(service.seniority(), target);
                    touched.push(frontend);
                }
            }
        }
        self.settle(touched)
    }

    /// The health check ports of the Services with external traffic policy
    /// Local, by port (a port two Services name goes to the higher-ranking
    /// source's, then the first by name).
    pub fn health_checks(&self) -> BTreeMap<u16, HealthCheck> {
        let mut checks = BTreeMap::new();
        for (source, name) in &self.health_checked {
            let Some(service) = self.contributed.get(source).and_then(|of| of.get(name)) else {
                continue;
            };
            let Some(port) = service.health_check_node_port else {
                continue;
            };
            let local: BTreeSet<Ipv4Addr> = service
                .ports
                .iter()
                .flat_map(|port| &port.backends)
                .filter(|backend| self.node.has(backend))
                .map(|backend| *backend.ip())
                .collect();
            checks.entry(port).or_insert_with(|| HealthCheck {
                service: service.name.clone(),
                local_endpoints: local.len(),
            });
        }
        checks
    }

    /// Every frontend in effect and where it leads.
    pub fn frontends(&self) -> &BTreeMap<Frontend, Arc<FrontendTarget>> {
        &self.effective
    }

    /// Every Service of every source.
    pub fn list(&self) -> Vec<(Source, &ServiceSpec)> {
        self.contributed
            .iter()
            .flat_map(|(source, services)| {
                services.values().map(|service| (*source, service.as_ref()))
            })
            .collect()
    }

    /// `source`'s Service `name`, if it lists one.
    pub fn service(&self, source: Source, name: &str) -> Option<&ServiceSpec> {
        self.contributed.get(&source)?.get(name).map(Box::as_ref)
    }

    /// The frontends of `source`'s `service` an older Service of the same
    /// source is served at instead, each with that Service's name.
    pub fn shadowed(&self, source: Source, service: &ServiceSpec) -> Vec<(Frontend, String)> {
        let Some(claimed) = self.by_source.get(&source) else {
            return Vec::new();
        };
        service
            .frontend_keys()
            .filter_map(|frontend| {
                let ((_, served), _) = claimed.get(&frontend)?.first()?;
                (*served != service.name).then(|| (frontend, served.clone()))
            })
            .collect()
    }

    /// How many claims on frontends are not served (a Service claims a
    /// frontend an older one of its source is served at).
    pub fn shadowed_claims(&self) -> usize {
        self.by_source
            .values()
            .flat_map(BTreeMap::values)
            .map(|claims| claims.0.len() - 1)
            .sum()
    }

    /// Records that `source`'s `service` breaks a rule (`reason`): it is
    /// not programmed (what it had is withdrawn); returns the frontends
    /// that changed.
    pub fn refuse(
        &mut self,
        source: Source,
        service: ServiceSpec,
        reason: String,
    ) -> Vec<Frontend> {
        let touched = self.take_out(source, &service.name);
        self.refused
            .insert((source, service.name.clone()), (service, reason));
        self.settle(touched)
    }

    /// The Services refused, with their reasons.
    pub fn refused(&self) -> impl Iterator<Item = (Source, &ServiceSpec, &str)> {
        self.refused
            .iter()
            .map(|((source, _), (service, reason))| (*source, service, reason.as_str()))
    }

    /// `source` lists `service` (too), replacing its earlier entry of that
    /// name. Returns the frontends whose backends changed.
    pub fn upsert(
        &mut self,
        source: Source,
        service: ServiceSpec,
    ) -> Result<Vec<Frontend>, Violation> {
        if let Some(claimed) = self.by_source.get(&source)
            && source != Source::Kubernetes
        {
            for frontend in service.frontend_keys() {
                if let Some((_, owner)) = claimed
                    .get(&frontend)
                    .into_iter()
                    .flat_map(|claims| claims.0.iter().map(|(seniority, _)| seniority))
                    .find(|(_, owner)| *owner != service.name)
                {
                    return Err(conflict(frontend, &service.name, owner));
                }
            }
        }
        let mut touched = self.take_out(source, &service.name);
        touched.extend(self.put_in(source, service));
        Ok(self.settle(touched))
    }

    /// `source` lists exactly `services` now. All or nothing.
    pub fn replace(
        &mut self,
        source: Source,
        services: Vec<ServiceSpec>,
    ) -> Result<Vec<Frontend>, Violation> {
        let mut claimed: BTreeMap<Frontend, &str> = BTreeMap::new();
        let mut names = BTreeSet::new();
        for service in &services {
            if !names.insert(service.name.as_str()) {
                return Err(("name", format!("Service {} is listed twice", service.name)));
            }
            if source == Source::Kubernetes {
                continue;
            }
            for frontend in service.frontend_keys() {
                if let Some(owner) = claimed.insert(frontend, &service.name) {
                    return Err(conflict(frontend, &service.name, owner));
                }
            }
        }
        self.refused.retain(|(from, _), _| *from != source);
        let gone: Vec<String> = self
            .contributed
            .get(&source)
            .into_iter()
            .flat_map(BTreeMap::keys)
            .filter(|name| !names.contains(name.as_str()))
            .cloned()
            .collect();
        let mut touched = Vec::new();
        for name in gone {
            touched.extend(self.take_out(source, &name));
        }
        // Unchanged Services stay as they are: a relisting of thousands
        // rebuilds nothing (time, and memory churned into fragments).
        for service in services {
            if self.service(source, &service.name) != Some(&service) {
                touched.extend(self.take_out(source, &service.name));
                touched.extend(self.put_in(source, service));
            }
        }
        Ok(self.settle(touched))
    }

    /// `source` (`None`: every source) no longer lists the Service `name`;
    /// returns the frontends that changed (none: no such Service).
    pub fn withdraw(&mut self, source: Option<Source>, name: &str) -> Vec<Frontend> {
        let mut touched = Vec::new();
        for from in Source::ALL {
            if source.is_none_or(|source| source == from) {
                touched.extend(self.take_out(from, name));
            }
        }
        self.settle(touched)
    }

    /// Removes `source`'s Service `name` (and its refusal); returns its
    /// frontends.
    fn take_out(&mut self, source: Source, name: &str) -> Vec<Frontend> {
        self.refused.remove(&(source, name.to_string()));
        let Some(service) = self
            .contributed
            .get_mut(&source)
            .and_then(|services| services.remove(name))
        else {
            return Vec::new();
        };
        self.health_checked.remove(&(source, name.to_string()));
        let claimed = self.by_source.entry(source).or_default();
        let seniority = service.seniority();
        service
            .frontend_keys()
            .inspect(|frontend| {
                if let Some(claims) = claimed.get_mut(frontend) {
                    claims.remove(&seniority);
                    if claims.0.is_empty() {
                        claimed.remove(frontend);
                    }
                }
            })
            .collect()
    }

    /// Adds `source`'s Service; returns its frontends.
    fn put_in(&mut self, source: Source, service: ServiceSpec) -> Vec<Frontend> {
        let claimed = self.by_source.entry(source).or_default();
        let seniority = service.seniority();
        let frontends = service
            .frontends(&self.node)
            .map(|(frontend, target)| {
                claimed
                    .entry(frontend)
                    .or_default()
                    .insert(seniority.clone(), target);
                frontend
            })
            .collect();
        if service.health_check_node_port.is_some() && service.external_traffic_local {
            self.health_checked.insert((source, service.name.clone()));
        }
        self.contributed
            .entry(source)
            .or_default()
            .insert(service.name.clone(), Box::new(service));
        frontends
    }

    /// Brings the effective entry of each `touched` frontend in line with
    /// its highest-ranking source; returns those that changed.
    fn settle(&mut self, mut touched: Vec<Frontend>) -> Vec<Frontend> {
        touched.sort_unstable();
        touched.dedup();
        touched.retain(|frontend| {
            let winner = Source::ALL.iter().find_map(|source| {
                let (_, target) = self.by_source.get(source)?.get(frontend)?.first()?;
                Some(target.clone())
            });
            if self.effective.get(frontend) == winner.as_ref() {
                return false;
            }
            match winner {
                Some(target) => self.effective.insert(*frontend, target),
                None => self.effective.remove(frontend),
            };
            true
        });
        touched
    }
}

fn conflict(frontend: Frontend, name: &str, owner: &str) -> Violation {
    (
        "ports",
        format!("{frontend} of Service {name} is already Service {owner}'s"),
    )
}

/// The Services of one source claiming a frontend, the most senior first:
/// nearly always one, so a sorted vector (a B-tree node has room for
/// eleven, a kilobyte per frontend at 30,000 Services).
#[derive(Debug, Clone, Default)]
struct Claims(Vec<(Seniority, Arc<FrontendTarget>)>);

impl Claims {
    /// Adds the claim of the Service of `seniority`, or replaces it.
    fn insert(&mut self, seniority: Seniority, target: FrontendTarget) {
        let target = Arc::new(target);
        match self.0.binary_search_by(|(claim, _)| claim.cmp(&seniority)) {
            Ok(position) => self.0[position].1 = target,
            Err(position) => {
                // One claim is the rule: no room for four.
                self.0.reserve_exact(1);
                self.0.insert(position, (seniority, target));
            }
        }
    }

    fn remove(&mut self, seniority: &Seniority) {
        if let Ok(position) = self.0.binary_search_by(|(claim, _)| claim.cmp(seniority)) {
            self.0.remove(position);
        }
    }

    /// The claim served.
    fn first(&self) -> Option<&(Seniority, Arc<FrontendTarget>)> {
        self.0.first()
    }
}
