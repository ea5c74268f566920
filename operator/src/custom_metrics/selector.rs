//! Kubernetes label selectors in their string form (`a=b,c!=d,e in (x,y),f notin (z),g,!h`),
//! as the HPA sends them in `labelSelector`: parsing and matching, no I/O.

use std::collections::{BTreeMap, BTreeSet};

/// A selector that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid label selector {selector:?}: {reason}")]
pub struct SelectorError {
    /// The selector as given.
    pub selector: String,
    /// What is wrong with it.
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    NotExists,
}

/// A parsed selector: every requirement must hold. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    requirements: Vec<(String, Op)>,
}

impl Selector {
    /// Parses the string form.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let err = |reason: &str| SelectorError {
            selector: s.to_owned(),
            reason: reason.to_owned(),
        };
        let mut requirements = Vec::new();
        for term in split_top_level(s).map_err(&err)? {
            let term = term.trim();
            if term.is_empty() {
                if s.trim().is_empty() {
                    continue;
                }
                return Err(err("empty requirement"));
            }
            let (key, op) = if let Some(key) = term.strip_prefix('!') {
                (key.trim(), Op::NotExists)
            } else if let Some(open) = term.find('(') {
                let close = term
                    .rfind(')')
                    .filter(|c| *c == term.len() - 1)
                    .ok_or_else(|| err("set without a closing parenthesis"))?;
                let values: BTreeSet<String> = term[open + 1..close]
                    .split(',')
                    .map(|v| v.trim().to_owned())
                    .collect();
                let mut head = term[..open].split_whitespace();
                let key = head.next().ok_or_else(|| err("set without a key"))?;
                let op = match (head.next(), head.next()) {
                    (Some("in"), None) => Op::In(values),
                    (Some("notin"), None) => Op::NotIn(values),
                    _ => return Err(err("expected `key in (...)` or `key notin (...)`")),
                };
                (key, op)
            } else if let Some((k, v)) = term.split_once("!=") {
                (k.trim(), Op::NotEq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once("==") {
                (k.trim(), Op::Eq(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once('=') {
                (k.trim(), Op::Eq(v.trim().to_owned()))
            } else if term.contains(['<', '>']) {
                return Err(err("`<` and `>` are not supported"));
            } else {
                (term, Op::Exists)
            };
            if key.is_empty() || key.contains(char::is_whitespace) {
                return Err(err("invalid key"));
            }
            requirements.push((key.to_owned(), op));
        }
        Ok(Self { requirements })
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|(key, op)| {
            let value = labels.get(key);
            match op {
                Op::Eq(v) => value == Some(v),
                Op::NotEq(v) => value != Some(v),
                Op::In(set) => value.is_some_and(|v| set.contains(v)),
                Op::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
                Op::Exists => value.is_some(),
                Op::NotExists => value.is_none(),
            }
        })
    }

    /// Whether the selector has no requirement (matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.checked_sub(1).ok_or("unbalanced parenthesis")?,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unbalanced parenthesis");
    }
    parts.push(&s[start..]);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_hpa_selector_of_an_actor_cluster_matches_its_pods_only() {
        let s = Selector::parse(&troupe_contract::labels::node_selector("orders")).expect("parse");
        let pod = labels(&[
            ("app.kubernetes.io/name", "troupe-node"),
            ("app.kubernetes.io/instance", "orders"),
            ("pod-template-hash", "abc"),
        ]);
        assert!(s.matches(&pod));
        let other = labels(&[
            ("app.kubernetes.io/name", "troupe-node"),
            ("app.kubernetes.io/instance", "billing"),
        ]);
        assert!(!s.matches(&other));
    }

    #[test]
    fn every_operator_works() {
        let l = labels(&[("a", "1"), ("b", "2")]);
        let yes = [
            "",
            "a=1",
            "a==1",
            "a!=2",
            "c!=1",
            "a in (1, 3)",
            "a notin (3)",
            "c notin (1)",
            "a",
            "!c",
            "a=1, b in (2)",
        ];
        for s in yes {
            assert!(Selector::parse(s).expect(s).matches(&l), "{s}");
        }
        let no = [
            "a=2",
            "a!=1",
            "a in (2,3)",
            "a notin (1)",
            "c",
            "!a",
            "c in (1)",
        ];
        for s in no {
            assert!(!Selector::parse(s).expect(s).matches(&l), "{s}");
        }
        assert!(Selector::parse("").expect("empty").is_empty());
    }

    #[test]
    fn malformed_selectors_are_errors() {
        for s in [
            "a in (1",
            "a)",
            "a in 1)",
            "a foo (1)",
            "=1",
            "a,,b",
            "a>1",
            "a b",
        ] {
            assert!(Selector::parse(s).is_err(), "{s}");
        }
    }
}
