//! Refresh ahead on a paused clock (issue #15): with the adaptive default, tokens are used for
//! most of their usable life and no request waits while the token endpoint answers in its usual
//! time; a slower endpoint moves the refresh earlier; a fleet's refreshes are spread, never
//! later than the safe point; and the fixed window of 0.x is still there.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower_bearer::cache::TokenCacheBuilder;
use tower_bearer::{source_fn, Token, TokenCache, TokenRequest};

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);

/// A token endpoint on the paused clock: it answers after the latency currently set, with
/// tokens of a fixed lifetime, and keeps when each request was sent and answered.
#[derive(Clone)]
struct Endpoint {
    latency_ms: Arc<AtomicU64>,
    lifetime: Duration,
    fetched: Arc<Mutex<Vec<(Instant, Instant)>>>,
}

impl Endpoint {
    fn new(latency: Duration, lifetime: Duration) -> Self {
        Self {
            latency_ms: Arc::new(AtomicU64::new(latency.as_millis() as u64)),
            lifetime,
            fetched: Arc::default(),
        }
    }

    fn set_latency(&self, latency: Duration) {
        self.latency_ms
            .store(latency.as_millis() as u64, Ordering::SeqCst);
    }

    fn builder(&self) -> TokenCacheBuilder {
        let this = self.clone();
        TokenCache::builder(source_fn(move |_: TokenRequest| {
            let this = this.clone();
            async move {
                let sent = Instant::now();
                let latency = Duration::from_millis(this.latency_ms.load(Ordering::SeqCst));
                tokio::time::sleep(latency).await;
                let mut fetched = this.fetched.lock().unwrap();
                fetched.push((sent, Instant::now()));
                let token = Token::new(format!("tok-{}", fetched.len()));
                Ok::<_, Infallible>(token.with_expires_in(this.lifetime))
            }
        }))
    }

    fn fetched(&self) -> Vec<(Instant, Instant)> {
        self.fetched.lock().unwrap().clone()
    }
}

/// Sends `requests` token requests, one per `interval`; returns how many waited (the clock
/// moved during the call), the first aside.
async fn steady(cache: &TokenCache, interval: Duration, requests: u32) -> u32 {
    let mut waits = 0;
    for i in 0..requests {
        let before = Instant::now();
        cache.token().await.unwrap();
        if i > 0 && Instant::now() > before {
            waits += 1;
        }
        tokio::time::sleep(interval).await;
    }
    waits
}

/// For each token but the last: the share of its usable life (arrival to stated expiry minus
/// `skew`) that passed before its replacement arrived.
fn used(fetched: &[(Instant, Instant)], lifetime: Duration, skew: Duration) -> Vec<f64> {
    fetched
        .windows(2)
        .map(|pair| {
            let ((sent, arrived), (_, replaced)) = (pair[0], pair[1]);
            let usable_end = sent + lifetime - skew;
            (replaced - arrived).as_secs_f64() / (usable_end - arrived).as_secs_f64()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn adaptive_tokens_are_used_for_85_percent_of_their_usable_life_and_nobody_waits() {
    // The default skew is a twentieth of the lifetime, at least 1 s: 1 s of a 5 s token, 15 s
    // of a 5-minute one. A 5 s token fetched in 2 s would then have only 2 s of usable life,
    // no more than its replacement takes to fetch: with lifetimes exact to the millisecond
    // (as here), a smaller skew can be set.
    for (latency, lifetime, set_skew, skew) in [
        (10 * MS, 5 * SECOND, None, SECOND),
        (200 * MS, 5 * SECOND, None, SECOND),
        (2 * SECOND, 5 * SECOND, Some(250 * MS), 250 * MS),
        (2 * SECOND, 300 * SECOND, None, 15 * SECOND),
        (10 * MS, 3600 * SECOND, None, 30 * SECOND),
    ] {
        let endpoint = Endpoint::new(latency, lifetime);
        let mut builder = endpoint.builder();
        if let Some(skew) = set_skew {
            builder = builder.expiry_skew(skew);
        }
        let cache = builder.build();
        let waits = steady(&cache, lifetime / 200, 200 * 10).await;
        assert_eq!(waits, 0, "{latency:?} {lifetime:?}");
        let used = used(&endpoint.fetched(), lifetime, skew);
        assert!(used.len() >= 9, "{latency:?} {lifetime:?}: {used:?}");
        assert!(
            used.iter().all(|share| (0.85..=1.0).contains(share)),
            "{latency:?} {lifetime:?}: {used:?}"
        );
        assert_eq!(cache.stats().waits, 1, "only the first request waited");
    }
}

#[tokio::test(start_paused = true)]
async fn the_fixed_window_of_before_refreshes_a_5_minute_token_after_101_to_135_s() {
    let endpoint = Endpoint::new(10 * MS, 300 * SECOND);
    let cache = endpoint
        .builder()
        .refresh_ahead(Duration::from_secs(300))
        .build();
    let interval = SECOND;
    steady(&cache, interval, 1200).await;
    let fetched = endpoint.fetched();
    assert!(
        fetched.len() >= 9,
        "{} fetches in 20 minutes",
        fetched.len()
    );
    for pair in fetched.windows(2) {
        let after = pair[1].0 - pair[0].0;
        assert!(
            after >= 101 * SECOND && after <= 135 * SECOND + interval,
            "refreshed {after:?} after the last request"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_slower_endpoint_moves_the_refresh_earlier() {
    // 60 s tokens: usable until 57 s (a 3 s skew). At 10 ms a fetch, the refresh starts a
    // twentieth of the usable life (2.85 s) before its end; at 2 s, three times that (6 s).
    let lifetime = 60 * SECOND;
    let endpoint = Endpoint::new(10 * MS, lifetime);
    let cache = endpoint.builder().jitter(0.0).build();
    let interval = 100 * MS;
    let mut waits = steady(&cache, interval, 5 * 600).await;
    let fast = endpoint.fetched().len();
    endpoint.set_latency(2 * SECOND);
    waits += steady(&cache, interval, 5 * 600).await;
    assert_eq!(waits, 0);

    let fetched = endpoint.fetched();
    // How long before the usable end of each token its refresh was started.
    let margins: Vec<Duration> = fetched
        .windows(2)
        .map(|pair| (pair[0].0 + lifetime - 3 * SECOND) - pair[1].0)
        .collect();
    for margin in &margins[..fast - 1] {
        assert!(
            *margin <= 2850 * MS && *margin >= 2850 * MS - interval,
            "{margins:?}"
        );
    }
    // The first slow fetch was started with the fast margin; the token it brought, and every
    // one after it, is refreshed 6 s ahead.
    for margin in &margins[fast..] {
        assert!(
            *margin <= 6 * SECOND && *margin >= 6 * SECOND - interval,
            "{margins:?}"
        );
    }
    assert!(margins.len() > fast + 3, "{margins:?}");
}

#[tokio::test(start_paused = true)]
async fn jitter_spreads_a_fleet_and_never_refreshes_later_than_the_safe_point() {
    let lifetime = 300 * SECOND;
    let endpoints: Vec<Endpoint> = (0..32).map(|_| Endpoint::new(10 * MS, lifetime)).collect();
    let caches: Vec<TokenCache> = endpoints.iter().map(|e| e.builder().build()).collect();
    let interval = 100 * MS;
    for _ in 0..3000 {
        for cache in &caches {
            cache.token().await.unwrap();
        }
        tokio::time::sleep(interval).await;
    }
    // Each usable life ends at 285 s (a 15 s skew) and is 284.99 s long: the margin is a
    // twentieth of it (14.25 s), widened by up to a quarter (17.81 s).
    let mut refreshed_after = Vec::new();
    for endpoint in &endpoints {
        let fetched = endpoint.fetched();
        let after = fetched[1].0 - fetched[0].0;
        assert!(
            after >= 285 * SECOND - 17_813 * MS && after <= 285 * SECOND - 14_249 * MS + interval,
            "{after:?}"
        );
        refreshed_after.push(after);
    }
    for cache in &caches {
        assert_eq!(cache.stats().waits, 1, "only the first request waited");
    }
    refreshed_after.sort();
    refreshed_after.dedup();
    assert!(refreshed_after.len() >= 8, "{refreshed_after:?}");
}

#[tokio::test(start_paused = true)]
async fn sparse_traffic_never_waits_for_a_refresh() {
    // One request every 10 minutes with hour-long tokens: far fewer requests than the refresh
    // window is long. The timer of a token used since it arrived starts its refresh, so no
    // request after the first waits, and every token but the first lasts most of its life.
    let endpoint = Endpoint::new(200 * MS, Duration::from_secs(3600));
    let cache = endpoint.builder().build();
    let waits = steady(&cache, Duration::from_secs(600), 37).await;
    assert_eq!(waits, 0, "a request waited for a refresh");
    let fetched = endpoint.fetched();
    assert!(
        (6..=8).contains(&fetched.len()),
        "about one token per hour over 6 hours: {}",
        fetched.len()
    );
    for used in used(&fetched, Duration::from_secs(3600), 30 * SECOND) {
        assert!(
            used >= 0.85,
            "a token used for {used:.3} of its usable life"
        );
    }

    // A cache nobody uses stops fetching: its last token is left to expire.
    let before = endpoint.fetched().len();
    tokio::time::sleep(Duration::from_secs(5 * 3600)).await;
    assert!(
        endpoint.fetched().len() <= before + 1,
        "an idle cache kept fetching: {} tokens after {before}",
        endpoint.fetched().len()
    );
}

/// An issuer that hands out a new token only in the last 4 minutes of the current one's life
/// (`Token::with_renewal_window`): the refresh waits for that window, however early the
/// configured refresh-ahead would start it, and still no request waits.
#[tokio::test(start_paused = true)]
async fn a_renewal_window_holds_the_refresh_until_the_issuer_renews() {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let kept = sent.clone();
    let start = Instant::now();
    let source = source_fn(move |_: TokenRequest| {
        let kept = kept.clone();
        async move {
            kept.lock().unwrap().push(Instant::now() - start);
            tokio::time::sleep(2 * SECOND).await;
            let n = kept.lock().unwrap().len();
            Ok::<_, Infallible>(
                Token::new(format!("tok-{n}"))
                    .with_expires_in(3600 * SECOND)
                    .with_renewal_window(240 * SECOND),
            )
        }
    });
    // Without the window, a fixed 600 s window would refresh at 2970 s.
    let cache = TokenCache::builder(source)
        .refresh_ahead(600 * SECOND)
        .jitter(0.0)
        .build();
    let waits = steady(&cache, 5 * SECOND, 2 * 3600 / 5).await;
    assert_eq!(waits, 0);
    // One fetch per token, each 240 s before the stated expiry of the one before.
    assert_eq!(
        *sent.lock().unwrap(),
        [Duration::ZERO, 3360 * SECOND, 6720 * SECOND]
    );
}
