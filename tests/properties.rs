//! Property tests ("fuzzing" within `cargo test`) of everything that reads untrusted bytes:
//! request bodies, the `weir` object, JWT payloads, provider responses (JSON and SSE) and
//! the configuration. They must never panic, and what they accept must round-trip.
//!
//! `make test` runs proptest's default 256 cases per property. A longer run:
//! `PROPTEST_CASES=200000 cargo test --release --test properties`.

use proptest::prelude::*;
use serde_json::{json, Value};

use weir::body::{parse_llm_request, remove_member, splice};
use weir::config::{Api, Config};
use weir::header_map;
use weir::providers::{openai, ResponseMeter};

/// Arbitrary JSON values, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Request-like objects: a model and stream flag among arbitrary other fields.
fn request_object() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_map("[a-z_]{1,10}", json_value(), 0..8),
        "[a-z0-9./-]{1,20}",
        prop::option::of(any::<bool>()),
        prop::option::of(json_value()),
    )
        .prop_map(|(fields, model, stream, weir)| {
            let mut o: serde_json::Map<String, Value> = fields.into_iter().collect();
            o.insert("model".into(), json!(model));
            if let Some(s) = stream {
                o.insert("stream".into(), json!(s));
            }
            if let Some(w) = weir {
                o.insert("weir".into(), w);
            }
            Value::Object(o)
        })
}

proptest! {
    /// Header maps from the host: whatever the bytes, no panic and no range outside them.
    #[test]
    fn header_maps_never_point_outside_their_bytes(
        headers in prop::collection::vec(("[a-z:-]{0,12}", ".{0,16}"), 0..8),
        corrupt in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
        cut in any::<prop::sample::Index>(),
    ) {
        let pairs: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let mut bytes = header_map::encode(&pairs);
        // Untouched, every header comes back as it was.
        let entries = header_map::index(&bytes).unwrap();
        prop_assert_eq!(entries.len(), pairs.len());
        for ((name, value), (n, v)) in pairs.iter().zip(entries) {
            prop_assert_eq!(&bytes[n], name.as_bytes());
            prop_assert_eq!(&bytes[v], value.as_bytes());
        }
        if let Some((at, byte)) = corrupt {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let end = cut.index(bytes.len() + 1);
        let bytes = &bytes[..end];
        if let Some(entries) = header_map::index(bytes) {
            for (n, v) in entries {
                prop_assert!(n.start <= n.end && n.end < v.start && v.start <= v.end && v.end <= bytes.len());
            }
        }
    }

    #[test]
    fn body_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(req) = parse_llm_request(&bytes) {
            let _ = req.essentials(true);
            let _ = req.cap_max_tokens(10, true);
        }
    }

    #[test]
    fn body_parser_never_panics_on_json_shaped_text(text in r#"[\{\}\[\]":,a-z0-9 \\.eE+-]{0,300}"#) {
        let _ = parse_llm_request(text.as_bytes());
    }

    #[test]
    fn rewritten_bodies_stay_json_and_keep_every_other_field(obj in request_object(), new_model in "[a-z0-9-]{1,16}") {
        let body = serde_json::to_vec_pretty(&obj).unwrap();
        let req = match parse_llm_request(&body) {
            Ok(req) => req,
            Err(_) => return Ok(()), // e.g. a bad max_tokens among the random fields
        };
        let (mut edits, _) = openai::request_edits(&req, &new_model, true);
        if let Some(w) = &req.weir {
            edits.extend(remove_member(&body, w));
        }
        let out: Value = serde_json::from_slice(&splice(&body, &mut edits)).expect("still JSON");
        prop_assert_eq!(&out["model"], &json!(new_model));
        prop_assert!(out.get("weir").is_none());
        // Compare with the original read the same way (serde_json's float parsing is lossy).
        let original: Value = serde_json::from_slice(&body).unwrap();
        for (k, v) in original.as_object().unwrap() {
            if !["model", "weir", "stream_options"].contains(&k.as_str()) {
                prop_assert_eq!(&out[k], v);
            }
        }
    }

    #[test]
    fn weir_objects_never_panic(v in json_value()) {
        let _ = weir::directives::from_body(&v.to_string());
    }

    #[test]
    fn jwt_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let config: weir::config::JwtConfig = serde_json::from_value(json!({"payload_header": "x"})).unwrap();
        let _ = weir::jwt::identity(&config, &bytes);
    }

    #[test]
    fn response_meter_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..1024), cut in 0usize..1024,
                                   anthropic in any::<bool>(), streaming in any::<bool>(), strip in any::<bool>()) {
        let api = if anthropic { Api::Anthropic } else { Api::Openai };
        let mut meter = ResponseMeter::new(api, streaming, 512, strip);
        let cut = cut.min(bytes.len());
        let _ = meter.feed(&bytes[..cut], false);
        let _ = meter.feed(&bytes[cut..], true);
        meter.finish();
    }

    #[test]
    fn sse_like_streams_never_panic(text in "(data: [{}\\[\\]\":,a-z0-9 ]{0,40}(\r\n|\n|\r){1,2}|event: [a-z_]{1,12}\n|: x\n){0,20}",
                                    cut in 0usize..400) {
        for api in [Api::Openai, Api::Anthropic] {
            let mut meter = ResponseMeter::new(api, true, 512, true);
            let cut = cut.min(text.len());
            let _ = meter.feed(&text.as_bytes()[..cut], false);
            let _ = meter.feed(&text.as_bytes()[cut..], true);
        }
    }

    #[test]
    fn rego_scanning_never_panics(text in r#"(import data\.[a-z]{1,4}(\.[a-z]{1,4}){0,2}( as [a-z]{1,3})?\n|[a-z]{1,4}[\.\[]?|input\.[a-z]{0,4}|input\.request\.headers[\.\[]?|input\.directives\.[a-z_]{0,4}|["`#\\\n :=\]é]|\PC){0,60}"#) {
        // Policy sources are the operator's, but `weir bundle` must still never crash on
        // them; and spelling out imports only ever replaces an alias with its full path.
        let _ = weir::rego_text::referenced_input_fields([text.as_str()].into_iter());
        let own = "package weir.policy.p\nimport data.weir.lib\n";
        let library = format!("package weir.lib.{text}");
        if let Some(used) = weir::rego_text::modules_used_by(&[own, &text, &library], "data.weir.policy.p") {
            prop_assert!(used.contains(&0) && used.iter().all(|&i| i < 3));
        }
        let out = weir::rego_text::inline_imports(&text);
        if !text.contains("import") {
            prop_assert_eq!(out, text);
        } else {
            prop_assert!(out.len() >= text.len());
        }
    }

    #[test]
    fn config_parser_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        if let Ok(c) = Config::from_json(&bytes) {
            let _ = c.compile();
        }
    }

    #[test]
    fn config_parser_never_panics_on_plausible_configs(v in json_value(), which in 0usize..4) {
        let mut config = json!({
            "providers": {"p": {"api": "openai", "cluster": "c", "auth": "none"}},
            "tiers": {"t": {"targets": [{"provider": "p", "model": "m"}]}},
            "keys": [{"id": "k", "team": "t", "hash": format!("sha256:{}", "a".repeat(64)), "scopes": ["*"]}],
        });
        // Replace one part with arbitrary JSON.
        match which {
            0 => config["providers"]["p"] = v,
            1 => config["tiers"]["t"] = v,
            2 => config["keys"][0] = v,
            _ => config["gateway"] = v,
        }
        if let Ok(c) = Config::from_json(config.to_string().as_bytes()) {
            let _ = c.compile();
        }
    }
}
