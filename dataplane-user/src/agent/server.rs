//! The local API server: newline-delimited JSON on a Unix socket. Requests
//! become commands for the state owner; `monitor` streams packet events.
//! A bounded number of connections, each with a request size limit and an
//! idle timeout, so no client can starve the CNI plugin or the agent.

use std::{os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::broadcast,
};

use crate::{
    api::{self, Envelope, ErrorKind, PacketFilter, PacketReport, Request, Response},
    connections,
    model::{HostInterface, Source, policy::Connection},
    state::{Command, NatTable, StateHandle, error_kind},
};

/// Connections served at once; more wait in the listen backlog. (Clients
/// of a Unix socket are all this node's root: no share per client.)
pub const MAX_CONNECTIONS: usize = 128;
/// The longest request line accepted.
pub const MAX_REQUEST_BYTES: u64 = 1 << 20;
/// A connection that sends no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket left by an agent that was killed would make bind fail.
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing stale {}", socket.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API forever; accept errors are survived.
pub async fn serve(
    listener: UnixListener,
    state: StateHandle,
    nat: NatTable,
    events: broadcast::Sender<PacketReport>,
) {
    let limits = connections::Limits {
        total: MAX_CONNECTIONS,
        per_source: MAX_CONNECTIONS,
    };
    connections::accept_forever("API", limits, listener, |stream| {
        serve_connection(stream, state.clone(), nat.clone(), events.clone())
    })
    .await;
}

/// Reads one request line: `None` at the end of the stream, after the idle
/// timeout, or for a line over the size limit (answered with an error).
async fn next_request(
    reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
) -> Option<Result<Request, String>> {
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        IDLE_TIMEOUT,
        (&mut *reader)
            .take(MAX_REQUEST_BYTES + 1)
            .read_until(b'\n', &mut line),
    )
    .await;
    match read {
        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => None,
        Ok(Ok(_)) if line.len() as u64 > MAX_REQUEST_BYTES => {
            let refusal = Response::error(
                ErrorKind::Refused,
                format!("request longer than {MAX_REQUEST_BYTES} bytes"),
            );
            let _ = write_line(writer, &refusal).await;
            None
        }
        Ok(Ok(_)) => Some(api::decode::<Request>(&line)),
    }
}

fn error_response(error: &anyhow::Error) -> Response {
    Response::error(error_kind(error), format!("{error:#}"))
}

async fn write_line(writer: &mut OwnedWriteHalf, response: &Response) -> std::io::Result<()> {
    let mut line = serde_json::to_string(&Envelope::new(response)).expect("responses serialize");
    line.push('\n');
    writer.write_all(line.as_bytes()).await
}

async fn serve_connection(
    stream: UnixStream,
    state: StateHandle,
    nat: NatTable,
    events: broadcast::Sender<PacketReport>,
) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    while let Some(request) = next_request(&mut reader, &mut writer).await {
        let response = match request {
            Ok(Request::Monitor { traces, filter }) => {
                match resolve_interfaces(filter) {
                    Ok(filter) => {
                        let client = Client {
                            reader: &mut reader,
                            writer: &mut writer,
                        };
                        stream_events(client, &state, events.subscribe(), traces, &filter).await;
                    }
                    Err(message) => drop(
                        write_line(&mut writer, &Response::error(ErrorKind::Refused, message))
                            .await,
                    ),
                }
                return;
            }
            Ok(request) => handle(&state, &nat, request)
                .await
                .unwrap_or_else(|error| error_response(&error)),
            Err(message) => Response::error(ErrorKind::Refused, message),
        };
        if write_line(&mut writer, &response).await.is_err() {
            break;
        }
    }
}

/// Turns one request into the owner's command and its answer into a response.
async fn handle(state: &StateHandle, nat: &NatTable, request: Request) -> anyhow::Result<Response> {
    let done = |changed: bool| Response::Done { changed };
    Ok(match request {
        Request::AddEndpoint { endpoint } => {
            state.add_endpoint(endpoint).await?;
            done(true)
        }
        Request::RemoveEndpoint { ip, host_ifindex } => {
            done(state.remove_endpoint(ip, host_ifindex).await?)
        }
        Request::ListEndpoints { address } => {
            let mut endpoints = state.ask(Command::Endpoints).await?;
            endpoints.retain(|endpoint| address.is_none_or(|address| endpoint.ip == address));
            Response::Endpoints { endpoints }
        }
        Request::Counters => Response::Counters {
            counters: state.ask(Command::Counters).await?,
        },
        Request::AddNode { node } => {
            state.upsert_node(Source::Api, node).await?;
            done(true)
        }
        // An operator's removal: whichever source listed the node.
        Request::RemoveNode { ip } => done(state.withdraw_node(None, ip).await?),
        Request::ListNodes { address } => {
            let mut nodes = state.ask(Command::Nodes).await?;
            nodes.retain(|node| address.is_none_or(|address| node.ip == address));
            Response::Nodes { nodes }
        }
        Request::Status => Response::Status {
            status: Box::new(state.ask(Command::Status).await?),
        },
        Request::ListNat { address } => {
            let (mut connections, mut pods) = nat.connections().await?;
            connections
                .retain(|connection| address.is_none_or(|address| connection.involves(address)));
            pods.retain(|usage| address.is_none_or(|address| usage.pod == address));
            Response::Nat { connections, pods }
        }
        Request::FlushNat => done(nat.flush(state.pod_addresses().await?).await? > 0),
        Request::AddService { service } => {
            state
                .ask(|reply| Command::UpsertService(Source::Api, service, reply))
                .await?;
            done(true)
        }
        // An operator's removal: whichever source listed the Service.
        Request::RemoveService { name } => done(
            state
                .ask(|reply| Command::WithdrawService(None, name, reply))
                .await?,
        ),
        Request::ListServices { address } => {
            let mut services = state.ask(Command::Services).await?;
            services.retain(|entry| address.is_none_or(|address| entry.service.ip == address));
            Response::Services { services }
        }
        Request::ListServiceMaps => {
            let (frontends, connection_entries) = state.ask(Command::ServiceMaps).await?;
            Response::ServiceMaps {
                frontends,
                connection_entries,
            }
        }
        Request::ListPolicies => Response::Policies {
            report: state.ask(Command::Policies).await?,
        },
        Request::ExplainPolicy {
            from,
            to,
            protocol,
            port,
        } => {
            let connection = Connection {
                from,
                to,
                protocol,
                port,
            };
            Response::PolicyVerdict {
                verdict: state
                    .ask(|reply| Command::ExplainPolicy(connection, reply))
                    .await?,
            }
        }
        Request::Monitor { .. } => anyhow::bail!("monitor is a stream of its own"),
    })
}

/// The filter with interface names turned into indexes, in the agent's
/// network namespace (the client's may be another).
fn resolve_interfaces(mut filter: PacketFilter) -> Result<PacketFilter, String> {
    for interface in &mut filter.interfaces {
        if let HostInterface::Name(name) = interface {
            let index = nix::net::if_::if_nametoindex(name.as_str())
                .map_err(|_| format!("no interface {name:?} on this node"))?;
            *interface = HostInterface::Index(index);
        }
    }
    Ok(filter)
}

/// Both ends of a monitor client's connection.
struct Client<'a> {
    reader: &'a mut BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: &'a mut OwnedWriteHalf,
}

/// Returns once a monitor client closed its end (or sent more, which none
/// does): its connection slot is free at once, not at the next event.
async fn gone(reader: &mut BufReader<tokio::net::unix::OwnedReadHalf>) {
    let mut byte = [0u8; 1];
    let _ = reader.read(&mut byte).await;
}

/// Writes events to a monitor client until it goes away: drops, and
/// forwarded packets too when it asked for `traces`, those its filter admits.
async fn stream_events(
    Client { reader, writer }: Client<'_>,
    state: &StateHandle,
    mut events: broadcast::Receiver<PacketReport>,
    traces: bool,
    filter: &PacketFilter,
) {
    if let Err(error) = state.ask(|reply| Command::Watch(traces, reply)).await {
        let _ = write_line(writer, &error_response(&error)).await;
        return;
    }
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            () = gone(reader) => break,
        };
        let event = match received {
            Ok(event) => event,
            // A slow reader misses events rather than holding up the relay.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => break,
        };
        // Another client's traces are not for this one.
        if (!event.drop && !traces) || !filter.admits(&event) {
            continue;
        }
        if write_line(writer, &Response::Event { event })
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = state.tell(Command::Unwatch(traces)).await;
}
