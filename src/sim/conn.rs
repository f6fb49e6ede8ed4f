//! Connection-level faults (`--fault`): what the sim does to a connection beyond one response —
//! reset it (RST), close it when idle, or hold it open past a response and reset it when the
//! client's next request arrives. Only connections of a sim started with `--fault` come here;
//! the others keep the plain path in `server.rs`.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

use super::stream::SimBody;
use crate::net::HyperIo;

/// Makes the next close of `fd` send RST instead of FIN (`SO_LINGER` 0).
pub(crate) fn set_reset_on_close(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a valid pointer and size; a stale fd only makes it fail.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// One connection's fault state, shared by its task, its handler calls and its response bodies.
pub(crate) struct ConnCtl {
    pub(crate) fd: RawFd,
    /// Requests whose response body is not yet dropped.
    in_flight: Cell<u32>,
    /// When `in_flight` last fell to 0 (or the connection opened).
    idle_since: Cell<Instant>,
    /// Abort the connection now (with `SO_LINGER` 0 set: RST).
    pub(crate) reset: Cell<bool>,
    /// Call hyper's graceful shutdown (no keep-alive after the current response).
    shutdown: Cell<bool>,
    /// Do not shut the socket down when hyper is done: `close_after_response` keeps it open in
    /// `held` until the client's next request arrives.
    hold: Rc<Cell<bool>>,
    held: Cell<Option<OwnedFd>>,
    changed: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl ConnCtl {
    pub(crate) fn new(fd: RawFd) -> Rc<ConnCtl> {
        Rc::new(ConnCtl {
            fd,
            in_flight: Cell::new(0),
            idle_since: Cell::new(Instant::now()),
            reset: Cell::new(false),
            shutdown: Cell::new(false),
            hold: Rc::new(Cell::new(false)),
            held: Cell::new(None),
            changed: Cell::new(false),
            waker: RefCell::new(None),
        })
    }

    pub(crate) fn notify(&self) {
        self.changed.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Completes at the next [`ConnCtl::notify`].
    pub(crate) async fn changed(&self) {
        std::future::poll_fn(|cx| {
            if self.changed.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub(crate) fn take_shutdown(&self) -> bool {
        self.shutdown.replace(false)
    }

    /// Idle since when, if no request is in flight.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.get() == 0).then(|| self.idle_since.get())
    }

    /// A request arrived; the guard ends it when dropped (with its response body).
    pub(crate) fn begin(self: &Rc<Self>) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        self.notify();
        InFlight(self.clone())
    }

    /// `close_after_response`: keep the socket past hyper (a duplicate fd), and have hyper
    /// close after the current response without saying so in its headers.
    fn hold_after_response(&self) {
        // SAFETY: dup of our own open socket; the result is owned by the OwnedFd.
        let dup = unsafe { libc::dup(self.fd) };
        if dup >= 0 {
            // SAFETY: `dup` is a fresh fd nobody else owns.
            self.held.set(Some(unsafe { OwnedFd::from_raw_fd(dup) }));
            self.hold.set(true);
        }
        self.shutdown.set(true);
        self.notify();
    }

    pub(crate) fn take_held(&self) -> Option<OwnedFd> {
        self.held.take()
    }

    pub(crate) fn io<S>(&self, inner: HyperIo<S>) -> SimIo<S> {
        SimIo {
            inner,
            hold: self.hold.clone(),
        }
    }
}

/// Ends an in-flight request when dropped.
pub(crate) struct InFlight(Rc<ConnCtl>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let c = &self.0;
        c.in_flight.set(c.in_flight.get().saturating_sub(1));
        c.idle_since.set(Instant::now());
        c.notify();
    }
}

/// Waits until the peer sends bytes (its next request) or closes, then closes `fd`: with the
/// request unread, the kernel answers with RST. Bounded by `limit`.
pub(crate) async fn reset_on_next_request(fd: OwnedFd, limit: Duration, stop: impl Fn() -> bool) {
    let until = Instant::now() + limit;
    let mut byte = [0u8; 1];
    while Instant::now() < until && !stop() {
        // SAFETY: recv into a 1-byte buffer we own; MSG_PEEK leaves the byte unread.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                byte.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    drop(fd);
}

/// The connection's I/O (plain TCP or TLS): hyper's, except that shutdown is skipped while the
/// socket is held.
pub(crate) struct SimIo<S> {
    inner: HyperIo<S>,
    hold: Rc<Cell<bool>>,
}

impl<S: futures_lite::AsyncRead + Unpin> hyper::rt::Read for SimIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: futures_lite::AsyncWrite + Unpin> hyper::rt::Write for SimIo<S> {
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
        if self.hold.get() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body on a faulted connection: ends its request when dropped and, for
/// `close_after_response`, asks for the close once hyper has written the head (so hyper does not
/// announce it with `connection: close`).
pub(crate) struct Tracked {
    pub(crate) inner: SimBody,
    pub(crate) ctl: Rc<ConnCtl>,
    pub(crate) close_after: bool,
    pub(crate) _in_flight: InFlight,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if std::mem::take(&mut self.close_after) {
            self.ctl.hold_after_response();
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        !self.close_after && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
