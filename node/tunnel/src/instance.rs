//! Which task instance: the identity every route, request, table and ledger entry of a deployed
//! service is keyed by (here, in the daemon and on its wire), so that a `(service, task,
//! replica)` is never spelled out, compared or formatted by hand.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One replica of one task of one service; a tunnel's callee. Printed `service/task#replica`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceId {
    pub service: String,
    pub task: String,
    /// 0-based replica index.
    pub replica: u32,
}

impl InstanceId {
    pub fn new(service: impl Into<String>, task: impl Into<String>, replica: u32) -> Self {
        InstanceId {
            service: service.into(),
            task: task.into(),
            replica,
        }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.service, self.task, self.replica)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_people_type_it() {
        assert_eq!(
            InstanceId::new("shop", "cart", 2).to_string(),
            "shop/cart#2"
        );
    }
}
