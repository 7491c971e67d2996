//! Topic matching exactly as RabbitMQ does it.
//!
//! Keys and patterns are split on `.` into words; the empty key has no words
//! at all (so `*` does not match it but `#` does), while `a.` has two words,
//! `a` and the empty word. `*` matches exactly one word, `#` zero or more.

/// Splits a routing key or pattern into words, RabbitMQ's way: `""` is no
/// words, and empty words between dots are kept.
fn words(key: &str) -> Vec<&str> {
    if key.is_empty() {
        Vec::new()
    } else {
        key.split('.').collect()
    }
}

/// Whether `routing_key` matches the binding `pattern`.
pub fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let p = words(pattern);
    let k = words(routing_key);
    // Iterative matcher with backtracking to the last `#`: linear in the
    // common case and never exponential, unlike naive recursion on `#.#.#`.
    let (mut pi, mut ki) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && p[pi] == "#" {
            star = Some((pi, ki));
            pi += 1;
        } else if pi < p.len() && (p[pi] == "*" || p[pi] == k[ki]) {
            pi += 1;
            ki += 1;
        } else if let Some((sp, sk)) = star {
            // Let the last `#` swallow one more word and retry.
            pi = sp + 1;
            ki = sk + 1;
            star = Some((sp, sk + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|w| *w == "#")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rabbitmq_topic_examples() {
        let cases = [
            ("a.b.c", "a.b.c", true),
            ("a.*.c", "a.b.c", true),
            ("a.*.c", "a.b.b.c", false),
            ("a.#.c", "a.c", true),
            ("a.#.c", "a.b.b.c", true),
            ("#", "", true),
            ("#", "a.b", true),
            ("*", "", false),
            ("*", "a", true),
            ("*", "a.b", false),
            ("", "", true),
            ("", "a", false),
            ("a.#", "a", true),
            ("#.a", "a", true),
            ("*.#", "", false),
            ("#.*", "a", true),
            ("a.*", "a.", true),
            ("a.", "a.", true),
            ("a.", "a", false),
            ("*.*", ".", true),
            ("#.#", "a.b.c", true),
            ("order.*", "order.created", true),
            ("order.*", "user.updated", false),
            ("#.updated", "user.profile.updated", true),
            ("a.#.b.#.c", "a.x.b.y.b.z.c", true),
            ("a.#.b.#.c", "a.x.c", false),
        ];
        for (pattern, key, expected) in cases {
            assert_eq!(
                topic_matches(pattern, key),
                expected,
                "{pattern:?} vs {key:?}"
            );
        }
    }

    /// A plainly recursive reference matcher to check the fast one against.
    fn reference(p: &[&str], k: &[&str]) -> bool {
        match p.split_first() {
            None => k.is_empty(),
            Some((&"#", rest)) => (0..=k.len()).any(|i| reference(rest, &k[i..])),
            Some((w, rest)) => match k.split_first() {
                Some((kw, krest)) => (*w == "*" || w == kw) && reference(rest, krest),
                None => false,
            },
        }
    }

    proptest! {
        #[test]
        fn agrees_with_reference(
            p in proptest::collection::vec(prop_oneof!["a", "b", "", "\\*", "#"], 0..6),
            k in proptest::collection::vec(prop_oneof!["a", "b", ""], 0..6),
        ) {
            let pattern = p.join(".");
            let key = k.join(".");
            let expected = reference(&words(&pattern), &words(&key));
            prop_assert_eq!(topic_matches(&pattern, &key), expected);
        }
    }
}
