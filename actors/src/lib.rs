//! `troupe-actors`: the actor runtime of a Troupe node (work in progress).
