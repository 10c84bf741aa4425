//! A closed-loop HTTP/1.1 load generator for `make bench`: N keep-alive connections, each
//! sending the same request back to back for a fixed time (loopback only; it stops by
//! itself). Prints one JSON line: requests, errors, statuses, requests per second, and
//! percentiles of the latency (to the last byte of the body) and of the time to the
//! response headers (the first byte a streaming client can use).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "weir-load",
    about = "Closed-loop HTTP/1.1 load for Weir's benchmark"
)]
struct Args {
    /// host:port on loopback.
    #[arg(long)]
    addr: String,
    #[arg(long, default_value = "POST")]
    method: String,
    #[arg(long)]
    path: String,
    /// Request body (a file).
    #[arg(long)]
    body: Option<std::path::PathBuf>,
    /// `name: value`, repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Seconds sent but not counted, first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    /// To the response headers: for a stream, the wait before its first event can arrive.
    first_byte_us: Vec<u64>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

async fn connection(args: Args, body: Bytes, start: Instant) -> Tally {
    let mut tally = Tally::default();
    let warm_until = start + Duration::from_secs_f64(args.warmup);
    let end = warm_until + Duration::from_secs_f64(args.seconds);
    'reconnect: while Instant::now() < end {
        let Ok(stream) = TcpStream::connect(&args.addr).await else {
            tally.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            tally.errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < end {
            let mut req = Request::builder()
                .method(args.method.as_str())
                .uri(&args.path)
                .header("host", "bench");
            for h in &args.headers {
                if let Some((k, v)) = h.split_once(':') {
                    req = req.header(k.trim(), v.trim());
                }
            }
            let Ok(req) = req.body(Full::new(body.clone())) else {
                return tally;
            };
            let sent = Instant::now();
            let mut first_byte = None;
            let ok = match sender.send_request(req).await {
                Ok(resp) => {
                    first_byte = Some(sent.elapsed());
                    let status = resp.status().as_u16();
                    let complete = resp.into_body().collect().await.is_ok();
                    if sent >= warm_until {
                        *tally.statuses.entry(status).or_default() += 1;
                    }
                    complete
                }
                Err(_) => false,
            };
            if sent >= warm_until {
                if let (true, Some(first_byte)) = (ok, first_byte) {
                    tally.latencies_us.push(sent.elapsed().as_micros() as u64);
                    tally.first_byte_us.push(first_byte.as_micros() as u64);
                } else {
                    tally.errors += 1;
                }
            }
            if !ok || sender.ready().await.is_err() {
                continue 'reconnect;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let body = match &args.body {
        Some(p) => Bytes::from(std::fs::read(p).unwrap_or_default()),
        None => Bytes::new(),
    };
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.connections)
        .map(|_| tokio::spawn(connection(args.clone(), body.clone(), start)))
        .collect();
    let mut all = Tally::default();
    for t in tasks {
        if let Ok(t) = t.await {
            all.latencies_us.extend(t.latencies_us);
            all.first_byte_us.extend(t.first_byte_us);
            all.errors += t.errors;
            for (s, n) in t.statuses {
                *all.statuses.entry(s).or_default() += n;
            }
        }
    }
    all.latencies_us.sort_unstable();
    all.first_byte_us.sort_unstable();
    let n = all.latencies_us.len();
    println!(
        "{}",
        json!({
            "requests": n,
            "errors": all.errors,
            "statuses": all.statuses,
            "rps": n as f64 / args.seconds,
            "p50_ms": percentile(&all.latencies_us, 0.50),
            "p99_ms": percentile(&all.latencies_us, 0.99),
            "first_byte_p50_ms": percentile(&all.first_byte_us, 0.50),
            "first_byte_p99_ms": percentile(&all.first_byte_us, 0.99),
            "connections": args.connections,
            "seconds": args.seconds,
        })
    );
}
