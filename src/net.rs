//! Glue between glommio's sockets and hyper's I/O traits, shared by the client and the sim.
//!
//! [`HyperIo`] wraps a glommio `TcpStream` and records, in a [`ReadStamp`] shared with its owner,
//! the monotonic time of the last read that returned bytes. The client uses that stamp as the
//! arrival time of every SSE event carried by those bytes, so a slow parse never shifts a
//! timestamp (the drift evalscope and AIPerf show under load).
//!
//! It also records, in a [`WriteStamp`], when hyper issued the first write of a request: the owner
//! clears the stamp before handing hyper a request, and the first write sets it. That is the
//! "actual send" time of the send-lag figure.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

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
}

impl StampedTcp {
    pub fn new(stream: TcpStream) -> (Self, ReadStamp, WriteStamp) {
        let stamp: ReadStamp = Rc::new(Cell::new(0));
        let write_stamp: WriteStamp = Rc::new(Cell::new(0));
        (
            StampedTcp {
                stream,
                stamp: stamp.clone(),
                write_stamp: write_stamp.clone(),
            },
            stamp,
            write_stamp,
        )
    }
}

impl AsyncRead for StampedTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.stamp.set(clock::now_ns());
            }
        }
        polled
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
