//! Ethernet II frames with up to two 802.1Q / 802.1ad VLAN tags.
//!
//! The untagged header is `smoltcp`'s [`EthernetFrame`]; the tags are
//! `etherparse`'s [`SingleVlanHeaderSlice`] (smoltcp has no 802.1Q).

use etherparse::{SingleVlanHeader, SingleVlanHeaderSlice, VlanId};
use smoltcp::wire::{ETHERNET_HEADER_LEN, EthernetAddress, EthernetFrame, EthernetProtocol};

use crate::error::{Header, WireError, need};

/// Length of one VLAN tag (TCI and the EtherType after it).
pub const VLAN_TAG_LEN: usize = SingleVlanHeader::LEN;
/// Most VLAN tags a frame may carry (802.1ad QinQ).
pub const MAX_VLAN_TAGS: usize = 2;

/// Whether `ethertype` announces a VLAN tag (802.1Q, 802.1ad, or the old QinQ 0x9100).
pub fn is_vlan_tpid(ethertype: u16) -> bool {
    matches!(ethertype, 0x8100 | 0x88a8 | 0x9100)
}

/// The link-layer header of a frame: its addresses, VLAN tags and the
/// EtherType of the payload after the last tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkHeader {
    /// Destination MAC.
    pub dst: EthernetAddress,
    /// Source MAC.
    pub src: EthernetAddress,
    /// VLAN ids of the tags, outermost first; `None` where there is no tag.
    pub vlans: [Option<u16>; MAX_VLAN_TAGS],
    /// EtherType of the payload.
    pub ethertype: EthernetProtocol,
    /// Bytes from the frame's start to the payload: 14, 18 or 22.
    pub header_len: usize,
}

impl LinkHeader {
    /// Parse the Ethernet header and its tags, refusing a truncated frame or
    /// more than [`MAX_VLAN_TAGS`] tags.
    pub fn parse(frame: &[u8]) -> Result<LinkHeader, WireError> {
        let eth = EthernetFrame::new_checked(frame).map_err(|_| WireError::Truncated {
            header: Header::Ethernet,
            needed: ETHERNET_HEADER_LEN,
            available: frame.len(),
        })?;
        let mut ethertype = u16::from(eth.ethertype());
        let mut header_len = ETHERNET_HEADER_LEN;
        let mut vlans = [None; MAX_VLAN_TAGS];
        let mut tags = 0;
        while is_vlan_tpid(ethertype) {
            if tags == MAX_VLAN_TAGS {
                return Err(WireError::BadField {
                    header: Header::Vlan,
                    field: "tag count",
                    value: tags as u32 + 1,
                    expected: "at most 2 tags",
                });
            }
            need(Header::Vlan, header_len + VLAN_TAG_LEN, frame.len())?;
            let tag = SingleVlanHeaderSlice::from_slice(&frame[header_len..]).map_err(|_| {
                WireError::Truncated {
                    header: Header::Vlan,
                    needed: header_len + VLAN_TAG_LEN,
                    available: frame.len(),
                }
            })?;
            vlans[tags] = Some(tag.vlan_identifier().value());
            ethertype = tag.ether_type().0;
            header_len += VLAN_TAG_LEN;
            tags += 1;
        }
        Ok(LinkHeader {
            dst: eth.dst_addr(),
            src: eth.src_addr(),
            vlans,
            ethertype: EthernetProtocol::from(ethertype),
            header_len,
        })
    }
}

/// Write an 802.1Q tag (TCI with priority 0, then `ethertype`) into `out`,
/// which must hold [`VLAN_TAG_LEN`] bytes; refuse a VLAN id over 4094.
pub fn emit_vlan_tag(
    vlan: u16,
    ethertype: EthernetProtocol,
    out: &mut [u8],
) -> Result<(), WireError> {
    let vlan_id = VlanId::try_new(vlan)
        .ok()
        .filter(|id| id.value() != 0xfff)
        .ok_or(WireError::BadField {
            header: Header::Vlan,
            field: "VLAN id",
            value: vlan.into(),
            expected: "0 to 4094",
        })?;
    need(Header::Vlan, VLAN_TAG_LEN, out.len())?;
    let tag = SingleVlanHeader {
        vlan_id,
        ether_type: etherparse::EtherType(ethertype.into()),
        ..Default::default()
    };
    out[..VLAN_TAG_LEN].copy_from_slice(&tag.to_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    fn frame(tags: &[(u16, u16)], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&DST);
        f.extend_from_slice(&SRC);
        for &(tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&vid.to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&[0x45, 0, 0, 20]);
        f
    }

    #[test]
    fn untagged() {
        let l2 = LinkHeader::parse(&frame(&[], 0x0800)).unwrap();
        assert_eq!(l2.dst, EthernetAddress(DST));
        assert_eq!(l2.src, EthernetAddress(SRC));
        assert_eq!(l2.vlans, [None, None]);
        assert_eq!(l2.ethertype, EthernetProtocol::Ipv4);
        assert_eq!(l2.header_len, 14);
    }

    #[test]
    fn single_and_double_tagged() {
        let l2 = LinkHeader::parse(&frame(&[(0x8100, 0x2064)], 0x86dd)).unwrap();
        assert_eq!(l2.vlans, [Some(100), None]); // PCP 1 is not part of the id
        assert_eq!(l2.ethertype, EthernetProtocol::Ipv6);
        assert_eq!(l2.header_len, 18);

        let l2 = LinkHeader::parse(&frame(&[(0x88a8, 10), (0x8100, 20)], 0x0806)).unwrap();
        assert_eq!(l2.vlans, [Some(10), Some(20)]);
        assert_eq!(l2.ethertype, EthernetProtocol::Arp);
        assert_eq!(l2.header_len, 22);
    }

    #[test]
    fn refuses_truncated_and_too_many_tags() {
        assert!(matches!(
            LinkHeader::parse(&[0u8; 13]),
            Err(WireError::Truncated {
                header: Header::Ethernet,
                ..
            })
        ));
        let tagged = frame(&[(0x8100, 1)], 0x0800);
        assert_eq!(
            LinkHeader::parse(&tagged[..16]),
            Err(WireError::Truncated {
                header: Header::Vlan,
                needed: 18,
                available: 16
            })
        );
        let triple = frame(&[(0x88a8, 1), (0x8100, 2), (0x8100, 3)], 0x0800);
        assert!(matches!(
            LinkHeader::parse(&triple),
            Err(WireError::BadField {
                field: "tag count",
                ..
            })
        ));
    }

    #[test]
    fn emit_tag_round_trip() {
        let mut f = frame(&[(0x8100, 0)], 0x0800);
        emit_vlan_tag(4094, EthernetProtocol::Ipv4, &mut f[14..18]).unwrap();
        assert_eq!(LinkHeader::parse(&f).unwrap().vlans, [Some(4094), None]);
        assert!(emit_vlan_tag(4095, EthernetProtocol::Ipv4, &mut f[14..18]).is_err());
        assert!(emit_vlan_tag(1, EthernetProtocol::Ipv4, &mut f[14..16]).is_err());
    }
}
