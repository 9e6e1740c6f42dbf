//! A request body that forwards what it reads and keeps a copy of it, up to a cap, so that the
//! request can be sent a second time.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// A request body that can be sent twice without being read in full first.
///
/// The first attempt forwards frames from the original body as they come and keeps a copy of
/// the data (cheap clones of [`Bytes`], not copies, when the original yields `Bytes`) and of the
/// trailers, up to a cap. A replay sends the kept data, then whatever part of the original body
/// the first attempt never read, then the trailers. Once the body outgrows the cap, nothing more
/// is kept, what was kept is released at once, and the request can no longer be replayed. Its
/// [`size_hint`](Body::size_hint), and so its `Content-Length`, is the original's.
///
/// Made by [`ReplayBody::recording`], which the [`ReplayWrapped`](super::ReplayWrapped) policy
/// and the [`ReplayableBody`](super::ReplayableBody) types that stream use, and by
/// [`ReplayBody::new`] for a body passed through untouched (a request that will not be
/// replayed).
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// Not kept: a body that will not be replayed, or one known to exceed the cap.
    Plain(B),
    /// The first attempt: reads the original and keeps what it read.
    First {
        shared: Arc<Shared<B>>,
        /// Taken from `shared` on first poll, given back on drop if not finished.
        rest: Option<B>,
        acquired: bool,
        hint: SizeHint,
    },
    /// The replay: the kept frames, then the rest of the original.
    Replay {
        shared: Arc<Shared<B>>,
        replay: Option<ReplayState<B>>,
        hint: SizeHint,
    },
}

struct ReplayState<B> {
    data: VecDeque<Bytes>,
    rest: Option<B>,
    trailers: Option<HeaderMap>,
}

pub(crate) struct Shared<B> {
    cap: usize,
    state: Mutex<State<B>>,
}

struct State<B> {
    /// The unread rest of the original body, while no attempt holds it.
    rest: Option<B>,
    /// The first attempt holds `rest`.
    in_use: bool,
    /// A replay waiting for the first attempt to let go of `rest`.
    waiting: Option<Waker>,
    kept: Vec<Bytes>,
    kept_len: usize,
    trailers: Option<HeaderMap>,
    /// The original body was read to its end by the first attempt.
    ended: bool,
    /// Nothing can be replayed: the cap was exceeded, the body failed, or the request is done.
    spoiled: bool,
}

impl<B> Shared<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a replay is still possible.
    pub(crate) fn replayable(&self) -> bool {
        !self.lock().spoiled
    }

    /// Gives up on replaying: the kept bytes are released now, even if the first attempt's body
    /// lives on inside a connection.
    pub(crate) fn release(&self) {
        let mut state = self.lock();
        spoil(&mut state);
    }
}

fn spoil<B>(state: &mut State<B>) {
    state.spoiled = true;
    state.kept = Vec::new();
    state.kept_len = 0;
    state.trailers = None;
}

impl<B> ReplayBody<B> {
    /// A body passed through untouched: nothing is kept.
    pub fn new(body: B) -> Self {
        Self {
            kind: Kind::Plain(body),
        }
    }

    /// The replay's body.
    pub(crate) fn replay(shared: Arc<Shared<B>>, hint: SizeHint) -> Self {
        Self {
            kind: Kind::Replay {
                shared,
                replay: None,
                hint,
            },
        }
    }
}

impl<B: Body> ReplayBody<B> {
    /// The first attempt's body, and what a replay will need.
    pub(crate) fn first(body: B, cap: usize) -> (Self, Arc<Shared<B>>) {
        let hint = body.size_hint();
        let shared = Arc::new(Shared {
            cap,
            state: Mutex::new(State {
                rest: Some(body),
                in_use: false,
                waiting: None,
                kept: Vec::new(),
                kept_len: 0,
                trailers: None,
                ended: false,
                spoiled: false,
            }),
        });
        let body = Self {
            kind: Kind::First {
                shared: shared.clone(),
                rest: None,
                acquired: false,
                hint,
            },
        };
        (body, shared)
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Plain(body) => poll_bytes(body, cx),
            Kind::First {
                shared,
                rest,
                acquired,
                ..
            } => {
                if !*acquired {
                    let mut state = shared.lock();
                    *rest = state.rest.take();
                    state.in_use = true;
                    *acquired = true;
                }
                let Some(body) = rest else {
                    return Poll::Ready(None);
                };
                let Poll::Ready(frame) = poll_bytes(body, cx) else {
                    return Poll::Pending;
                };
                let mut state = shared.lock();
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            if !state.spoiled {
                                if state.kept_len + data.len() <= shared.cap {
                                    state.kept_len += data.len();
                                    state.kept.push(data.clone());
                                } else {
                                    spoil(&mut state);
                                }
                            }
                        } else if let Some(trailers) = frame.trailers_ref() {
                            if !state.spoiled {
                                state.trailers = Some(trailers.clone());
                            }
                        }
                    }
                    Some(Err(_)) => spoil(&mut state),
                    None => {
                        state.ended = true;
                        *rest = None;
                    }
                }
                Poll::Ready(frame)
            }
            Kind::Replay { shared, replay, .. } => {
                if replay.is_none() {
                    let mut state = shared.lock();
                    if state.in_use {
                        // The first attempt's body is still inside its connection (a server
                        // that answered before reading it all): wait until it is dropped.
                        state.waiting = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    *replay = Some(ReplayState {
                        data: state.kept.iter().cloned().collect(),
                        rest: if state.ended { None } else { state.rest.take() },
                        trailers: state.trailers.take(),
                    });
                    // The kept copy now lives in the replay alone.
                    spoil(&mut state);
                }
                let Some(replay) = replay else {
                    return Poll::Ready(None);
                };
                if let Some(data) = replay.data.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                if let Some(rest) = &mut replay.rest {
                    match poll_bytes(rest, cx) {
                        Poll::Ready(None) => replay.rest = None,
                        other => return other,
                    }
                }
                Poll::Ready(replay.trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Plain(body) => body.is_end_stream(),
            Kind::First {
                rest,
                acquired,
                hint,
                ..
            } => {
                if *acquired {
                    rest.as_ref().is_none_or(Body::is_end_stream)
                } else {
                    hint.exact() == Some(0)
                }
            }
            Kind::Replay { replay, hint, .. } => match replay {
                Some(r) => {
                    r.data.is_empty()
                        && r.trailers.is_none()
                        && r.rest.as_ref().is_none_or(Body::is_end_stream)
                }
                None => hint.exact() == Some(0),
            },
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Plain(body) => body.size_hint(),
            Kind::First { hint, .. } | Kind::Replay { hint, .. } => *hint,
        }
    }
}

/// Polls `body` for a frame with its data as [`Bytes`] (a no-op conversion when it already is).
fn poll_bytes<B>(body: &mut B, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    Pin::new(body).poll_frame(cx).map(|frame| {
        frame.map(|frame| {
            frame.map(|frame| frame.map_data(|mut data| data.copy_to_bytes(data.remaining())))
        })
    })
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        if let Kind::First {
            shared,
            rest,
            acquired: true,
            ..
        } = &mut self.kind
        {
            let mut state = shared.lock();
            if !state.ended {
                state.rest = rest.take();
            }
            state.in_use = false;
            if let Some(waker) = state.waiting.take() {
                waker.wake();
            }
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Plain(_) => "plain",
            Kind::First { .. } => "first attempt",
            Kind::Replay { .. } => "replay",
        };
        f.debug_struct("ReplayBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
