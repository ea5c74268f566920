//! `troupe-operator`: reconciles `ActorCluster` resources (work in progress).
