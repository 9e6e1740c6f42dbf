//! Property tests of DPoP proofs as the layer stamps them: the `htu` is right for every URI
//! form a tower client sends (absolute, origin form with a `Host`, IPv6, default ports, any case,
//! query and fragment), and no `jti` ever repeats.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::{Request, Response};
use proptest::prelude::*;
use proptest::test_runner::Config;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_bearer::dpop::DpopKey;
use tower_bearer::{BearerAuthLayer, Placement, StaticToken};

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

/// The claims of the proof a request was stamped with.
fn claims(req: &Request<()>) -> serde_json::Value {
    let proof = req.headers()["dpop"].to_str().unwrap();
    let payload = proof.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

/// Stamps `req` through the layer and returns what the inner service received.
async fn stamped(layer: &BearerAuthLayer, req: Request<()>) -> Request<()> {
    let seen = Arc::new(Mutex::new(None));
    let inner = {
        let seen = seen.clone();
        service_fn(move |req: Request<()>| {
            *seen.lock().unwrap() = Some(req);
            async { Ok::<_, std::convert::Infallible>(Response::new(())) }
        })
    };
    let svc = ServiceBuilder::new().layer(layer.clone()).service(inner);
    svc.oneshot(req).await.unwrap();
    let req = seen.lock().unwrap().take().unwrap();
    req
}

#[derive(Debug, Clone)]
enum Host {
    Name(String),
    V4([u8; 4]),
    V6([u16; 8]),
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        "[a-zA-Z][a-zA-Z0-9-]{0,10}(\\.[a-zA-Z0-9]{1,8}){0,3}".prop_map(Host::Name),
        any::<[u8; 4]>().prop_map(Host::V4),
        any::<[u16; 8]>().prop_map(Host::V6),
    ]
}

impl Host {
    /// As written in a URI, with the case given.
    fn written(&self, upper: bool) -> String {
        match self {
            Host::Name(name) if upper => name.to_ascii_uppercase(),
            Host::Name(name) => name.clone(),
            Host::V4(ip) => std::net::Ipv4Addr::from(*ip).to_string(),
            Host::V6(segments) => {
                let ip = std::net::Ipv6Addr::from(*segments).to_string();
                format!("[{}]", if upper { ip.to_ascii_uppercase() } else { ip })
            }
        }
    }
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn htu_is_scheme_authority_and_path_normalised(
        https in any::<bool>(),
        upper in any::<bool>(),
        host in host(),
        port in prop_oneof![Just(None), Just(Some(80u16)), Just(Some(443u16)), (1u16..).prop_map(Some)],
        path in "(/[a-zA-Z0-9._~-]{0,8}){0,4}",
        query in proptest::option::of("[a-zA-Z0-9=&]{0,12}"),
        fragment in proptest::option::of("[a-z]{0,5}"),
        origin_form in any::<bool>(),
        method in prop_oneof![Just("GET"), Just("POST"), Just("DELETE"), Just("PATCH")],
    ) {
        let scheme = if https { "https" } else { "http" };
        let written_scheme = if upper { scheme.to_ascii_uppercase() } else { scheme.to_owned() };
        let authority = match port {
            Some(port) => format!("{}:{port}", host.written(upper)),
            None => host.written(upper),
        };
        let mut target = path.clone();
        if let Some(query) = &query {
            target.push('?');
            target.push_str(query);
        }
        if let Some(fragment) = &fragment {
            target.push('#');
            target.push_str(fragment);
        }
        let builder = Request::builder().method(method);
        let req = if origin_form && !https {
            // Origin form carries no scheme; the layer assumes https, so only https cases
            // compare: an http origin-form request is sent absolute instead.
            builder.uri(format!("{written_scheme}://{authority}{target}"))
        } else if origin_form {
            let target = if target.starts_with('/') { target.clone() } else { format!("/{target}") };
            builder.uri(target).header("host", &authority)
        } else {
            builder.uri(format!("{written_scheme}://{authority}{target}"))
        }
        .body(())
        .unwrap();

        let default = if https { 443 } else { 80 };
        let mut want = format!("{scheme}://{}", host.written(false).to_ascii_lowercase());
        if let Some(port) = port.filter(|port| *port != default) {
            want.push_str(&format!(":{port}"));
        }
        want.push_str(if path.is_empty() { "/" } else { &path });

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let layer = BearerAuthLayer::new(StaticToken::new("t0k3n"))
            .placement(Placement::dpop(DpopKey::generate().unwrap()));
        let req = runtime.block_on(stamped(&layer, req));
        let claims = claims(&req);
        prop_assert_eq!(claims["htu"].as_str(), Some(want.as_str()));
        prop_assert_eq!(claims["htm"].as_str(), Some(method));
        prop_assert_eq!(req.headers()["authorization"].to_str().unwrap(), "DPoP t0k3n");
    }
}

#[test]
fn jti_never_repeats_across_tasks_and_threads() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let key = DpopKey::generate().unwrap();
    let layer = BearerAuthLayer::new(StaticToken::new("t0k3n")).placement(Placement::dpop(key));
    let jtis: Vec<String> = runtime.block_on(async {
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let layer = layer.clone();
                tokio::spawn(async move {
                    let mut jtis = Vec::new();
                    for _ in 0..500 {
                        let req = Request::get("https://api.example.com/x").body(()).unwrap();
                        let req = stamped(&layer, req).await;
                        jtis.push(claims(&req)["jti"].as_str().unwrap().to_owned());
                    }
                    jtis
                })
            })
            .collect();
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    });
    assert_eq!(jtis.len(), 4000);
    let distinct: HashSet<&String> = jtis.iter().collect();
    assert_eq!(distinct.len(), jtis.len(), "a jti repeated");
    for jti in &jtis {
        // 128 random bits.
        assert_eq!(URL_SAFE_NO_PAD.decode(jti).unwrap().len(), 16);
    }
}
