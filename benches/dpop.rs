//! DPoP (RFC 9449) on the request path: every request is signed.
//!
//! - `floor`: a hand-written floor of the work any DPoP client must do per request: one ES256
//!   signature (ring) over a proof of the same size as the layer's (a pre-encoded header with
//!   the public JWK, claims of the same length), the base64url encoding of the claims and the
//!   signature, and the two headers inserted (a prepared `Authorization` value and the proof);
//! - `dpop_no_replay` / `dpop_replay`: `BearerAuthLayer` with `Placement::dpop`, replay off
//!   and on (a fresh `jti`, the `htu` from the request, `ath`, the origin's nonce looked up).
//!
//! Targets: `dpop_no_replay` ≤ 1.15 × `floor` in the same run; and 256 tasks sending through
//! the layer on a 2-worker runtime have ≥ 1.8 × the throughput of one task doing the same
//! requests (signing holds no lock, so both cores sign).

// `criterion_group!` makes an undocumented public function.
#![allow(missing_docs)]

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::hint::black_box;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tower::{Layer, Service, ServiceExt};

use tower_bearer::dpop::DpopKey;
use tower_bearer::{BearerAuthLayer, Placement, StaticToken, Token};

// Not every benchmark uses every shared item.
#[allow(dead_code)]
mod common;

use common::paired::Paired;
use common::{call_now, paired_enabled, request, Body, TOKEN};

/// Requests per timed batch on one thread.
const BATCH: usize = 64;
/// Tasks, and requests each, of the parallel check.
const TASKS: usize = 256;
const PER_TASK: usize = 2;

#[derive(Clone, Copy, Debug)]
struct Api;

impl<B> Service<Request<B>> for Api {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        black_box(&req);
        ready(Ok(Response::new(Body::default())))
    }
}

/// The floor: one ES256 signature over a same-sized proof, its encoding, two header inserts.
#[derive(Clone)]
struct SignFloor<S> {
    inner: S,
    key: Arc<EcdsaKeyPair>,
    header: Arc<str>,
    claims: Arc<str>,
    authorization: HeaderValue,
}

impl<S, B> Service<Request<B>> for SignFloor<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let mut proof = String::with_capacity(self.header.len() + 2 * self.claims.len() + 100);
        proof.push_str(&self.header);
        proof.push('.');
        URL_SAFE_NO_PAD.encode_string(self.claims.as_bytes(), &mut proof);
        let signature = self
            .key
            .sign(&SystemRandom::new(), proof.as_bytes())
            .expect("signed");
        proof.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut proof);
        let headers = req.headers_mut();
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(DPOP, HeaderValue::try_from(proof).expect("a header value"));
        self.inner.call(req)
    }
}

const DPOP: HeaderName = HeaderName::from_static("dpop");

fn floor<S>(inner: S, key: &DpopKey) -> SignFloor<S> {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.as_ref(),
        &SystemRandom::new(),
    )
    .unwrap();
    let header = format!(
        r#"{{"typ":"dpop+jwt","alg":"ES256","jwk":{}}}"#,
        key.signing_key().canonical_jwk()
    );
    // The layer's claims for `request()`, with fixed values of the same lengths.
    let claims = format!(
        r#"{{"jti":"{}","htm":"POST","htu":"https://api.example.com/v1/orders","iat":1764547200,"ath":"{}"}}"#,
        "j".repeat(22),
        "a".repeat(43)
    );
    let mut authorization = HeaderValue::try_from(format!("DPoP {TOKEN}")).unwrap();
    authorization.set_sensitive(true);
    SignFloor {
        inner,
        key: Arc::new(pair),
        header: URL_SAFE_NO_PAD.encode(header).into(),
        claims: claims.into(),
        authorization,
    }
}

fn dpop(c: &mut Criterion) {
    let key = DpopKey::generate().unwrap();
    let source =
        StaticToken::from_token(Token::new(TOKEN).with_expires_in(Duration::from_secs(3600)));
    let layer = BearerAuthLayer::new(source).placement(Placement::dpop(key.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(layer.cache().token()).expect("token");
    let no_replay = layer.clone().without_replay();

    // The proof the layer makes has the floor's size.
    let ours = key
        .proof(
            &http::Method::POST,
            "https://api.example.com/v1/orders",
            Some(TOKEN),
        )
        .unwrap();
    let theirs = floor(Api, &key);
    let claims = URL_SAFE_NO_PAD.encode(theirs.claims.as_bytes());
    assert_eq!(
        ours.len(),
        theirs.header.len() + 1 + claims.len() + 1 + 86,
        "the floor signs a proof of another size"
    );

    let mut group = c.benchmark_group("dpop");
    group.sample_size(20);
    group.bench_function("floor", |b| {
        let mut svc = floor(Api, &key);
        b.iter_batched(
            request,
            |req| call_now(&mut svc, &mut Context::from_waker(Waker::noop()), req),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("dpop_no_replay", |b| {
        let mut svc = no_replay.layer(Api);
        b.iter_batched(
            request,
            |req| call_now(&mut svc, &mut Context::from_waker(Waker::noop()), req),
            BatchSize::SmallInput,
        )
    });
    group.finish();

    if paired_enabled() {
        let mut checks = Paired::default();
        checks.check(
            "dpop/dpop_no_replay:floor",
            Some(1.15),
            timed_batches(no_replay.layer(Api)),
            timed_batches(floor(Api, &key)),
        );
        checks.check(
            "dpop/dpop_replay:floor",
            None,
            timed_batches(layer.layer(Api)),
            timed_batches(floor(Api, &key)),
        );
        // Throughput ≥ 1.8 × one task's: the same requests take ≤ 1 / 1.8 of its time.
        checks.check(
            "dpop/tasks_256:one_task",
            Some(1.0 / 1.8),
            parallel(&rt, no_replay.layer(Api), TASKS),
            parallel(&rt, no_replay.layer(Api), 1),
        );
        // For information: how far the bare signing scales on this machine.
        checks.check(
            "dpop/floor_tasks_256:floor_one_task",
            None,
            parallel(&rt, floor(Api, &key), TASKS),
            parallel(&rt, floor(Api, &key), 1),
        );
        // The same service on both sides: how far from 1 the paired check strays by itself.
        checks.check(
            "dpop/floor:floor",
            None,
            timed_batches(floor(Api, &key)),
            timed_batches(floor(Api, &key)),
        );
        checks.run();
    }
    let stats = layer.cache().stats();
    assert_eq!(stats.fetches, 1, "the cached path fetched");
}

/// One side of a paired check: each call times `BATCH` requests through `svc` on this thread.
fn timed_batches<S>(mut svc: S) -> impl FnMut() -> f64
where
    S: Service<Request<Body>, Response = Response<Body>>,
    S::Error: std::fmt::Debug,
{
    let mut out = Vec::with_capacity(BATCH);
    move || {
        let mut cx = Context::from_waker(Waker::noop());
        let requests: Vec<_> = (0..BATCH).map(|_| request()).collect();
        out.clear();
        let start = Instant::now();
        for req in requests {
            out.push(call_now(&mut svc, &mut cx, black_box(req)));
        }
        start.elapsed().as_secs_f64()
    }
}

/// One side of the parallel check: `TASKS * PER_TASK` requests through `svc`, spread over
/// `tasks` tasks on the 2-worker runtime `rt`.
///
/// The tasks are spawned and awaited by one task on the runtime, which is also where the time is
/// taken: awaited from `block_on`, every task's end would wake the benchmark's own thread, a third
/// thread taking turns on the two cores with the workers, once per task.
fn parallel<S>(rt: &tokio::runtime::Runtime, svc: S, tasks: usize) -> impl FnMut() -> f64 + '_
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let per_task = TASKS * PER_TASK / tasks;
    move || {
        let svc = svc.clone();
        rt.block_on(rt.spawn(async move {
            let start = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let mut svc = svc.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            let response = svc.ready().await.unwrap().call(request()).await;
                            black_box(response.unwrap());
                        }
                    })
                })
                .collect();
            for handle in handles {
                handle.await.unwrap();
            }
            start.elapsed().as_secs_f64()
        }))
        .unwrap()
    }
}

criterion_group!(benches, dpop);
criterion_main!(benches);
