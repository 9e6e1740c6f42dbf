//! Replay of streaming request bodies with `ReplayWrapped`: what the inner service receives on
//! the first attempt and on the replay, the cap, trailers, failures and memory.

#[allow(dead_code)]
mod support;

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{service_fn, BoxError, Service, ServiceExt};
use tower_bearer::replay::{ReplayBody, ReplayWrapped};
use tower_bearer::{BearerAuthLayer, StaticToken};

use support::{within, Calls};

/// A streaming body that cannot be cloned: frames handed out one by one, with an exact size hint.
struct Chunks {
    frames: VecDeque<Result<Frame<Bytes>, io::Error>>,
    remaining: u64,
}

impl Chunks {
    fn new(chunks: &[Bytes], trailers: Option<HeaderMap>) -> Self {
        let mut frames: VecDeque<_> = chunks.iter().cloned().map(|c| Ok(Frame::data(c))).collect();
        if let Some(trailers) = trailers {
            frames.push_back(Ok(Frame::trailers(trailers)));
        }
        Self {
            frames,
            remaining: chunks.iter().map(|c| c.len() as u64).sum(),
        }
    }

    fn failing_after(chunks: &[Bytes]) -> Self {
        let mut body = Self::new(chunks, None);
        body.frames
            .push_back(Err(io::Error::other("upload interrupted")));
        body
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let frame = self.frames.pop_front();
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            self.remaining -= data.map_or(0, |d| d.len() as u64);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn chunks(n: usize, size: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(vec![i as u8; size])).collect()
}

/// What the inner service saw on one attempt.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    token: String,
    size_hint: Option<u64>,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// How the inner service treats the body before answering.
#[derive(Clone, Copy)]
enum Read {
    All,
    First,
    Nothing,
    /// Reads the first frame, answers, and keeps the rest of the body for a while, as a
    /// connection still sending it would.
    FirstThenHold(Duration),
    /// Reads the body, answers, and keeps the finished body object for a while.
    AllThenHold(Duration),
}

/// An inner service answering 401 to its first `rejections` calls, then 200, recording each
/// attempt.
fn inner(
    read: Read,
    rejections: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> impl tower::Service<
    Request<ReplayBody<Chunks>>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    let calls = Arc::new(AtomicUsize::new(0));
    service_fn(move |req: Request<ReplayBody<Chunks>>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let seen = seen.clone();
        async move {
            let token = req.headers()["authorization"].to_str()?.to_owned();
            let size_hint = req.body().size_hint().exact();
            let mut body = req.into_body();
            let mut data = Vec::new();
            let mut trailers = None;
            // The first attempt may stop early; a replay is always read in full.
            let read = if n > 0 && n >= rejections {
                Read::All
            } else {
                read
            };
            match read {
                Read::All => {
                    let collected = body.collect().await?;
                    trailers = collected.trailers().cloned();
                    data.extend_from_slice(&collected.to_bytes());
                }
                Read::First => {
                    if let Some(frame) = body.frame().await {
                        data.extend_from_slice(frame?.data_ref().unwrap());
                    }
                }
                Read::Nothing => drop(body),
                Read::AllThenHold(delay) => {
                    while let Some(frame) = body.frame().await {
                        if let Some(chunk) = frame?.data_ref() {
                            data.extend_from_slice(chunk);
                        }
                    }
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        drop(body);
                    });
                }
                Read::FirstThenHold(delay) => {
                    if let Some(frame) = body.frame().await {
                        data.extend_from_slice(frame?.data_ref().unwrap());
                    }
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        drop(body);
                    });
                }
            }
            seen.lock().unwrap().push(Seen {
                token,
                size_hint,
                body: data,
                trailers,
            });
            let mut response = Response::new(String::new());
            if n < rejections {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, BoxError>(response)
        }
    })
}

/// A token source handing out `tok-1`, `tok-2`, ...
fn tokens() -> impl tower_bearer::TokenSource {
    Calls::default().source(Duration::ZERO, |n| {
        Ok(tower_bearer::Token::new(format!("tok-{n}")))
    })
}

async fn send(
    body: Chunks,
    read: Read,
    rejections: usize,
    cap: usize,
) -> (Result<Response<String>, BoxError>, Vec<Seen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = BearerAuthLayer::new(tokens()).replay_policy(ReplayWrapped::new().cap(cap));
    let svc =
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(inner(read, rejections, seen.clone()));
    let response = within(
        Duration::from_secs(10),
        "the upload",
        svc.oneshot(Request::post("http://api.test/upload").body(body).unwrap()),
    )
    .await;
    let seen = seen.lock().unwrap().clone();
    (response, seen)
}

fn concat(chunks: &[Bytes]) -> Vec<u8> {
    chunks.iter().flat_map(|c| c.iter().copied()).collect()
}

#[tokio::test]
async fn a_body_under_the_cap_is_replayed_in_full() {
    let data = chunks(4, 1000);
    let (response, seen) = send(Chunks::new(&data, None), Read::All, 1, 64 * 1024).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].token, "Bearer tok-1");
    assert_eq!(seen[1].token, "Bearer tok-2");
    for attempt in &seen {
        assert_eq!(attempt.body, concat(&data));
        assert_eq!(attempt.size_hint, Some(4000), "Content-Length is preserved");
    }
}

#[tokio::test]
async fn a_body_exactly_at_the_cap_is_replayed() {
    let data = chunks(4, 1024);
    let (response, seen) = send(Chunks::new(&data, None), Read::All, 1, 4096).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, concat(&data));
}

#[tokio::test]
async fn a_body_over_the_cap_gets_its_401_back() {
    // The size hint says 4100 > 4096: nothing is kept at all.
    let data = chunks(4, 1025);
    let (response, seen) = send(Chunks::new(&data, None), Read::All, 1, 4096).await;
    assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, concat(&data), "still sent in full, once");
}

/// A body without a size hint, so that the cap is only discovered while streaming.
struct Unsized(Chunks);

impl Body for Unsized {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }
}

#[tokio::test]
async fn a_body_that_outgrows_the_cap_while_streaming_is_not_replayed() {
    let data = chunks(5, 1000);
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let calls = calls.clone();
        service_fn(move |req: Request<ReplayBody<Unsized>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                let mut response = Response::new(body.len());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                Ok::<_, BoxError>(response)
            }
        })
    };
    let layer = BearerAuthLayer::new(tokens()).replay_policy(ReplayWrapped::new().cap(2500));
    let svc = tower::ServiceBuilder::new().layer(layer).service(svc);
    let body = Unsized(Chunks::new(&data, None));
    let response = svc.oneshot(Request::new(body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(*response.body(), 5000);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_server_that_answers_before_reading_gets_the_whole_body_on_the_replay() {
    let data = chunks(3, 500);
    let (response, seen) = send(Chunks::new(&data, None), Read::Nothing, 1, 64 * 1024).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert!(seen[0].body.is_empty());
    assert_eq!(seen[1].body, concat(&data));
}

#[tokio::test]
async fn a_server_that_read_part_of_the_body_gets_the_kept_part_then_the_rest() {
    let data = chunks(3, 500);
    let (response, seen) = send(Chunks::new(&data, None), Read::First, 1, 64 * 1024).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen[0].body, data[0].to_vec());
    assert_eq!(seen[1].body, concat(&data));
}

#[tokio::test]
async fn the_replay_waits_for_a_connection_still_holding_the_first_body() {
    let data = chunks(3, 500);
    // The first attempt read one chunk; its body, holding the unread rest, lives on for 100 ms.
    // The replay must wait for it: without the rest it could only send the kept chunk.
    let hold = Read::FirstThenHold(Duration::from_millis(100));
    let (response, seen) = send(Chunks::new(&data, None), hold, 1, 64 * 1024).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen[0].body, data[0].to_vec());
    assert_eq!(seen[1].body, concat(&data));
}

#[tokio::test]
async fn trailers_are_replayed() {
    let data = chunks(2, 100);
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc123"));
    let (response, seen) = send(
        Chunks::new(&data, Some(trailers.clone())),
        Read::All,
        1,
        64 * 1024,
    )
    .await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen[0].trailers.as_ref(), Some(&trailers));
    assert_eq!(seen[1].trailers.as_ref(), Some(&trailers));
    assert_eq!(seen[1].body, concat(&data));

    // Trailers the first attempt never reached come from the rest of the original.
    let (response, seen) = send(
        Chunks::new(&data, Some(trailers.clone())),
        Read::First,
        1,
        64 * 1024,
    )
    .await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen[1].trailers.as_ref(), Some(&trailers));
}

#[tokio::test]
async fn a_body_that_fails_mid_stream_reaches_the_caller_and_is_not_replayed() {
    let data = chunks(2, 100);
    let (response, seen) = send(Chunks::failing_after(&data), Read::All, 1, 64 * 1024).await;
    let err = response.unwrap_err();
    assert!(err.to_string().contains("upload interrupted"), "{err}");
    assert!(seen.is_empty(), "the inner service failed while reading");

    // The failure is seen by the inner service, which answers 401 anyway: no replay.
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let calls = calls.clone();
        service_fn(move |req: Request<ReplayBody<Chunks>>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let result = req.into_body().collect().await;
                assert!(result.is_err());
                let mut response = Response::new(String::new());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                Ok::<_, BoxError>(response)
            }
        })
    };
    let layer = BearerAuthLayer::new(tokens()).replay_wrapped();
    let svc = tower::ServiceBuilder::new().layer(layer).service(svc);
    let response = svc
        .oneshot(Request::new(Chunks::failing_after(&data)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Bytes whose memory reports when it is freed.
struct Tracked(Vec<u8>, Arc<AtomicUsize>);

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

fn tracked_chunks(n: usize, size: usize, freed: &Arc<AtomicUsize>) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from_owner(Tracked(vec![i as u8; size], freed.clone())))
        .collect()
}

#[tokio::test]
async fn no_copy_of_the_body_is_kept_after_the_response() {
    // Accepted; the inner service holds the finished body object far longer, as a connection
    // may. The kept copy must not live as long as that.
    let freed = Arc::new(AtomicUsize::new(0));
    let data = tracked_chunks(4, 1000, &freed);
    let hold = Read::AllThenHold(Duration::from_secs(3600));
    let (response, seen) = send(Chunks::new(&data, None), hold, 0, 64 * 1024).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    assert_eq!(seen[0].body.len(), 4000);
    drop(data);
    assert_eq!(
        freed.load(Ordering::SeqCst),
        4,
        "the kept copy was released with the response"
    );

    // Released when the response is returned, even if the caller keeps the finished future.
    let freed = Arc::new(AtomicUsize::new(0));
    let data = tracked_chunks(4, 1000, &freed);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hold = Read::AllThenHold(Duration::from_secs(3600));
    let mut svc = tower::ServiceBuilder::new()
        .layer(BearerAuthLayer::new(tokens()).replay_wrapped())
        .service(inner(hold, 0, seen));
    svc.ready().await.unwrap();
    let future = svc.call(Request::new(Chunks::new(&data, None)));
    tokio::pin!(future);
    let response = (&mut future).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    drop(data);
    assert_eq!(
        freed.load(Ordering::SeqCst),
        4,
        "released while the future lives"
    );
    // `future` is still alive here: it is dropped at the end of the test.

    // And after a replay.
    let freed = Arc::new(AtomicUsize::new(0));
    let data = tracked_chunks(4, 1000, &freed);
    let (response, _) = send(Chunks::new(&data, None), Read::All, 1, 64 * 1024).await;
    assert_eq!(response.unwrap().status(), StatusCode::OK);
    drop(data);
    assert_eq!(
        freed.load(Ordering::SeqCst),
        4,
        "nothing kept after the replay"
    );
}

#[tokio::test]
async fn cloneable_bodies_are_cloned_and_keep_their_type_under_the_default_policy() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = {
        let calls = calls.clone();
        // The inner service takes the caller's own body type: nothing wraps it.
        service_fn(move |req: Request<http_body_util::Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                assert_eq!(body, "payload", "attempt {n}");
                let mut response = Response::new(());
                if n == 0 {
                    *response.status_mut() = StatusCode::UNAUTHORIZED;
                }
                Ok::<_, BoxError>(response)
            }
        })
    };
    let layer = BearerAuthLayer::new(StaticToken::new("t"));
    let svc = tower::ServiceBuilder::new().layer(layer).service(svc);
    let body = http_body_util::Full::new(Bytes::from_static(b"payload"));
    let response = svc.oneshot(Request::new(body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}
