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
    net::IpAddr,
    os::unix::fs::FileTypeExt as _,
    path::{Path, PathBuf},
};

use macaddr::MacAddr6;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    api::{self, EndpointEntry, ErrorKind as AgentErrorKind, Request, Response},
    config::DEFAULT_API_SOCKET,
    interfaces::{Interface, Interfaces},
    model::{EndpointSpec, HostInterface, PodName},
    netns::NetnsError,
};

mod add;
mod input;
mod records;
mod teardown;

use add::*;
use input::*;
use records::*;
use teardown::*;

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
    /// Both families' (records of earlier versions hold IPv4 ones only).
    ips: Vec<IpAddr>,
    host_interface: String,
    /// The host veth's index: removals apply only while an address is still
    /// registered behind it. Absent in records of earlier versions.
    #[serde(default)]
    host_ifindex: Option<u32>,
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

/// Every address of a result's `ips`, either family.
fn result_addresses(result: &Value) -> impl Iterator<Item = IpAddr> + '_ {
    result["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|ip| ip["address"].as_str()?.split('/').next()?.parse().ok())
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
        Response::Error { message, kind } => Err(CniError::new(
            code_for(kind),
            match kind {
                AgentErrorKind::Refused => format!("the dataplane agent refused: {message}"),
                _ => format!("the dataplane agent failed: {message}"),
            },
        )),
        response => Ok(response),
    }
}

/// The CNI code for an agent error of `kind`: a request that breaks a rule
/// is invalid config (7); a full map or an agent that cannot answer now is
/// worth trying again later (11); anything else failed (5).
pub fn code_for(kind: AgentErrorKind) -> u32 {
    match kind {
        AgentErrorKind::Refused => code::INVALID_CONFIG,
        AgentErrorKind::Full | AgentErrorKind::Unavailable => code::TRY_AGAIN_LATER,
        AgentErrorKind::Failed => code::IO_FAILURE,
    }
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
mod tests;
