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

/// A label value that cannot break the encoding: no `;` or `=`, printable, bounded.
pub fn label_value(value: &str) -> String {
    let mut out = String::new();
    push_label_value(&mut out, value);
    out
}

fn push_label_value(out: &mut String, value: &str) {
    let start = out.len();
    for c in value.chars().take(128) {
        out.push(if c.is_ascii_graphic() && c != ';' && c != '=' {
            c
        } else {
            '_'
        });
    }
    if out.len() == start {
        out.push_str("none");
    }
}

/// `name;label=value;...` with sanitised values.
pub fn name(base: &str, labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    write_name(&mut out, base, labels);
    out
}

/// [`name`] into a buffer the caller keeps: the filter formats several names per request
/// and reuses one buffer rather than allocating each.
pub fn write_name(out: &mut String, base: &str, labels: &[(&str, &str)]) {
    out.clear();
    out.push_str(base);
    for (label, value) in labels {
        out.push(';');
        out.push_str(label);
        out.push('=');
        push_label_value(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
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
        assert_eq!(label_value(""), "none");
        assert_eq!(label_value("x y\n"), "x_y_");
        let mut buffer = String::from("left over");
        write_name(&mut buffer, "weir_ttfb_ms", &[("endpoint", "")]);
        assert_eq!(buffer, "weir_ttfb_ms;endpoint=none");
    }
}
