//! ADD: find the pod's veth, register its addresses, lower the MTUs; undo
//! everything when a step fails.

use super::*;

/// The pod's interface and its veth peer on the node, as found (unchanged).
pub(super) struct PodVeth {
    pub netns: String,
    pub pod: Interface,
    pub host: Interface,
}

/// Everything an ADD changed so far, to be undone if a later step fails.
#[derive(Default)]
pub(super) struct Changes {
    registered: Vec<IpAddr>,
    host_ifindex: u32,
    /// (netns of the interface or `None` for the node's, interface, MTU before).
    mtus: Vec<(Option<String>, Interface, u32)>,
}

impl Changes {
    fn undo(self, conf: &NetConf) {
        for ip in self.registered {
            let _ = agent_call(
                conf,
                &Request::RemoveEndpoint {
                    ip,
                    host_ifindex: Some(self.host_ifindex),
                },
            );
        }
        for (netns, interface, mtu) in self.mtus {
            let _ = set_mtu(netns.as_deref(), interface, mtu);
        }
    }
}

pub(super) fn add(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<String> {
    // Validate everything first: nothing below changes anything until the
    // agent has accepted the endpoints.
    let attachment = attachment_of(environment)?;
    let netns = required(environment, "CNI_NETNS")?;
    let Some(prev_result) = &conf.prev_result else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "dataplane-cni is a chained plugin: prevResult is missing (list it after a main \
             plugin such as ptp or bridge in the conflist)",
        ));
    };
    let ips: Vec<IpAddr> = result_addresses(prev_result).collect();
    if ips.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult has no address for the pod",
        ));
    }
    let record_path = record_path(conf, &attachment);
    let Response::Status { status } = agent_call(conf, &Request::Status)? else {
        return Err(CniError::new(
            code::IO_FAILURE,
            "unexpected answer to a status request",
        ));
    };
    check_ipv6_served(&ips, status.pod_cidr_ipv6)?;
    let veth = find_veth(&netns, &attachment.ifname)?;

    let mut changes = Changes {
        host_ifindex: veth.host.index,
        ..Changes::default()
    };
    let pod = pod_name(environment);
    let applied = apply(conf, &veth, &ips, pod, status.pod_mtu, &mut changes).and_then(|mtus| {
        write_record(
            &record_path,
            &AttachmentRecord {
                ips: ips.clone(),
                host_interface: veth.host.name.clone(),
                host_ifindex: Some(veth.host.index),
            },
        )
        .map(|()| mtus)
    });
    let (pod_mtu, host_mtu) = match applied {
        Ok(mtus) => mtus,
        Err(error) => {
            changes.undo(conf);
            return Err(error);
        }
    };

    let mut result = prev_result.clone();
    result["cniVersion"] = Value::from(conf.cni_version.clone());
    if parse_version(&conf.cni_version) >= Some((1, 1, 0)) {
        report_mtus(&mut result, &veth, pod_mtu, host_mtu);
    }
    Ok(result.to_string())
}

/// Refuses a pod an IPv6 address the node does not serve: outside its IPv6
/// pod CIDR, or any when it has none (its IPv6 would be dropped while ADD
/// and CHECK succeed: a pod half working, silently).
pub(super) fn check_ipv6_served(
    ips: &[IpAddr],
    pod_cidr_ipv6: Option<ipnetwork::Ipv6Network>,
) -> CniResult<()> {
    for ip in ips {
        let IpAddr::V6(ipv6) = ip else { continue };
        let problem = match pod_cidr_ipv6 {
            None => "this node has no IPv6 pod CIDR (node.pod_cidr_ipv6, or its Node's \
                     spec.podCIDRs), so its IPv6 traffic would be dropped; give the node one, \
                     or configure the IPAM plugin with IPv4 ranges only"
                .to_string(),
            Some(cidr) if !cidr.contains(*ipv6) => format!(
                "it is outside this node's IPv6 pod CIDR {cidr}; configure the IPAM plugin's \
                 IPv6 range inside it"
            ),
            Some(_) => continue,
        };
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("prevResult gives the pod the IPv6 address {ipv6}: {problem}"),
        ));
    }
    Ok(())
}

/// The Kubernetes pod the runtime names in `CNI_ARGS`
/// (`K8S_POD_NAMESPACE=...;K8S_POD_NAME=...`), if it does.
pub(super) fn pod_name(environment: &HashMap<String, String>) -> Option<PodName> {
    let args = environment.get("CNI_ARGS")?;
    let arg = |wanted: &str| {
        args.split(';')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, value)| *key == wanted && !value.is_empty())
            .map(|(_, value)| value.to_string())
    };
    Some(PodName {
        namespace: arg("K8S_POD_NAMESPACE")?,
        name: arg("K8S_POD_NAME")?,
    })
}

/// Registers the endpoints, then lowers the MTUs; every change is noted in
/// `changes` as it is made. Returns the pod's and the host veth's MTU.
pub(super) fn apply(
    conf: &NetConf,
    veth: &PodVeth,
    ips: &[IpAddr],
    pod: Option<PodName>,
    pod_mtu: Option<u32>,
    changes: &mut Changes,
) -> CniResult<(u32, u32)> {
    for ip in ips {
        let endpoint = EndpointSpec {
            ip: *ip,
            // The index the plugin already has: the agent need not look the
            // name up again, and a name reused meanwhile cannot mislead it.
            interface: HostInterface::Index(veth.host.index),
            mac: MacAddr6::from(veth.pod.mac),
            pod: pod.clone(),
        };
        agent_call(conf, &Request::AddEndpoint { endpoint })?;
        changes.registered.push(*ip);
    }
    let mut lower = |netns: Option<&str>, interface: &Interface| -> CniResult<u32> {
        match pod_mtu.filter(|mtu| interface.mtu > *mtu) {
            Some(mtu) => {
                changes
                    .mtus
                    .push((netns.map(str::to_string), interface.clone(), interface.mtu));
                set_mtu(netns, interface.clone(), mtu)?;
                Ok(mtu)
            }
            None => Ok(interface.mtu),
        }
    };
    let pod = lower(Some(&veth.netns), &veth.pod)?;
    let host = lower(None, &veth.host)?;
    Ok((pod, host))
}

/// Spec 1.1.0 results carry each interface's MTU: report what is set now.
pub(super) fn report_mtus(result: &mut Value, veth: &PodVeth, pod_mtu: u32, host_mtu: u32) {
    let Some(interfaces) = result["interfaces"].as_array_mut() else {
        return;
    };
    for interface in interfaces {
        let sandbox = interface["sandbox"].as_str().unwrap_or_default();
        let name = interface["name"].as_str().unwrap_or_default();
        if name == veth.pod.name && sandbox == veth.netns {
            interface["mtu"] = Value::from(pod_mtu);
        } else if name == veth.host.name && sandbox.is_empty() {
            interface["mtu"] = Value::from(host_mtu);
        }
    }
}

/// Finds `ifname` in the pod's namespace and its veth peer in ours; changes
/// nothing.
pub(super) fn find_veth(netns: &str, ifname: &str) -> CniResult<PodVeth> {
    let wanted = ifname.to_string();
    let label = netns.to_string();
    let pod = in_netns(Some(netns), move |interfaces| async move {
        interfaces
            .by_name(&wanted)
            .await
            .map_err(io_failure)?
            .ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("interface {wanted} does not exist in {label}"),
                )
            })
    })?;
    let peer_index = pod.peer_index.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{ifname} in the pod is not a veth: the dataplane needs a veth pair"),
        )
    })?;
    let host = in_netns(None, move |interfaces| async move {
        interfaces
            .by_index(peer_index)
            .await
            .map_err(io_failure)?
            .ok_or_else(|| {
                CniError::new(
                    code::INVALID_CONFIG,
                    "the pod's veth peer is not in the node's network namespace",
                )
            })
    })?;
    Ok(PodVeth {
        netns: netns.to_string(),
        pod,
        host,
    })
}

pub(super) fn set_mtu(netns: Option<&str>, interface: Interface, mtu: u32) -> CniResult<()> {
    in_netns(netns, move |interfaces| async move {
        interfaces
            .set_mtu(&interface, mtu)
            .await
            .map_err(io_failure)
    })
}

pub(super) fn io_failure(error: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, "netlink request failed").with_details(error)
}

/// Runs `work` with a netlink connection in the network namespace at
/// `netns`, or in ours.
pub(super) fn in_netns<T, F>(
    netns: Option<&str>,
    work: impl FnOnce(Interfaces) -> F + Send + 'static,
) -> CniResult<T>
where
    T: Send + 'static,
    F: Future<Output = CniResult<T>>,
{
    let Some(netns) = netns else {
        return with_netlink(work);
    };
    crate::netns::run_in(Path::new(netns), move || with_netlink(work)).map_err(|error| {
        let code = match error {
            NetnsError::Open(..) | NetnsError::Enter(..) => code::UNKNOWN_CONTAINER,
            NetnsError::Panicked(_) => code::IO_FAILURE,
        };
        CniError::new(code, format!("CNI_NETNS {netns} cannot be entered")).with_details(error)
    })?
}

/// Runs `work` with a netlink connection in the calling thread's namespace.
pub(super) fn with_netlink<T, F>(work: impl FnOnce(Interfaces) -> F) -> CniResult<T>
where
    F: Future<Output = CniResult<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_failure)?;
    runtime.block_on(async {
        let interfaces = Interfaces::connect().map_err(io_failure)?;
        work(interfaces).await
    })
}
