//! The hasher of every map the runtime keeps: randomly seeded (production: actor ids come
//! from clients), or fixed on a thread that asked for determinism (the deterministic
//! simulation, where iteration order decides which task is spawned first and a seed must
//! replay exactly). The choice is made when a map is created, by the thread creating it.

use std::cell::Cell;
use std::hash::BuildHasher;

thread_local! {
    static FIXED: Cell<bool> = const { Cell::new(false) };
}

/// Maps created on this thread from now on hash with a fixed seed (`true`), or randomly.
pub fn set_deterministic(fixed: bool) {
    FIXED.with(|f| f.set(fixed));
}

/// Randomly seeded unless this thread asked for determinism ([`set_deterministic`]).
#[derive(Clone, Debug)]
pub enum Hashing {
    /// Per-map random seed.
    Random(foldhash::fast::RandomState),
    /// A fixed seed: the same iteration order in every run.
    Fixed(foldhash::fast::FixedState),
}

impl Default for Hashing {
    fn default() -> Self {
        if FIXED.with(Cell::get) {
            Self::Fixed(foldhash::fast::FixedState::default())
        } else {
            Self::Random(foldhash::fast::RandomState::default())
        }
    }
}

impl BuildHasher for Hashing {
    type Hasher = foldhash::fast::FoldHasher<'static>;

    #[inline]
    fn build_hasher(&self) -> Self::Hasher {
        match self {
            Self::Random(s) => s.build_hasher(),
            Self::Fixed(s) => s.build_hasher(),
        }
    }
}

/// A map hashed with [`Hashing`].
pub type HashMap<K, V> = std::collections::HashMap<K, V, Hashing>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deterministic_thread_iterates_every_map_in_one_order() {
        let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
        let order = || {
            let m: HashMap<&str, ()> = keys.iter().map(|k| (k.as_str(), ())).collect();
            m.keys().map(|k| k.to_string()).collect::<Vec<_>>()
        };
        set_deterministic(true);
        let (a, b) = (order(), order());
        set_deterministic(false);
        assert_eq!(a, b);
        assert!(matches!(Hashing::default(), Hashing::Random(_)));
    }
}
