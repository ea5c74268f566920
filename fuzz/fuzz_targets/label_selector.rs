//! Label selectors from custom-metrics API requests: parse any text, match any labels.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use troupe_operator::custom_metrics::selector::Selector;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let (selector, labels) = text.split_once('\n').unwrap_or((text, ""));
        if let Ok(s) = Selector::parse(selector) {
            let labels: BTreeMap<String, String> = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            let _ = s.matches(&labels);
        }
    }
});
