//! Metric names with labels. proxy-wasm metrics have no labels, so Weir encodes them in
//! the name (`weir_requests_total;endpoint=chat_completions;status=200`) and Envoy's
//! `stats_tags` (see envoy/envoy.yaml) turns each `;label=value` into a real Prometheus label.

/// The labels Weir uses; envoy.yaml has one `stats_tags` entry for each.
pub const LABELS: [&str; 9] = [
    "endpoint",
    "tier",
    "decision",
    "status",
    "direction",
    "model",
    "team",
    "policy",
    "cached",
];

/// `name;label=value;...` into `out` (cleared first), each value sanitised so it cannot
/// break the encoding: no `;` or `=`, printable, at most 128 characters, `none` when empty.
/// The filter formats several names per request and reuses one buffer.
pub fn write_name(out: &mut String, base: &str, labels: &[(&str, &str)]) {
    out.clear();
    out.push_str(base);
    for (label, value) in labels {
        out.push(';');
        out.push_str(label);
        out.push('=');
        if !value.is_empty() && value.len() <= 128 && value.chars().all(allowed) {
            // The usual case (configured names, numbers): copied as it is.
            out.push_str(value);
            continue;
        }
        let start = out.len();
        for c in value.chars().take(128) {
            out.push(if allowed(c) { c } else { '_' });
        }
        if out.len() == start {
            out.push_str("none");
        }
    }
}

/// What a label value may hold as it is: printable ASCII, but not the encoding's `;` and `=`.
fn allowed(c: char) -> bool {
    c.is_ascii_graphic() && c != ';' && c != '='
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let name = |base: &str, labels: &[(&str, &str)]| {
            let mut out = String::from("left over");
            write_name(&mut out, base, labels);
            out
        };
        assert_eq!(
            name(
                "weir_requests_total",
                &[
                    ("endpoint", "chat"),
                    ("model", "gpt-4.1"),
                    ("team", "a;b=c")
                ]
            ),
            "weir_requests_total;endpoint=chat;model=gpt-4.1;team=a_b_c"
        );
        assert_eq!(name("m", &[("l", "")]), "m;l=none");
        assert_eq!(name("m", &[("l", "x y\n")]), "m;l=x_y_");
        // One `_` per character, and at most 128 characters, clean or not.
        assert_eq!(name("m", &[("l", "café")]), "m;l=caf_");
        let long = "a".repeat(200);
        assert_eq!(name("m", &[("l", &long)]), format!("m;l={}", &long[..128]));
        assert_eq!(
            name("m", &[("l", &long[..128])]),
            format!("m;l={}", &long[..128])
        );
        assert_eq!(
            name("weir_ttfb_ms", &[("endpoint", "")]),
            "weir_ttfb_ms;endpoint=none"
        );
    }
}
