use ring::signature::{
    UnparsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ED25519,
    RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
};

use super::*;

/// The public key bytes ring verifies with, rebuilt from the public JWK only.
fn public_bytes(jwk: &str) -> Vec<u8> {
    let jwk: serde_json::Value = serde_json::from_str(jwk).unwrap();
    let member = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
    match jwk["kty"].as_str().unwrap() {
        "EC" => [vec![4], member("x"), member("y")].concat(),
        "OKP" => member("x"),
        "RSA" => {
            // RSAPublicKey ::= SEQUENCE { n INTEGER, e INTEGER }, as ring reads it.
            fn integer(bytes: &[u8]) -> Vec<u8> {
                let mut value = bytes.to_vec();
                if value[0] & 0x80 != 0 {
                    value.insert(0, 0);
                }
                [vec![0x02], length(value.len()), value].concat()
            }
            fn length(len: usize) -> Vec<u8> {
                match len {
                    0..=127 => vec![len as u8],
                    128..=255 => vec![0x81, len as u8],
                    _ => vec![0x82, (len >> 8) as u8, len as u8],
                }
            }
            let body = [integer(&member("n")), integer(&member("e"))].concat();
            [vec![0x30], length(body.len()), body].concat()
        }
        other => panic!("kty {other}"),
    }
}

fn verify(key: &SigningKey, jws: &str, algorithm: &'static dyn VerificationAlgorithm) {
    let (input, signature) = jws.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    UnparsedPublicKey::new(algorithm, public_bytes(&key.public_jwk()))
        .verify(input.as_bytes(), &signature)
        .expect("the signature verifies with the public JWK");
    let (header, claims) = input.split_once('.').unwrap();
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
    assert_eq!(header["alg"], key.alg().name());
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["kid"].as_str(), key.explicit_kid());
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["sub"], "me");
}

fn sign_and_verify(key: &SigningKey, algorithm: &'static dyn VerificationAlgorithm) {
    let jws = key.sign_jws(r#""typ":"JWT""#, r#"{"sub":"me"}"#).unwrap();
    verify(key, &jws, algorithm);
    // A tampered signature input fails, so the check above can fail.
    let (header, rest) = jws.split_once('.').unwrap();
    let tampered = format!("{header}.{}", rest.replacen(&rest[..2], "AA", 1));
    let (input, signature) = tampered.rsplit_once('.').unwrap();
    let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    assert!(
        UnparsedPublicKey::new(algorithm, public_bytes(&key.public_jwk()))
            .verify(input.as_bytes(), &signature)
            .is_err()
    );
}

/// An RSA key made by Node.js (which the test suite needs anyway, for the real authorization
/// server), as PKCS#8 PEM: ring cannot generate RSA keys.
fn node_rsa_pem() -> String {
    let script = "const { generateKeyPairSync } = require('node:crypto');\
                  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });\
                  process.stdout.write(privateKey.export({ type: 'pkcs8', format: 'pem' }));";
    let output = std::process::Command::new("node")
        .args(["-e", script])
        .output()
        .expect("the RSA tests need Node.js (`node`)");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The 32 bytes after `marker` in a ring-made PKCS#8 document.
fn after(der: &[u8], marker: &[u8]) -> Vec<u8> {
    let at = der.windows(marker.len()).position(|w| w == marker).unwrap() + marker.len();
    der[at..at + 32].to_vec()
}

#[test]
fn es256_signs_what_its_public_jwk_verifies() {
    let key = SigningKey::generate_es256().unwrap();
    assert_eq!(key.alg(), Algorithm::Es256);
    sign_and_verify(&key, &ECDSA_P256_SHA256_FIXED);
    sign_and_verify(&key.with_kid("k-1"), &ECDSA_P256_SHA256_FIXED);
}

#[test]
fn ed25519_signs_what_its_public_jwk_verifies() {
    let key = SigningKey::generate_ed25519()
        .unwrap()
        .with_thumbprint_kid();
    assert_eq!(key.alg(), Algorithm::EdDsa);
    assert_eq!(key.explicit_kid(), Some(key.thumbprint()));
    sign_and_verify(&key, &ED25519);
}

#[test]
fn rsa_keys_sign_rs256_and_ps256_from_pem() {
    let pem = node_rsa_pem();
    let rs = SigningKey::from_pem(Algorithm::Rs256, &pem).unwrap();
    sign_and_verify(&rs, &RSA_PKCS1_2048_8192_SHA256);
    let ps = SigningKey::from_pem(Algorithm::Ps256, &pem)
        .unwrap()
        .with_kid("r");
    sign_and_verify(&ps, &RSA_PSS_2048_8192_SHA256);
    assert_eq!(rs.thumbprint(), ps.thumbprint());
    // The RSA key is not an EC key.
    assert!(SigningKey::from_pem(Algorithm::Es256, &pem).is_err());
}

#[test]
fn private_jwks_load_with_their_kid_and_the_same_public_key() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let from_der = SigningKey::from_pkcs8_der(Algorithm::Es256, pkcs8.as_ref()).unwrap();
    let public: serde_json::Value = serde_json::from_str(from_der.canonical_jwk()).unwrap();
    let d = b64(&after(pkcs8.as_ref(), &[0x02, 0x01, 0x01, 0x04, 0x20]));
    let jwk = format!(
        r#"{{"kty":"EC","crv":"P-256","x":{},"y":{},"d":"{d}","kid":"ec"}}"#,
        public["x"], public["y"]
    );
    let key = SigningKey::from_jwk(&jwk).unwrap();
    assert_eq!(key.thumbprint(), from_der.thumbprint());
    assert_eq!(key.kid(), "ec");
    sign_and_verify(&key, &ECDSA_P256_SHA256_FIXED);

    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let from_der = SigningKey::from_pkcs8_der(Algorithm::EdDsa, pkcs8.as_ref()).unwrap();
    let public: serde_json::Value = serde_json::from_str(from_der.canonical_jwk()).unwrap();
    let d = b64(&after(pkcs8.as_ref(), &[0x04, 0x22, 0x04, 0x20]));
    let jwk = format!(
        r#"{{"kty":"OKP","crv":"Ed25519","x":{},"d":"{d}"}}"#,
        public["x"]
    );
    let key = SigningKey::from_jwk(&jwk).unwrap();
    assert_eq!(key.thumbprint(), from_der.thumbprint());
    sign_and_verify(&key, &ED25519);

    // A wrong `alg` and a foreign curve are refused.
    assert!(SigningKey::from_jwk(&jwk.replace("\"kty\"", "\"alg\":\"ES256\",\"kty\"")).is_err());
    assert!(SigningKey::from_jwk(&jwk.replace("Ed25519", "X25519")).is_err());
}

#[test]
fn thumbprints_follow_rfc_7638() {
    // RFC 7638 §3.1's example key and thumbprint (public values only).
    let n = "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw";
    let canonical = format!(r#"{{"e":"AQAB","kty":"RSA","n":"{n}"}}"#);
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    assert_eq!(
        b64(digest.as_ref()),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    // Ours hash the same canonical form.
    let key = SigningKey::generate_es256().unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, key.canonical_jwk().as_bytes());
    assert_eq!(key.thumbprint(), b64(digest.as_ref()));
    assert!(key
        .canonical_jwk()
        .starts_with(r#"{"crv":"P-256","kty":"EC","x":""#));
}

#[test]
fn debug_and_errors_show_no_key_material() {
    let key = SigningKey::generate_es256().unwrap().with_kid("visible");
    let shown = format!("{key:?}");
    assert!(
        shown.contains("Es256") && shown.contains("visible"),
        "{shown}"
    );
    assert!(!shown.contains(&key.canonical_jwk()[30..50]), "{shown}");
    let secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA";
    let jwk = format!(r#"{{"kty":"EC","crv":"P-256","x":"AA","y":"AA","d":"{secret}"}}"#);
    let error = SigningKey::from_jwk(&jwk).unwrap_err().to_string();
    assert!(!error.contains(secret), "{error}");
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{secret}!\n-----END PRIVATE KEY-----\n");
    let error = SigningKey::from_pem(Algorithm::Es256, &pem)
        .unwrap_err()
        .to_string();
    assert!(!error.contains(secret), "{error}");
}
