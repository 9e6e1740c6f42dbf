//! The cached path allocates nothing of its own: with replay off, a request through the layer
//! makes no allocation at all (the request and the response are built before and after), with
//! one destination or several; with replay on, one (the copy of the request's head).

use std::alloc::System;
use std::convert::Infallible;
use std::future::{ready, Future};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{service_fn, Service, ServiceExt};
use tower_bearer::auth::Destinations;
use tower_bearer::{BearerAuthLayer, StaticToken, TokenCache, TokenKey};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn request() -> Request<Full<Bytes>> {
    let mut req = Request::post("https://api.example.com/v1/orders")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    // Room for the token, so that inserting it does not grow the map.
    req.headers_mut().reserve(4);
    req
}

/// Allocations (and reallocations) made by `calls` requests through `svc`, each polled to
/// completion.
fn allocations<S>(svc: &mut S, calls: u64) -> u64
where
    S: Service<Request<Full<Bytes>>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    let requests: Vec<_> = (0..calls).map(|_| request()).collect();
    let mut responses = Vec::with_capacity(calls as usize);
    // Nothing else runs meanwhile: the runtime is a current-thread one, idle on this thread.
    let region = Region::new(GLOBAL);
    for req in requests {
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut future = pin!(svc.call(req));
        let Poll::Ready(response) = future.as_mut().poll(&mut cx) else {
            panic!("the cached path did not answer at once");
        };
        responses.push(response.unwrap());
    }
    let change = region.change();
    drop(responses);
    (change.allocations + change.reallocations) as u64
}

#[test]
fn the_cached_path_allocates_nothing_with_replay_off_and_once_with_replay_on() {
    the_response_future_does_not_grow_with_the_inner_service();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let api = service_fn(|req: Request<Full<Bytes>>| {
        assert_eq!(
            req.headers()[header::AUTHORIZATION],
            HeaderValue::from_static("Bearer t0k3n")
        );
        ready(Ok::<_, Infallible>(Response::new(())))
    });
    let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"));

    let mut off = tower::ServiceBuilder::new()
        .layer(layer.clone().without_replay())
        .service(api);
    // The first request fetches the token; after it, every request takes the cached path.
    runtime.block_on(warm(&mut off)).expect("first request");
    assert_eq!(allocations(&mut off, 1_000), 0);

    // With replay on, the copy of each request's head is the only work added, and it is one
    // allocation: the URI and the header names and values go into one buffer (cloning the header
    // map would take two for its tables and one per value made by `HeaderValue::from_str`, four
    // here). The spare clone of the inner service that replays are cloned from is made by the
    // first replayable request of each service clone, here the one that fetches the token.
    let mut on = tower::ServiceBuilder::new().layer(layer).service(api);
    runtime.block_on(warm(&mut on)).expect("first request");
    assert_eq!(allocations(&mut on, 1_000), 1_000);

    // Several destinations: once a service clone has served a key, its requests find the key
    // (by the origin table, or by `select`) and this clone's view of its token without
    // allocating either.
    let keyed = TokenCache::builder(StaticToken::new("t0k3n")).build_keyed();
    let api_key = TokenKey::audience_of("api");
    let by_origin = Destinations::new(keyed.clone())
        .origin(
            "https://other.example.com".parse().unwrap(),
            TokenKey::audience_of("other"),
        )
        .origin("https://api.example.com".parse().unwrap(), api_key.clone());
    let by_select = Destinations::new(keyed).select(move |_| Some(api_key.clone()));
    for destinations in [by_origin, by_select] {
        let mut svc = tower::ServiceBuilder::new()
            .layer(BearerAuthLayer::destinations(destinations).without_replay())
            .service(api);
        runtime.block_on(warm(&mut svc)).expect("first request");
        assert_eq!(allocations(&mut svc, 1_000), 0);
    }
}

/// The response future keeps what a request waiting for a token holds (the inner service and the
/// request) in a box, so the future every request moves around stays small whatever the size of
/// the inner service. (Run from the test above: a second test running at the same time would
/// allocate inside its measured region.)
fn the_response_future_does_not_grow_with_the_inner_service() {
    #[derive(Clone)]
    struct Big(#[allow(dead_code)] [u64; 64]);

    impl Service<Request<Full<Bytes>>> for Big {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Full<Bytes>>) -> Self::Future {
            ready(Ok(Response::new(())))
        }
    }

    type On = tower_bearer::auth::ResponseFuture<Big, tower_bearer::replay::Replay, Full<Bytes>>;
    type Off = tower_bearer::auth::ResponseFuture<Big, tower_bearer::replay::NoReplay, Full<Bytes>>;
    let inner = std::mem::size_of::<<Big as Service<Request<Full<Bytes>>>>::Future>();
    let (on, off) = (std::mem::size_of::<On>(), std::mem::size_of::<Off>());
    // The inner future, the token's id, the shared configuration, and with replay the policy
    // (its cap), the kept copy (an allocated buffer, the method, version and extensions, a
    // cloned body) and the spare.
    assert!(
        off <= inner + 24,
        "{off} bytes without replay, the inner future {inner}"
    );
    assert!(
        on <= inner + 144,
        "{on} bytes with replay, the inner future {inner}"
    );
}

/// Sends one request, so that the token is fetched and cached.
async fn warm<S>(svc: &mut S) -> Result<(), String>
where
    S: Service<Request<Full<Bytes>>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let svc = svc.ready().await.map_err(|e| format!("{e:?}"))?;
    svc.call(request()).await.map_err(|e| format!("{e:?}"))?;
    Ok(())
}
