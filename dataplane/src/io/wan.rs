//! The WAN socket, batched: recvmmsg with UDP GRO in, sendmsg with UDP GSO out (quinn-udp does
//! both well), so that a burst of datagrams costs a few system calls instead of one each.
//!
//! [`TxBatch`] gathers datagrams as the engine produces them: consecutive datagrams to the same
//! destination, of the same session and of the same size travel as one GSO send (the last may
//! be shorter); anything else flushes the batch first. One session per batch because a receiver
//! that runs several workers (corridor's `workers`) has the whole GSO batch delivered to the
//! worker of its first datagram: the rest would have to be handed over. Order is kept, so no flow is ever reordered.

use std::io::IoSliceMut;
use std::net::{SocketAddr, UdpSocket};

use quinn_udp::{RecvMeta, Transmit, UdpSockRef, UdpSocketState};

/// Datagrams read per receive call (each may carry several GRO segments).
pub(crate) const RX_BATCH: usize = 32;
/// Size of one receive buffer: a GRO super-datagram is at most 64 KiB.
const RX_BUF: usize = 65_536;
/// Socket buffers: a burst of a few thousand datagrams must not be dropped by the kernel.
const SOCKET_BUFFER: usize = 8 << 20;

/// The WAN socket with its batching state.
pub(crate) struct Wan {
    socket: UdpSocket,
    state: UdpSocketState,
    rx: Vec<Vec<u8>>,
    meta: Vec<RecvMeta>,
}

impl std::fmt::Debug for Wan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wan")
            .field("local", &self.socket.local_addr().ok())
            .field("gso_segments", &self.state.max_gso_segments())
            .field("gro_segments", &self.state.gro_segments())
            .finish()
    }
}

impl Wan {
    /// Wraps a bound socket (made non-blocking here).
    pub(crate) fn new(socket: UdpSocket) -> std::io::Result<Self> {
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Best effort: without CAP_NET_ADMIN the kernel caps these at rmem_max/wmem_max.
        let _ = state.set_recv_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        let _ = state.set_send_buffer_size(UdpSockRef::from(&socket), SOCKET_BUFFER);
        Ok(Wan {
            socket,
            state,
            rx: (0..RX_BATCH).map(|_| vec![0u8; RX_BUF]).collect(),
            meta: vec![RecvMeta::default(); RX_BATCH],
        })
    }

    /// The socket, for registering with the event loop.
    pub(crate) fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// How many segments one GSO send may carry.
    pub(crate) fn max_gso_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Receives a batch; returns how many entries of [`Wan::received`] are filled.
    pub(crate) fn recv(&mut self) -> std::io::Result<usize> {
        let mut slices: Vec<IoSliceMut<'_>> = Vec::with_capacity(RX_BATCH);
        slices.extend(self.rx.iter_mut().map(|b| IoSliceMut::new(b)));
        self.state
            .recv(UdpSockRef::from(&self.socket), &mut slices, &mut self.meta)
    }

    /// The `i`-th received entry, split into its datagrams (GRO segments of `stride` bytes).
    pub(crate) fn received(&self, i: usize) -> (SocketAddr, impl Iterator<Item = &[u8]>) {
        let meta = &self.meta[i];
        let data = &self.rx[i][..meta.len.min(RX_BUF)];
        let stride = if meta.stride == 0 {
            data.len().max(1)
        } else {
            meta.stride
        };
        (meta.addr, data.chunks(stride))
    }

    /// Sends `contents` to `to`; with `segment`, as datagrams of that size (the last may be
    /// shorter) in one GSO call.
    pub(crate) fn send(
        &self,
        to: SocketAddr,
        contents: &[u8],
        segment: Option<usize>,
    ) -> std::io::Result<()> {
        let transmit = Transmit {
            destination: to,
            ecn: None,
            contents,
            segment_size: segment.filter(|s| *s < contents.len()),
            src_ip: None,
        };
        self.state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
    }
}

/// Outcome counts of a flush, for the I/O counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sent {
    /// Datagrams handed to the kernel.
    pub(crate) ok: u64,
    /// Datagrams dropped because the socket buffer was full.
    pub(crate) full: u64,
    /// Datagrams dropped for other errors.
    pub(crate) failed: u64,
}

/// Datagrams waiting to be sent as one GSO batch.
#[derive(Debug)]
pub(crate) struct TxBatch {
    buf: Vec<u8>,
    to: Option<SocketAddr>,
    /// Message type and receiver index of the batch's first datagram: its session.
    session: [u8; 8],
    segment: usize,
    count: usize,
    /// The last datagram was shorter than `segment`: nothing may follow it in this batch.
    closed: bool,
    max_segments: usize,
}

impl TxBatch {
    pub(crate) fn new(max_segments: usize) -> Self {
        TxBatch {
            buf: Vec::with_capacity(RX_BUF),
            to: None,
            session: [0; 8],
            segment: 0,
            count: 0,
            closed: false,
            max_segments: max_segments.clamp(1, 64),
        }
    }

    /// Adds a datagram, flushing first if it cannot join the current batch.
    pub(crate) fn push(&mut self, wan: &Wan, to: SocketAddr, datagram: &[u8], sent: &mut Sent) {
        let session = session_of(datagram);
        let joins = self.to == Some(to)
            && self.session == session
            && !self.closed
            && datagram.len() <= self.segment
            && self.count < self.max_segments
            && self.buf.len() + datagram.len() <= RX_BUF;
        if !joins {
            self.flush(wan, sent);
            self.to = Some(to);
            self.session = session;
            self.segment = datagram.len();
        }
        self.buf.extend_from_slice(datagram);
        self.count += 1;
        self.closed = datagram.len() < self.segment;
    }

    /// Sends what is gathered.
    pub(crate) fn flush(&mut self, wan: &Wan, sent: &mut Sent) {
        let Some(to) = self.to.take() else {
            return;
        };
        let n = self.count as u64;
        match wan.send(to, &self.buf, Some(self.segment)) {
            Ok(()) => sent.ok += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => sent.full += n,
            Err(_) => sent.failed += n,
        }
        self.buf.clear();
        self.count = 0;
        self.closed = false;
    }
}

/// The first eight bytes of a WireGuard message (type, reserved, and for data its receiver
/// index): equal for the datagrams of one session.
fn session_of(datagram: &[u8]) -> [u8; 8] {
    let mut key = [0u8; 8];
    let n = datagram.len().min(8);
    key[..n].copy_from_slice(&datagram[..n]);
    key
}
