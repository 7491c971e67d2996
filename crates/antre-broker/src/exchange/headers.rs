//! Headers exchange matching, as RabbitMQ does it.
//!
//! The binding's `x-match` argument picks the rule: `all` (default) or `any`
//! ignore binding arguments whose names start with `x-`; `all-with-x` and
//! `any-with-x` include them. A binding value of type void matches on the
//! header's presence alone; otherwise values must be equal, comparing all
//! integer widths as one type and both float widths as one.

use antre_amqp::{FieldTable, FieldValue};

/// Whether a message with `headers` matches a binding with `arguments`.
pub fn headers_match(arguments: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let (all, with_x) = match arguments.get("x-match").and_then(FieldValue::as_str) {
        Some("any") => (false, false),
        Some("any-with-x") => (false, true),
        Some("all-with-x") => (true, true),
        _ => (true, false),
    };
    let empty = FieldTable::new();
    let headers = headers.unwrap_or(&empty);
    let mut wanted = arguments
        .iter()
        .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")));
    let matches = |(key, want): (&str, &FieldValue)| match headers.get(key) {
        None => false,
        Some(_) if *want == FieldValue::Void => true,
        Some(have) => values_equal(want, have),
    };
    if all {
        wanted.all(matches)
    } else {
        wanted.any(matches)
    }
}

/// Equality by value: all integer widths compare as one type, both float
/// widths as one, tables and arrays element by element.
pub(crate) fn values_equal(a: &FieldValue, b: &FieldValue) -> bool {
    if let (Some(x), Some(y)) = (int_value(a), int_value(b)) {
        return x == y;
    }
    match (a, b) {
        (FieldValue::F32(x), FieldValue::F64(y)) | (FieldValue::F64(y), FieldValue::F32(x)) => {
            f64::from(*x) == *y
        }
        (FieldValue::Table(x), FieldValue::Table(y)) => tables_equal(x, y),
        (FieldValue::Array(x), FieldValue::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| values_equal(a, b))
        }
        _ => a == b,
    }
}

/// Tables with the same keys and, key by key, equal values (any order).
pub(crate) fn tables_equal(a: &FieldTable, b: &FieldTable) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, v)| b.get(k).is_some_and(|w| values_equal(v, w)))
}

fn int_value(v: &FieldValue) -> Option<i64> {
    match v {
        FieldValue::Timestamp(_) => None,
        other => other.as_i64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries.iter().cloned().collect()
    }

    #[test]
    fn all_requires_every_header() {
        let args = table(&[
            ("x-match", FieldValue::string("all")),
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]);
        let both = table(&[
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]);
        let one = table(&[("format", FieldValue::string("pdf"))]);
        assert!(headers_match(&args, Some(&both)));
        assert!(!headers_match(&args, Some(&one)));
        assert!(!headers_match(&args, None));
    }

    #[test]
    fn any_requires_one_header() {
        let args = table(&[
            ("x-match", FieldValue::string("any")),
            ("format", FieldValue::string("pdf")),
            ("type", FieldValue::string("report")),
        ]);
        let one = table(&[("type", FieldValue::string("report"))]);
        let none = table(&[("type", FieldValue::string("log"))]);
        assert!(headers_match(&args, Some(&one)));
        assert!(!headers_match(&args, Some(&none)));
    }

    #[test]
    fn x_arguments_count_only_with_x() {
        let plain = table(&[
            ("x-match", FieldValue::string("all")),
            ("x-k", FieldValue::I32(1)),
        ]);
        let with_x = table(&[
            ("x-match", FieldValue::string("all-with-x")),
            ("x-k", FieldValue::I32(1)),
        ]);
        let headers = table(&[("x-k", FieldValue::I8(1))]);
        let other = table(&[("x-k", FieldValue::I8(2))]);
        assert!(headers_match(&plain, Some(&other)), "x- args ignored");
        assert!(
            headers_match(&with_x, Some(&headers)),
            "integer widths compare equal"
        );
        assert!(!headers_match(&with_x, Some(&other)));
        let any_with_x = table(&[
            ("x-match", FieldValue::string("any-with-x")),
            ("x-k", FieldValue::I32(1)),
        ]);
        assert!(headers_match(&any_with_x, Some(&headers)));
    }

    #[test]
    fn void_matches_presence() {
        let args = table(&[("k", FieldValue::Void)]);
        assert!(headers_match(
            &args,
            Some(&table(&[("k", FieldValue::Bool(false))]))
        ));
        assert!(!headers_match(
            &args,
            Some(&table(&[("j", FieldValue::Void)]))
        ));
    }

    #[test]
    fn empty_all_binding_matches_everything() {
        // RabbitMQ: all over no arguments is vacuously true.
        assert!(headers_match(&FieldTable::new(), None));
        let any = table(&[("x-match", FieldValue::string("any"))]);
        assert!(!headers_match(&any, None));
    }
}
