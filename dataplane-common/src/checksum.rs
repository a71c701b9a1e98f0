//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624),
//! for the programs and for the tests that build and verify packets.

/// Folds a 32-bit sum of 16-bit words into 16 bits (two folds suffice
/// for any sum that fits 32 bits).
#[inline(always)]
const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// The checksum of `bytes` (an odd last byte is padded with zero); a
/// header holding its correct checksum sums to 0.
#[inline(always)]
pub fn internet(bytes: &[u8]) -> u16 {
    !fold(sum_words(bytes))
}

/// The checksum of an upper-layer message `bytes` (ICMPv6, TCP, UDP; its
/// checksum field zero, or holding the correct one to sum to 0) carried in
/// IPv6 from `src` to `dst`: its pseudo-header (RFC 8200 8.1) summed first.
#[inline(always)]
pub fn ipv6_upper_layer(src: &[u8; 16], dst: &[u8; 16], next_header: u8, bytes: &[u8]) -> u16 {
    let len = bytes.len() as u32;
    let pseudo = sum_words(src) + sum_words(dst) + (len >> 16) + (len & 0xffff);
    !fold(pseudo + u32::from(next_header) + sum_words(bytes))
}

/// The sum of `bytes` as 16-bit words (an odd last byte padded with zero),
/// unfolded: short enough input (under 128 KB) never overflows it.
#[inline(always)]
fn sum_words(bytes: &[u8]) -> u32 {
    let mut sum: u32 = 0;
    let mut pairs = bytes.chunks_exact(2);
    for pair in &mut pairs {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = pairs.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    sum
}

/// `checksum` after a 16-bit word it covers changed from `old` to `new`.
#[inline(always)]
pub fn replace2(checksum: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
    let sum = u32::from(!checksum)
        + u32::from(!u16::from_be_bytes(old))
        + u32::from(u16::from_be_bytes(new));
    !fold(sum)
}

/// `checksum` after a 32-bit field it covers changed from `old` to `new`.
#[inline(always)]
pub fn replace4(checksum: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut sum = u32::from(!checksum);
    for index in [0, 2] {
        sum += u32::from(!u16::from_be_bytes([old[index], old[index + 1]]));
        sum += u32::from(u16::from_be_bytes([new[index], new[index + 1]]));
    }
    !fold(sum)
}
