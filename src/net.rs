//! Glue between glommio's sockets and hyper's I/O traits, shared by the client and the sim.
//!
//! [`StampedTcp`] wraps a glommio `TcpStream` and records, in a [`ReadStamp`] shared with its
//! owner, when the bytes of the last read that returned any arrived. The client uses that stamp
//! as the arrival time of every SSE event carried by those bytes, so a slow parse never shifts a
//! timestamp (the drift evalscope and AIPerf show under load).
//!
//! The arrival time is the kernel's: sockets have `SO_TIMESTAMPNS` on, reads are `recvmsg`, and
//! the receive timestamp in the control message (the time the last segment read was queued on
//! the socket, `CLOCK_REALTIME`) is moved onto our monotonic clock by its age at the read. So
//! the stamp does not depend on when the executor got around to reading: not on a busy core, and
//! not on how many completions the executor handles per wake-up. Where the kernel gives no
//! timestamp, the read's own time is used.
//!
//! It also records, in a [`WriteStamp`], when hyper issued the first write of a request: the owner
//! clears the stamp before handing hyper a request, and the first write sets it. That is the
//! "actual send" time of the send-lag figure.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
#[cfg(test)]
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hyper::body::{Body, Frame, SizeHint};

use crate::clock;

/// Time (ns since the clock epoch) of the most recent read that returned data.
pub type ReadStamp = Rc<Cell<u64>>;

/// Time (ns since the clock epoch) of the first write issued since the owner last set it to 0;
/// 0 while nothing has been written.
pub type WriteStamp = Rc<Cell<u64>>;

/// A glommio TCP stream that stamps its reads and its first write (see the module docs).
///
/// It is the transport under every connection: plain HTTP wraps it in [`HyperIo`] directly, TLS
/// puts the TLS session between the two, so the stamps are the socket's in both cases.
pub struct StampedTcp {
    stream: TcpStream,
    stamp: ReadStamp,
    write_stamp: WriteStamp,
    /// `SO_TIMESTAMPNS` is on: reads go through [`recv_stamped`].
    kernel_stamps: bool,
}

impl StampedTcp {
    pub fn new(stream: TcpStream) -> (Self, ReadStamp, WriteStamp) {
        let stamp: ReadStamp = Rc::new(Cell::new(0));
        let write_stamp: WriteStamp = Rc::new(Cell::new(0));
        let kernel_stamps = enable_receive_timestamps(stream.as_raw_fd());
        (
            StampedTcp {
                stream,
                stamp: stamp.clone(),
                write_stamp: write_stamp.clone(),
                kernel_stamps,
            },
            stamp,
            write_stamp,
        )
    }
}

/// Asks the kernel to timestamp every segment queued on `fd` (`SO_TIMESTAMPNS`); false if it
/// will not, and reads then use their own time.
fn enable_receive_timestamps(fd: RawFd) -> bool {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on our own socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// A non-blocking `recvmsg` into `buf`; `None` when it would block. Sets `*arrival_ns` to the
/// bytes' arrival on [`clock::now_ns`]'s clock: the kernel's receive timestamp when there is
/// one, else now.
fn recv_stamped(fd: RawFd, buf: &mut [u8], arrival_ns: &mut u64) -> Option<io::Result<usize>> {
    // Room for one SCM_TIMESTAMPNS (a 16-byte cmsghdr + a 16-byte timespec), u64-aligned as
    // cmsghdr requires.
    let mut control = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: zeroed msghdr is valid (no name, no control); we fill iov and control below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in `msg` points into locals that outlive the call.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.kind() {
            io::ErrorKind::WouldBlock => None,
            _ => Some(Err(err)),
        };
    }
    *arrival_ns = match (n > 0).then(|| receive_timestamp(&msg)).flatten() {
        Some(kernel_ns) => {
            let (now_ns, real_ns) = clock_pair();
            // The segment's age now, on the wall clock, taken off our monotonic now. Clamped:
            // a wall-clock step must not put arrival in the future.
            now_ns.saturating_sub(real_ns.saturating_sub(kernel_ns))
        }
        // No timestamp (or end of stream): the read's own time.
        None => clock::now_ns(),
    };
    Some(Ok(n as usize))
}

/// Monotonic and wall-clock now, read together: the wall clock twice around the monotonic one,
/// and again if the thread was held up in between (a preemption there would shift the
/// mapping, and so the stamp, by the time it was held up).
fn clock_pair() -> (u64, u64) {
    let mut best = (0, 0, u64::MAX);
    for _ in 0..3 {
        let before = clock::realtime_ns();
        let mono = clock::now_ns();
        let after = clock::realtime_ns();
        let spread = after.saturating_sub(before);
        if spread < best.2 {
            best = (mono, before + spread / 2, spread);
        }
        if spread <= 2_000 {
            break;
        }
    }
    (best.0, best.1)
}

/// The SCM_TIMESTAMPNS control message of a `recvmsg`, in ns of `CLOCK_REALTIME`.
fn receive_timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: walking the control messages the kernel wrote into `msg`'s control buffer, with
    // libc's own CMSG macros, and reading a timespec only from a cmsg of the type that holds one.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::timespec);
                if ts.tv_sec <= 0 {
                    return None;
                }
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            cmsg = libc::CMSG_NXTHDR(msg, cmsg);
        }
    }
    None
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.kernel_stamps {
            let mut arrival_ns = 0;
            let polled = this.stream.poll_read_with(cx, buf, &mut |fd, buf| {
                recv_stamped(fd, buf, &mut arrival_ns)
            });
            if let Poll::Ready(Ok(n)) = polled {
                if n > 0 {
                    // Never earlier than the previous read's: a later read's bytes did not
                    // arrive before an earlier read's (the wall-to-monotonic mapping can
                    // jitter by a few µs between reads).
                    this.stamp.set(arrival_ns.max(this.stamp.get()));
                }
            }
            polled
        } else {
            let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
            if let Poll::Ready(Ok(n)) = polled {
                if n > 0 {
                    this.stamp.set(clock::now_ns());
                }
            }
            polled
        }
    }
}

impl AsyncWrite for StampedTcp {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // Stamped when the write is issued, not when it completes: glommio completes a write
        // once the kernel took all of it, which for a large body waits for the server to read
        // (its backpressure, not our lag).
        if self.write_stamp.get() == 0 && !buf.is_empty() {
            self.write_stamp.set(clock::now_ns());
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

/// Any futures-io stream (a [`StampedTcp`], or a TLS session over one) as `hyper::rt::{Read,
/// Write}`.
pub struct HyperIo<S = StampedTcp> {
    inner: S,
}

impl HyperIo<StampedTcp> {
    /// Plain TCP: the stream stamped, and its stamps.
    pub fn new(stream: TcpStream) -> (Self, ReadStamp, WriteStamp) {
        let (tcp, stamp, write_stamp) = StampedTcp::new(stream);
        (HyperIo { inner: tcp }, stamp, write_stamp)
    }
}

impl<S> HyperIo<S> {
    pub fn wrap(inner: S) -> Self {
        HyperIo { inner }
    }
}

impl<S: AsyncRead + Unpin> hyper::rt::Read for HyperIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: our streams only write into the slice (glommio and rustls copy from their own
        // buffers), and we advance the cursor by exactly the number of bytes reported written,
        // so no uninitialised byte is ever exposed as initialised. Zeroing the (up to hundreds
        // of KiB) buffer on every read would cost more than the read itself.
        let slice = unsafe {
            let uninit = buf.as_mut();
            std::slice::from_raw_parts_mut(uninit.as_mut_ptr() as *mut u8, uninit.len())
        };
        match Pin::new(&mut self.inner).poll_read(cx, slice) {
            Poll::Ready(Ok(n)) => {
                // SAFETY: `n` bytes were just written by the read above.
                unsafe { buf.advance(n) };
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncWrite + Unpin> hyper::rt::Write for HyperIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A request or response body made of immutable segments, sent without copying them into one
/// buffer first. A conversation's history is kept as such segments, so building turn k clones
/// k reference counts instead of re-serialising every earlier message.
///
/// Boxed, so the body is one pointer: hyper's client queues requests in a tokio channel whose
/// first block, allocated per connection, has room for 32 of them: 9,248 bytes per connection
/// with the 40-byte body inline, ≈ 8.2 KiB with this one (10k streams: 25.4 → 24.7 KiB each).
/// One small allocation per request is cheap next to the request itself.
pub struct SegmentsBody(Box<Segments>);

struct Segments {
    segments: std::vec::IntoIter<Bytes>,
    remaining: u64,
}

impl SegmentsBody {
    pub fn new(segments: Vec<Bytes>) -> Self {
        let remaining = segments.iter().map(|s| s.len() as u64).sum();
        SegmentsBody(Box::new(Segments {
            segments: segments.into_iter(),
            remaining,
        }))
    }

    pub fn len(&self) -> u64 {
        self.0.remaining
    }

    pub fn is_empty(&self) -> bool {
        self.0.remaining == 0
    }
}

impl Body for SegmentsBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self.get_mut().0;
        for seg in this.segments.by_ref() {
            if !seg.is_empty() {
                this.remaining -= seg.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(seg))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.0.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream as StdTcpStream};

    /// A read 40 ms after the bytes arrived is stamped with their arrival (the kernel's receive
    /// timestamp, moved onto our monotonic clock), not with the time of the read. On loopback
    /// the segment is queued on the receiving socket inside the sender's `write`, so the stamp
    /// lies between the two clock readings around it — however busy the machine is.
    #[test]
    fn a_late_read_is_stamped_with_the_arrival() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        assert!(enable_receive_timestamps(reader.as_raw_fd()));
        let mut buf = [0u8; 64];
        let mut arrival_ns = 0;
        assert!(recv_stamped(reader.as_raw_fd(), &mut buf, &mut arrival_ns).is_none());
        // The kernel turns receive timestamping on for the whole stack from a work queue, a
        // moment after the first socket asks: probe until a byte read 5 ms late is stamped
        // early (in parley only a connection's first bytes can fall in that moment).
        let mut on = false;
        for _ in 0..200 {
            writer.write_all(b"p").unwrap();
            std::thread::sleep(Duration::from_millis(5));
            recv_stamped(reader.as_raw_fd(), &mut buf, &mut arrival_ns);
            if clock::now_ns() - arrival_ns >= 4_000_000 {
                on = true;
                break;
            }
        }
        assert!(on, "the kernel never stamped a received segment");

        let before_ns = clock::now_ns();
        writer.write_all(b"data: {}\n\n").unwrap();
        let after_ns = clock::now_ns();
        std::thread::sleep(Duration::from_millis(40));
        let n = recv_stamped(reader.as_raw_fd(), &mut buf, &mut arrival_ns)
            .expect("bytes are waiting")
            .unwrap();
        let read_ns = clock::now_ns();
        assert_eq!(&buf[..n], b"data: {}\n\n");
        // 0.2 ms of slack for the wall-clock-to-monotonic mapping (two clock reads).
        assert!(
            arrival_ns + 200_000 >= before_ns && arrival_ns <= after_ns + 200_000,
            "stamp {arrival_ns} outside the write [{before_ns}, {after_ns}]"
        );
        assert!(
            read_ns - arrival_ns >= 39_000_000,
            "the read was 40 ms later"
        );
    }

    /// Without SO_TIMESTAMPNS there is no control message: the read's own time is used.
    #[test]
    fn without_kernel_stamps_the_read_time_is_used() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut writer = StdTcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (reader, _) = listener.accept().unwrap();
        writer.write_all(b"x").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let before_read_ns = clock::now_ns();
        let mut buf = [0u8; 8];
        let mut arrival_ns = 0;
        let n = recv_stamped(reader.as_raw_fd(), &mut buf, &mut arrival_ns)
            .unwrap()
            .unwrap();
        assert_eq!(n, 1);
        assert!(arrival_ns >= before_read_ns);
    }
}
