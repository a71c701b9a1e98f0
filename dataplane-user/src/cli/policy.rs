//! `dataplane policy`: NetworkPolicy as the agent has it.

use std::net::IpAddr;

use clap::Subcommand;

use crate::{api::Request, model::policy::PolicyProtocol};

#[derive(Subcommand)]
pub(super) enum PolicyCommand {
    /// This node's pods and the NetworkPolicies isolating each.
    List,
    /// The verdict on a new connection, and the policy and rule deciding
    /// it (to a Service: name the backend, policy judges after translation).
    Explain {
        #[arg(long)]
        from: IpAddr,
        #[arg(long)]
        to: IpAddr,
        /// PORT[/tcp|/udp|/sctp] (tcp when left out).
        #[arg(long, value_parser = port_and_protocol)]
        port: (u16, PolicyProtocol),
    },
}

impl PolicyCommand {
    pub(super) fn request(self) -> Request {
        match self {
            PolicyCommand::List => Request::ListPolicies,
            PolicyCommand::Explain {
                from,
                to,
                port: (port, protocol),
            } => Request::ExplainPolicy {
                from,
                to,
                protocol,
                port,
            },
        }
    }
}

/// `80`, `80/tcp`, `53/udp`, `9000/sctp`.
fn port_and_protocol(text: &str) -> Result<(u16, PolicyProtocol), String> {
    let (port, protocol) = text.split_once('/').unwrap_or((text, "tcp"));
    let protocol = match protocol.to_ascii_lowercase().as_str() {
        "tcp" => PolicyProtocol::Tcp,
        "udp" => PolicyProtocol::Udp,
        "sctp" => PolicyProtocol::Sctp,
        other => return Err(format!("unknown protocol {other:?} (tcp, udp or sctp)")),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| format!("{port:?} is not a port (1-65535)"))?;
    Ok((port, protocol))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_read_with_or_without_their_protocol() {
        assert_eq!(port_and_protocol("80"), Ok((80, PolicyProtocol::Tcp)));
        assert_eq!(port_and_protocol("53/UDP"), Ok((53, PolicyProtocol::Udp)));
        assert_eq!(
            port_and_protocol("9000/sctp"),
            Ok((9000, PolicyProtocol::Sctp))
        );
        assert!(port_and_protocol("0").unwrap_err().contains("not a port"));
        assert!(
            port_and_protocol("80/icmp")
                .unwrap_err()
                .contains("unknown protocol")
        );
    }
}
