//! The Prometheus text reader the operator runs on every node's `/metrics` page.
#![no_main]

use libfuzzer_sys::fuzz_target;
use troupe_operator::custom_metrics::prom;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        for line in text.lines() {
            let _ = prom::parse_line(line);
        }
        let _ = prom::sum(text, "troupe_mailbox_depth");
        let _ = prom::unlabelled(text, "troupe_mailbox_depth_total");
    }
});
