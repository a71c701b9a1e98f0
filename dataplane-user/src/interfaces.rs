//! Network interfaces of the agent's namespace, through rtnetlink.

use futures::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkGetRequest};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink query for interface {0} failed: {1}")]
    Query(String, rtnetlink::Error),
    #[error("interface {0} has no Ethernet MAC address (is it a veth?)")]
    NoMac(String),
}

#[derive(Clone)]
pub struct Interfaces {
    handle: Handle,
}

impl Interfaces {
    /// Opens a netlink connection; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self, InterfaceError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(InterfaceError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<Interface>, InterfaceError> {
        self.query(
            name.to_string(),
            self.handle.link().get().match_name(name.to_string()),
        )
        .await
    }

    pub async fn by_index(&self, index: u32) -> Result<Option<Interface>, InterfaceError> {
        self.query(
            format!("#{index}"),
            self.handle.link().get().match_index(index),
        )
        .await
    }

    async fn query(
        &self,
        label: String,
        request: LinkGetRequest,
    ) -> Result<Option<Interface>, InterfaceError> {
        match request.execute().try_next().await {
            Ok(Some(message)) => interface_of(message).map(Some),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(error))
                if error.raw_code() == -nix::libc::ENODEV =>
            {
                Ok(None)
            }
            Err(error) => Err(InterfaceError::Query(label, error)),
        }
    }
}

fn interface_of(message: LinkMessage) -> Result<Interface, InterfaceError> {
    let mut name = String::new();
    let mut mac = None;
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(value) => name = value,
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| InterfaceError::NoMac(name.clone()))?;
    Ok(Interface {
        index: message.header.index,
        name,
        mac,
    })
}
