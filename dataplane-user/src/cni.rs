//! `dataplane-cni`: a chained CNI plugin (spec 0.3.0 to 1.1.0). It runs after
//! a main plugin (ptp, bridge, ...) that created the pod's veth and assigned
//! its address, and attaches the pod to the dataplane: it registers the
//! endpoint with the agent, applies the pod MTU the tunnel needs, and returns
//! the previous result unchanged.
//!
//! What an attachment programmed is kept in a small state file per
//! (container, interface), written once ADD has fully succeeded, so DEL,
//! CHECK and GC know exactly what to undo or verify.

use std::{
    collections::HashMap,
    fs::File,
    io::ErrorKind,
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    api::{self, Request, Response},
    config::{DEFAULT_API_SOCKET, EndpointSpec},
    interfaces::{Interface, Interfaces},
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

/// The network configuration on stdin, as far as this plugin reads it.
#[derive(Debug, Deserialize)]
struct NetConf {
    #[serde(rename = "cniVersion")]
    cni_version: String,
    /// The agent's API socket.
    #[serde(default = "default_socket")]
    socket: PathBuf,
    /// Where attachment state files live.
    #[serde(rename = "dataDir", default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(rename = "prevResult")]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
}

fn default_socket() -> PathBuf {
    DEFAULT_API_SOCKET.into()
}

fn default_data_dir() -> PathBuf {
    DEFAULT_DATA_DIR.into()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
struct Attachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

/// What one attachment programmed.
#[derive(Debug, Serialize, Deserialize)]
struct AttachmentState {
    ips: Vec<Ipv4Addr>,
    host_interface: String,
}

/// Runs one plugin invocation: `environment` holds the CNI_* variables,
/// `stdin` the network configuration. `Ok` carries what to print, if anything.
pub fn run(environment: &HashMap<String, String>, stdin: &str) -> CniResult<Option<String>> {
    let command = required(environment, "CNI_COMMAND")?;
    if command == "VERSION" {
        return Ok(Some(version_output(stdin)));
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|error| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration on stdin",
        )
        .with_details(error)
    })?;
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {} is not supported (supported: {})",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    match command.as_str() {
        "ADD" => add(environment, &conf).map(Some),
        "DEL" => delete(&conf, &attachment_of(environment)?).map(|()| None),
        "CHECK" => check(environment, &conf).map(|()| None),
        "GC" => collect_garbage(&conf).map(|()| None),
        "STATUS" => status(&conf).map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENVIRONMENT,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"),
        )),
    }
}

fn required(environment: &HashMap<String, String>, name: &str) -> CniResult<String> {
    environment
        .get(name)
        .filter(|value| !value.is_empty())
        .cloned()
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, format!("{name} is not set")))
}

fn attachment_of(environment: &HashMap<String, String>) -> CniResult<Attachment> {
    Ok(Attachment {
        container_id: required(environment, "CNI_CONTAINERID")?,
        ifname: required(environment, "CNI_IFNAME")?,
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

fn agent_call(conf: &NetConf, request: &Request) -> CniResult<Response> {
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

fn add(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<String> {
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
    let Response::Status { status } = agent_call(conf, &Request::Status)? else {
        return Err(CniError::new(
            code::IO_FAILURE,
            "unexpected answer to a status request",
        ));
    };
    let (pod_interface, host_interface) =
        pod_and_host_interfaces(&netns, &attachment.ifname, status.pod_mtu)?;

    let mut registered = Vec::new();
    for ip in &ips {
        let endpoint = EndpointSpec {
            ip: *ip,
            interface: host_interface.clone(),
            mac: MacAddr6::from(pod_interface.mac),
        };
        if let Err(error) = agent_call(conf, &Request::AddEndpoint { endpoint }) {
            // Nothing half-programmed: undo what this ADD registered.
            for ip in registered {
                let _ = agent_call(conf, &Request::RemoveEndpoint { ip });
            }
            return Err(error);
        }
        registered.push(*ip);
    }
    write_state(
        conf,
        &attachment,
        &AttachmentState {
            ips,
            host_interface,
        },
    )?;

    let mut result = prev_result.clone();
    result["cniVersion"] = Value::from(conf.cni_version.clone());
    Ok(result.to_string())
}

/// Finds `ifname` in the pod's namespace and its veth peer in ours, and makes
/// both use the pod MTU (when the dataplane needs one).
fn pod_and_host_interfaces(
    netns: &str,
    ifname: &str,
    pod_mtu: Option<u32>,
) -> CniResult<(Interface, String)> {
    let namespace = File::open(netns).map_err(|error| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!("CNI_NETNS {netns} cannot be opened"),
        )
        .with_details(error)
    })?;
    let netns_owned = netns.to_string();
    let ifname_owned = ifname.to_string();
    let pod_interface = std::thread::spawn(move || -> CniResult<Interface> {
        nix::sched::setns(namespace.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(
            |error| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("CNI_NETNS {netns_owned} is not a network namespace"),
                )
                .with_details(error)
            },
        )?;
        with_netlink(|interfaces| async move {
            let interface = interfaces
                .by_name(&ifname_owned)
                .await
                .map_err(io_failure)?;
            let interface = interface.ok_or_else(|| {
                CniError::new(
                    code::UNKNOWN_CONTAINER,
                    format!("interface {ifname_owned} does not exist in {netns_owned}"),
                )
            })?;
            if let Some(mtu) = pod_mtu.filter(|mtu| interface.mtu > *mtu) {
                interfaces
                    .set_mtu(&interface, mtu)
                    .await
                    .map_err(io_failure)?;
            }
            Ok(interface)
        })
    })
    .join()
    .map_err(|_| CniError::new(code::IO_FAILURE, "netlink thread panicked"))??;

    let peer_index = pod_interface.peer_index.ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("{ifname} in the pod is not a veth: the dataplane needs a veth pair"),
        )
    })?;
    let host_interface = with_netlink(|interfaces| async move {
        let host = interfaces.by_index(peer_index).await.map_err(io_failure)?;
        let host = host.ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                "the pod's veth peer is not in the node's network namespace",
            )
        })?;
        if let Some(mtu) = pod_mtu.filter(|mtu| host.mtu > *mtu) {
            interfaces.set_mtu(&host, mtu).await.map_err(io_failure)?;
        }
        Ok(host.name)
    })?;
    Ok((pod_interface, host_interface))
}

fn io_failure(error: impl std::fmt::Display) -> CniError {
    CniError::new(code::IO_FAILURE, "netlink request failed").with_details(error)
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

fn state_path(conf: &NetConf, attachment: &Attachment) -> PathBuf {
    conf.data_dir.join(format!(
        "{}-{}.json",
        attachment.container_id, attachment.ifname
    ))
}

fn write_state(conf: &NetConf, attachment: &Attachment, state: &AttachmentState) -> CniResult<()> {
    let path = state_path(conf, attachment);
    let failure = |error: std::io::Error| {
        CniError::new(code::IO_FAILURE, format!("cannot write {}", path.display()))
            .with_details(error)
    };
    std::fs::create_dir_all(&conf.data_dir).map_err(failure)?;
    // Written whole, then renamed: a reader never sees half a file.
    let temporary = path.with_extension("tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec(state).expect("state serializes"),
    )
    .map_err(failure)?;
    std::fs::rename(&temporary, &path).map_err(failure)
}

fn read_state(path: &Path) -> CniResult<Option<AttachmentState>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|error| {
            CniError::new(code::IO_FAILURE, format!("{} is corrupt", path.display()))
                .with_details(error)
        }),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot read {}", path.display()),
        )
        .with_details(error)),
    }
}

/// Idempotent: succeeds when the attachment, its endpoints or the pod are gone.
/// ADD writes the state file only once everything is programmed, so without
/// one there is nothing of ours to undo (and no need for the agent).
fn delete(conf: &NetConf, attachment: &Attachment) -> CniResult<()> {
    let path = state_path(conf, attachment);
    let Some(state) = read_state(&path)? else {
        return Ok(());
    };
    for ip in state.ips {
        agent_call(conf, &Request::RemoveEndpoint { ip })?;
    }
    match std::fs::remove_file(&path) {
        Err(error) if error.kind() != ErrorKind::NotFound => Err(CniError::new(
            code::IO_FAILURE,
            format!("cannot remove {}", path.display()),
        )
        .with_details(error)),
        _ => Ok(()),
    }
}

fn check(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<()> {
    let attachment = attachment_of(environment)?;
    let Some(state) = read_state(&state_path(conf, &attachment))? else {
        return Err(CniError::new(
            code::NOT_PROGRAMMED,
            format!(
                "no dataplane attachment for container {} interface {}",
                attachment.container_id, attachment.ifname
            ),
        ));
    };
    let Response::Endpoints { endpoints } = agent_call(conf, &Request::ListEndpoints)? else {
        return Err(CniError::new(
            code::IO_FAILURE,
            "unexpected answer to an endpoint list",
        ));
    };
    for ip in &state.ips {
        let programmed = endpoints.iter().any(|endpoint| {
            endpoint.ip == *ip
                && endpoint.attached
                && endpoint.interface.as_deref() == Some(state.host_interface.as_str())
        });
        if !programmed {
            return Err(CniError::new(
                code::NOT_PROGRAMMED,
                format!(
                    "endpoint {ip} on {} is not programmed",
                    state.host_interface
                ),
            ));
        }
    }
    Ok(())
}

/// Removes every attachment that is not in `cni.dev/valid-attachments`.
fn collect_garbage(conf: &NetConf) -> CniResult<()> {
    let Some(valid) = &conf.valid_attachments else {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments in the configuration",
        ));
    };
    let entries = match std::fs::read_dir(&conf.data_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(()),
        Err(error) => {
            return Err(
                CniError::new(code::IO_FAILURE, "cannot list the data directory")
                    .with_details(error),
            );
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        let is_valid = valid
            .iter()
            .any(|attachment| stem == format!("{}-{}", attachment.container_id, attachment.ifname));
        if !is_valid {
            let (container_id, ifname) = stem.rsplit_once('-').unwrap_or((stem, ""));
            let stale = Attachment {
                container_id: container_id.to_string(),
                ifname: ifname.to_string(),
            };
            delete(conf, &stale)?;
        }
    }
    Ok(())
}

fn status(conf: &NetConf) -> CniResult<()> {
    agent_call(conf, &Request::Status)
        .map(drop)
        .map_err(|error| CniError {
            code: code::NOT_READY,
            ..error
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
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/nonexistent"),
        ];
        assert_eq!(
            code_of(run(&environment(&[]), "{}")),
            code::INVALID_ENVIRONMENT
        );
        assert_eq!(
            code_of(run(&environment(&add), "{not json")),
            code::DECODE_FAILURE
        );
        let old = r#"{"cniVersion":"0.2.0","name":"n","type":"dataplane-cni"}"#;
        assert_eq!(
            code_of(run(&environment(&add), old)),
            code::INCOMPATIBLE_VERSION
        );
        let unchained = r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni"}"#;
        assert_eq!(
            code_of(run(&environment(&add), unchained)),
            code::INVALID_CONFIG
        );
        let no_ipv4 =
            r#"{"cniVersion":"1.0.0","name":"n","type":"dataplane-cni","prevResult":{"ips":[]}}"#;
        assert_eq!(
            code_of(run(&environment(&add), no_ipv4)),
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
    fn addresses_come_from_the_previous_result() {
        let result: Value = serde_json::from_str(
            r#"{"ips":[{"address":"10.244.0.5/24","gateway":"10.244.0.1"},{"address":"fd00::5/64"}]}"#,
        )
        .unwrap();
        assert_eq!(ipv4_addresses(&result), vec![Ipv4Addr::new(10, 244, 0, 5)]);
    }
}
