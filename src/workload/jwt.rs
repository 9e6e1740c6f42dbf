//! What a workload's JWT says about its own lifetime, read without verifying it: the
//! platform that wrote or served it is trusted, and the party it is for verifies it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

/// The longest JWT read (Kubernetes tokens are about 1 KiB; cloud ID tokens a few).
pub(crate) const MAX_JWT: usize = 16 * 1024;

/// The times a JWT states, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Times {
    /// `exp`.
    pub(crate) expires: u64,
    /// `iat`, if stated.
    pub(crate) issued: Option<u64>,
    /// Kubernetes' `kubernetes.io.warnafter`, if stated: a token with extended expiration
    /// (valid for a year) is still rotated by the kubelet as if it expired then, and the API
    /// server flags its use after it as stale.
    pub(crate) warn_after: Option<u64>,
}

impl Times {
    /// How long the token has left by this machine's clock; zero if it has expired.
    pub(crate) fn remaining(&self) -> Duration {
        self.remaining_at(SystemTime::now())
    }

    pub(crate) fn remaining_at(&self, now: SystemTime) -> Duration {
        Self::until(self.expires, now)
    }

    /// How long until `kubernetes.io.warnafter`, if the token states it; zero once passed.
    pub(crate) fn until_warn_after(&self) -> Option<Duration> {
        Some(Self::until(self.warn_after?, SystemTime::now()))
    }

    fn until(at: u64, now: SystemTime) -> Duration {
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        Duration::from_secs(at).saturating_sub(now)
    }

    /// The lifetime the issuer gave the token (`exp - iat`, or `warnafter - iat` when stated),
    /// if it stated `iat`.
    pub(crate) fn lifetime(&self) -> Option<Duration> {
        let issued = self.issued?;
        self.warn_after
            .unwrap_or(self.expires)
            .checked_sub(issued)
            .map(Duration::from_secs)
    }
}

/// Why a text is not a usable JWT. Never quotes the text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NotAJwt(pub(crate) String);

/// Reads `exp` and `iat` from a compact JWS (`header.payload.signature`).
pub(crate) fn times(jwt: &str) -> Result<Times, NotAJwt> {
    if jwt.len() > MAX_JWT {
        return Err(NotAJwt(format!(
            "it is {} bytes long, more than the {MAX_JWT} bytes a JWT may have here",
            jwt.len()
        )));
    }
    let mut parts = jwt.split('.');
    let (Some(_header), Some(payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(NotAJwt(format!(
            "it is not a compact JWT (three base64url parts separated by dots; {} bytes, {} dots)",
            jwt.len(),
            jwt.bytes().filter(|&b| b == b'.').count()
        )));
    };
    let payload = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| NotAJwt("its payload is not base64url".into()))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&payload).map_err(|_| NotAJwt("its payload is not JSON".into()))?;
    let claims = claims
        .as_object()
        .ok_or_else(|| NotAJwt("its payload is not a JSON object".into()))?;
    let seconds = |name: &str| -> Result<Option<u64>, NotAJwt> {
        match claims.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(value) => value
                .as_u64()
                .or_else(|| {
                    value
                        .as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .map(Some)
                .ok_or_else(|| NotAJwt(format!("its `{name}` is not a number of seconds"))),
        }
    };
    let expires = seconds("exp")?.ok_or_else(|| NotAJwt("it states no `exp`".into()))?;
    let issued = seconds("iat")?;
    // Read leniently: a claim of another shape is another issuer's business.
    let warn_after = claims
        .get("kubernetes.io")
        .and_then(|k8s| k8s.get("warnafter"))
        .and_then(serde_json::Value::as_u64)
        .filter(|&at| at < expires);
    Ok(Times {
        expires,
        issued,
        warn_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn reads_exp_and_iat() {
        let times = times(&jwt(r#"{"exp":1700003600,"iat":1700000000,"sub":"x"}"#)).unwrap();
        assert_eq!(times.expires, 1_700_003_600);
        assert_eq!(times.lifetime(), Some(Duration::from_secs(3600)));
        let now = UNIX_EPOCH + Duration::from_secs(1_700_003_000);
        assert_eq!(times.remaining_at(now), Duration::from_secs(600));
        let later = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(times.remaining_at(later), Duration::ZERO);
        let float = super::times(&jwt(r#"{"exp":1700003600.5}"#)).unwrap();
        assert_eq!(float.expires, 1_700_003_600);
        assert_eq!(float.issued, None);
        // A Kubernetes token with extended expiration: a year, rotated as if an hour.
        let extended = super::times(&jwt(
            r#"{"exp":1731536000,"iat":1700000000,"kubernetes.io":{"warnafter":1700003600}}"#,
        ))
        .unwrap();
        assert_eq!(extended.warn_after, Some(1_700_003_600));
        assert_eq!(extended.lifetime(), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn refuses_what_is_not_a_jwt_without_quoting_it() {
        for (text, why) in [
            ("s3cr3t-opaque-token", "not a compact JWT"),
            ("a.b", "not a compact JWT"),
            ("a.b.c.d", "not a compact JWT"),
            ("e30.!!!.c2ln", "not base64url"),
            ("e30.bm90IGpzb24.c2ln", "not JSON"),
            (&jwt("[1]"), "not a JSON object"),
            (&jwt(r#"{"sub":"x"}"#), "no `exp`"),
            (&jwt(r#"{"exp":"soon"}"#), "`exp` is not a number"),
            (&jwt(r#"{"exp":-5}"#), "`exp` is not a number"),
        ] {
            let NotAJwt(message) = times(text).unwrap_err();
            assert!(message.contains(why), "{text}: {message}");
            assert!(!message.contains("s3cr3t"));
        }
        let long = jwt(&format!(r#"{{"exp":1,"pad":"{}"}}"#, "x".repeat(MAX_JWT)));
        assert!(times(&long).unwrap_err().0.contains("bytes long"));
    }
}
