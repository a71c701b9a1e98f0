//! What rtnetlink's messages say: an interface, a neighbour, a VXLAN
//! device's settings.

use super::*;

/// The IPv4 neighbour a neighbour table message is about (a dump's entry or
/// a notification), with its MAC when resolved.
pub fn neighbour_of(message: &NeighbourMessage) -> Option<(Ipv4Addr, Neighbour)> {
    let resolved = !matches!(
        message.header.state,
        NeighbourState::None | NeighbourState::Incomplete | NeighbourState::Failed
    );
    let mut ip = None;
    let mut neighbour = Neighbour {
        permanent: message.header.state == NeighbourState::Permanent,
        ..Neighbour::default()
    };
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => {
                ip = Some(*address);
            }
            NeighbourAttribute::LinkLayerAddress(mac) if resolved => {
                neighbour.mac = <[u8; 6]>::try_from(mac.as_slice()).ok();
            }
            NeighbourAttribute::ExtFlags(flags) => {
                neighbour.managed = flags.contains(NeighbourExtFlags::Managed);
            }
            _ => {}
        }
    }
    Some((ip?, neighbour))
}

/// Whether `message` is a collect_md VXLAN device with exactly `settings`.
pub(super) fn has_vxlan_settings(message: &LinkMessage, settings: VxlanSettings) -> bool {
    let mut vxlan: &[InfoVxlan] = &[];
    let mut mtu = 0;
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(value) => mtu = *value,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                        vxlan = data;
                    }
                }
            }
            _ => {}
        }
    }
    mtu == settings.mtu
        && [
            InfoVxlan::Local(settings.local),
            InfoVxlan::Port(settings.port),
            InfoVxlan::CollectMetadata(true),
            InfoVxlan::Learning(false),
        ]
        .iter()
        .all(|wanted| vxlan.contains(wanted))
}

pub(super) fn interface_of(message: LinkMessage) -> Result<Interface, InterfaceError> {
    let mut name = String::new();
    let mut mac = None;
    let mut mtu = 0;
    let mut peer_index = None;
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(value) => name = value,
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            LinkAttribute::Mtu(value) => mtu = value,
            LinkAttribute::Link(value) => peer_index = Some(value),
            _ => {}
        }
    }
    let mac = mac.ok_or_else(|| InterfaceError::NoMac(name.clone()))?;
    Ok(Interface {
        index: message.header.index,
        name,
        mac,
        mtu,
        peer_index,
    })
}
