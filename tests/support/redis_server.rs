//! A real `redis-server` on a loopback port for the tests and benchmarks of the shared level
//! (Debian's package; `scripts/test.sh` installs it), and a raw client to look at what it holds.
//! `benches/shared.rs` includes this file by path.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream as StdTcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` on a loopback port, persistence off, killed (by its PID) when dropped.
pub(crate) struct RedisServer {
    child: Option<Child>,
    pub(crate) port: u16,
}

impl RedisServer {
    pub(crate) fn start() -> Self {
        // The port is free when asked for; another process could take it before the server
        // binds, which makes the start fail loudly rather than the test pass wrongly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_on(port)
    }

    pub(crate) fn start_on(port: u16) -> Self {
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "notice"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed (apt-get install redis-server)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Ready when it says so; a server that exits (port taken) ends its output first.
        let ready = lines
            .by_ref()
            .take(200)
            .map_while(Result::ok)
            .any(|line| line.contains("Ready to accept connections"));
        assert!(ready, "redis-server did not start on port {port}");
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child: Some(child),
            port,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: no shutdown, no goodbye to clients.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// One command, as bytes, and its reply.
    pub(crate) fn raw(&self, args: &[&[u8]]) -> Reply {
        let mut stream = StdTcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        stream.write_all(&out).unwrap();
        read_reply(&mut BufReader::new(stream))
    }

    /// The keys holding tokens (leases, refresh tokens and failure records aside).
    pub(crate) fn token_keys(&self) -> Vec<Vec<u8>> {
        let Reply::Array(keys) = self.raw(&[b"KEYS", b"tower-bearer:*"]) else {
            panic!("KEYS did not answer an array");
        };
        keys.into_iter()
            .filter_map(|key| match key {
                Reply::Bulk(Some(key))
                    if ![&b":lease"[..], b":refresh", b":failed"]
                        .iter()
                        .any(|suffix| key.ends_with(suffix)) =>
                {
                    Some(key)
                }
                _ => None,
            })
            .collect()
    }

    /// The one stored token value, raw.
    pub(crate) fn only_value(&self) -> Vec<u8> {
        let keys = self.token_keys();
        assert_eq!(keys.len(), 1, "one token key expected");
        match self.raw(&[b"GET", &keys[0]]) {
            Reply::Bulk(Some(value)) => value,
            other => panic!("GET answered {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
pub(crate) enum Reply {
    Simple(#[allow(dead_code)] String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

pub(crate) fn read_reply(reader: &mut impl BufRead) -> Reply {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let (kind, rest) = line.trim_end().split_at(1);
    match kind {
        "+" => Reply::Simple(rest.to_owned()),
        "-" => panic!("redis error: {rest}"),
        ":" => Reply::Integer(rest.parse().unwrap()),
        "$" if rest == "-1" => Reply::Bulk(None),
        "$" => {
            let mut value = vec![0; rest.parse::<usize>().unwrap() + 2];
            reader.read_exact(&mut value).unwrap();
            value.truncate(value.len() - 2);
            Reply::Bulk(Some(value))
        }
        "*" => Reply::Array(
            (0..rest.parse::<usize>().unwrap())
                .map(|_| read_reply(reader))
                .collect(),
        ),
        _ => panic!("unexpected reply {line:?}"),
    }
}
