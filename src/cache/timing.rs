//! When a token stops being used and when its background refresh starts: the timeline planned
//! for each new token, from its stated lifetime and the fetch latencies the cache has seen.

use std::time::Duration;

use tokio::time::Instant;

use super::builder::{Config, RefreshAhead};

/// The default expiry skew is this share of the lifetime (1/20), between the two bounds below.
const SKEW_SHARE: u32 = 20;

/// Lifetimes are stated in whole seconds, and a server may count them from the start of the
/// second it issued the token in: a token can die up to a second before its stated expiry.
const MIN_SKEW: Duration = Duration::from_secs(1);

/// The default expiry skew of long-lived tokens (and the default of 0.x).
const MAX_SKEW: Duration = Duration::from_secs(30);

/// How many recent fetch latencies are kept per cache (per key of a keyed cache).
const LATENCY_SAMPLES: usize = 8;

/// The adaptive refresh starts this many times the slowest recent fetch before the usable end.
const LATENCY_MULTIPLE: u32 = 3;

/// The adaptive margin is at least this share of the usable life (1/20): room to retry a
/// refresh that failed, and for a token nobody used since it arrived (whose refresh the next
/// request starts) a window that steady traffic lands a request in.
const MARGIN_SHARE: u32 = 20;

/// An adaptive refresh never starts before this share of the usable life (1/5) has passed, so a
/// token that lives barely longer than a fetch does not refresh in a loop.
const MIN_USE_SHARE: u32 = 5;

/// The most recent successful fetch latencies of one cache, in a fixed ring: recording one
/// allocates nothing, and nothing on the cached path reads them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Latencies {
    samples: [Duration; LATENCY_SAMPLES],
    next: usize,
    len: usize,
}

impl Latencies {
    pub(super) fn record(&mut self, latency: Duration) {
        self.samples[self.next] = latency;
        self.next = (self.next + 1) % LATENCY_SAMPLES;
        self.len = (self.len + 1).min(LATENCY_SAMPLES);
    }

    /// The slowest of the recent fetches. With eight samples a 95th percentile is the maximum
    /// anyway; the maximum also reacts at once to an endpoint that slows down, and forgets a
    /// slow episode after eight fetches.
    pub(super) fn high(&self) -> Duration {
        self.samples[..self.len]
            .iter()
            .copied()
            .max()
            .unwrap_or(Duration::ZERO)
    }
}

/// The timeline of one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// From when its request was sent to its usable end.
    pub(super) usable_for: Duration,
    /// Its usable end: after it the token is not sent any more.
    pub(super) expires_at: Instant,
    /// When requests start its background refresh.
    pub(super) refresh_at: Instant,
}

/// Plans the timeline of a token whose request was sent at `sent_at` and answered at `arrived`,
/// stating `lifetime` (counted from `sent_at`, already capped) and, if its issuer hands out a new
/// token only near the end of this one's life, that `renewal_window`
/// ([`Token::with_renewal_window`](crate::Token::with_renewal_window)). `latency_high` is the
/// slowest recent fetch, this one included; `random` is in `[0, 1)` and draws the jitter.
pub(super) fn plan(
    config: &Config,
    lifetime: Duration,
    renewal_window: Option<Duration>,
    sent_at: Instant,
    arrived: Instant,
    latency_high: Duration,
    random: f64,
) -> Plan {
    let floor = config.min_lifetime;
    let jitter = config.jitter * random;
    let (usable_for, margin) = match config.refresh_ahead {
        // The timeline of 0.x, unchanged: skew up to a quarter of the lifetime, the window up
        // to half of the usable life, and jitter widening it, but a token still used for 3/8
        // of its usable life (counted from when it was sent).
        RefreshAhead::Fixed(window) => {
            let skew = config.expiry_skew.unwrap_or(MAX_SKEW).min(lifetime / 4);
            let usable_for = (lifetime - skew).max(floor);
            let window = window.min(usable_for / 2);
            let window = (window + window.mul_f64(jitter)).min(usable_for * 5 / 8);
            (usable_for, window)
        }
        RefreshAhead::Adaptive => {
            // The default skew covers a request's time in flight and a lifetime stated in
            // whole seconds, and no more: a new token arrives just before the old one's usable
            // end, so a skew of a quarter of the lifetime (0.x) would only waste tokens.
            let skew = match config.expiry_skew {
                Some(skew) => skew.min(lifetime / 4),
                None => (lifetime / SKEW_SHARE)
                    .clamp(MIN_SKEW, MAX_SKEW)
                    .min(lifetime / 2),
            };
            let usable_for = (lifetime - skew).max(floor);
            let usable_life = (sent_at + usable_for).saturating_duration_since(arrived);
            let margin = latency_high
                .saturating_mul(LATENCY_MULTIPLE)
                .max(usable_life / MARGIN_SHARE);
            // Jitter only moves the refresh earlier than the safe point, never later.
            let margin = margin.saturating_add(margin.mul_f64(jitter));
            let margin = margin.min(usable_life - usable_life / MIN_USE_SHARE);
            (usable_for, margin)
        }
    };
    let expires_at = sent_at + usable_for;
    // Not refreshed before the floor either: lifetimes cause one fetch per floor at most.
    let mut refresh_at = expires_at
        .checked_sub(margin)
        .unwrap_or(sent_at)
        .max(sent_at + floor);
    if let Some(window) = renewal_window {
        // Asked before the window opens, the issuer answers with this same token: a wasted
        // fetch, and a copy planned as if it were new. The refresh waits for the window, but
        // starts early enough that the slowest recent fetch still ends before the usable end.
        let opens = (sent_at + lifetime).checked_sub(window).unwrap_or(sent_at);
        let latest = expires_at
            .checked_sub(latency_high.saturating_mul(LATENCY_MULTIPLE).max(MIN_SKEW))
            .unwrap_or(sent_at);
        refresh_at = refresh_at.max(opens.min(latest));
    }
    Plan {
        usable_for,
        expires_at,
        refresh_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SECOND: Duration = Duration::from_secs(1);

    fn adaptive() -> Config {
        Config {
            jitter: 0.0,
            ..Config::default()
        }
    }

    /// The share of its usable life a token is used for when its refresh, started at the
    /// planned point, takes `latency`: from its arrival to its replacement's, over the time from
    /// its arrival to its usable end.
    fn used(config: &Config, lifetime: Duration, latency: Duration, random: f64) -> f64 {
        let sent = Instant::now();
        let arrived = sent + latency;
        let plan = plan(config, lifetime, None, sent, arrived, latency, random);
        let replaced = plan.refresh_at + latency;
        assert!(
            replaced <= plan.expires_at,
            "a request would wait: {plan:?}"
        );
        (replaced - arrived).as_secs_f64() / (plan.expires_at - arrived).as_secs_f64()
    }

    #[test]
    fn the_latency_ring_keeps_the_slowest_of_the_last_eight() {
        let mut ring = Latencies::default();
        assert_eq!(ring.high(), Duration::ZERO);
        ring.record(2 * SECOND);
        for _ in 0..7 {
            ring.record(10 * MS);
        }
        assert_eq!(ring.high(), 2 * SECOND);
        ring.record(10 * MS);
        assert_eq!(ring.high(), 10 * MS, "the slow fetch was forgotten");
    }

    #[test]
    fn adaptive_tokens_are_used_for_85_percent_of_their_usable_life() {
        let mut config = adaptive();
        for latency in [10 * MS, 200 * MS, 2 * SECOND] {
            for lifetime in [5 * SECOND, 300 * SECOND, 3600 * SECOND] {
                // A 5 s token keeps 1 s of skew by default, which leaves 2 s of usable life:
                // a 2 s fetch cannot replace it in time. With lifetimes exact to the
                // millisecond, a smaller skew can be set.
                config.expiry_skew =
                    (latency == 2 * SECOND && lifetime == 5 * SECOND).then_some(250 * MS);
                for (jitter, random) in [(0.0, 0.0), (0.25, 0.999)] {
                    config.jitter = jitter;
                    let used = used(&config, lifetime, latency, random);
                    assert!(
                        (0.85..=1.0).contains(&used),
                        "{latency:?} {lifetime:?} jitter {jitter}: {used}"
                    );
                }
            }
        }
    }

    #[test]
    fn the_default_skew_is_a_twentieth_between_1_and_30_seconds() {
        let config = Config {
            min_lifetime: Duration::ZERO,
            ..adaptive()
        };
        let sent = Instant::now();
        for (lifetime, skew) in [
            (SECOND, 500 * MS),
            (3 * SECOND, SECOND),
            (5 * SECOND, SECOND),
            (60 * SECOND, 3 * SECOND),
            (600 * SECOND, 30 * SECOND),
            (3600 * SECOND, 30 * SECOND),
        ] {
            let plan = plan(&config, lifetime, None, sent, sent, Duration::ZERO, 0.0);
            assert_eq!(plan.usable_for, lifetime - skew, "{lifetime:?}");
        }
        let set = Config {
            expiry_skew: Some(2 * SECOND),
            ..adaptive()
        };
        let plan = plan(&set, 5 * SECOND, None, sent, sent, Duration::ZERO, 0.0);
        assert_eq!(
            plan.usable_for,
            3750 * MS,
            "a skew set is used up to a quarter"
        );
    }

    #[test]
    fn the_fixed_window_keeps_the_timeline_of_before() {
        let config = Config {
            refresh_ahead: RefreshAhead::Fixed(300 * SECOND),
            jitter: 0.0,
            ..Config::default()
        };
        let sent = Instant::now();
        let long = plan(&config, 300 * SECOND, None, sent, sent, Duration::ZERO, 0.0);
        assert_eq!(long.usable_for, 270 * SECOND);
        assert_eq!(long.refresh_at - sent, 135 * SECOND);
        let short = plan(&config, 5 * SECOND, None, sent, sent, Duration::ZERO, 0.0);
        assert_eq!(
            short.usable_for,
            3750 * MS,
            "a quarter of a short token is skew"
        );
    }

    #[test]
    fn a_slow_endpoint_moves_the_refresh_earlier() {
        let config = adaptive();
        let sent = Instant::now();
        let lifetime = 60 * SECOND;
        let fast = plan(&config, lifetime, None, sent, sent + 10 * MS, 10 * MS, 0.0);
        let slow = plan(
            &config,
            lifetime,
            None,
            sent,
            sent + 10 * MS,
            2 * SECOND,
            0.0,
        );
        assert_eq!(fast.expires_at, slow.expires_at);
        assert_eq!(slow.expires_at - slow.refresh_at, 6 * SECOND);
        assert!(fast.expires_at - fast.refresh_at < 3 * SECOND, "{fast:?}");
    }

    #[test]
    fn a_token_barely_longer_than_a_fetch_is_used_for_a_fifth_of_its_life_first() {
        let config = adaptive();
        let sent = Instant::now();
        let arrived = sent + 7 * SECOND;
        let plan = plan(&config, 10 * SECOND, None, sent, arrived, 7 * SECOND, 0.0);
        // Usable until 9 s: 2 s of usable life, a fifth of it used before refreshing.
        assert_eq!(plan.refresh_at - arrived, 400 * MS);
    }

    #[test]
    fn the_floor_holds_in_both_modes() {
        for refresh_ahead in [RefreshAhead::Adaptive, RefreshAhead::Fixed(300 * SECOND)] {
            let config = Config {
                refresh_ahead,
                ..Config::default()
            };
            let sent = Instant::now();
            let plan = plan(
                &config,
                Duration::ZERO,
                None,
                sent,
                sent,
                Duration::ZERO,
                0.5,
            );
            assert_eq!(plan.usable_for, SECOND);
            assert_eq!(plan.refresh_at, sent + SECOND);
        }
    }

    #[test]
    fn a_renewal_window_holds_the_refresh_back_until_it_opens() {
        // The 0.x timeline refreshes a one-hour token 300 s before its usable end: 330 s before
        // its stated expiry, before an issuer with a 240 s window has a new token.
        let fixed = Config {
            refresh_ahead: RefreshAhead::Fixed(300 * SECOND),
            jitter: 0.0,
            ..Config::default()
        };
        let sent = Instant::now();
        let hour = 3600 * SECOND;
        let window = Some(240 * SECOND);
        let plain = plan(&fixed, hour, None, sent, sent, 10 * MS, 0.0);
        assert_eq!(plain.refresh_at - sent, 3270 * SECOND);
        let held = plan(&fixed, hour, window, sent, sent, 10 * MS, 0.0);
        assert_eq!(
            held.refresh_at - sent,
            3360 * SECOND,
            "at expiry minus the window"
        );
        assert_eq!(
            held.expires_at, plain.expires_at,
            "the usable end does not move"
        );
        assert_eq!(held.usable_for, plain.usable_for);

        // The adaptive timeline already refreshes inside the window: nothing moves.
        let adaptive = adaptive();
        let plain = plan(&adaptive, hour, None, sent, sent, 10 * MS, 0.0);
        assert!(plain.refresh_at - sent > 3360 * SECOND, "{plain:?}");
        assert_eq!(
            plan(&adaptive, hour, window, sent, sent, 10 * MS, 0.0),
            plain
        );

        // A window longer than the token's life holds nothing back.
        let short = plan(&fixed, 120 * SECOND, None, sent, sent, 10 * MS, 0.0);
        assert_eq!(
            plan(&fixed, 120 * SECOND, window, sent, sent, 10 * MS, 0.0),
            short
        );
    }

    #[test]
    fn a_renewal_window_never_makes_a_request_wait() {
        let fixed = Config {
            refresh_ahead: RefreshAhead::Fixed(300 * SECOND),
            jitter: 0.0,
            ..Config::default()
        };
        let sent = Instant::now();
        let hour = 3600 * SECOND;
        // A window of a second opens after the usable end (30 s of skew): the refresh starts
        // three slowest fetches before that end instead.
        let tiny = plan(&fixed, hour, Some(SECOND), sent, sent, 2 * SECOND, 0.0);
        assert_eq!(tiny.expires_at - tiny.refresh_at, 6 * SECOND);
        // With fetches too fast to measure, a second before it.
        let instant = plan(&fixed, hour, Some(SECOND), sent, sent, Duration::ZERO, 0.0);
        assert_eq!(instant.expires_at - instant.refresh_at, SECOND);
        // A slow endpoint keeps the refresh where the latency puts it, even before the window.
        let slow = plan(
            &fixed,
            hour,
            Some(240 * SECOND),
            sent,
            sent,
            100 * SECOND,
            0.0,
        );
        assert_eq!(slow.refresh_at - sent, 3270 * SECOND);
        // In both modes, for any latency and window, a refresh taking the slowest recent fetch
        // ends by the usable end, and never starts before the plan without a window would.
        for mode in [RefreshAhead::Adaptive, RefreshAhead::Fixed(300 * SECOND)] {
            let config = Config {
                refresh_ahead: mode,
                ..Config::default()
            };
            for latency in [Duration::ZERO, 50 * MS, 2 * SECOND, 20 * SECOND] {
                for window in [SECOND, 60 * SECOND, 240 * SECOND, 300 * SECOND, hour] {
                    for random in [0.0, 0.5, 0.999] {
                        let with = plan(&config, hour, Some(window), sent, sent, latency, random);
                        let without = plan(&config, hour, None, sent, sent, latency, random);
                        assert!(with.refresh_at >= without.refresh_at);
                        assert!(
                            with.refresh_at + latency <= with.expires_at,
                            "{mode:?} {latency:?} {window:?}: {with:?}"
                        );
                        let opens = sent + hour - window;
                        let latest = with.expires_at - (latency * 3).max(SECOND);
                        assert!(with.refresh_at >= opens.min(latest), "{with:?}");
                    }
                }
            }
        }
    }
}
