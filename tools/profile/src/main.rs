//! Weir's module under wasmtime, driven through the proxy-wasm ABI by a stub host: the
//! filter's own code per request, without Envoy, so that `perf` can name its hot functions
//! (wasmtime writes a perf map). The stub host keeps headers, bodies, properties and shared
//! data in plain collections; its costs are not Envoy's, so use the numbers to compare two
//! builds of the module, never as Weir's cost in Envoy (that is `make bench`).
//!
//! weir-profile MODULE FILTER_CONFIG REQUESTS [POLICY] [stream]
//! MODULE: weir.wasm with its name section; FILTER_CONFIG: the file `weir bundle --out`
//! writes; each request is the bench's chat completion with the demo key, buffered or (with
//! `stream`) answered by the bench's seven-event SSE stream in one chunk.

use anyhow::{anyhow, Context as _, Result};
use std::collections::HashMap;
use wasmtime::*;

#[derive(Default)]
struct Host {
    req_headers: Vec<(String, String)>,
    resp_headers: Vec<(String, String)>,
    req_body: Vec<u8>,
    resp_body: Vec<u8>,
    config: Vec<u8>,
    props: HashMap<Vec<u8>, Vec<u8>>,
    shared: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    metrics: u32,
    now: u64,
    local_replies: u64,
    calls: HashMap<&'static str, u64>,
}

fn mem(c: &mut Caller<'_, Host>) -> Memory {
    c.get_export("memory").unwrap().into_memory().unwrap()
}
fn read(c: &mut Caller<'_, Host>, p: i32, l: i32) -> Vec<u8> {
    let m = mem(c);
    m.data(&c)[p as usize..(p + l) as usize].to_vec()
}
fn put_u32(c: &mut Caller<'_, Host>, at: i32, v: u32) {
    let m = mem(c);
    m.data_mut(c)[at as usize..at as usize + 4].copy_from_slice(&v.to_le_bytes());
}
fn ret(c: &mut Caller<'_, Host>, data: &[u8], pp: i32, ps: i32) {
    let alloc = c
        .get_export("proxy_on_memory_allocate")
        .unwrap()
        .into_func()
        .unwrap()
        .typed::<i32, i32>(&c)
        .unwrap();
    let p = if data.is_empty() {
        0
    } else {
        alloc.call(&mut *c, data.len() as i32).unwrap()
    };
    if !data.is_empty() {
        let m = mem(c);
        m.data_mut(&mut *c)[p as usize..p as usize + data.len()].copy_from_slice(data);
    }
    put_u32(c, pp, p as u32);
    put_u32(c, ps, data.len() as u32);
}
fn count(c: &mut Caller<'_, Host>, name: &'static str) {
    *c.data_mut().calls.entry(name).or_default() += 1;
}
fn map(h: &mut Host, t: i32) -> &mut Vec<(String, String)> {
    if t == 0 {
        &mut h.req_headers
    } else {
        &mut h.resp_headers
    }
}
fn s(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

/// The bench upstream's answers (tools/bench.py).
const BUFFERED_ANSWER: &[u8] = br#"{"id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": "gpt-4.1-mini", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the bench upstream."}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19, "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}}"#;

/// The buffered answer; PROFILE_ANSWER_FLOATS=N adds an embeddings-like `data` array of N
/// numbers before its usage (a large answer made of numbers, not strings).
fn answer() -> Vec<u8> {
    let floats = std::env::var("PROFILE_ANSWER_FLOATS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let Some(n) = floats else {
        return BUFFERED_ANSWER.to_vec();
    };
    let numbers: Vec<String> = (0..n)
        .map(|i| format!("{:.10}", (i as f64 * 0.618_033_988_7).fract() - 0.5))
        .collect();
    let data = format!(
        r#""data": [{{"object": "embedding", "index": 0, "embedding": [{}]}}], "usage""#,
        numbers.join(", ")
    );
    String::from_utf8_lossy(BUFFERED_ANSWER)
        .replacen(r#""usage""#, &data, 1)
        .into_bytes()
}

fn sse_stream() -> Vec<u8> {
    let chunk = |w: &str| {
        format!(
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{w}\"}},\"finish_reason\":null}}],\"usage\":null}}\n\n"
        )
    };
    let mut out: String = ["Hello ", "from ", "the ", "bench ", "upstream."]
        .map(chunk)
        .concat();
    out.push_str("data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4.1-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":5,\"total_tokens\":17}}\n\n");
    out.push_str("data: [DONE]\n\n");
    out.into_bytes()
}

/// The first 300 characters of `text` (a long request body is not printed whole).
fn clip(text: &str) -> String {
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}… ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, wasm, filter_config, n, rest @ ..] = args.as_slice() else {
        return Err(anyhow!(
            "usage: weir-profile MODULE FILTER_CONFIG REQUESTS [POLICY]"
        ));
    };
    let n: usize = n.parse().context("REQUESTS")?;
    let policy = rest.first().cloned().unwrap_or_default();
    let stream = rest.get(1).is_some_and(|s| s == "stream");
    let bundle: serde_json::Value = serde_json::from_slice(&std::fs::read(filter_config)?)?;
    let plugin_config = bundle["resources"][0]["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .ok_or_else(|| anyhow!("{filter_config}: no configuration value"))?
        .as_bytes()
        .to_vec();
    // PROFILE_FUEL=1: also count the wasm instructions each request runs (wasmtime's fuel,
    // one unit per operator; host calls not included). Unlike time, the count does not move
    // with the machine's load, so small changes to the filter's code can be compared.
    let fuel = std::env::var("PROFILE_FUEL").is_ok_and(|v| v == "1");
    let mut config = Config::new();
    config.profiler(ProfilingStrategy::PerfMap);
    config.consume_fuel(fuel);
    let engine = Engine::new(&config)?;
    let module = Module::from_file(&engine, wasm)?;
    let mut l: Linker<Host> = Linker::new(&engine);
    l.func_wrap(
        "env",
        "proxy_log",
        |_c: Caller<'_, Host>, _lv: i32, _p: i32, _l: i32| -> i32 { 0 },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, Host>, p: i32, len: i32, rp: i32, rs: i32| -> i32 {
            count(&mut c, "get_property");
            let path = read(&mut c, p, len);
            match c.data().props.get(&path).cloned() {
                Some(v) => {
                    ret(&mut c, &v, rp, rs);
                    0
                }
                None => 1,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, Host>, p: i32, len: i32, v: i32, vl: i32| -> i32 {
            count(&mut c, "set_property");
            let path = read(&mut c, p, len);
            let val = read(&mut c, v, vl);
            c.data_mut().props.insert(path, val);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |mut c: Caller<'_, Host>, _a: i32, _b: i32, _d: i32, _e: i32, rp: i32, rs: i32| -> i32 {
            count(&mut c, "foreign");
            ret(&mut c, &[], rp, rs);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, Host>,
         _a: i32,
         _b: i32,
         _c2: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32|
         -> i32 {
            count(&mut c, "local_response");
            c.data_mut().local_replies += 1;
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, Host>, p: i32| -> i32 {
            count(&mut c, "now");
            let now = c.data().now;
            let m = mem(&mut c);
            m.data_mut(&mut c)[p as usize..p as usize + 8].copy_from_slice(&now.to_le_bytes());
            0
        },
    )?;
    for name in ["proxy_record_metric", "proxy_increment_metric"] {
        l.func_wrap(
            "env",
            name,
            |mut c: Caller<'_, Host>, _id: i32, _v: i64| -> i32 {
                count(&mut c, "metric");
                0
            },
        )?;
    }
    l.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, Host>, _t: i32, _p: i32, _l: i32, rid: i32| -> i32 {
            count(&mut c, "define_metric");
            c.data_mut().metrics += 1;
            let id = c.data().metrics;
            put_u32(&mut c, rid, id);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, Host>, t: i32, k: i32, kl: i32, v: i32, vl: i32| -> i32 {
            count(&mut c, "replace_header");
            let k = s(read(&mut c, k, kl));
            let v = s(read(&mut c, v, vl));
            let m = map(c.data_mut(), t);
            m.retain(|(n, _)| n != &k);
            m.push((k, v));
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, Host>, t: i32, k: i32, kl: i32, v: i32, vl: i32| -> i32 {
            count(&mut c, "add_header");
            let k = s(read(&mut c, k, kl));
            let v = s(read(&mut c, v, vl));
            map(c.data_mut(), t).push((k, v));
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, Host>, t: i32, k: i32, kl: i32| -> i32 {
            count(&mut c, "remove_header");
            let k = s(read(&mut c, k, kl));
            map(c.data_mut(), t).retain(|(n, _)| n != &k);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, Host>, t: i32, k: i32, kl: i32, rp: i32, rs: i32| -> i32 {
            count(&mut c, "get_header");
            let k = s(read(&mut c, k, kl));
            let v = map(c.data_mut(), t)
                .iter()
                .find(|(n, _)| n == &k)
                .map(|(_, v)| v.clone());
            match v {
                Some(v) => {
                    ret(&mut c, v.as_bytes(), rp, rs);
                    0
                }
                None => 1,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, Host>, t: i32, rp: i32, rs: i32| -> i32 {
            count(&mut c, "get_header_pairs");
            let pairs = map(c.data_mut(), t).clone();
            let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
            for (k, v) in &pairs {
                out.extend((k.len() as u32).to_le_bytes());
                out.extend((v.len() as u32).to_le_bytes());
            }
            for (k, v) in &pairs {
                out.extend(k.as_bytes());
                out.push(0);
                out.extend(v.as_bytes());
                out.push(0);
            }
            ret(&mut c, &out, rp, rs);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, Host>, _t: i32, _p: i32, _s: i32| -> i32 {
            count(&mut c, "set_header_pairs");
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, Host>, t: i32, start: i32, max: i32, rp: i32, rs: i32| -> i32 {
            count(&mut c, "get_buffer");
            let b = match t {
                0 => c.data().req_body.clone(),
                1 => c.data().resp_body.clone(),
                7 => c.data().config.clone(),
                _ => return 1,
            };
            let st = (start as u32 as usize).min(b.len());
            let end = st.saturating_add(max as u32 as usize).min(b.len());
            let v = b[st..end].to_vec();
            ret(&mut c, &v, rp, rs);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, Host>, t: i32, start: i32, size: i32, p: i32, len: i32| -> i32 {
            count(&mut c, "set_buffer");
            let v = read(&mut c, p, len);
            let b = match t {
                0 => &mut c.data_mut().req_body,
                1 => &mut c.data_mut().resp_body,
                _ => return 1,
            };
            let st = (start as usize).min(b.len());
            let end = (st + size as usize).min(b.len());
            b.splice(st..end, v);
            0
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, Host>, k: i32, kl: i32, rp: i32, rs: i32, rc: i32| -> i32 {
            count(&mut c, "get_shared");
            let k = read(&mut c, k, kl);
            match c.data().shared.get(&k).cloned() {
                Some((v, cas)) => {
                    ret(&mut c, &v, rp, rs);
                    put_u32(&mut c, rc, cas);
                    0
                }
                None => 1,
            }
        },
    )?;
    l.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, Host>, k: i32, kl: i32, v: i32, vl: i32, cas: i32| -> i32 {
            count(&mut c, "set_shared");
            let k = read(&mut c, k, kl);
            let v = read(&mut c, v, vl);
            let e = c.data_mut().shared.entry(k).or_insert((Vec::new(), 0));
            if cas != 0 && cas as u32 != e.1 {
                return 8;
            }
            e.0 = v;
            e.1 += 1;
            0
        },
    )?;
    for (name, _) in [
        ("proxy_close_stream", 1),
        ("proxy_continue_stream", 1),
        ("proxy_grpc_cancel", 1),
        ("proxy_grpc_close", 1),
        ("proxy_set_effective_context", 1),
    ] {
        l.func_wrap("env", name, |_c: Caller<'_, Host>, _a: i32| -> i32 { 0 })?;
    }
    l.func_wrap(
        "env",
        "proxy_get_status",
        |_c: Caller<'_, Host>, _a: i32, _b: i32, _d: i32| -> i32 { 0 },
    )?;
    l.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |_c: Caller<'_, Host>, _a: i32, _b: i32, _d: i32| -> i32 { 1 },
    )?;
    l.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |_c: Caller<'_, Host>, _a: i32, _b: i32, _d: i32| -> i32 { 1 },
    )?;
    l.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |_c: Caller<'_, Host>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32| -> i32 { 1 },
    )?;
    l.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: Caller<'_, Host>, _a: i32, _b: i32, _d: i32, _e: i32| -> i32 { 1 },
    )?;
    l.func_wrap("env", "proxy_done", |_c: Caller<'_, Host>| -> i32 { 0 })?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "random_get",
        |mut c: Caller<'_, Host>, p: i32, len: i32| -> i32 {
            let m = mem(&mut c);
            for (i, b) in m.data_mut(&mut c)[p as usize..(p + len) as usize]
                .iter_mut()
                .enumerate()
            {
                *b = (i * 31 + 7) as u8;
            }
            0
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "environ_get",
        |_c: Caller<'_, Host>, _a: i32, _b: i32| -> i32 { 0 },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "environ_sizes_get",
        |mut c: Caller<'_, Host>, a: i32, b: i32| -> i32 {
            put_u32(&mut c, a, 0);
            put_u32(&mut c, b, 0);
            0
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "fd_write",
        |mut c: Caller<'_, Host>, _fd: i32, iov: i32, n: i32, nw: i32| -> i32 {
            let mut total = 0u32;
            for i in 0..n {
                let m = mem(&mut c);
                let d = m.data(&c);
                let at = (iov + i * 8) as usize;
                let len = u32::from_le_bytes(d[at + 4..at + 8].try_into().unwrap());
                let p = u32::from_le_bytes(d[at..at + 4].try_into().unwrap());
                eprint!(
                    "{}",
                    String::from_utf8_lossy(&d[p as usize..(p + len) as usize])
                );
                total += len;
            }
            put_u32(&mut c, nw, total);
            0
        },
    )?;
    l.func_wrap(
        "wasi_snapshot_preview1",
        "proc_exit",
        |_c: Caller<'_, Host>, code: i32| -> Result<()> { Err(anyhow!("proc_exit({code})")) },
    )?;

    let mut host = Host::default();
    host.config = plugin_config;
    host.now = 1_790_000_000_000_000_000;
    host.props
        .insert(b"plugin_root_id".to_vec(), b"weir".to_vec());
    host.props
        .insert(b"response\0code".to_vec(), 200u64.to_le_bytes().to_vec());
    host.props
        .insert(b"response\0code_details".to_vec(), b"via_upstream".to_vec());
    let mut store = Store::new(&engine, host);
    if fuel {
        store.set_fuel(u64::MAX)?;
    }
    let inst = l.instantiate(&mut store, &module)?;
    let create = inst.get_typed_func::<(i32, i32), ()>(&mut store, "proxy_on_context_create")?;
    inst.get_typed_func::<(), ()>(&mut store, "_initialize")?
        .call(&mut store, ())?;
    create.call(&mut store, (1, 0))?;
    let vm_start = inst.get_typed_func::<(i32, i32), i32>(&mut store, "proxy_on_vm_start")?;
    vm_start.call(&mut store, (1, 0))?;
    let configure = inst.get_typed_func::<(i32, i32), i32>(&mut store, "proxy_on_configure")?;
    let clen = store.data().config.len() as i32;
    assert_eq!(
        configure.call(&mut store, (1, clen))?,
        1,
        "configure failed"
    );
    let rh = inst.get_typed_func::<(i32, i32, i32), i32>(&mut store, "proxy_on_request_headers")?;
    let rb = inst.get_typed_func::<(i32, i32, i32), i32>(&mut store, "proxy_on_request_body")?;
    let sh =
        inst.get_typed_func::<(i32, i32, i32), i32>(&mut store, "proxy_on_response_headers")?;
    let sb = inst.get_typed_func::<(i32, i32, i32), i32>(&mut store, "proxy_on_response_body")?;
    let log = inst.get_typed_func::<i32, ()>(&mut store, "proxy_on_log")?;
    let done = inst.get_typed_func::<i32, i32>(&mut store, "proxy_on_done")?;
    let del = inst.get_typed_func::<i32, ()>(&mut store, "proxy_on_delete")?;
    let (req_body, resp_body, resp_type) = if stream {
        (
            br#"{"model": "balanced", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}"#.to_vec(),
            sse_stream(),
            "text/event-stream",
        )
    } else {
        // PROFILE_BODY_BYTES: a longer user message (as an image's base64 would be).
        let content = match std::env::var("PROFILE_BODY_BYTES")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            Some(bytes) => "a".repeat(bytes),
            None => "Hi".to_string(),
        };
        (
            format!(r#"{{"model": "balanced", "messages": [{{"role": "user", "content": "{content}"}}]}}"#)
                .into_bytes(),
            answer(),
            "application/json",
        )
    };
    // The first tenth warms up (the first request evaluates the policy and defines metrics).
    let mut t0 = std::time::Instant::now();
    let mut fuel0 = 0;
    let mut by_callback = [0u64; 8];
    let warm = n / 10;
    for i in 0..(n + warm) {
        if i == warm {
            t0 = std::time::Instant::now();
            fuel0 = store.get_fuel().unwrap_or(0);
        }
        let ctx = 2 + i as i32;
        {
            let h = store.data_mut();
            h.now += 1_000_000;
            h.req_headers = vec![
                (":authority".into(), "127.0.0.1:10000".into()),
                (":path".into(), "/v1/chat/completions".into()),
                (":method".into(), "POST".into()),
                (":scheme".into(), "http".into()),
                ("content-type".into(), "application/json".into()),
                ("content-length".into(), req_body.len().to_string()),
                (
                    "authorization".into(),
                    "Bearer wk_demo_3f9c2a7e41b86d05".into(),
                ),
                ("x-forwarded-proto".into(), "http".into()),
                (
                    "x-request-id".into(),
                    format!("5b0c1d9e-0000-4000-8000-{i:012}"),
                ),
            ];
            if !policy.is_empty() {
                h.req_headers.push(("x-weir-policy".into(), policy.clone()));
            }
            h.req_body = req_body.clone();
            h.resp_body = resp_body.clone();
            h.resp_headers = vec![
                (":status".into(), "200".into()),
                ("content-type".into(), resp_type.into()),
                ("content-length".into(), resp_body.len().to_string()),
                ("x-envoy-upstream-service-time".into(), "1".into()),
                ("x-envoy-attempt-count".into(), "1".into()),
                ("date".into(), "Sun, 22 Nov 2026 18:00:00 GMT".into()),
                ("server".into(), "envoy".into()),
            ];
            let id = format!("5b0c1d9e-0000-4000-8000-{i:012}").into_bytes();
            h.props.insert(b"request\0id".to_vec(), id);
        }
        // Fuel left before each callback and after the last: each callback's share.
        let mut marks = [0u64; 9];
        let mut mark = |store: &Store<Host>, at: usize| {
            if fuel && i >= warm {
                marks[at] = store.get_fuel().unwrap_or(0);
            }
        };
        mark(&store, 0);
        create.call(&mut store, (ctx, 1))?;
        mark(&store, 1);
        let nh = store.data().req_headers.len() as i32;
        let a = rh.call(&mut store, (ctx, nh, 0))?;
        mark(&store, 2);
        let bl = store.data().req_body.len() as i32;
        let b = rb.call(&mut store, (ctx, bl, 1))?;
        mark(&store, 3);
        let c = sh.call(&mut store, (ctx, 7, 0))?;
        mark(&store, 4);
        let sl = store.data().resp_body.len() as i32;
        let d = sb.call(&mut store, (ctx, sl, 1))?;
        mark(&store, 5);
        log.call(&mut store, ctx)?;
        mark(&store, 6);
        done.call(&mut store, ctx)?;
        mark(&store, 7);
        del.call(&mut store, ctx)?;
        mark(&store, 8);
        if fuel && i >= warm {
            for (spent, pair) in by_callback.iter_mut().zip(marks.windows(2)) {
                *spent += pair[0].saturating_sub(pair[1]);
            }
        }
        if i == 0 {
            // The first request in full: check that it went through as in Envoy.
            eprintln!(
                "actions {a} {b} {c} {d}; local replies {}",
                store.data().local_replies
            );
            eprintln!("req headers {:?}", store.data().req_headers);
            let body = String::from_utf8_lossy(&store.data().req_body);
            eprintln!("req body {}", clip(&body));
            eprintln!("resp headers {:?}", store.data().resp_headers);
            eprintln!(
                "audit {}",
                String::from_utf8_lossy(
                    store
                        .data()
                        .props
                        .get(b"weir_audit".as_slice())
                        .map(|v| v.as_slice())
                        .unwrap_or(b"")
                )
            );
            let mut calls: Vec<_> = store.data().calls.iter().collect();
            calls.sort();
            eprintln!("calls in first request (incl. config) {calls:?}");
            store.data_mut().calls.clear();
        }
    }
    let el = t0.elapsed();
    if fuel {
        let used = fuel0.saturating_sub(store.get_fuel().unwrap_or(0));
        println!("{:.0} fuel/request", used as f64 / n as f64);
        let names = [
            "context_create",
            "request_headers",
            "request_body",
            "response_headers",
            "response_body",
            "log",
            "done",
            "delete",
        ];
        let shares: Vec<String> = names
            .iter()
            .zip(by_callback)
            .map(|(name, spent)| format!("{name} {:.0}", spent as f64 / n as f64))
            .collect();
        println!("fuel by callback: {}", shares.join(", "));
    }
    let mut calls: Vec<_> = store
        .data()
        .calls
        .iter()
        .map(|(k, v)| (*k, *v as f64 / (n + warm - 1) as f64))
        .collect();
    calls.sort_by(|a, b| a.0.cmp(b.0));
    eprintln!(
        "host calls per request: {:?} total {:.1}",
        calls,
        calls.iter().map(|c| c.1).sum::<f64>()
    );
    println!(
        "{:.2} us/request ({} requests, local replies {})",
        el.as_secs_f64() * 1e6 / n as f64,
        n,
        store.data().local_replies
    );
    Ok(())
}
