//! Coalescing decrypted TCP segments into super-packets before they are written to an app's
//! interface (GRO in userspace), so that the app's kernel runs its TCP receive path once per
//! super-packet instead of once per segment.
//!
//! Only runs of *consecutive* segments of one flow are merged: a batch from the WAN is in
//! arrival order, and a bulk flow arrives as long runs. Each buffer holds a virtio-net header
//! (`HDR` bytes) followed by an IP packet; the first buffer of a run grows to hold the run and
//! gets a header that tells the kernel how to split it again (GSO) and where the checksum goes.
//! Anything that is not a plain, in-order, same-shaped TCP segment is left exactly as it was.

use tun_rs::{
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_LEN, VirtioNetHdr,
};

const HDR: usize = VIRTIO_NET_HDR_LEN;
const TCP_ACK: u8 = 0x10;
const TCP_PSH: u8 = 0x08;
/// Largest IP packet a super-packet may become.
const MAX_SUPER: usize = 65_535;

/// What coalescing needs to know of a TCP segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    v6: bool,
    ip_len: usize,
    tcp_len: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses an IP packet as a coalescable TCP segment: no IP options or extension headers, no
/// fragments, flags ACK or ACK|PSH, some payload, lengths consistent.
fn segment(p: &[u8]) -> Option<Segment> {
    let (v6, ip_len, total) = match p.first()? >> 4 {
        4 => {
            if p.len() < 20 || p[0] & 0x0f != 5 || p[9] != 6 {
                return None;
            }
            // No fragments (MF or offset); DF is fine.
            if be16(p, 6) & 0x3fff != 0 {
                return None;
            }
            (false, 20, usize::from(be16(p, 2)))
        }
        6 => {
            if p.len() < 40 || p[6] != 6 {
                return None;
            }
            (true, 40, 40 + usize::from(be16(p, 4)))
        }
        _ => return None,
    };
    if total != p.len() || p.len() < ip_len + 20 {
        return None;
    }
    let tcp_len = usize::from(p[ip_len + 12] >> 4) * 4;
    if !(20..=60).contains(&tcp_len) || p.len() < ip_len + tcp_len {
        return None;
    }
    let flags = p[ip_len + 13];
    if flags != TCP_ACK && flags != TCP_ACK | TCP_PSH {
        return None;
    }
    let payload = p.len() - ip_len - tcp_len;
    if payload == 0 {
        return None;
    }
    let seq = u32::from_be_bytes([p[ip_len + 4], p[ip_len + 5], p[ip_len + 6], p[ip_len + 7]]);
    Some(Segment {
        v6,
        ip_len,
        tcp_len,
        payload,
        seq,
        flags,
    })
}

/// Whether `next` continues `head` (same flow, same header shape, in sequence).
fn continues(head: &[u8], h: &Segment, run_bytes: usize, next: &[u8], n: &Segment) -> bool {
    if h.v6 != n.v6 || h.tcp_len != n.tcp_len {
        return false;
    }
    let ip = h.ip_len;
    let same_ip = if h.v6 {
        // Version/class/flow label, next header and hop limit, addresses.
        head[..4] == next[..4] && head[6..40] == next[6..40]
    } else {
        // TOS, flags (DF), TTL, protocol, addresses; not the ID or the checksum.
        head[1] == next[1]
            && head[6] == next[6]
            && head[8..10] == next[8..10]
            && head[12..20] == next[12..20]
    };
    // Ports, then ack number, window, urgent pointer and options must all be equal; the
    // sequence number must continue the run.
    same_ip
        && head[ip..ip + 4] == next[ip..ip + 4]
        && head[ip + 8..ip + 12] == next[ip + 8..ip + 12]
        && head[ip + 14..ip + 16] == next[ip + 14..ip + 16]
        && head[ip + 18..ip + h.tcp_len] == next[ip + 18..ip + n.tcp_len]
        && n.seq == h.seq.wrapping_add(run_bytes as u32)
}

/// The 16-bit one's complement sum of `data`, unfolded.
fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(u16::from_be_bytes([*last, 0]));
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Turns the run that starts in `buf` (already extended with the later segments' payloads)
/// into a super-packet: lengths, IPv4 header checksum, PSH, partial TCP checksum, virtio
/// header for GSO.
fn seal(buf: &mut [u8], h: &Segment, gso_size: usize, psh: bool) {
    let p = &mut buf[HDR..];
    let total = p.len();
    let ip = h.ip_len;
    if h.v6 {
        let payload = (total - 40) as u16;
        p[4..6].copy_from_slice(&payload.to_be_bytes());
    } else {
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[10..12].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&p[..20], 0));
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    if psh {
        p[ip + 13] |= TCP_PSH;
    }
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel adds the rest.
    let tcp_total = (total - ip) as u64;
    let addrs = if h.v6 { &p[8..40] } else { &p[12..20] };
    let pseudo = sum(addrs, 6 + tcp_total);
    p[ip + 16..ip + 18].copy_from_slice(&fold(pseudo).to_be_bytes());
    let hdr = VirtioNetHdr {
        flags: 1, // NEEDS_CSUM
        gso_type: if h.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        },
        hdr_len: (ip + h.tcp_len) as u16,
        gso_size: gso_size as u16,
        csum_start: ip as u16,
        csum_offset: 16,
    };
    // The buffer always has room for the header.
    let _ = hdr.encode(&mut buf[..HDR]);
}

fn plain(buf: &mut [u8]) {
    let _ = VirtioNetHdr::default().encode(&mut buf[..HDR]);
}

/// Coalesces `bufs` in place; `write` receives the indices of the buffers to write, in order.
/// Buffers merged into an earlier one are left out (their contents are stale).
pub(crate) fn coalesce(bufs: &mut [Vec<u8>], write: &mut Vec<usize>) {
    write.clear();
    // The open run: index of its first buffer, that segment, bytes so far, segments, PSH seen.
    let mut run: Option<(usize, Segment, usize, usize)> = None;
    for i in 0..bufs.len() {
        let seg = bufs[i].get(HDR..).and_then(segment);
        if let (Some((head_i, h, bytes, count)), Some(n)) = (run, seg) {
            let fits = bufs[head_i].len() - HDR + n.payload <= MAX_SUPER;
            // Every segment but the last has the head's size; a shorter one ends the run.
            let same_size = bytes == h.payload * count;
            let open = h.flags & TCP_PSH == 0 || count == 0;
            if fits && same_size && open && n.payload <= h.payload && {
                let (a, b) = bufs.split_at_mut(i);
                continues(&a[head_i][HDR..], &h, bytes, &b[0][HDR..], &n)
            } {
                let (a, b) = bufs.split_at_mut(i);
                let start = HDR + n.ip_len + n.tcp_len;
                a[head_i].extend_from_slice(&b[0][start..]);
                let mut h = h;
                h.flags |= n.flags & TCP_PSH;
                run = Some((head_i, h, bytes + n.payload, count + 1));
                continue;
            }
        }
        if let Some((head_i, h, _, count)) = run.take() {
            if count > 1 {
                seal(&mut bufs[head_i], &h, h.payload, h.flags & TCP_PSH != 0);
            } else {
                plain(&mut bufs[head_i]);
            }
            write.push(head_i);
        }
        match seg {
            Some(n) => run = Some((i, n, n.payload, 1)),
            None => {
                plain(&mut bufs[i]);
                write.push(i);
            }
        }
    }
    if let Some((head_i, h, _, count)) = run {
        if count > 1 {
            seal(&mut bufs[head_i], &h, h.payload, h.flags & TCP_PSH != 0);
        } else {
            plain(&mut bufs[head_i]);
        }
        write.push(head_i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tun_rs::gso_split;

    /// An IPv4 or IPv6 TCP segment with a valid checksum, behind a virtio header.
    fn seg(v6: bool, seq: u32, payload: &[u8], flags: u8) -> Vec<u8> {
        let mut p = if v6 {
            crate::sim::ip_packet(
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
                6,
                1000,
                443,
                payload,
            )
        } else {
            crate::sim::ip_packet(
                "10.0.0.1".parse().unwrap(),
                "10.0.0.2".parse().unwrap(),
                6,
                1000,
                443,
                payload,
            )
        }
        .unwrap();
        let ip = if v6 { 40 } else { 20 };
        p[ip + 4..ip + 8].copy_from_slice(&seq.to_be_bytes());
        p[ip + 13] = flags;
        if !v6 {
            p[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(&p[..20], 0));
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let tcp_total = (p.len() - ip) as u64;
        let addrs = if v6 {
            p[8..40].to_vec()
        } else {
            p[12..20].to_vec()
        };
        p[ip + 16..ip + 18].copy_from_slice(&[0, 0]);
        let c = !fold(sum(&p[ip..], sum(&addrs, 6 + tcp_total)));
        p[ip + 16..ip + 18].copy_from_slice(&c.to_be_bytes());
        let mut b = vec![0u8; HDR];
        b.extend_from_slice(&p);
        b
    }

    /// Splits a written buffer back as the kernel would (tun-rs's own GSO split), and checks
    /// each resulting segment's checksum.
    fn resplit(buf: &[u8]) -> Vec<Vec<u8>> {
        let hdr = VirtioNetHdr::decode(&buf[..HDR]).unwrap();
        if hdr.gso_type == 0 {
            return vec![buf[HDR..].to_vec()];
        }
        let mut input = buf[HDR..].to_vec();
        let mut out = vec![vec![0u8; 2000]; 64];
        let mut sizes = vec![0usize; 64];
        let n = gso_split(
            &mut input,
            hdr,
            &mut out,
            &mut sizes,
            0,
            hdr.gso_type == VIRTIO_NET_HDR_GSO_TCPV6,
        )
        .unwrap();
        (0..n).map(|i| out[i][..sizes[i]].to_vec()).collect()
    }

    fn tcp_checksum_ok(p: &[u8]) -> bool {
        let v6 = p[0] >> 4 == 6;
        let ip = if v6 { 40 } else { 20 };
        let addrs = if v6 { &p[8..40] } else { &p[12..20] };
        fold(sum(&p[ip..], sum(addrs, 6 + (p.len() - ip) as u64))) == 0xffff
    }

    #[test]
    fn a_run_becomes_one_super_packet_that_splits_back_exactly() {
        for v6 in [false, true] {
            let segs: Vec<Vec<u8>> = (0..10u32)
                .map(|i| seg(v6, 1000 + i * 100, &[i as u8; 100], TCP_ACK))
                .collect();
            let mut bufs = segs.clone();
            let mut write = Vec::new();
            coalesce(&mut bufs, &mut write);
            assert_eq!(write, vec![0], "v6={v6}");
            let back = resplit(&bufs[0]);
            assert_eq!(back.len(), 10);
            for (b, s) in back.iter().zip(&segs) {
                // Same payload and sequence; the split recomputes lengths and checksums.
                assert_eq!(b.len(), s.len() - HDR);
                assert_eq!(&b[b.len() - 100..], &s[s.len() - 100..]);
                assert!(tcp_checksum_ok(b), "v6={v6}");
            }
        }
    }

    #[test]
    fn breaks_runs_where_they_must() {
        let mut bufs = vec![
            seg(false, 0, &[1; 100], TCP_ACK),
            seg(false, 100, &[2; 100], TCP_ACK | TCP_PSH),
            seg(false, 200, &[3; 100], TCP_ACK), // after PSH: new run
            seg(false, 400, &[4; 100], TCP_ACK), // gap in sequence: new run
            seg(false, 500, &[5; 50], TCP_ACK),  // shorter: joins as the last
            seg(false, 550, &[6; 50], TCP_ACK),  // after a shorter one: new run
            seg(true, 0, &[7; 100], TCP_ACK),    // other family
            seg(false, 600, &[], TCP_ACK),       // pure ACK: written alone
        ];
        let mut write = Vec::new();
        coalesce(&mut bufs, &mut write);
        assert_eq!(write, vec![0, 2, 3, 5, 6, 7]);
        assert_eq!(resplit(&bufs[0]).len(), 2);
        assert_eq!(resplit(&bufs[3]).len(), 2);
        let hdr = VirtioNetHdr::decode(&bufs[7][..HDR]).unwrap();
        assert_eq!(hdr.gso_type, 0);
    }

    #[test]
    fn other_packets_pass_untouched() {
        let udp = {
            let mut b = vec![0u8; HDR];
            b.extend(
                crate::sim::ip_packet(
                    "10.0.0.1".parse().unwrap(),
                    "10.0.0.2".parse().unwrap(),
                    17,
                    1,
                    2,
                    b"x",
                )
                .unwrap(),
            );
            b
        };
        let mut bufs = vec![udp.clone(), vec![0u8; HDR + 3], udp.clone()];
        let mut write = Vec::new();
        coalesce(&mut bufs, &mut write);
        assert_eq!(write, vec![0, 1, 2]);
        assert_eq!(bufs[0], udp);
    }
}
