//! What the runtime hands the plugin, checked before anything is done: the
//! CNI_* environment, the network configuration on stdin, the version.

use super::*;

/// The version a command first appeared in, as the reference `skel` checks it.
pub(super) fn minimum_version(command: &str) -> (u32, u32, u32) {
    match command {
        "CHECK" => (0, 4, 0),
        "GC" | "STATUS" => (1, 1, 0),
        _ => (0, 3, 0),
    }
}

pub(super) fn parse_version(version: &str) -> Option<(u32, u32, u32)> {
    let mut parts = version.split('.').map(str::parse::<u32>);
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(Ok(major)), Some(Ok(minor)), Some(Ok(patch)), None) => Some((major, minor, patch)),
        _ => None,
    }
}

/// The `cni.dev/` keys this plugin reads; the spec reserves the others for
/// runtimes (libcni 1.2.3 and later add `cni.dev/attachments`), so they are
/// ignored rather than refused.
const CNI_DEV_KEYS_READ: &[&str] = &["cni.dev/valid-attachments"];

/// Not JSON is a decoding failure (6); JSON that is not a valid configuration
/// for this plugin is an invalid configuration (7).
pub(super) fn parse_conf(stdin: &str) -> CniResult<NetConf> {
    let mut value: Value = serde_json::from_str(stdin).map_err(|error| {
        CniError::new(
            code::DECODE_FAILURE,
            "cannot decode the network configuration on stdin",
        )
        .with_details(error)
    })?;
    if let Some(keys) = value.as_object_mut() {
        keys.retain(|key, _| {
            !key.starts_with("cni.dev/") || CNI_DEV_KEYS_READ.contains(&key.as_str())
        });
    }
    let conf: NetConf = serde_json::from_value(value).map_err(|error| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("invalid network configuration: {error}"),
        )
    })?;
    // Relative, records would land wherever the runtime runs, and a DEL
    // from elsewhere would miss them.
    if !conf.data_dir.is_absolute() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!(
                "dataDir {:?} must be an absolute path",
                conf.data_dir.display().to_string()
            ),
        ));
    }
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
pub(super) fn is_valid_identifier(text: &str) -> bool {
    let mut characters = text.chars();
    characters
        .next()
        .is_some_and(|first| first.is_ascii_alphanumeric())
        && characters.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The spec's (and the kernel's) rule for interface names.
pub(super) fn is_valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < 16
        && name != "."
        && name != ".."
        && !name.contains(['/', ':'])
        && !name.chars().any(char::is_whitespace)
}

pub(super) fn required(environment: &HashMap<String, String>, name: &str) -> CniResult<String> {
    environment
        .get(name)
        .filter(|value| !value.is_empty())
        .cloned()
        .ok_or_else(|| CniError::new(code::INVALID_ENVIRONMENT, format!("{name} is not set")))
}

/// The attachment the environment names; both parts validated, since they
/// become a file name.
pub(super) fn attachment_of(environment: &HashMap<String, String>) -> CniResult<Attachment> {
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

pub(super) fn version_output(stdin: &str) -> String {
    let requested = serde_json::from_str::<Value>(stdin)
        .ok()
        .and_then(|conf| conf["cniVersion"].as_str().map(str::to_string))
        .unwrap_or_else(|| "1.1.0".into());
    serde_json::json!({"cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS})
        .to_string()
}
