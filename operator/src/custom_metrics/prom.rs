//! A small reader of the Prometheus text exposition format (version 0.0.4): just enough to
//! pull one series out of a node's `/metrics` page. It owns no I/O.
//!
//! A sample line is `name{label="value",...} value [timestamp]`; comments (`#`) and blank
//! lines are skipped, label values may contain escaped quotes, commas and braces.

use std::collections::BTreeMap;

/// One parsed sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// The metric name.
    pub name: &'a str,
    /// Its labels, unescaped.
    pub labels: BTreeMap<String, String>,
    /// Its value (may be NaN or infinite).
    pub value: f64,
}

/// Parses one line; `None` for comments, blank lines and lines that are not a valid sample.
pub fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = parse_labels(after)?;
        labels = parsed;
        rest = tail;
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value: parse_value(value)?,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `k="v",k2="v2"}` and returns the labels and what follows the closing brace.
fn parse_labels(mut s: &str) -> Option<(BTreeMap<String, String>, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        if key.is_empty() {
            return None;
        }
        let mut chars = s[eq + 1..].trim_start();
        chars = chars.strip_prefix('"')?;
        let mut value = String::new();
        let mut escaped = false;
        let mut end = None;
        for (i, c) in chars.char_indices() {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    other => other,
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                end = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let end = end?;
        labels.insert(key.to_owned(), value);
        s = chars[end + 1..].trim_start();
        if let Some(rest) = s.strip_prefix(',') {
            s = rest;
        }
    }
}

/// The value of the series `name` without labels, if the page has it and it is finite.
pub fn unlabelled(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(parse_line)
        .find(|s| s.name == name && s.labels.is_empty())
        .map(|s| s.value)
        .filter(|v| v.is_finite())
}

/// The sum of every series of `name`, whatever its labels; `None` when the page has none.
pub fn sum(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter_map(parse_line)
        .filter(|s| s.name == name && s.value.is_finite())
        .map(|s| s.value)
        .reduce(|a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = r#"# HELP troupe_mailbox_depth Messages waiting, by actor type.
# TYPE troupe_mailbox_depth gauge
troupe_mailbox_depth{actor_type="load"} 12
troupe_mailbox_depth{actor_type="echo"} 3
# HELP troupe_mailbox_depth_total Messages waiting on this node.
# TYPE troupe_mailbox_depth_total gauge
troupe_mailbox_depth_total 15
troupe_messages_processed_total{actor_type="load"} 1.5e3
troupe_messages_processed_total{actor_type="weird \"q\", {x}"} 7 1700000000000

troupe_nan NaN
"#;

    #[test]
    fn reads_the_unlabelled_total() {
        assert_eq!(unlabelled(PAGE, "troupe_mailbox_depth_total"), Some(15.0));
        assert_eq!(unlabelled(PAGE, "troupe_mailbox_depth"), None);
        assert_eq!(unlabelled(PAGE, "absent"), None);
        assert_eq!(unlabelled(PAGE, "troupe_nan"), None, "NaN is no sample");
    }

    #[test]
    fn sums_labelled_series_with_escapes_and_timestamps() {
        assert_eq!(sum(PAGE, "troupe_messages_processed_total"), Some(1507.0));
        assert_eq!(sum(PAGE, "troupe_mailbox_depth"), Some(15.0));
        assert_eq!(sum(PAGE, "absent"), None);
    }

    #[test]
    fn parses_labels_exactly() {
        let s = parse_line(r#"m{a="x\"y",b="1,2"} 3"#).expect("sample");
        assert_eq!(s.name, "m");
        assert_eq!(s.labels.get("a").map(String::as_str), Some("x\"y"));
        assert_eq!(s.labels.get("b").map(String::as_str), Some("1,2"));
        assert_eq!(s.value, 3.0);
        assert_eq!(parse_line("m +Inf").map(|s| s.value), Some(f64::INFINITY));
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        for line in [
            "",
            "   ",
            "# comment",
            "m{a=\"x\" 3",
            "m",
            "m notanumber",
            "{a=\"b\"} 1",
        ] {
            assert_eq!(parse_line(line), None, "{line:?}");
        }
        assert_eq!(unlabelled("m{\nm 4\n", "m"), Some(4.0));
    }
}
