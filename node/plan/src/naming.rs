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

/// What an allowed task user looks like, for error messages.
pub const USER_RULE: &str = "use root, a user name, or uid[:gid] (1-64 of letters, digits, \
                             '_', '-', '.', with one optional ':' before a group)";

/// Whether `user` may be a task's `user` (passed to Docker as the container's user).
pub fn is_valid_user(user: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
            && !p.starts_with('-')
    };
    user.len() <= 64
        && match user.split_once(':') {
            Some((u, g)) => part(u) && part(g),
            None => part(user),
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_users_are_names_or_ids() {
        for good in ["root", "1000", "1000:1000", "app", "www-data:www-data"] {
            assert!(is_valid_user(good), "{good:?} refused");
        }
        for bad in ["", ":", "a:", "-x", "a b", "a:b:c", "x;rm", &"x".repeat(65)] {
            assert!(!is_valid_user(bad), "{bad:?} accepted");
        }
    }

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
