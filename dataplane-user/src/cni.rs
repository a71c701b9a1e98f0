//! `dataplane-cni`: a chained CNI plugin (spec 0.3.0 to 1.1.0). It runs after
//! a main plugin (ptp, bridge, ...) that created the pod's veth and assigned
//! its address, and attaches the pod to the dataplane: it registers the
//! endpoint with the agent, applies the pod MTU the tunnel needs, and returns
//! the previous result (with the MTUs it set, at 1.1.0).
//!
//! ADD validates everything before it changes anything, and undoes all of its
//! changes when a later step fails. What an attachment programmed is kept in
//! a record per (network, container, interface), written durably once ADD
//! has fully succeeded, so DEL, CHECK and GC know exactly what to undo or
//! verify, and touch nothing of other networks or other pods.

use std::{
    collections::HashMap,
    fs::File,
    io::{ErrorKind, Write as _},
    net::Ipv4Addr,
    os::{fd::AsFd as _, unix::fs::FileTypeExt as _},
    path::{Path, PathBuf},
};

use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    api::{self, EndpointEntry, Request, Response},
    config::DEFAULT_API_SOCKET,
    interfaces::{Interface, Interfaces},
    model::{EndpointSpec, HostInterface},
};

pub const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
const DEFAULT_DATA_DIR: &str = "/var/lib/cni/dataplane";

/// The well-known CNI error codes this plugin uses, and one of its own.
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_READY: u32 = 50;
    /// CHECK found the attachment not programmed as expected.
    pub const NOT_PROGRAMMED: u32 = 100;
}

/// A CNI error result: printed on stdout, with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    fn with_details(mut self, details: impl std::fmt::Display) -> Self {
        self.details = details.to_string();
        self
    }
}

type CniResult<T> = Result<T, CniError>;

/// The network configuration on stdin. Keys the spec defines for every
/// plugin are accepted (and those this plugin has no use for ignored);
/// anything else is a mistake worth an error, not a silent default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    name: String,
    #[serde(rename = "type")]
    _type: Option<String>,
    /// The agent's API socket.
    #[serde(default = "default_socket")]
    socket: PathBuf,
    /// Where attachment records live (one directory per network).
    #[serde(rename = "dataDir", default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(rename = "runtimeConfig")]
    _runtime_config: Option<Value>,
    #[serde(rename = "args")]
    _args: Option<Value>,
    #[serde(rename = "capabilities")]
    _capabilities: Option<Value>,
    #[serde(rename = "dns")]
    _dns: Option<Value>,
}

fn default_socket() -> PathBuf {
    DEFAULT_API_SOCKET.into()
}

fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}

/// One pod interface of one container, in one network.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// What one attachment programmed.
#[derive(Debug, Serialize, Deserialize)]
struct AttachmentRecord {
    ips: Vec<Ipv4Addr>,
    host_interface: String,
    /// The host veth's index: removals apply only while an address is still
    /// registered behind it. Absent in records of earlier versions.
    #[serde(default)]
    host_ifindex: Option<u32>,
}

/// The version a command first appeared in, as the reference `skel` checks it.
fn minimum_version(command: &str) -> (u32, u32, u32) {
    match command {
        "CHECK" => (0, 4, 0),
        "GC" | "STATUS" => (1, 1, 0),
        _ => (0, 3, 0),
    }
}

fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)), None) => Some((major, minor, patch)),
        _ => None,
    }
}

/// Runs one plugin invocation: `environment` holds the CNI_* variables,
/// `stdin` the network configuration. `Ok` carries what to print, if anything.
pub fn run(environment: &HashMap<String, String>, stdin: &str) -> CniResult<Option<String>> {
    let command = required(environment, "CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(version_output(stdin)));
    }
    let conf = parse_conf(stdin)?;
    let version = parse_version(&conf.cni_version)
        .filter(|_| SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()))
        .ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {} is not supported (supported: {})",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })?;
    if version < minimum_version(&command) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "config version {} does not allow {command}",
                conf.cni_version
            ),
        ));
    }
    match command.as_str() {
        "ADD" => add(environment, &conf).map(Some),
        "DEL" => delete(environment, &conf).map(|()| None),
        "CHECK" => check(environment, &conf).map(|()| None),
        "GC" => collect_garbage(&conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        )),
    }
}

/// Not JSON is a decoding failure (6); JSON that is not a valid configuration
/// for this plugin is an invalid configuration (7).
fn parse_conf(stdin: &str) -> CniResult<NetConf> {
    let value: Value = serde_json::from_str(stdin).map_err(|error| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration on stdin",
        )
        .with_details(error)
    })?;
    let conf: NetConf = serde_json::from_value(value).map_err(|error| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {error}"),
        )
    })?;
    if !is_valid_identifier(&conf.name) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "network name {:?} must start with a letter or digit, followed by letters, \
                 digits, '_', '.' or '-'",
                conf.name
            ),
        ));
    }
    Ok(conf)
}

/// The spec's rule for container IDs and network names.
fn is_valid_identifier(text: &str) -> bool {
    let mut characters = text.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && characters.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The spec's (and the kernel's) rule for interface names.
fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

fn required(environment: &HashMap<String, String>, name: &str) -> CniResult<String> {
    environment
        .get(name)
        .filter(|value| !value.is_empty())
        .cloned()
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, format!("{name} is not set")))
}

/// The attachment the environment names; both parts validated, since they
/// become a file name.
fn attachment_of(environment: &HashMap<String, String>) -> CniResult<Attachment> {
    let container_id = required(environment, "CNI_CONTAINERID")?;
    if !is_valid_identifier(&container_id) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_CONTAINERID {container_id:?} must start with a letter or digit, followed \
                 by letters, digits, '_', '.' or '-'"
            ),
        ));
    }
    let ifname = required(environment, "CNI_IFNAME")?;
    if !is_valid_interface_name(&ifname) {
        return Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!(
                "CNI_IFNAME {ifname:?} is not a valid interface name (1 to 15 characters, no \
                 '/', ':' or whitespace, not '.' or '..')"
            ),
        ));
    }
    Ok(Attachment {
        container_id,
        ifname,
    })
}

fn version_output(stdin: &str) -> String {
    let requested = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|conf| conf["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1.1.0".into());
    serde_json::json!({"cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS})
        .to_string()
}

/// The IPv4 addresses of a CNI result (`"a.b.c.d/len"` strings).
fn ipv4_addresses(result: &Value) -> Vec<Ipv4Addr> {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
        .collect()
}

/// A socket setting that can never work is a configuration error (7), not a
/// reason to retry forever; a socket that is not there yet means the agent is
/// not up yet (11, when connecting).
fn check_socket(socket: &Path) -> CniResult<()> {
    let invalid = |problem: &str| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("socket {:?} {problem}", socket.display().to_string()),
        )
    };
    if !socket.is_absolute() {
        return Err(invalid("must be an absolute path"));
    }
    match std::fs::metadata(socket) {
        Ok(metadata) if metadata.file_type().is_socket() => Ok(()),
        Ok(metadata) if metadata.is_dir() => Err(invalid("is a directory, not a socket")),
        Ok(_) => Err(invalid("is not a socket")),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(()),
        Err(error) if error.raw_os_error() == Some(nix::libc::ENOTDIR) => {
            Err(invalid("lies under a file that is not a directory"))
        }
        Err(error) => Err(invalid("cannot be inspected").with_details(error)),
    }
}

fn agent_call(conf: &NetConf, request: &Request) -> CniResult<Response> {
    check_socket(&conf.socket)?;
    let response = api::call(&conf.socket, request).map_err(|error| {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the dataplane agent is not reachable at {}",
                conf.socket.display()
            ),
        )
        .with_details(format!("{error:#}"))
    })?;
    match response {
        Response::Error { message } => Err(CniError::new(
            code::INVALID_CONFIG,
            format!("the dataplane agent refused: {message}"),
        )),
        response => Ok(response),
    }
}

/// The pod's interface and its veth peer on the node, as found (unchanged).
struct PodVeth {
    netns: String,
    pod: Interface,
    host: Interface,
}

/// Everything an ADD changed so far, to be undone if a later step fails.
#[derive(Default)]
struct Changes {
    registered: Vec<Ipv4Addr>,
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

fn add(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<String> {
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
    let ips = ipv4_addresses(prev_result);
    if ips.is_empty() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "prevResult has no IPv4 address for the pod",
        ));
    }
    let record_path = record_path(conf, &attachment);
    let Response::Status { status } = agent_call(conf, &Request::Status)? else {
        return Err(CniError::new(
            code::IO_FAILURE,
            "unexpected answer to a status request",
        ));
    };
    let veth = find_veth(&netns, &attachment.ifname)?;

    let mut changes = Changes {
        host_ifindex: veth.host.index,
        ..Changes::default()
    };
    let applied = apply(conf, &veth, &ips, status.pod_mtu, &mut changes).and_then(|mtus| {
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

/// Registers the endpoints, then lowers the MTUs; every change is noted in
/// `changes` as it is made. Returns the pod's and the host veth's MTU.
fn apply(
    conf: &NetConf,
    veth: &PodVeth,
    ips: &[Ipv4Addr],
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
fn report_mtus(result: &mut Value, veth: &PodVeth, pod_mtu: u32, host_mtu: u32) {
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
fn find_veth(netns: &str, ifname: &str) -> CniResult<PodVeth> {
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

fn set_mtu(netns: Option<&str>, interface: Interface, mtu: u32) -> CniResult<()> {
    in_netns(netns, move |interfaces| async move {
        interfaces
            .set_mtu(&interface, mtu)
            .await
            .map_err(io_failure)
    })
}

fn io_failure(error: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, "netlink request failed").with_details(error)
}

/// Runs `work` with a netlink connection in the network namespace at
/// `netns` (on a thread of its own, which alone enters it), or in ours.
fn in_netns<T, F>(
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
    let namespace = File::open(netns).map_err(|error| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {netns} cannot be opened"),
        )
        .with_details(error)
    })?;
    let label = netns.to_string();
    std::thread::spawn(move || {
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
            |error| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("CNI_NETNS {label} is not a network namespace"),
                )
                .with_details(error)
            },
        )?;
        with_netlink(work)
    })
    .join()
    .map_err(|_| CniError::new(code::IO_FAILURE, "netlink thread panicked"))?
}

/// Runs `work` with a netlink connection in the calling thread's namespace.
fn with_netlink<T, F>(work: impl FnOnce(Interfaces) -> F) -> CniResult<T>
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

/// `<dataDir>/<network>`: each network's records apart, so GC of one never
/// sees another's.
fn network_dir(conf: &NetConf) -> PathBuf {
    conf.data_dir.join(&conf.name)
}

/// `<dataDir>/<network>/<containerID>:<ifname>.json`; neither part can hold
/// a ':' or a '/' (both are validated).
fn record_path(conf: &NetConf, attachment: &Attachment) -> PathBuf {
    network_dir(conf).join(format!(
        "{}:{}.json",
        attachment.container_id, attachment.ifname
    ))
}

/// Where plugin versions before networks had directories kept the record.
fn legacy_record_path(conf: &NetConf, attachment: &Attachment) -> PathBuf {
    conf.data_dir.join(format!(
        "{}-{}.json",
        attachment.container_id, attachment.ifname
    ))
}

/// The attachment a record file name stands for.
fn attachment_of_record(file_name: &str) -> Option<Attachment> {
    let (container_id, ifname) = file_name.strip_suffix(".json")?.split_once(':')?;
    Some(Attachment {
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
    })
}

/// Writes the record durably: a temporary file, synced, renamed over the
/// record, and the directory synced, so after a power loss the record is
/// either whole or absent.
fn write_record(path: &Path, record: &AttachmentRecord) -> CniResult<()> {
    let failure = |error: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("cannot write {}", path.display()))
            .with_details(error)
    };
    let directory = path.parent().expect("records live in a directory");
    std::fs::create_dir_all(directory).map_err(failure)?;
    let temporary = path.with_extension("tmp");
    let mut file = File::create(&temporary).map_err(failure)?;
    file.write_all(&serde_json::to_vec(record).expect("records serialize"))
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&temporary, path))
        .and_then(|()| File::open(directory)?.sync_all())
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&temporary);
        })
        .map_err(failure)
}

/// What reading a record found.
enum Record {
    Absent,
    Found(AttachmentRecord),
    /// Present but unreadable or not a record (e.g. truncated by a crash).
    Unreadable(CniError),
}

/// No such file, or no such directory to hold it.
fn is_absent(error: &std::io::Error) -> bool {
    matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

fn read_record(path: &Path) -> Record {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(record) => Record::Found(record),
            Err(error) => Record::Unreadable(
                CniError::new(code::IO_FAILURE, format!("{} is corrupt", path.display()))
                    .with_details(error),
            ),
        },
        Err(error) if is_absent(&error) => Record::Absent,
        Err(error) => Record::Unreadable(
            CniError::new(code::IO_FAILURE, format!("cannot read {}", path.display()))
                .with_details(error),
        ),
    }
}

fn remove_record(path: &Path) -> CniResult<()> {
    match std::fs::remove_file(path) {
        Err(error) if !is_absent(&error) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot remove {}", path.display()),
        )
        .with_details(error)),
        _ => Ok(()),
    }
}

fn delete(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<()> {
    let attachment = attachment_of(environment)?;
    let netns = environment
        .get("CNI_NETNS")
        .filter(|netns| !netns.is_empty());
    release(conf, &attachment, netns.map(String::as_str))
}

/// Undoes an attachment. Idempotent: succeeds when the attachment, its
/// endpoints or the pod are gone. Also succeeds while the agent is down:
/// what stays in the map cannot misroute (it points at a veth that the main
/// plugin deletes next, so packets to it are dropped as stale), and the agent
/// removes it when it sees that veth go, or at its next start.
fn release(conf: &NetConf, attachment: &Attachment, netns: Option<&str>) -> CniResult<()> {
    let mut path = record_path(conf, attachment);
    let mut record = read_record(&path);
    if matches!(record, Record::Absent) {
        path = legacy_record_path(conf, attachment);
        record = read_record(&path);
    }
    match record {
        // ADD writes the record last: without one there is nothing to undo.
        Record::Absent => return Ok(()),
        Record::Found(record) => {
            for ip in record.ips {
                let removal = Request::RemoveEndpoint {
                    ip,
                    host_ifindex: record.host_ifindex,
                };
                ignore_agent_down(agent_call(conf, &removal))?;
            }
        }
        // Still clean up what can be found: the endpoints behind the veth.
        Record::Unreadable(_) => {
            if let Some(veth) = netns.and_then(|netns| find_veth(netns, &attachment.ifname).ok()) {
                remove_endpoints_behind(conf, veth.host.index)?;
            }
        }
    }
    remove_record(&path)
}

fn ignore_agent_down(result: CniResult<Response>) -> CniResult<()> {
    match result {
        Err(error) if error.code == code::TRY_AGAIN_LATER => Ok(()),
        other => other.map(drop),
    }
}

fn remove_endpoints_behind(conf: &NetConf, host_ifindex: u32) -> CniResult<()> {
    let endpoints = match list_endpoints(conf) {
        Err(error) if error.code == code::TRY_AGAIN_LATER => return Ok(()),
        listed => listed?,
    };
    for endpoint in endpoints
        .iter()
        .filter(|endpoint| endpoint.host_ifindex == host_ifindex)
    {
        let removal = Request::RemoveEndpoint {
            ip: endpoint.ip,
            host_ifindex: Some(host_ifindex),
        };
        ignore_agent_down(agent_call(conf, &removal))?;
    }
    Ok(())
}

fn list_endpoints(conf: &NetConf) -> CniResult<Vec<EndpointEntry>> {
    match agent_call(conf, &Request::ListEndpoints { address: None })? {
        Response::Endpoints { endpoints } => Ok(endpoints),
        _ => Err(CniError::new(
            code::IO_FAILURE,
            "unexpected answer to an endpoint list",
        )),
    }
}

fn check(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<()> {
    let attachment = attachment_of(environment)?;
    required(environment, "CNI_NETNS")?;
    let record = match read_record(&record_path(conf, &attachment)) {
        Record::Found(record) => record,
        Record::Unreadable(error) => return Err(error),
        Record::Absent => {
            return Err(CniError::new(
                code::NOT_PROGRAMMED,
                format!(
                    "no dataplane attachment for container {} interface {}",
                    attachment.container_id, attachment.ifname
                ),
            ));
        }
    };
    let endpoints = list_endpoints(conf)?;
    for ip in &record.ips {
        let programmed = endpoints.iter().any(|endpoint| {
            endpoint.ip == *ip
                && endpoint.attached
                && endpoint.interface.as_deref() == Some(record.host_interface.as_str())
        });
        if !programmed {
            return Err(CniError::new(
                code::NOT_PROGRAMMED,
                format!(
                    "endpoint {ip} on {} is not programmed",
                    record.host_interface
                ),
            ));
        }
    }
    Ok(())
}

/// Removes this network's attachments that are not in
/// `cni.dev/valid-attachments`. A record that cannot be released does not
/// stop the others; the errors are reported together at the end.
fn collect_garbage(conf: &NetConf) -> CniResult<()> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments in the configuration",
        ));
    };
    let directory = network_dir(conf);
    let entries = match std::fs::read_dir(&directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(CniError::new(
                code::IO_FAILURE,
                format!("cannot list {}", directory.display()),
            )
            .with_details(error));
        }
    };
    let mut failures = Vec::new();
    for entry in entries {
        let name = match entry {
            Ok(entry) => entry.file_name().to_string_lossy().into_owned(),
            Err(error) => {
                failures.push(format!("listing {}: {error}", directory.display()));
                continue;
            }
        };
        let Some(attachment) = attachment_of_record(&name) else {
            continue;
        };
        if valid.contains(&attachment) {
            continue;
        }
        if let Err(error) = release(conf, &attachment, None) {
            failures.push(format!("{name}: {} {}", error.msg, error.details));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::IO_FAILURE,
            format!("GC could not release {} attachment(s)", failures.len()),
        )
        .with_details(failures.join("; ")))
    }
}

fn status(conf: &NetConf) -> CniResult<()> {
    agent_call(conf, &Request::Status)
        .map(drop)
        .map_err(|error| match error.code {
            code::INVALID_CONFIG => error,
            _ => CniError {
                code: code::NOT_READY,
                ..error
            },
        })
}

/// The plugin's `main`: environment and stdin in, result or error out.
pub fn main() -> std::process::ExitCode {
    let environment: HashMap<String, String> = std::env::vars().collect();
    let mut stdin = String::new();
    let input = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin);
    let outcome = input
        .map_err(|error| CniError::new(code::IO_FAILURE, "cannot read stdin").with_details(error))
        .and_then(|_| run(&environment, &stdin));
    match outcome {
        Ok(output) => {
            if let Some(output) = output {
                println!("{output}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            let version = serde_json::from_str::<Value>(&stdin)
                .ok()
                .and_then(|conf| conf["cniVersion"].as_str().map(str::to_string))
                .unwrap_or_else(|| "1.0.0".into());
            let mut body = serde_json::to_value(&error).expect("errors serialize");
            body["cniVersion"] = Value::from(version);
            println!("{body}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environment(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn code_of(result: CniResult<Option<String>>) -> u32 {
        result.expect_err("must fail").code
    }

    const ADD: [(&str, &str); 4] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/nonexistent"),
    ];

    #[test]
    fn version_lists_the_supported_versions() {
        let output = run(
            &environment(&[("CNI_COMMAND", "VERSION")]),
            r#"{"cniVersion":"1.0.0"}"#,
        )
        .unwrap()
        .unwrap();
        let output: Value = serde_json::from_str(&output).unwrap();
        assert_eq!(output["cniVersion"], "1.0.0");
        assert_eq!(
            output["supportedVersions"].as_array().unwrap().len(),
            SUPPORTED_VERSIONS.len()
        );
    }

    #[test]
    fn input_errors_have_their_codes() {
        assert_eq!(
            code_of(run(&environment(&[]), "{}")),
            code::INVALID_ENVIRONMENT
        );
        assert_eq!(
            code_of(run(&environment(&ADD), "{not json")),
            code::DECODE_FAILURE
        );
        let old = r#"{"cniVersion":"0.2.0","name":"n","type":"dataplane-cni"}"#;
        assert_eq!(
            code_of(run(&environment(&ADD), old)),
            code::INCOMPATIBLE_VERSION
        );
        let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni"}"#;
        assert_eq!(
            code_of(run(&environment(&ADD), unchained)),
            code::INVALID_CONFIG
        );
        let no_ipv4 =
            r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","prevResult":{"ips":[]}}"#;
        assert_eq!(
            code_of(run(&environment(&ADD), no_ipv4)),
            code::INVALID_CONFIG
        );
        let missing_id = [("CNI_COMMAND", "DEL"), ("CNI_IFNAME", "eth0")];
        assert_eq!(
            code_of(run(&environment(&missing_id), unchained)),
            code::INVALID_ENVIRONMENT
        );
        let unknown = [("CNI_COMMAND", "FROB")];
        assert_eq!(
            code_of(run(&environment(&unknown), unchained)),
            code::INVALID_ENVIRONMENT
        );
    }

    #[test]
    fn missing_or_bad_identifiers_are_environment_errors() {
        let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni"}"#;
        for command in ["ADD", "DEL", "CHECK"] {
            let no_ifname = [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_NETNS", "/nonexistent"),
            ];
            let error = run(&environment(&no_ifname), unchained).expect_err(command);
            assert_eq!(
                error.code,
                code::INVALID_ENVIRONMENT,
                "{command}: {error:?}"
            );
            assert!(error.msg.contains("CNI_IFNAME"), "{error:?}");
        }
        for container_id in ["../x/evil", "a/b", ".hidden", "-dash", "a b", "x:y"] {
            let evil = [("CNI_CONTAINERID", container_id), ADD[0], ADD[2], ADD[3]];
            let error = run(&environment(&evil), unchained).expect_err(container_id);
            assert_eq!(error.code, code::INVALID_ENVIRONMENT, "{container_id}");
            assert!(error.msg.contains("CNI_CONTAINERID"), "{error:?}");
        }
        for ifname in ["../../etc", "a:b", "sixteen-chars-xx", ".", "a b"] {
            let bad = [("CNI_IFNAME", ifname), ADD[0], ADD[1], ADD[3]];
            assert_eq!(
                code_of(run(&environment(&bad), unchained)),
                code::INVALID_ENVIRONMENT,
                "{ifname}"
            );
        }
        let bad_name = r#"{"cniVersion":"1.0.0","name":"../up","type":"dataplane-cni"}"#;
        assert_eq!(
            code_of(run(&environment(&ADD), bad_name)),
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        for (key, value) in [("sokcet", "\"/run/x.sock\""), ("datadir", "\"/tmp/x\"")] {
            let conf = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","{key}":{value}}}"#
            );
            let error = run(&environment(&ADD), &conf).expect_err(key);
            assert_eq!(error.code, code::INVALID_CONFIG);
            assert!(error.msg.contains(key), "{error:?}");
        }
        // The keys the spec gives every plugin are fine.
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni",
            "runtimeConfig":{},"args":{},"capabilities":{},"dns":{},
            "prevResult":{"ips":[]}}"#;
        let error = run(&environment(&ADD), conf).expect_err("no IPv4");
        assert!(error.msg.contains("IPv4"), "{error:?}");
    }

    #[test]
    fn sockets_that_can_never_work_are_configuration_errors() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("file");
        std::fs::write(&file, "").unwrap();
        let status = [("CNI_COMMAND", "STATUS")];
        let with_socket = |socket: &str| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"dataplane-cni","socket":{}}}"#,
                Value::from(socket)
            )
        };
        for socket in [
            "",
            "relative.sock",
            file.to_str().unwrap(),
            directory.path().to_str().unwrap(),
            file.join("below").to_str().unwrap(),
        ] {
            assert_eq!(
                code_of(run(&environment(&status), &with_socket(socket))),
                code::INVALID_CONFIG,
                "{socket:?}"
            );
        }
        // Not there yet: the agent is not up, so not ready (ADD: try again later).
        let absent = directory.path().join("agent.sock");
        assert_eq!(
            code_of(run(
                &environment(&status),
                &with_socket(absent.to_str().unwrap())
            )),
            code::NOT_READY
        );
        let add = with_socket(absent.to_str().unwrap()).replace(
            "}",
            r#","prevResult":{"ips":[{"address":"10.244.0.5/24"}]}}"#,
        );
        assert_eq!(
            code_of(run(&environment(&ADD), &add.replace("1.1.0", "1.0.0"))),
            code::TRY_AGAIN_LATER
        );
    }

    #[test]
    fn commands_need_the_version_that_introduced_them() {
        for (command, version) in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")] {
            let conf = format!(r#"{{"cniVersion":"{version}","name":"n","type":"dataplane-cni"}}"#);
            let command_environment = [("CNI_COMMAND", command), ADD[1], ADD[2], ADD[3]];
            assert_eq!(
                code_of(run(&environment(&command_environment), &conf)),
                code::INCOMPATIBLE_VERSION,
                "{command} at {version}"
            );
        }
    }

    #[test]
    fn record_names_round_trip_and_stay_inside_the_network_directory() {
        let conf = parse_conf(r#"{"cniVersion":"1.1.0","name":"pods","dataDir":"/d"}"#).unwrap();
        let attachment = Attachment {
            container_id: "ab-c.d_1".into(),
            ifname: "eth-0.json".into(),
        };
        let path = record_path(&conf, &attachment);
        assert_eq!(path, PathBuf::from("/d/pods/ab-c.d_1:eth-0.json.json"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(attachment_of_record(name), Some(attachment));
        assert_eq!(attachment_of_record("stray.json"), None);
    }

    #[test]
    fn addresses_come_from_the_previous_result() {
        let result: Value = serde_json::from_str(
            r#"{"ips":[{"address":"10.244.0.5/24","gateway":"10.244.0.1"},{"address":"fd00::5/64"}]}"#,
        )
        .unwrap();
        assert_eq!(ipv4_addresses(&result), vec![Ipv4Addr::new(10, 244, 0, 5)]);
    }
}
