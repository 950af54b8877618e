//! The one rule for service and task names, shared by the manifest (what `brume place` and
//! `brume deploy` read) and the deploy wire (what a host accepts from an initiator), so that a
//! name one accepts the other never refuses.
//!
//! The rule is the strictest any consumer of a name needs. A name becomes part of a container
//! or process name (`brume-<service>-<task>-...`, which Docker limits to letters, digits, `_`,
//! `.` and `-`), of directory names under the data directory, and of the `BRUME_CALL_<TASK>`
//! variables of the tasks that call it, where it is upper-cased with `-` turned into `_`: an
//! upper-case letter would make two names share a variable and a `.` is not allowed in a
//! variable name. Hence lower-case letters, digits, `-` and `_`, starting with a letter or digit,
//! at most [`MAX_LEN`] bytes (a DNS label's length, which keeps the derived names short).

/// The longest name allowed.
pub const MAX_LEN: usize = 63;

/// What an allowed name looks like, for error messages.
pub const RULE: &str =
    "use 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit";

/// Whether `name` may name a service or a task.
pub fn is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_accepts_what_every_consumer_takes() {
        for good in ["trainer", "trainer-2", "a_b", "0x", &"x".repeat(MAX_LEN)] {
            assert!(is_valid(good), "{good:?} refused");
        }
    }

    #[test]
    fn the_rule_refuses_what_some_consumer_cannot_take() {
        let too_long = "x".repeat(MAX_LEN + 1);
        for bad in [
            "", "Trainer", "a.b", "a/b", "-x", "_x", "a b", "..", "é", &too_long,
        ] {
            assert!(!is_valid(bad), "{bad:?} accepted");
        }
    }
}
