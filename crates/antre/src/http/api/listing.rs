//! The query parameters every listing takes, with RabbitMQ's semantics:
//! `sort` and `sort_reverse`, `name` (with `use_regex`), `page` and
//! `page_size`, `columns`.
//!
//! As in RabbitMQ's `rabbit_mgmt_util`: `sort=field` (dotted paths such as
//! `message_stats.publish` allowed) sorts by that field, ties kept in the
//! default order, a missing field counting as 0; `sort_reverse=true`
//! reverses. `name` keeps items whose name contains it, ignoring case, or,
//! with `use_regex=true`, matches the case-insensitive regex (a bad regex
//! matches nothing, as in RabbitMQ). `page` (from 1) turns the answer into
//! `{"filtered_count", "item_count", "items", "page", "page_count",
//! "page_size", "total_count"}` on the listings RabbitMQ pages (queues,
//! exchanges, vhosts, connections, channels); `page_size` is 1..=500,
//! default 100. Unlike RabbitMQ, antre also applies `name` without `page`.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::http::error::{ApiError, ApiResult};

/// Whether a listing answers `page=N` with RabbitMQ's paged shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    /// Queues, exchanges, vhosts, connections, channels.
    Paged,
    /// Everything else: `page` is ignored, as RabbitMQ ignores it there.
    Unpaged,
}

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 500;
/// RabbitMQ's cap on a name regex.
const MAX_REGEX_LENGTH: usize = 1024;

/// Applies a listing's query to `items`, given in the listing's default
/// order.
pub fn listing(
    items: Vec<Value>,
    query: &HashMap<String, String>,
    paging: Paging,
) -> ApiResult<Value> {
    let use_regex = query.get("use_regex").is_some_and(|v| v == "true");
    let page = match paging {
        Paging::Paged => pagination(query)?,
        Paging::Unpaged => None,
    };
    let total = items.len();
    let mut items = items;
    if let Some(field) = query.get("sort").filter(|s| !s.is_empty()) {
        let path: Vec<&str> = field.split('.').collect();
        // Stable: ties keep the default order, like RabbitMQ's sort on
        // [Sort | DefaultSorts].
        items.sort_by(|a, b| compare(dotted(a, &path), dotted(b, &path)));
    }
    if query.get("sort_reverse").is_some_and(|v| v == "true") {
        items.reverse();
    }
    if let Some(name) = query.get("name").filter(|n| !n.is_empty()) {
        let keep = name_filter(name, use_regex)?;
        items.retain(|item| item["name"].as_str().is_some_and(&keep));
    }
    let columns: Option<Vec<&str>> = query.get("columns").map(|c| column_list(c));
    let pick = |items: Vec<Value>| -> Vec<Value> {
        match &columns {
            None => items,
            Some(cols) => items.iter().map(|i| pick_columns(i, cols)).collect(),
        }
    };
    let Some((page, size)) = page else {
        return Ok(Value::Array(pick(items)));
    };
    let filtered = items.len();
    let offset = (page - 1).saturating_mul(size);
    // RabbitMQ allows the page just past the end (empty), not further.
    if offset > filtered {
        return Err(ApiError {
            error: "page_out_of_range",
            ..ApiError::bad_request(format!(
                "Page out of range, page: {page} page size: {size}, len: {filtered}"
            ))
        });
    }
    let items: Vec<Value> = items.into_iter().skip(offset).take(size).collect();
    Ok(json!({
        "filtered_count": filtered,
        "item_count": items.len(),
        "items": pick(items),
        "page": page,
        "page_count": filtered.div_ceil(size),
        "page_size": size,
        "total_count": total,
    }))
}

/// Whether `query` is paged and orders and filters by nothing but
/// `name` and `vhost` (no `sort`, or by either): then [`listing_light`]
/// answers it from those two fields.
pub fn pages_by_name(query: &HashMap<String, String>) -> bool {
    query.contains_key("page")
        && query
            .get("sort")
            .is_none_or(|s| matches!(s.as_str(), "" | "name" | "vhost"))
}

/// [`listing`] for a query [`pages_by_name`] accepts: `light` holds each
/// item's `name` and `vhost` alone, in the default order, and `full`
/// renders the whole item of those on the page (None: gone meanwhile; its
/// light item stays). A page of 100 out of 10,000 queues rendered every
/// queue for 100 of them (270 ms; RabbitMQ 135 ms), and a management UI
/// asks for one every few seconds.
pub fn listing_light(
    light: Vec<Value>,
    query: &HashMap<String, String>,
    full: impl Fn(&Value) -> Option<Value>,
) -> ApiResult<Value> {
    let mut unpicked = query.clone();
    let columns = unpicked.remove("columns");
    let mut page = listing(light, &unpicked, Paging::Paged)?;
    if let Some(Value::Array(items)) = page.get_mut("items") {
        for item in items.iter_mut() {
            if let Some(whole) = full(item) {
                *item = whole;
            }
        }
        if let Some(columns) = columns {
            let cols = column_list(&columns);
            for item in items.iter_mut() {
                *item = pick_columns(item, &cols);
            }
        }
    }
    Ok(page)
}

fn column_list(columns: &str) -> Vec<&str> {
    columns
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// `(page, page_size)` when `page` is given.
fn pagination(query: &HashMap<String, String>) -> ApiResult<Option<(usize, usize)>> {
    let number = |key: &str| -> ApiResult<Option<i64>> {
        query
            .get(key)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::bad_request("Pagination parameters are invalid"))
            })
            .transpose()
    };
    let (page, size) = (number("page")?, number("page_size")?);
    let Some(page) = page else {
        return Ok(None);
    };
    let size_ok = size.is_none_or(|s| (1..=MAX_PAGE_SIZE as i64).contains(&s));
    if page < 1 || !size_ok {
        let shown = size.map_or("undefined".to_owned(), |s| s.to_string());
        return Err(ApiError {
            error: "invalid_pagination_parameters",
            ..ApiError::bad_request(format!(
                "Invalid pagination parameters: page number {page}, page size {shown}"
            ))
        });
    }
    let size = size.map_or(DEFAULT_PAGE_SIZE, |s| s as usize);
    Ok(Some((page as usize, size)))
}

/// A test of an item's name.
type NameTest = Box<dyn Fn(&str) -> bool>;

/// The test `name=` puts to each item's name.
fn name_filter(name: &str, use_regex: bool) -> ApiResult<NameTest> {
    if !use_regex {
        let needle = name.to_lowercase();
        return Ok(Box::new(move |s: &str| s.to_lowercase().contains(&needle)));
    }
    if name.len() > MAX_REGEX_LENGTH {
        return Err(ApiError {
            error: "invalid_pagination_parameters",
            ..ApiError::bad_request("name filter regex is too long")
        });
    }
    match regex::RegexBuilder::new(name)
        .case_insensitive(true)
        .size_limit(1 << 20)
        .build()
    {
        Ok(re) => Ok(Box::new(move |s: &str| re.is_match(s))),
        Err(_) => Ok(Box::new(|_: &str| false)),
    }
}

fn dotted<'a>(item: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(item, |v, key| v.get(key))
}

/// Erlang's term order, which RabbitMQ sorts by: numbers, then atoms
/// (`false` < `null` < `true`), then maps, lists, and strings last. A
/// missing field sorts as the number 0.
fn compare(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Number(_) => 0,
            Value::Bool(_) | Value::Null => 1,
            Value::Object(_) => 2,
            Value::Array(_) => 3,
            Value::String(_) => 4,
        }
    }
    fn atom(v: &Value) -> &'static str {
        match v {
            Value::Bool(true) => "true",
            Value::Bool(false) => "false",
            _ => "null",
        }
    }
    let zero = json!(0);
    let (a, b) = (a.unwrap_or(&zero), b.unwrap_or(&zero));
    rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(0.0), y.as_f64().unwrap_or(0.0));
            x.total_cmp(&y)
        }
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Bool(_) | Value::Null, Value::Bool(_) | Value::Null) => atom(a).cmp(atom(b)),
        _ => a.to_string().cmp(&b.to_string()),
    })
}

fn pick_columns(item: &Value, columns: &[&str]) -> Value {
    let mut out = Map::new();
    for col in columns {
        let path: Vec<&str> = col.split('.').collect();
        let Some(v) = dotted(item, &path) else {
            continue;
        };
        let (last, parents) = path.split_last().expect("split yields one part");
        let mut slot = &mut out;
        for p in parents {
            let entry = slot
                .entry(p.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(Map::new());
            }
            slot = entry.as_object_mut().expect("made an object above");
        }
        slot.insert((*last).to_owned(), v.clone());
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn names(v: &Value) -> Vec<&str> {
        let items = v.get("items").unwrap_or(v);
        items
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect()
    }

    fn queues() -> Vec<Value> {
        vec![
            json!({"name": "alpha", "messages": 3, "stats": {"rate": 1.5}}),
            json!({"name": "Beta", "messages": 10}),
            json!({"name": "gamma", "messages": 3, "stats": {"rate": 0.5}}),
        ]
    }

    #[test]
    fn sorts_by_a_dotted_field_stably_and_in_reverse() {
        let v = listing(queues(), &q(&[("sort", "messages")]), Paging::Paged).unwrap();
        assert_eq!(names(&v), ["alpha", "gamma", "Beta"]);
        let v = listing(
            queues(),
            &q(&[("sort", "stats.rate"), ("sort_reverse", "true")]),
            Paging::Paged,
        )
        .unwrap();
        assert_eq!(names(&v), ["alpha", "gamma", "Beta"], "missing counts as 0");
        let v = listing(queues(), &q(&[("sort", "name")]), Paging::Paged).unwrap();
        assert_eq!(names(&v), ["Beta", "alpha", "gamma"], "bytewise, as Erlang");
    }

    #[test]
    fn pages_have_rabbitmqs_shape() {
        let v = listing(
            queues(),
            &q(&[("page", "2"), ("page_size", "2")]),
            Paging::Paged,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({
                "filtered_count": 3, "item_count": 1, "items": [queues()[2]],
                "page": 2, "page_count": 2, "page_size": 2, "total_count": 3
            })
        );
        let v = listing(Vec::new(), &q(&[("page", "1")]), Paging::Paged).unwrap();
        assert_eq!(v["page_count"], 0);
        assert_eq!(v["page_size"], 100);
        let v = listing(queues(), &q(&[("page", "1")]), Paging::Unpaged).unwrap();
        assert!(v.is_array(), "unpaged listings ignore page");
    }

    #[test]
    fn bad_pages_are_refused_as_rabbitmq_refuses_them() {
        for (query, error) in [
            (vec![("page", "x")], "bad_request"),
            (vec![("page", "0")], "invalid_pagination_parameters"),
            (
                vec![("page", "1"), ("page_size", "501")],
                "invalid_pagination_parameters",
            ),
            (vec![("page", "5"), ("page_size", "1")], "page_out_of_range"),
        ] {
            let bad = query.clone();
            let err = listing(queues(), &q(&query), Paging::Paged).unwrap_err();
            assert_eq!(err.error, error, "{bad:?}");
            assert_eq!(err.status, 400);
        }
        // The page just past the end is empty, not an error.
        let v = listing(
            queues(),
            &q(&[("page", "4"), ("page_size", "1")]),
            Paging::Paged,
        )
        .unwrap();
        assert_eq!(v["item_count"], 0);
    }

    #[test]
    fn names_filter_by_substring_or_regex_ignoring_case() {
        let v = listing(queues(), &q(&[("name", "A")]), Paging::Paged).unwrap();
        assert_eq!(names(&v), ["alpha", "Beta", "gamma"]);
        let v = listing(
            queues(),
            &q(&[("name", "^(b|g)"), ("use_regex", "true"), ("page", "1")]),
            Paging::Paged,
        )
        .unwrap();
        assert_eq!(names(&v), ["Beta", "gamma"]);
        assert_eq!(v["filtered_count"], 2);
        assert_eq!(v["total_count"], 3);
        let v = listing(
            queues(),
            &q(&[("name", "("), ("use_regex", "true")]),
            Paging::Paged,
        )
        .unwrap();
        assert_eq!(names(&v), Vec::<&str>::new(), "a bad regex matches nothing");
    }

    #[test]
    fn columns_keep_only_the_named_fields() {
        let v = listing(
            queues(),
            &q(&[
                ("columns", "name,stats.rate"),
                ("page", "1"),
                ("page_size", "1"),
            ]),
            Paging::Paged,
        )
        .unwrap();
        assert_eq!(
            v["items"],
            json!([{"name": "alpha", "stats": {"rate": 1.5}}])
        );
    }
}
