use http::HeaderValue;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

use super::*;

fn decode(part: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Checks a proof as a resource server does, with the public key its header carries; returns
/// its header and claims.
fn verify(proof: &str) -> (serde_json::Value, serde_json::Value) {
    let (input, signature) = proof.rsplit_once('.').unwrap();
    let (header, claims) = input.split_once('.').unwrap();
    let (header, claims) = (decode(header), decode(claims));
    let jwk = &header["jwk"];
    let member = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    let (algorithm, public): (&dyn ring::signature::VerificationAlgorithm, _) =
        match header["alg"].as_str().unwrap() {
            "ES256" => (
                &ECDSA_P256_SHA256_FIXED,
                [vec![4], member("x"), member("y")].concat(),
            ),
            "EdDSA" => (&ED25519, member("x")),
            other => panic!("alg {other}"),
        };
    UnparsedPublicKey::new(algorithm, public)
        .verify(
            input.as_bytes(),
            &URL_SAFE_NO_PAD.decode(signature).unwrap(),
        )
        .expect("the proof verifies with its own jwk");
    assert!(jwk.get("d").is_none(), "no private member in the jwk");
    (header, claims)
}

#[test]
fn a_proof_carries_what_rfc_9449_asks() {
    let key = DpopKey::generate().unwrap();
    let proof = key
        .proof(
            &Method::GET,
            "https://api.example.com/v1/items",
            Some("t0k3n"),
        )
        .unwrap();
    let (header, claims) = verify(&proof);
    assert_eq!(header["typ"], "dpop+jwt");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(claims["htm"], "GET");
    assert_eq!(claims["htu"], "https://api.example.com/v1/items");
    let ath = ring::digest::digest(&ring::digest::SHA256, b"t0k3n");
    assert_eq!(claims["ath"], URL_SAFE_NO_PAD.encode(ath.as_ref()));
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(claims["jti"].as_str().unwrap())
            .unwrap()
            .len(),
        16
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(claims["iat"].as_u64().unwrap().abs_diff(now) <= 2);
    assert!(claims.get("nonce").is_none());
    // Without a token, no `ath`.
    let (_, claims) = verify(&key.proof(&Method::POST, "https://as/token", None).unwrap());
    assert!(claims.get("ath").is_none());
}

#[test]
fn nonces_are_kept_per_origin_and_sent_to_that_origin_only() {
    let key = DpopKey::new(SigningKey::generate_ed25519().unwrap());
    let mut headers = HeaderMap::new();
    assert!(!key.observe("https://api.example.com", &headers));
    headers.insert(DPOP_NONCE, "n-1~x".parse().unwrap());
    assert!(key.observe("https://api.example.com", &headers));
    let (header, claims) = verify(
        &key.proof(&Method::PUT, "https://api.example.com/a", None)
            .unwrap(),
    );
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(claims["nonce"], "n-1~x");
    let (_, claims) = verify(
        &key.proof(&Method::PUT, "https://other.example.com/a", None)
            .unwrap(),
    );
    assert!(claims.get("nonce").is_none());
    // A clone shares the nonces; a newer nonce replaces the older one.
    key.clone().store_nonce("https://api.example.com", "n-2");
    assert_eq!(key.nonce("https://api.example.com").as_deref(), Some("n-2"));
}

#[test]
fn htu_drops_query_and_fragment_and_normalises_the_origin() {
    let cases = [
        (
            "https://API.example.com/a/b?q=1#f",
            "https://api.example.com/a/b",
        ),
        ("HTTPS://api.example.com:443/a", "https://api.example.com/a"),
        ("http://api.example.com:80", "http://api.example.com/"),
        (
            "http://api.example.com:8080/x",
            "http://api.example.com:8080/x",
        ),
        ("https://[::1]:443/x", "https://[::1]/x"),
        (
            "http://[2001:DB8::1]:8443/x?y",
            "http://[2001:db8::1]:8443/x",
        ),
        (
            "https://user@api.example.com/x",
            "https://api.example.com/x",
        ),
    ];
    for (uri, want) in cases {
        let req = Request::builder().uri(uri).body(()).unwrap();
        assert_eq!(htu(&req).as_deref(), Some(want), "{uri}");
    }
    let req = Request::builder()
        .uri("/v1/items?page=2")
        .header(HOST, "API.example.com:443")
        .body(())
        .unwrap();
    assert_eq!(
        htu(&req).as_deref(),
        Some("https://api.example.com/v1/items")
    );
    let req = Request::builder().uri("/v1").body(()).unwrap();
    assert_eq!(htu(&req), None);
    assert_eq!(
        origin_of("https://a.example:8443/x/y"),
        "https://a.example:8443"
    );
    assert_eq!(origin_of("https://a.example"), "https://a.example");
}

#[test]
fn debug_shows_the_thumbprint_not_the_key() {
    let key = DpopKey::generate().unwrap();
    let shown = format!("{key:?}");
    assert!(shown.contains(key.thumbprint()), "{shown}");
    assert!(!shown.contains("jwk"), "{shown}");
}

#[test]
fn a_nonce_is_nqchar_and_bounded_or_ignored() {
    let key = DpopKey::generate().unwrap();
    let offer = |nonce: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(DPOP_NONCE, HeaderValue::from_str(nonce).unwrap());
        key.observe("https://rs.example", &headers)
    };
    assert!(offer("eyJ7S_zG.9-nonce~"));
    assert_eq!(
        key.nonce("https://rs.example").as_deref(),
        Some("eyJ7S_zG.9-nonce~")
    );
    for refused in [
        "a \"b\" c",
        "with space",
        "back\\slash",
        &"n".repeat(MAX_NONCE + 1),
    ] {
        assert!(!offer(refused), "{refused:?} was kept");
    }
    assert_eq!(
        key.nonce("https://rs.example").as_deref(),
        Some("eyJ7S_zG.9-nonce~"),
        "the last good nonce stays"
    );
}

#[test]
fn a_full_nonce_table_updates_in_place_and_evicts_one_origin_for_a_new_one() {
    let key = DpopKey::generate().unwrap();
    let origin = |i: usize| format!("https://rs-{i}.example");
    for i in 0..MAX_ORIGINS {
        key.store_nonce(&origin(i), "first");
    }
    // A new nonce of a known origin: no origin loses its nonce.
    key.store_nonce(&origin(7), "second");
    assert_eq!(key.nonce(&origin(7)).as_deref(), Some("second"));
    let kept = (0..MAX_ORIGINS)
        .filter(|&i| key.nonce(&origin(i)).is_some())
        .count();
    assert_eq!(kept, MAX_ORIGINS);
    // A new origin when full: it is kept, and exactly one other origin forgets its nonce.
    key.store_nonce(&origin(MAX_ORIGINS), "new");
    assert_eq!(key.nonce(&origin(MAX_ORIGINS)).as_deref(), Some("new"));
    let kept = (0..=MAX_ORIGINS)
        .filter(|&i| key.nonce(&origin(i)).is_some())
        .count();
    assert_eq!(kept, MAX_ORIGINS);
}
