//! DEL, CHECK, GC and STATUS: undo or verify what records say an attachment
//! programmed, touching nothing of other networks or pods.

use super::*;

pub(super) fn delete(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<()> {
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
pub(super) fn release(
    conf: &NetConf,
    attachment: &Attachment,
    netns: Option<&str>,
) -> CniResult<()> {
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

pub(super) fn ignore_agent_down(result: CniResult<Response>) -> CniResult<()> {
    match result {
        Err(error) if error.code == code::TRY_AGAIN_LATER => Ok(()),
        other => other.map(drop),
    }
}

pub(super) fn remove_endpoints_behind(conf: &NetConf, host_ifindex: u32) -> CniResult<()> {
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

pub(super) fn list_endpoints(conf: &NetConf) -> CniResult<Vec<EndpointEntry>> {
    match agent_call(conf, &Request::ListEndpoints { address: None })? {
        Response::Endpoints { endpoints } => Ok(endpoints),
        _ => Err(CniError::new(
            code::IO_FAILURE,
            "unexpected answer to an endpoint list",
        )),
    }
}

pub(super) fn check(environment: &HashMap<String, String>, conf: &NetConf) -> CniResult<()> {
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
pub(super) fn collect_garbage(conf: &NetConf) -> CniResult<()> {
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
    let (mut failures, mut failed) = (Vec::new(), Vec::new());
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
        // By name: a long container ID's record is named by its digest.
        if valid.iter().any(|valid| record_name(valid) == name) {
            continue;
        }
        // Without a readable record (and no netns to look in) its endpoints
        // cannot be known: reported, and kept to be looked at.
        if let Record::Unreadable(error) = read_record(&record_path(conf, &attachment)) {
            failures.push(format!(
                "{name}: {} {}: its endpoints, if any, stay registered until their veth \
                 goes; remove the record once checked",
                error.msg, error.details
            ));
            failed.push(name);
            continue;
        }
        if let Err(error) = release(conf, &attachment, None) {
            failures.push(format!("{name}: {} {}", error.msg, error.details));
            failed.push(name);
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            code::IO_FAILURE,
            format!(
                "GC could not release {} attachment(s): {}",
                failures.len(),
                failed.join(", ")
            ),
        )
        .with_details(failures.join("; ")))
    }
}

pub(super) fn status(conf: &NetConf) -> CniResult<()> {
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
