//! Member-table JSON (the Lease annotation) and ping replies (peers' `/cluster/ping`):
//! never panic on any text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(table) = troupe_contract::MemberTable::from_json(text) {
            let _ = troupe_contract::MemberTable::from_json(&table.to_json());
        }
    }
    let _ = serde_json::from_slice::<troupe_node::probe::PingReply>(data);
});
