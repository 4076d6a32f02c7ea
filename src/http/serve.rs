//! Accepting and keeping HTTP connections, each bounded: a peer can hold
//! neither a descriptor nor a task for long, nor more than [`Limits`] allow.
//!
//! - **Header timeout**: a request's head must arrive whole within it,
//!   counted from when the server starts waiting for it, on a new
//!   connection as on a kept-alive one after its last answer (hyper starts
//!   that clock as soon as it waits): it is also the keep-alive idle limit.
//! - **Idle timeout**: a connection on which no byte moved either way for
//!   this long is closed (a client that stops reading an answer).
//! - **Connection cap**: at most `max_connections` at once, each a
//!   descriptor out of the budget the team sockets share. A connection
//!   beyond it takes the place of the oldest one waiting for a request
//!   (what a slow or idle peer holds cheaply), so a scraper or `/healthz`
//!   still gets in during a flood; only when every connection is being
//!   answered is it refused, closed at once. Both are counted and warned
//!   about at most every [`WARN_EVERY`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use super::host::Hosts;

/// How a server bounds its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Longest wait for a whole request head (and between requests).
    pub header_timeout: Duration,
    /// Longest time no byte moves on a connection.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// The least time between two warnings about the cap.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// After an accept error (out of descriptors), the pause before the next.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Longest wait for a connection closed to make room to let its
/// descriptor go.
const EVICT_WITHIN: Duration = Duration::from_secs(1);

/// Connections right now and over the server's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Open now.
    pub open: usize,
    /// Of those, inside a handler now.
    pub busy: usize,
    /// Closed to make room for a newer one.
    pub evicted: u64,
    /// Refused at the cap, every connection being answered.
    pub refused: u64,
}

struct Slot {
    busy: Arc<AtomicUsize>,
    evict: Option<oneshot::Sender<()>>,
}

/// The open connections, oldest first.
#[derive(Default)]
pub(crate) struct Slots {
    open: Mutex<BTreeMap<u64, Slot>>,
    next: AtomicU64,
    evicted: AtomicU64,
    refused: AtomicU64,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Slot>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> ConnStats {
        let open = self.lock();
        ConnStats {
            open: open.len(),
            busy: open
                .values()
                .filter(|s| s.busy.load(Ordering::Relaxed) > 0)
                .count(),
            evicted: self.evicted.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }

    fn add(&self) -> (u64, Arc<AtomicUsize>, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let busy = Arc::new(AtomicUsize::new(0));
        let (evict, evicted) = oneshot::channel();
        let slot = Slot {
            busy: busy.clone(),
            evict: Some(evict),
        };
        self.lock().insert(id, slot);
        (id, busy, evicted)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Tells the oldest connection waiting for a request to close; whether
    /// there was one.
    fn evict_oldest_waiting(&self) -> bool {
        let mut open = self.lock();
        let victim = open
            .values_mut()
            .find(|s| s.evict.is_some() && s.busy.load(Ordering::Relaxed) == 0);
        match victim.and_then(|s| s.evict.take()) {
            Some(evict) => {
                let _ = evict.send(());
                self.evicted.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

/// Accepts until the task is dropped.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    hosts: Arc<Hosts>,
    slots: Arc<Slots>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut accept_warned: Option<Instant> = None;
    let mut cap = CapWarning::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                if accept_warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(%error, "HTTP: cannot accept a connection");
                    accept_warned = Some(Instant::now());
                }
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if slots.evict_oldest_waiting() => {
                tokio::time::timeout(EVICT_WITHIN, permits.clone().acquire_owned())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            Err(_) => None,
        };
        match permit {
            Some(permit) => {
                let slot = slots.add();
                let (router, hosts, slots) = (router.clone(), hosts.clone(), slots.clone());
                tokio::spawn(serve(stream, slot, router, limits, hosts, slots, permit));
            }
            None => {
                slots.refused.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        }
        cap.maybe_warn(&slots, limits.max_connections);
    }
}

/// Warns about the cap at most every [`WARN_EVERY`], with the counts since
/// the last warning.
#[derive(Default)]
struct CapWarning {
    at: Option<Instant>,
    evicted: u64,
    refused: u64,
}

impl CapWarning {
    fn maybe_warn(&mut self, slots: &Slots, max_connections: usize) {
        let evicted = slots.evicted.load(Ordering::Relaxed);
        let refused = slots.refused.load(Ordering::Relaxed);
        let news = (evicted, refused) != (self.evicted, self.refused);
        if news && self.at.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            tracing::warn!(
                max_connections,
                closed_to_make_room = evicted - self.evicted,
                refused = refused - self.refused,
                "HTTP: connection cap reached"
            );
            *self = CapWarning {
                at: Some(Instant::now()),
                evicted,
                refused,
            };
        }
    }
}

/// Serves one connection until it ends, times out or is told to make room.
async fn serve(
    stream: TcpStream,
    (id, busy, evicted): (u64, Arc<AtomicUsize>, oneshot::Receiver<()>),
    router: Router,
    limits: Limits,
    hosts: Arc<Hosts>,
    slots: Arc<Slots>,
    permit: OwnedSemaphorePermit,
) {
    let local = stream.local_addr().ok();
    let moved = Arc::new(AtomicU64::new(0));
    let epoch = Instant::now();
    let io = TokioIo::new(Watched {
        inner: stream,
        moved: moved.clone(),
        epoch,
    });
    let app = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let guard = Busy::enter(&busy);
        let answer = match hosts.refusal(request.headers(), local) {
            Some(refusal) => Err(refusal),
            None => Ok(app.call(request)),
        };
        async move {
            let _guard = guard;
            match answer {
                Ok(answer) => answer.await,
                Err(refusal) => Ok::<Response, Infallible>(refusal.into_response()),
            }
        }
    });
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = http.serve_connection(io, service);
    tokio::select! {
        _ = connection => {}
        () = idle(&moved, epoch, limits.idle_timeout) => {}
        _ = evicted => {}
    }
    slots.remove(id);
    drop(permit);
}

/// Resolves once no byte has moved for `limit`.
async fn idle(moved: &AtomicU64, epoch: Instant, limit: Duration) {
    loop {
        let last = epoch + Duration::from_micros(moved.load(Ordering::Relaxed));
        let until = last + limit;
        if Instant::now() >= until {
            return;
        }
        tokio::time::sleep_until(until).await;
    }
}

/// Marks its connection as answering a request while alive.
struct Busy(Arc<AtomicUsize>);

impl Busy {
    fn enter(busy: &Arc<AtomicUsize>) -> Busy {
        busy.fetch_add(1, Ordering::Relaxed);
        Busy(busy.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A socket that notes when a byte last moved (µs since `epoch`).
struct Watched {
    inner: TcpStream,
    moved: Arc<AtomicU64>,
    epoch: Instant,
}

impl Watched {
    fn note(&self) {
        let since = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.moved.store(since, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.note();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.note();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
