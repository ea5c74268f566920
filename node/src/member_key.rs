//! [`MemberKey`]: the identity of one incarnation of one member — what the failure
//! detector tracks, the coordinator downs, and a node calls itself.

use troupe_contract::Member;

/// One incarnation of one member.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberKey {
    /// The pod's name.
    pub pod: String,
    /// The node process's incarnation.
    pub incarnation: String,
}

impl MemberKey {
    /// Builds a key.
    pub fn new(pod: impl Into<String>, incarnation: impl Into<String>) -> Self {
        Self {
            pod: pod.into(),
            incarnation: incarnation.into(),
        }
    }

    /// The key of a table entry.
    pub fn of(member: &Member) -> Self {
        Self::new(member.pod.clone(), member.incarnation.clone())
    }

    /// Whether `member` is this incarnation.
    pub fn is(&self, member: &Member) -> bool {
        member.pod == self.pod && member.incarnation == self.incarnation
    }
}

impl std::fmt::Display for MemberKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pod, self.incarnation)
    }
}
